// Every server kind Node's primary serves to workers (issue 11 items 1, 2, 5): unix-socket
// servers (rr and shared), UDP sockets, listen({fd}) and listen(handle). Differential: the same
// unmodified worker script runs under Node's own primary (the oracle fixture prints what it
// saw) and under cluster::Primary / `uvcluster run`, and the observables are compared.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "http_client.hpp"
#include "support.hpp"
#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"
#include "uvcluster/process.hpp"

using namespace uvcluster;
using namespace uvcluster::cluster;
using Json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A fresh directory under /tmp, removed with everything in it.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = "/tmp/uvc-kinds-XXXXXX";
    path = ::mkdtemp(tmpl.data()) ? tmpl : "";
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// GET / over a unix socket (blocking, with a receive timeout); the body, or "" on failure.
std::string http_get_unix(const std::string& path) {
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (!fd || path.size() >= sizeof a.sun_path) return "";
  std::memcpy(a.sun_path, path.data(), path.size());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return "";
  timeval tv{10, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const std::string req = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  if (::send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) return "";
  std::string got;
  char buf[1024];
  for (ssize_t n; (n = ::recv(fd.get(), buf, sizeof buf, 0)) > 0;) got.append(buf, static_cast<size_t>(n));
  return uvc_test::http_body(got);
}

std::string mode_of(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return "missing";
  char buf[8];
  std::snprintf(buf, sizeof buf, "%o", st.st_mode & 0777);
  return buf;
}

Json address_json(const Address& a) { return a.to_json(); }

Json exit_json(WorkerHandle& w, const ExitStatus& s) {
  return {{"code", s.code ? Json(*s.code) : Json(nullptr)},
          {"exitedAfterDisconnect", w.exited_after_disconnect().value_or(false)}};
}

// ---- unix sockets ---------------------------------------------------------------------------

struct PipeCase {
  const char* name;
  Policy policy;
  const char* options;  // "" = listen(path)
};

class PipeServers : public ::testing::TestWithParam<PipeCase> {};

// What cluster_pipe_primary.js records, with cluster::Primary in Node's place.
Json run_pipe_cluster_ours(const PipeCase& c, const std::string& path) {
  uvc_test::TestLoop loop;
  std::vector<std::string> args{path};
  if (*c.options) args.push_back(c.options);
  auto primary = Primary::create(loop, {.exec = uvc_test::fixture("cluster_pipe_worker.js"), .args = args,
                                        .policy = c.policy});
  Json out = {{"listening", Json::array()}, {"reported", Json::array()}, {"answers", 0}, {"exits", Json::array()}};
  primary->on_listening([&](WorkerHandle&, const Address& a) { out["listening"].push_back(address_json(a)); });
  primary->on_message([&](WorkerHandle&, const Json& m) { out["reported"].push_back(m); });
  primary->on_exit([&](WorkerHandle& w, const ExitStatus& s) { out["exits"].push_back(exit_json(w, s)); });
  EXPECT_TRUE(primary->fork().ok());
  EXPECT_TRUE(primary->fork().ok());
  if (!loop.run_until([&] { return out["listening"].size() == 2 && out["reported"].size() == 2; })) return out;
  out["mode"] = mode_of(path);
  int answers = 0;
  EXPECT_TRUE(uvc_test::run_client(loop, [&] {
    for (int i = 0; i < 4; ++i) answers += http_get_unix(path).rfind("worker ", 0) == 0;
  }));
  out["answers"] = answers;
  primary->disconnect();
  EXPECT_TRUE(loop.run_until([&] { return out["exits"].size() == 2; }));
  out["fileAfterStop"] = fs::exists(path);
  return out;
}

TEST_P(PipeServers, ListenOnAUnixSocketAsUnderNodesPrimary) {
  const PipeCase& c = GetParam();
  TempDir dir;
  std::string path = (dir.path / "app.sock").string();
  std::vector<std::string> args{c.policy == Policy::rr ? "rr" : "none", dir.path.string(), path};
  if (*c.options) args.push_back(c.options);
  Json node = uvc_test::run_node_fixture("cluster_pipe_primary.js", args);
  ASSERT_TRUE(node.is_object());
  ASSERT_FALSE(fs::exists(path));
  Json ours = run_pipe_cluster_ours(c, path);
  EXPECT_EQ(ours, node) << "ours: " << ours.dump() << "\nnode: " << node.dump();
  EXPECT_EQ(node["answers"], 4);
  EXPECT_EQ(node["fileAfterStop"], false);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, PipeServers,
    ::testing::Values(PipeCase{"rr", Policy::rr, ""}, PipeCase{"none", Policy::none, ""},
                      // rr: the primary's net.Server applies the mode (0755 → 0777)
                      PipeCase{"rr_readable_writable", Policy::rr, R"({"readableAll":true,"writableAll":true})"},
                      // shared: Node's SharedHandle never chmods, the mode stays 0755
                      PipeCase{"none_readable_writable", Policy::none, R"({"readableAll":true,"writableAll":true})"}),
    [](const auto& info) { return std::string(info.param.name); });

// `uvcluster run` with a relative path whose absolute form is longer than sun_path (108 bytes):
// Node's primary binds it relative to its cwd, so it works; the file is gone after the drain.
TEST(PipeServersCli, RelativePathLongerThanSunPathWorksUnderUvclusterRun) {
  TempDir root;
  fs::path deep = root.path / std::string(120, 'd');
  fs::create_directories(deep);
  fs::path link = root.path / "s";  // a short way in for the clients
  fs::create_directory_symlink(deep, link);
  ASSERT_GT((deep / "app.sock").string().size(), sizeof(sockaddr_un{}.sun_path));

  Json node = uvc_test::run_node_fixture("cluster_pipe_primary.js", {"rr", deep.string(), "app.sock"});
  ASSERT_TRUE(node.is_object());
  EXPECT_EQ(node["answers"], 4);
  ASSERT_EQ(node["listening"].size(), 2u);

  uvc_test::TestLoop loop;
  auto cli = spawn(loop, uvc_test::cli(),
                   {"run", "--json", "-i", "2", "--policy", "rr", "--", uvc_test::node(),
                    uvc_test::fixture("cluster_pipe_worker.js"), "app.sock"},
                   {.process = {.cwd = deep.string()}});
  ASSERT_TRUE(cli.ok());
  std::vector<Json> listening;
  std::string buf;
  bool closed = false;
  std::optional<ExitStatus> exit;
  (*cli)->stdout_pipe()->on_data([&](std::string_view d) {
    buf.append(d);
    for (size_t nl; (nl = buf.find('\n')) != std::string::npos; buf.erase(0, nl + 1)) {
      Json e = Json::parse(buf.substr(0, nl), nullptr, false);
      if (e.is_object() && e.value("event", "") == "listening") listening.push_back(e);
    }
  });
  (*cli)->on_exit([&](const ExitStatus& s) { exit = s; });
  (*cli)->on_close([&](const ExitStatus&) { closed = true; });
  ASSERT_TRUE(loop.run_until([&] { return listening.size() == 2 || closed; }, 60000));
  ASSERT_EQ(listening.size(), 2u);
  for (auto& e : listening) {
    EXPECT_EQ(e["address"], node["listening"][0]["address"]);
    EXPECT_EQ(e["addressType"], -1);
    EXPECT_EQ(e["port"], -1);
  }
  std::string via_link = (link / "app.sock").string();
  int answers = 0;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] {
    for (int i = 0; i < 4; ++i) answers += http_get_unix(via_link).rfind("worker ", 0) == 0;
  }));
  EXPECT_EQ(answers, 4);
  (*cli)->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return closed; }, 60000));
  EXPECT_EQ(exit->code, std::optional<int>(0));
  EXPECT_FALSE(fs::exists(deep / "app.sock"));
  EXPECT_EQ(node["fileAfterStop"], false);
}

// ---- UDP ------------------------------------------------------------------------------------

struct UdpCase {
  const char* name;
  const char* type;
  bool exclusive;
  Policy policy;
};

class UdpSockets : public ::testing::TestWithParam<UdpCase> {};

void send_datagram(const char* type, int port, const std::string& text) {
  bool v6 = std::string(type) == "udp6";
  Fd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_storage ss{};
  socklen_t len;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  }
  (void)::sendto(fd.get(), text.data(), text.size(), 0, reinterpret_cast<sockaddr*>(&ss), len);
}

// What cluster_dgram_primary.js records, with cluster::Primary in Node's place.
Json run_udp_cluster_ours(const UdpCase& c) {
  uvc_test::TestLoop loop;
  std::vector<std::string> args{c.type};
  if (c.exclusive) args.push_back("exclusive");
  auto primary = Primary::create(loop, {.exec = uvc_test::fixture("cluster_dgram_worker.js"), .args = args,
                                        .policy = c.policy});
  Json out = {{"listening", Json::array()}, {"bound", Json::array()}, {"got", 0}, {"exits", Json::array()}};
  std::vector<int> ports;
  std::vector<Address> listening;
  primary->on_listening([&](WorkerHandle&, const Address& a) { listening.push_back(a); });
  primary->on_message([&](WorkerHandle&, const Json& m) {
    if (m.contains("bound")) {
      ports.push_back(m["bound"]["port"].get<int>());
      out["bound"].push_back({{"address", m["bound"]["address"]}, {"family", m["bound"]["family"]}});
    } else if (m.contains("got")) {
      out["got"] = out["got"].get<int>() + 1;
    } else {
      out["error"] = m.value("error", Json());
    }
  });
  primary->on_exit([&](WorkerHandle& w, const ExitStatus& s) { out["exits"].push_back(exit_json(w, s)); });
  EXPECT_TRUE(primary->fork().ok());
  EXPECT_TRUE(primary->fork().ok());
  if (!loop.run_until([&] { return ports.size() == 2 || out.contains("error"); })) return out;
  if (ports.size() != 2) return out;
  // One datagram per port every 20 ms, at most 200, until each worker has one (each closes its
  // socket after its first, so the next can only reach the other).
  std::set<int> targets(ports.begin(), ports.end());
  int sent = 0;
  detail::UvHandle<uv_timer_t> timer;
  EXPECT_EQ(uv_timer_init(loop, timer.get()), 0);
  timer.mark_initialized();
  struct Tick { std::function<void()> fn; } tick{[&] {
    if (out["got"] == 2 || ++sent > 200) {
      uv_timer_stop(timer.get());
      return;
    }
    for (int p : targets) send_datagram(c.type, p, "d" + std::to_string(sent));
  }};
  timer->data = &tick;
  uv_timer_start(timer.get(), [](uv_timer_t* t) { static_cast<Tick*>(t->data)->fn(); }, 20, 20);
  EXPECT_TRUE(loop.run_until([&] { return out["got"] == 2 || sent > 200; }));
  timer.close();
  out["onePort"] = ports[0] == ports[1];
  for (auto& a : listening) {
    bool bound = std::find(ports.begin(), ports.end(), a.port) != ports.end();
    out["listening"].push_back({{"address", a.address ? Json(*a.address) : Json(nullptr)},
                                {"addressType", a.address_type},
                                {"port", bound ? Json("bound") : Json(a.port)}});
  }
  primary->disconnect();
  EXPECT_TRUE(loop.run_until([&] { return out["exits"].size() == 2; }));
  return out;
}

TEST_P(UdpSockets, EveryWorkerReceivesAsUnderNodesPrimary) {
  const UdpCase& c = GetParam();
  std::vector<std::string> args{c.type};
  if (c.exclusive) args.push_back("exclusive");
  Json node = uvc_test::run_node_fixture("cluster_dgram_primary.js", args);
  ASSERT_TRUE(node.is_object());
  Json ours = run_udp_cluster_ours(c);
  EXPECT_EQ(ours, node) << "ours: " << ours.dump() << "\nnode: " << node.dump();
  EXPECT_EQ(node["got"], 2);
  EXPECT_EQ(node["onePort"], !c.exclusive);
}

INSTANTIATE_TEST_SUITE_P(Kinds, UdpSockets,
                         ::testing::Values(UdpCase{"udp4_rr", "udp4", false, Policy::rr},
                                           UdpCase{"udp6_rr", "udp6", false, Policy::rr},
                                           UdpCase{"udp4_none", "udp4", false, Policy::none},
                                           UdpCase{"udp4_exclusive", "udp4", true, Policy::rr}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- listen({fd}) and listen(handle) --------------------------------------------------------

struct FdCase {
  const char* name;
  std::vector<std::string> args;
  Policy policy;
};

class ListenFdInWorkers : public ::testing::TestWithParam<FdCase> {};

// fd 1000 is not open in either primary: Node's primary answers EINVAL (createHandle throws for
// an fd that is not a TCP or pipe handle), reported by the worker as `bind EINVAL`. A handle of
// the worker's own is used by the worker itself: no `listening` reaches the primary.
TEST_P(ListenFdInWorkers, BehavesAsUnderNodesPrimary) {
  const FdCase& c = GetParam();
  ASSERT_EQ(::fcntl(1000, F_GETFD), -1);
  std::string env = std::string("NODE_CLUSTER_SCHED_POLICY=") + policy_name(c.policy);
  std::vector<std::string> argv{"/usr/bin/env", env, uvc_test::node(), uvc_test::fixture("cluster_listen_fd_primary.js")};
  argv.insert(argv.end(), c.args.begin(), c.args.end());
  auto run = uvc_test::run_capture(argv);
  Json node = Json::parse(run.out, nullptr, false);
  ASSERT_TRUE(node.is_object()) << run.out << run.err;

  uvc_test::TestLoop loop;
  auto primary = Primary::create(loop, {.exec = uvc_test::fixture("cluster_listen_fd_worker.js"), .args = c.args,
                                        .policy = c.policy});
  Json ours = {{"listening", 0}};
  primary->on_listening([&](WorkerHandle&, const Address&) { ours["listening"] = ours["listening"].get<int>() + 1; });
  auto w = primary->fork();
  ASSERT_TRUE(w.ok());
  (*w)->on_message([&](const Json& m) {
    ours["report"] = m;
    (*w)->disconnect();
  });
  (*w)->on_exit([&](const ExitStatus& s) { ours["exit"] = exit_json(**w, s); });
  ASSERT_TRUE(loop.run_until([&] { return ours.contains("exit"); }));
  EXPECT_EQ(ours, node) << "ours: " << ours.dump() << "\nnode: " << node.dump();
}

INSTANTIATE_TEST_SUITE_P(Kinds, ListenFdInWorkers,
                         ::testing::Values(FdCase{"fd_not_open_rr", {"fd", "1000"}, Policy::rr},
                                           FdCase{"fd_not_open_none", {"fd", "1000"}, Policy::none},
                                           FdCase{"handle_rr", {"handle"}, Policy::rr},
                                           FdCase{"handle_none", {"handle"}, Policy::none}),
                         [](const auto& info) { return std::string(info.param.name); });

// Node's documented meaning of listen({fd: N}) in a worker: "file descriptor N in the parent" (a
// socket handed to the primary, e.g. by systemd). The primary's own listening socket serves the
// worker's server, under rr and shared.
TEST(ListenFdInWorkers, TheFdIsThePrimarysOwnListeningSocket) {
  for (Policy policy : {Policy::rr, Policy::none}) {
    uvc_test::TestLoop loop;
    auto sock = bind_tcp({.address = "127.0.0.1", .port = 0});
    ASSERT_TRUE(sock.ok());
    ASSERT_TRUE(listen_fd(sock->get(), 0).ok());
    int port = local_address(sock->get())->port;
    auto primary = Primary::create(loop, {.exec = uvc_test::fixture("cluster_listen_fd_worker.js"),
                                          .args = {"fd", std::to_string(sock->get())}, .policy = policy});
    Json report;
    int listening = 0;
    primary->on_listening([&](WorkerHandle&, const Address&) { ++listening; });
    auto w = primary->fork();
    ASSERT_TRUE(w.ok());
    (*w)->on_message([&](const Json& m) { report = m; });
    bool exited = false;
    (*w)->on_exit([&](const ExitStatus&) { exited = true; });
    // The worker's listen callback reports before Node's child sends `listening`.
    ASSERT_TRUE(loop.run_until([&] { return !report.is_null() && listening == 1; }));
    EXPECT_EQ(report["listening"], true) << report.dump() << " policy " << policy_name(policy);
    EXPECT_EQ(report["port"], port);
    EXPECT_EQ(listening, 1);
    std::string got;
    ASSERT_TRUE(uvc_test::run_client(loop, [&] { got = uvc_test::http_get(port); }));
    EXPECT_EQ(got, "worker\n") << policy_name(policy);
    (*w)->disconnect();
    ASSERT_TRUE(loop.run_until([&] { return exited; }));
  }
}

// ---- dgram handles over IPC ------------------------------------------------------------------

// send(msg, dgramSocket) both ways: a Node parent sends udp4 and udp6 sockets to `uvcluster
// ipc-echo` (C++) and to a Node echo child (the oracle); each comes back as a dgram.Socket of
// the same type on the same port, and receives.
TEST(DgramHandles, NodeParentToCppChildAndBackAsWithANodeChild) {
  Json node = uvc_test::run_node_fixture("ipc_dgram_parent.js", {uvc_test::fixture("ipc_dgram_echo_child.js")});
  Json ours = uvc_test::run_node_fixture("ipc_dgram_parent.js", {uvc_test::cli()});
  EXPECT_EQ(ours, node) << "ours: " << ours.dump() << "\nnode: " << node.dump();
  EXPECT_EQ(node["udp6"]["received"], "ping");
  EXPECT_EQ(node["udp4"]["type"], "udp4");
}

// A C++ parent sends a UDP socket as dgram.Socket (with its dgramType) to a Node child, which
// wraps it in a dgram.Socket and sends it back: it returns as HandleType::dgram on the same port.
TEST(DgramHandles, CppParentToNodeChildAndBack) {
  for (const char* address : {"127.0.0.1", "::1"}) {
    uvc_test::TestLoop loop;
    auto sock = bind_udp(address, 0, 0);
    ASSERT_TRUE(sock.ok());
    int port = local_address(sock->get())->port;
    auto child = fork(loop, uvc_test::fixture("ipc_dgram_echo_child.js"));
    ASSERT_TRUE(child.ok());
    Json back;
    std::optional<ipc::HandleType> type;
    int back_port = -1;
    (*child)->channel()->on_message([&](const Json& m, ipc::ReceivedHandle* h) {
      back = m;
      if (!h) return;
      type = h->type;
      if (auto n = local_address(h->fd.get()); n.ok()) back_port = n->port;
    });
    (*child)->channel()->send({{"udp", address}},
                              ipc::OutgoingHandle{ipc::HandleType::dgram, Fd::dup(sock->get()).value(), std::nullopt});
    ASSERT_TRUE(loop.run_until([&] { return !back.is_null(); }));
    EXPECT_EQ(back, Json({{"udp", address}}));
    EXPECT_EQ(type, std::optional<ipc::HandleType>(ipc::HandleType::dgram));
    EXPECT_EQ(back_port, port);
    bool exited = false;
    (*child)->on_exit([&](const ExitStatus&) { exited = true; });
    (void)(*child)->channel()->disconnect();
    ASSERT_TRUE(loop.run_until([&] { return exited; }));
  }
}

}  // namespace
