// Handle passing against real Node: C++ parent -> Node children, Node parent -> C++ children.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "support.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"

using namespace uvcluster;
using ipc::Json;

namespace {

Fd listen_loopback(int* port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(listen(fd.get(), 128), 0);
  socklen_t len = sizeof a;
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

// An async loopback client that collects everything until EOF.
struct Client {
  detail::UvHandle<uv_tcp_t> tcp;
  uv_connect_t req{};
  std::string got;
  bool done = false;
  char buf[4096];
  Client(uv_loop_t* loop, int port) {
    tcp.must_init(uv_tcp_init(loop, tcp.get()), "uv_tcp_init");
    tcp->data = this;
    req.data = this;
    sockaddr_in a{};
    uv_ip4_addr("127.0.0.1", port, &a);
    uv_tcp_connect(&req, tcp.get(), reinterpret_cast<sockaddr*>(&a), [](uv_connect_t* r, int st) {
      auto* self = static_cast<Client*>(r->data);
      if (st < 0) {
        self->done = true;
        return;
      }
      uv_read_start(
          r->handle,
          [](uv_handle_t* h, size_t, uv_buf_t* b) {
            auto* c = static_cast<Client*>(h->data);
            *b = uv_buf_init(c->buf, sizeof c->buf);
          },
          [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
            auto* c = static_cast<Client*>(s->data);
            if (n > 0) c->got.append(b->base, static_cast<size_t>(n));
            if (n < 0) {
              c->done = true;
              c->tcp.close();  // full close, so the peer's socket can finish too
            }
          });
    });
  }
};

struct Kid {
  std::shared_ptr<ChildProcess> proc;
  std::vector<Json> messages;
  bool closed = false;
};

std::unique_ptr<Kid> fork_node_kid(uv_loop_t* loop, ipc::Serialization mode = ipc::Serialization::json) {
  auto k = std::make_unique<Kid>();
  ForkOptions fo;
  fo.serialization = mode;
  auto r = fork(loop, uvc_test::fixture("ipc_echo_child.js"), {}, std::move(fo));
  EXPECT_TRUE(r.ok());
  k->proc = r.value();
  Kid* raw = k.get();
  k->proc->channel()->on_message([raw](const Json& m, ipc::ReceivedHandle*) { raw->messages.push_back(m); });
  k->proc->on_close([raw](const ExitStatus&) { raw->closed = true; });
  return k;
}

}  // namespace

TEST(IpcHandles, ServerSharedWithTwoNodeChildren) {
  uvc_test::TestLoop loop;
  int port = 0;
  Fd lfd = listen_loopback(&port);
  auto k1 = fork_node_kid(loop);
  auto k2 = fork_node_kid(loop);
  k1->proc->channel()->send(Json{{"srv", 1}}, ipc::OutgoingHandle{ipc::HandleType::server, Fd::dup(lfd.get()).value()});
  k2->proc->channel()->send(Json{{"srv", 2}}, ipc::OutgoingHandle{ipc::HandleType::server, Fd::dup(lfd.get()).value()});
  ASSERT_TRUE(loop.run_until([&] { return k1->messages.size() == 1 && k2->messages.size() == 1; }));
  EXPECT_EQ(k1->messages[0], (Json{{"echo", {{"srv", 1}}}, {"handle", "Server"}, {"listening", true}}));
  EXPECT_EQ(k2->messages[0]["handle"], "Server");

  // The parent accepts on the same socket too.
  detail::UvHandle<uv_tcp_t> server;
  ASSERT_EQ(uv_tcp_init(loop, server.get()), 0);
  server.mark_initialized();
  ASSERT_EQ(uv_tcp_open(server.get(), Fd::dup(lfd.get()).value().release()), 0);
  ASSERT_EQ(uv_listen(server.stream(), 128, [](uv_stream_t* s, int) {
              detail::UvHandle<uv_tcp_t> conn;
              conn.must_init(uv_tcp_init(s->loop, conn.get()), "uv_tcp_init");
              if (uv_accept(s, conn.stream()) == 0) {
                uv_os_fd_t fd;
                uv_fileno(conn.base(), &fd);
                (void)!::write(fd, "parent\n", 7);
              }
            }), 0);
  std::set<std::string> allowed = {"parent\n", "child " + std::to_string(*k1->proc->pid()) + "\n",
                                    "child " + std::to_string(*k2->proc->pid()) + "\n"};
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 20; ++i) clients.push_back(std::make_unique<Client>(loop, port));
  ASSERT_TRUE(loop.run_until([&] {
    for (auto& c : clients) if (!c->done) return false;
    return true;
  }));
  for (auto& c : clients) EXPECT_TRUE(allowed.count(c->got)) << c->got;

  // Without the parent's acceptor, the children alone answer.
  server.close();
  lfd.reset();
  clients.clear();
  std::map<std::string, int> by;
  for (int i = 0; i < 10; ++i) clients.push_back(std::make_unique<Client>(loop, port));
  ASSERT_TRUE(loop.run_until([&] {
    for (auto& c : clients) if (!c->done) return false;
    return true;
  }));
  for (auto& c : clients) {
    EXPECT_TRUE(allowed.count(c->got) && c->got != "parent\n") << c->got;
    by[c->got]++;
  }
  // Listening children stay alive after a disconnect (their server is ref'd): ask them to exit.
  k1->proc->channel()->send("exit");
  k2->proc->channel()->send("exit");
  ASSERT_TRUE(loop.run_until([&] { return k1->closed && k2->closed; }));
  EXPECT_EQ(k1->proc->exit_status()->code, 7);
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

TEST(IpcHandles, AcceptedSocketToNodeChild) {
  uvc_test::TestLoop loop;
  int port = 0;
  Fd lfd = listen_loopback(&port);
  auto k = fork_node_kid(loop);
  Client client(loop, port);
  // The kernel completes the connection from the backlog; accept() does not block after connect.
  ASSERT_TRUE(loop.run_until([&] { return uv_is_readable(client.tcp.stream()) || client.done; }));
  Fd conn(::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(conn.valid());
  bool acked = false;
  ipc::SendOptions so;
  so.on_acked = [&] { acked = true; };
  std::string key = "4:127.0.0.1:" + std::to_string(port);
  k->proc->channel()->send(Json{{"conn", 1}}, ipc::OutgoingHandle{ipc::HandleType::socket, std::move(conn), key}, so);
  ASSERT_TRUE(loop.run_until([&] { return client.done && k->messages.size() == 1 && acked; }));
  EXPECT_EQ(client.got, "hello from child\n");
  EXPECT_EQ(k->messages[0], (Json{{"echo", {{"conn", 1}}}, {"handle", "Socket"}}));
  ASSERT_TRUE(k->proc->channel()->disconnect().ok());
  ASSERT_TRUE(loop.run_until([&] { return k->closed; }));
}

TEST(IpcHandles, NodeParentWithCppChildren) {
  Json r = uvc_test::run_node_fixture("ipc_handles_parent.js", {uvc_test::cli()});
  EXPECT_EQ(r["server"]["type"], "Server");
  EXPECT_EQ(r["server"]["listening"], true);
  EXPECT_EQ(r["server"]["samePort"], true);
  EXPECT_EQ(r["server"]["msg"], (Json{{"s", 1}, {"text", "é😀"}}));
  EXPECT_EQ(r["socket"]["type"], "Socket");
  EXPECT_EQ(r["socket"]["msg"], (Json{{"sock", 1}}));
  EXPECT_EQ(r["clientGot"], "via C++ child\n");
  EXPECT_EQ(r["exitA"], Json::array({0, nullptr}));
  EXPECT_EQ(r["exitB"], Json::array({0, nullptr}));
}

// Advanced serialization: the NODE_HANDLE wrapper and the message in it are V8 data; the Node
// child gets the socket and the Map, Date and BigInt as such (it echoes them back).
TEST(IpcHandles, AcceptedSocketToNodeChildAdvanced) {
  uvc_test::TestLoop loop;
  int port = 0;
  Fd lfd = listen_loopback(&port);
  auto k = fork_node_kid(loop, ipc::Serialization::advanced);
  Client client(loop, port);
  ASSERT_TRUE(loop.run_until([&] { return uv_is_readable(client.tcp.stream()) || client.done; }));
  Fd conn(::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(conn.valid());
  Json message = Json::parse(R"({"m":{"$v8":"Map","entries":[["k",{"$v8":"BigInt","value":"-5"}]]},
                                 "when":{"$v8":"Date","value":5},"self":{"$v8":"ref","path":""}})");
  k->proc->channel()->send(message, ipc::OutgoingHandle{ipc::HandleType::socket, std::move(conn)});
  ASSERT_TRUE(loop.run_until([&] { return client.done && k->messages.size() == 1; }));
  EXPECT_EQ(client.got, "hello from child\n");
  Json echoed = message;
  echoed["when"]["value"] = 5.0;
  echoed["self"]["path"] = "/echo";  // the echo wraps our message: the root moved one level down
  EXPECT_EQ(k->messages[0], (Json{{"echo", echoed}, {"handle", "Socket"}}));
  ASSERT_TRUE(k->proc->channel()->disconnect().ok());
  ASSERT_TRUE(loop.run_until([&] { return k->closed; }));
}
