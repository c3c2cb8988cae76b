#include "uvcluster/detail/read_buffer.hpp"

#include <map>

namespace uvcluster::detail {

std::shared_ptr<SharedReadBuffer> SharedReadBuffer::for_loop(uv_loop_t* loop) {
  // Per thread: a loop runs on one thread. Entries of loops whose streams are all gone expire.
  thread_local std::map<uv_loop_t*, std::weak_ptr<SharedReadBuffer>> buffers;
  std::erase_if(buffers, [](const auto& entry) { return entry.second.expired(); });
  auto& slot = buffers[loop];
  auto buffer = slot.lock();
  if (!buffer) {
    buffer = std::make_shared<SharedReadBuffer>();
    slot = buffer;
  }
  return buffer;
}

}  // namespace uvcluster::detail
