#pragma once
// Node's RoundRobinHandle (lib/internal/cluster/round_robin_handle.js): the primary accepts and
// hands each connection to an idle worker. The scheduling part is transport-free (a Sender per
// worker) so it can be tested with fakes; RoundRobinHandle adds the listening socket.
#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <optional>

#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

class RoundRobinScheduler {
 public:
  // Hands `conn` (the primary keeps ownership of its copy) to a worker; `reply(accepted)` must be
  // called once the worker answered. Returns false if it could not be sent (channel closed).
  using Sender = std::function<bool(int conn, std::function<void(bool accepted)> reply)>;

  void add(int worker, Sender send);  // then hands it a queued connection, if any
  // Drops a worker from the rotation. Returns true when no worker is left.
  // `gone`: the worker can no longer answer (exited, channel closed) — beyond Node, a connection
  // in flight to it goes back to the front of the queue instead of being lost. Otherwise (a
  // graceful disconnect, a `close` act) the worker may still accept it, so its reply is awaited:
  // accepted → closed here, refused → queued for another worker.
  bool remove(int worker, bool gone = true);
  // The worker has gone for good: connections still awaiting its reply are queued again.
  void worker_gone(int worker);
  void push(Fd conn);  // a freshly accepted connection (Node's distribute)
  bool has(int worker) const { return all_.count(worker) != 0; }
  bool empty() const { return all_.empty(); }
  size_t queued() const { return queue_.size(); }
  size_t free_count() const { return free_.size(); }
  // Connections each worker accepted (accepted:true replies).
  const std::map<int, uint64_t>& handed_out() const { return handed_out_; }
  void close_queue() {
    queue_.clear();
    orphans_.clear();
  }

 private:
  struct Member {
    Sender send;
    std::optional<Fd> in_flight;
    uint64_t generation = 0;  // guards replies that arrive after remove()+add()
  };
  void handoff(int worker);
  void on_reply(int worker, uint64_t generation, bool accepted);

  struct Orphan {
    int worker;
    Fd conn;
  };
  std::map<uint64_t, Orphan> orphans_;  // by generation: in flight to a worker that left
  std::map<int, Member> all_;
  std::list<int> free_;  // idle workers, oldest first
  std::deque<Fd> queue_;
  std::map<int, uint64_t> handed_out_;
  uint64_t next_generation_ = 1;
};

// The listening socket + scheduler. Accepts until EAGAIN on each wake-up (primary side: it is
// the only acceptor, so draining costs no herd); a failed accept is skipped (Node ≥ 18).
class RoundRobinHandle {
 public:
  RoundRobinHandle(uv_loop_t* loop, Fd listening);
  ~RoundRobinHandle();
  RoundRobinHandle(const RoundRobinHandle&) = delete;
  RoundRobinHandle& operator=(const RoundRobinHandle&) = delete;

  // Binds + listens (errors as values), then starts accepting.
  static Result<std::unique_ptr<RoundRobinHandle>> open(uv_loop_t* loop, const BindSpec& spec,
                                                        int backlog);
  RoundRobinScheduler& scheduler() { return sched_; }
  const SockName& sockname() const { return sockname_; }
  uint64_t accept_errors() const { return accept_errors_; }
  void close();

 private:
  static void on_readable(uv_poll_t* h, int status, int events);
  Fd fd_;
  detail::UvHandle<uv_poll_t> poll_;
  detail::UvHandle<uv_timer_t> backoff_;  // resumes accepting after EMFILE
  RoundRobinScheduler sched_;
  SockName sockname_;
  uint64_t accept_errors_ = 0;
};

}  // namespace uvcluster::cluster
