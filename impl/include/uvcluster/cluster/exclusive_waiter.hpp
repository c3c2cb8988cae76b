#pragma once
// ExclusiveWaiter: EPOLLEXCLUSIVE wake-ups for a libuv loop.
//
// The kernel ends an EPOLLEXCLUSIVE wake-up walk only at an epoll set that has a thread blocked
// in epoll_wait() on it (ep_poll_callback sets ewake only when waitqueue_active(&ep->wq)). A
// private set that the loop merely polls through its own epoll (uv_poll on the epoll fd) is
// passed over, so every process would still wake: the herd stays. Hence a dedicated thread
// blocks on the private set and hands each readiness to the loop thread (uv_async); it then
// waits until the loop has run `on_ready` (its accept pass) before waiting again, so it never
// spins on a level-triggered readiness the loop has not consumed yet.
//
// With an AcceptTurn (shared by the processes on this socket), the thread first takes the turn,
// then waits for the socket, and passes the turn on only after the loop's accept pass: one holder
// at a time waits and accepts, so no one finds EAGAIN and a burst is dealt out in turn (see
// accept_turn.hpp). While the waiter has left the socket (an Acceptor out of fds) it does not
// queue for the turn, so its peers keep accepting.
#include <uv.h>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "uvcluster/cluster/accept_turn.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

class ExclusiveWaiter {
  struct Key {  // start() is the only way in: construction can fail
    explicit Key() = default;
  };

 public:
  // Registers `listen_fd` (borrowed: it must outlive the waiter) with EPOLLIN|EPOLLEXCLUSIVE in a
  // new private epoll set and starts the waiter thread. `on_ready` runs on the loop thread each
  // time the set reports the socket readable; it may destroy the waiter. `turn` (optional): take
  // it before each wait.
  static Result<std::unique_ptr<ExclusiveWaiter>> start(uv_loop_t* loop, int listen_fd,
                                                        std::function<void()> on_ready,
                                                        std::shared_ptr<AcceptTurn> turn = nullptr);
  // Stops the thread (eventfd in the set), joins it, closes the async handle. Loop thread.
  ~ExclusiveWaiter();
  ExclusiveWaiter(const ExclusiveWaiter&) = delete;
  ExclusiveWaiter& operator=(const ExclusiveWaiter&) = delete;

  // nginx's ngx_reorder_accept_events(): leave and rejoin the socket's exclusive wait queue, so
  // the next wake-up goes to a peer. Loop thread.
  Status rejoin();
  // Stop / start waiting on the socket (the thread stays; an Acceptor out of fds pauses so).
  void leave();
  Status join();

  ExclusiveWaiter(Key, int listen_fd, std::function<void()> on_ready, std::shared_ptr<AcceptTurn> turn);

 private:
  Status init(uv_loop_t* loop);
  Status add_listener();
  void wait_loop();  // the waiter thread
  void ready();      // loop thread, from the async handle

  int listen_fd_;
  Fd epfd_;
  Fd stopfd_;
  std::function<void()> on_ready_;
  std::shared_ptr<AcceptTurn> turn_;
  detail::UvHandle<uv_async_t> async_;
  std::thread thread_;
  std::mutex m_;
  std::condition_variable cv_;
  bool busy_ = false;  // the loop owes an accept pass; the thread waits for it
  bool stop_ = false;
  bool joined_ = true;  // the socket is in the set (leave/join); the thread queues for the turn only then
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // on_ready may destroy us
};

}  // namespace uvcluster::cluster
