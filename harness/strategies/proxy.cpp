// lab-proxy: the `proxy` strategy's primary. Accepts on 127.0.0.1:PORT, picks the next worker
// port round-robin, connects to it and pipes bytes both ways, so it holds 2 fds per client
// connection. Raises RLIMIT_NOFILE like Node does (otherwise it runs out near 500 clients).
// usage: lab-proxy --port P --upstream P1,P2,...   Counters as hello-native ($UVC_LAB_STATS*).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "lab_stats.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/cluster/sockets.hpp"

namespace {

using uvcluster::detail::UvHandle;

struct Proxy;

// One client connection and its upstream twin. Freed when both handles have closed.
struct Pair {
  Proxy* proxy = nullptr;
  UvHandle<uv_tcp_t> client, upstream;
  uv_connect_t connect_req{};
  bool closing = false;
  int open_handles = 0;
  std::string pending;  // client bytes that arrived before the upstream connected
  bool connected = false;
};

struct Proxy {
  uv_loop_t* loop = nullptr;
  UvHandle<uv_tcp_t> listener;
  std::vector<sockaddr_in> upstreams;
  std::vector<uint64_t> per_upstream;
  size_t next = 0;
  uint64_t accepted = 0, upstream_errors = 0;
  std::unordered_map<Pair*, std::unique_ptr<Pair>> pairs;
};

struct WriteReq {
  uv_write_t req{};
  std::unique_ptr<char[]> data;
  Pair* pair = nullptr;
};

void close_pair(Pair* p) {
  if (p->closing) return;
  p->closing = true;
  auto done = [p] {
    if (--p->open_handles == 0) p->proxy->pairs.erase(p);
  };
  p->client.close(done);
  p->upstream.close(done);
}

void alloc_cb(uv_handle_t*, size_t, uv_buf_t* b) {
  // Each chunk is handed to uv_write as is (no copy); WriteReq frees it afterwards.
  // for_overwrite: zeroing 64 KiB per read would dominate a hello-world proxy.
  constexpr size_t kChunk = 16384;
  b->base = std::make_unique_for_overwrite<char[]>(kChunk).release();
  b->len = kChunk;
}

void forward(Pair* p, uv_stream_t* to, std::unique_ptr<char[]> data, size_t n) {
  auto w = std::make_unique<WriteReq>();
  uv_buf_t b = uv_buf_init(data.get(), static_cast<unsigned>(n));
  w->data = std::move(data);
  w->pair = p;
  w->req.data = w.get();
  if (uv_write(&w->req, to, &b, 1, [](uv_write_t* req, int status) {
        std::unique_ptr<WriteReq> owned(static_cast<WriteReq*>(req->data));
        if (status < 0 && status != UV_ECANCELED) close_pair(owned->pair);
      }) == 0) {
    w.release();  // owned by libuv until the callback
  } else {
    close_pair(p);
  }
}

void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
  std::unique_ptr<char[]> data(b->base);
  auto* p = static_cast<Pair*>(s->data);
  if (n < 0) return close_pair(p);
  if (n == 0 || p->closing) return;
  bool from_client = s == p->client.stream();
  if (from_client && !p->connected) {
    p->pending.append(data.get(), static_cast<size_t>(n));
    return;
  }
  forward(p, from_client ? p->upstream.stream() : p->client.stream(), std::move(data), static_cast<size_t>(n));
}

void on_upstream_connected(uv_connect_t* req, int status) {
  auto* p = static_cast<Pair*>(req->data);
  if (p->closing) return;
  if (status < 0) {
    ++p->proxy->upstream_errors;
    return close_pair(p);
  }
  p->connected = true;
  uv_read_start(p->upstream.stream(), alloc_cb, on_read);
  if (!p->pending.empty()) {
    auto buf = std::make_unique<char[]>(p->pending.size());
    std::memcpy(buf.get(), p->pending.data(), p->pending.size());
    size_t n = p->pending.size();
    p->pending.clear();
    forward(p, p->upstream.stream(), std::move(buf), n);
  }
}

void on_connection(uv_stream_t* server, int status) {
  auto* px = static_cast<Proxy*>(server->data);
  if (status < 0) return;
  auto owned = std::make_unique<Pair>();
  Pair* p = owned.get();
  p->proxy = px;
  p->client.must_init(uv_tcp_init(px->loop, p->client.get()), "uv_tcp_init");
  p->upstream.must_init(uv_tcp_init(px->loop, p->upstream.get()), "uv_tcp_init");
  p->open_handles = 2;
  p->client->data = p;
  p->upstream->data = p;
  px->pairs.emplace(p, std::move(owned));
  if (uv_accept(server, p->client.stream()) != 0) return close_pair(p);
  ++px->accepted;
  uv_tcp_nodelay(p->client.get(), 1);
  uv_tcp_nodelay(p->upstream.get(), 1);
  size_t i = px->next++ % px->upstreams.size();
  ++px->per_upstream[i];
  p->connect_req.data = p;
  if (uv_tcp_connect(&p->connect_req, p->upstream.get(), reinterpret_cast<sockaddr*>(&px->upstreams[i]),
                     on_upstream_connected) != 0)
    return close_pair(p);
  uv_read_start(p->client.stream(), alloc_cb, on_read);
}

nlohmann::json stats_json(const Proxy& px, const rlimit& rl) {
  return {{"pid", ::getpid()}, {"role", "proxy"}, {"accepted", px.accepted},
          {"per_upstream", px.per_upstream}, {"upstream_errors", px.upstream_errors},
          {"rlimit_nofile", rl.rlim_cur}};
}

}  // namespace

int main(int argc, char** argv) {
  int port = -1;
  std::string ups;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--port") port = std::atoi(argv[i + 1]);
    else if (a == "--upstream") ups = argv[i + 1];
  }
  if (port < 0 || ups.empty()) {
    std::fprintf(stderr, "usage: lab-proxy --port P --upstream P1,P2,...\n");
    return 2;
  }
  uvcluster::cluster::raise_nofile_limit();
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);  // reported in the stats

  Proxy px;
  px.loop = uv_default_loop();
  std::stringstream ss(ups);
  for (std::string item; std::getline(ss, item, ',');) {
    sockaddr_in sa{};
    uv_ip4_addr("127.0.0.1", std::atoi(item.c_str()), &sa);
    px.upstreams.push_back(sa);
  }
  px.per_upstream.assign(px.upstreams.size(), 0);

  px.listener.must_init(uv_tcp_init(px.loop, px.listener.get()), "uv_tcp_init");
  px.listener->data = &px;
  sockaddr_in addr{};
  uv_ip4_addr("127.0.0.1", port, &addr);
  int r = uv_tcp_bind(px.listener.get(), reinterpret_cast<sockaddr*>(&addr), 0);
  if (r == 0) r = uv_listen(px.listener.stream(), 511, on_connection);
  if (r != 0) {
    std::fprintf(stderr, "lab-proxy: listen 127.0.0.1:%d: %s\n", port, uv_err_name(r));
    return 3;
  }

  UvHandle<uv_signal_t> sigterm, sigusr2;
  struct Ctx {
    Proxy* px;
    rlimit rl;
    UvHandle<uv_signal_t>* handles[2];
  } ctx{&px, rl, {&sigterm, &sigusr2}};
  for (auto* s : ctx.handles) {
    if (int rc = uv_signal_init(px.loop, s->get()); rc != 0) {
      std::fprintf(stderr, "lab-proxy: uv_signal_init: %s\n", uv_err_name(rc));
      return 3;
    }
    s->mark_initialized();
    (*s)->data = &ctx;
  }
  uv_signal_start(sigterm.get(), [](uv_signal_t* h, int) {
    auto* c = static_cast<Ctx*>(h->data);
    uvcluster::lab::publish(stats_json(*c->px, c->rl));
    c->px->listener.close();
    std::vector<Pair*> all;
    for (auto& [k, v] : c->px->pairs) all.push_back(k);
    for (Pair* p : all) close_pair(p);
    for (auto* s : c->handles) s->close();
  }, SIGTERM);
  uv_signal_start(sigusr2.get(), [](uv_signal_t* h, int) {
    auto* c = static_cast<Ctx*>(h->data);
    uvcluster::lab::publish(stats_json(*c->px, c->rl));
  }, SIGUSR2);
  uvcluster::lab::mark_ready({{"pid", ::getpid()}, {"port", port}});
  uv_run(px.loop, UV_RUN_DEFAULT);
  uv_loop_close(px.loop);
  return 0;
}
