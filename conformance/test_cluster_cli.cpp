// `uvcluster run`: the C++ primary in front of unmodified Node servers. Faults (worker killed
// under load, bogus messages, never online, crash loop), drain with requests in flight, reload,
// port in use, usage errors. Event-driven: the test follows the --json event stream.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
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
           {"run", "--env", "NOEQUALS", "--", "x.js"}, {"run", "--kill-timeout", "-1", "--", "x.js"}}) {
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
                           "--restart-window", "--wait-ready", "--listen-timeout", "--instance-var", "--env"})
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
  uv_async_init(loop, &wake, [](uv_async_t*) {});
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

// 64 KiB lines from four workers through the primary's one stderr: every line arrives whole.
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
    bool same = line.find_first_not_of(line[0]) == std::string_view::npos;
    if (line.size() == size_t(kSize) && same) ++whole[line[0]];
    else ++torn;
  }
  EXPECT_EQ(torn, 0);
  for (char c : {'a', 'b', 'c', 'd'}) EXPECT_EQ(whole[c], kLines) << c;
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
  for (size_t p = 0; (p = r.out.find("tick ", p)) != std::string::npos; p += 5, ++ticks) {
    std::string before = r.out.substr(p >= 3 ? p - 3 : 0, std::min<size_t>(p, 3));
    EXPECT_TRUE(before.empty() || before == "\033[K" || before.back() == '\n')
        << "tick glued to: " << Json(r.out.substr(p > 80 ? p - 80 : 0, 80)).dump();
  }
  EXPECT_EQ(ticks, 6u) << r.out;
}
