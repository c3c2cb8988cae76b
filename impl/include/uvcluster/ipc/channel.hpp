#pragma once
// Placeholder until the IPC channel lands (branch `ipc`): the interface spawn() relies on.
#include <uv.h>

#include <functional>

#include "uvcluster/detail/event.hpp"
#include "uvcluster/detail/uv_handle.hpp"

namespace uvcluster::ipc {

class Channel {
 public:
  explicit Channel(uv_loop_t* loop) : loop_(loop) {}
  int init() {
    int rc = uv_pipe_init(loop_, pipe_.get(), 1);
    if (rc == 0) pipe_.mark_initialized();
    return rc;
  }
  uv_pipe_t* pipe() { return pipe_.get(); }
  void start() {}
  void destroy() { pipe_.close([this] { close_.emit(); }); }
  void on_close(std::function<void()> fn) { close_.add(std::move(fn)); }

 private:
  uv_loop_t* loop_;
  detail::UvHandle<uv_pipe_t> pipe_;
  detail::Event<> close_;
};

}  // namespace uvcluster::ipc
