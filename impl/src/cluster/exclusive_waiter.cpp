#include "uvcluster/cluster/exclusive_waiter.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <system_error>

namespace uvcluster::cluster {

namespace {
constexpr uint64_t kStopTag = 1;
constexpr uint64_t kListenerTag = 2;
}  // namespace

ExclusiveWaiter::ExclusiveWaiter(Key, int listen_fd, std::function<void()> on_ready,
                                 std::shared_ptr<AcceptTurn> turn)
    : listen_fd_(listen_fd), on_ready_(std::move(on_ready)), turn_(std::move(turn)) {}

Result<std::unique_ptr<ExclusiveWaiter>> ExclusiveWaiter::start(uv_loop_t* loop, int listen_fd,
                                                               std::function<void()> on_ready,
                                                               std::shared_ptr<AcceptTurn> turn) {
  auto w = std::make_unique<ExclusiveWaiter>(Key{}, listen_fd, std::move(on_ready), std::move(turn));
  if (auto st = w->init(loop); !st.ok()) return st.error();
  return w;
}

Status ExclusiveWaiter::init(uv_loop_t* loop) {
  epfd_ = Fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!epfd_) return Error::from_uv(-errno, "epoll_create1");
  stopfd_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stopfd_) return Error::from_uv(-errno, "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kStopTag;
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, stopfd_.get(), &ev) != 0)
    return Error::from_uv(-errno, "epoll_ctl");
  if (auto st = add_listener(); !st.ok()) return st;
  int rc = uv_async_init(loop, async_.get(), [](uv_async_t* a) {
    static_cast<ExclusiveWaiter*>(a->data)->ready();
  });
  if (rc != 0) return Error::from_uv(rc, "uv_async_init");
  async_.mark_initialized();
  async_->data = this;
  if (turn_) turn_->queue_up();  // before the thread runs: in the queue once start() returns
  // Signals stay with the loop thread (libuv's signal pipe, EINTR-free waiter): the thread
  // inherits a fully blocked mask.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    thread_ = std::thread([this] { wait_loop(); });
  } catch (const std::system_error& e) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return Error::from_uv(-e.code().value(), "pthread_create");
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return Ok{};
}

Status ExclusiveWaiter::add_listener() {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u64 = kListenerTag;
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, listen_fd_, &ev) != 0)
    return Error::from_uv(-errno, "epoll_ctl");
  return Ok{};
}

Status ExclusiveWaiter::rejoin() {
  // EPOLLEXCLUSIVE entries cannot be EPOLL_CTL_MOD'ed; re-adding puts us at the queue's tail.
  leave();
  return join();
}

void ExclusiveWaiter::leave() {
  ::epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, listen_fd_, nullptr);
  std::lock_guard lk(m_);
  joined_ = false;
}

Status ExclusiveWaiter::join() {
  if (auto st = add_listener(); !st.ok()) return st;
  {
    std::lock_guard lk(m_);
    joined_ = true;
  }
  cv_.notify_one();
  return Ok{};
}

ExclusiveWaiter::~ExclusiveWaiter() {
  *alive_ = false;
  {
    std::lock_guard lk(m_);
    stop_ = true;
  }
  cv_.notify_one();
  uint64_t one = 1;
  if (stopfd_) (void)!::write(stopfd_.get(), &one, sizeof one);
  if (turn_) turn_->wake_waiters();
  if (thread_.joinable()) thread_.join();
  // Members then close async_ (no send can follow: the thread is gone) and the fds.
}

void ExclusiveWaiter::wait_loop() {
  std::function<bool()> stopping_fn = [this] {
    std::lock_guard lk(m_);
    return stop_;
  };
  auto& stopping = stopping_fn;
  bool use_turn = turn_ != nullptr;
  for (;;) {
    // The turn, when there is one, is held from before the wait until the loop's accept pass is
    // done, and released at the end of this iteration whichever way it ends.
    struct Holding {
      AcceptTurn* turn = nullptr;
      const std::function<bool()>* stopping;
      ~Holding() {
        if (turn) turn->release(/*again=*/!(*stopping)());
      }
    } holding{nullptr, &stopping_fn};
    if (use_turn) {
      {
        std::unique_lock lk(m_);
        if (!joined_ && !stop_) {
          lk.unlock();
          turn_->leave_queue();  // not waiting on the socket: the turn must not stop at our ticket
          lk.lock();
        }
        cv_.wait(lk, [this] { return joined_ || stop_; });
        if (stop_) return;
      }
      if (turn_->acquire(stopping)) holding.turn = turn_.get();
      else if (stopping()) return;
      else use_turn = false;  // the turn is unusable (ENOTRECOVERABLE): wait as without one
      if (holding.turn && turn_->should_pass()) continue;  // a queued peer is behind: its turn
    }
    epoll_event evs[2];
    int n = ::epoll_wait(epfd_.get(), evs, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;
    bool listener = false;
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.u64 == kStopTag) return;
      listener = true;
    }
    if (!listener) continue;
    std::unique_lock lk(m_);
    if (stop_) return;
    busy_ = true;
    uv_async_send(async_.get());
    cv_.wait(lk, [this] { return !busy_ || stop_; });
    if (stop_) return;
  }
}

void ExclusiveWaiter::ready() {
  // Copies: on_ready may destroy this object (e.g. the connection handler closes the server).
  auto alive = alive_;
  auto fn = on_ready_;
  fn();
  if (!*alive) return;
  {
    std::lock_guard lk(m_);
    busy_ = false;
  }
  cv_.notify_one();
}

}  // namespace uvcluster::cluster
