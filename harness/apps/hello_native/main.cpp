// hello-native: the lab's C++ worker. Answers every HTTP/1.1 request with "hello world\n",
// keep-alive and pipelining handled by http_parser. Two layers:
//   * HttpServer: serves connections that arrive as accepted sockets (uvcluster::Fd);
//   * connection sources: cluster::Acceptor on our own listening fd (the accept policy one | drain
//     is explicit and EAGAINs are counted), or cluster::Worker (the primary's sockets).
// Modes: --port P [--reuseport] binds 127.0.0.1:P; --fd N serves an inherited listening fd;
// with NODE_UNIQUE_ID set (forked by `uvcluster run` or Node's cluster) --port P listens
// through the primary (cluster::Worker) and connections arrive as accepted Fds.
// --exclusive registers the listener with EPOLLEXCLUSIVE in a private epoll set that a thread
// waits on (libuv 1.44 has no such flag; see ExclusiveWaiter); --exclusive-nested lets the loop
// poll that set instead (which loses exclusivity; kept to measure it); --rotate K re-registers
// the listener every K accepts (nginx 1.21.6); --accept-turn-fd N (with --exclusive) accepts in
// turn with the other workers given the same inherited AcceptTurn memfd N, taking up to
// --turn-batch K (default 4) of the connections already queued per turn.
// Counters go to $UVC_LAB_STATS / $UVC_LAB_STATS_DIR on SIGTERM/SIGINT (then exit) and SIGUSR2.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cstdio>
#include <functional>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "lab_stats.hpp"
#include "uvcluster/cluster/acceptor.hpp"
#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/cluster/worker.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fd.hpp"

namespace {

using uvcluster::Error;
using uvcluster::Fd;
using uvcluster::Status;
using uvcluster::detail::UvHandle;

struct Stats {
  uint64_t connections = 0;  // connections served (accepted here or handed to us)
  uint64_t requests = 0;
  uint64_t seq = 0;  // bumped on every publish, so the runner can wait for a fresh snapshot
  // From the Acceptor (own socket) or the Worker (the primary's sockets) at publish time:
  uint64_t accept_calls = 0;
  uint64_t accept_eagain = 0;
  uint64_t wakeups = 0;  // listener readiness callbacks
  uint64_t accept_errors = 0;
};

constexpr char kKeepAlive[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";
constexpr char kClose[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
    "hello world\n";

class HttpServer;

// One client connection. Owned by HttpServer::conns_; freed from the close callback.
class Conn {
 public:
  Conn(HttpServer& server, uv_loop_t* loop, Fd fd);
  bool ok() const { return ok_; }
  void close();
  void finish();
  static int on_message_complete(http_parser* p);

 private:
  struct WriteReq {
    uv_write_t req{};
    std::string buf;
    Conn* conn = nullptr;
    bool close_after = false;
  };
  void on_read(ssize_t nread, const uv_buf_t* buf);
  void flush();

  HttpServer& server_;
  UvHandle<uv_tcp_t> tcp_;
  http_parser parser_{};
  std::string out_;
  bool close_after_ = false;
  bool closing_ = false;
  bool ok_ = false;
  char rbuf_[16384];
};

class HttpServer {
 public:
  HttpServer(uv_loop_t* loop, Stats& stats) : loop_(loop), stats_(stats) {
    http_parser_settings_init(&settings_);
    settings_.on_message_complete = [](http_parser* p) { return Conn::on_message_complete(p); };
  }
  void add(Fd fd) {
    auto c = std::make_unique<Conn>(*this, loop_, std::move(fd));
    if (!c->ok()) return;
    ++stats_.connections;
    Conn* raw = c.get();
    conns_.emplace(raw, std::move(c));
  }
  void forget(Conn* c) { conns_.erase(c); }
  void close_all() {
    // Copy the keys: close() only starts closing; erasure happens in the close callback.
    std::vector<Conn*> all;
    for (auto& [k, v] : conns_) all.push_back(k);
    for (Conn* c : all) c->close();
  }
  const http_parser_settings& settings() const { return settings_; }
  Stats& stats() { return stats_; }

 private:
  uv_loop_t* loop_;
  Stats& stats_;
  http_parser_settings settings_{};
  std::unordered_map<Conn*, std::unique_ptr<Conn>> conns_;
};

Conn::Conn(HttpServer& server, uv_loop_t* loop, Fd fd) : server_(server) {
  if (uv_tcp_init(loop, tcp_.get()) != 0) return;
  tcp_.mark_initialized();
  if (uv_tcp_open(tcp_.get(), fd.get()) != 0) return;
  fd.release();  // the handle owns it now
  uv_tcp_nodelay(tcp_.get(), 1);
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
  tcp_->data = this;
  int r = uv_read_start(
      tcp_.stream(),
      [](uv_handle_t* h, size_t, uv_buf_t* b) {
        auto* c = static_cast<Conn*>(h->data);
        *b = uv_buf_init(c->rbuf_, sizeof c->rbuf_);
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) { static_cast<Conn*>(s->data)->on_read(n, b); });
  ok_ = (r == 0);
}

int Conn::on_message_complete(http_parser* p) {
  auto* c = static_cast<Conn*>(p->data);
  ++c->server_.stats().requests;
  if (http_should_keep_alive(p)) {
    c->out_.append(kKeepAlive, sizeof kKeepAlive - 1);
  } else {
    c->out_.append(kClose, sizeof kClose - 1);
    c->close_after_ = true;
    return 1;  // stop parsing: nothing after a closing request is answered
  }
  return 0;
}

void Conn::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (nread < 0) return close();
  if (nread == 0 || close_after_) return;
  size_t used = http_parser_execute(&parser_, &server_.settings(), buf->base, static_cast<size_t>(nread));
  bool parse_error = used != static_cast<size_t>(nread) && !close_after_;
  flush();
  if (parse_error) close();
}

void Conn::flush() {
  if (out_.empty()) {
    if (close_after_) close();
    return;
  }
  auto w = std::make_unique<WriteReq>();
  w->buf.swap(out_);
  w->conn = this;
  w->close_after = close_after_;
  w->req.data = w.get();
  uv_buf_t b = uv_buf_init(w->buf.data(), static_cast<unsigned>(w->buf.size()));
  if (uv_write(&w->req, tcp_.stream(), &b, 1, [](uv_write_t* req, int status) {
        std::unique_ptr<WriteReq> owned(static_cast<WriteReq*>(req->data));
        if (status == UV_ECANCELED) return;  // the connection is closing already
        if (status < 0) owned->conn->close();
        else if (owned->close_after) owned->conn->finish();
      }) == 0) {
    w.release();  // owned by libuv until the callback
  } else {
    close();
  }
}

// The answer is out and the connection ends here: send our FIN now, from this process. Under
// `uvcluster run --policy rr` the primary may still hold its copy of the socket until our answer
// to the newconn reaches it; a plain close would then leave the FIN (and the socket's teardown)
// to the primary's close. Node's HTTP server also ends with a shutdown (socket.end()).
void Conn::finish() {
  uv_os_fd_t fd = -1;
  if (!closing_ && uv_fileno(tcp_.base(), &fd) == 0) ::shutdown(fd, SHUT_WR);
  close();
}

void Conn::close() {
  if (closing_) return;
  closing_ = true;
  HttpServer* s = &server_;
  tcp_.close([s, self = this] { s->forget(self); });
}

namespace cl = uvcluster::cluster;
// Connection sources: with --port/--fd our own listening socket, accepted on by the cluster
// library's Acceptor (policy one|drain; --exclusive: an ExclusiveWaiter thread blocked on a
// private EPOLLEXCLUSIVE set, because the kernel passes over a set that the loop only polls
// through its own epoll; --exclusive-nested keeps that broken nesting on purpose, to demonstrate
// the herd it leaves). Out of fds, the Acceptor pauses instead of spinning.

[[noreturn]] void usage_error(const char* msg) {
  std::fprintf(stderr, "hello-native: %s\n", msg);
  std::fprintf(stderr,
               "usage: hello-native (--port P [--reuseport] | --fd N) [--accept one|drain] "
               "[--exclusive [--accept-turn-fd N [--turn-batch K]] | --exclusive-nested] [--rotate K]\n");
  std::exit(2);
}

nlohmann::json stats_json(const Stats& s, const std::string& policy, const std::string& error) {
  nlohmann::json j{{"pid", ::getpid()},          {"app", "native"},
                   {"connections", s.connections}, {"requests", s.requests},
                   {"accept_calls", s.accept_calls}, {"accept_eagain", s.accept_eagain},
                   {"wakeups", s.wakeups},         {"accept_policy", policy},
                   {"accept_errors", s.accept_errors}, {"seq", s.seq}};
  if (!error.empty()) j["error"] = error;
  return j;
}

}  // namespace

// Stop on SIGTERM/SIGINT (or when the cluster primary disconnects us): publish the counters,
// stop taking connections, close the ones we have; the loop then ends by itself.
struct App {
  Stats stats;
  std::string policy;
  HttpServer* server = nullptr;
  std::unique_ptr<cl::Acceptor> acceptor;        // own listening socket (--port/--fd)
  uvcluster::cluster::Worker* worker = nullptr;  // cluster-worker mode
  UvHandle<uv_signal_t> signals[3];
  bool stopping = false;

  void publish(const std::string& error = "") {
    ++stats.seq;
    // Under the cluster library its worker accepts for us and counts the herd; else our acceptor.
    if (worker || acceptor) {
      const uvcluster::cluster::AcceptorCounters& k = worker ? worker->counters() : acceptor->counters();
      stats.accept_eagain = k.accept_eagain;
      stats.accept_calls = k.accept_calls;
      stats.wakeups = k.wakeups;
      stats.accept_errors = k.errors_total();
    }
    uvcluster::lab::publish(stats_json(stats, policy, error));
  }
  void stop() {
    if (stopping) return;
    stopping = true;
    publish();
    acceptor.reset();  // joins an exclusive waiter thread
    server->close_all();
    if (worker && worker->connected()) worker->disconnect();
    for (auto& h : signals) h.close();
  }
  // Without them the app could not be stopped cleanly: a failure ends the app at start.
  void watch_signals(uv_loop_t* loop) {
    int sigs[3] = {SIGTERM, SIGINT, SIGUSR2};
    for (int i = 0; i < 3; ++i) {
      if (int rc = uv_signal_init(loop, signals[i].get()); rc != 0) {
        std::fprintf(stderr, "hello-native: uv_signal_init: %s\n", uv_err_name(rc));
        std::exit(2);
      }
      signals[i].mark_initialized();
      signals[i]->data = this;
      uv_signal_start(signals[i].get(), [](uv_signal_t* h, int sig) {
        auto* app = static_cast<App*>(h->data);
        if (sig == SIGUSR2) app->publish();
        else app->stop();
      }, sigs[i]);
    }
  }
};

int serve_cluster_worker(int port, cl::AcceptPolicy policy, bool exclusive, App& app) {
  uv_loop_t* loop = uv_default_loop();
  HttpServer server(loop, app.stats);
  app.server = &server;
  int rc = 0;
  {
    auto w = cl::Worker::start(loop);
    if (!w) {
      std::fprintf(stderr, "hello-native: cluster worker: %s\n", w.error().message.c_str());
      return 1;
    }
    cl::Worker& worker = *w.value();
    app.worker = &worker;
    cl::ListenOptions lo;
    lo.host = "127.0.0.1";
    lo.port = port;
    lo.accept_policy = policy;
    if (exclusive) lo.exclusive = true;  // otherwise the primary's policy decides
    worker.listen(
        lo,
        [&](uvcluster::Result<cl::ListenAddress> r) {
          if (!r.ok()) {
            std::fprintf(stderr, "hello-native: listen 127.0.0.1:%d: %s\n", port, r.error().code.c_str());
            app.publish(r.error().code);
            rc = 3;
            app.stopping = true;
            for (auto& h : app.signals) h.close();
            worker.destroy();
            return;
          }
          uvcluster::lab::mark_ready({{"pid", ::getpid()}, {"port", port}, {"mode", cl::to_string(r.value().mode)}});
        },
        [&](Fd conn) { server.add(std::move(conn)); });
    worker.on_disconnect([&] { app.stop(); });
    app.watch_signals(loop);
    uv_run(loop, UV_RUN_DEFAULT);
    app.worker = nullptr;
  }
  uv_run(loop, UV_RUN_NOWAIT);  // close callbacks of what the Worker owned
  uv_loop_close(loop);
  return rc;
}

int main(int argc, char** argv) {
  int port = -1, inherited = -1, rotate = 0, turn_fd = -1, turn_batch = cl::AcceptorOptions{}.turn_batch;
  bool reuseport = false, exclusive = false, nested = false;
  std::string policy_name = "one";
  // A Node cluster primary runs `execPath exec args` with execPath = exec = this binary.
  int first = (argc > 1 && std::strcmp(argv[1], argv[0]) == 0) ? 2 : 1;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--port") port = std::atoi(value().c_str());
    else if (a == "--fd") inherited = std::atoi(value().c_str());
    else if (a == "--reuseport") reuseport = true;
    else if (a == "--exclusive") exclusive = true;
    else if (a == "--exclusive-nested") exclusive = nested = true;
    else if (a == "--rotate") rotate = std::atoi(value().c_str());
    else if (a == "--accept-turn-fd") turn_fd = std::atoi(value().c_str());
    else if (a == "--turn-batch") turn_batch = std::atoi(value().c_str());
    else if (a == "--accept") policy_name = value();
    else usage_error(("unknown option " + a).c_str());
  }
  if (policy_name != "one" && policy_name != "drain") usage_error("--accept must be one or drain");
  if (turn_fd >= 0 && (!exclusive || nested)) usage_error("--accept-turn-fd needs --exclusive");
  if (turn_batch < 1) usage_error("--turn-batch must be 1 or more");
  cl::AcceptPolicy policy = policy_name == "one" ? cl::AcceptPolicy::one : cl::AcceptPolicy::drain;
  App app;
  app.policy = policy_name;
  // Forked by a cluster primary (uvcluster run, or Node's cluster): listen through it.
  if (uvcluster::cluster::is_worker()) {
    if (port < 0) usage_error("a cluster worker needs --port");
    return serve_cluster_worker(port, policy, exclusive, app);
  }
  if ((port < 0) == (inherited < 0)) usage_error("give exactly one of --port or --fd");

  Fd lfd;
  if (inherited >= 0) {
    lfd = Fd(inherited);
    uvcluster::cluster::make_nonblocking_cloexec(lfd.get());
  } else {
    auto bound = uvcluster::cluster::bind_tcp({.address = "127.0.0.1", .port = port, .reuseport = reuseport});
    Status listening = bound.ok() ? uvcluster::cluster::listen_fd(bound->get(), 511) : Status(bound.error());
    if (!listening.ok()) {
      const Error& e = listening.error();
      std::string err = e.code == "EADDRINUSE" ? e.code : std::strerror(-e.errnum);
      std::fprintf(stderr, "hello-native: listen 127.0.0.1:%d: %s\n", port, err.c_str());
      app.publish(err);
      return 3;
    }
    lfd = std::move(bound.value());
  }

  uv_loop_t* loop = uv_default_loop();
  HttpServer server(loop, app.stats);
  cl::AcceptorOptions ao;
  ao.policy = policy;
  ao.wait = !exclusive ? cl::AcceptWait::poll : nested ? cl::AcceptWait::exclusive_nested : cl::AcceptWait::exclusive;
  ao.rotate = rotate;
  ao.turn_batch = turn_batch;
  if (turn_fd >= 0) {
    Fd inherited_turn(turn_fd);  // mapped below; the fd itself is not needed after that
    auto turn = cl::AcceptTurn::attach(inherited_turn.get());
    if (!turn.ok()) {
      std::fprintf(stderr, "hello-native: --accept-turn-fd %d: %s\n", turn_fd, turn.error().message.c_str());
      return 1;
    }
    ao.turn = std::move(turn.value());
  }
  ao.max_batch = 1 << 20;  // drain means until EAGAIN here, as Debian's libuv 1.44 does
  auto acceptor = cl::Acceptor::start(loop, lfd.get(), ao, [&server](Fd conn) { server.add(std::move(conn)); });
  if (!acceptor.ok()) {
    std::fprintf(stderr, "hello-native: cannot watch the listening socket: %s\n", acceptor.error().message.c_str());
    return 1;
  }
  app.server = &server;
  app.acceptor = std::move(acceptor.value());
  app.watch_signals(loop);
  uvcluster::lab::mark_ready({{"pid", ::getpid()}, {"port", port}});
  uv_run(loop, UV_RUN_DEFAULT);
  app.acceptor.reset();
  uv_run(loop, UV_RUN_NOWAIT);  // its close callbacks
  uv_loop_close(loop);
  return 0;
}
