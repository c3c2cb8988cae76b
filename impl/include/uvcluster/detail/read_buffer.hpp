#pragma once
// One read buffer per loop, shared by every stream that reads on that loop. libuv hands a
// read's bytes to the read callback before it asks for another buffer, and a loop never runs
// inside its own callbacks, so two streams of one loop never need a buffer at the same time.
// A buffer per stream cost 64 KiB per child pipe (two per worker for its stdout and stderr):
// untouched at first, then resident once worker churn made the heap reuse those pages, which
// is how a primary's RSS crept up after its first worker exits. The buffer lives as long as the
// loop, so the pages a read fills stay resident: a json IPC channel reads at most 16 KiB into it
// between frames (a big frame continues in the channel's own buffer; see channel.cpp).
#include <uv.h>

#include <cstddef>
#include <memory>

namespace uvcluster::detail {

class SharedReadBuffer {
 public:
  static constexpr size_t kSize = 64 * 1024;
  // The buffer of `loop` (made on first use, freed with the last holder).
  static std::shared_ptr<SharedReadBuffer> for_loop(uv_loop_t* loop);

  uv_buf_t get() { return uv_buf_init(bytes_.get(), static_cast<unsigned>(kSize)); }
  const char* data() const { return bytes_.get(); }

 private:
  std::unique_ptr<char[]> bytes_ = std::make_unique_for_overwrite<char[]>(kSize);
};

}  // namespace uvcluster::detail
