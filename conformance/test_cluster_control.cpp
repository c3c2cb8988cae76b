// The operator's side of `uvcluster run`: the control socket of a named cluster (`run --name`)
// driven by `uvcluster status|reload|scale|stop|metrics` from another process, what the socket
// does with bad, oversized, unknown and unauthenticated requests (an error, nothing changed),
// --max-memory-restart with a worker that allocates, and Prometheus metrics scraped with curl
// and parsed by the reference client's parser. Every test has its own $UVCLUSTER_HOME.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include "cli_run.hpp"
#include "http_client.hpp"
#include "support.hpp"
#include "uvcluster/cluster/control_server.hpp"
#include "uvcluster/cluster/process_usage.hpp"
#include "uvcluster/cluster/supervisor.hpp"
#include "uvcluster/fd.hpp"

using namespace uvcluster;
using Json = nlohmann::json;
using uvc_test::CliRun;

namespace {

// Runs argv to completion on a thread while the loop turns.
uvc_test::Captured run_async(uvc_test::TestLoop& loop, const std::vector<std::string>& argv) {
  uvc_test::Captured r;
  EXPECT_TRUE(uvc_test::run_client(loop, [&] { r = uvc_test::run_capture(argv); }, 120000));
  return r;
}

std::vector<std::string> http_cluster(std::vector<std::string> options) {
  options.insert(options.end(), {"--json", "--", uvc_test::fixture("supervised_worker.js"), "0", "127.0.0.1"});
  return options;
}

int live_workers(const CliRun& c) { return c.count("fork") - c.count("exit"); }

std::vector<int> forked_pids(const CliRun& c) {
  std::vector<int> pids;
  for (auto& e : c.events)
    if (e.value("event", "") == "fork") pids.push_back(e["pid"].get<int>());
  return pids;
}

// A blocking connection to a control socket (a reply is awaited at most 30 s); invalid on failure.
Fd connect_to(const std::string& path) {
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return Fd();
  timeval tv{30, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

std::string read_reply(int fd) {
  std::string reply;
  char buf[4096];
  for (ssize_t n; reply.find('\n') == std::string::npos && (n = ::read(fd, buf, sizeof buf)) > 0;)
    reply.append(buf, static_cast<size_t>(n));
  return reply.substr(0, reply.find('\n'));
}

// Sends raw bytes to a control socket and returns the reply line (blocking; run it on a thread).
std::string raw_request(const std::string& path, const std::string& bytes) {
  Fd fd = connect_to(path);
  if (!fd) return "connect failed";
  // The server may answer (and close) before it has read everything: a failed send is fine.
  for (size_t off = 0; off < bytes.size();) {
    ssize_t n = ::send(fd.get(), bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  return read_reply(fd.get());
}

std::string error_code(const std::string& reply_line) {
  Json j = Json::parse(reply_line, nullptr, false);
  if (j.is_discarded() || j.value("ok", true)) return "not an error reply: " + reply_line;
  return j["error"].value("code", "");
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 ? st.st_mode : 0;
}

// A fresh $UVCLUSTER_HOME per test (the CLI children inherit it), removed afterwards.
class Control : public ::testing::Test {
 protected:
  void SetUp() override {
    auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    home_ = ::testing::TempDir() + "uvc_home_" + std::to_string(::getpid()) + "_" + info->name();
    std::filesystem::remove_all(home_);
    ::setenv("UVCLUSTER_HOME", home_.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("UVCLUSTER_HOME");
    std::error_code ignored;
    std::filesystem::remove_all(home_, ignored);
  }
  std::string socket_path(const std::string& name) const { return home_ + "/" + name + ".sock"; }

  // `[PREFIX...] uvcluster ARGS...` (reload and stop wait for events of the running cluster).
  uvc_test::Captured ctl(uvc_test::TestLoop& loop, std::vector<std::string> args, std::vector<std::string> prefix = {}) {
    args.insert(args.begin(), uvc_test::cli());
    args.insert(args.begin(), prefix.begin(), prefix.end());
    return run_async(loop, args);
  }

  std::string home_;
};

}  // namespace

TEST(ControlUnits, SizesNamesAndProcessUsage) {
  EXPECT_EQ(cluster::parse_size("512"), 512u);
  EXPECT_EQ(cluster::parse_size("300K"), 300u << 10);
  EXPECT_EQ(cluster::parse_size("150M"), 150u << 20);
  EXPECT_EQ(cluster::parse_size("2G"), uint64_t{2} << 30);
  EXPECT_EQ(cluster::parse_size("64mb"), 64u << 20);
  EXPECT_EQ(cluster::parse_size("1GiB"), uint64_t{1} << 30);
  for (const char* bad : {"", "0", "M", "12Q", "-5M", "1.5G", "99999999999G"})
    EXPECT_FALSE(cluster::parse_size(bad)) << bad;
  for (const char* good : {"web", "api-2", "a.b_c", "X"}) EXPECT_TRUE(cluster::valid_cluster_name(good)) << good;
  for (const std::string& bad : std::vector<std::string>{"", ".hidden", "../x", "a/b", "sp ace", std::string(65, 'a')})
    EXPECT_FALSE(cluster::valid_cluster_name(bad)) << bad;
  // The socket directory: $UVCLUSTER_HOME, else ~/.uvcluster.
  std::string home = std::getenv("HOME") ? std::getenv("HOME") : "";
  ::unsetenv("UVCLUSTER_HOME");
  ::setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(cluster::control_directory(), "/home/someone/.uvcluster");
  ::setenv("UVCLUSTER_HOME", "/run/uvc", 1);
  EXPECT_EQ(cluster::control_directory(), "/run/uvc");
  EXPECT_EQ(cluster::control_socket_path("/run/uvc", "web"), "/run/uvc/web.sock");
  ::unsetenv("UVCLUSTER_HOME");
  ::setenv("HOME", home.c_str(), 1);
  auto self = cluster::process_usage(static_cast<int>(::getpid()));
  ASSERT_TRUE(self.ok());
  EXPECT_GT(self->rss_bytes, 1u << 20);
  EXPECT_GE(self->cpu_seconds, 0);
  EXPECT_EQ(cluster::process_usage(0x7ffffff0).error().code, "ENOENT");
}

TEST_F(Control, StatusReloadScaleStopFromAnotherProcess) {
  uvc_test::TestLoop loop;
  CliRun cli(loop, http_cluster({"-i", "2", "--name", "web"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }, 60000)) << cli.err;
  auto* control = cli.last("control");
  ASSERT_TRUE(control);
  EXPECT_EQ((*control)["path"], socket_path("web"));
  EXPECT_TRUE(S_ISSOCK(mode_of(socket_path("web"))));
  EXPECT_EQ(mode_of(socket_path("web")) & 0777, 0600u);
  EXPECT_EQ(mode_of(home_) & 0777, 0700u);
  int port = cli.port();
  ASSERT_TRUE(uvc_test::run_client(loop, [&] {
    for (int i = 0; i < 3; ++i) uvc_test::http_get(port);
  }));

  auto status = ctl(loop, {"status", "web", "--json"});
  ASSERT_EQ(status.status, 0) << status.err;
  Json s = Json::parse(status.out);
  EXPECT_EQ(s["name"], "web");
  EXPECT_EQ(s["pid"], cli.child->pid());
  ASSERT_EQ(s["workers"].size(), 2u);
  uint64_t connections = 0;
  auto pids = forked_pids(cli);
  for (auto& w : s["workers"]) {
    EXPECT_EQ(w["state"], "up");
    EXPECT_NE(std::find(pids.begin(), pids.end(), w["pid"].get<int>()), pids.end());
    EXPECT_EQ(w["restarts"], 0);
    EXPECT_GE(w["uptime_ms"].get<int64_t>(), 0);
    EXPECT_GE(w["cpu_seconds"].get<double>(), 0);
    EXPECT_GT(w["rss_bytes"].get<uint64_t>(), 1u << 20);
    connections += w["connections"].get<uint64_t>();
  }
  EXPECT_EQ(connections, 3u);
  auto table = ctl(loop, {"status"});
  EXPECT_EQ(table.status, 0);
  for (int pid : pids) EXPECT_NE(table.out.find(" " + std::to_string(pid) + " "), std::string::npos) << table.out;
  auto all = ctl(loop, {"status", "--json"});
  EXPECT_EQ(Json::parse(all.out).size(), 1u) << all.out;

  // reload returns once the reload has ended.
  auto reload = ctl(loop, {"reload", "web"});
  EXPECT_EQ(reload.status, 0) << reload.err;
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-done") == 1; }));
  EXPECT_EQ(cli.count("fork"), 4);
  EXPECT_LT(cli.index_of("listening", 3), cli.index_of("disconnect", 1));

  auto scale = ctl(loop, {"scale", "web", "3"});
  EXPECT_EQ(scale.status, 0) << scale.err;
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 5; }, 60000));
  EXPECT_EQ((*cli.last("fork"))["instance"], 2);

  // stop returns once every worker has exited, with the cluster's exit code.
  auto stop = ctl(loop, {"stop", "web"});
  EXPECT_EQ(stop.status, 0) << stop.err;
  EXPECT_NE(stop.out.find("web: stopped (exit code 0)"), std::string::npos) << stop.out;
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 60000));
  EXPECT_EQ(cli.exit->code, std::optional<int>(0)) << cli.err;
  EXPECT_EQ((*cli.last("drain"))["reason"], "stop");
  EXPECT_EQ(live_workers(cli), 0);
  EXPECT_EQ(mode_of(socket_path("web")), 0u) << "the socket is removed on exit";
  EXPECT_EQ(ctl(loop, {"status", "web"}).status, 3);
}

TEST_F(Control, ExitCodesAndUsage) {
  uvc_test::TestLoop loop;
  auto none = ctl(loop, {"status", "nosuch"});
  EXPECT_EQ(none.status, 3);
  EXPECT_NE(none.err.find("no cluster named 'nosuch' is running"), std::string::npos) << none.err;
  for (const char* cmd : {"reload", "stop", "metrics"}) EXPECT_EQ(ctl(loop, {cmd, "nosuch"}).status, 3) << cmd;
  EXPECT_EQ(ctl(loop, {"scale", "nosuch", "2"}).status, 3);
  auto empty = ctl(loop, {"status"});
  EXPECT_EQ(empty.status, 0);
  EXPECT_NE(empty.out.find("no cluster running"), std::string::npos) << empty.out;
  EXPECT_EQ(ctl(loop, {"status", "--json"}).out, "[]\n");
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"stop"}, {"reload"}, {"metrics"}, {"scale", "web"}, {"scale", "web", "0"}, {"scale", "web", "x"},
           {"scale", "web", "1025"}, {"status", "a/b"}, {"status", "web", "--bogus"}, {"reload", "web", "extra"}}) {
    auto r = ctl(loop, args);
    EXPECT_EQ(r.status, 2) << args[0] << " " << (args.size() > 1 ? args[1] : "") << ": " << r.err;
    EXPECT_EQ(r.err.rfind("uvcluster " + args[0] + ": ", 0), 0u) << r.err;
  }
  for (const char* cmd : {"status", "reload", "scale", "stop", "metrics"}) {
    auto help = ctl(loop, {cmd, "--help"});
    EXPECT_EQ(help.status, 0) << cmd;
    for (const char* word : {"exit codes:", "0  done", "1  the cluster refused", "2  usage error",
                             "3  no such cluster", "4  not allowed"})
      EXPECT_NE(help.out.find(word), std::string::npos) << cmd << " --help lacks " << word;
  }
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"run", "--name", "../x", "--", "x.js"}, {"run", "--name", "", "--", "x.js"},
           {"run", "--max-memory-restart", "12Q", "--", "x.js"}, {"run", "--max-memory-restart", "0", "--", "x.js"},
           {"run", "--metrics-port", "70000", "--", "x.js"}}) {
    auto r = ctl(loop, args);
    EXPECT_EQ(r.status, 2) << args[1] << " " << args[2] << ": " << r.err;
  }
  auto help = ctl(loop, {"run", "--help"});
  for (const char* word : {"--name", "--max-memory-restart", "--metrics-port", "memory-restart"})
    EXPECT_NE(help.out.find(word), std::string::npos) << word;
}

// A socket left behind by a dead cluster is replaced; a live one of the same name is an error
// that leaves the live cluster alone.
TEST_F(Control, StaleSocketIsReplacedAndALiveNameIsAnError) {
  std::filesystem::create_directories(home_);
  {
    Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path("api").c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  }  // closed without unlink: nobody listens there any more
  ASSERT_TRUE(S_ISSOCK(mode_of(socket_path("api"))));
  uvc_test::TestLoop loop;
  EXPECT_EQ(ctl(loop, {"status", "api"}).status, 3);
  EXPECT_NE(ctl(loop, {"status"}).out.find("no cluster running"), std::string::npos);

  CliRun first(loop, http_cluster({"-i", "1", "--name", "api"}));
  ASSERT_TRUE(loop.run_until([&] { return first.count("listening") == 1; }, 60000)) << first.err;
  CliRun second(loop, http_cluster({"-i", "1", "--name", "api"}));
  ASSERT_TRUE(loop.run_until([&] { return second.closed; }, 60000));
  EXPECT_EQ(second.exit->code, std::optional<int>(1));
  EXPECT_NE(second.err.find("a cluster named 'api' is already running"), std::string::npos) << second.err;
  EXPECT_EQ(second.count("fork"), 0);
  EXPECT_EQ(ctl(loop, {"status", "api"}).status, 0) << "the first cluster still owns its socket";
  EXPECT_EQ(first.drain(loop), std::optional<int>(0)) << first.err;
  EXPECT_EQ(mode_of(socket_path("api")), 0u);
}

TEST_F(Control, BadRequestsGetAnErrorAndChangeNothing) {
  uvc_test::TestLoop loop;
  CliRun cli(loop, http_cluster({"-i", "2", "--name", "web"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }, 60000)) << cli.err;
  std::string path = socket_path("web");
  std::vector<std::pair<std::string, std::string>> cases = {
      {"not json\n", "bad-request"},
      {"[1,2]\n", "bad-request"},
      {"{\"nocmd\":1}\n", "bad-request"},
      {"{\"cmd\":7}\n", "bad-request"},
      {"{\"cmd\":\"explode\"}\n", "unknown-command"},
      {"{\"cmd\":\"scale\"}\n", "bad-argument"},
      {"{\"cmd\":\"scale\",\"instances\":-1}\n", "bad-argument"},
      {"{\"cmd\":\"scale\",\"instances\":\"3\"}\n", "bad-argument"},
      {"{\"cmd\":\"scale\",\"instances\":5000}\n", "bad-argument"},
      {"{\"cmd\":\"stop\",\"pad\":\"" + std::string(5000, 'x') + "\"}\n", "too-large"},
      {std::string(100000, 'x'), "too-large"},
  };
  for (auto& [request, code] : cases) {
    std::string reply;
    ASSERT_TRUE(uvc_test::run_client(loop, [&] { reply = raw_request(path, request); }));
    EXPECT_EQ(error_code(reply), code) << request.substr(0, 60);
  }
  // Nothing changed: the same two workers, no reload, scale or drain.
  auto status = ctl(loop, {"status", "web", "--json"});
  ASSERT_EQ(status.status, 0) << status.err;
  Json s = Json::parse(status.out);
  ASSERT_EQ(s["workers"].size(), 2u);
  EXPECT_EQ(cli.count("fork"), 2);
  EXPECT_EQ(cli.count("exit"), 0);
  EXPECT_EQ(cli.count("reload"), 0);
  EXPECT_EQ(cli.count("drain"), 0);
  EXPECT_FALSE(cli.closed);
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
}

// Another user reaches nothing: the socket's permissions stop it first, and with those opened
// up the server's SO_PEERCRED check still refuses it (exit 4) without acting on the request.
TEST_F(Control, PeersOfAnotherUserAreRefused) {
  if (::geteuid() != 0 || ::access("/usr/bin/setpriv", X_OK) != 0)
    GTEST_SKIP() << "needs root and setpriv to act as another user";
  uvc_test::TestLoop loop;
  CliRun cli(loop, http_cluster({"-i", "2", "--name", "web"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }, 60000)) << cli.err;
  std::vector<std::string> as_nobody = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
  auto denied = ctl(loop, {"stop", "web"}, as_nobody);
  EXPECT_EQ(denied.status, 4) << denied.err;
  // Open the directory and the socket to everyone: only the peer check is left.
  ASSERT_EQ(::chmod(home_.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(socket_path("web").c_str(), 0666), 0);
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{{"stop", "web"}, {"scale", "web", "5"},
                                                                             {"status", "web"}}) {
    auto r = ctl(loop, args, as_nobody);
    EXPECT_EQ(r.status, 4) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("(forbidden)"), std::string::npos) << r.err;
  }
  EXPECT_EQ(cli.count("fork"), 2);
  EXPECT_EQ(cli.count("drain"), 0);
  EXPECT_EQ(ctl(loop, {"status", "web"}).status, 0);
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
}

// A worker whose RSS stays above --max-memory-restart is replaced as by a reload of its
// instance alone: the new worker listens before the old one is disconnected; the other
// instance is left alone.
TEST_F(Control, MaxMemoryRestartReplacesTheWorkerNewOneFirst) {
  constexpr uint64_t kLimit = 150u << 20;
  uvc_test::TestLoop loop;
  CliRun cli(loop, {"-i", "2", "--max-memory-restart", "150M", "--json", "--",
                    uvc_test::fixture("cluster_memory_worker.js"), "0", "127.0.0.1", "250"});
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-done") == 1; }, 90000)) << cli.err;
  auto* hit = cli.last("memory-restart");
  ASSERT_TRUE(hit);
  EXPECT_EQ(cli.count("memory-restart"), 1);
  EXPECT_EQ((*hit)["id"], 1);
  EXPECT_EQ((*hit)["instance"], 0);
  EXPECT_EQ((*hit)["limit_bytes"], kLimit);
  EXPECT_GT((*hit)["rss_bytes"].get<uint64_t>(), kLimit);
  EXPECT_EQ((*cli.last("reload"))["workers"], 1);
  auto* fork = cli.last("fork");
  ASSERT_TRUE(fork);
  EXPECT_EQ((*fork)["instance"], 0);
  int replacement = (*fork)["id"];
  EXPECT_LT(cli.index_of("memory-restart", 1), cli.index_of("fork", replacement));
  EXPECT_LT(cli.index_of("listening", replacement), cli.index_of("disconnect", 1));
  EXPECT_EQ(cli.events[cli.index_of("exit", 1)]["exitedAfterDisconnect"], true);
  EXPECT_EQ(cli.index_of("exit", 2), SIZE_MAX) << "the other instance was left alone";
  EXPECT_EQ(live_workers(cli), 2);
  EXPECT_EQ(cli.count("restart"), 0);
  std::string body;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] {
    for (int i = 0; i < 4; ++i) body += uvc_test::http_body(uvc_test::http_get(cli.port()));
  }));
  EXPECT_EQ(body.find("worker 1 "), std::string::npos) << body;
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
}

// Prometheus text from --metrics-port (scraped with curl) and from `uvcluster metrics`, parsed
// by the Prometheus Python client's parser.
TEST_F(Control, MetricsAreValidPrometheusTextWithWorkersConnectionsAndLatency) {
  constexpr int kRequests = 6;
  uvc_test::TestLoop loop;
  CliRun cli(loop, http_cluster({"-i", "2", "--policy", "rr", "--name", "web", "--metrics-port", "0"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }, 60000)) << cli.err;
  auto* m = cli.last("metrics");
  ASSERT_TRUE(m);
  std::string url = "http://127.0.0.1:" + std::to_string((*m)["port"].get<int>());
  int port = cli.port();
  int answered = 0;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] {
    for (int i = 0; i < kRequests; ++i) answered += uvc_test::http_body(uvc_test::http_get(port)).rfind("instance ", 0) == 0;
  }));
  ASSERT_EQ(answered, kRequests);

  auto parse = [&](const std::string& text) {
    auto r = uvc_test::run_capture({"/usr/bin/python3", uvc_test::fixture("parse_prometheus.py")}, text);
    EXPECT_EQ(r.status, 0) << r.err << text;
    return Json::parse(r.out, nullptr, false);
  };
  auto samples = [](const Json& parsed, const std::string& name) {
    std::vector<Json> out;
    for (auto& s : parsed["samples"])
      if (s["name"] == name) out.push_back(s);
    return out;
  };
  auto scraped = run_async(loop, {"/usr/bin/curl", "-sS", "-f", url + "/metrics"});
  ASSERT_EQ(scraped.status, 0) << scraped.err;
  Json parsed = parse(scraped.out);
  ASSERT_FALSE(parsed.is_discarded());

  std::map<std::string, double> by_state;
  for (auto& s : samples(parsed, "uvcluster_workers")) by_state[s["labels"]["state"]] = s["value"];
  EXPECT_EQ(by_state["up"], 2);
  EXPECT_EQ(by_state.size(), 5u) << "every state is listed";
  auto conns = samples(parsed, "uvcluster_worker_connections_total");
  ASSERT_EQ(conns.size(), 2u);
  double handed = 0;
  for (auto& s : conns) handed += s["value"].get<double>();
  EXPECT_EQ(handed, kRequests);
  EXPECT_EQ(samples(parsed, "uvcluster_handoff_latency_seconds_count")[0]["value"], kRequests);
  auto buckets = samples(parsed, "uvcluster_handoff_latency_seconds_bucket");
  ASSERT_GE(buckets.size(), 2u);
  double previous = 0;
  for (auto& b : buckets) {
    EXPECT_GE(b["value"].get<double>(), previous) << "buckets are cumulative";
    previous = b["value"];
  }
  EXPECT_EQ(buckets.back()["labels"]["le"], "+Inf");
  EXPECT_EQ(buckets.back()["value"], kRequests);
  EXPECT_GT(samples(parsed, "uvcluster_handoff_latency_seconds_sum")[0]["value"].get<double>(), 0);
  EXPECT_EQ(samples(parsed, "uvcluster_rr_queue_length").size(), 1u);
  EXPECT_EQ(samples(parsed, "uvcluster_restarts_total")[0]["value"], 0);
  for (const char* per_worker : {"uvcluster_worker_cpu_seconds_total", "uvcluster_worker_resident_memory_bytes"})
    EXPECT_EQ(samples(parsed, per_worker).size(), 2u) << per_worker;
  for (auto& s : samples(parsed, "uvcluster_worker_resident_memory_bytes")) EXPECT_GT(s["value"].get<double>(), 1 << 20);
  EXPECT_GT(samples(parsed, "uvcluster_primary_resident_memory_bytes")[0]["value"].get<double>(), 0);
  EXPECT_EQ(parsed["families"]["uvcluster_handoff_latency_seconds"], "histogram");

  auto missing = run_async(loop, {"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "/nope"});
  EXPECT_EQ(missing.out, "404");

  auto text = ctl(loop, {"metrics", "web"});
  ASSERT_EQ(text.status, 0) << text.err;
  Json via_socket = parse(text.out);
  ASSERT_FALSE(via_socket.is_discarded());
  EXPECT_EQ(samples(via_socket, "uvcluster_worker_connections_total").size(), 2u);
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
}

// The server's other bounds, on the library directly (short limits): a client that sends
// nothing is answered `timeout`, one over the connection limit `busy`; a request still works.
TEST_F(Control, SilentAndSurplusClientsAreCutOff) {
  uvc_test::TestLoop loop;
  auto sup = cluster::Supervisor::create(loop, {.primary = {.exec = "/bin/true"}});  // never started
  auto server = cluster::ControlServer::start(
      loop, sup, {.name = "lib", .directory = home_, .request_timeout_ms = 3000, .max_clients = 2});
  ASSERT_TRUE(server.ok()) << server.error().message;
  std::string path = socket_path("lib");
  std::vector<std::string> replies;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] {
    std::vector<Fd> clients;  // all three connected long before the first timeout
    for (int i = 0; i < 3; ++i) clients.push_back(connect_to(path));
    for (auto& c : clients) replies.push_back(c ? read_reply(c.get()) : "connect failed");
  }));
  std::map<std::string, int> codes;
  for (auto& r : replies) ++codes[error_code(r)];
  EXPECT_EQ(codes["timeout"], 2) << replies[0] << replies[1] << replies[2];
  EXPECT_EQ(codes["busy"], 1);
  std::string status;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] { status = raw_request(path, "{\"cmd\":\"status\"}\n"); }));
  EXPECT_EQ(Json::parse(status)["status"]["name"], "lib") << status;
  (*server)->close();
  EXPECT_EQ(mode_of(path), 0u);
}
