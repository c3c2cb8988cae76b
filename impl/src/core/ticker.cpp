#include "uvcluster/detail/ticker.hpp"

namespace uvcluster::detail {

Ticker::Ticker(uv_loop_t* loop) {
  idle_.must_init(uv_idle_init(loop, idle_.get()), "uv_idle_init");
  idle_->data = this;
}

void Ticker::defer(std::function<void()> fn) {
  if (!idle_.initialized()) return;  // closed: the owner is going away
  queue_.push_back(std::move(fn));
  if (!uv_is_active(idle_.base())) uv_idle_start(idle_.get(), on_idle);
}

void Ticker::on_idle(uv_idle_t* h) {
  auto* self = static_cast<Ticker*>(h->data);
  // Run only what was queued before this turn; callbacks queued now run on the next turn.
  auto batch = std::move(self->queue_);
  self->queue_.clear();
  uv_idle_stop(h);
  for (auto& fn : batch) fn();
}

}  // namespace uvcluster::detail
