#pragma once
// A list of listeners for one event, in the order they were added (Node's EventEmitter, typed).
#include <functional>
#include <vector>

namespace uvcluster::detail {

template <class... Args>
class Event {
 public:
  using Listener = std::function<void(Args...)>;
  void add(Listener fn) { listeners_.push_back(std::move(fn)); }
  bool empty() const { return listeners_.empty(); }
  // Copy first: a listener may add listeners or destroy the emitter's owner.
  void emit(Args... args) const {
    auto copy = listeners_;
    for (auto& fn : copy) fn(args...);
  }
  void clear() { listeners_.clear(); }

 private:
  std::vector<Listener> listeners_;
};

}  // namespace uvcluster::detail
