#include "uvcluster/cluster/supervisor.hpp"

#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <deque>

#include "uvcluster/cluster/process_usage.hpp"
#include "uvcluster/detail/uv_handle.hpp"

namespace uvcluster::cluster {

namespace {

// A libuv timer running a std::function. Destroying it cancels the callback (uv_close).
class Timer {
 public:
  explicit Timer(uv_loop_t* loop) {
    if (uv_timer_init(loop, h_.get()) == 0) {
      h_.mark_initialized();
      h_->data = this;
    }
  }
  // False if the timer could not be initialized (then `fn` never runs).
  bool start(uint64_t ms, std::function<void()> fn) {
    if (!h_.initialized()) return false;
    fn_ = std::move(fn);
    return uv_timer_start(h_.get(), [](uv_timer_t* t) {
      auto fn = static_cast<Timer*>(t->data)->fn_;  // a copy: the callback may destroy the Timer
      fn();
    }, ms, 0) == 0;
  }
  void stop() {
    if (h_.initialized()) uv_timer_stop(h_.get());
  }
  bool active() const { return h_.active(); }

 private:
  detail::UvHandle<uv_timer_t> h_;
  std::function<void()> fn_;
};

constexpr int64_t kBackoffFirstMs = 100;
constexpr uint64_t kHandedOutCheckMs = 5;
constexpr int kHandedOutChecksWithoutProgress = 100;  // 0.5 s
constexpr int64_t kBackoffCapMs = 10000;
// After the supervisor is done, worker pipes a grandchild still holds open are closed after this.
constexpr uint64_t kOutputLingerMs = 1000;

bool is_bind_error(const std::string& code) {
  return code == "EADDRINUSE" || code == "EACCES" || code == "EADDRNOTAVAIL";
}

}  // namespace

struct Supervisor::Tracked {
  Tracked(uv_loop_t* loop, std::shared_ptr<WorkerHandle> worker, int slot, uint64_t now)
      : w(std::move(worker)), instance(slot), forked_at(now), deadline(loop) {}
  std::shared_ptr<WorkerHandle> w;
  int instance;
  uint64_t forked_at;
  bool up = false;
  bool stopping = false;   // we asked it to leave: no restart
  bool signalled = false;  // got kill_signal from us
  bool sigkilled = false;  // got SIGKILL from us
  int memory_over = 0;     // samples in a row above max_memory_bytes
  bool memory_reload = false;
  Timer deadline;          // online / up deadline, then the kill timeout once stopping
};

struct Supervisor::Slot {
  Slot(uv_loop_t* loop, int i) : instance(i), restart_timer(loop) {}
  int instance;
  std::shared_ptr<WorkerHandle> worker;       // the slot's worker (starting or up)
  std::shared_ptr<WorkerHandle> replacement;  // a reload's successor while `worker` still serves
  int crashes = 0;                            // backoff exponent
  std::deque<uint64_t> restart_times;         // within restart_window
  int restarts = 0;
  uint64_t connections_gone = 0;              // handed to this slot's workers that have exited
  bool errored = false;
  Timer restart_timer;
};

struct Supervisor::Handles {
  explicit Handles(uv_loop_t* loop) : grace(loop), handed_out(loop), linger(loop), memory(loop) {}
  Timer grace;
  Timer handed_out;  // a drain: the workers leave once the waiting connections are handed out
  size_t least_waiting = SIZE_MAX;  // ... the fewest seen waiting, and the checks since it fell
  int checks_without_progress = 0;
  Timer linger;
  Timer memory;
  std::vector<detail::UvHandle<uv_signal_t>> signals;
};

const char* to_string(InstanceStatus::State s) {
  using State = InstanceStatus::State;
  switch (s) {
    case State::starting: return "starting";
    case State::up: return "up";
    case State::backoff: return "backoff";
    case State::errored: return "errored";
    case State::stopped: return "stopped";
  }
  return "?";
}

std::shared_ptr<Supervisor> Supervisor::create(uv_loop_t* loop, SupervisorOptions options) {
  return std::make_shared<Supervisor>(Key{}, loop, std::move(options));
}

Supervisor::Supervisor(Key, uv_loop_t* loop, SupervisorOptions options)
    : loop_(loop), opt_(std::move(options)), handles_(std::make_unique<Handles>(loop)) {
  if (opt_.relay_output) {
    opt_.primary.silent = false;
    opt_.primary.stdio = std::vector<Stdio>{Stdio::inherit(), Stdio::pipe(), Stdio::pipe(), Stdio::ipc()};
  }
  primary_ = Primary::create(loop_, opt_.primary);
  policy_ = primary_->policy();
}

Supervisor::~Supervisor() = default;

uint64_t Supervisor::now_ms() const { return uv_now(loop_); }

Supervisor::Slot* Supervisor::slot_of(int instance) {
  return instance >= 0 && static_cast<size_t>(instance) < slots_.size() ? slots_[instance].get() : nullptr;
}

Supervisor::Tracked* Supervisor::tracked(int id) {
  auto it = live_.find(id);
  return it == live_.end() ? nullptr : it->second.get();
}

void Supervisor::start() {
  if (started_) return;
  started_ = true;
  attach();
  if (opt_.handle_signals) install_signals();
  scale(opt_.instances);
  if (opt_.max_memory_bytes > 0 && opt_.memory_check_ms > 0)
    handles_->memory.start(static_cast<uint64_t>(opt_.memory_check_ms), [this] { check_memory(); });
}

void Supervisor::check_memory() {
  if (draining_ || finished_) return;
  for (auto& slot : slots_) {
    // A slot being replaced already is left alone; its new worker is sampled from scratch.
    if (!slot->worker || slot->replacement || (reloading_ && reloading_->instance == slot->instance)) continue;
    auto* t = tracked(slot->worker->id());
    if (!t || !t->up || t->stopping || t->memory_reload || !t->w->pid()) continue;
    auto usage = process_usage(*t->w->pid());
    if (!usage.ok()) continue;
    if (usage->rss_bytes <= opt_.max_memory_bytes) {
      t->memory_over = 0;
      continue;
    }
    if (++t->memory_over < std::max(1, opt_.memory_samples)) continue;
    t->memory_reload = true;
    memory_limit_.emit(*t->w, slot->instance, usage->rss_bytes);
    reload_slot(slot->instance);
  }
  handles_->memory.start(static_cast<uint64_t>(opt_.memory_check_ms), [this] { check_memory(); });
}

void Supervisor::install_signals() {
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
    auto& h = handles_->signals.emplace_back();
    if (uv_signal_init(loop_, h.get()) != 0) continue;
    h.mark_initialized();
    h->data = this;
    int rc = uv_signal_start(h.get(), [](uv_signal_t* s, int signum) {
      auto* self = static_cast<Supervisor*>(s->data);
      if (signum == SIGHUP) self->reload();
      else if (self->draining_) self->kill_all();  // a second SIGTERM/SIGINT: stop waiting
      else self->drain(signum == SIGTERM ? "SIGTERM" : "SIGINT");
    }, sig);
    if (rc != 0) error_.emit(nullptr, Error::from_uv(rc, "uv_signal_start"));
  }
}

void Supervisor::attach() {
  auto& p = *primary_;
  p.on_online([this](WorkerHandle& w) {
    online_.emit(w);
    auto* t = tracked(w.id());
    if (!t || t->up || t->stopping) return;
    t->deadline.stop();
    if (opt_.listen_timeout_ms > 0) {
      int64_t left = std::max<int64_t>(0, opt_.listen_timeout_ms - static_cast<int64_t>(now_ms() - t->forked_at));
      t->deadline.start(static_cast<uint64_t>(left), [this, id = w.id()] {
        if (auto* t = tracked(id)) fail_start(*t);
      });
    }
  });
  p.on_listening([this](WorkerHandle& w, const Address& a) {
    ever_listened_ = true;
    listening_.emit(w, a);
    if (!opt_.wait_ready) mark_up(w);
  });
  p.on_message([this](WorkerHandle& w, const Json& msg) {
    if (!opt_.wait_ready || msg != "ready") return;
    if (auto* t = tracked(w.id()); !t || t->up) return;
    ready_.emit(w);
    mark_up(w);
  });
  p.on_listen_error([this](WorkerHandle& w, const Address& a, const Error& e) {
    // Only a port nobody could ever have is fatal: a worker's second server on a busy port is
    // that worker's business while the cluster serves.
    bool fatal = !ever_listened_ && is_bind_error(e.code);
    listen_error_.emit(w, a, e, fatal);
    if (fatal) drain("listen-error", true);
  });
  p.on_disconnect([this](WorkerHandle& w) {
    disconnect_.emit(w);
    if (auto* t = tracked(w.id()); t && t->stopping && !w.is_dead()) signal_stopped(*t);
  });
  p.on_exit([this](WorkerHandle& w, const ExitStatus& st) { worker_exited(w, st); });
}

Result<std::shared_ptr<WorkerHandle>> Supervisor::fork_one(int instance) {
  Env env = opt_.env;
  env[opt_.instance_var] = std::to_string(instance);
  auto forked = primary_->fork(env);
  if (!forked.ok()) return forked.error();
  auto w = forked.value();
  int id = w->id();
  auto& t = live_[id] = std::make_unique<Tracked>(loop_, w, instance, now_ms());
  fork_.emit(*w, instance);
  t->deadline.start(static_cast<uint64_t>(opt_.startup_timeout_ms), [this, id] {
    auto* t = tracked(id);
    if (t && t->w->state() == WorkerHandle::State::none) fail_start(*t);
  });
  std::weak_ptr<Supervisor> ws = weak_from_this();
  w->on_error([ws, id](const Error& e) {
    auto s = ws.lock();
    auto* t = s ? s->tracked(id) : nullptr;
    if (!t) return;
    auto w = t->w;
    s->error_.emit(w.get(), e);
    if (w->pid()) return;
    // Spawn failed (ENOENT...): no exit event will come, and the command cannot run at all.
    if (auto* slot = s->slot_of(t->instance)) {
      if (slot->worker == w) slot->worker.reset();
      if (slot->replacement == w) slot->replacement.reset();
    }
    s->live_.erase(id);
    s->drain("spawn-error", true);
    s->maybe_finish();
  });
  if (opt_.relay_output) relay(*w, instance);
  return w;
}

void Supervisor::relay(WorkerHandle& w, int instance) {
  auto* proc = w.process();
  if (!proc) return;
  std::weak_ptr<Supervisor> ws = weak_from_this();
  std::shared_ptr<WorkerHandle> strong = live_.at(w.id())->w;
  std::weak_ptr<WorkerHandle> ww = strong;
  for (auto [stream, pipe] : {std::pair{OutputStream::out, proc->stdout_pipe()},
                              std::pair{OutputStream::err, proc->stderr_pipe()}}) {
    if (!pipe) continue;
    auto splitter = std::make_shared<LineSplitter>(opt_.max_line_bytes);
    auto deliver = [ws, ww, stream, instance](std::string_view line) {
      auto s = ws.lock();
      auto w = ww.lock();
      if (s && w) s->deliver(*w, instance, stream, line);
    };
    pipe->on_data([splitter, deliver](std::string_view d) { splitter->feed(d, deliver); });
    pipe->on_end([splitter, deliver] { splitter->finish(deliver); });
  }
  relaying_[w.id()] = ww;
  proc->on_close([ws, id = w.id()](const ExitStatus&) {
    auto s = ws.lock();
    if (!s) return;
    s->relaying_.erase(id);
    if (s->finished_ && s->relaying_.empty()) s->handles_->linger.stop();
  });
}

void Supervisor::deliver(WorkerHandle& w, int instance, OutputStream stream, std::string_view line) {
  std::string formatted;
  if (opt_.line_format) {
    formatted = format_line(*opt_.line_format, instance, line);
    line = formatted;
  }
  auto& file = stream == OutputStream::out ? opt_.out_file : opt_.err_file;
  if (file && file->write(line).ok()) return;
  output_.emit(w, stream, line);
}

void Supervisor::start_worker(Slot& slot) {
  auto w = fork_one(slot.instance);
  if (!w.ok()) {
    error_.emit(nullptr, w.error());
    if (live_.empty()) drain("fork-error", true);
    return;
  }
  slot.worker = w.value();
}

void Supervisor::fail_start(Tracked& t) {
  startup_timeout_.emit(*t.w);
  t.sigkilled = true;
  t.w->kill("SIGKILL");
}

void Supervisor::mark_up(WorkerHandle& w) {
  auto* t = tracked(w.id());
  if (!t || t->up || t->stopping) return;
  t->up = true;
  t->deadline.stop();
  auto* slot = slot_of(t->instance);
  if (slot && slot->replacement.get() == &w) {
    auto old = std::move(slot->worker);
    slot->worker = std::move(slot->replacement);
    slot->replacement.reset();
    if (old)
      if (auto* o = tracked(old->id())) stop(*o);
  }
  advance_reload();
}

void Supervisor::stop(Tracked& t) {
  if (t.stopping) return;
  t.stopping = true;
  t.deadline.stop();
  if (opt_.kill_timeout_ms > 0) {
    t.deadline.start(static_cast<uint64_t>(opt_.kill_timeout_ms), [this, id = t.w->id()] {
      auto* t = tracked(id);
      if (!t || t->w->is_dead()) return;
      t->sigkilled = true;
      kill_.emit(*t->w, "SIGKILL");
      t->w->kill("SIGKILL");
    });
  }
  // Disconnecting first lets the worker finish its connections; the signal follows once its
  // channel has closed (a Node process with a timer would otherwise never exit).
  if (t.w->is_connected()) t.w->disconnect();
  else signal_stopped(t);
}

void Supervisor::signal_stopped(Tracked& t) {
  if (t.signalled || t.w->is_dead()) return;
  t.signalled = true;
  t.w->kill(opt_.kill_signal);
}

void Supervisor::worker_exited(WorkerHandle& w, const ExitStatus& st) {
  auto it = live_.find(w.id());
  if (it == live_.end()) return;
  std::unique_ptr<Tracked> t = std::move(it->second);
  live_.erase(it);
  ++exits_;
  connections_gone_ += w.connections();
  Slot* slot = slot_of(t->instance);
  if (slot) slot->connections_gone += w.connections();
  bool after_disconnect = w.exited_after_disconnect().value_or(false);
  bool clean = after_disconnect && !t->sigkilled &&
               ((st.code && *st.code == 0) || (t->signalled && st.signal == opt_.kill_signal));
  if (!clean && (draining_ || !opt_.restart)) unclean_ = true;
  exit_.emit(w, st);

  if (slot && slot->replacement.get() == &w) {
    // The reload's new worker died before it was up: the old one keeps the slot.
    slot->replacement.reset();
    if (!draining_) {
      reload_failed_.emit(w.id());
      reloading_.reset();
      if (reload_again_) {
        reload_again_ = false;
        reload();
      }
    }
  } else if (slot && slot->worker.get() == &w) {
    slot->worker.reset();
    if (slot->replacement) {
      slot->worker = std::move(slot->replacement);  // a reload's successor takes over the slot
      slot->replacement.reset();
    } else if (!draining_ && !t->stopping && !after_disconnect && opt_.restart) {
      schedule_restart(*slot, *t);
    }
  }
  advance_reload();
  maybe_finish();
}

void Supervisor::schedule_restart(Slot& slot, const Tracked& t) {
  uint64_t now = now_ms();
  if (now - t.forked_at >= static_cast<uint64_t>(opt_.min_uptime_ms)) slot.crashes = 0;
  while (!slot.restart_times.empty() && now - slot.restart_times.front() >= static_cast<uint64_t>(opt_.restart_window_ms))
    slot.restart_times.pop_front();
  if (opt_.max_restarts > 0 && slot.restart_times.size() >= static_cast<size_t>(opt_.max_restarts)) {
    slot.errored = true;
    errored_.emit(slot.instance, static_cast<int>(slot.restart_times.size()));
    return;
  }
  slot.restart_times.push_back(now);
  // Exponential backoff with a cap: a worker that crashes at start cannot fork-bomb the host.
  int64_t delay = std::min<int64_t>(kBackoffFirstMs << std::min(slot.crashes, 7), kBackoffCapMs);
  ++slot.crashes;
  ++slot.restarts;
  ++restarts_;
  restart_.emit({slot.instance, t.w->id(), delay});
  slot.restart_timer.start(static_cast<uint64_t>(delay), [this, instance = slot.instance] {
    auto* s = slot_of(instance);
    if (s && !draining_ && !s->worker && !s->errored) start_worker(*s);
    maybe_finish();
  });
}

bool Supervisor::reload() {
  if (draining_ || finished_ || !started_) return false;
  if (reloading_) {
    if (!reload_again_) reload_queued_.emit();
    reload_again_ = true;
    return true;
  }
  reloading_.emplace();
  for (auto& slot : slots_) {
    if (slot->errored) {
      // A reload is the operator saying the code changed: errored slots start afresh.
      slot->errored = false;
      slot->crashes = 0;
      slot->restart_times.clear();
      if (!slot->worker) start_worker(*slot);
    } else if (slot->worker && slot->worker->is_connected()) {
      reloading_->queue.push_back(slot->instance);
    }
  }
  reload_.emit(reloading_->queue.size());
  next_reload();
  return true;
}

bool Supervisor::reload_slot(int instance) {
  if (draining_ || finished_) return false;
  if (reloading_) {
    auto& queue = reloading_->queue;
    if (std::find(queue.begin(), queue.end(), instance) == queue.end()) queue.push_back(instance);
    return true;
  }
  reloading_.emplace();
  reloading_->queue.push_back(instance);
  reload_.emit(1);
  next_reload();
  return true;
}

void Supervisor::next_reload() {
  while (reloading_ && !reloading_->queue.empty()) {
    int instance = reloading_->queue.front();
    reloading_->queue.erase(reloading_->queue.begin());
    auto* slot = slot_of(instance);
    if (!slot || !slot->worker || !slot->worker->is_connected()) continue;
    reloading_->instance = instance;
    reloading_->outgoing = slot->worker->id();
    auto w = fork_one(instance);
    if (!w.ok()) {
      error_.emit(nullptr, w.error());
      reload_failed_.emit(0);
      reloading_.reset();
      return;
    }
    slot->replacement = w.value();
    return;
  }
  if (!reloading_) return;
  reloading_.reset();
  reload_done_.emit();
  if (reload_again_ && !draining_) {
    reload_again_ = false;
    reload();
  }
}

void Supervisor::advance_reload() {
  if (!reloading_ || reloading_->instance < 0) return;
  auto* slot = slot_of(reloading_->instance);
  if (slot) {
    if (slot->replacement || live_.count(reloading_->outgoing)) return;
    if (slot->worker)
      if (auto* t = tracked(slot->worker->id()); t && !t->up) return;
  }
  reloading_->instance = -1;
  next_reload();
}

void Supervisor::drain(const std::string& reason, bool failure) {
  if (failure) failed_ = true;
  if (draining_ || finished_) return;
  draining_ = true;
  reloading_.reset();
  reload_again_ = false;
  for (auto& slot : slots_) {
    // A slot that was not serving (crash loop, errored) makes the shutdown unclean.
    if (slot->errored || slot->restart_timer.active()) unclean_ = true;
    slot->restart_timer.stop();
  }
  drain_.emit(reason, live_.size());
  handles_->grace.start(static_cast<uint64_t>(opt_.grace_ms), [this] { kill_all(); });
  // The port stops taking connections first (rr: its socket closes, the backlog taken into the
  // queue; shared: SYNs are dropped), then the workers leave once what waits is handed out or
  // accepted: a worker told to leave closes its server and refuses what reaches it after that,
  // so a connection still queued in the primary or in a socket's backlog would be lost. Beyond
  // Node, whose primary disconnects the workers at once.
  primary_->stop_accepting();
  stop_workers_when_handed_out();
  maybe_finish();
}

void Supervisor::stop_workers_when_handed_out() {
  if (finished_ || !primary_) return;
  bool someone_to_take_them = std::any_of(live_.begin(), live_.end(), [](const auto& entry) {
    return !entry.second->stopping && entry.second->w->is_connected();
  });
  size_t waiting = primary_->connections_waiting();
  auto& h = *handles_;
  if (waiting < h.least_waiting) {
    h.least_waiting = waiting;
    h.checks_without_progress = 0;
  } else {
    ++h.checks_without_progress;
  }
  // Hand-off answers and workers' accepts arrive through several paths: a short poll, which
  // gives up when the count stops falling (workers that cannot take more) and is bounded by the
  // grace timer.
  if (someone_to_take_them && waiting > 0 && h.checks_without_progress < kHandedOutChecksWithoutProgress) {
    h.handed_out.start(kHandedOutCheckMs, [this] { stop_workers_when_handed_out(); });
    return;
  }
  std::vector<int> ids;
  for (auto& [id, t] : live_) ids.push_back(id);
  for (int id : ids)
    if (auto* t = tracked(id)) stop(*t);
}

void Supervisor::kill_all() {
  for (auto& [id, t] : live_) {
    if (t->w->is_dead()) continue;
    t->sigkilled = true;
    kill_.emit(*t->w, "SIGKILL");
    t->w->kill("SIGKILL");
  }
}

bool Supervisor::scale(int n) {
  if (draining_ || finished_ || n < 0) return false;
  while (slots_.size() < static_cast<size_t>(n)) {
    slots_.push_back(std::make_unique<Slot>(loop_, static_cast<int>(slots_.size())));
    start_worker(*slots_.back());
    if (draining_) return false;  // the command cannot run
  }
  while (slots_.size() > static_cast<size_t>(n)) {
    auto slot = std::move(slots_.back());
    slots_.pop_back();
    for (auto* w : {slot->worker.get(), slot->replacement.get()})
      if (auto* t = w ? tracked(w->id()) : nullptr) stop(*t);
  }
  advance_reload();
  maybe_finish();
  return true;
}

void Supervisor::maybe_finish() {
  if (finished_ || !started_ || !live_.empty()) return;
  if (!draining_) {
    if (opt_.restart) return;  // the slots wait for their restarts, a reload or a drain
    for (auto& slot : slots_)
      if (slot->restart_timer.active()) return;
  }
  finish();
}

void Supervisor::finish() {
  finished_ = true;
  handles_->grace.stop();
  handles_->handed_out.stop();
  handles_->memory.stop();
  for (auto& s : handles_->signals) s.close();
  handles_->signals.clear();
  for (auto& slot : slots_) slot->restart_timer.stop();
  SupervisorResult result{(failed_ || unclean_) ? 1 : 0, stats()};
  if (!relaying_.empty()) {
    // Pipes a worker's own children still hold would keep the loop alive forever.
    handles_->linger.start(kOutputLingerMs, [this] {
      auto open = relaying_;
      for (auto& [id, ww] : open)
        if (auto w = ww.lock(); w && w->process())
          for (auto* pipe : {w->process()->stdout_pipe(), w->process()->stderr_pipe()})
            if (pipe && !pipe->closed()) pipe->destroy();
    });
  }
  done_.emit(result);
  primary_.reset();
}

SupervisorStats Supervisor::stats() const {
  SupervisorStats s;
  s.policy = policy_;
  s.restarts = restarts_;
  s.exits = exits_;
  s.connections = connections_gone_;
  s.live = live_.size();
  s.draining = draining_;
  s.reloading = reloading_.has_value();
  for (auto& [id, t] : live_) s.connections += t->w->connections();
  for (auto& slot : slots_) {
    InstanceStatus is;
    is.instance = slot->instance;
    is.restarts = slot->restarts;
    is.connections = slot->connections_gone;
    for (auto& [id, t] : live_)
      if (t->instance == slot->instance) is.connections += t->w->connections();
    if (slot->worker) {
      is.id = slot->worker->id();
      is.pid = slot->worker->pid();
      auto it = live_.find(slot->worker->id());
      is.state = it != live_.end() && it->second->up ? InstanceStatus::State::up : InstanceStatus::State::starting;
      if (it != live_.end()) is.uptime_ms = static_cast<int64_t>(now_ms() - it->second->forked_at);
    } else if (slot->errored) {
      is.state = InstanceStatus::State::errored;
    } else if (slot->restart_timer.active()) {
      is.state = InstanceStatus::State::backoff;
    } else {
      is.state = InstanceStatus::State::stopped;
    }
    s.instances.push_back(is);
  }
  return s;
}

void LineSplitter::feed(std::string_view bytes, const std::function<void(std::string_view)>& line) {
  while (!bytes.empty()) {
    size_t nl = bytes.find('\n');
    size_t take = nl == std::string_view::npos ? bytes.size() : nl + 1;
    take = std::min(take, max_ - partial_.size());
    bool complete = take > 0 && bytes[take - 1] == '\n';
    if (partial_.empty() && (complete || take == max_)) {
      line(bytes.substr(0, take));  // the common case: a whole line inside one read, no copy
    } else {
      partial_.append(bytes.substr(0, take));
      if (complete || partial_.size() == max_) {
        line(partial_);
        partial_.clear();
      }
    }
    bytes.remove_prefix(take);
  }
}

void LineSplitter::finish(const std::function<void(std::string_view)>& line) {
  if (partial_.empty()) return;
  line(partial_);
  partial_.clear();
}

}  // namespace uvcluster::cluster
