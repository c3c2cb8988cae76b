// Port sharing without the cluster protocol: the naive strategy (each process binds → all but
// one fail with EADDRINUSE), and a parent that keeps accepting on the socket it shared.
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <uv.h>

#include "http_client.hpp"
#include "support.hpp"
#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"

using namespace uvcluster;
using Json = nlohmann::json;

TEST(ClusterSharing, NaiveForkEachWorkerBindsSecondGetsEaddrinuse) {
  uvc_test::TestLoop loop;
  Env env;  // no NODE_UNIQUE_ID: plain children, not cluster workers
  env["PATH"] = "/usr/bin:/bin";
  std::vector<Json> got;
  auto start = [&](int port) {
    auto c = fork(loop, uvc_test::fixture("naive_bind_worker.js"), {std::to_string(port)}, {.process = {.env = env}});
    EXPECT_TRUE(c.ok());
    (*c)->channel()->on_message([&](const Json& m, ipc::ReceivedHandle*) { got.push_back(m); });
    return c.value();
  };
  auto first = start(0);
  ASSERT_TRUE(loop.run_until([&] { return got.size() == 1; }));
  ASSERT_TRUE(got[0].contains("listening")) << got[0].dump();
  int port = got[0]["listening"];
  auto second = start(port);
  ASSERT_TRUE(loop.run_until([&] { return got.size() == 2; }));
  EXPECT_EQ(got[1], Json({{"error", "EADDRINUSE"}}));
  bool e1 = false, e2 = false;
  first->on_exit([&](const ExitStatus&) { e1 = true; });
  second->on_exit([&](const ExitStatus&) { e2 = true; });
  first->channel()->disconnect();
  ASSERT_TRUE(loop.run_until([&] { return e1 && e2; }));
}

TEST(ClusterSharing, ParentKeepsAcceptingOnTheSocketItShared) {
  uvc_test::warm_up_libuv();
  auto fds_before = uvc_test::open_fds();
  {
    uvc_test::TestLoop loop;
    auto sock = cluster::bind_tcp({.address = "127.0.0.1", .port = 0});
    ASSERT_TRUE(sock.ok());
    ASSERT_TRUE(cluster::listen_fd(sock->get(), 0).ok());
    int port = cluster::local_address(sock->get())->port;
    auto child = fork(loop, uvc_test::fixture("shared_server_child.js"));
    ASSERT_TRUE(child.ok());
    bool ready = false;
    (*child)->channel()->on_message([&](const Json& m, ipc::ReceivedHandle*) { ready = m == "ready"; });
    (*child)->channel()->send("server", ipc::OutgoingHandle{ipc::HandleType::server, Fd::dup(sock->get()).value(), std::nullopt});
    ASSERT_TRUE(loop.run_until([&] { return ready; }));

    // The parent accepts on the same socket (one per wake-up, like Node 20's libuv) and answers.
    struct Ctx { int fd; int served = 0; } ctx{sock->get()};
    detail::UvHandle<uv_poll_t> poll;
    ASSERT_EQ(uv_poll_init(loop, poll.get(), sock->get()), 0);
    poll.mark_initialized();
    poll->data = &ctx;
    uv_poll_start(poll.get(), UV_READABLE, [](uv_poll_t* h, int, int) {
      auto* c = static_cast<Ctx*>(h->data);
      auto accepted = cluster::accept_connection(c->fd);
      if (!accepted) return;  // the child won this one (herd)
      Fd conn = std::move(*accepted);
      const char resp[] = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 7\r\n\r\nparent\n";
      char buf[1024];
      // Loopback: the request follows the connect at once, so a blocking read (bounded by a
      // receive timeout) keeps this test server trivial.
      int off = 0;
      ::ioctl(conn.get(), FIONBIO, &off);
      timeval tv{5, 0};
      ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      (void)::recv(conn.get(), buf, sizeof buf, 0);
      (void)::send(conn.get(), resp, sizeof resp - 1, MSG_NOSIGNAL);
      c->served++;
    });
    int parent = 0, kid = 0, failed = 0;
    ASSERT_TRUE(uvc_test::run_client(loop, [&] {
      for (int i = 0; i < 40; ++i) {
        std::string body = uvc_test::http_body(uvc_test::http_get(port));
        if (body == "parent\n") ++parent;
        else if (body == "child\n") ++kid;
        else ++failed;
      }
    }));
    EXPECT_EQ(failed, 0);
    EXPECT_EQ(parent + kid, 40);
    EXPECT_EQ(parent, ctx.served);
    poll.close();
    bool exited = false;
    (*child)->on_exit([&](const ExitStatus&) { exited = true; });
    (*child)->channel()->disconnect();
    ASSERT_TRUE(loop.run_until([&] { return exited; }));
  }
  EXPECT_TRUE(uvc_test::zombie_children().empty());
  EXPECT_EQ(uvc_test::open_fds(), fds_before);
}
