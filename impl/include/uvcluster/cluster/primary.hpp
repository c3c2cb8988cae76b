#pragma once
// The cluster primary (Node's lib/internal/cluster/primary.js): forks workers with
// NODE_UNIQUE_ID, keeps the worker table, answers queryServer with a RoundRobinHandle or a
// SharedHandle, and emits Node's events in Node's order (docs/protocol.md §3, §4.2).
// Works with unmodified Node workers and with C++ workers (cluster/worker.hpp).
// The handles (RoundRobinHandle, SharedHandle, ReusePortHandle) sit behind one ServerHandle
// interface (server_handle.hpp), as in Node.
//
// Faults, and what they lead to (beyond Node, which wedges or drops in several of these):
//   * a worker refuses a connection (accepted:false, e.g. at server.maxConnections) or its fd
//     never arrives (NODE_HANDLE_NACK: the worker is out of fds): the worker stays in the
//     rotation but rests 5-200 ms, and the connection goes to another worker; after 8 failed
//     hand-offs per worker in the rotation it is closed.
//   * a worker exits or its channel closes: what was in flight to it is requeued.
//   * a worker does not answer a hand-off within `handoff_timeout_ms`: the primary closes its
//     copy (the worker may still serve its own) and gives it nothing more until it answers.
//   * the primary itself is out of fds: it stops accepting and retries every 100 ms (nginx);
//     connections wait in the kernel's backlog meanwhile.
//   * a worker's listen fails (EADDRINUSE...): that worker gets the errno (its server emits
//     `error`, as in Node); the worker and the cluster are left alone, a later retry may succeed.
//   * a worker's channel breaks (a line that is not JSON, an oversized frame, an fd without a
//     NODE_HANDLE, a truncated frame): `channel_error` is emitted and the worker is disconnected
//     at once (its channel closed), so it leaves the rotation instead of being starved; the owner
//     decides whether to replace it.
#include <uv.h>

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "uvcluster/cluster/acceptor.hpp"
#include "uvcluster/cluster/protocol.hpp"
#include "uvcluster/detail/event.hpp"
#include "uvcluster/detail/ring.hpp"
#include "uvcluster/detail/ticker.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/process.hpp"

namespace uvcluster::cluster {

// rr and none are Node's SCHED_RR / SCHED_NONE. reuseport and exclusive are ours: reuseport binds
// one SO_REUSEPORT socket per worker; exclusive is `none` for the primary, and C++ workers
// register the shared socket with EPOLLEXCLUSIVE (they learn it from UVCLUSTER_SCHED_POLICY);
// sticky is rr that sends every connection of one client address to the same worker.
enum class Policy { rr, none, reuseport, exclusive, sticky };
const char* policy_name(Policy p);
std::optional<Policy> parse_policy(std::string_view s);
// NODE_CLUSTER_SCHED_POLICY: "rr" | "none" (and our three); anything else → rr (Node on Linux).
Policy policy_from_env();

// What `listening` reports: Node's {addressType, address, port, fd}.
struct Address {
  std::optional<std::string> address{};  // null for listen(port)
  int port = 0;
  nlohmann::json address_type = 4;  // 4 | 6 | -1 | "udp4" | "udp6", as the worker sent it
  nlohmann::json to_json() const;
};

struct PrimarySettings {
  std::string exec;                           // the worker program (.js runs under node)
  std::vector<std::string> args{};
  std::vector<std::string> exec_argv{};
  std::optional<std::string> exec_path{};     // default: node for .js, else exec itself
  std::optional<std::string> cwd{};
  bool silent = false;
  std::optional<std::vector<Stdio>> stdio{};  // must contain one Stdio::ipc()
  bool detached = false;  // own process group: a terminal's Ctrl-C reaches only the primary
  std::optional<Policy> policy{};             // default: policy_from_env()
  // Workers never outlive this process: when it dies, however it dies, a watchdog process
  // SIGKILLs every worker and the processes they started (cluster/watchdog.hpp). Each worker
  // then leads its own process group, as with `detached`.
  bool workers_die_with_primary = true;
  // rr: a hand-off without an answer for this long ends (see the fault list above).
  uint64_t handoff_timeout_ms = 10000;
  // rr: hand-offs in flight per worker at most (Node: 1). Above 1 the primary sends the next
  // connection without waiting for the worker's answer to the previous ones (`uvcluster run
  // --rr-window K`): fewer round trips, a little less even spread over short bursts.
  int rr_window = 1;
  // reuseport: turn on net.ipv4.tcp_migrate_req (sockets.hpp) so a dying worker's queued
  // connections move to the other workers instead of being reset. It is a setting of the whole
  // network namespace and needs root; without it a killed worker's queue is lost, unless the
  // steering program below is attached (Linux >= 5.14: it migrates queues by itself).
  bool reuseport_migrate_queues = true;
  // reuseport: steer new connections away from stopped workers and workers out of fds with an
  // SK_REUSEPORT program (reuseport_steering.hpp; root only). false: as if loading it failed
  // (`steering_unavailable` is emitted, the kernel's hash applies), for tests.
  bool reuseport_steering = true;
};

// reuseport steering: a worker left (eligible false) or rejoined the set of sockets a port's
// SK_REUSEPORT program picks from.
struct SteeringChange {
  int worker = 0;
  bool eligible = true;
  std::string reason;  // "stopped" | "continued" | "fds-low" | "fds-free"
  size_t steered = 0;  // sockets picked among from now on; 0: the kernel's own hash, over all
};

// Counters over the primary's life (rr hand-offs and the primary's own accepts).
struct PrimaryStats {
  struct HandOffs {
    uint64_t accepted = 0;
    uint64_t refused = 0;    // accepted:false or NACK
    uint64_t requeued = 0;
    uint64_t dropped = 0;    // closed: attempt budget spent, no fd for the primary's copy, or
                             // lost by a worker that had it (see HandOffSend::given)
    uint64_t timed_out = 0;
  } handoffs;
  AcceptorCounters accept;  // the rr listening sockets (pauses = out-of-fds pauses)
  uint64_t queued = 0;      // connections waiting in the primary now
  uint64_t in_flight = 0;   // hand-offs awaiting an answer now
  uint64_t channel_errors = 0;
  // rr: from sending a newconn to the worker's answer (accepted or refused), in the primary. A
  // connection sent as the answer to the previous one frees its worker is stamped with that
  // answer's clock reading (the send follows it within the same call, well under a µs).
  struct HandOffLatency {
    static constexpr std::array<double, 17> kBoundsSeconds = {
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    std::array<uint64_t, kBoundsSeconds.size()> counts{};  // counts[i]: bound[i-1] < t <= bound[i]
    uint64_t count = 0;  // every answer, those above the last bound included
    double sum_seconds = 0;
    void record(double seconds);
  } handoff_latency;
};

class ServerHandle;
struct ServerQuery;

// How the rr handle reaches a worker: the primary sends {act:"newconn"} with a copy of `conn`.
enum class HandOffSend {
  sent,    // `reply` will be called once (or the worker leaves)
  // Sent, and the connection is the worker's now: the scheduler closes its copy at once (the
  // primary's close is then never the socket's last, so the teardown is not the primary's). The
  // worker gives a refused connection back with its answer (`returnRefused`, docs/protocol.md);
  // one that never reached it (NACK) or that it does not give back is lost.
  given,
  gone,    // the worker's channel is closed: it leaves the rotation
  failed,  // nothing sent for lack of resources (no fd for the copy): the connection is closed
};
// A hand-off's way back to the scheduler that sent it: a plain value (a function, its target,
// the worker and the hand-off's id), so sending a connection allocates nothing for it.
class HandOffReply {
 public:
  // `returned`: the connection a worker gave back with its refusal (HandOffSend::given), if any.
  using Fn = void (*)(void* target, int worker, uint64_t id, bool accepted, Fd returned);
  HandOffReply() = default;
  HandOffReply(Fn fn, void* target, int worker, uint64_t id) : fn_(fn), target_(target), worker_(worker), id_(id) {}
  void operator()(bool accepted, Fd returned = {}) const {
    if (fn_) fn_(target_, worker_, id_, accepted, std::move(returned));
  }
  explicit operator bool() const { return fn_ != nullptr; }

 private:
  Fn fn_ = nullptr;
  void* target_ = nullptr;
  int worker_ = 0;
  uint64_t id_ = 0;
};
using HandOffSender = std::function<HandOffSend(int conn, HandOffReply reply)>;

// The newconns sent to one worker that await its answer (at most its window): a record each,
// matched on the message's seq, in place of a callback per connection.
class HandOffTable {
 public:
  struct Record {
    int64_t seq = 0;
    HandOffReply reply;
    uint64_t sent_ns = 0;  // uv_hrtime() at the send, for the hand-off latency
    uint64_t serial = 0;   // the server handle that sent it: its answer is passed on only while it lives
    bool given = false;    // HandOffSend::given: a refusal must bring the connection back
  };
  void add(const Record& r) { records_.push_back(r); }
  // The record of `seq`, removed; nullopt when none waits (answered already, or not a newconn).
  std::optional<Record> take(int64_t seq);
  void clear() { records_.clear(); }
  size_t size() const { return records_.size(); }

 private:
  std::vector<Record> records_;  // oldest first; a few entries (the window), so a scan is cheapest
};


class Primary;
class Watchdog;

// The primary's view of one worker (Node's cluster Worker in the primary).
class WorkerHandle {
 public:
  // Node's worker.state in the primary (to_string spells it).
  enum class State { none, online, listening, disconnected, dead };

  int id() const { return id_; }
  ChildProcess* process() const { return process_.get(); }
  std::optional<int> pid() const { return pid_; }
  State state() const { return state_; }
  // Node: undefined until the worker exits or disconnects, then a boolean.
  std::optional<bool> exited_after_disconnect() const { return exited_after_disconnect_; }
  bool is_dead() const { return exit_status_.has_value(); }
  const std::optional<ExitStatus>& exit_status() const { return exit_status_; }
  bool is_connected() const;
  // Connections handed to this worker under rr (accepted:true replies).
  uint64_t connections() const { return connections_; }

  bool send(const Json& message, std::function<void(const Error*)> done = {});
  // Graceful: sets exitedAfterDisconnect, sends {act:"disconnect"}, drops its handles and removes
  // it from the table at once (Node). The worker closes its servers and disconnects.
  void disconnect();
  // Node v20: just process.kill(signal); exitedAfterDisconnect is not set.
  bool kill(const std::string& signal = "SIGTERM");

  void on_online(std::function<void()> fn) { online_.add(std::move(fn)); }
  void on_listening(std::function<void(const Address&)> fn) { listening_.add(std::move(fn)); }
  void on_message(std::function<void(const Json&)> fn) { message_.add(std::move(fn)); }
  void on_disconnect(std::function<void()> fn) { disconnect_.add(std::move(fn)); }
  void on_exit(std::function<void(const ExitStatus&)> fn) { exit_.add(std::move(fn)); }
  void on_error(std::function<void(const Error&)> fn) { error_.add(std::move(fn)); }

 private:
  friend class Primary;
  int id_ = 0;
  std::weak_ptr<Primary> primary_;
  std::shared_ptr<ChildProcess> process_;  // released after the process's `close`
  std::optional<int> pid_{};
  std::optional<ExitStatus> exit_status_{};
  State state_ = State::none;
  std::optional<bool> exited_after_disconnect_{};
  uint64_t connections_ = 0;
  // It declared `returnRefused` in a queryServer (a C++ worker): its newconns are given away,
  // except for the next `copies_to_keep_` after a NACK (out of fds: the kernel dropped the fd, so
  // only a copy we kept can go to another worker while that lasts).
  bool returns_refused_ = false;
  uint32_t copies_to_keep_ = 0;
  static constexpr uint32_t kCopiesKeptAfterNack = 256;
  // One entry per handle-bearing message in flight on its channel, oldest first: what to do if
  // the worker answers NODE_HANDLE_NACK (the fd did not arrive) instead of NODE_HANDLE_ACK.
  struct HandleSent {
    uint64_t ticket = 0;      // finds the entry again when its send fails
    int64_t newconn_seq = -1; // a newconn: its hand-off fails (handoffs_); else on_nack runs
    std::function<void()> on_nack;
  };
  detail::Ring<HandleSent> on_nack_{4};
  uint64_t next_ticket_ = 1;
  HandOffTable handoffs_;  // newconns awaiting this worker's answer
  detail::Event<> online_;
  detail::Event<const Address&> listening_;
  detail::Event<const Json&> message_;
  detail::Event<> disconnect_;
  detail::Event<const ExitStatus&> exit_;
  detail::Event<const Error&> error_;
};

const char* to_string(WorkerHandle::State s);  // "none" | "online" | "listening" | "disconnected" | "dead"

class Primary : public std::enable_shared_from_this<Primary> {
  struct Key {
    explicit Key() = default;
  };

 public:
  // Raises RLIMIT_NOFILE soft→hard (Node does this at primary start).
  static std::shared_ptr<Primary> create(uv_loop_t* loop, PrimarySettings settings);
  Primary(Key, uv_loop_t* loop, PrimarySettings settings);
  ~Primary();

  // Forks one worker: env = this process's env + `env` + NODE_UNIQUE_ID. `fork` is emitted on the
  // next loop turn (after `setup`), so listeners attached after this call see it.
  Result<std::shared_ptr<WorkerHandle>> fork(const Env& env = {});
  // Disconnects every connected worker; `cb` runs once the table is empty (next turn if it is).
  void disconnect(std::function<void()> cb = {});

  const std::map<int, std::shared_ptr<WorkerHandle>>& workers() const { return workers_; }
  Policy policy() const { return policy_; }
  size_t handle_count() const { return handles_.size(); }
  PrimaryStats stats() const;
  // A drain's first step: every rr key stops accepting (its listening socket closes, what the
  // kernel had queued on it taken first) while the connections already taken are handed out.
  void stop_accepting();
  // Connections the primary holds that no worker has been given yet.
  size_t connections_waiting() const;

  void on_setup(std::function<void()> fn) { setup_.add(std::move(fn)); }
  void on_fork(std::function<void(WorkerHandle&)> fn) { fork_.add(std::move(fn)); }
  void on_online(std::function<void(WorkerHandle&)> fn) { online_.add(std::move(fn)); }
  void on_listening(std::function<void(WorkerHandle&, const Address&)> fn) { listening_.add(std::move(fn)); }
  void on_message(std::function<void(WorkerHandle&, const Json&)> fn) { message_.add(std::move(fn)); }
  void on_disconnect(std::function<void(WorkerHandle&)> fn) { disconnect_.add(std::move(fn)); }
  void on_exit(std::function<void(WorkerHandle&, const ExitStatus&)> fn) { exit_.add(std::move(fn)); }
  // Beyond Node: a queryServer the primary could not satisfy (bind/listen error), so a CLI can
  // report "port in use" instead of restarting a worker that will fail again.
  // The worker is left alone: its listen fails with this errno, as under Node.
  void on_listen_error(std::function<void(WorkerHandle&, const Address&, const Error&)> fn) { listen_error_.add(std::move(fn)); }
  // Beyond Node: a worker's channel failed (ERR_IPC_BAD_FRAME, ERR_IPC_FRAME_TOO_LARGE,
  // ERR_IPC_UNEXPECTED_HANDLE, ERR_IPC_TRUNCATED, or an I/O error). The worker is disconnected
  // right after this event (`disconnect` follows) unless its channel was already closed.
  void on_channel_error(std::function<void(WorkerHandle&, const Error&)> fn) { channel_error_.add(std::move(fn)); }
  // Beyond Node, policy reuseport: a worker's eligibility for new connections changed
  // (SteeringChange), or steering could not be set up (emitted once; the kernel's hash applies).
  void on_steering(std::function<void(WorkerHandle&, const SteeringChange&)> fn) { steering_.add(std::move(fn)); }
  void on_steering_unavailable(std::function<void(const Error&)> fn) { steering_unavailable_.add(std::move(fn)); }

 private:
  friend class WorkerHandle;
  using ActHandler = void (Primary::*)(const std::shared_ptr<WorkerHandle>& w, const Json& msg);
  static const std::map<std::string, ActHandler, std::less<>>& acts();
  void on_internal(const std::shared_ptr<WorkerHandle>& w, const Json& msg, ipc::ReceivedHandle* h);
  void on_handle_reply(WorkerHandle& w, bool acked);
  void on_channel_failure(WorkerHandle& w, const Error& e);
  void act_online(const std::shared_ptr<WorkerHandle>& w, const Json& msg);
  void act_query_server(const std::shared_ptr<WorkerHandle>& w, const Json& msg);
  void act_listening(const std::shared_ptr<WorkerHandle>& w, const Json& msg);
  void act_exited_after_disconnect(const std::shared_ptr<WorkerHandle>& w, const Json& msg);
  void act_close(const std::shared_ptr<WorkerHandle>& w, const Json& msg);
  void act_accept_turn(const std::shared_ptr<WorkerHandle>& w, const Json& msg);
  Result<ServerHandle*> handle_for(const ServerQuery& q);
  HandOffSender newconn_sender(int worker, const std::string& key, uint64_t serial);
  void drop_handle(std::map<std::string, std::unique_ptr<ServerHandle>>::iterator it);
  // gone: the worker can no longer answer (exit, channel closed), so what it owed is requeued.
  void remove_handles_for(WorkerHandle& w, bool gone = true);
  void remove_worker(WorkerHandle& w);
  void worker_disconnect(WorkerHandle& w);
  // The message's seq, or nullopt when the worker's channel is closed (nothing sent, `cb` dropped).
  std::optional<int64_t> send_to(WorkerHandle& w, Json payload, Messenger::Reply cb = {},
                                 std::optional<ipc::OutgoingHandle> handle = std::nullopt,
                                 std::function<void()> on_nack = {}, bool pipelined = false);
  // A handle is sent to `w`: what its NACK does (on_nack, or for a newconn its hand-off fails).
  // Returns its ticket, the send's SendOptions::failure_tag.
  uint64_t handle_sent(WorkerHandle& w, std::function<void()> on_nack, int64_t newconn_seq = -1);
  // A handle sent to `w` failed to leave: out of fds is its NACK, other errors fail the channel.
  void handle_send_failed(WorkerHandle& w, uint64_t ticket, const Error& e);
  // A newconn's answer (or, not `answered`, its NACK: refused) reaches the scheduler that sent
  // it, if its server is still open; `returned`: the connection a refusal gave back.
  void finish_handoff(WorkerHandle& w, const HandOffTable::Record& r, bool accepted, bool answered = true,
                      Fd returned = {});
  void handle_nacked(WorkerHandle& w, const WorkerHandle::HandleSent& sent);
  bool serves(uint64_t handle_serial) const;

  uv_loop_t* loop_;
  PrimarySettings settings_;
  Policy policy_;
  bool debug_ = false;
  detail::Ticker ticker_;
  Messenger messenger_;
  int next_id_ = 1;
  std::map<int, std::shared_ptr<WorkerHandle>> workers_;
  std::map<std::string, std::unique_ptr<ServerHandle>> handles_;
  uint64_t handle_serial_ = 0;
  PrimaryStats retired_;  // counters of handles already closed
  PrimaryStats::HandOffLatency handoff_latency_;
  uint64_t answered_at_ns_ = 0;  // while an answer is passed to its scheduler: its uv_hrtime()
  std::vector<std::function<void()>> disconnect_cbs_;
  std::unique_ptr<Watchdog> watchdog_;  // started at the first fork when workers_die_with_primary

  detail::Event<> setup_;
  detail::Event<WorkerHandle&> fork_;
  detail::Event<WorkerHandle&> online_;
  detail::Event<WorkerHandle&, const Address&> listening_;
  detail::Event<WorkerHandle&, const Json&> message_;
  detail::Event<WorkerHandle&> disconnect_;
  detail::Event<WorkerHandle&, const ExitStatus&> exit_;
  detail::Event<WorkerHandle&, const Address&, const Error&> listen_error_;
  detail::Event<WorkerHandle&, const Error&> channel_error_;
  detail::Event<WorkerHandle&, const SteeringChange&> steering_;
  detail::Event<const Error&> steering_unavailable_;
  bool steering_unavailable_reported_ = false;
};

}  // namespace uvcluster::cluster
