#include "uvcluster/cluster/worker.hpp"

#include <array>
#include <cerrno>
#include <cstdlib>

#include "uvcluster/cluster/sockets.hpp"

namespace uvcluster::cluster {

bool is_worker() { return std::getenv("NODE_UNIQUE_ID") != nullptr; }
bool is_primary() { return !is_worker(); }

const char* to_string(ListenMode m) {
  switch (m) {
    case ListenMode::rr: return "rr";
    case ListenMode::shared: return "shared";
    case ListenMode::exclusive: return "exclusive";
  }
  return "rr";
}

const char* to_string(Worker::State s) {
  switch (s) {
    case Worker::State::online: return "online";
    case Worker::State::listening: return "listening";
    case Worker::State::disconnecting: return "disconnecting";
    case Worker::State::destroying: return "destroying";
  }
  return "online";
}

namespace {

struct Server {
  int id = 0;
  ListenOptions options;
  std::string key;  // set once the primary answered
  std::optional<NewconnMatcher> newconns;  // for `key`, once set
  bool rr = false;
  bool closed = false;
  Fd fd;       // shared socket (not rr)
  std::unique_ptr<Acceptor> acceptor;  // shared: accepts on `fd` (declared after it: goes first)
  std::function<void(Fd)> on_connection;
};

// A listen() between its queryServer and its `listening`: what the callbacks need.
struct PendingListen {
  Json query;
  std::function<void(Result<ListenAddress>)> on_listening;

  // Node's bind error for this listen (code "EADDRINUSE", syscall "bind").
  void fail(const Server& s, int errnum) const {
    Error e = Error::from_uv(errnum, "bind");
    e.message = "bind " + e.code + " " + (s.options.host ? *s.options.host : "null") + ":" +
                std::to_string(s.options.port);
    on_listening(e);
  }
};

}  // namespace

struct Worker::Impl : std::enable_shared_from_this<Impl> {
  uv_loop_t* loop = nullptr;
  std::unique_ptr<ipc::Channel> channel;
  int id = 0;
  Worker::State state = Worker::State::online;
  bool exited_after_disconnect = false;
  bool exclusive_default = false;
  Messenger messenger;
  std::map<std::string, int> index_counters;
  std::map<int, std::unique_ptr<Server>> servers;
  int next_server = 1;
  uint64_t rr_accepted = 0;
  WorkerCounters counters;        // rr hand-offs; accept counters are summed in on demand
  AcceptorCounters closed_servers;  // accept counters of servers already closed
  detail::Event<const Json&> message;
  detail::Event<> disconnected;
  // The primary confirmed `returnRefused` (ours): it closed its copy of each connection it sent,
  // so a refused one goes back with the answer for another worker.
  bool return_refused = false;

  bool send(Json payload, Messenger::Reply cb = {}) {
    if (!channel || !channel->connected()) return false;
    channel->send(messenger.wrap(std::move(payload), std::move(cb)));
    return true;
  }

  Server* server_by_key(std::string_view key) {
    for (auto& [id, s] : servers)
      if (!s->closed && s->rr && s->key == key) return s.get();
    return nullptr;
  }

  void on_internal(const Json& raw, ipc::ReceivedHandle* h) {
    const Json& msg = unwrap_handle_message(raw);
    if (!is_cluster_message(msg)) return;
    if (messenger.take_reply(msg, h)) return;
    auto act = msg.find("act");
    if (act == msg.end() || !act->is_string()) return;
    if (*act == "newconn") {
      Server* s = msg.contains("key") && msg["key"].is_string()
                      ? server_by_key(msg["key"].get_ref<const std::string&>())
                      : nullptr;
      bool accepted = s && h && h->fd.valid();
      Json ack = msg.contains("seq") ? msg["seq"] : Json();
      if (accepted || !give_back(ack, h)) send({{"ack", ack}, {"accepted", accepted}});
      take_newconn(s, h, accepted);
    } else if (*act == "disconnect") {
      do_disconnect(true);
    }
  }

  // The hand-off's fast path (the channel's handle filter): a newconn recognised on its bytes is
  // answered and delivered as on_internal does, without a JSON value; anything else (another
  // message, a key or seq written otherwise) returns false and takes on_internal's way.
  bool on_newconn_frame(ipc::HandleFrame& frame) {
    Server* s = nullptr;
    std::optional<std::string_view> seq;
    for (auto& [id, server] : servers) {
      if (server->closed || !server->rr || !server->newconns) continue;
      if ((seq = server->newconns->match(frame.message_json()))) {
        s = server.get();
        break;
      }
    }
    if (!seq) return false;  // another message, or a key of no server of ours
    ipc::ReceivedHandle* h = frame.accept();
    if (!h) return true;  // no fd came: NACKed, nothing delivered (the general path's rule)
    if (channel && channel->connected()) {
      std::array<char, kNewconnAnswerMax> answer;
      channel->send_encoded(encode_newconn_answer(answer, *seq, true, messenger.next_seq()));
    }
    take_newconn(s, h, true);
    return true;
  }

  // A refusal under returnRefused: {ack, accepted: false} with the connection attached (a
  // net.Native frame). False when there is nothing to give back: the plain answer goes instead.
  bool give_back(const Json& ack, ipc::ReceivedHandle* h) {
    if (!return_refused || !h || !h->fd.valid() || !channel || !channel->connected()) return false;
    channel->send(messenger.wrap({{"ack", ack}, {"accepted", false}}),
                  ipc::OutgoingHandle{ipc::HandleType::native, std::move(h->fd), std::nullopt});
    return true;
  }

  // After the answer: the connection goes to its server, or the refusal is counted (the channel
  // closes an fd we did not take). As it arrived: close-on-exec (received so), non-blocking (the
  // primary accepted it so; the file status is shared). No per-connection fcntl/ioctl.
  void take_newconn(Server* s, ipc::ReceivedHandle* h, bool accepted) {
    if (!accepted) {
      ++counters.refused;
      return;
    }
    ++rr_accepted;
    s->on_connection(std::move(h->fd));
  }

  // Stops accepting (the acceptor goes before the fd it watches); its counters are kept.
  void stop_accepting(Server& s) {
    s.closed = true;
    if (s.acceptor) closed_servers += s.acceptor->counters();
    s.acceptor.reset();
    s.fd.reset();
  }

  void close_server(Server& s) {
    if (s.closed) return;
    stop_accepting(s);
    if (!s.key.empty()) send({{"act", "close"}, {"key", s.key}});
  }

  const WorkerCounters& snapshot() {
    AcceptorCounters sum = closed_servers;
    for (auto& [id, s] : servers)
      if (s->acceptor) sum += s->acceptor->counters();
    // rr connections are counted as they arrive; shared ones come from the acceptors.
    static_cast<AcceptorCounters&>(counters) = sum;
    counters.accepted += rr_accepted;
    return counters;
  }

  void close_all() {
    for (auto& [id, s] : servers) close_server(*s);
  }

  // Starts the Acceptor on a shared socket (`turn`: accept in turn with the other workers), then
  // completes the listen.
  void accept_shared(Server& s, ListenAddress la, std::shared_ptr<AcceptTurn> turn, const PendingListen& pending) {
    AcceptorOptions ao;
    ao.policy = s.options.accept_policy;
    ao.wait = la.mode == ListenMode::exclusive ? AcceptWait::exclusive : AcceptWait::poll;
    ao.rotate = s.options.exclusive_rotate;
    ao.max_batch = 1024;
    ao.turn = std::move(turn);
    la.accept_turn = ao.turn != nullptr;
    Server* sp = &s;  // a Server outlives its acceptor (stop_accepting / ~Worker reset it first)
    auto a = Acceptor::start(loop, s.fd.get(), ao, [sp](Fd conn) { sp->on_connection(std::move(conn)); });
    if (!a.ok()) {
      close_server(s);
      return pending.fail(s, a.error().errnum);
    }
    s.acceptor = std::move(a.value());
    complete_listen(s, la, pending);
  }

  // net.js checkBindError, then {act:"listening"} to the primary and the caller's callback.
  void complete_listen(Server& s, const ListenAddress& la, const PendingListen& pending) {
    // A fixed port must be the one we got.
    if (s.options.port > 0 && la.port != s.options.port) {
      close_server(s);
      return pending.fail(s, UV_EADDRINUSE);
    }
    Json listening = pending.query;
    listening["act"] = "listening";
    listening["port"] = la.port;
    send(listening);
    state = Worker::State::listening;
    pending.on_listening(la);
  }

  // child.js _disconnect: servers closed first, then (worker-initiated) the flag is recorded in
  // the primary and only after its ack is the channel disconnected.
  void do_disconnect(bool primary_initiated) {
    exited_after_disconnect = true;
    close_all();
    if (!channel || !channel->connected()) return;
    if (primary_initiated) {
      channel->disconnect();
      return;
    }
    std::weak_ptr<Impl> wi = weak_from_this();
    bool sent = send({{"act", "exitedAfterDisconnect"}}, [wi](const Json&, ipc::ReceivedHandle*) {
      if (auto i = wi.lock(); i && i->channel && i->channel->connected()) i->channel->disconnect();
    });
    if (!sent) channel->disconnect();
  }

};

Worker::Worker(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Worker::~Worker() {
  if (impl_) {
    impl_->servers.clear();  // each acceptor goes before the fd it watches
    impl_->channel.reset();
  }
}

Result<std::unique_ptr<Worker>> Worker::start(uv_loop_t* loop) {
  const char* uid = std::getenv("NODE_UNIQUE_ID");
  if (!uid) return Error::make("ERR_CLUSTER_NOT_WORKER", "NODE_UNIQUE_ID is not set");
  auto impl = std::make_shared<Impl>();
  impl->loop = loop;
  impl->id = std::atoi(uid);
  ::unsetenv("NODE_UNIQUE_ID");  // Node deletes it after _setupWorker (test-cluster-basic.js)
  if (const char* p = std::getenv("UVCLUSTER_SCHED_POLICY"))
    impl->exclusive_default = std::string(p) == "exclusive";
  auto ch = ipc::parent_channel(loop);
  if (!ch.ok()) return ch.error();
  impl->channel = std::move(ch.value());
  std::weak_ptr<Impl> wi = impl;
  impl->channel->on_internal_message([wi](const Json& m, ipc::ReceivedHandle* h) {
    if (auto i = wi.lock()) i->on_internal(m, h);
  });
  impl->channel->set_handle_filter([wi](ipc::HandleFrame& frame) {
    auto i = wi.lock();
    return i && i->on_newconn_frame(frame);
  });
  impl->channel->on_message([wi](const Json& m, ipc::ReceivedHandle*) {
    if (auto i = wi.lock()) i->message.emit(m);
  });
  impl->channel->on_disconnect([wi] {
    auto i = wi.lock();
    if (!i) return;
    // Primary gone or disconnect finished: nothing more can be handed to us.
    for (auto& [id, s] : i->servers) i->stop_accepting(*s);
    i->disconnected.emit();
  });
  impl->send({{"act", "online"}});
  return std::make_unique<Worker>(std::move(impl));
}

int Worker::id() const { return impl_->id; }
Worker::State Worker::state() const { return impl_->state; }
bool Worker::exited_after_disconnect() const { return impl_->exited_after_disconnect; }
bool Worker::connected() const { return impl_->channel && impl_->channel->connected(); }
const WorkerCounters& Worker::counters() const { return impl_->snapshot(); }
ipc::Channel& Worker::channel() { return *impl_->channel; }
bool Worker::send(const Json& message) { return impl_->channel && impl_->channel->send(message); }
void Worker::on_message(std::function<void(const Json&)> fn) { impl_->message.add(std::move(fn)); }
void Worker::on_disconnect(std::function<void()> fn) { impl_->disconnected.add(std::move(fn)); }

void Worker::close_server(int server_id) {
  auto it = impl_->servers.find(server_id);
  if (it != impl_->servers.end()) impl_->close_server(*it->second);
}

void Worker::disconnect() {
  if (impl_->state != State::disconnecting && impl_->state != State::destroying)
    impl_->state = State::disconnecting;
  impl_->do_disconnect(false);
}

void Worker::destroy() {
  impl_->state = State::destroying;
  impl_->do_disconnect(false);
}

int Worker::listen(ListenOptions options, std::function<void(Result<ListenAddress>)> on_listening,
                   std::function<void(Fd conn)> on_connection) {
  auto impl = impl_;
  int sid = impl->next_server++;
  auto server = std::make_unique<Server>();
  server->id = sid;
  server->options = options;
  server->on_connection = std::move(on_connection);
  impl->servers[sid] = std::move(server);

  int address_type = options.host && options.host->find(':') != std::string::npos ? 6 : 4;
  Json address = options.host ? Json(*options.host) : Json(nullptr);
  // Node's per-worker index for the same [address, port, addressType, fd] tuple.
  std::string tuple = js_string(&address) + ":" + std::to_string(options.port) + ":" +
                      std::to_string(address_type) + ":undefined";
  int index = impl->index_counters[tuple]++;
  // returnRefused (ours; Node's primary ignores it): we can give a refused connection back.
  Json query = {{"act", "queryServer"}, {"index", index},      {"data", nullptr},
                {"address", address},   {"port", options.port}, {"addressType", address_type},
                {"backlog", options.backlog}, {"returnRefused", true}};

  auto pending = std::make_shared<PendingListen>(PendingListen{query, std::move(on_listening)});
  std::weak_ptr<Impl> wi = impl;
  bool sent = impl->send(query, [wi, sid, pending](const Json& reply, ipc::ReceivedHandle* h) {
    auto i = wi.lock();
    if (!i) return;
    // Even for a server closed meanwhile: the primary gives this worker its connections from now on.
    if (auto confirmed = reply.find("returnRefused"); confirmed != reply.end() && *confirmed == true) {
      i->return_refused = true;
    }
    auto it = i->servers.find(sid);
    if (it == i->servers.end() || it->second->closed) return;  // closed meanwhile: stale reply
    Server& s = *it->second;
    s.key = reply.value("key", std::string());
    s.newconns.emplace(s.key);
    ListenAddress la;
    la.address_type = pending->query["addressType"];
    if (!(h && h->fd.valid())) {
      Json err = reply.value("errno", Json());
      if (err.is_number_integer() && err.get<int>() != 0) {
        s.closed = true;
        s.key.clear();  // the primary dropped the key; nothing to close there
        return pending->fail(s, err.get<int>());
      }
      s.rr = true;
      la.mode = ListenMode::rr;
      Json sn = reply.value("sockname", Json());
      if (sn.is_object()) {
        la.address = sn.value("address", std::string());
        la.port = sn.value("port", 0);
      }
      return i->complete_listen(s, la, *pending);
    }
    // Shared handle: we listen and accept on it ourselves.
    s.fd = std::move(h->fd);
    make_nonblocking_cloexec(s.fd.get());
    if (!is_listening(s.fd.get())) {
      if (auto st = listen_fd(s.fd.get(), s.options.backlog); !st.ok()) {
        i->close_server(s);
        return pending->fail(s, st.error().errnum);
      }
    }
    auto name = local_address(s.fd.get());
    if (!name.ok()) {
      i->close_server(s);
      return pending->fail(s, name.error().errnum);
    }
    la.address = name->address;
    la.port = name->port;
    bool exclusive = s.options.exclusive.value_or(i->exclusive_default);
    la.mode = exclusive ? ListenMode::exclusive : ListenMode::shared;
    auto offered = reply.find("acceptTurn");
    if (exclusive && s.options.accept_turn && offered != reply.end() && *offered == true) {
      // The primary shares an accept turn among the workers on this socket: ask for its page
      // before accepting. Without it (an errno reply) we accept with rotation only.
      bool asked = i->send({{"act", "acceptTurn"}, {"key", s.key}}, [wi, sid, la, pending](const Json&, ipc::ReceivedHandle* th) {
        auto i = wi.lock();
        if (!i) return;
        auto it = i->servers.find(sid);
        if (it == i->servers.end() || it->second->closed) return;
        std::shared_ptr<AcceptTurn> turn;
        if (th && th->fd.valid()) {
          auto attached = AcceptTurn::attach(th->fd.get());  // the mapping stays; the fd closes
          if (attached.ok()) turn = std::move(attached.value());
        }
        i->accept_shared(*it->second, la, std::move(turn), *pending);
      });
      if (asked) return;
    }
    i->accept_shared(s, la, nullptr, *pending);
  });
  if (!sent) {
    impl->servers[sid]->closed = true;
    Error e = Error::make("ERR_IPC_CHANNEL_CLOSED", "Channel closed");
    pending->on_listening(e);
  }
  return sid;
}

}  // namespace uvcluster::cluster
