// uvcluster run: the command line of cluster::Supervisor (arguments in, events out).
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "run_config.hpp"
#include "uvcluster/cluster/control_server.hpp"
#include "uvcluster/cluster/metrics.hpp"
#include "uvcluster/cluster/process_usage.hpp"
#include "uvcluster/cluster/supervisor.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/signals.hpp"

namespace uvcluster::cli {

namespace {
void help_text(FILE* out) {
  std::fprintf(out,
R"(usage: uvcluster run [options] -- CMD [ARGS...]
       uvcluster run --config FILE [--env-set SET] [options] [-- CMD [ARGS...]]

Forks N copies of CMD as cluster workers of a C++ primary that speaks Node's cluster protocol,
so an unmodified `node server.js` that calls listen(8000) is load-balanced without changes.
CMD may be a .js file (run with node), `node [node-options] script.js`, or a C++ worker program.

options:
  -i, --instances N       workers to run (default: number of cores)
  --policy P              rr | sticky | none | reuseport | exclusive
                          (default: $NODE_CLUSTER_SCHED_POLICY or rr)
                            rr         primary accepts, hands each connection to an idle worker
                            sticky     as rr, but a client address always reaches the same worker
                                       while it lives (socket.io polling); a busy worker's clients
                                       wait for it
                            none       every worker accepts on one shared socket (Node's SCHED_NONE)
                            reuseport  one SO_REUSEPORT socket per worker (kernel balancing);
                                       as root it turns on net.ipv4.tcp_migrate_req so a dying
                                       worker's queued connections move to the others, and an
                                       SK_REUSEPORT program steers new connections away from a
                                       stopped worker (its queue moves to the others) or one
                                       with fewer than 2 fds free (back once continued / at 8
                                       free): `steering` events
                            exclusive  shared socket, C++ workers wait with EPOLLEXCLUSIVE and
                                       accept in turn (one accept turn per server key, made
                                       here); Node workers behave as with none
  --rr-window K           rr: up to K connections in flight to each worker, sent without waiting
                          for its answer to the previous ones (default 1, Node's; 1..1024)
  --restart on-crash|never  restart workers that exit without being asked to (default on-crash;
                          backoff 100 ms doubling to 10 s, reset only after --min-uptime)
  --min-uptime MS         a worker that ran at least MS before it crashed resets the backoff (1000)
  --max-restarts N        restarts of one instance within --restart-window before it is shown
                          `errored` and left down until the next reload (default 10; 0 = no limit)
  --restart-window MS     (default 60000)
  --kill-signal SIG       sent to a worker being stopped once it has disconnected (default SIGTERM)
  --kill-timeout MS       SIGKILL a worker still alive MS after its stop began (default 5000; 0 = never)
  --grace MS              on SIGTERM/SIGINT: stop all workers, SIGKILL those left after MS
                          (default 10000); exit 0 when every worker left cleanly
  --startup-timeout MS    kill a worker that is not online after MS (default 30000)
  --wait-ready            a worker is up once it sends process.send('ready'), not when it listens
  --listen-timeout MS     kill a worker that is not up MS after it started (default 0: no limit)
  --instance-var NAME     the variable holding the worker's instance 0..N-1 (default NODE_APP_INSTANCE)
  --env K=V               add K=V to the workers' environment (repeatable)
  --name NAME             the app's name: in log prefixes (default: the script's name without .js)
                          and, given, for control from any shell through the unix socket
                          $UVCLUSTER_HOME/NAME.sock (default ~/.uvcluster/NAME.sock, mode 0600):
                          uvcluster status|reload|scale|stop|metrics NAME; a live cluster of the
                          same name is an error (exit 1), a stale socket is replaced
  --max-memory-restart SIZE  reload a worker (its replacement is up first) whose RSS is above
                          SIZE in 2 samples in a row, 1 s apart; SIZE in bytes or with K, M, G
  --metrics-port PORT     serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0: a free
                          port, shown by the `metrics` event)
  --raw                   worker lines exactly as written: no "<instance>|<name> | " prefix
  --time                  prefix worker lines with a UTC timestamp (2026-12-01T14:40:05.123Z: )
  --log FILE              append the workers' stdout lines to FILE instead of our stdout
  --error-log FILE        append the workers' stderr lines to FILE instead of our stderr
  --log-max-size SIZE     rotate a log file before it grows past SIZE (bytes, or 512K, 10M, 1G):
                          FILE -> FILE.1 -> FILE.2 ...; default: never rotate
  --log-files N           rotated files kept per log (default 5; 0 = truncate instead)
  --config FILE           run options from FILE: JSON (keys: name, script, args, instances, policy,
                          env, env_<set>, and every long option above with _ for -), or a PM2
                          ecosystem.config.js / process file (its supported fields; the others
                          are named in one warning). Options on the command line override it.
  --env-set SET           with --config: apply the file's env_SET after its env (PM2's --env SET)
  --json                  one JSON event per line on stdout (fork, online, listening, ready,
                          disconnect, exit, restart, errored, reload, reload-queued, reload-done,
                          reload-failed, drain, kill, startup-timeout, error, memory-restart,
                          control, metrics, stats; reuseport: steering, steering-off);
                          worker stdout goes to stderr
  -h, --help              this text

Stopping a worker (reload, drain, fewer instances): disconnect, then --kill-signal once it has
disconnected, then SIGKILL after --kill-timeout.
signals: SIGTERM/SIGINT drain (a second one SIGKILLs the workers left); SIGHUP reloads (a new
worker is up before its predecessor is stopped, one at a time; a replacement that dies first
rolls its instance back; a SIGHUP during a reload is queued).
A port that cannot be bound before any worker listened is a one-line error and exit 1; once the
cluster serves, a worker's failed listen is that worker's error event.
Worker output is relayed line by line (lines are never torn or interleaved), each line prefixed
with "<instance>|<name> | " (as `pm2 logs` shows it) unless --raw.
If the primary dies, whatever kills it (SIGKILL included), its watchdog process (uvc-watchdog)
SIGKILLs every worker and the processes the workers started.
On a terminal a live status line shows workers, states, restarts and connections handed out.
)");
}
}  // namespace

void help_run() { help_text(stdout); }

namespace {

using cluster::Supervisor;
using cluster::WorkerHandle;
using Json = nlohmann::json;

// Where the option being parsed came from: "" (the command line) or "FILE: key K".
std::string usage_origin;

int usage_error(const std::string& msg) {
  if (usage_origin.empty()) std::fprintf(stderr, "uvcluster run: %s\n", msg.c_str());
  else std::fprintf(stderr, "uvcluster run: %s: %s\n", usage_origin.c_str(), msg.c_str());
  help_text(stderr);
  return 2;
}

bool parse_int(const char* s, int64_t& out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  long long v = std::strtoll(s, &end, 10);
  if (*end || v < 0) return false;
  out = v;
  return true;
}

// Writes all of `data` to fd even when it is non-blocking: one call per line keeps lines whole.
// A reader that stops reading stalls the primary here, as it stalled the workers when they
// wrote to the inherited fd themselves.
void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
    } else if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, -1);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return;  // the reader is gone (EPIPE): the line is dropped
    }
  }
}

// Everything `uvcluster run` prints: --json events on stdout, or one-line events on stderr,
// a live status line on a terminal, and the workers' output relayed line by line.
class Printer {
 public:
  explicit Printer(bool json) : json_(json), tty_(!json && isatty(2)) {}

  void emit(Json ev) {
    if (json_) {
      std::string line = ev.dump() + "\n";
      std::fwrite(line.data(), 1, line.size(), stdout);
      std::fflush(stdout);
    } else if (!tty_ || ev["event"] == "error" || ev["event"] == "exit" || ev["event"] == "errored") {
      clear_status();
      std::fprintf(stderr, "uvcluster: %s\n", ev.dump().c_str());
    }
  }

  // One line on stderr beside the events (a port in use, a command that cannot start).
  void complain(const std::string& text) {
    clear_status();
    std::fprintf(stderr, "uvcluster run: %s\n", text.c_str());
  }

  // --json owns stdout: the workers' stdout goes to stderr so events stay parseable.
  void output(cluster::OutputStream stream, std::string_view line) {
    clear_status();
    std::fflush(stdout);
    write_all(json_ || stream == cluster::OutputStream::err ? 2 : 1, line);
  }

  void status(const cluster::SupervisorStats& s) {
    if (!tty_) return;
    int up = 0, errored = 0;
    for (auto& i : s.instances) {
      up += i.state == cluster::InstanceStatus::State::up;
      errored += i.state == cluster::InstanceStatus::State::errored;
    }
    std::string extra = errored ? " errored " + std::to_string(errored) : "";
    std::fprintf(stderr, "\r\033[K[uvcluster %s] workers %zu (%d listening) restarts %d connections %llu%s%s",
                 cluster::policy_name(s.policy), s.live, up, s.restarts,
                 static_cast<unsigned long long>(s.connections), extra.c_str(),
                 s.draining ? " draining" : s.reloading ? " reloading" : "");
    std::fflush(stderr);
    status_shown_ = true;
  }

  void stop_status() {
    clear_status();
    tty_ = false;
  }
  bool tty() const { return tty_; }
  bool json() const { return json_; }

 private:
  void clear_status() {
    if (!status_shown_) return;
    std::fprintf(stderr, "\r\033[K");
    status_shown_ = false;
  }
  bool json_;
  bool tty_;
  bool status_shown_ = false;
};

Json who(WorkerHandle& w) { return {{"id", w.id()}, {"pid", w.pid() ? Json(*w.pid()) : Json(nullptr)}}; }

Json with(Json base, const Json& more) {
  for (auto& [k, v] : more.items()) base[k] = v;
  return base;
}

Json stats_json(const cluster::SupervisorStats& s) {
  Json per = Json::array();
  for (auto& i : s.instances)
    per.push_back({{"instance", i.instance}, {"id", i.id ? Json(*i.id) : Json(nullptr)},
                   {"pid", i.pid ? Json(*i.pid) : Json(nullptr)},
                   {"state", cluster::to_string(i.state)}, {"restarts", i.restarts},
                   {"connections", i.connections}});
  return {{"event", "stats"}, {"policy", cluster::policy_name(s.policy)}, {"restarts", s.restarts},
          {"exits", s.exits}, {"connections", s.connections}, {"workers", per}};
}

// Prints the supervisor's events.
void attach_printer(Supervisor& sup, Printer& out, const cluster::SupervisorOptions& opt) {
  auto print = [&out](WorkerHandle& w, const char* event, const Json& more = Json::object()) {
    out.emit(with(who(w), with(more, {{"event", event}})));
  };
  sup.on_fork([=](WorkerHandle& w, int instance) { print(w, "fork", {{"instance", instance}}); });
  sup.on_online([=](WorkerHandle& w) { print(w, "online"); });
  sup.on_listening([=](WorkerHandle& w, const cluster::Address& a) {
    print(w, "listening", {{"address", a.address ? Json(*a.address) : Json(nullptr)}, {"port", a.port},
                           {"addressType", a.address_type}});
  });
  sup.on_ready([=](WorkerHandle& w) { print(w, "ready"); });
  sup.on_disconnect([=](WorkerHandle& w) { print(w, "disconnect"); });
  sup.on_exit([=](WorkerHandle& w, const ExitStatus& st) {
    print(w, "exit", {{"code", st.code ? Json(*st.code) : Json(nullptr)},
                      {"signal", st.signal ? Json(*st.signal) : Json(nullptr)},
                      {"exitedAfterDisconnect", w.exited_after_disconnect().value_or(false)},
                      {"connections", w.connections()}});
  });
  sup.on_startup_timeout([=](WorkerHandle& w) { print(w, "startup-timeout"); });
  sup.on_kill([=](WorkerHandle& w, const std::string& sig) { print(w, "kill", {{"signal", sig}}); });
  sup.on_restart([&out](const cluster::RestartInfo& r) {
    out.emit({{"event", "restart"}, {"id", r.previous_id}, {"instance", r.instance}, {"delay_ms", r.delay_ms}});
  });
  sup.on_errored([&out](int instance, int restarts) {
    out.emit({{"event", "errored"}, {"instance", instance}, {"restarts", restarts}});
  });
  sup.on_reload([&out](size_t n) { out.emit({{"event", "reload"}, {"workers", n}}); });
  sup.on_reload_queued([&out] { out.emit({{"event", "reload-queued"}}); });
  sup.on_reload_done([&out] { out.emit({{"event", "reload-done"}}); });
  sup.on_reload_failed([&out](int id) { out.emit({{"event", "reload-failed"}, {"id", id}}); });
  sup.on_memory_limit([=, limit = opt.max_memory_bytes](WorkerHandle& w, int instance, uint64_t rss) {
    print(w, "memory-restart", {{"instance", instance}, {"rss_bytes", rss}, {"limit_bytes", limit}});
  });
  sup.on_drain([&out, grace = opt.grace_ms](const std::string& reason, size_t n) {
    out.emit({{"event", "drain"}, {"reason", reason}, {"workers", n}, {"grace_ms", grace}});
  });
  sup.on_listen_error([&out, print](WorkerHandle& w, const cluster::Address& a, const Error& e, bool fatal) {
    std::string where = (a.address ? *a.address : std::string("*")) + ":" + std::to_string(a.port);
    std::string message = "cannot listen on " + where + ": " + e.code;
    print(w, "error", {{"code", e.code}, {"message", message}});
    if (fatal) out.complain(message);
  });
  sup.on_error([&out](WorkerHandle* w, const Error& e) {
    Json ev = {{"event", "error"}, {"code", e.code}, {"message", e.message}};
    out.emit(w ? with(who(*w), ev) : ev);
    if (!w) out.complain("cannot start worker: " + e.message);
    else if (!w->pid()) out.complain(e.message);
  });
  sup.on_output([&out](WorkerHandle&, cluster::OutputStream s, std::string_view line) { out.output(s, line); });
  // A broken channel (bad or oversized frame, rejected handle): the primary disconnects the worker
  // next, and its exit is handled like a crash.
  sup.primary()->on_channel_error([=](WorkerHandle& w, const Error& e) {
    print(w, "error", {{"code", e.code}, {"message", e.message}});
  });
  // --policy reuseport: a worker left or rejoined the set new connections are steered to (it
  // stopped, continued, ran short of fds or has some again), or steering is off (once).
  sup.primary()->on_steering([=](WorkerHandle& w, const cluster::SteeringChange& c) {
    print(w, "steering", {{"eligible", c.eligible}, {"reason", c.reason}, {"steered", c.steered}});
  });
  sup.primary()->on_steering_unavailable([&out](const Error& e) {
    out.emit({{"event", "steering-off"}, {"code", e.code}, {"message", e.message}});
  });
}

}  // namespace

int run_run(int cli_argc, char** cli_argv) {
  // --config FILE: the file's options are parsed first, so the command line's override them.
  std::string config_path, env_set;
  bool cli_has_command = false;
  for (int k = 1; k < cli_argc && !(cli_has_command = !std::strcmp(cli_argv[k], "--")); ++k) {
    if (k + 1 < cli_argc && !std::strcmp(cli_argv[k], "--config")) config_path = cli_argv[k + 1];
    if (k + 1 < cli_argc && !std::strcmp(cli_argv[k], "--env-set")) env_set = cli_argv[k + 1];
  }
  RunConfig config;
  if (!config_path.empty()) {
    auto read = read_run_config(config_path, env_set);
    if (!read.ok()) {
      std::fprintf(stderr, "uvcluster run: %s\n", read.error().c_str());
      return 2;
    }
    config = std::move(read.value());
    if (!config.unsupported.empty()) {
      std::string names;
      for (auto& f : config.unsupported) names += (names.empty() ? "" : ", ") + f;
      std::fprintf(stderr, "uvcluster run: warning: %s: ignoring fields uvcluster does not support: %s\n",
                   config_path.c_str(), names.c_str());
    }
  }
  std::vector<std::string> args{cli_argv[0]};
  args.insert(args.end(), config.options.begin(), config.options.end());
  const size_t from_file_end = args.size();
  args.insert(args.end(), cli_argv + 1, cli_argv + cli_argc);
  if (!cli_has_command && !config.command.empty()) {
    args.push_back("--");
    args.insert(args.end(), config.command.begin(), config.command.end());
  }
  std::vector<char*> arg_ptrs;
  for (auto& a : args) arg_ptrs.push_back(a.data());
  const int argc = static_cast<int>(arg_ptrs.size());
  char** argv = arg_ptrs.data();

  cluster::SupervisorOptions opt;
  opt.instances = 0;
  opt.relay_output = true;
  opt.handle_signals = true;
  bool json = false;
  std::string name, out_log, err_log;  // name: given by --name (or the config file) only
  bool raw = false, timestamps = false;
  cluster::RotatingFile::Options rotation;
  std::optional<int> metrics_port;
  std::vector<std::string> command;
  int i = 1;
  for (; i < argc; ++i) {
    usage_origin = static_cast<size_t>(i) < from_file_end
                       ? config_path + ": key \"" + config.option_keys[static_cast<size_t>(i) - 1] + "\""
                       : "";
    std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    auto millis = [&](int64_t& out, int64_t min) {
      int64_t n = 0;
      if (!parse_int(value(), n) || n < min) return false;
      out = n;
      return true;
    };
    auto size = [&]() -> std::optional<uint64_t> {  // bytes, or with K, M, G
      const char* v = value();
      return v ? cluster::parse_size(v) : std::nullopt;
    };
    int64_t n = 0;
    if (a == "--") {
      ++i;
      break;
    } else if (a == "-h" || a == "--help") {
      help_run();
      return 0;
    } else if (a == "-i" || a == "--instances") {
      if (!parse_int(value(), n) || n < 1 || n > 1024) return usage_error("-i needs a worker count (1..1024)");
      opt.instances = static_cast<int>(n);
    } else if (a == "--policy") {
      const char* v = value();
      auto p = v ? cluster::parse_policy(v) : std::nullopt;
      if (!p) return usage_error("--policy must be rr, none, reuseport or exclusive");
      opt.primary.policy = p;
    } else if (a == "--rr-window") {
      if (!parse_int(value(), n) || n < 1 || n > 1024) return usage_error("--rr-window needs a count (1..1024)");
      opt.primary.rr_window = static_cast<int>(n);
    } else if (a == "--restart") {
      const char* v = value();
      if (v && !std::strcmp(v, "on-crash")) opt.restart = true;
      else if (v && !std::strcmp(v, "never")) opt.restart = false;
      else return usage_error("--restart must be on-crash or never");
    } else if (a == "--grace") {
      if (!millis(opt.grace_ms, 0)) return usage_error("--grace needs milliseconds");
    } else if (a == "--startup-timeout") {
      if (!millis(opt.startup_timeout_ms, 1)) return usage_error("--startup-timeout needs milliseconds");
    } else if (a == "--kill-signal") {
      const char* v = value();
      auto sig = v ? signal_number(v) : std::nullopt;
      if (!sig || *sig == 0 || signal_name(*sig).empty()) return usage_error("--kill-signal needs a signal name (SIGTERM, SIGINT...)");
      opt.kill_signal = signal_name(*sig);
    } else if (a == "--kill-timeout") {
      if (!millis(opt.kill_timeout_ms, 0)) return usage_error("--kill-timeout needs milliseconds");
    } else if (a == "--min-uptime") {
      if (!millis(opt.min_uptime_ms, 0)) return usage_error("--min-uptime needs milliseconds");
    } else if (a == "--max-restarts") {
      if (!parse_int(value(), n) || n > 1000000) return usage_error("--max-restarts needs a count (0 = no limit)");
      opt.max_restarts = static_cast<int>(n);
    } else if (a == "--restart-window") {
      if (!millis(opt.restart_window_ms, 1)) return usage_error("--restart-window needs milliseconds");
    } else if (a == "--wait-ready") {
      opt.wait_ready = true;
    } else if (a == "--listen-timeout") {
      if (!millis(opt.listen_timeout_ms, 0)) return usage_error("--listen-timeout needs milliseconds");
    } else if (a == "--instance-var") {
      const char* v = value();
      if (!v || !*v || std::strchr(v, '=')) return usage_error("--instance-var needs a variable name");
      opt.instance_var = v;
    } else if (a == "--env") {
      const char* v = value();
      const char* eq = v ? std::strchr(v, '=') : nullptr;
      if (!eq || eq == v) return usage_error("--env needs K=V");
      opt.env[std::string(v, eq)] = eq + 1;
    } else if (a == "--name") {
      const char* v = value();
      if (!v || !cluster::valid_cluster_name(v)) return usage_error("--name needs 1-64 of letters, digits, '.', '_', '-'");
      name = v;
    } else if (a == "--max-memory-restart") {
      auto bytes = size();
      if (!bytes) return usage_error("--max-memory-restart needs a size (bytes, or with K, M, G)");
      opt.max_memory_bytes = *bytes;
    } else if (a == "--metrics-port") {
      if (!parse_int(value(), n) || n > 65535) return usage_error("--metrics-port needs a port (0..65535)");
      metrics_port = static_cast<int>(n);
    } else if (a == "--raw") {
      raw = true;
    } else if (a == "--time") {
      timestamps = true;
    } else if (a == "--log" || a == "--error-log") {
      const char* v = value();
      if (!v || !*v) return usage_error(a + " needs a file");
      (a == "--log" ? out_log : err_log) = v;
    } else if (a == "--log-max-size") {
      auto bytes = size();
      if (!bytes) return usage_error("--log-max-size needs a size (bytes, or with K, M, G)");
      rotation.max_bytes = *bytes;
    } else if (a == "--log-files") {
      if (!parse_int(value(), n) || n > 1000) return usage_error("--log-files needs a count (0..1000)");
      rotation.keep = static_cast<int>(n);
    } else if (a == "--config") {
      if (!value()) return usage_error("--config needs a file");  // read before this loop
    } else if (a == "--env-set") {
      if (!value() || config_path.empty()) return usage_error("--env-set needs a set name and --config");
    } else if (a == "--json") {
      json = true;
    } else {
      return usage_error("unknown option '" + a + "' (the command goes after --)");
    }
  }
  usage_origin.clear();
  for (; i < argc; ++i) command.push_back(argv[i]);
  if (command.empty()) return usage_error("missing command after --");
  if (opt.instances == 0) opt.instances = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  cluster::PrimarySettings& settings = opt.primary;
  // Ctrl-C signals the terminal's whole foreground group; workers in their own group let the
  // primary drain them instead. They still end when the primary dies, however it dies:
  // settings.workers_die_with_primary (on by default) kills them and what they started.
  settings.detached = true;
  const std::string& cmd = command[0];
  std::string base = cmd.substr(cmd.rfind('/') == std::string::npos ? 0 : cmd.rfind('/') + 1);
  if (base == "node" || base == "nodejs") {
    // `node [node-options] script.js args`: options before the script become execArgv.
    size_t k = 1;
    while (k < command.size() && command[k].size() > 1 && command[k][0] == '-') ++k;
    if (k >= command.size()) return usage_error("node needs a script to run");
    settings.exec_path = cmd;
    settings.exec_argv.assign(command.begin() + 1, command.begin() + static_cast<long>(k));
    settings.exec = command[k];
    settings.args.assign(command.begin() + static_cast<long>(k) + 1, command.end());
  } else {
    settings.exec = cmd;  // .js runs under node (fork's rule); anything else runs directly
    settings.args.assign(command.begin() + 1, command.end());
  }
  std::string log_name = name;  // the control socket exists only for a name given
  if (log_name.empty()) {
    auto slash = settings.exec.rfind('/');
    log_name = settings.exec.substr(slash == std::string::npos ? 0 : slash + 1);
    if (log_name.size() > 3 && log_name.ends_with(".js")) log_name.resize(log_name.size() - 3);
  }
  if (!raw || timestamps) opt.line_format = cluster::LineFormat{log_name, !raw, timestamps};
  for (auto [path, file] : {std::pair{&out_log, &opt.out_file}, std::pair{&err_log, &opt.err_file}}) {
    if (path->empty()) continue;
    if (*path == out_log && opt.out_file) {  // one file for both streams: one writer, one rotation
      *file = opt.out_file;
      continue;
    }
    auto opened = cluster::RotatingFile::open(*path, rotation);
    if (!opened.ok()) {
      std::fprintf(stderr, "uvcluster run: cannot open log file: %s\n", opened.error().message.c_str());
      return 2;
    }
    *file = std::move(opened.value());
  }
  ::signal(SIGPIPE, SIG_IGN);
  uv_loop_t loop;
  if (int rc = uv_loop_init(&loop); rc != 0) {
    std::fprintf(stderr, "uvcluster run: uv_loop_init: %s\n", uv_strerror(rc));
    return 1;
  }
  int exit_code = 1;
  {
    Printer out(json);
    auto sup = Supervisor::create(&loop, opt);
    attach_printer(*sup, out, opt);
    struct StatusLine {
      Supervisor* sup;
      Printer* out;
    } line{sup.get(), &out};
    detail::UvHandle<uv_timer_t> status_timer;
    if (out.tty() && uv_timer_init(&loop, status_timer.get()) == 0) {
      status_timer.mark_initialized();
      status_timer->data = &line;
      uv_timer_start(status_timer.get(), [](uv_timer_t* t) {
        auto* l = static_cast<StatusLine*>(t->data);
        l->out->status(l->sup->stats());
      }, 1000, 1000);
    }
    sup->on_done([&](const cluster::SupervisorResult& r) {
      exit_code = r.exit_code;
      out.stop_status();
      status_timer.close();
      if (out.json()) out.emit(stats_json(r.stats));
    });
    auto plane = start_control_plane(&loop, sup, name, metrics_port);
    if (!plane.ok()) {
      out.complain(plane.error().message);
    } else {
      if (plane->control) out.emit({{"event", "control"}, {"name", name}, {"path", plane->control->path()}});
      if (plane->metrics) out.emit({{"event", "metrics"}, {"port", plane->metrics->port()}});
      sup->start();
    }
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  return exit_code;
}

}  // namespace uvcluster::cli
