// A C++ cluster worker (cluster::Worker): listen(PORT[, HOST]) and answer every HTTP request with
// "worker <id> <pid>\n" and Connection: close. argv: port [host] [--accept one|drain]
// [--exclusive] [--rotate N] [--nofile N] (RLIMIT_NOFILE's soft limit, set once the channel is
// open: the fault tests run a worker out of fds with it). On exit it prints its counters to stderr as one JSON line (for the lab's herd
// metric). Runs under a C++ or a Node primary.
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "uvcluster/cluster/worker.hpp"
#include "uvcluster/detail/uv_handle.hpp"

using namespace uvcluster;

namespace {

struct Conn {
  Fd fd;
  detail::UvHandle<uv_poll_t> poll;
  std::string buf;
};

std::map<int, std::unique_ptr<Conn>> conns;
std::string response;

void on_readable(uv_poll_t* h, int status, int) {
  auto* c = static_cast<Conn*>(h->data);
  int key = c->fd.get();
  char tmp[4096];
  bool done = status < 0;
  while (!done) {
    ssize_t n = ::read(c->fd.get(), tmp, sizeof tmp);
    if (n > 0) {
      c->buf.append(tmp, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    done = true;  // EOF or error
  }
  if (!done && c->buf.find("\r\n\r\n") != std::string::npos) {
    // The response is tiny: it fits the socket buffer of a fresh connection in one write.
    (void)::write(c->fd.get(), response.data(), response.size());
    done = true;
  }
  if (done) conns.erase(key);  // closes the poll handle and the fd
}

}  // namespace

int main(int argc, char** argv) {
  cluster::ListenOptions opts;
  std::vector<std::string> positional;
  int nofile = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--accept" && i + 1 < argc) {
      opts.accept_policy = std::string(argv[++i]) == "drain" ? cluster::AcceptPolicy::drain : cluster::AcceptPolicy::one;
    } else if (a == "--exclusive") {
      opts.exclusive = true;
    } else if (a == "--rotate" && i + 1 < argc) {
      opts.exclusive_rotate = std::atoi(argv[++i]);
    } else if (a == "--nofile" && i + 1 < argc) {
      nofile = std::atoi(argv[++i]);
    } else {
      positional.push_back(a);
    }
  }
  // A Node primary runs `execPath <exec> args`: with execPath = exec = this binary, drop the copy.
  if (!positional.empty() && positional[0] == argv[0]) positional.erase(positional.begin());
  if (positional.size() > 0) opts.port = std::atoi(positional[0].c_str());
  if (positional.size() > 1) opts.host = positional[1];
  if (!cluster::is_worker()) {
    std::fprintf(stderr, "cluster_http_worker: not a cluster worker (NODE_UNIQUE_ID unset)\n");
    return 2;
  }
  // Kept for the "garbage" message: raw bytes on the channel, as a faulty worker would write them.
  const char* channel_fd = std::getenv("NODE_CHANNEL_FD");
  int raw_channel = channel_fd ? std::atoi(channel_fd) : -1;
  uv_loop_t loop;
  if (int init = uv_loop_init(&loop); init != 0) {
    std::fprintf(stderr, "cluster_http_worker: uv_loop_init: %s\n", uv_err_name(init));
    return 2;
  }
  int rc = 0;
  {
    auto w = cluster::Worker::start(&loop);
    if (!w.ok()) {
      std::fprintf(stderr, "cluster_http_worker: %s\n", w.error().message.c_str());
      return 2;
    }
    auto& worker = *w.value();
    if (nofile > 0) {
      rlimit lim{};
      ::getrlimit(RLIMIT_NOFILE, &lim);
      lim.rlim_cur = static_cast<rlim_t>(nofile);
      ::setrlimit(RLIMIT_NOFILE, &lim);
    }
    std::string listen_mode;  // "rr" | "shared" | "exclusive": which accept path the library chose
    bool accept_turn = false;  // exclusive: accepting in turn with the other workers
    std::string body = "worker " + std::to_string(worker.id()) + " " + std::to_string(::getpid()) + "\n";
    response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body;
    worker.listen(
        opts,
        [&](Result<cluster::ListenAddress> r) {
          if (!r.ok()) {
            std::fprintf(stderr, "worker %d: %s\n", worker.id(), r.error().code.c_str());
            rc = 3;
            worker.destroy();
            return;
          }
          listen_mode = cluster::to_string(r->mode);
          accept_turn = r->accept_turn;
        },
        [&](Fd conn) {
          auto c = std::make_unique<Conn>();
          c->fd = std::move(conn);
          if (uv_poll_init(&loop, c->poll.get(), c->fd.get()) != 0) return;
          c->poll.mark_initialized();
          c->poll->data = c.get();
          uv_poll_start(c->poll.get(), UV_READABLE | UV_DISCONNECT, on_readable);
          int key = c->fd.get();
          conns[key] = std::move(c);
        });
    worker.on_message([&](const nlohmann::json& m) {
      if (m == "disconnect") worker.disconnect();
      if (m == "crash") std::abort();
      if (m == "garbage") {
        // 7 bytes without a newline: they swallow the next frame (here a user message) into one
        // line that is not JSON.
        (void)!::write(raw_channel, "garbage", 7);
        worker.send("after garbage");
      }
      if (m == "counters") {  // the herd test reads them while the worker is still alive
        auto& k = worker.counters();
        nlohmann::json errors = nlohmann::json::object();
        for (auto& [err, n] : k.errors) errors[std::to_string(err)] = n;
        worker.send({{"counters", {{"accepted", k.accepted}, {"accept_eagain", k.accept_eagain},
                                   {"empty_wakeups", k.empty_wakeups}, {"rotations", k.rotations},
                                   {"wakeups", k.wakeups}, {"pauses", k.pauses}, {"resumes", k.resumes},
                                   {"refused", k.refused}, {"open_connections", conns.size()},
                                   {"accept_errors", errors}, {"mode", listen_mode},
                                   {"accept_turn", accept_turn}}}});
      }
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    auto& k = worker.counters();
    std::fprintf(stderr, "{\"worker\":%d,\"pid\":%d,\"accepted\":%llu,\"accept_eagain\":%llu,\"empty_wakeups\":%llu,\"rotations\":%llu}\n",
                 worker.id(), ::getpid(), static_cast<unsigned long long>(k.accepted),
                 static_cast<unsigned long long>(k.accept_eagain),
                 static_cast<unsigned long long>(k.empty_wakeups),
                 static_cast<unsigned long long>(k.rotations));
  }
  conns.clear();
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  return rc;
}
