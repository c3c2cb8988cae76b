#include "uvcluster/cluster/primary.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "ipc/channel_owner.hpp"
#include "uvcluster/cluster/server_handle.hpp"
#include "uvcluster/cluster/watchdog.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"

extern char** environ;

namespace uvcluster::cluster {

const char* policy_name(Policy p) {
  switch (p) {
    case Policy::rr: return "rr";
    case Policy::sticky: return "sticky";
    case Policy::none: return "none";
    case Policy::reuseport: return "reuseport";
    case Policy::exclusive: return "exclusive";
  }
  return "rr";
}

std::optional<Policy> parse_policy(std::string_view s) {
  if (s == "rr") return Policy::rr;
  if (s == "sticky") return Policy::sticky;
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

const char* to_string(WorkerHandle::State s) {
  using State = WorkerHandle::State;
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

PrimaryStats Primary::stats() const {
  PrimaryStats st = retired_;
  st.queued = st.in_flight = 0;  // "now" figures come from live handles only
  for (auto& [key, h] : handles_) h->count(st);
  st.handoff_latency = handoff_latency_;
  return st;
}

void Primary::stop_accepting() {
  for (auto& [key, h] : handles_) h->stop_accepting();
}

size_t Primary::connections_waiting() const {
  size_t n = 0;
  for (auto& [key, h] : handles_) n += h->waiting();
  return n;
}

void PrimaryStats::HandOffLatency::record(double seconds) {
  ++count;
  sum_seconds += seconds;
  // A linear search: almost every hand-off lands in the first few buckets.
  auto bound = std::find_if(kBoundsSeconds.begin(), kBoundsSeconds.end(), [seconds](double b) { return b >= seconds; });
  if (bound != kBoundsSeconds.end()) ++counts[static_cast<size_t>(bound - kBoundsSeconds.begin())];
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
  fo.process.cwd = settings_.cwd;
  fo.process.env = std::move(env);
  fo.exec_path = settings_.exec_path;
  fo.exec_argv = settings_.exec_argv;
  fo.silent = settings_.silent;
  fo.stdio = settings_.stdio;
  fo.process.detached = settings_.detached;
  // Workers never outlive the primary (watchdog.hpp): own process group, token, registration.
  if (settings_.workers_die_with_primary) {
    if (!watchdog_) {
      auto started = Watchdog::start(loop_);
      if (!started.ok()) return started.error();
      watchdog_ = std::move(started.value());
    }
    (*fo.process.env)[Watchdog::kTokenVar] = watchdog_->token();
    fo.process.detached = true;
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
    // A newconn's answer, once per connection, is matched on its bytes (no JSON value).
    ch->set_line_filter([wp, w](std::string_view line) {
      auto p = wp.lock();
      if (!p || p->debug_) return false;  // --debug logs every message: the general way
      auto answer = parse_newconn_answer(line);
      if (!answer) return false;
      auto record = w->handoffs_.take(answer->ack);  // only this worker's newconns
      if (!record) return false;
      p->finish_handoff(*w, *record, answer->accepted);
      return true;
    });
    ch->on_message([wp, w](const Json& msg, ipc::ReceivedHandle*) {
      w->message_.emit(msg);
      if (auto p = wp.lock()) p->message_.emit(*w, msg);
    });
    ch->on_disconnect([wp, w] {
      if (auto p = wp.lock()) p->worker_disconnect(*w);
    });
    // The failures of the handles we send it (SendOptions::failure_tag: the send's ticket).
    ch->on_send_failure([wp, id](uint64_t ticket, const Error& e) {
      auto p = wp.lock();
      if (!p) return;
      if (auto it = p->workers_.find(id); it != p->workers_.end()) p->handle_send_failed(*it->second, ticket, e);
    });
    ch->on_error([wp, w](const Error& e) {
      if (auto p = wp.lock()) p->on_channel_failure(*w, e);
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
    w->handoffs_.clear();
    w->on_nack_.clear();
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

std::optional<int64_t> Primary::send_to(WorkerHandle& w, Json payload, Messenger::Reply cb,
                                        std::optional<ipc::OutgoingHandle> handle, std::function<void()> on_nack,
                                        bool pipelined) {
  if (!w.is_connected()) return std::nullopt;  // Node's sendHelper: nothing sent, no callback kept
  Json m = messenger_.wrap(std::move(payload), std::move(cb), w.id_);
  int64_t seq = m["seq"].get<int64_t>();
  if (debug_) std::fprintf(stderr, "[primary] -> %d %s%s\n", w.id_, m.dump().c_str(), handle ? " +fd" : "");
  ipc::SendOptions options;
  options.pipelined = pipelined;
  if (handle) options.failure_tag = handle_sent(w, std::move(on_nack));
  w.process_->channel()->send(m, std::move(handle), std::move(options));
  return seq;
}

uint64_t Primary::handle_sent(WorkerHandle& w, std::function<void()> on_nack, int64_t newconn_seq) {
  // The channel sends handles one at a time, in order, so ACK/NACKs answer them in this order.
  uint64_t ticket = w.next_ticket_++;
  w.on_nack_.push_back(WorkerHandle::HandleSent{ticket, newconn_seq, std::move(on_nack)});
  return ticket;
}

void Primary::handle_send_failed(WorkerHandle& w, uint64_t ticket, const Error& e) {
  // A handle that could not leave because we are out of fds (the channel had to duplicate it
  // to queue it) never reached the worker: that is a NACK, not a broken channel.
  if (e.errnum != UV_EMFILE && e.errnum != UV_ENFILE) return on_channel_failure(w, e);
  auto& q = w.on_nack_;
  auto pos = std::find_if(q.begin(), q.end(), [ticket](const auto& h) { return h.ticket == ticket; });
  if (pos == q.end()) return;
  WorkerHandle::HandleSent sent = std::move(*pos);
  q.erase(pos);
  handle_nacked(w, sent);
}

void Primary::handle_nacked(WorkerHandle& w, const WorkerHandle::HandleSent& sent) {
  // A newconn's fd never reached the worker, so no act answer will come either.
  if (sent.newconn_seq >= 0) {
    w.copies_to_keep_ = WorkerHandle::kCopiesKeptAfterNack;
    if (auto record = w.handoffs_.take(sent.newconn_seq)) finish_handoff(w, *record, false, /*answered=*/false);
  } else if (sent.on_nack) {
    sent.on_nack();
  }
}

void Primary::on_handle_reply(WorkerHandle& w, bool acked) {
  if (w.on_nack_.empty()) return;  // a stray ACK/NACK (the channel ignores it too)
  WorkerHandle::HandleSent sent = std::move(w.on_nack_.front());
  w.on_nack_.pop_front();
  if (!acked) handle_nacked(w, sent);
}

std::optional<HandOffTable::Record> HandOffTable::take(int64_t seq) {
  auto it = std::find_if(records_.begin(), records_.end(), [seq](const Record& r) { return r.seq == seq; });
  if (it == records_.end()) return std::nullopt;
  Record r = *it;
  records_.erase(it);
  return r;
}

bool Primary::serves(uint64_t handle_serial) const {
  return std::any_of(handles_.begin(), handles_.end(),
                     [handle_serial](const auto& h) { return h.second->serial == handle_serial; });
}

void Primary::finish_handoff(WorkerHandle& w, const HandOffTable::Record& r, bool accepted, bool answered,
                             Fd returned) {
  uint64_t now = answered ? uv_hrtime() : 0;
  if (answered) handoff_latency_.record(static_cast<double>(now - r.sent_ns) / 1e9);
  if (answered && !accepted && r.given && !returned) {
    // It declared returnRefused, had the only copy and kept it: the client's connection is lost.
    w.error_.emit(Error::make("ERR_UVC_REFUSED_NOT_RETURNED",
                              "worker " + std::to_string(w.id_) +
                                  " refused a connection without giving it back: the connection is lost"));
  }
  if (!serves(r.serial)) return;  // its server closed: nothing waits for the answer
  if (accepted) ++w.connections_;
  // The scheduler sends the connection this answer frees from inside the call: stamped with the
  // same reading (one clock read per hand-off instead of two).
  answered_at_ns_ = now;
  r.reply(accepted, std::move(returned));
  answered_at_ns_ = 0;
}

void Primary::on_channel_failure(WorkerHandle& w, const Error& e) {
  ++retired_.channel_errors;
  channel_error_.emit(w, e);
  if (!w.is_connected()) return;  // the channel closed itself: `disconnect` is on its way
  // A frame we could not read may have carried an answer (an ack, a NACK): whatever the worker
  // owes us may never come. Close its channel now so it leaves the rotation (and, as a Node
  // worker does on disconnect, exits) instead of being starved silently.
  ipc::ChannelOwner::destroy(*w.process_->channel());
  worker_disconnect(w);
}

const std::map<std::string, Primary::ActHandler, std::less<>>& Primary::acts() {
  static const std::map<std::string, ActHandler, std::less<>> table = {
      {"online", &Primary::act_online},
      {"queryServer", &Primary::act_query_server},
      {"listening", &Primary::act_listening},
      {"exitedAfterDisconnect", &Primary::act_exited_after_disconnect},
      {"close", &Primary::act_close},
      {"acceptTurn", &Primary::act_accept_turn},
  };
  return table;
}

void Primary::on_internal(const std::shared_ptr<WorkerHandle>& w, const Json& raw,
                          ipc::ReceivedHandle* h) {
  if (debug_) std::fprintf(stderr, "[primary] <- %d %s%s\n", w->id_, raw.dump().c_str(), h ? " +fd" : "");
  if (&raw == &ipc::handle_ack_message()) return on_handle_reply(*w, true);  // every hand-off's ACK
  if (raw.is_object()) {
    if (auto cmd = raw.find("cmd"); cmd != raw.end() && cmd->is_string()) {
      const std::string& name = cmd->get_ref<const std::string&>();  // no Json made to compare
      if (name == "NODE_HANDLE_ACK") return on_handle_reply(*w, true);
      if (name == "NODE_HANDLE_NACK") return on_handle_reply(*w, false);
    }
  }
  const Json& msg = unwrap_handle_message(raw);
  if (!is_cluster_message(msg)) return;
  if (auto answer = newconn_answer_of(msg)) {  // off the fast path: --debug, another shape, a returned fd
    if (auto record = w->handoffs_.take(answer->ack)) {
      return finish_handoff(*w, *record, answer->accepted, true, h && !answer->accepted ? std::move(h->fd) : Fd{});
    }
  }
  if (messenger_.take_reply(msg, h, w->id_)) return;
  auto act = msg.find("act");
  if (act == msg.end() || !act->is_string()) return;  // e.g. a bogus ack: ignored
  auto handler = acts().find(act->get_ref<const std::string&>());
  if (handler != acts().end()) (this->*handler->second)(w, msg);
  // Unknown acts are ignored, as in Node.
}

void Primary::act_online(const std::shared_ptr<WorkerHandle>& w, const Json&) {
  w->state_ = WorkerHandle::State::online;
  w->online_.emit();
  online_.emit(*w);
}

void Primary::act_listening(const std::shared_ptr<WorkerHandle>& w, const Json& msg) {
  w->state_ = WorkerHandle::State::listening;
  Address a;
  if (auto it = msg.find("address"); it != msg.end() && it->is_string()) a.address = it->get<std::string>();
  if (auto it = msg.find("port"); it != msg.end() && it->is_number_integer()) a.port = it->get<int>();
  if (auto it = msg.find("addressType"); it != msg.end()) a.address_type = *it;
  w->listening_.emit(a);
  listening_.emit(*w, a);
}

void Primary::act_exited_after_disconnect(const std::shared_ptr<WorkerHandle>& w, const Json& msg) {
  w->exited_after_disconnect_ = true;
  send_to(*w, {{"ack", msg.contains("seq") ? msg["seq"] : Json()}});
}

void Primary::act_close(const std::shared_ptr<WorkerHandle>& w, const Json& msg) {
  auto k = msg.find("key");
  if (k == msg.end() || !k->is_string()) return;
  auto it = handles_.find(k->get<std::string>());
  if (it != handles_.end() && it->second->remove(w->id_, /*gone=*/false)) drop_handle(it);
}

void Primary::drop_handle(std::map<std::string, std::unique_ptr<ServerHandle>>::iterator it) {
  PrimaryStats gone;
  it->second->count(gone);
  retired_.handoffs.accepted += gone.handoffs.accepted;
  retired_.handoffs.refused += gone.handoffs.refused;
  retired_.handoffs.requeued += gone.handoffs.requeued;
  retired_.handoffs.dropped += gone.handoffs.dropped;
  retired_.handoffs.timed_out += gone.handoffs.timed_out;
  retired_.accept += gone.accept;
  handles_.erase(it);
}

HandOffSender Primary::newconn_sender(int worker, const std::string& key, uint64_t serial) {
  // Made once per worker and server; a hand-off then allocates nothing: its record goes in the
  // worker's table, its message into a reused buffer, its fd out with it in one sendmsg.
  auto message = std::make_shared<NewconnMessage>(key);  // encoded once: a hand-off writes its seq
  // The sender lives in a server handle of handles_, which goes before the Primary does.
  return [p = this, worker, message, serial](int conn, HandOffReply reply) {
    auto wit = p->workers_.find(worker);
    if (wit == p->workers_.end() || !wit->second->is_connected()) return HandOffSend::gone;
    WorkerHandle& w = *wit->second;
    int64_t seq = p->messenger_.next_seq();
    bool give = w.returns_refused_ && w.copies_to_keep_ == 0;
    if (w.copies_to_keep_ > 0) --w.copies_to_keep_;
    w.handoffs_.add({seq, reply, p->answered_at_ns_ ? p->answered_at_ns_ : uv_hrtime(), serial, give});
    std::string_view bytes = message->encode(seq);
    if (p->debug_) std::fprintf(stderr, "[primary] -> %d %.*s +fd\n", worker, static_cast<int>(bytes.size()), bytes.data());
    // The scheduler keeps `conn` at least until this returns (until the answer unless it is given
    // away), so the channel borrows it: it goes out as is, duplicated only if it has to wait in
    // the channel's queue.
    ipc::OutgoingHandle handle{ipc::HandleType::native, Fd{}, std::nullopt, conn};
    ipc::SendOptions options;
    options.pipelined = p->settings_.rr_window > 1;
    options.done_on_failure_only = true;
    options.failure_tag = p->handle_sent(w, {}, seq);
    w.process_->channel()->send_encoded(bytes, std::move(handle), std::move(options));
    return give ? HandOffSend::given : HandOffSend::sent;
  };
}

Result<ServerHandle*> Primary::handle_for(const ServerQuery& q) {
  if (auto it = handles_.find(q.key); it != handles_.end()) return it->second.get();
  ServerHandleContext ctx;
  ctx.loop = loop_;
  ctx.policy = policy_;
  ctx.handoff_timeout_ms = settings_.handoff_timeout_ms;
  ctx.rr_window = settings_.rr_window;
  ctx.reuseport_migrate_queues = settings_.reuseport_migrate_queues;
  ctx.reuseport_steering = settings_.reuseport_steering;
  ctx.pid_of = [this](int worker) -> std::optional<int> {
    auto it = workers_.find(worker);
    return it == workers_.end() ? std::nullopt : it->second->pid();
  };
  ctx.steering_changed = [this](const SteeringChange& change) {
    if (auto it = workers_.find(change.worker); it != workers_.end()) steering_.emit(*it->second, change);
  };
  ctx.steering_unavailable = [this](const Error& e) {
    if (std::exchange(steering_unavailable_reported_, true)) return;  // once: every key fails alike
    steering_unavailable_.emit(e);
  };
  uint64_t serial = ++handle_serial_;
  ctx.newconn = [this, key = q.key, serial](int worker) { return newconn_sender(worker, key, serial); };
  for (const HandleKind& kind : handle_kinds()) {
    if (!kind.serves(policy_, q)) continue;
    auto h = kind.open(ctx, q);
    if (!h.ok()) return h.error();  // the key is not stored: a retry binds again
    h.value()->serial = serial;
    return handles_.emplace(q.key, std::move(h.value())).first->second.get();
  }
  return Error::from_uv(UV_ENOTSUP, "listen");
}

void Primary::act_query_server(const std::shared_ptr<WorkerHandle>& w, const Json& msg) {
  // Node drops a query from a worker that is already going away: its listen never completes.
  if (w->exited_after_disconnect_.value_or(false)) return;
  Json ack = msg.contains("seq") ? msg["seq"] : Json();
  std::string key = server_key(msg);
  auto fail = [&](const Address& where, int errnum) {
    // Only this worker's listen fails (Node): the worker, its other servers and the cluster stay.
    send_to(*w, {{"errno", errnum}, {"key", key}, {"ack", ack}, {"data", nullptr}});
    listen_error_.emit(*w, where, Error::from_uv(errnum, "listen"));
  };
  auto query = parse_query(msg);
  if (!query.ok()) {
    Address where;
    if (auto it = msg.find("address"); it != msg.end() && it->is_string()) where.address = it->get<std::string>();
    if (auto it = msg.find("port"); it != msg.end() && it->is_number_integer()) where.port = it->get<int>();
    return fail(where, query.error().errnum);
  }
  auto handle = handle_for(*query);
  if (!handle.ok()) return fail(query->where, handle.error().errnum);
  ServerHandle& h = *handle.value();
  if (h.data.is_null() && msg.contains("data")) h.data = msg["data"];
  // Ours, not Node's: a C++ worker that gives refused connections back; confirmed in the reply.
  auto returns = msg.find("returnRefused");
  bool return_refused = returns != msg.end() && *returns == true;
  std::weak_ptr<WorkerHandle> ww = w;
  h.add(w->id_, [&](int errnum, Json fields, std::optional<ipc::OutgoingHandle> fd) {
    if (errnum != 0) {
      if (!h.has(w->id_)) {
        auto it = handles_.find(key);
        if (it != handles_.end() && it->second.get() == &h && h.remove(w->id_, true)) drop_handle(it);
      }
      return fail(query->where, errnum);
    }
    Json reply = {{"errno", fd ? Json(0) : Json(nullptr)}, {"key", key}, {"ack", ack}, {"data", h.data}};
    if (return_refused) {  // newconns are given away from now on (the reply leaves first)
      w->returns_refused_ = true;
      reply["returnRefused"] = true;
    }
    for (auto& [k, v] : fields.items()) reply[k] = v;
    send_to(*w, std::move(reply), {}, std::move(fd));
  });
}

// Ours (policy exclusive): a C++ worker told {acceptTurn: true} by its queryServer reply asks for
// the key's accept turn; the reply carries the turn's memfd, or only an errno (no such key, or the
// worker no longer in it): the worker then accepts without a turn.
void Primary::act_accept_turn(const std::shared_ptr<WorkerHandle>& w, const Json& msg) {
  Json ack = msg.contains("seq") ? msg["seq"] : Json();
  std::string key = msg.value("key", std::string());
  auto it = handles_.find(key);
  Result<Fd> page = it != handles_.end() ? it->second->accept_turn_for(w->id_) : Error::from_uv(UV_ENOENT, "acceptTurn");
  if (!page.ok()) {
    send_to(*w, {{"errno", page.error().errnum}, {"key", key}, {"ack", ack}});
    return;
  }
  send_to(*w, {{"errno", 0}, {"key", key}, {"ack", ack}}, {},
          ipc::OutgoingHandle{ipc::HandleType::native, std::move(page.value()), std::nullopt});
}

void Primary::remove_handles_for(WorkerHandle& w, bool gone) {
  for (auto it = handles_.begin(); it != handles_.end();) {
    auto next = std::next(it);
    if (it->second->remove(w.id_, gone)) drop_handle(it);
    it = next;
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
