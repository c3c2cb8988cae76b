#pragma once
// A list of listeners for one event, in the order they were added (Node's EventEmitter, typed).
#include <functional>
#include <memory>
#include <vector>

namespace uvcluster::detail {

template <class... Args>
class Event {
 public:
  using Listener = std::function<void(Args...)>;
  void add(Listener fn) {
    // Copy on write: an emit in progress keeps the list it started with.
    if (!listeners_ || listeners_.use_count() > 1)
      listeners_ = std::make_shared<std::vector<Listener>>(listeners_ ? *listeners_ : std::vector<Listener>{});
    listeners_->push_back(std::move(fn));
  }
  bool empty() const { return !listeners_ || listeners_->empty(); }
  // A listener may add listeners or destroy the emitter's owner: the list is held, not copied
  // (an emission per hand-off allocates nothing).
  void emit(Args... args) const {
    auto held = listeners_;
    if (!held) return;
    for (auto& fn : *held) fn(args...);
  }
  void clear() { listeners_.reset(); }

 private:
  std::shared_ptr<std::vector<Listener>> listeners_;
};

}  // namespace uvcluster::detail
