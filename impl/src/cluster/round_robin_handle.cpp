#include "uvcluster/cluster/round_robin_handle.hpp"

#include <algorithm>
#include <cerrno>

namespace uvcluster::cluster {

void RoundRobinScheduler::add(int worker, Sender send) {
  if (auto it = all_.find(worker); it != all_.end()) {
    it->second.send = std::move(send);  // a repeated query: keep what is in flight to it
    return;
  }
  Member m;
  m.send = std::move(send);
  m.generation = next_generation_++;
  all_[worker] = std::move(m);
  handed_out_.try_emplace(worker, 0);
  handoff(worker);
}

bool RoundRobinScheduler::remove(int worker, bool gone) {
  auto it = all_.find(worker);
  if (it == all_.end()) {
    if (gone) worker_gone(worker);
    return all_.empty();
  }
  std::optional<Fd> in_flight = std::move(it->second.in_flight);
  uint64_t generation = it->second.generation;
  all_.erase(it);
  free_.remove(worker);
  if (in_flight && in_flight->valid()) {
    orphans_.emplace(generation, Orphan{worker, std::move(*in_flight)});
    if (gone) worker_gone(worker);
  }
  return all_.empty();
}

void RoundRobinScheduler::worker_gone(int worker) {
  bool requeued = false;
  for (auto it = orphans_.begin(); it != orphans_.end();) {
    if (it->second.worker == worker) {
      queue_.push_front(std::move(it->second.conn));
      it = orphans_.erase(it);
      requeued = true;
    } else {
      ++it;
    }
  }
  if (requeued && !free_.empty()) {
    int next = free_.front();
    free_.pop_front();
    handoff(next);
  }
}

void RoundRobinScheduler::push(Fd conn) {
  queue_.push_back(std::move(conn));
  if (free_.empty()) return;
  int worker = free_.front();
  free_.pop_front();
  handoff(worker);
}

void RoundRobinScheduler::handoff(int worker) {
  auto it = all_.find(worker);
  if (it == all_.end()) return;
  Member& m = it->second;
  if (m.in_flight) return;  // at most one newconn in flight per worker
  if (queue_.empty()) {
    if (std::find(free_.begin(), free_.end(), worker) == free_.end()) free_.push_back(worker);
    return;
  }
  m.in_flight = std::move(queue_.front());
  queue_.pop_front();
  int raw = m.in_flight->get();
  uint64_t gen = m.generation;
  bool sent = m.send(raw, [this, worker, gen](bool accepted) { on_reply(worker, gen, accepted); });
  if (!sent) {
    // The worker's channel is gone: it leaves the rotation, the connection stays with us.
    remove(worker, /*gone=*/true);
  }
}

void RoundRobinScheduler::on_reply(int worker, uint64_t generation, bool accepted) {
  if (auto o = orphans_.find(generation); o != orphans_.end()) {
    // The worker left the rotation while this was in flight; it still answered.
    Fd conn = std::move(o->second.conn);
    orphans_.erase(o);
    if (accepted) {
      ++handed_out_[worker];
    } else {
      push(std::move(conn));
    }
    return;
  }
  auto it = all_.find(worker);
  if (it == all_.end() || it->second.generation != generation || !it->second.in_flight) return;
  Fd conn = std::move(*it->second.in_flight);
  it->second.in_flight.reset();
  if (accepted) {
    ++handed_out_[worker];
    conn.reset();  // the worker has its own copy now
    handoff(worker);
    return;
  }
  // Refused (its server closed, a race Node also has): back to the queue for another worker.
  // Unlike Node, a refusing worker leaves this key's rotation, so a worker that always refuses
  // cannot ping-pong one connection forever; its `close` act usually follows anyway.
  all_.erase(it);
  free_.remove(worker);
  push(std::move(conn));
}

RoundRobinHandle::RoundRobinHandle(uv_loop_t* loop, Fd listening) : fd_(std::move(listening)) {
  uv_timer_init(loop, backoff_.get());
  backoff_.mark_initialized();
  backoff_->data = this;
  if (uv_poll_init(loop, poll_.get(), fd_.get()) == 0) {
    poll_.mark_initialized();
    poll_->data = this;
    uv_poll_start(poll_.get(), UV_READABLE, on_readable);
  }
  if (auto n = local_address(fd_.get()); n.ok()) sockname_ = n.value();
}

RoundRobinHandle::~RoundRobinHandle() { close(); }

void RoundRobinHandle::close() {
  backoff_.close();
  poll_.close();
  fd_.reset();
  sched_.close_queue();
}

Result<std::unique_ptr<RoundRobinHandle>> RoundRobinHandle::open(uv_loop_t* loop,
                                                                 const BindSpec& spec,
                                                                 int backlog) {
  auto fd = bind_tcp(spec);
  if (!fd.ok()) return fd.error();
  if (auto st = listen_fd(fd->get(), backlog); !st.ok()) return st.error();
  return std::make_unique<RoundRobinHandle>(loop, std::move(fd.value()));
}

void RoundRobinHandle::on_readable(uv_poll_t* h, int status, int) {
  auto* self = static_cast<RoundRobinHandle*>(h->data);
  if (status < 0) return;
  // Drain: a bounded batch per wake-up keeps one busy listener from starving the IPC pipes.
  for (int i = 0; i < 256 && self->fd_.valid(); ++i) {
    Fd conn = accept_connection(self->fd_.get());
    if (!conn) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      ++self->accept_errors_;  // EMFILE and friends: skipped, as Node's distribute does
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Level-triggered: the pending connection would wake us again at once. Back off briefly
        // instead of spinning (Node spins here).
        uv_poll_stop(self->poll_.get());
        uv_timer_start(self->backoff_.get(), [](uv_timer_t* t) {
          auto* me = static_cast<RoundRobinHandle*>(t->data);
          if (me->fd_.valid()) uv_poll_start(me->poll_.get(), UV_READABLE, on_readable);
        }, 50, 0);
      }
      return;
    }
    self->sched_.push(std::move(conn));
  }
}

}  // namespace uvcluster::cluster
