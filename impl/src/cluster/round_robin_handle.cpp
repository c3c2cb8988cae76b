#include "uvcluster/cluster/round_robin_handle.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>

namespace uvcluster::cluster {

namespace {
// How far into the queue a worker looks for a connection it did not just fail.
constexpr size_t kRefusalLookahead = 16;

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The client's address without its port (FNV-1a): every connection of one client, one key.
uint64_t peer_key(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  const unsigned char* bytes = nullptr;
  size_t n = 0;
  if (ss.ss_family == AF_INET) {
    bytes = reinterpret_cast<const unsigned char*>(&reinterpret_cast<sockaddr_in*>(&ss)->sin_addr);
    n = 4;
  } else if (ss.ss_family == AF_INET6) {
    bytes = reinterpret_cast<const unsigned char*>(&reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr);
    n = 16;
  }
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; ++i) h = (h ^ bytes[i]) * 0x100000001b3ULL;
  return h;
}
}  // namespace

RoundRobinScheduler::RoundRobinScheduler(int attempts_per_worker, Pick pick)
    : attempts_per_worker_(std::max(1, attempts_per_worker)), pick_(pick) {}

int RoundRobinScheduler::worker_for(uint64_t key) {
  if (auto it = pins_.find(key); it != pins_.end() && all_.count(it->second)) return it->second;
  // Rendezvous hashing: the worker with the highest score for this key.
  int best = 0;
  uint64_t best_score = 0;
  for (auto& [worker, m] : all_) {
    uint64_t score = mix(key ^ mix(static_cast<uint64_t>(worker)));
    if (best == 0 || score > best_score) best = worker, best_score = score;
  }
  if (best == 0) return 0;
  if (pins_.size() >= kMaxPins) pins_.clear();
  pins_[key] = best;
  return best;
}

void RoundRobinScheduler::wake() {
  uint64_t now = now_();
  std::vector<int> rested;
  uint64_t next = 0;
  for (auto& [worker, m] : all_) {
    if (m.rest_until == 0) continue;
    if (m.rest_until <= now) rested.push_back(worker);
    else if (next == 0 || m.rest_until < next) next = m.rest_until;
  }
  for (int worker : rested) {
    if (auto it = all_.find(worker); it != all_.end()) {
      it->second.rest_until = 0;
      handoff(worker);
    }
  }
  if (next != 0 && on_rest_) on_rest_(next - now);
}

size_t RoundRobinScheduler::in_flight() const {
  size_t n = orphans_.size();
  for (auto& [id, m] : all_) n += m.in_flight.size();
  return n;
}

void RoundRobinScheduler::add(int worker, Sender send) {
  if (auto it = all_.find(worker); it != all_.end()) {
    it->second.send = std::make_shared<const Sender>(std::move(send));  // a repeated query: keep what is in flight
    return;
  }
  all_[worker].send = std::make_shared<const Sender>(std::move(send));
  handed_out_.try_emplace(worker, 0);
  handoff(worker);
}

bool RoundRobinScheduler::remove(int worker, bool gone) {
  auto it = all_.find(worker);
  if (it == all_.end()) {
    if (gone) worker_gone(worker);
    return all_.empty();
  }
  detail::Ring<InFlight> in_flight = std::move(it->second.in_flight);
  all_.erase(it);
  std::erase(free_, worker);
  for (auto& f : in_flight) orphans_.emplace(f.id, Orphan{worker, std::move(f.conn)});
  if (!in_flight.empty() && gone) worker_gone(worker);
  if (pick_ == Pick::sticky) {
    std::erase_if(pins_, [worker](const auto& pin) { return pin.second == worker; });
    dispatch();  // its waiting clients now belong to other workers
  }
  return all_.empty();
}

void RoundRobinScheduler::worker_gone(int worker) {
  std::vector<Conn> back;
  for (auto it = orphans_.begin(); it != orphans_.end();) {
    if (it->second.worker == worker) {
      back.push_back(std::move(it->second.conn));
      it = orphans_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& c : back) requeue(std::move(c), worker);
}

void RoundRobinScheduler::push(Fd conn, uint64_t key) {
  queue_.push_back(Conn{std::move(conn), 0, 0, key});
  dispatch();
}

void RoundRobinScheduler::dispatch(int not_to) {
  if (queue_.empty()) return;
  if (pick_ == Pick::sticky) {
    // Connections wait for their own worker: offer the queue to every idle worker.
    std::vector<int> idle(free_.begin(), free_.end());
    for (int worker : idle) {
      if (queue_.empty()) return;
      std::erase(free_, worker);
      handoff(worker);
    }
    return;
  }
  auto it = std::find_if(free_.begin(), free_.end(), [not_to](int w) { return w != not_to; });
  if (it == free_.end()) return;
  int worker = *it;
  free_.erase(it);
  handoff(worker);
}

std::optional<RoundRobinScheduler::Conn> RoundRobinScheduler::take_for(int worker) {
  if (queue_.empty()) return std::nullopt;
  if (pick_ == Pick::sticky) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (worker_for(it->key) != worker) continue;
      Conn c = std::move(*it);
      queue_.erase(it);
      return c;
    }
    return std::nullopt;
  }
  // Prefer a connection this worker did not just refuse; past the lookahead, take the front
  // anyway (the attempt budget still bounds it).
  size_t limit = std::min(queue_.size(), kRefusalLookahead);
  size_t pick = 0;
  for (size_t i = 0; i < limit; ++i) {
    if (queue_[i].refused_by != worker) {
      pick = i;
      break;
    }
  }
  Conn c = std::move(queue_[pick]);
  queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(pick));
  return c;
}

void RoundRobinScheduler::handoff(int worker) {
  for (;;) {
    auto it = all_.find(worker);
    if (it == all_.end()) return;
    Member& m = it->second;
    if (m.in_flight.size() >= static_cast<size_t>(window_) || m.stalled) return;  // its slots are full
    if (m.rest_until != 0) {
      if (m.rest_until > now_()) return;  // wake() hands it work when the rest is over
      m.rest_until = 0;
    }
    auto conn = take_for(worker);
    if (!conn) {
      if (std::find(free_.begin(), free_.end(), worker) == free_.end()) free_.push_back(worker);
      return;
    }
    uint64_t id = next_id_++;
    int raw = conn->fd.get();
    m.in_flight.push_back(InFlight{id, std::move(*conn), now_()});
    auto send = m.send;  // the call may remove this worker (and its Member)
    SendResult r = (*send)(raw, Reply(&RoundRobinScheduler::reply_to, this, worker, id));
    if (r == SendResult::given) {
      // The worker holds the only copy now (the kernel's, in flight): ours closes here, so the
      // socket's last close is never the primary's.
      if (auto again = all_.find(worker); again != all_.end() && !again->second.in_flight.empty() &&
                                          again->second.in_flight.back().id == id) {
        again->second.in_flight.back().conn.fd.reset();
      }
      continue;
    }
    if (r == SendResult::sent) continue;  // the next slot, if any
    if (r == SendResult::gone) {
      // The worker's channel is gone: it leaves the rotation, the connection is requeued.
      remove(worker, /*gone=*/true);
      return;
    }
    // No resources to send it (the primary is out of fds): shed this connection, try the next.
    if (auto again = all_.find(worker); again != all_.end()) {
      auto& slots = again->second.in_flight;
      auto f = std::find_if(slots.begin(), slots.end(), [id](const InFlight& x) { return x.id == id; });
      if (f != slots.end()) {
        slots.erase(f);
        ++counters_.dropped;
      }
    }
  }
}

void RoundRobinScheduler::requeue(Conn conn, int failed_worker) {
  if (!conn.fd) {  // given away and not given back (a NACK, a worker gone, a refusal without it)
    ++counters_.dropped;
    return;
  }
  int budget = attempts_per_worker_ * static_cast<int>(std::max<size_t>(all_.size(), 1));
  if (++conn.attempts >= budget) {
    ++counters_.dropped;  // closes it: the client sees the connection end, not a hang
    return;
  }
  ++counters_.requeued;
  conn.refused_by = failed_worker;
  queue_.push_front(std::move(conn));
  dispatch(failed_worker);
}

void RoundRobinScheduler::reply_to(void* scheduler, int worker, uint64_t id, bool accepted, Fd returned) {
  static_cast<RoundRobinScheduler*>(scheduler)->on_reply(worker, id, accepted, std::move(returned));
}

void RoundRobinScheduler::on_reply(int worker, uint64_t id, bool accepted, Fd returned) {
  if (accepted) ++counters_.accepted;
  else ++counters_.refused;
  // A connection given away comes back with its refusal; a copy we kept is used first.
  auto take_back = [&returned](Conn& conn) {
    if (!conn.fd) conn.fd = std::move(returned);
  };
  if (auto o = orphans_.find(id); o != orphans_.end()) {
    // The worker left the rotation while this was in flight; it still answered.
    Conn conn = std::move(o->second.conn);
    orphans_.erase(o);
    take_back(conn);
    if (accepted) ++handed_out_[worker];
    else requeue(std::move(conn), worker);
    return;
  }
  auto it = all_.find(worker);
  if (it == all_.end()) return;
  Member& m = it->second;
  if (m.stalled == id) {  // the answer to a timed-out hand-off: the worker is responsive again
    m.stalled = 0;
    if (accepted) ++handed_out_[worker];
    handoff(worker);
    return;
  }
  auto f = std::find_if(m.in_flight.begin(), m.in_flight.end(), [id](const InFlight& x) { return x.id == id; });
  if (f == m.in_flight.end()) return;  // stale
  Conn conn = std::move(f->conn);
  m.in_flight.erase(f);
  take_back(conn);
  if (accepted) {
    ++handed_out_[worker];
    m.refusals_in_row = 0;
    conn.fd.reset();  // the worker has its own copy now
  } else {
    // Refused (at maxConnections, closing its server, or the fd never arrived): Node keeps the
    // worker and redistributes; so do we, with the connection's attempt budget as the bound,
    // and the worker rests a moment so a full worker is not asked again at IPC speed.
    int shift = std::min(m.refusals_in_row++, 16);
    uint64_t rest = std::min(kRestBaseMs << shift, kRestMaxMs);
    if (on_rest_) {  // only with someone to wake() us
      m.rest_until = now_() + rest;
      on_rest_(rest);
    }
    requeue(std::move(conn), worker);
  }
  handoff(worker);
}

size_t RoundRobinScheduler::expire(uint64_t sent_before) {
  size_t n = 0;
  for (auto& [worker, m] : all_) {
    // Sent in order, so the expired ones are at the front; our copies close, the worker may
    // still serve its own. The worker gets nothing more until it answers the oldest of them.
    while (!m.in_flight.empty() && m.in_flight.front().sent_at <= sent_before) {
      if (m.stalled == 0) m.stalled = m.in_flight.front().id;
      m.in_flight.pop_front();
      ++counters_.timed_out;
      ++n;
    }
  }
  return n;
}

RoundRobinHandle::RoundRobinHandle(uv_loop_t* loop, BoundSocket listening, uint64_t handoff_timeout_ms,
                                   RoundRobinScheduler::Pick pick)
    : loop_(loop),
      fd_(std::move(listening.fd)),
      file_(std::move(listening.file)),
      timeout_ms_(std::max<uint64_t>(handoff_timeout_ms, 1)),
      sched_(RoundRobinScheduler::kDefaultAttemptsPerWorker, pick) {
  if (auto n = local_address(fd_.get()); n.ok()) sockname_ = n.value();
  sched_.set_clock([loop] { return uv_now(loop); });
}

RoundRobinHandle::~RoundRobinHandle() { close(); }

Status RoundRobinHandle::start(uv_loop_t* loop) {
  if (int rc = uv_timer_init(loop, sweep_.get()); rc != 0) return Error::from_uv(rc, "uv_timer_init");
  sweep_.mark_initialized();
  sweep_->data = this;
  uv_unref(sweep_.base());  // the listening socket keeps the loop alive, not the sweep
  uint64_t period = std::max<uint64_t>(timeout_ms_ / 4, 1);
  uv_timer_start(sweep_.get(), [](uv_timer_t* t) {
    auto* self = static_cast<RoundRobinHandle*>(t->data);
    uint64_t now = uv_now(self->loop_);
    if (now >= self->timeout_ms_) self->sched_.expire(now - self->timeout_ms_);
  }, period, period);
  if (int rc = uv_timer_init(loop, wake_.get()); rc != 0) return Error::from_uv(rc, "uv_timer_init");
  wake_.mark_initialized();
  wake_->data = this;
  sched_.set_on_rest([this](uint64_t delay) {
    if (!wake_.initialized()) return;  // closed
    // One timer for every resting worker: keep the earliest deadline.
    uint64_t due = uv_now(loop_) + delay;
    if (uv_is_active(wake_.base()) && wake_due_ <= due) return;
    wake_due_ = due;
    uv_timer_start(wake_.get(), [](uv_timer_t* t) { static_cast<RoundRobinHandle*>(t->data)->sched_.wake(); },
                   delay, 0);
  });
  // One accept per readiness report: draining until EAGAIN cost a failed accept4 on almost every
  // wake-up (0.9 per connection under load); the level-triggered socket reports again at the
  // loop's next turn while connections are pending, and that epoll_wait is paid anyway.
  auto a = Acceptor::start(loop, fd_.get(), {.policy = AcceptPolicy::one}, [this](Fd conn) {
    uint64_t key = sched_.pick() == RoundRobinScheduler::Pick::sticky ? peer_key(conn.get()) : 0;
    sched_.push(std::move(conn), key);
  });
  if (!a.ok()) return a.error();
  acceptor_ = std::move(a.value());
  return Ok{};
}

void RoundRobinHandle::close_listener() {
  if (acceptor_) closed_accept_ += acceptor_->counters();
  acceptor_.reset();
  fd_.reset();
  file_.reset();
}

void RoundRobinHandle::close() {
  close_listener();
  sweep_.close();
  wake_.close();
  sched_.close_queue();
}

void RoundRobinHandle::stop_accepting() {
  // The connections the kernel completed but nobody accepted yet would be reset by the close:
  // take them into the queue first. One that completes between the last accept and the close is
  // still reset (a window of one syscall).
  if (acceptor_) acceptor_->take_backlog(kMaxBacklogTaken);
  close_listener();
}

Result<std::unique_ptr<RoundRobinHandle>> RoundRobinHandle::open(uv_loop_t* loop, const ServerQuery& q,
                                                                 uint64_t handoff_timeout_ms,
                                                                 RoundRobinScheduler::Pick pick) {
  auto bound = bind_for(q);
  if (!bound.ok()) return bound.error();
  if (auto st = listen_fd(bound->fd.get(), q.backlog); !st.ok()) return st.error();
  if (q.transport == Transport::pipe && !q.fd) {
    if (auto st = chmod_pipe(q.path, q.readable_all, q.writable_all); !st.ok()) return st.error();
  }
  auto h = std::make_unique<RoundRobinHandle>(loop, std::move(bound.value()), handoff_timeout_ms, pick);
  if (auto st = h->start(loop); !st.ok()) return st.error();
  return h;
}

Result<std::unique_ptr<ServerHandle>> RoundRobinHandle::open_for(const ServerHandleContext& ctx,
                                                                  const ServerQuery& q) {
  auto pick = ctx.policy == Policy::sticky && q.transport == Transport::tcp ? RoundRobinScheduler::Pick::sticky : RoundRobinScheduler::Pick::idle_worker;
  auto h = open(ctx.loop, q, ctx.handoff_timeout_ms, pick);
  if (!h.ok()) return h.error();
  h.value()->newconn_ = ctx.newconn;
  h.value()->sched_.set_window(ctx.rr_window);
  return std::unique_ptr<ServerHandle>(std::move(h.value()));
}

void RoundRobinHandle::add(int worker, AddReply reply) {
  reply(0, sockname_ ? Json{{"sockname", sockname_->to_json()}} : Json(), std::nullopt);
  sched_.add(worker, newconn_(worker));
}

bool RoundRobinHandle::remove(int worker, bool gone) {
  if (!sched_.has(worker)) {
    if (gone) sched_.worker_gone(worker);  // answers it still owed us: none coming
    return false;
  }
  if (!sched_.remove(worker, gone)) return false;
  close();  // closes the queue and the listening socket
  return true;
}

void RoundRobinHandle::count(PrimaryStats& stats) const {
  const auto& c = sched_.counters();
  stats.handoffs.accepted += c.accepted;
  stats.handoffs.refused += c.refused;
  stats.handoffs.requeued += c.requeued;
  stats.handoffs.dropped += c.dropped;
  stats.handoffs.timed_out += c.timed_out;
  stats.queued += sched_.queued();
  stats.in_flight += sched_.in_flight();
  stats.accept += accept_counters();
}

}  // namespace uvcluster::cluster
