#pragma once
// A process manager on top of cluster::Primary — what `uvcluster run` is, usable from any C++
// program on a libuv loop:
//
//   auto sup = cluster::Supervisor::create(loop, {.primary = {.exec = "server.js"}, .instances = 4});
//   sup->on_exit([](cluster::WorkerHandle& w, const ExitStatus& s) { /* ... */ });
//   sup->on_done([](const cluster::SupervisorResult& r) { /* r.exit_code */ });
//   sup->start();
//   ... sup->reload(); sup->scale(8); sup->drain();
//
// Instances: the cluster has N slots, numbered 0..N-1; each slot runs one worker, which gets its
// slot number in $NODE_APP_INSTANCE (PM2's name) — stable across restarts and reloads.
// Restart: a worker that exits without having been asked to is restarted after a backoff of
// 100 ms doubling to 10 s; the backoff resets only when the crashed worker had run for
// min_uptime. A slot restarted max_restarts times within restart_window is `errored`: it is not
// restarted until the next reload().
// Stopping a worker (reload, drain, scale-down): disconnect (its servers close, its connections
// finish), then kill_signal once its channel has closed (apps with timers or pools would
// otherwise never exit), then SIGKILL if it is still alive kill_timeout after the disconnect.
// Reload: one slot at a time, a new worker for the slot first; once it is up (listening, or
// `process.send('ready')` with wait_ready) the old one is stopped; the next slot starts when the
// old one has exited. A replacement that dies before it is up rolls that slot back (the old
// worker keeps serving) and ends the reload: the worker count never drifts. A reload asked for
// during a reload is queued (one), not dropped.
// Memory limit (max_memory_bytes, PM2's max_memory_restart): every memory_check_ms the RSS of
// each slot's worker is read (/proc/PID/stat); one above the limit in memory_samples samples in a
// row is replaced as by a reload of its slot alone (the new worker is up before it is stopped).
// Threading and lifetime: loop thread only. `fork` fires inside start()/scale()/reload() (attach
// listeners before start()); the other events come from the loop. Keep the shared_ptr until
// `done`; destroying the Supervisor earlier closes its handles and leaves its workers running.
#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "uvcluster/cluster/output_log.hpp"
#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/detail/event.hpp"
#include "uvcluster/error.hpp"

namespace uvcluster::cluster {

struct SupervisorOptions {
  PrimarySettings primary{};             // what to fork, policy, stdio (see relay_output)
  int instances = 1;
  bool restart = true;                   // restart workers that exit without being asked to
  int64_t startup_timeout_ms = 30000;    // SIGKILL a worker not online after this
  int64_t min_uptime_ms = 1000;          // a crash after less than this keeps the backoff growing
  int max_restarts = 10;                 // restarts of one slot within restart_window; 0 = no limit
  int64_t restart_window_ms = 60000;
  std::string kill_signal = "SIGTERM";   // sent once a stopped worker's channel has closed
  int64_t kill_timeout_ms = 5000;        // SIGKILL this long after a stop began
  int64_t grace_ms = 10000;              // drain(): SIGKILL every worker left after this
  std::string instance_var = "NODE_APP_INSTANCE";
  Env env{};                             // added to every worker's environment
  bool wait_ready = false;               // up = the worker sent the message "ready", not `listening`
  int64_t listen_timeout_ms = 0;         // not up this long after fork: a failed start; 0 = no limit
  // Workers' stdout/stderr through pipes, delivered as whole lines by on_output (never torn,
  // never interleaved mid-line); overrides primary.stdio.
  bool relay_output = false;
  size_t max_line_bytes = 1 << 20;       // a longer line is delivered in pieces of this size
  // relay_output: how lines are formatted (instance prefix, timestamp; see output_log.hpp) and
  // where they go: a stream with a file is written there, the others reach on_output. A line the
  // file cannot take (disk full) reaches on_output rather than being lost.
  std::optional<LineFormat> line_format{};  // nullopt: lines exactly as the worker wrote them
  std::shared_ptr<RotatingFile> out_file{};
  std::shared_ptr<RotatingFile> err_file{};
  // SIGTERM/SIGINT drain (a second one SIGKILLs what is left), SIGHUP reloads.
  bool handle_signals = false;
  uint64_t max_memory_bytes = 0;         // 0 = no limit
  int64_t memory_check_ms = 1000;
  int memory_samples = 2;
};

enum class OutputStream { out, err };

// One slot as status() shows it.
struct InstanceStatus {
  enum class State { starting, up, backoff, errored, stopped };
  int instance = 0;
  State state = State::starting;
  std::optional<int> id{};               // its current worker
  std::optional<int> pid{};
  int restarts = 0;
  uint64_t connections = 0;              // handed to this slot's workers so far (rr)
  int64_t uptime_ms = 0;                 // of its current worker, since its fork
};
const char* to_string(InstanceStatus::State s);  // "starting" | "up" | "backoff" | "errored" | "stopped"

// Aggregates only: bounded by the number of slots however many workers came and went.
struct SupervisorStats {
  Policy policy = Policy::rr;
  int restarts = 0;
  uint64_t exits = 0;
  uint64_t connections = 0;              // every worker's, live and gone
  size_t live = 0;                       // worker processes alive (replacements included)
  bool draining = false;
  bool reloading = false;
  std::vector<InstanceStatus> instances;
};

struct SupervisorResult {
  int exit_code = 0;  // 0: every worker left cleanly; 1: otherwise, or the app could not run
  SupervisorStats stats;
};

struct RestartInfo {
  int instance = 0;
  int previous_id = 0;   // the worker that exited
  int64_t delay_ms = 0;
};

class Supervisor : public std::enable_shared_from_this<Supervisor> {
  struct Key {
    explicit Key() = default;
  };

 public:
  static std::shared_ptr<Supervisor> create(uv_loop_t* loop, SupervisorOptions options);
  Supervisor(Key, uv_loop_t* loop, SupervisorOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Forks the instances. Attach listeners first.
  void start();
  // Rolling reload of every slot (errored slots start afresh). Queued if a reload is running;
  // false while draining.
  bool reload();
  // Stops every worker (see above), restarts nothing; on_done fires once all have exited.
  // failure: the exit code is 1 whatever the workers do.
  void drain(const std::string& reason = "drain", bool failure = false);
  // SIGKILL every worker now (a second SIGTERM during a drain).
  void kill_all();
  // n slots: new ones are forked, the highest-numbered ones are stopped. False while draining.
  bool scale(int n);

  SupervisorStats stats() const;
  // For events the supervisor does not forward; null once the supervisor is done.
  Primary* primary() { return primary_.get(); }
  bool draining() const { return draining_; }

  void on_fork(std::function<void(WorkerHandle&, int instance)> fn) { fork_.add(std::move(fn)); }
  void on_online(std::function<void(WorkerHandle&)> fn) { online_.add(std::move(fn)); }
  void on_listening(std::function<void(WorkerHandle&, const Address&)> fn) { listening_.add(std::move(fn)); }
  void on_ready(std::function<void(WorkerHandle&)> fn) { ready_.add(std::move(fn)); }  // wait_ready only
  void on_disconnect(std::function<void(WorkerHandle&)> fn) { disconnect_.add(std::move(fn)); }
  void on_exit(std::function<void(WorkerHandle&, const ExitStatus&)> fn) { exit_.add(std::move(fn)); }
  void on_restart(std::function<void(const RestartInfo&)> fn) { restart_.add(std::move(fn)); }
  void on_errored(std::function<void(int instance, int restarts)> fn) { errored_.add(std::move(fn)); }
  void on_startup_timeout(std::function<void(WorkerHandle&)> fn) { startup_timeout_.add(std::move(fn)); }
  void on_kill(std::function<void(WorkerHandle&, const std::string& signal)> fn) { kill_.add(std::move(fn)); }
  void on_reload(std::function<void(size_t workers)> fn) { reload_.add(std::move(fn)); }
  void on_reload_queued(std::function<void()> fn) { reload_queued_.add(std::move(fn)); }
  void on_reload_done(std::function<void()> fn) { reload_done_.add(std::move(fn)); }
  // A replacement died (or timed out) before it was up; `id` is that replacement.
  void on_reload_failed(std::function<void(int id)> fn) { reload_failed_.add(std::move(fn)); }
  // The worker stayed above max_memory_bytes: its slot is being reloaded (reload events follow).
  void on_memory_limit(std::function<void(WorkerHandle&, int instance, uint64_t rss_bytes)> fn) {
    memory_limit_.add(std::move(fn));
  }
  void on_drain(std::function<void(const std::string& reason, size_t workers)> fn) { drain_.add(std::move(fn)); }
  // fatal: no worker ever listened and the address cannot be had (EADDRINUSE, EACCES,
  // EADDRNOTAVAIL): the supervisor drains with reason "listen-error". Otherwise it is the
  // worker's own business (Node's error event), and the cluster goes on serving.
  void on_listen_error(std::function<void(WorkerHandle&, const Address&, const Error&, bool fatal)> fn) {
    listen_error_.add(std::move(fn));
  }
  // worker: null when no worker could be forked. A spawn failure (ENOENT) drains: the command
  // cannot run at all.
  void on_error(std::function<void(WorkerHandle*, const Error&)> fn) { error_.add(std::move(fn)); }
  // relay_output: one whole line (with its '\n'; unformatted, the last piece of a stream may
  // lack it), formatted by line_format; lines written to a file do not come here.
  void on_output(std::function<void(WorkerHandle&, OutputStream, std::string_view)> fn) { output_.add(std::move(fn)); }
  void on_done(std::function<void(const SupervisorResult&)> fn) { done_.add(std::move(fn)); }

 private:
  struct Tracked;  // one live worker: its slot, deadlines, how it is being stopped
  struct Slot;     // one instance number: its worker, a reload's replacement, restart history
  // Forks one worker for slot `instance` (a fresh start or a reload's replacement) and tracks it.
  Result<std::shared_ptr<WorkerHandle>> fork_one(int instance);
  void start_worker(Slot& slot);
  void finish();
  void attach();
  void install_signals();
  void relay(WorkerHandle& w, int instance);
  void deliver(WorkerHandle& w, int instance, OutputStream stream, std::string_view line);
  Slot* slot_of(int instance);
  Tracked* tracked(int id);
  void mark_up(WorkerHandle& w);
  void worker_exited(WorkerHandle& w, const ExitStatus& st);
  void schedule_restart(Slot& slot, const Tracked& t);
  void stop(Tracked& t);
  void stop_workers_when_handed_out();
  void signal_stopped(Tracked& t);
  void fail_start(Tracked& t);
  bool reload_slot(int instance);
  void check_memory();
  void next_reload();
  void advance_reload();
  void maybe_finish();
  uint64_t now_ms() const;

  uv_loop_t* loop_;
  SupervisorOptions opt_;
  std::shared_ptr<Primary> primary_;
  std::vector<std::unique_ptr<Slot>> slots_;             // by instance number
  std::map<int, std::unique_ptr<Tracked>> live_;         // forked and not yet exited, by worker id
  std::map<int, std::weak_ptr<WorkerHandle>> relaying_;  // exited, pipes still open
  struct Handles;  // grace and output-linger timers, signal handlers
  std::unique_ptr<Handles> handles_;
  struct Reload {
    std::vector<int> queue;   // instances still to replace
    int instance = -1;        // the slot being replaced now
    int outgoing = 0;         // its previous worker, until that one has exited
  };
  std::optional<Reload> reloading_;
  bool reload_again_ = false;  // a reload asked for during this one
  Policy policy_;
  int restarts_ = 0;
  uint64_t exits_ = 0;
  uint64_t connections_gone_ = 0;  // handed to workers that exited
  bool started_ = false;
  bool ever_listened_ = false;
  bool draining_ = false;
  bool unclean_ = false;
  bool failed_ = false;
  bool finished_ = false;

  detail::Event<WorkerHandle&, int> fork_;
  detail::Event<WorkerHandle&> online_;
  detail::Event<WorkerHandle&, const Address&> listening_;
  detail::Event<WorkerHandle&> ready_;
  detail::Event<WorkerHandle&> disconnect_;
  detail::Event<WorkerHandle&, const ExitStatus&> exit_;
  detail::Event<const RestartInfo&> restart_;
  detail::Event<int, int> errored_;
  detail::Event<WorkerHandle&> startup_timeout_;
  detail::Event<WorkerHandle&, const std::string&> kill_;
  detail::Event<size_t> reload_;
  detail::Event<> reload_queued_;
  detail::Event<> reload_done_;
  detail::Event<int> reload_failed_;
  detail::Event<WorkerHandle&, int, uint64_t> memory_limit_;
  detail::Event<const std::string&, size_t> drain_;
  detail::Event<WorkerHandle&, const Address&, const Error&, bool> listen_error_;
  detail::Event<WorkerHandle*, const Error&> error_;
  detail::Event<WorkerHandle&, OutputStream, std::string_view> output_;
  detail::Event<const SupervisorResult&> done_;
};

// Splits a byte stream into whole lines; lines longer than `max` come out in pieces of `max`.
class LineSplitter {
 public:
  explicit LineSplitter(size_t max) : max_(max > 0 ? max : 1) {}
  void feed(std::string_view bytes, const std::function<void(std::string_view)>& line);
  void finish(const std::function<void(std::string_view)>& line);  // the unterminated rest

 private:
  size_t max_;
  std::string partial_;
};

}  // namespace uvcluster::cluster
