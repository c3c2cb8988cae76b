// uvcluster run: a C++ cluster primary for unmodified Node (or C++) servers.
// Forks N workers speaking Node's cluster protocol, restarts crashed ones with capped exponential
// backoff, drains on SIGTERM/SIGINT, reloads one worker at a time on SIGHUP.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/signals.hpp"

namespace uvcluster::cli {

namespace {
void help_text(FILE* out) {
  std::fprintf(out,
R"(usage: uvcluster run [options] -- CMD [ARGS...]

Forks N copies of CMD as cluster workers of a C++ primary that speaks Node's cluster protocol,
so an unmodified `node server.js` that calls listen(8000) is load-balanced without changes.
CMD may be a .js file (run with node), `node [node-options] script.js`, or a C++ worker program.

options:
  -i, --instances N       workers to run (default: number of cores)
  --policy P              rr | none | reuseport | exclusive (default: $NODE_CLUSTER_SCHED_POLICY or rr)
                            rr         primary accepts, hands each connection to an idle worker
                            none       every worker accepts on one shared socket (Node's SCHED_NONE)
                            reuseport  one SO_REUSEPORT socket per worker (kernel balancing)
                            exclusive  shared socket, C++ workers wait with EPOLLEXCLUSIVE
                                       (Node workers behave as with none)
  --restart on-crash|never  restart workers that exit without being disconnected (default
                          on-crash; backoff 100 ms doubling to 10 s, reset once a worker listens)
  --grace MS              on SIGTERM/SIGINT: disconnect all workers, SIGKILL those left after MS
                          (default 10000); exit 0 when every worker left cleanly
  --startup-timeout MS    kill a worker that is not online after MS (default 30000)
  --json                  one JSON event per line on stdout (fork, online, listening, disconnect,
                          exit, restart, reload, drain, error, stats); worker stdout goes to stderr
  -h, --help              this text

signals: SIGTERM/SIGINT drain (a second one SIGKILLs the workers left); SIGHUP reloads (a new worker listens before its predecessor is
disconnected, one at a time). A port that cannot be bound is a one-line error and exit 1.
On a terminal a live status line shows workers, states, restarts and connections handed out.
)");
}
}  // namespace

void help_run() { help_text(stdout); }

namespace {

using cluster::Primary;
using cluster::WorkerHandle;
using Json = nlohmann::json;

struct Options {
  int instances = 0;
  std::optional<cluster::Policy> policy;
  bool restart = true;
  int64_t grace_ms = 10000;
  int64_t startup_timeout_ms = 30000;
  bool json = false;
  std::vector<std::string> command;
};

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "uvcluster run: %s\n", msg.c_str());
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

class Runner {
 public:
  Runner(uv_loop_t* loop, Options opt) : loop_(loop), opt_(std::move(opt)) {}

  int run(cluster::PrimarySettings settings) {
    primary_ = Primary::create(loop_, std::move(settings));
    tty_ = !opt_.json && isatty(2);
    attach();
    for (auto [sig, name] : {std::pair{SIGTERM, "SIGTERM"}, {SIGINT, "SIGINT"}, {SIGHUP, "SIGHUP"}}) {
      auto& h = signals_.emplace_back();
      uv_signal_init(loop_, h.get());
      h.mark_initialized();
      h->data = this;
      uv_signal_start(h.get(), [](uv_signal_t* s, int signum) {
        auto* self = static_cast<Runner*>(s->data);
        if (signum == SIGHUP) self->start_reload();
        else if (self->draining_) self->kill_all();  // a second SIGTERM/SIGINT: stop waiting
        else self->drain(signum == SIGTERM ? "SIGTERM" : "SIGINT", false);
      }, sig);
      (void)name;
    }
    uv_timer_init(loop_, status_timer_.get());
    status_timer_.mark_initialized();
    status_timer_->data = this;
    if (tty_) {
      uv_timer_start(status_timer_.get(), [](uv_timer_t* t) { static_cast<Runner*>(t->data)->status(); },
                     1000, 1000);
    }
    for (int i = 0; i < opt_.instances; ++i) fork_one();
    uv_run(loop_, UV_RUN_DEFAULT);
    return exit_code_;
  }

 private:
  void emit(Json ev) {
    if (opt_.json) {
      std::string line = ev.dump() + "\n";
      std::fwrite(line.data(), 1, line.size(), stdout);
      std::fflush(stdout);
    } else if (!tty_ || ev["event"] == "error" || ev["event"] == "exit") {
      if (tty_) std::fprintf(stderr, "\r\033[K");
      std::fprintf(stderr, "uvcluster: %s\n", ev.dump().c_str());
    }
    if (tty_) status();
  }

  Json who(WorkerHandle& w) {
    return {{"id", w.id()}, {"pid", w.pid() ? Json(*w.pid()) : Json(nullptr)}};
  }

  void status() {
    if (!tty_) return;
    int listening = 0;
    uint64_t conns = handed_total_;
    for (auto& [id, w] : live_) {
      if (w->state() == WorkerHandle::State::listening) ++listening;
      conns += w->connections();
    }
    std::fprintf(stderr, "\r\033[K[uvcluster %s] workers %zu (%d listening) restarts %d connections %llu%s",
                 cluster::policy_name(primary_->policy()), live_.size(), listening, restarts_,
                 static_cast<unsigned long long>(conns), draining_ ? " draining" : reload_ ? " reloading" : "");
    std::fflush(stderr);
  }

  void attach() {
    primary_->on_fork([this](WorkerHandle& w) { emit({{"event", "fork"}, {"id", w.id()}, {"pid", w.pid() ? Json(*w.pid()) : Json()}}); });
    primary_->on_online([this](WorkerHandle& w) {
      auto j = who(w);
      j["event"] = "online";
      emit(j);
    });
    primary_->on_listening([this](WorkerHandle& w, const cluster::Address& a) {
      auto j = who(w);
      j["event"] = "listening";
      j["address"] = a.address ? Json(*a.address) : Json(nullptr);
      j["port"] = a.port;
      j["addressType"] = a.address_type;
      emit(j);
      crashes_ = 0;  // a worker that gets this far resets the backoff
      if (reload_ && reload_->replacement == w.id() && !reload_->old_disconnected) {
        reload_->old_disconnected = true;
        if (auto it = live_.find(reload_->old); it != live_.end()) it->second->disconnect();
        else next_reload();
      }
    });
    primary_->on_listen_error([this](WorkerHandle& w, const cluster::Address& a, const Error& e) {
      // Only a port we cannot have is fatal; a malformed query just fails that worker's listen.
      if (e.code != "EADDRINUSE" && e.code != "EACCES" && e.code != "EADDRNOTAVAIL") return;
      std::string where = (a.address ? *a.address : std::string("*")) + ":" + std::to_string(a.port);
      auto j = who(w);
      j["event"] = "error";
      j["code"] = e.code;
      j["message"] = "cannot listen on " + where + ": " + e.code;
      if (opt_.json) emit(j);
      if (tty_) std::fprintf(stderr, "\r\033[K");
      std::fprintf(stderr, "uvcluster run: cannot listen on %s: %s\n", where.c_str(), e.code.c_str());
      // The app cannot work: stop instead of restarting workers that will fail the same way.
      drain("listen-error", true);
    });
    primary_->on_channel_error([this](WorkerHandle& w, const Error& e) {
      // The primary disconnects the worker next; its exit is then handled like a crash.
      auto j = who(w);
      j["event"] = "error";
      j["code"] = e.code;
      j["message"] = e.message;
      emit(j);
    });
    primary_->on_disconnect([this](WorkerHandle& w) {
      auto j = who(w);
      j["event"] = "disconnect";
      emit(j);
    });
    primary_->on_exit([this](WorkerHandle& w, const ExitStatus& st) { on_exit(w, st); });
  }

  void fork_one() {
    auto w = primary_->fork();
    if (!w.ok()) {
      emit({{"event", "error"}, {"code", w.error().code}, {"message", w.error().message}});
      std::fprintf(stderr, "uvcluster run: cannot start worker: %s\n", w.error().message.c_str());
      if (live_.empty()) drain("fork-error", true);
      return;
    }
    auto wh = w.value();
    live_[wh->id()] = wh;
    wh->on_error([this, id = wh->id()](const Error& e) {
      emit({{"event", "error"}, {"id", id}, {"code", e.code}, {"message", e.message}});
      if (!live_.count(id)) return;
      if (auto it = live_.find(id); it != live_.end() && !it->second->pid()) {
        // Spawn failed (ENOENT...): there is no exit event; the command cannot run at all.
        live_.erase(it);
        std::fprintf(stderr, "uvcluster run: %s\n", e.message.c_str());
        drain("spawn-error", true);
        maybe_finish();
      }
    });
    // A worker that never comes online is killed and treated as a crash.
    auto timer = std::make_shared<detail::UvHandle<uv_timer_t>>();
    uv_timer_init(loop_, timer->get());
    timer->mark_initialized();
    struct Ctx { Runner* self; std::weak_ptr<WorkerHandle> w; };
    auto ctx = std::make_shared<Ctx>(Ctx{this, wh});
    (*timer)->data = ctx.get();
    uv_timer_start(timer->get(), [](uv_timer_t* t) {
      auto* c = static_cast<Ctx*>(t->data);
      if (auto w = c->w.lock(); w && w->state() == WorkerHandle::State::none && !w->is_dead()) {
        c->self->emit({{"event", "startup-timeout"}, {"id", w->id()}, {"pid", w->pid() ? Json(*w->pid()) : Json()}});
        w->kill("SIGKILL");
      }
    }, static_cast<uint64_t>(opt_.startup_timeout_ms), 0);
    uv_unref(timer->base());
    startup_timers_[wh->id()] = {timer, ctx};
  }

  void on_exit(WorkerHandle& w, const ExitStatus& st) {
    auto j = who(w);
    j["event"] = "exit";
    j["code"] = st.code ? Json(*st.code) : Json(nullptr);
    j["signal"] = st.signal ? Json(*st.signal) : Json(nullptr);
    j["exitedAfterDisconnect"] = w.exited_after_disconnect().value_or(false);
    j["connections"] = w.connections();
    emit(j);
    handed_total_ += w.connections();
    finished_.push_back({{"id", w.id()}, {"pid", w.pid() ? Json(*w.pid()) : Json()}, {"connections", w.connections()}});
    // Exit status reflects the shutdown: a worker that did not leave cleanly during the drain.
    bool clean = w.exited_after_disconnect().value_or(false) && st.code && *st.code == 0;
    if (!clean && (draining_ || !opt_.restart)) unclean_ = true;
    live_.erase(w.id());
    startup_timers_.erase(w.id());
    int id = w.id();
    bool replaced = false;  // a reload already started its successor: no restart on top
    if (reload_) {
      if (reload_->old == id) {
        replaced = live_.count(reload_->replacement) != 0;
        next_reload();
      } else if (reload_->replacement == id && !reload_->old_disconnected) {
        emit({{"event", "reload-failed"}, {"id", id}});
        reload_.reset();
      }
    }
    if (!draining_ && !replaced && !w.exited_after_disconnect().value_or(false)) {
      if (opt_.restart) schedule_restart(id);
    }
    maybe_finish();
  }

  void schedule_restart(int old_id) {
    // Exponential backoff with a cap: a worker that crashes at start cannot fork-bomb the host.
    int64_t delay = std::min<int64_t>(100LL << std::min(crashes_, 7), 10000);
    ++crashes_;
    ++restarts_;
    ++pending_restarts_;
    emit({{"event", "restart"}, {"id", old_id}, {"delay_ms", delay}});
    // Timers that already fired are closed here (never from inside their own callback).
    std::erase_if(restart_timers_, [](const detail::UvHandle<uv_timer_t>& t) { return !t.active(); });
    auto& t = restart_timers_.emplace_back();
    uv_timer_init(loop_, t.get());
    t.mark_initialized();
    t->data = this;
    uv_timer_start(t.get(), [](uv_timer_t* h) {
      auto* self = static_cast<Runner*>(h->data);
      --self->pending_restarts_;
      if (!self->draining_) self->fork_one();
      self->maybe_finish();
    }, static_cast<uint64_t>(delay), 0);
  }

  void start_reload() {
    if (draining_ || reload_) return;
    std::vector<int> queue;
    for (auto& [id, w] : live_)
      if (w->is_connected()) queue.push_back(id);
    emit({{"event", "reload"}, {"workers", queue.size()}});
    reload_queue_ = std::move(queue);
    reload_.emplace();
    next_reload();
  }

  void next_reload() {
    if (!reload_) return;
    if (reload_queue_.empty()) {
      reload_.reset();
      emit({{"event", "reload-done"}});
      return;
    }
    reload_->old = reload_queue_.front();
    reload_queue_.erase(reload_queue_.begin());
    reload_->old_disconnected = false;
    if (!live_.count(reload_->old)) return next_reload();
    int before = primary_->workers().empty() ? 0 : primary_->workers().rbegin()->first;
    fork_one();
    int after = primary_->workers().empty() ? 0 : primary_->workers().rbegin()->first;
    if (after == before) {  // fork failed
      reload_.reset();
      return;
    }
    reload_->replacement = after;
  }

  void drain(const char* why, bool failure) {
    if (failure) exit_code_ = 1;
    if (draining_) return;
    draining_ = true;
    reload_.reset();
    emit({{"event", "drain"}, {"reason", why}, {"workers", live_.size()}, {"grace_ms", opt_.grace_ms}});
    primary_->disconnect();
    uv_timer_init(loop_, grace_timer_.get());
    grace_timer_.mark_initialized();
    grace_timer_->data = this;
    uv_timer_start(grace_timer_.get(), [](uv_timer_t* t) { static_cast<Runner*>(t->data)->kill_all(); },
                   static_cast<uint64_t>(opt_.grace_ms), 0);
    maybe_finish();
  }

  void kill_all() {
    for (auto& [id, w] : live_) {
      emit({{"event", "kill"}, {"id", id}, {"pid", w->pid() ? Json(*w->pid()) : Json()}, {"signal", "SIGKILL"}});
      killed_ = true;
      w->kill("SIGKILL");
    }
  }

  void maybe_finish() {
    if (!live_.empty() || pending_restarts_ > 0) return;
    if (!draining_ && !opt_.restart) {
      exit_code_ = unclean_ ? 1 : 0;
    } else if (!draining_) {
      return;
    }
    if (draining_ && (unclean_ || killed_) && exit_code_ == 0) exit_code_ = 1;
    Json stats = {{"event", "stats"}, {"policy", cluster::policy_name(primary_->policy())},
                  {"restarts", restarts_}, {"connections", handed_total_}, {"workers", finished_}};
    if (tty_) std::fprintf(stderr, "\r\033[K");
    tty_ = false;
    if (opt_.json) emit(stats);
    for (auto& s : signals_) s.close();
    signals_.clear();
    status_timer_.close();
    grace_timer_.close();
    restart_timers_.clear();
    startup_timers_.clear();
    primary_.reset();
  }

  struct Reload {
    int old = 0;
    int replacement = 0;
    bool old_disconnected = false;
  };

  uv_loop_t* loop_;
  Options opt_;
  std::shared_ptr<Primary> primary_;
  std::map<int, std::shared_ptr<WorkerHandle>> live_;  // forked and not yet exited
  std::vector<detail::UvHandle<uv_signal_t>> signals_;
  detail::UvHandle<uv_timer_t> status_timer_;
  detail::UvHandle<uv_timer_t> grace_timer_;
  std::vector<detail::UvHandle<uv_timer_t>> restart_timers_;
  std::map<int, std::pair<std::shared_ptr<detail::UvHandle<uv_timer_t>>, std::shared_ptr<void>>> startup_timers_;
  std::optional<Reload> reload_;
  std::vector<int> reload_queue_;
  Json finished_ = Json::array();
  uint64_t handed_total_ = 0;
  int crashes_ = 0;
  int restarts_ = 0;
  int pending_restarts_ = 0;
  bool draining_ = false;
  bool unclean_ = false;
  bool killed_ = false;
  bool tty_ = false;
  int exit_code_ = 0;
};

bool ends_with(const std::string& s, const char* suffix) {
  size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

int run_run(int argc, char** argv) {
  Options opt;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)name;
      return argv[++i];
    };
    int64_t n = 0;
    if (a == "--") {
      ++i;
      break;
    } else if (a == "-h" || a == "--help") {
      help_run();
      return 0;
    } else if (a == "-i" || a == "--instances") {
      if (!parse_int(value("-i"), n) || n < 1 || n > 1024) return usage_error("-i needs a worker count (1..1024)");
      opt.instances = static_cast<int>(n);
    } else if (a == "--policy") {
      const char* v = value("--policy");
      auto p = v ? cluster::parse_policy(v) : std::nullopt;
      if (!p) return usage_error("--policy must be rr, none, reuseport or exclusive");
      opt.policy = p;
    } else if (a == "--restart") {
      const char* v = value("--restart");
      if (v && !std::strcmp(v, "on-crash")) opt.restart = true;
      else if (v && !std::strcmp(v, "never")) opt.restart = false;
      else return usage_error("--restart must be on-crash or never");
    } else if (a == "--grace") {
      if (!parse_int(value("--grace"), n)) return usage_error("--grace needs milliseconds");
      opt.grace_ms = n;
    } else if (a == "--startup-timeout") {
      if (!parse_int(value("--startup-timeout"), n) || n == 0) return usage_error("--startup-timeout needs milliseconds");
      opt.startup_timeout_ms = n;
    } else if (a == "--json") {
      opt.json = true;
    } else {
      return usage_error("unknown option '" + a + "' (the command goes after --)");
    }
  }
  for (; i < argc; ++i) opt.command.push_back(argv[i]);
  if (opt.command.empty()) return usage_error("missing command after --");
  if (opt.instances == 0) opt.instances = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  cluster::PrimarySettings settings;
  settings.policy = opt.policy;
  // Ctrl-C signals the terminal's whole foreground group; workers in their own group let the
  // primary drain them instead. They still end when the primary dies: the channel's EOF
  // disconnects them (Node workers exit on it).
  settings.detached = true;
  // --json owns stdout: the workers' stdout goes to stderr so events stay parseable.
  if (opt.json) settings.stdio = std::vector<Stdio>{Stdio::inherit(), Stdio::from_fd(2), Stdio::inherit(), Stdio::ipc()};
  const std::string& cmd = opt.command[0];
  std::string base = cmd.substr(cmd.rfind('/') == std::string::npos ? 0 : cmd.rfind('/') + 1);
  if (base == "node" || base == "nodejs") {
    // `node [node-options] script.js args`: options before the script become execArgv.
    size_t k = 1;
    while (k < opt.command.size() && opt.command[k].size() > 1 && opt.command[k][0] == '-') ++k;
    if (k >= opt.command.size()) return usage_error("node needs a script to run");
    settings.exec_path = cmd;
    settings.exec_argv.assign(opt.command.begin() + 1, opt.command.begin() + static_cast<long>(k));
    settings.exec = opt.command[k];
    settings.args.assign(opt.command.begin() + static_cast<long>(k) + 1, opt.command.end());
  } else {
    settings.exec = cmd;  // .js runs under node (fork's rule); anything else runs directly
    settings.args.assign(opt.command.begin() + 1, opt.command.end());
  }
  (void)ends_with;
  ::signal(SIGPIPE, SIG_IGN);
  uv_loop_t loop;
  uv_loop_init(&loop);
  int rc = 0;
  {
    Runner r(&loop, opt);
    rc = r.run(std::move(settings));
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  return rc;
}

}  // namespace uvcluster::cli
