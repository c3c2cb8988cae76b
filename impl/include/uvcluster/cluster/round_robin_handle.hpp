#pragma once
// Node's RoundRobinHandle (lib/internal/cluster/round_robin_handle.js): the primary accepts and
// hands each connection to an idle worker (TCP and unix sockets alike; never UDP). The scheduling part is transport-free (a Sender per
// worker) so it can be tested with fakes; RoundRobinHandle adds the listening socket (accepted on
// by cluster::Acceptor) and the hand-off timeout.
//
// Each worker has `window` hand-off slots (Node: 1; `uvcluster run --rr-window K`). Every hand-off
// ends, and frees its slot, in exactly one of these ways:
//   accepted  → the primary closes its copy; the worker gets the next queued connection.
//   refused   → (accepted:false, e.g. the worker is at server.maxConnections, or a NACK: the fd
//               never arrived) the worker stays in the rotation, as in Node, but rests a moment
//               (5 ms, doubling with each refusal in a row up to 200 ms; an accept resets it) so
//               a full worker is not asked again at IPC speed. The connection is requeued in
//               front, preferably for another worker. Each connection has an attempt budget
//               (`attempts_per_worker` × the workers in the rotation): past it, it is closed, so
//               it cannot ping-pong forever between workers that keep refusing.
//   worker gone (exit, channel closed) → the connection is requeued (one attempt spent).
//   timeout   → no answer within the timeout: the primary closes its copy (the worker still has
//               its own and may serve it) and gives the worker nothing more until it answers.
//   send failed (the primary is out of fds for its copy) → that connection is closed.
//
// Sticky scheduling (Policy::sticky, beyond Node): each connection carries a key (a hash of the
// client's address) and goes only to that key's worker, chosen by rendezvous hashing among the
// workers in the rotation and then pinned, so a client keeps its worker while that worker is in
// the rotation — a worker joining later takes no one's clients — and is remapped when it leaves.
// A busy (or resting) worker's connections wait for it in the queue; they do not go elsewhere.
// The pins are bounded (kMaxPins): when full they are forgotten, and clients are placed afresh
// by the hash, which only moves those whose pinned worker joined after others.
#include <uv.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "uvcluster/cluster/acceptor.hpp"
#include "uvcluster/cluster/server_handle.hpp"
#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/detail/ring.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

class RoundRobinScheduler {
 public:
  using SendResult = HandOffSend;
  using Reply = HandOffReply;
  // Hands `conn` to a worker: the primary keeps its copy until the answer (`sent`), or closes it
  // at once (`given`: a refusal brings the connection back).
  using Sender = HandOffSender;

  struct Counters {
    uint64_t accepted = 0;   // accepted:true
    uint64_t refused = 0;    // accepted:false or NACK
    uint64_t requeued = 0;   // connections put back for another attempt
    uint64_t dropped = 0;    // closed: attempt budget spent, or no fd to send it
    uint64_t timed_out = 0;  // hand-offs ended by the timeout
  };

  static constexpr int kDefaultAttemptsPerWorker = 8;
  static constexpr uint64_t kRestBaseMs = 5;
  static constexpr uint64_t kRestMaxMs = 200;
  static constexpr size_t kMaxPins = 1 << 16;
  enum class Pick { idle_worker, sticky };
  explicit RoundRobinScheduler(int attempts_per_worker = kDefaultAttemptsPerWorker, Pick pick = Pick::idle_worker);
  // Hand-offs in flight per worker at most (>= 1; Node's is 1).
  void set_window(int window) { window_ = std::max(1, window); }

  void add(int worker, Sender send);  // then hands it a queued connection, if any
  // Drops a worker from the rotation. Returns true when no worker is left.
  // `gone`: the worker can no longer answer (exited, channel closed) — beyond Node, a connection
  // in flight to it goes back to the queue instead of being lost. Otherwise (a graceful
  // disconnect, a `close` act) the worker may still accept it, so its reply is awaited:
  // accepted → closed here, refused → queued for another worker.
  bool remove(int worker, bool gone = true);
  // The worker has gone for good: connections still awaiting its reply are queued again.
  void worker_gone(int worker);
  // A freshly accepted connection (Node's distribute); `key` places it under Pick::sticky.
  void push(Fd conn, uint64_t key = 0);
  // Pick::sticky: the worker `key` goes to now (pinning it), or 0 with no worker in the rotation.
  int worker_for(uint64_t key);
  Pick pick() const { return pick_; }
  // Ends every hand-off sent at or before `sent_before` (a time from the clock) that has no answer.
  size_t expire(uint64_t sent_before);
  void set_clock(std::function<uint64_t()> now) { now_ = std::move(now); }
  // Resting workers whose rest is over take work again. `on_rest(delay_ms)` asks the owner to
  // call wake() after that delay (RoundRobinHandle arms a timer).
  void wake();
  void set_on_rest(std::function<void(uint64_t delay_ms)> fn) { on_rest_ = std::move(fn); }

  bool has(int worker) const { return all_.count(worker) != 0; }
  bool empty() const { return all_.empty(); }
  size_t queued() const { return queue_.size(); }
  size_t free_count() const { return free_.size(); }
  size_t in_flight() const;
  // Connections each worker accepted (accepted:true replies).
  const std::map<int, uint64_t>& handed_out() const { return handed_out_; }
  const Counters& counters() const { return counters_; }
  void close_queue() {
    queue_.clear();
    orphans_.clear();
  }

 private:
  struct Conn {
    Fd fd;
    int attempts = 0;     // failed hand-offs so far
    int refused_by = 0;   // the last worker that failed it (0: none)
    uint64_t key = 0;     // Pick::sticky: the client's address hash
  };
  struct InFlight {
    uint64_t id;
    Conn conn;
    uint64_t sent_at;
  };
  struct Member {
    std::shared_ptr<const Sender> send;  // shared: a hand-off holds it without copying the closure
    detail::Ring<InFlight> in_flight{1};  // oldest first, at most window_
    uint64_t stalled = 0;  // id of the oldest timed-out hand-off: no more until the worker answers it
    int refusals_in_row = 0;
    uint64_t rest_until = 0;  // no hand-off before this time (clock units: ms)
  };
  struct Orphan {  // in flight to a worker that left the rotation gracefully
    int worker;
    Conn conn;
  };
  void handoff(int worker);
  void on_reply(int worker, uint64_t id, bool accepted, Fd returned);
  static void reply_to(void* scheduler, int worker, uint64_t id, bool accepted, Fd returned);  // a Reply's function
  void requeue(Conn conn, int failed_worker);
  void dispatch(int not_to = 0);  // hands the queue's front to a free worker (not `not_to`)
  std::optional<Conn> take_for(int worker);

  int attempts_per_worker_;
  int window_ = 1;
  Pick pick_;
  std::unordered_map<uint64_t, int> pins_;  // Pick::sticky: key -> worker
  std::function<uint64_t()> now_ = [] { return uint64_t{0}; };
  std::function<void(uint64_t)> on_rest_;
  std::map<uint64_t, Orphan> orphans_;  // by hand-off id
  std::map<int, Member> all_;
  std::vector<int> free_;  // idle workers, oldest first
  detail::Ring<Conn> queue_{16};
  std::map<int, uint64_t> handed_out_;
  Counters counters_;
  uint64_t next_id_ = 1;
};

// The listening socket + scheduler. Accepts one connection per wake-up (no accept known to fail
// with EAGAIN); out of fds it pauses (Acceptor). A sweep timer ends
// hand-offs that got no answer within `handoff_timeout_ms`.
class RoundRobinHandle : public ServerHandle {
 public:
  static constexpr uint64_t kDefaultHandoffTimeoutMs = 10000;
  static constexpr int kMaxBacklogTaken = 65536;  // stop_accepting: at most the largest backlog
  RoundRobinHandle(uv_loop_t* loop, BoundSocket listening, uint64_t handoff_timeout_ms,
                   RoundRobinScheduler::Pick pick = RoundRobinScheduler::Pick::idle_worker);
  ~RoundRobinHandle() override;
  RoundRobinHandle(const RoundRobinHandle&) = delete;
  RoundRobinHandle& operator=(const RoundRobinHandle&) = delete;

  // Binds + listens (a unix socket: then readableAll / writableAll, as Node's net.Server in the
  // primary does), then starts accepting. Errors as values.
  static Result<std::unique_ptr<RoundRobinHandle>> open(
      uv_loop_t* loop, const ServerQuery& q, uint64_t handoff_timeout_ms = kDefaultHandoffTimeoutMs,
      RoundRobinScheduler::Pick pick = RoundRobinScheduler::Pick::idle_worker);
  RoundRobinScheduler& scheduler() { return sched_; }
  // TCP only: a unix socket has none, and Node's reply then carries no sockname.
  const std::optional<SockName>& sockname() const { return sockname_; }
  // Accept counters of the listening socket, kept after close().
  AcceptorCounters accept_counters() const {
    AcceptorCounters c = closed_accept_;
    if (acceptor_) c += acceptor_->counters();
    return c;
  }
  void close();
  // Closes the listening socket (and a unix socket's path), keeping the queue and the timers.
  void close_listener();

  // ServerHandle: the reply carries the sockname (Node's); connections follow as `newconn`.
  // Policy::sticky picks RoundRobinScheduler::Pick::sticky.
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);
  void add(int worker, AddReply reply) override;
  bool remove(int worker, bool gone) override;
  bool has(int worker) const override { return sched_.has(worker); }
  void count(PrimaryStats& stats) const override;
  void stop_accepting() override;
  size_t waiting() const override { return sched_.queued(); }

 private:
  Status start(uv_loop_t* loop);
  std::function<HandOffSender(int worker)> newconn_;
  uv_loop_t* loop_;
  Fd fd_;
  SocketFile file_;  // a unix socket's path, removed on close()
  std::unique_ptr<Acceptor> acceptor_;
  AcceptorCounters closed_accept_;
  detail::UvHandle<uv_timer_t> sweep_;
  detail::UvHandle<uv_timer_t> wake_;  // ends a refusing worker's rest
  uint64_t wake_due_ = 0;
  uint64_t timeout_ms_;
  RoundRobinScheduler sched_;
  std::optional<SockName> sockname_;
};

}  // namespace uvcluster::cluster
