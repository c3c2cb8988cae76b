// `uvcluster run`: the C++ primary in front of unmodified Node servers. Faults (worker killed
// under load, bogus messages, never online, crash loop), drain with requests in flight, reload,
// port in use, usage errors. Event-driven: the test follows the --json event stream.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "cli_run.hpp"
#include "http_client.hpp"
#include "support.hpp"
#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/process.hpp"

using namespace uvcluster;
using Json = nlohmann::json;

namespace {

using Cli = uvc_test::CliRun;

bool pid_alive(int pid) { return ::kill(pid, 0) == 0; }

std::vector<int> pids_of(const Cli& c) {
  std::vector<int> pids;
  for (auto& e : c.events)
    if (e.value("event", "") == "fork") pids.push_back(e["pid"].get<int>());
  return pids;
}

std::string one_body(uvc_test::TestLoop& loop, int port) {
  std::string body;
  EXPECT_TRUE(uvc_test::run_client(loop, [&] { body = uvc_test::http_body(uvc_test::http_get(port)); }));
  return body;
}

}  // namespace

TEST(ClusterCli, UsageErrorsAreOneLinePlusHelpAndExit2) {
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"run"}, {"run", "--policy", "fast", "--", "x.js"}, {"run", "-i", "0", "--", "x.js"},
           {"run", "--bogus"}, {"run", "--", "node"}, {"run", "--kill-signal", "SIGNOPE", "--", "x.js"},
           {"run", "--env", "NOEQUALS", "--", "x.js"}, {"run", "--kill-timeout", "-1", "--", "x.js"},
           {"run", "--log-max-size", "10X", "--", "x.js"}, {"run", "--log-files", "-1", "--", "x.js"},
           {"run", "--env-set", "production", "--", "x.js"}, {"run", "--log"}}) {
    args.insert(args.begin(), uvc_test::cli());
    auto r = uvc_test::run_capture(args);
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_EQ(r.err.rfind("uvcluster run: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find("usage: uvcluster run"), std::string::npos);
  }
  auto help = uvc_test::run_capture({uvc_test::cli(), "run", "--help"});
  EXPECT_EQ(help.status, 0);
  for (const char* word : {"--policy", "reuseport", "exclusive", "--restart", "--grace", "--json", "SIGHUP",
                           "--kill-signal", "--kill-timeout", "--min-uptime", "--max-restarts",
                           "--restart-window", "--wait-ready", "--listen-timeout", "--instance-var", "--env",
                           "sticky", "--name", "--raw", "--time", "--log", "--error-log", "--log-max-size",
                           "--log-files", "--config", "--env-set"})
    EXPECT_NE(help.out.find(word), std::string::npos) << word;
}

class PortInUse : public ::testing::TestWithParam<const char*> {};

TEST_P(PortInUse, IsAOneLineErrorAndNonZeroExitNotAHang) {
  auto taken = cluster::bind_tcp({.address = "127.0.0.1", .port = 0});
  ASSERT_TRUE(taken.ok());
  ASSERT_TRUE(cluster::listen_fd(taken->get(), 0).ok());
  int port = cluster::local_address(taken->get())->port;
  auto r = uvc_test::run_capture({uvc_test::cli(), "run", "-i", "2", "--policy", GetParam(), "--",
                                  uvc_test::fixture("cluster_http_worker.js"), std::to_string(port),
                                  "127.0.0.1"});
  EXPECT_EQ(r.status, 1);
  std::string expect = "uvcluster run: cannot listen on 127.0.0.1:" + std::to_string(port) + ": EADDRINUSE\n";
  EXPECT_NE(r.err.find(expect), std::string::npos) << r.err;
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

INSTANTIATE_TEST_SUITE_P(Policies, PortInUse, ::testing::Values("rr", "none", "reuseport"),
                         [](const auto& info) { return std::string(info.param); });

TEST(ClusterCli, WorkerKilledUnderLoadIsReplacedAndNoRequestIsLost) {
  uvc_test::TestLoop loop;
  Cli cli(loop, {"-i", "2", "--policy", "rr", "--json", "--", "node",
                 uvc_test::fixture("cluster_http_worker.js"), "0", "127.0.0.1"});
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }));
  int port = cli.port();
  int victim = pids_of(cli)[0];
  int failures = 0, answered = 0;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] {
    for (int i = 0; i < 60; ++i) {
      if (i == 20) ::kill(victim, SIGKILL);  // between requests: none of ours is on it
      std::string body = uvc_test::http_body(uvc_test::http_get(port));
      (body.rfind("worker ", 0) == 0 ? answered : failures)++;
    }
  }));
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(answered, 60);
  // The primary survived, restarted the worker, and the new one listens on the same port.
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 3; }));
  EXPECT_EQ(cli.count("restart"), 1);
  EXPECT_EQ(cli.port(), port);
  auto* ex = cli.last("exit");
  ASSERT_TRUE(ex);
  EXPECT_EQ((*ex)["signal"], "SIGKILL");
  EXPECT_EQ((*ex)["exitedAfterDisconnect"], false);
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
  auto* stats = cli.last("stats");
  ASSERT_TRUE(stats);
  EXPECT_EQ((*stats)["connections"], 60);
  for (int pid : pids_of(cli)) EXPECT_FALSE(pid_alive(pid)) << pid;
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

TEST(ClusterCli, BogusMessagesFromAWorkerAreIgnored) {
  uvc_test::TestLoop loop;
  Cli cli(loop, {"-i", "2", "--json", "--", uvc_test::fixture("cluster_bogus_worker.js"), "0",
                 "127.0.0.1"});
  ASSERT_TRUE(loop.run_until([&] {
    int n = 0;
    for (auto& e : cli.events) n += e.value("event", "") == "listening" && e.value("port", 0) > 0;
    return n == 2;
  }));
  int port = 0;
  for (auto& e : cli.events)
    if (e.value("event", "") == "listening" && e.value("port", 0) > 0) port = e["port"];
  int answered = 0;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] {
    for (int i = 0; i < 10; ++i) answered += uvc_test::http_body(uvc_test::http_get(port)).rfind("worker ", 0) == 0;
  }));
  EXPECT_EQ(answered, 10);
  EXPECT_EQ(cli.count("exit"), 0);
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
}

TEST(ClusterCli, WorkerThatNeverComesOnlineIsKilledNotWaitedForever) {
  uvc_test::TestLoop loop;
  Cli cli(loop, {"-i", "1", "--startup-timeout", "300", "--restart", "never", "--json", "--",
                 "/bin/sleep", "30"});
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 20000));
  EXPECT_EQ(cli.count("online"), 0);
  EXPECT_EQ(cli.count("startup-timeout"), 1);
  auto* ex = cli.last("exit");
  ASSERT_TRUE(ex);
  EXPECT_EQ((*ex)["signal"], "SIGKILL");
  EXPECT_EQ(cli.exit->code, std::optional<int>(1));
  for (int pid : pids_of(cli)) EXPECT_FALSE(pid_alive(pid));
}

TEST(ClusterCli, CrashLoopBacksOffExponentially) {
  uvc_test::TestLoop loop;
  // A long --min-uptime: a slow start on a loaded machine must not count as a stable run.
  Cli cli(loop, {"-i", "1", "--min-uptime", "600000", "--json", "--", uvc_test::fixture("cluster_crash_worker.js")});
  ASSERT_TRUE(loop.run_until([&] { return cli.count("restart") >= 3; }));
  std::vector<int> delays;
  for (auto& e : cli.events)
    if (e.value("event", "") == "restart") delays.push_back(e["delay_ms"]);
  EXPECT_EQ(delays[0], 100);
  EXPECT_EQ(delays[1], 200);
  EXPECT_EQ(delays[2], 400);
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }));
  for (int pid : pids_of(cli)) EXPECT_FALSE(pid_alive(pid));
}

TEST(ClusterCli, SigtermDrainsRequestsInFlight) {
  uvc_test::TestLoop loop;
  Cli cli(loop, {"-i", "2", "--grace", "5000", "--json", "--",
                 uvc_test::fixture("cluster_slow_worker.js"), "0", "127.0.0.1"});
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }));
  int port = cli.port();
  std::atomic<int> ok{0};
  uv_async_t wake;
  ASSERT_EQ(uv_async_init(loop, &wake, [](uv_async_t*) {}), 0);
  std::vector<std::thread> clients;
  for (int i = 0; i < 2; ++i)
    clients.emplace_back([&] {
      if (uvc_test::http_body(uvc_test::http_get(port)).find("slow") != std::string::npos) ++ok;
      uv_async_send(&wake);
    });
  // Both requests reached a worker (it printed "got"): now drain.
  ASSERT_TRUE(loop.run_until([&] {
    size_t n = 0, p = 0;
    while ((p = cli.err.find("got\n", p)) != std::string::npos) ++n, ++p;
    return n == 2;
  }));
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed && ok == 2; }));
  for (auto& t : clients) t.join();
  uv_close(reinterpret_cast<uv_handle_t*>(&wake), nullptr);
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(cli.exit->code, std::optional<int>(0)) << cli.err;
  for (auto& e : cli.events)
    if (e.value("event", "") == "exit") {
      EXPECT_EQ(e["exitedAfterDisconnect"], true);
    }
  EXPECT_EQ(cli.count("kill"), 0);
}

TEST(ClusterCli, SighupReloadsOneWorkerAtATimeNewListensBeforeOldDisconnects) {
  uvc_test::TestLoop loop;
  Cli cli(loop, {"-i", "2", "--json", "--", uvc_test::fixture("cluster_http_worker.js"), "0",
                 "127.0.0.1"});
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }));
  cli.child->kill("SIGHUP");
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-done") == 1; }));
  EXPECT_LT(cli.index_of("listening", 3), cli.index_of("disconnect", 1));
  EXPECT_LT(cli.index_of("exit", 1), cli.index_of("fork", 4));  // one at a time
  EXPECT_LT(cli.index_of("listening", 4), cli.index_of("disconnect", 2));
  EXPECT_EQ(cli.count("restart"), 0);
  std::string body = one_body(loop, cli.port());
  EXPECT_EQ(body.rfind("worker ", 0), 0u);
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0));
}

namespace {

std::vector<std::string> supervised(std::vector<std::string> options, std::vector<std::string> flags) {
  options.push_back("--");
  options.push_back(uvc_test::fixture("supervised_worker.js"));
  options.push_back("0");
  options.push_back("127.0.0.1");
  options.insert(options.end(), flags.begin(), flags.end());
  return options;
}

int live_workers(const Cli& c) { return c.count("fork") - c.count("exit"); }

size_t count_of(const std::string& text, const std::string& word) {
  size_t n = 0;
  for (size_t p = 0; (p = text.find(word, p)) != std::string::npos; p += word.size()) ++n;
  return n;
}

}  // namespace

// A disconnected Node worker with a timer never exits by itself: the stop must signal it.
TEST(ClusterCli, ReloadStopsWorkersThatHoldATimer) {
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "2", "--kill-timeout", "60000", "--json"}, {"timer"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }));
  cli.child->kill("SIGHUP");
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-done") == 1; }, 60000)) << cli.err;
  for (int id : {1, 2}) {
    size_t i = cli.index_of("exit", id);
    ASSERT_NE(i, SIZE_MAX);
    EXPECT_EQ(cli.events[i]["signal"], "SIGTERM");
    EXPECT_EQ(cli.events[i]["exitedAfterDisconnect"], true);
  }
  EXPECT_EQ(live_workers(cli), 2);
  EXPECT_EQ(cli.count("kill"), 0);
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
}

// The workers' own SIGTERM handlers run on a drain: the shutdown real apps expect.
TEST(ClusterCli, DrainSignalsWorkersAndTheirHandlersRun) {
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "2", "--grace", "60000", "--kill-timeout", "60000", "--json"},
                           {"timer", "term-handler"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }));
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 60000));
  EXPECT_EQ(count_of(cli.err, "sigterm "), 2u) << cli.err;
  EXPECT_EQ(cli.count("kill"), 0);
  EXPECT_EQ(cli.exit->code, std::optional<int>(0)) << cli.err;
}

TEST(ClusterCli, KillTimeoutSigkillsAWorkerThatIgnoresTheSignal) {
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "1", "--kill-timeout", "300", "--json"}, {"timer", "ignore-term"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 1; }));
  cli.child->kill("SIGHUP");
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-done") == 1; }, 60000)) << cli.err;
  auto* kill = cli.last("kill");
  ASSERT_TRUE(kill);
  EXPECT_EQ((*kill)["id"], 1);
  EXPECT_EQ((*kill)["signal"], "SIGKILL");
  EXPECT_EQ(cli.events[cli.index_of("exit", 1)]["signal"], "SIGKILL");
  EXPECT_EQ(live_workers(cli), 1);
  EXPECT_EQ(cli.drain(loop), std::optional<int>(1)) << "a worker needed SIGKILL: not a clean drain";
}

TEST(ClusterCli, SecondSighupDuringAReloadIsQueuedNotDropped) {
  uvc_test::TestLoop loop;
  // Old workers ignore SIGTERM and die only at the 1 s kill timeout: the reload surely lasts
  // until the second SIGHUP arrives.
  Cli cli(loop, supervised({"-i", "2", "--kill-timeout", "1000", "--json"}, {"timer", "ignore-term"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }));
  cli.child->kill("SIGHUP");
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload") == 1; }));
  cli.child->kill("SIGHUP");
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-done") == 2; }, 90000)) << cli.err;
  EXPECT_EQ(cli.count("reload-queued"), 1);
  EXPECT_EQ(cli.count("fork"), 6);  // 2 + 2 replacements per reload
  EXPECT_EQ(live_workers(cli), 2);
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 60000));
}

// A worker that crashes right after listening keeps backing off; after --max-restarts within
// the window its slot is `errored` and stays down.
TEST(ClusterCli, BackoffResetsOnlyAfterMinUptimeAndTooManyRestartsIsErrored) {
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "1", "--min-uptime", "600000", "--max-restarts", "3", "--json"},
                           {"crash-after-listen"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("errored") == 1; }, 60000)) << cli.err;
  std::vector<int> delays;
  for (auto& e : cli.events)
    if (e.value("event", "") == "restart") delays.push_back(e["delay_ms"]);
  EXPECT_EQ(delays, (std::vector<int>{100, 200, 400}));
  EXPECT_EQ(cli.count("listening"), 4) << "each worker crashed after it listened";
  EXPECT_EQ((*cli.last("errored"))["instance"], 0);
  EXPECT_EQ(cli.count("fork"), 4);
  EXPECT_EQ(live_workers(cli), 0);
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }));
  EXPECT_EQ(cli.count("fork"), 4);
  EXPECT_EQ(cli.exit->code, std::optional<int>(1));
  auto* stats = cli.last("stats");
  ASSERT_TRUE(stats);
  EXPECT_EQ((*stats)["workers"][0]["state"], "errored");
}

// A bad deploy: the replacement crashes. The old worker keeps the slot, nothing is restarted on
// top, and once the code is fixed a reload gives exactly -i workers.
TEST(ClusterCli, FailedReloadRollsBackAndTheCountNeverDrifts) {
  std::string flag_file = ::testing::TempDir() + "uvc_deploy_" + std::to_string(::getpid());
  auto deploy = [&](const char* what) {
    FILE* f = std::fopen(flag_file.c_str(), "w");
    ASSERT_TRUE(f);
    std::fputs(what, f);
    std::fclose(f);
  };
  deploy("ok");
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "2", "--json"}, {"crash-if", flag_file}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }));
  deploy("crash");
  cli.child->kill("SIGHUP");
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-failed") == 1; }, 60000)) << cli.err;
  deploy("ok");
  cli.child->kill("SIGHUP");
  ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-done") == 1; }, 60000)) << cli.err;
  EXPECT_EQ(cli.count("restart"), 0);
  EXPECT_EQ(live_workers(cli), 2);
  std::string body = one_body(loop, cli.port());
  EXPECT_EQ(body.rfind("instance ", 0), 0u) << body;
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
  std::remove(flag_file.c_str());
}

// SIGTERM while a restart is pending: exit now (not when the backoff ends), non-zero because the
// cluster was not serving; the stats line keeps aggregates, not one entry per dead worker.
TEST(ClusterCli, SigtermDuringACrashLoopExitsAtOnceAndNonZero) {
  uvc_test::TestLoop loop;
  Cli cli(loop, {"-i", "1", "--grace", "1000", "--json", "--", uvc_test::fixture("cluster_crash_worker.js")});
  ASSERT_TRUE(loop.run_until([&] { return cli.count("restart") >= 5; }, 60000));  // next delay ≥ 1.6 s
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 60000));
  size_t drain = 0;
  for (size_t i = 0; i < cli.events.size(); ++i)
    if (cli.events[i].value("event", "") == "drain") drain = i;
  ASSERT_GT(drain, 0u);
  for (size_t i = drain; i < cli.events.size(); ++i) EXPECT_NE(cli.events[i].value("event", ""), "fork");
  EXPECT_EQ(cli.exit->code, std::optional<int>(1)) << cli.err;
  auto* stats = cli.last("stats");
  ASSERT_TRUE(stats);
  EXPECT_EQ((*stats)["workers"].size(), 1u);
  EXPECT_EQ((*stats)["exits"], cli.count("exit"));
}

// A worker's second server on a busy port is the worker's business (it handles the error):
// the cluster keeps serving on its main port.
TEST(ClusterCli, ListenFailureOfAServingClusterDoesNotDrainIt) {
  auto taken = cluster::bind_tcp({.address = "127.0.0.1", .port = 0});
  ASSERT_TRUE(taken.ok());
  ASSERT_TRUE(cluster::listen_fd(taken->get(), 0).ok());
  std::string busy = std::to_string(cluster::local_address(taken->get())->port);
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "2", "--json"}, {"second-port", busy}));
  ASSERT_TRUE(loop.run_until([&] { return count_of(cli.err, "admin EADDRINUSE") == 2; }, 60000)) << cli.err;
  EXPECT_EQ(cli.count("error"), 2);
  EXPECT_EQ(cli.count("drain"), 0);
  std::string body = one_body(loop, cli.port());
  EXPECT_EQ(body.rfind("instance ", 0), 0u) << body;
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
}

// 64 KiB lines from four workers through the primary's one stderr: every line arrives whole,
// behind its own worker's prefix.
TEST(ClusterCli, WorkerOutputLinesAreNeverTorn) {
  constexpr int kWorkers = 4, kLines = 40, kSize = 65536;
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", std::to_string(kWorkers), "--json"},
                           {"lines", std::to_string(kLines), std::to_string(kSize)}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == kWorkers; }, 60000));
  // Workers write before they listen, but their pipe may still hold the last lines.
  ASSERT_TRUE(loop.run_until([&] { return count_of(cli.err, "\n") >= size_t(kWorkers * kLines); }, 60000));
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 60000));
  std::map<char, int> whole;
  int torn = 0;
  size_t start = 0;
  for (size_t nl; (nl = cli.err.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(cli.err.data() + start, nl - start);
    if (line.size() < 1000) continue;  // not one of the big lines
    size_t bar = line.find(" | ");
    std::string_view text = bar == std::string_view::npos ? line : line.substr(bar + 3);
    bool same = !text.empty() && text.find_first_not_of(text[0]) == std::string_view::npos;
    std::string prefix = std::to_string(text.empty() ? 0 : text[0] - 'a') + "|supervised_worker | ";
    if (text.size() == size_t(kSize) && same && line.substr(0, bar + 3) == prefix) ++whole[text[0]];
    else ++torn;
  }
  EXPECT_EQ(torn, 0);
  for (char c : {'a', 'b', 'c', 'd'}) EXPECT_EQ(whole[c], kLines) << c;
}

namespace {

// A fresh directory for a test's files, removed with what is in it.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/uvc-ops-XXXXXX";
    path = ::mkdtemp(tmpl) ? tmpl : "";
    EXPECT_FALSE(path.empty());
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string file(const std::string& name) const { return path + "/" + name; }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(file(name)) << text;
    return file(name);
  }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

}  // namespace

// --log/--error-log: each stream in its file, every line whole behind its prefix and timestamp;
// the error log rotates by size and keeps --log-files old files; --json's stdout stays events only.
TEST(ClusterCli, LogFilesArePrefixedTimestampedAndRotatedBySize) {
  constexpr int kLines = 30, kSize = 1000, kMax = 4096;
  TempDir dir;
  std::string out = dir.file("out.log"), err = dir.file("err.log");
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "2", "--name", "web", "--time", "--log", out, "--error-log", err,
                            "--log-max-size", "4K", "--log-files", "2", "--json"},
                           {"env", "NODE_APP_INSTANCE", "lines", std::to_string(kLines), std::to_string(kSize)}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }, 60000));
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
  for (auto& e : cli.events) EXPECT_FALSE(e.is_discarded()) << "a worker line on --json's stdout";
  EXPECT_EQ(cli.out_buf, "");
  EXPECT_EQ(cli.err.find("env NODE_APP_INSTANCE"), std::string::npos) << "stdout lines belong in " << out;
  EXPECT_EQ(cli.err.find("aaaa"), std::string::npos) << "stderr lines belong in " << err;

  const std::regex line_re(R"(([01])\|web \| \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z: (.*))");
  std::smatch m;
  std::set<std::string> instances;
  for (auto& l : lines_of(read_file(out))) {
    ASSERT_TRUE(std::regex_match(l, m, line_re)) << l;
    EXPECT_EQ(m[2].str(), "env NODE_APP_INSTANCE=" + m[1].str());
    instances.insert(m[1]);
  }
  EXPECT_EQ(instances, (std::set<std::string>{"0", "1"}));
  // 60 lines of ~1040 bytes: err.log, err.log.1 and err.log.2 each hold the last whole lines.
  int kept = 0;
  for (const std::string& f : {err, err + ".1", err + ".2"}) {
    std::string text = read_file(f);
    EXPECT_GT(text.size(), 0u) << f;
    EXPECT_LE(text.size(), size_t(kMax)) << f;
    for (auto& l : lines_of(text)) {
      ASSERT_TRUE(std::regex_match(l, m, line_re)) << f << ": " << l.substr(0, 80);
      std::string letters = m[2];
      char letter = char('a' + std::stoi(m[1]));
      EXPECT_EQ(letters, std::string(kSize, letter)) << f << ": torn or misattributed";
      ++kept;
    }
  }
  EXPECT_GE(kept, 6);
  EXPECT_FALSE(std::filesystem::exists(err + ".3"));
}

// --raw drops the prefix; a log file that cannot be opened is a one-line error, exit 2.
TEST(ClusterCli, RawOutputHasNoPrefixAndAnUnopenableLogIsExit2) {
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "1", "--raw", "--json"}, {"env", "NODE_APP_INSTANCE"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 1 && count_of(cli.err, "\n") >= 1; }));
  EXPECT_EQ(cli.err.rfind("env NODE_APP_INSTANCE=0\n", 0), 0u) << cli.err;
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0));
  auto r = uvc_test::run_capture({uvc_test::cli(), "run", "--log", "/nonexistent/dir/out.log", "--", "x.js"});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "uvcluster run: cannot open log file: open /nonexistent/dir/out.log ENOENT\n") << r.err;
}

// --config app.json: the file's options, script (relative: beside the file) and args, env then
// the chosen env set; a flag on the command line overrides the file.
TEST(ClusterCli, ConfigFileGivesOptionsEnvSetsAndTheCommandLineOverridesIt) {
  TempDir dir;
  dir.write("server.js", read_file(uvc_test::fixture("supervised_worker.js")));
  Json conf = {{"name", "api"}, {"script", "server.js"},
               {"args", {"0", "127.0.0.1", "env", "NODE_APP_INSTANCE,GREETING,MODE"}}, {"instances", 2},
               {"policy", "rr"}, {"kill_timeout", 3000}, {"wait_ready", false},
               {"env", {{"GREETING", "hello"}, {"MODE", "dev"}}}, {"env_production", {{"MODE", "prod"}}}};
  std::string path = dir.write("app.json", conf.dump());
  {
    uvc_test::TestLoop loop;
    Cli cli(loop, {"--config", path, "--env-set", "production", "--json"});
    ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2 && count_of(cli.err, "\n") >= 6; }));
    EXPECT_EQ(count_of(cli.err, "|api | env MODE=prod\n"), 2u) << cli.err;
    EXPECT_EQ(count_of(cli.err, "|api | env GREETING=hello\n"), 2u) << cli.err;
    EXPECT_EQ(count_of(cli.err, "1|api | env NODE_APP_INSTANCE=1\n"), 1u) << cli.err;
    EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
  }
  uvc_test::TestLoop loop;
  Cli cli(loop, {"--config", path, "-i", "1", "--env", "MODE=cli", "--name", "x", "--json"});
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 1 && count_of(cli.err, "\n") >= 3; }));
  EXPECT_EQ(cli.count("fork"), 1);
  EXPECT_NE(cli.err.find("0|x | env MODE=cli\n"), std::string::npos) << cli.err;
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
}

// A PM2 ecosystem.config.js is read through node; the fields we do not support are named in one
// warning line.
TEST(ClusterCli, Pm2EcosystemFileRunsAndUnsupportedFieldsAreOneWarning) {
  TempDir dir;
  std::string out = dir.file("api-out.log");
  std::string eco = dir.write("ecosystem.config.js", R"(module.exports = {
  apps: [{
    name: 'api',
    script: ')" + uvc_test::fixture("supervised_worker.js") + R"(',
    args: '0 127.0.0.1 env MODE,NODE_APP_INSTANCE ready',
    instances: 2,
    exec_mode: 'cluster',
    wait_ready: true,
    listen_timeout: '20s',
    kill_timeout: 3000,
    out_file: ')" + out + R"(',
    watch: true,
    cron_restart: '0 0 * * *',
    env: { MODE: 'dev' },
    env_production: { MODE: 'prod' },
  }],
};
)");
  uvc_test::TestLoop loop;
  Cli cli(loop, {"--config", eco, "--env-set", "production", "--json"});
  ASSERT_TRUE(loop.run_until([&] { return cli.count("ready") == 2; }, 60000)) << cli.err;
  EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
  EXPECT_EQ(count_of(cli.err, "uvcluster run: warning: " + eco +
                                  ": ignoring fields uvcluster does not support: cron_restart, watch\n"),
            1u)
      << cli.err;
  std::string log = read_file(out);
  EXPECT_EQ(count_of(log, "|api | env MODE=prod\n"), 2u) << log;
}

// Bad config files: one line naming the file and what is wrong, exit 2, nothing started.
TEST(ClusterCli, BadConfigFilesAreOneLineErrorsAndExit2) {
  TempDir dir;
  std::string script = uvc_test::fixture("supervised_worker.js");
  struct Case {
    std::string name, text, env_set, expect;
  };
  std::vector<Case> cases = {
      {"broken.json", "{\"instances\": 2,", "", "not valid JSON"},
      {"list.json", "[1, 2]", "", "\"apps\" must be a list of apps"},
      {"policy.json", R"({"policy": "fastest", "script": "x.js"})", "", "key \"policy\": --policy must be"},
      {"unknown.json", R"({"bogus_key": 1, "script": "x.js"})", "", "key \"bogus_key\": unknown option '--bogus-key'"},
      {"nested.json", R"({"instances": {"n": 2}})", "", "\"instances\" must be a string, number or boolean"},
      {"noset.json", R"({"script": "x.js", "env": {}})", "staging", "no \"env_staging\" for --env-set staging"},
      {"two.config.js", "module.exports = {apps: [{script: 'a.js'}, {script: 'b.js'}]};", "",
       "defines 2 apps; uvcluster run runs one"},
      {"syntax.config.js", "module.exports = {apps: [{script: 'a.js',}}", "", "node could not load it: SyntaxError"},
      {"missing.json", "", "", "cannot read it"},
  };
  for (auto& c : cases) {
    std::string path = c.name == "missing.json" ? dir.file(c.name) : dir.write(c.name, c.text);
    std::vector<std::string> argv = {uvc_test::cli(), "run", "--config", path};
    if (!c.env_set.empty()) argv.insert(argv.end(), {"--env-set", c.env_set});
    auto r = uvc_test::run_capture(argv);
    EXPECT_EQ(r.status, 2) << c.name << ": " << r.err;
    std::string first = r.err.substr(0, r.err.find('\n'));
    EXPECT_EQ(first.rfind("uvcluster run: " + path + ": ", 0), 0u) << c.name << ": " << first;
    EXPECT_NE(first.find(c.expect), std::string::npos) << c.name << ": " << first;
    EXPECT_EQ(r.err.find("\"event\":\"fork\""), std::string::npos) << c.name;
  }
}

// socket.io's polling transport sends each request on a new connection: under --policy sticky
// every one of a client's requests reaches the worker holding its session. 50 real socket.io
// clients from 10 source addresses: 0 failures, one worker per address. rr is run first and its
// failures printed (no assertion: how many fail depends on timing).
TEST(ClusterCli, StickyPolicyServesSocketIoPollingClientsWithoutFailures) {
  std::string modules = uvc_test::fixture("../../node_modules");
  if (!std::filesystem::exists(modules + "/socket.io-client/package.json"))
    GTEST_SKIP() << "socket.io is not installed: run `npm ci --no-audit --no-fund` (make test does)";
  for (std::string policy : {"rr", "sticky"}) {
    uvc_test::TestLoop loop;
    Cli cli(loop, {"-i", "4", "--policy", policy, "--json", "--", uvc_test::fixture("socketio_worker.js"), "0",
                   "127.0.0.1"});
    ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 4; }, 60000)) << cli.err;
    uvc_test::Captured r;
    ASSERT_TRUE(uvc_test::run_client(loop, [&] {
      r = uvc_test::run_capture({uvc_test::node(), uvc_test::fixture("socketio_clients.js"),
                                 std::to_string(cli.port()), "50", "10", "3"});
    }, 120000));
    Json result = Json::parse(r.out, nullptr, false);
    ASSERT_TRUE(result.is_object() && result.contains("failures")) << r.out << r.err;
    std::cout << "--policy " << policy << ": " << result["failures"] << " of 50 socket.io clients failed "
              << result["errors"].dump() << "\n";
    if (policy == "sticky") {
      EXPECT_EQ(result["failures"], 0) << r.out;
      for (auto& [address, pids] : result["pids_per_address"].items())
        EXPECT_EQ(pids.size(), 1u) << address << " reached " << pids.dump();
    }
    EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
  }
}

// NODE_APP_INSTANCE is the slot: a restarted worker gets its predecessor's number.
TEST(ClusterCli, InstanceNumbersAreStableAcrossRestartsAndEnvReachesWorkers) {
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "2", "--env", "GREETING=hi there", "--json"},
                           {"env", "NODE_APP_INSTANCE,GREETING"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 2; }));
  int victim = 0;
  for (auto& e : cli.events)
    if (e.value("event", "") == "fork" && e["instance"] == 0) victim = e["pid"];
  ASSERT_GT(victim, 0);
  ::kill(victim, SIGKILL);
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 3; }));
  auto* fork = cli.last("fork");
  EXPECT_EQ((*fork)["instance"], 0);
  EXPECT_EQ(count_of(cli.err, "env NODE_APP_INSTANCE=0\n"), 2u) << cli.err;
  EXPECT_EQ(count_of(cli.err, "env NODE_APP_INSTANCE=1\n"), 1u) << cli.err;
  EXPECT_EQ(count_of(cli.err, "env GREETING=hi there\n"), 3u) << cli.err;
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 60000));
}

TEST(ClusterCli, InstanceVarRenamesTheVariable) {
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "1", "--instance-var", "SLOT", "--json"}, {"env", "SLOT,NODE_APP_INSTANCE"}));
  ASSERT_TRUE(loop.run_until([&] { return cli.count("listening") == 1 && count_of(cli.err, "\n") >= 2; }));
  EXPECT_NE(cli.err.find("env SLOT=0\n"), std::string::npos) << cli.err;
  EXPECT_NE(cli.err.find("env NODE_APP_INSTANCE=undefined\n"), std::string::npos) << cli.err;
  cli.child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 60000));
}

// --wait-ready: a reload moves on when the new worker says `ready`; one that never does is
// killed after --listen-timeout.
TEST(ClusterCli, WaitReadyGatesReloadAndListenTimeoutKillsWorkersThatNeverGetReady) {
  {
    uvc_test::TestLoop loop;
    Cli cli(loop, supervised({"-i", "2", "--wait-ready", "--json"}, {"ready"}));
    ASSERT_TRUE(loop.run_until([&] { return cli.count("ready") == 2; }));
    cli.child->kill("SIGHUP");
    ASSERT_TRUE(loop.run_until([&] { return cli.count("reload-done") == 1; }, 60000));
    EXPECT_LT(cli.index_of("ready", 3), cli.index_of("disconnect", 1));
    EXPECT_LT(cli.index_of("ready", 4), cli.index_of("disconnect", 2));
    EXPECT_EQ(cli.drain(loop), std::optional<int>(0)) << cli.err;
  }
  uvc_test::TestLoop loop;
  Cli cli(loop, supervised({"-i", "1", "--wait-ready", "--listen-timeout", "2000", "--restart", "never", "--json"}, {}));
  ASSERT_TRUE(loop.run_until([&] { return cli.closed; }, 60000));
  EXPECT_EQ(cli.count("ready"), 0);  // it listened (load permitting) but never said ready
  EXPECT_EQ(cli.count("startup-timeout"), 1);
  EXPECT_EQ((*cli.last("exit"))["signal"], "SIGKILL");
  EXPECT_EQ(cli.exit->code, std::optional<int>(1));
}

// On a terminal the status line is redrawn every second; worker output must start on a cleared
// line, never glued to the status text. `script` gives the CLI a terminal.
TEST(ClusterCli, StatusLineIsClearedBeforeWorkerOutput) {
  std::string cmd = uvc_test::cli() + " run -i 1 --restart never -- " + uvc_test::fixture("supervised_worker.js") +
                    " 0 127.0.0.1 tick 6 500";
  auto r = uvc_test::run_capture({"/usr/bin/script", "-qfec", cmd, "/dev/null"});
  ASSERT_NE(r.out.find("[uvcluster rr]"), std::string::npos) << "no status line was drawn: " << r.out;
  size_t ticks = 0;
  const std::string tick = "0|supervised_worker | tick ";
  for (size_t p = 0; (p = r.out.find(tick, p)) != std::string::npos; p += tick.size(), ++ticks) {
    std::string before = r.out.substr(p >= 3 ? p - 3 : 0, std::min<size_t>(p, 3));
    EXPECT_TRUE(before.empty() || before == "\033[K" || before.back() == '\n')
        << "tick glued to: " << Json(r.out.substr(p > 80 ? p - 80 : 0, 80)).dump();
  }
  EXPECT_EQ(ticks, 6u) << r.out;
}
