#pragma once
// RAII ownership of a libuv handle. The handle lives on the heap because libuv needs its memory
// until the close callback runs; destruction starts uv_close and the close callback frees it.
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <utility>

namespace uvcluster::detail {

template <class H>
class UvHandle {
 public:
  UvHandle() : h_(std::make_unique<Holder>()) {}
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;
  UvHandle(UvHandle&&) noexcept = default;
  UvHandle& operator=(UvHandle&& other) noexcept {
    if (this != &other) {
      close();
      h_ = std::move(other.h_);
    }
    return *this;
  }
  ~UvHandle() { close(); }

  H* get() const { return h_ ? &h_->handle : nullptr; }
  H* operator->() const { return get(); }
  uv_handle_t* base() const { return reinterpret_cast<uv_handle_t*>(get()); }
  uv_stream_t* stream() const { return reinterpret_cast<uv_stream_t*>(get()); }

  // Call after a successful uv_*_init: from then on the handle must be closed, not just freed.
  void mark_initialized() { h_->initialized = true; }
  bool initialized() const { return h_ && h_->initialized; }
  // For the uv_*_init calls that cannot fail on a live loop (timer, idle, check; tcp and pipe
  // before a socket is opened): checks `rc` and marks the handle initialized. A failure is a
  // broken invariant, reported and aborted on, never ignored. Inits that can fail (signal, async,
  // poll, loop) return their error instead.
  void must_init(int rc, const char* what) {
    if (rc != 0) {
      std::fprintf(stderr, "uvcluster: %s failed: %s\n", what, uv_strerror(rc));
      std::abort();
    }
    mark_initialized();
  }
  bool active() const { return initialized() && uv_is_active(base()); }

  // Starts closing; `on_closed` runs from the close callback (never synchronously).
  // The object becomes empty. Safe to call on an empty or uninitialized handle.
  void close(std::function<void()> on_closed = {}) {
    if (!h_) return;
    if (!h_->initialized) {
      h_.reset();
      if (on_closed) on_closed();
      return;
    }
    Holder* raw = h_.release();
    raw->on_closed = std::move(on_closed);
    raw->handle.data = raw;
    uv_close(reinterpret_cast<uv_handle_t*>(&raw->handle), [](uv_handle_t* h) {
      std::unique_ptr<Holder> owned(static_cast<Holder*>(h->data));
      if (owned->on_closed) owned->on_closed();
    });
  }

 private:
  struct Holder {
    H handle{};
    bool initialized = false;
    std::function<void()> on_closed;
  };
  std::unique_ptr<Holder> h_;
};

}  // namespace uvcluster::detail
