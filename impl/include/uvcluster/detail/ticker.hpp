#pragma once
// Node's process.nextTick for one object: callbacks queued here run on the loop's next turn,
// before it polls for I/O, in the order queued. Lets `spawn` return before its events fire, so
// listeners attached right after the call see every event.
#include <uv.h>

#include <deque>
#include <functional>

#include "uvcluster/detail/uv_handle.hpp"

namespace uvcluster::detail {

class Ticker {
 public:
  explicit Ticker(uv_loop_t* loop);
  void defer(std::function<void()> fn);
  void close() { idle_.close(); }

 private:
  static void on_idle(uv_idle_t* h);
  UvHandle<uv_idle_t> idle_;
  std::deque<std::function<void()>> queue_;
};

}  // namespace uvcluster::detail
