#include "uvcluster/cluster/primary.hpp"

#include <cstdio>
#include <cstdlib>

#include "uvcluster/cluster/round_robin_handle.hpp"
#include "uvcluster/cluster/shared_handle.hpp"
#include "uvcluster/cluster/watchdog.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"

extern char** environ;

namespace uvcluster::cluster {

const char* policy_name(Policy p) {
  switch (p) {
    case Policy::rr: return "rr";
    case Policy::none: return "none";
    case Policy::reuseport: return "reuseport";
    case Policy::exclusive: return "exclusive";
  }
  return "rr";
}

std::optional<Policy> parse_policy(std::string_view s) {
  if (s == "rr") return Policy::rr;
  if (s == "none") return Policy::none;
  if (s == "reuseport") return Policy::reuseport;
  if (s == "exclusive") return Policy::exclusive;
  return std::nullopt;
}

Policy policy_from_env() {
  const char* v = std::getenv("NODE_CLUSTER_SCHED_POLICY");
  if (!v) return Policy::rr;
  return parse_policy(v).value_or(Policy::rr);
}

nlohmann::json Address::to_json() const {
  // Node's listening info; `fd` is undefined for TCP, so it is left out.
  return {{"addressType", address_type},
          {"address", address ? Json(*address) : Json(nullptr)},
          {"port", port}};
}

const char* WorkerHandle::state_name(State s) {
  switch (s) {
    case State::none: return "none";
    case State::online: return "online";
    case State::listening: return "listening";
    case State::disconnected: return "disconnected";
    case State::dead: return "dead";
  }
  return "none";
}

bool WorkerHandle::is_connected() const {
  return process_ && process_->channel() && process_->channel()->connected();
}

bool WorkerHandle::send(const Json& message, std::function<void(const Error*)> done) {
  if (!is_connected()) {
    if (done) {
      Error e = Error::make("ERR_IPC_CHANNEL_CLOSED", "Channel closed");
      done(&e);
    }
    return false;
  }
  return process_->channel()->send(message, std::nullopt, {}, std::move(done));
}

void WorkerHandle::disconnect() {
  exited_after_disconnect_ = true;
  auto p = primary_.lock();
  if (!p) return;
  p->send_to(*this, {{"act", "disconnect"}});
  p->remove_handles_for(*this, /*gone=*/false);  // it may still answer a newconn in flight
  p->remove_worker(*this);
}

bool WorkerHandle::kill(const std::string& signal) { return process_ && process_->kill(signal); }

// One key's handle in the primary.
struct Primary::Impl {
  std::unique_ptr<RoundRobinHandle> rr;
  std::unique_ptr<SharedHandle> shared;
  Json data = nullptr;  // the first worker's server data (TLS ticket keys), returned to all
  uint64_t serial = 0;
  bool has(int id) const { return rr ? rr->scheduler().has(id) : shared && shared->has(id); }
  // Node's handle.remove(worker): true when this was the last worker (the key is dropped).
  bool remove(int id, bool gone) {
    if (!has(id)) {
      if (rr && gone) rr->scheduler().worker_gone(id);  // answers it still owed us: none coming
      return false;
    }
    if (rr) {
      if (!rr->scheduler().remove(id, gone)) return false;
      rr->close();  // closes the queue and the listening socket
      return true;
    }
    return shared->remove(id);
  }
};

std::shared_ptr<Primary> Primary::create(uv_loop_t* loop, PrimarySettings settings) {
  raise_nofile_limit();
  return std::make_shared<Primary>(Key{}, loop, std::move(settings));
}

Primary::Primary(Key, uv_loop_t* loop, PrimarySettings settings)
    : loop_(loop), settings_(std::move(settings)), ticker_(loop) {
  policy_ = settings_.policy.value_or(policy_from_env());
  debug_ = std::getenv("UVCLUSTER_DEBUG") != nullptr;  // protocol trace on stderr
}

Primary::~Primary() {
  handles_.clear();
  ticker_.close();
}

size_t Primary::queued_connections() const {
  size_t n = 0;
  for (auto& [k, h] : handles_)
    if (h->rr) n += h->rr->scheduler().queued();
  return n;
}

Result<std::shared_ptr<WorkerHandle>> Primary::fork(const Env& extra) {
  Env env;
  for (char** e = environ; e && *e; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (auto& [k, v] : extra) env[k] = v;
  int id = next_id_++;
  env["NODE_UNIQUE_ID"] = std::to_string(id);
  // Tells C++ workers which accept strategy the primary chose (Node workers ignore it).
  env["UVCLUSTER_SCHED_POLICY"] = policy_name(policy_);

  ForkOptions fo;
  fo.cwd = settings_.cwd;
  fo.env = std::move(env);
  fo.exec_path = settings_.exec_path;
  fo.exec_argv = settings_.exec_argv;
  fo.silent = settings_.silent;
  fo.stdio = settings_.stdio;
  fo.detached = settings_.detached;
  // Workers never outlive the primary (watchdog.hpp): own process group, token, registration.
  if (settings_.workers_die_with_primary) {
    if (!watchdog_) {
      auto started = Watchdog::start(loop_);
      if (!started.ok()) return started.error();
      watchdog_ = std::move(started.value());
    }
    (*fo.env)[Watchdog::kTokenVar] = watchdog_->token();
    fo.detached = true;
    watchdog_->spawning();
  }
  auto child = uvcluster::fork(loop_, settings_.exec, settings_.args, std::move(fo));
  if (watchdog_) watchdog_->spawned(child.ok() ? child.value()->pid() : std::nullopt);
  if (!child.ok()) return child.error();

  auto w = std::make_shared<WorkerHandle>();
  w->id_ = id;
  w->primary_ = weak_from_this();
  w->process_ = child.value();
  w->pid_ = w->process_->pid();
  workers_[id] = w;

  std::weak_ptr<Primary> wp = weak_from_this();
  // Listeners hold the worker strongly: Node keeps a Worker alive while its process lives even
  // after it left cluster.workers; the cycle ends when the process emits `close`/`error`.
  auto* ch = w->process_->channel();
  if (ch) {
    ch->on_internal_message([wp, w](const Json& msg, ipc::ReceivedHandle* h) {
      if (auto p = wp.lock()) p->on_internal(w, msg, h);
    });
    ch->on_message([wp, w](const Json& msg, ipc::ReceivedHandle*) {
      w->message_.emit(msg);
      if (auto p = wp.lock()) p->message_.emit(*w, msg);
    });
    ch->on_disconnect([wp, w] {
      if (auto p = wp.lock()) p->worker_disconnect(*w);
    });
  }
  w->process_->on_exit([wp, w](const ExitStatus& st) {
    auto p = wp.lock();
    if (!p) return;
    if (p->watchdog_ && w->pid_) p->watchdog_->reaped(*w->pid_);  // its pid may now be reused
    if (!w->is_connected()) {
      p->remove_handles_for(*w);
      p->remove_worker(*w);
    }
    w->exit_status_ = st;
    w->exited_after_disconnect_ = w->exited_after_disconnect_.value_or(false);
    w->state_ = WorkerHandle::State::dead;
    p->messenger_.drop_owner(w->id_);
    w->exit_.emit(st);
    p->exit_.emit(*w, st);
    p->remove_worker(*w);  // Node calls removeWorker again here; it may complete cluster.disconnect
  });
  w->process_->on_error([wp, w](const Error& e) {
    w->error_.emit(e);
    auto p = wp.lock();
    if (p && !w->pid_) {  // spawn failed: there will be no exit
      w->state_ = WorkerHandle::State::dead;
      w->exit_status_ = ExitStatus{e.errnum, std::nullopt};
      p->remove_handles_for(*w);
      p->remove_worker(*w);
    }
  });

  // The listeners above hold `w`, and `w` holds the process: release the process once it has
  // closed to end that cycle (ChildProcess keeps itself alive until its close event returns).
  w->process_->on_close([w](const ExitStatus&) { w->process_.reset(); });

  ticker_.defer([wp, w] {
    if (auto p = wp.lock()) {
      p->setup_.emit();
      p->fork_.emit(*w);
    }
  });
  return w;
}

void Primary::disconnect(std::function<void()> cb) {
  if (cb) disconnect_cbs_.push_back(std::move(cb));
  if (workers_.empty()) {
    std::weak_ptr<Primary> wp = weak_from_this();
    ticker_.defer([wp] {
      if (auto p = wp.lock()) {
        auto cbs = std::move(p->disconnect_cbs_);
        p->disconnect_cbs_.clear();
        for (auto& f : cbs) f();
      }
    });
    return;
  }
  auto copy = workers_;
  for (auto& [id, w] : copy)
    if (w->is_connected()) w->disconnect();
}

bool Primary::send_to(WorkerHandle& w, Json payload, Messenger::Reply cb,
                      std::optional<ipc::OutgoingHandle> handle) {
  if (!w.is_connected()) return false;  // Node's sendHelper: nothing sent, no callback kept
  Json m = messenger_.wrap(std::move(payload), std::move(cb), w.id_);
  if (debug_) std::fprintf(stderr, "[primary] -> %d %s%s\n", w.id_, m.dump().c_str(), handle ? " +fd" : "");
  w.process_->channel()->send(m, std::move(handle));
  return true;
}

void Primary::on_internal(const std::shared_ptr<WorkerHandle>& w, const Json& raw,
                          ipc::ReceivedHandle* h) {
  const Json& msg = unwrap_handle_message(raw);
  if (debug_) std::fprintf(stderr, "[primary] <- %d %s%s\n", w->id_, raw.dump().c_str(), h ? " +fd" : "");
  if (!is_cluster_message(msg)) return;
  if (messenger_.take_reply(msg, h, w->id_)) return;
  auto act_it = msg.find("act");
  if (act_it == msg.end() || !act_it->is_string()) return;  // e.g. a bogus ack: ignored
  const std::string& act = act_it->get_ref<const std::string&>();
  if (act == "online") {
    w->state_ = WorkerHandle::State::online;
    w->online_.emit();
    online_.emit(*w);
  } else if (act == "queryServer") {
    query_server(w, msg);
  } else if (act == "listening") {
    w->state_ = WorkerHandle::State::listening;
    Address a;
    if (auto it = msg.find("address"); it != msg.end() && it->is_string()) a.address = it->get<std::string>();
    if (auto it = msg.find("port"); it != msg.end() && it->is_number_integer()) a.port = it->get<int>();
    if (auto it = msg.find("addressType"); it != msg.end()) a.address_type = *it;
    w->listening_.emit(a);
    listening_.emit(*w, a);
  } else if (act == "exitedAfterDisconnect") {
    w->exited_after_disconnect_ = true;
    Json reply = {{"ack", msg.contains("seq") ? msg["seq"] : Json()}};
    send_to(*w, std::move(reply));
  } else if (act == "close") {
    auto k = msg.find("key");
    if (k == msg.end() || !k->is_string()) return;
    auto it = handles_.find(k->get<std::string>());
    if (it != handles_.end() && it->second->remove(w->id_, /*gone=*/false)) handles_.erase(it);
  }
  // Unknown acts are ignored, as in Node.
}

void Primary::query_server(const std::shared_ptr<WorkerHandle>& w, const Json& msg) {
  // Node drops a query from a worker that is already going away: its listen never completes.
  if (w->exited_after_disconnect_.value_or(false)) return;
  std::string key = server_key(msg);
  Json ack = msg.contains("seq") ? msg["seq"] : Json();

  Address where;
  if (auto it = msg.find("address"); it != msg.end() && it->is_string()) where.address = it->get<std::string>();
  if (auto it = msg.find("addressType"); it != msg.end()) where.address_type = *it;
  auto port_it = msg.find("port");
  bool port_ok = port_it != msg.end() && port_it->is_number_integer() &&
                 port_it->get<int64_t>() >= 0 && port_it->get<int64_t>() <= 65535;
  if (port_ok) where.port = port_it->get<int>();

  auto fail = [&](int errnum) {
    send_to(*w, {{"errno", errnum}, {"key", key}, {"ack", ack}, {"data", nullptr}});
    listen_error_.emit(*w, where, Error::from_uv(errnum, "listen"));
  };
  // Only TCP is handled here: unix pipes, UDP and listen({fd}) answer ENOTSUP rather than
  // crashing the primary (Node would throw for a bad port inside the primary).
  const Json& at = where.address_type;
  bool tcp = at.is_number_integer() && (at.get<int>() == 4 || at.get<int>() == 6);
  auto fd_it = msg.find("fd");
  bool has_fd = fd_it != msg.end() && fd_it->is_number_integer() && fd_it->get<int>() >= 0;
  if (!tcp || has_fd) return fail(UV_ENOTSUP);
  if (!port_ok) return fail(UV_EINVAL);

  BindSpec spec;
  spec.address = where.address;
  spec.port = where.port;
  spec.address_type = at.get<int>();
  if (auto f = msg.find("flags"); f != msg.end() && f->is_number_integer()) spec.ipv6_only = (f->get<int>() & 1) != 0;
  int backlog = 511;
  if (auto b = msg.find("backlog"); b != msg.end() && b->is_number_integer() && b->get<int>() > 0) backlog = b->get<int>();

  auto it = handles_.find(key);
  if (it == handles_.end()) {
    auto impl = std::make_unique<Impl>();
    impl->serial = ++handle_serial_;
    if (policy_ == Policy::rr) {
      auto rr = RoundRobinHandle::open(loop_, spec, backlog);
      if (!rr.ok()) return fail(rr.error().errnum);  // key not stored: a retry binds again
      impl->rr = std::move(rr.value());
    } else {
      impl->shared = std::make_unique<SharedHandle>(spec, policy_ == Policy::reuseport);
      if (impl->shared->errnum() != 0) return fail(impl->shared->errnum());
    }
    it = handles_.emplace(key, std::move(impl)).first;
  }
  Impl& h = *it->second;
  if (h.data.is_null() && msg.contains("data")) h.data = msg["data"];

  if (h.rr) {
    Json reply = {{"errno", nullptr}, {"key", key}, {"ack", ack}, {"data", h.data},
                  {"sockname", h.rr->sockname().to_json()}};
    send_to(*w, std::move(reply));
    std::weak_ptr<Primary> wp = weak_from_this();
    std::weak_ptr<WorkerHandle> ww = w;
    uint64_t serial = h.serial;
    h.rr->scheduler().add(w->id_, [wp, ww, key, serial](int conn, std::function<void(bool)> reply) {
      auto p = wp.lock();
      auto wk = ww.lock();
      if (!p || !wk) return false;
      Fd copy = Fd::dup_of(conn);  // the primary keeps its own until the worker accepts
      if (!copy) return false;
      auto on_reply = [wp, ww, key, serial, reply](const Json& r, ipc::ReceivedHandle*) {
        auto p2 = wp.lock();
        if (!p2) return;
        auto hit = p2->handles_.find(key);
        if (hit == p2->handles_.end() || hit->second->serial != serial) return;
        bool accepted = r.value("accepted", Json(false)) == Json(true);
        if (accepted)
          if (auto w2 = ww.lock()) ++w2->connections_;
        reply(accepted);
      };
      return p->send_to(*wk, {{"act", "newconn"}, {"key", key}}, on_reply,
                        ipc::OutgoingHandle{ipc::HandleType::native, std::move(copy), std::nullopt});
    });
  } else {
    int err = 0;
    Fd fd = h.shared->add(w->id_, err);
    if (!fd) {
      if (!h.shared->has(w->id_) && h.shared->remove(w->id_)) handles_.erase(it);
      return fail(err);
    }
    send_to(*w, {{"errno", 0}, {"key", key}, {"ack", ack}, {"data", h.data}}, {},
            ipc::OutgoingHandle{ipc::HandleType::native, std::move(fd), std::nullopt});
  }
}

void Primary::remove_handles_for(WorkerHandle& w, bool gone) {
  for (auto it = handles_.begin(); it != handles_.end();) {
    if (it->second->remove(w.id_, gone))
      it = handles_.erase(it);
    else
      ++it;
  }
}

void Primary::remove_worker(WorkerHandle& w) {
  workers_.erase(w.id_);
  if (!workers_.empty() || disconnect_cbs_.empty()) return;
  // cluster.disconnect(cb) completes when the table is empty and no removed worker is still
  // connected (Node fires it from a later removeWorker; we wait for the same moment explicitly).
  std::weak_ptr<Primary> wp = weak_from_this();
  ticker_.defer([wp] {
    auto p = wp.lock();
    if (!p || !p->workers_.empty() || p->disconnect_cbs_.empty()) return;
    auto cbs = std::move(p->disconnect_cbs_);
    p->disconnect_cbs_.clear();
    for (auto& f : cbs) f();
  });
}

void Primary::worker_disconnect(WorkerHandle& w) {
  remove_handles_for(w);
  w.exited_after_disconnect_ = w.exited_after_disconnect_.value_or(false);
  w.state_ = WorkerHandle::State::disconnected;
  if (w.is_dead()) remove_worker(w);
  w.disconnect_.emit();
  disconnect_.emit(w);
}

}  // namespace uvcluster::cluster
