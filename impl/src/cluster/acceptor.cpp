#include "uvcluster/cluster/acceptor.hpp"

#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>

#include "uvcluster/cluster/exclusive_waiter.hpp"
#include "uvcluster/cluster/sockets.hpp"

namespace uvcluster::cluster {

namespace {
// Errors that say "no fd or memory for the connection now": the connection stays pending.
bool out_of_resources(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }
}  // namespace

uint64_t AcceptorCounters::errors_total() const {
  uint64_t n = 0;
  for (auto& [err, count] : errors) n += count;
  return n;
}

AcceptorCounters& AcceptorCounters::operator+=(const AcceptorCounters& o) {
  wakeups += o.wakeups;
  accept_calls += o.accept_calls;
  accepted += o.accepted;
  accept_eagain += o.accept_eagain;
  empty_wakeups += o.empty_wakeups;
  rotations += o.rotations;
  pauses += o.pauses;
  resumes += o.resumes;
  for (auto& [err, count] : o.errors) errors[err] += count;
  return *this;
}

Acceptor::Acceptor(Key, uv_loop_t* loop, int listen_fd, AcceptorOptions options, OnConnection on_connection)
    : loop_(loop), fd_(listen_fd), options_(options), on_connection_(std::move(on_connection)) {}

Result<std::unique_ptr<Acceptor>> Acceptor::start(uv_loop_t* loop, int listen_fd, AcceptorOptions options,
                                                  OnConnection on_connection) {
  auto a = std::make_unique<Acceptor>(Key{}, loop, listen_fd, options, std::move(on_connection));
  if (auto st = a->init(); !st.ok()) return st.error();
  return a;
}

Acceptor::~Acceptor() {
  *alive_ = false;
  retry_.close();
  poll_.close();
  waiter_.reset();  // joins its thread
}

Status Acceptor::init() {
  if (int rc = uv_timer_init(loop_, retry_.get()); rc != 0) return Error::from_uv(rc, "uv_timer_init");
  retry_.mark_initialized();
  retry_->data = this;

  int polled = fd_;
  if (options_.wait == AcceptWait::exclusive) {
    auto w = ExclusiveWaiter::start(loop_, fd_, [this] { on_ready(); }, options_.turn);
    if (!w.ok()) return w.error();
    waiter_ = std::move(w.value());
    return Ok{};
  }
  if (options_.wait == AcceptWait::exclusive_nested) {
    nested_epfd_ = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!nested_epfd_) return Error::from_uv(-errno, "epoll_create1");
    if (auto st = register_nested(); !st) return st.error();
    polled = nested_epfd_.get();
  }
  if (int rc = uv_poll_init(loop_, poll_.get(), polled); rc != 0) return Error::from_uv(rc, "uv_poll_init");
  poll_.mark_initialized();
  poll_->data = this;
  return watch();
}

Status Acceptor::register_nested() {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.fd = fd_;
  if (::epoll_ctl(nested_epfd_.get(), EPOLL_CTL_ADD, fd_, &ev) != 0) return Error::from_uv(-errno, "epoll_ctl");
  return Ok{};
}

Status Acceptor::watch() {
  if (waiter_) return waiter_->join();
  int rc = uv_poll_start(poll_.get(), UV_READABLE, [](uv_poll_t* p, int status, int) {
    if (status == 0) static_cast<Acceptor*>(p->data)->on_ready();
  });
  if (rc != 0) return Error::from_uv(rc, "uv_poll_start");
  return Ok{};
}

void Acceptor::unwatch() {
  if (waiter_) waiter_->leave();
  else uv_poll_stop(poll_.get());
}

void Acceptor::pause() {
  ++counters_.pauses;
  paused_ = true;
  unwatch();
  uv_timer_start(retry_.get(), [](uv_timer_t* t) {
    auto* self = static_cast<Acceptor*>(t->data);
    self->paused_ = false;
    ++self->counters_.resumes;
    (void)self->watch();  // a failure here leaves the socket unwatched: counted as a pause
  }, options_.retry_ms, 0);
}

void Acceptor::on_ready() {
  if (paused_) return;  // a readiness report queued before the pause
  ++counters_.wakeups;
  if (nested_epfd_) {
    // Consume the inner readiness report; the listener itself is level-triggered.
    epoll_event ev{};
    (void)::epoll_wait(nested_epfd_.get(), &ev, 1, 0);
  }
  int batch = options_.policy == AcceptPolicy::one ? 1 : options_.max_batch;
  if (options_.turn) {
    // Nobody else accepts while we hold the turn: take our share of what is queued (split with
    // the holders waiting for the turn, so a burst is still dealt out), up to the batch, and stop
    // before an accept that would find EAGAIN. An unknown length (not TCP): one.
    uint32_t limit = static_cast<uint32_t>(options_.policy == AcceptPolicy::one ? std::max(options_.turn_batch, 1) : options_.max_batch);
    uint32_t sharers = options_.turn->queued() + 1;
    auto queued = accept_queue_length(fd_);
    batch = queued.ok() ? static_cast<int>(std::clamp((queued.value() + sharers - 1) / sharers, 1u, limit)) : 1;
  }
  accept_up_to(batch, true);
}

int Acceptor::take_backlog(int max) {
  return paused_ ? 0 : accept_up_to(max, false);
}

int Acceptor::accept_up_to(int batch, bool woken) {
  auto alive = alive_;
  int got = 0;
  // Calls are bounded too: EINTR/ECONNABORTED retries must not loop forever.
  for (int calls = 0; got < batch && calls < batch + 64; ++calls) {
    ++counters_.accept_calls;
    auto accepted = accept_connection(fd_);
    if (!accepted) {
      int err = -accepted.error().errnum;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        ++counters_.accept_eagain;
        if (woken && got == 0) ++counters_.empty_wakeups;
        return got;
      }
      if (err == EINTR) continue;
      ++counters_.errors[err];
      if (out_of_resources(err)) {
        pause();
        return got;
      }
      continue;  // ECONNABORTED, EPERM (firewall)...: that connection is gone, try the next
    }
    ++got;
    ++counters_.accepted;
    if (options_.turn) options_.turn->note_accepted();
    if (options_.rotate > 0 && options_.wait != AcceptWait::poll && ++since_rotate_ >= options_.rotate) {
      // Leave and rejoin the listener's exclusive wait queue: the next wake-up goes to a peer.
      since_rotate_ = 0;
      bool ok = false;
      if (waiter_) {
        ok = waiter_->rejoin().ok();
      } else {
        ::epoll_ctl(nested_epfd_.get(), EPOLL_CTL_DEL, fd_, nullptr);
        ok = register_nested().ok();
      }
      if (ok) ++counters_.rotations;
    }
    auto deliver = on_connection_;  // a copy: the handler may destroy us, and with us on_connection_
    deliver(std::move(*accepted));
    if (!*alive) return got;
  }
  return got;
}

}  // namespace uvcluster::cluster
