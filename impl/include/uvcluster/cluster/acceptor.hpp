#pragma once
// cluster::Acceptor: the one accept loop of the library, used by the rr primary
// (RoundRobinHandle), the C++ worker on a shared socket (cluster::Worker) and the lab's
// hello-native. It accepts on a borrowed listening socket when the socket is readable and hands
// each connection (non-blocking, close-on-exec) to `on_connection`.
//
//   * policy `one`: one accept per wake-up (libuv >= 1.45, the one inside Node 20);
//     `drain`: accept until EAGAIN, at most `max_batch` per wake-up (Debian's libuv 1.44).
//   * wait: the loop polls the socket (uv_poll), or an ExclusiveWaiter thread blocks on a private
//     EPOLLEXCLUSIVE set (one process woken per connection), or the loop polls that private set
//     (`exclusive_nested`, which loses exclusivity: kept to measure it). `rotate` re-registers the
//     socket every N accepts so the next wake-up goes to a peer (nginx's reorder). That is not
//     enough under a burst: the socket is level-triggered, so a worker back from its accept pass
//     is told "readable" again while the backlog lasts and races the peer woken for the same
//     connection (EAGAIN), and whoever comes back first takes most of the burst. `turn` (an
//     AcceptTurn shared by the processes on the socket, exclusive waits only) fixes both: one
//     holder at a time waits and accepts, and the turn goes round (accept_turn.hpp). The holder
//     takes its share (up to `turn_batch`) of the connections already queued per turn: the hand-off (a
//     futex wake of the next process's waiter thread, its epoll_wait, its loop's wake-up) is paid
//     once per batch under load instead of once per connection.
//   * out of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): the listening socket is level-
//     triggered, so the pending connection would wake us again at once and the loop would spin.
//     As nginx does, the acceptor stops watching the socket and retries after `retry_ms`; the
//     connections wait in the kernel's backlog meanwhile. Other errors (ECONNABORTED, EPERM...)
//     skip that connection, as Node's libuv does.
//
// Loop thread only. `on_connection` may destroy the acceptor.
#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>

#include "uvcluster/cluster/accept_turn.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

class ExclusiveWaiter;

enum class AcceptPolicy {
  one,    // one accept per wake-up (libuv >= 1.45, the one inside Node 20)
  drain,  // accept until EAGAIN (Debian's libuv 1.44)
};

enum class AcceptWait {
  poll,              // the loop polls the listening socket
  exclusive,         // a waiter thread blocks on a private EPOLLEXCLUSIVE set (ExclusiveWaiter)
  exclusive_nested,  // the loop polls that private set: exclusivity is lost (measured in the lab)
};

struct AcceptorOptions {
  AcceptPolicy policy = AcceptPolicy::one;
  AcceptWait wait = AcceptWait::poll;
  int max_batch = 256;   // drain: accepts per wake-up at most (keeps other handles served)
  int rotate = 0;        // exclusive waits: re-register every N accepts; 0 = never
  uint64_t retry_ms = 100;  // out of fds: how long the socket is left unwatched
  std::shared_ptr<AcceptTurn> turn = nullptr;  // exclusive: accept in turn with the other holders; null = no turn
  // With a turn (policy one): accept up to this many per turn of the connections already queued,
  // at most this holder's share (queued / (holders waiting + 1), rounded up, so a burst is still
  // dealt out); the queue's length comes from TCP_INFO, so no accept finds EAGAIN. One hand-off of
  // the turn then serves several connections under load. 1 = one per turn.
  int turn_batch = 4;
};

struct AcceptorCounters {
  uint64_t wakeups = 0;        // readiness reports handled
  uint64_t accept_calls = 0;   // accept4() calls
  uint64_t accepted = 0;       // connections handed to on_connection
  // accept() calls that failed with EAGAIN — what perf's `syscalls:sys_exit_accept4 --filter
  // 'ret == -11'` counts. Under `drain` every batch ends in one.
  uint64_t accept_eagain = 0;
  uint64_t empty_wakeups = 0;  // wake-ups whose first accept got EAGAIN: the herd's lower bound
  uint64_t rotations = 0;      // `rotate` re-registrations
  uint64_t pauses = 0;         // out of fds/memory: the socket stopped being watched
  uint64_t resumes = 0;        // ... and was watched again after retry_ms
  std::map<int, uint64_t> errors;  // other failed accepts by errno (EMFILE = 24), not EAGAIN/EINTR

  uint64_t errors_total() const;
  AcceptorCounters& operator+=(const AcceptorCounters& o);
};

class Acceptor {
  struct Key {
    explicit Key() = default;
  };

 public:
  using OnConnection = std::function<void(Fd conn)>;
  // Starts watching `listen_fd` (borrowed: it must outlive the acceptor).
  static Result<std::unique_ptr<Acceptor>> start(uv_loop_t* loop, int listen_fd,
                                                 AcceptorOptions options, OnConnection on_connection);
  Acceptor(Key, uv_loop_t* loop, int listen_fd, AcceptorOptions options, OnConnection on_connection);
  ~Acceptor();
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  const AcceptorCounters& counters() const { return counters_; }
  bool paused() const { return paused_; }
  // Accepts what the kernel already queued, until EAGAIN (at most `max`), and delivers each: a
  // listener about to close passes its backlog on instead of having the kernel reset it. Stops
  // early out of fds (those connections stay queued). Returns how many were delivered. May
  // destroy the acceptor (through on_connection).
  int take_backlog(int max);

 private:
  Status init();
  Status watch();
  void unwatch();
  void on_ready();
  // Accepts and delivers up to `batch` connections (out of fds: pauses); returns how many.
  // `woken`: on a readiness report (an EAGAIN first counts as an empty wake-up).
  int accept_up_to(int batch, bool woken);
  void pause();
  Status register_nested();

  uv_loop_t* loop_;
  int fd_;
  AcceptorOptions options_;
  OnConnection on_connection_;
  AcceptorCounters counters_;
  detail::UvHandle<uv_poll_t> poll_;       // poll, exclusive_nested
  detail::UvHandle<uv_timer_t> retry_;     // out of fds
  std::unique_ptr<ExclusiveWaiter> waiter_;  // exclusive
  Fd nested_epfd_;                         // exclusive_nested: the private set the loop polls
  int since_rotate_ = 0;
  bool paused_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // on_connection may destroy us
};

}  // namespace uvcluster::cluster
