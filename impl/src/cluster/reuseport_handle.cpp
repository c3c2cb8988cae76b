#include "uvcluster/cluster/reuseport_handle.hpp"

#include <signal.h>

namespace uvcluster::cluster {

Result<std::unique_ptr<ReusePortHandle>> ReusePortHandle::open(BindSpec spec) {
  spec.reuseport = true;
  auto probe = bind_tcp(spec);
  if (!probe.ok()) return probe.error();
  if (spec.port == 0) {
    if (auto n = local_address(probe->get()); n.ok()) spec.port = n->port;
    // The port fixed, a second socket binds it by number and replaces the probe: a socket bound
    // to port 0 gives its port up on shutdown(), which steering's move_queue relies on keeping.
    if (spec.port != 0)
      if (auto fixed = bind_tcp(spec); fixed.ok()) probe = std::move(fixed);
  }
  return std::make_unique<ReusePortHandle>(std::move(spec), std::move(*probe));
}

Result<std::unique_ptr<ServerHandle>> ReusePortHandle::open_for(const ServerHandleContext& ctx, const ServerQuery& q) {
  // Best effort: without it (not root, old kernel) a killed worker's queue is lost, as before.
  if (ctx.reuseport_migrate_queues) (void)enable_reuseport_migration();
  auto h = open(q.spec);
  if (!h.ok()) return h.error();
  auto steering = ctx.reuseport_steering ? ReusePortSteering::create()
                                         : Result<ReusePortSteering>(Error::make("ERR_STEERING_DISABLED", "reuseport steering is turned off"));
  Status started = steering.ok() ? (*h)->start_steering(ctx, std::move(*steering), q.backlog) : Status(steering.error());
  if (!started.ok() && ctx.steering_unavailable) ctx.steering_unavailable(started.error());
  return std::unique_ptr<ServerHandle>(std::move(*h));
}

Status ReusePortHandle::start_steering(const ServerHandleContext& ctx, ReusePortSteering steering, int backlog) {
  // Stops raise SIGCHLD: libuv installs its handler without SA_NOCLDSTOP, and a second watcher of
  // the same signal is allowed.
  if (int rc = uv_signal_init(ctx.loop, sigchld_.get()); rc != 0) return Error::from_uv(rc, "uv_signal_init");
  sigchld_.mark_initialized();
  sigchld_->data = this;
  if (int rc = uv_signal_start(sigchld_.get(), [](uv_signal_t* s, int) { static_cast<ReusePortHandle*>(s->data)->check_stops(); },
                               SIGCHLD);
      rc != 0) {
    sigchld_.close();
    return Error::from_uv(rc, "uv_signal_start");
  }
  uv_unref(sigchld_.base());  // the workers keep the loop alive, not their watchers
  fd_timer_.must_init(uv_timer_init(ctx.loop, fd_timer_.get()), "uv_timer_init");
  fd_timer_->data = this;
  uv_unref(fd_timer_.base());
  uv_timer_start(fd_timer_.get(), [](uv_timer_t* t) { static_cast<ReusePortHandle*>(t->data)->check_fds(); },
                 kFdCheckMs, kFdCheckMs);
  steering_ = std::move(steering);
  backlog_ = backlog;
  pid_of_ = ctx.pid_of;
  changed_ = ctx.steering_changed;
  unavailable_ = ctx.steering_unavailable;
  return Ok{};
}

void ReusePortHandle::stop_steering(const Error& why) {
  if (!steering_) return;
  (void)steering_->steer_to({});  // n = 0: the attached program leaves every choice to the kernel
  steering_.reset();
  sigchld_.close();
  fd_timer_.close();
  members_.clear();  // the workers' own descriptors keep their sockets in the group
  if (unavailable_) unavailable_(why);
}

Result<ReusePortHandle::Member> ReusePortHandle::steer(int fd, int worker) {
  // The array takes listening sockets only; the worker's own listen() then just sets the backlog.
  if (auto st = listen_fd(fd, backlog_); !st.ok()) return st.error();
  // Every socket, not only the first: the group (and its program) ends when its last socket
  // closes, and the next worker's socket starts a new one.
  if (auto st = steering_->attach(fd); !st.ok()) return st.error();
  auto copy = Fd::dup(fd);
  if (!copy.ok()) return copy.error();
  Member m{std::move(*copy), pid_of_ ? pid_of_(worker) : std::nullopt};
  if (m.pid) m.stopped = child_stopped(*m.pid).value_or(false);
  return m;
}

Result<Fd> ReusePortHandle::socket_for(int worker) {
  Fd out;
  if (probe_) {
    // The first worker takes the probe socket itself; without steering the primary keeps no
    // copy, so when that worker dies its socket leaves the SO_REUSEPORT group instead of
    // black-holing connections (with steering, remove() closes the copy).
    out = std::move(probe_);
  } else {
    auto fd = bind_tcp(spec_);
    if (!fd.ok()) return fd.error();
    out = std::move(fd.value());
  }
  if (steering_) {
    auto m = steer(out.get(), worker);
    if (m.ok()) {
      members_[worker] = std::move(*m);
      apply({});
    } else {
      stop_steering(m.error());
    }
  }
  workers_.insert(worker);
  return out;
}

bool ReusePortHandle::remove(int worker, bool gone) {
  bool last = SocketHandle::remove(worker, gone);
  auto it = members_.find(worker);
  if (it == members_.end()) return last;
  Member leaving = std::move(it->second);
  members_.erase(it);
  apply({});  // out of the array before its socket can close (then its queue migrates)
  return last;
}

void ReusePortHandle::apply(const std::vector<SteeringChange>& changes) {
  if (!steering_) return;
  std::vector<int> eligible;
  for (auto& [id, m] : members_)
    if (m.eligible()) eligible.push_back(m.socket.get());
  if (auto st = steering_->steer_to(eligible); !st.ok()) return stop_steering(st.error());
  if (!changed_) return;
  for (SteeringChange c : changes) {
    c.steered = eligible.size() <= ReusePortSteering::kCapacity ? eligible.size() : 0;
    changed_(c);
  }
}

void ReusePortHandle::check_stops() {
  std::vector<SteeringChange> changes;
  std::vector<int> just_stopped;
  for (auto& [id, m] : members_) {
    if (!m.pid) continue;
    auto stopped = child_stopped(*m.pid);
    if (!stopped || *stopped == m.stopped) continue;
    bool was = m.eligible();
    m.stopped = *stopped;
    if (m.stopped) just_stopped.push_back(id);
    if (m.eligible() != was) changes.push_back({id, m.eligible(), m.stopped ? "stopped" : "continued"});
  }
  if (changes.empty() && just_stopped.empty()) return;
  apply(changes);
  if (!steering_ || eligible_count() == 0) return;  // with no one eligible the queue stays
  for (int id : just_stopped) {
    auto it = members_.find(id);
    // Read again right before: the socket is cycled only under a worker that cannot run.
    if (it == members_.end() || child_stopped(*it->second.pid) != true) continue;
    (void)steering_->move_queue(it->second.socket.get(), backlog_);  // best effort: else it waits
  }
}

size_t ReusePortHandle::eligible_count() const {
  size_t n = 0;
  for (auto& [id, m] : members_) n += m.eligible();
  return n;
}

void ReusePortHandle::check_fds() {
  std::vector<SteeringChange> changes;
  for (auto& [id, m] : members_) {
    if (!m.pid) continue;
    auto use = fd_use(*m.pid);
    if (!use.ok()) continue;  // exited: its exit removes it
    bool headroom = has_fd_headroom(m.fd_headroom, *use);
    if (headroom == m.fd_headroom) continue;
    bool was = m.eligible();
    m.fd_headroom = headroom;
    if (m.eligible() != was) changes.push_back({id, m.eligible(), headroom ? "fds-free" : "fds-low"});
  }
  if (!changes.empty()) apply(changes);
}

void ReusePortHandle::stop_accepting() {
  for (auto& [worker, m] : members_)
    if (m.socket && refuse_new_connections(m.socket.get()).ok()) refusing_ = true;
}

size_t ReusePortHandle::waiting() const {
  if (!refusing_) return 0;
  size_t n = 0;
  for (auto& [worker, m] : members_)
    if (m.socket) n += accept_queue_length(m.socket.get()).value_or(0);
  return n;
}

}  // namespace uvcluster::cluster
