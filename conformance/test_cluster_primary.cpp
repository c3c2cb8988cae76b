// C++ primary (cluster::Primary) + unmodified Node http workers: every request answered, every
// worker serves some, events and states as Node's primary reports them (docs/protocol.md §4.2).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "http_client.hpp"
#include "support.hpp"
#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/cluster/sockets.hpp"

using namespace uvcluster;
using namespace uvcluster::cluster;

namespace {

struct Trace {
  std::map<int, std::vector<std::string>> events;  // per worker id, in order
  std::map<int, std::string> state_at_disconnect;
  std::map<int, std::optional<bool>> flag_at_exit;
  int listening = 0;
  int exited = 0;
  int port = 0;
};

// Answers to serial GETs, counted per answering worker ("worker <id> ..." bodies).
struct Served {
  std::map<std::string, int> per_worker;
  int failures = 0;
};

bool serve_serially(uvc_test::TestLoop& loop, int port, int requests, Served& out) {
  return uvc_test::run_client(loop, [&] {
    for (int i = 0; i < requests; ++i) {
      std::string body = uvc_test::http_body(uvc_test::http_get(port));
      if (body.rfind("worker ", 0) != 0) ++out.failures;
      else ++out.per_worker[body.substr(0, body.find(' ', 7))];
    }
  });
}

void attach(Primary& p, Trace& t) {
  p.on_fork([&](WorkerHandle& w) { t.events[w.id()].push_back("fork"); });
  p.on_online([&](WorkerHandle& w) { t.events[w.id()].push_back("online"); });
  p.on_listening([&](WorkerHandle& w, const Address& a) {
    t.events[w.id()].push_back("listening");
    t.port = a.port;
    ++t.listening;
  });
  p.on_disconnect([&](WorkerHandle& w) {
    t.events[w.id()].push_back("disconnect");
    t.state_at_disconnect[w.id()] = to_string(w.state());
  });
  p.on_exit([&](WorkerHandle& w, const ExitStatus&) {
    t.events[w.id()].push_back("exit");
    t.flag_at_exit[w.id()] = w.exited_after_disconnect();
    ++t.exited;
  });
}

class PrimaryWithNodeWorkers : public ::testing::TestWithParam<Policy> {};

TEST_P(PrimaryWithNodeWorkers, EveryRequestAnsweredAndEveryWorkerServes) {
  uvc_test::warm_up_libuv();
  auto fds_before = uvc_test::open_fds();
  constexpr int kWorkers = 2;
  constexpr int kRequests = 60;
  {
    uvc_test::TestLoop loop;
    auto primary = Primary::create(loop, {.exec = uvc_test::fixture("cluster_http_worker.js"),
                                          .args = {"0", "127.0.0.1"},
                                          .policy = GetParam()});
    Trace t;
    attach(*primary, t);
    for (int i = 0; i < kWorkers; ++i) ASSERT_TRUE(primary->fork().ok());
    ASSERT_TRUE(loop.run_until([&] { return t.listening == kWorkers; }));
    ASSERT_GT(t.port, 0);
    EXPECT_EQ(primary->handle_count(), 1u);  // listen(0) in both workers shares one key

    Served served;
    ASSERT_TRUE(serve_serially(loop, t.port, kRequests, served));
    auto& per_worker = served.per_worker;
    int failures = served.failures;
    EXPECT_EQ(failures, 0);
    if (GetParam() == Policy::rr) {
      // rr hands out strictly in turn to idle workers: both get a fair share.
      EXPECT_EQ(per_worker.size(), 2u);
      uint64_t total = 0;
      for (auto& [id, w] : primary->workers()) total += w->connections();
      EXPECT_EQ(total, static_cast<uint64_t>(kRequests));
    }
    bool disconnected = false;
    primary->disconnect([&] { disconnected = true; });
    ASSERT_TRUE(loop.run_until([&] { return disconnected && t.exited == kWorkers; }));
    EXPECT_TRUE(primary->workers().empty());
    EXPECT_EQ(primary->handle_count(), 0u);
    for (auto& [id, ev] : t.events) {
      ASSERT_GE(ev.size(), 5u) << id;
      EXPECT_EQ(ev[0], "fork");
      EXPECT_EQ(ev[1], "online");
      EXPECT_EQ(ev[2], "listening");
      EXPECT_EQ(t.state_at_disconnect[id], "disconnected");
      EXPECT_EQ(t.flag_at_exit[id], std::optional<bool>(true));
    }
  }
  EXPECT_TRUE(uvc_test::zombie_children().empty());
  EXPECT_EQ(uvc_test::open_fds(), fds_before);
}

// exclusive: Node workers ignore the reply's acceptTurn and accept as under `none`.
INSTANTIATE_TEST_SUITE_P(Policies, PrimaryWithNodeWorkers,
                         ::testing::Values(Policy::rr, Policy::none, Policy::reuseport, Policy::exclusive),
                         [](const auto& info) { return std::string(policy_name(info.param)); });

}  // namespace

namespace {

// C++ primary + C++ workers (cluster::Worker), every policy including exclusive (EPOLLEXCLUSIVE).
class PrimaryWithCppWorkers : public ::testing::TestWithParam<Policy> {};

TEST_P(PrimaryWithCppWorkers, EveryRequestAnswered) {
  uvc_test::warm_up_libuv();
  auto fds_before = uvc_test::open_fds();
  constexpr int kWorkers = 2;
  constexpr int kRequests = 40;
  {
    uvc_test::TestLoop loop;
    auto primary = Primary::create(loop, {.exec = uvc_test::helper("cluster_http_worker"),
                                          .args = {"0", "127.0.0.1"},
                                          .policy = GetParam()});
    Trace t;
    attach(*primary, t);
    for (int i = 0; i < kWorkers; ++i) ASSERT_TRUE(primary->fork().ok());
    ASSERT_TRUE(loop.run_until([&] { return t.listening == kWorkers; }));
    Served served;
    ASSERT_TRUE(serve_serially(loop, t.port, kRequests, served));
    auto& per_worker = served.per_worker;
    int failures = served.failures;
    EXPECT_EQ(failures, 0);
    if (GetParam() == Policy::rr) {
      EXPECT_EQ(per_worker.size(), 2u);
    }
    bool disconnected = false;
    primary->disconnect([&] { disconnected = true; });
    ASSERT_TRUE(loop.run_until([&] { return disconnected && t.exited == kWorkers; }));
    for (auto& [id, flag] : t.flag_at_exit) EXPECT_EQ(flag, std::optional<bool>(true));
  }
  EXPECT_TRUE(uvc_test::zombie_children().empty());
  EXPECT_EQ(uvc_test::open_fds(), fds_before);
}

INSTANTIATE_TEST_SUITE_P(Policies, PrimaryWithCppWorkers,
                         ::testing::Values(Policy::rr, Policy::none, Policy::reuseport, Policy::exclusive),
                         [](const auto& info) { return std::string(policy_name(info.param)); });

// (Named ClusterHerd so `ctest -R Cluster` runs it.) The herd mechanism, not its rate: under
// `exclusive` every worker waits on the listener through its EPOLLEXCLUSIVE waiter thread (mode
// "exclusive"), every connection is accepted exactly once, and a worker with --rotate N leaves
// and rejoins the wait queue after exactly every N accepts. How many wake-ups find the queue
// empty is NOT asserted: epoll(7) promises "one or more" waiters woken, and a waiter busy on its
// loop thread lets the kernel wake the next one, so the count moves with machine load (it once
// failed a "<= 10%" bound as 7 of 60). That rate is measured by the lab (herd.inside) and
// recorded here as a test property only. Under `none` the workers poll the socket ("shared").
struct HerdCase {
  Policy policy;
  int workers;
  int rotate;
};

class CppWorkerHerd : public ::testing::TestWithParam<HerdCase> {};

TEST_P(CppWorkerHerd, ExclusiveWakesOneWorkerPerConnection) {
  const HerdCase hc = GetParam();
  constexpr int kRequests = 60;
  uvc_test::warm_up_libuv();
  auto fds_before = uvc_test::open_fds();
  {
    uvc_test::TestLoop loop;
    std::vector<std::string> args = {"0", "127.0.0.1"};
    if (hc.rotate > 0) args.insert(args.end(), {"--rotate", std::to_string(hc.rotate)});
    auto primary = Primary::create(loop, {.exec = uvc_test::helper("cluster_http_worker"),
                                          .args = args,
                                          .policy = hc.policy});
    Trace t;
    attach(*primary, t);
    std::map<int, Json> counters;  // worker id -> its counters
    primary->on_message([&](WorkerHandle& w, const Json& m) {
      if (m.is_object() && m.contains("counters")) counters[w.id()] = m["counters"];
    });
    for (int i = 0; i < hc.workers; ++i) ASSERT_TRUE(primary->fork().ok());
    ASSERT_TRUE(loop.run_until([&] { return t.listening == hc.workers; }));
    int failures = 0;
    ASSERT_TRUE(uvc_test::run_client(loop, [&] {
      for (int i = 0; i < kRequests; ++i)
        if (uvc_test::http_body(uvc_test::http_get(t.port)).rfind("worker ", 0) != 0) ++failures;
    }));
    EXPECT_EQ(failures, 0);
    for (auto& [id, w] : primary->workers()) w->send("counters");
    ASSERT_TRUE(loop.run_until([&] { return static_cast<int>(counters.size()) == hc.workers; }));
    uint64_t accepted = 0, empty = 0;
    const std::string expected_mode = hc.policy == Policy::exclusive ? "exclusive" : "shared";
    for (auto& [id, c] : counters) {
      const uint64_t mine = c.value("accepted", uint64_t{0});
      accepted += mine;
      empty += c.value("empty_wakeups", uint64_t{0});
      EXPECT_EQ(c.value("mode", std::string()), expected_mode) << "worker " << id;
      // Rotation is counted per accept, not per wake-up: exactly floor(accepted / N) rejoins.
      const uint64_t rotations_expected = hc.rotate > 0 ? mine / static_cast<uint64_t>(hc.rotate) : 0;
      EXPECT_EQ(c.value("rotations", uint64_t{0}), rotations_expected) << "worker " << id;
    }
    EXPECT_EQ(accepted, static_cast<uint64_t>(kRequests));
    RecordProperty("empty_wakeups", static_cast<int>(empty));
    bool disconnected = false;
    primary->disconnect([&] { disconnected = true; });
    ASSERT_TRUE(loop.run_until([&] { return disconnected && t.exited == hc.workers; }));
  }
  EXPECT_TRUE(uvc_test::zombie_children().empty());
  EXPECT_EQ(uvc_test::open_fds(), fds_before);
}

INSTANTIATE_TEST_SUITE_P(ClusterHerd, CppWorkerHerd,
                         ::testing::Values(HerdCase{Policy::none, 3, 0}, HerdCase{Policy::exclusive, 2, 0},
                                           HerdCase{Policy::exclusive, 4, 0},
                                           HerdCase{Policy::exclusive, 3, 4}),
                         [](const auto& info) {
                           return std::string(policy_name(info.param.policy)) + "_" +
                                  std::to_string(info.param.workers) + "w" +
                                  (info.param.rotate ? "_rotate" + std::to_string(info.param.rotate) : "");
                         });

// True once every thread of `pid` is stopped (SIGSTOP): nothing of it can accept any more.
bool all_threads_stopped(int pid) {
  std::error_code ec;
  int threads = 0;
  for (auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream stat(task.path() / "stat");
    std::string line;
    std::getline(stat, line);
    auto close_paren = line.rfind(')');
    if (close_paren == std::string::npos || close_paren + 2 >= line.size()) return false;
    char state = line[close_paren + 2];
    if (state != 'T' && state != 't') return false;
    ++threads;
  }
  return !ec && threads > 0;
}

// Issue 13 §4 item 2: under `exclusive` the primary (cluster::Primary, as in `uvcluster run
// --policy exclusive`) makes an accept turn per key and its C++ workers accept in turn. A burst
// queued while every worker is stopped (so none can accept before it is complete) is dealt out
// in turn: every worker reports the turn, gets some of the burst, and no accept finds EAGAIN.
// Without the turn (rotation only, before the primary made one) the workers that resume first
// take the burst: 5 of 5 runs failed, dealt e.g. 16/0/0/0, 12/4/0/0, 10/6/0/0.
TEST(ClusterHerdTurn, PrimaryExclusiveDealsABurstOutInTurnWithoutEagain) {
  constexpr int kWorkers = 4;
  constexpr int kBurst = 16;
  uvc_test::warm_up_libuv();
  auto fds_before = uvc_test::open_fds();
  {
    uvc_test::TestLoop loop;
    auto primary = Primary::create(loop, {.exec = uvc_test::helper("cluster_http_worker"),
                                          .args = {"0", "127.0.0.1"},
                                          .policy = Policy::exclusive});
    Trace t;
    attach(*primary, t);
    std::map<int, Json> counters;
    primary->on_message([&](WorkerHandle& w, const Json& m) {
      if (m.is_object() && m.contains("counters")) counters[w.id()] = m["counters"];
    });
    for (int i = 0; i < kWorkers; ++i) ASSERT_TRUE(primary->fork().ok());
    ASSERT_TRUE(loop.run_until([&] { return t.listening == kWorkers; }));
    std::vector<int> pids;
    for (auto& [id, w] : primary->workers()) pids.push_back(*w->pid());
    for (int pid : pids) ASSERT_EQ(::kill(pid, SIGSTOP), 0);
    // Polled (bounded): stopping makes no event on our loop.
    for (int pid : pids) {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!all_threads_stopped(pid) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ASSERT_TRUE(all_threads_stopped(pid)) << "worker pid " << pid << " did not stop";
    }
    std::vector<Fd> clients;
    for (int i = 0; i < kBurst; ++i) {
      clients.emplace_back(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_in to{};
      to.sin_family = AF_INET;
      to.sin_port = htons(static_cast<uint16_t>(t.port));
      to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      // Completes in the listener's backlog: the kernel answers the handshake.
      ASSERT_EQ(::connect(clients.back().get(), reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
    }
    for (int pid : pids) ASSERT_EQ(::kill(pid, SIGCONT), 0);
    auto accepted_total = [&] {
      uint64_t n = 0;
      for (auto& [id, c] : counters) n += c.value("accepted", uint64_t{0});
      return n;
    };
    // Ask for the counters until the whole burst is accepted (each round waits for all answers).
    for (int round = 0; round < 3000 && accepted_total() < kBurst; ++round) {
      counters.clear();
      for (auto& [id, w] : primary->workers()) w->send("counters");
      ASSERT_TRUE(loop.run_until([&] { return static_cast<int>(counters.size()) == kWorkers; }));
    }
    ASSERT_EQ(accepted_total(), static_cast<uint64_t>(kBurst));
    std::string dealt;
    for (auto& [id, c] : counters) {
      EXPECT_EQ(c.value("mode", std::string()), "exclusive") << "worker " << id;
      EXPECT_EQ(c.value("accept_turn", false), true) << "worker " << id;
      EXPECT_GE(c.value("accepted", uint64_t{0}), 1u) << "worker " << id << " got none of the burst";
      EXPECT_EQ(c.value("accept_eagain", uint64_t{1}), 0u) << "worker " << id;
      EXPECT_EQ(c.value("empty_wakeups", uint64_t{1}), 0u) << "worker " << id;
      dealt += std::to_string(c.value("accepted", uint64_t{0})) + " ";
    }
    RecordProperty("per_worker", dealt);
    clients.clear();
    bool disconnected = false;
    primary->disconnect([&] { disconnected = true; });
    ASSERT_TRUE(loop.run_until([&] { return disconnected && t.exited == kWorkers; }));
  }
  EXPECT_TRUE(uvc_test::zombie_children().empty());
  EXPECT_EQ(uvc_test::open_fds(), fds_before);
}

// A worker-initiated disconnect (cluster.worker.disconnect()) sends exitedAfterDisconnect and
// waits for the primary's ack before disconnecting: the primary sees the flag true.
TEST(PrimaryEvents, WorkerInitiatedDisconnectIsFlaggedAndKillIsNot) {
  uvc_test::TestLoop loop;
  auto primary = Primary::create(loop, {.exec = uvc_test::helper("cluster_http_worker"),
                                        .args = {"0", "127.0.0.1"}, .policy = Policy::rr});
  Trace t;
  attach(*primary, t);
  auto a = primary->fork();
  auto b = primary->fork();
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(loop.run_until([&] { return t.listening == 2; }));
  (*a)->send("disconnect");  // the helper calls worker.disconnect() on this message
  (*b)->kill("SIGKILL");
  ASSERT_TRUE(loop.run_until([&] { return t.exited == 2; }));
  EXPECT_EQ(t.flag_at_exit[(*a)->id()], std::optional<bool>(true));
  EXPECT_EQ(t.flag_at_exit[(*b)->id()], std::optional<bool>(false));
  EXPECT_EQ((*b)->exit_status()->signal, std::optional<std::string>("SIGKILL"));
  EXPECT_TRUE((*a)->is_dead());
  // Node sets 'dead' on exit and 'disconnected' on disconnect; their order is undefined, so the
  // last state is either (docs/protocol.md §4.2).
  EXPECT_TRUE((*a)->state() == WorkerHandle::State::dead ||
              (*a)->state() == WorkerHandle::State::disconnected);
  EXPECT_TRUE(primary->workers().empty());
  EXPECT_EQ(primary->handle_count(), 0u);
}

}  // namespace

namespace {

TEST(PrimaryHandles, ListenErrorDropsTheKeySoARetryWorks) {
  uvc_test::TestLoop loop;
  auto taken = bind_tcp({.address = "127.0.0.1", .port = 0});
  ASSERT_TRUE(taken.ok());
  ASSERT_TRUE(listen_fd(taken->get(), 0).ok());
  int port = local_address(taken->get())->port;
  auto primary = Primary::create(loop, {.exec = uvc_test::fixture("cluster_http_worker.js"),
                                        .args = {std::to_string(port), "127.0.0.1"},
                                        .policy = Policy::rr});
  Trace t;
  attach(*primary, t);
  std::vector<std::string> errors;
  primary->on_listen_error([&](WorkerHandle&, const Address& a, const Error& e) {
    EXPECT_EQ(a.port, port);
    errors.push_back(e.code);
  });
  ASSERT_TRUE(primary->fork().ok());
  ASSERT_TRUE(loop.run_until([&] { return t.exited == 1; }));
  ASSERT_EQ(errors, std::vector<std::string>{"EADDRINUSE"});
  EXPECT_EQ(primary->handle_count(), 0u);  // test-cluster-eaddrinuse: nothing left behind
  taken->reset();                          // the port is free now: a new worker gets it
  ASSERT_TRUE(primary->fork().ok());
  ASSERT_TRUE(loop.run_until([&] { return t.listening == 1; }));
  EXPECT_EQ(t.port, port);
  bool done = false;
  primary->disconnect([&] { done = true; });
  ASSERT_TRUE(loop.run_until([&] { return done && t.exited == 2; }));
}

TEST(PrimaryHandles, SeveralServersPerWorkerEachListenZeroGetsItsOwnSharedPort) {
  uvc_test::TestLoop loop;
  auto primary = Primary::create(loop, {.exec = uvc_test::fixture("cluster_two_servers.js"),
                                        .policy = Policy::rr});
  Trace t;
  std::set<int> ports;
  attach(*primary, t);
  primary->on_listening([&](WorkerHandle&, const Address& a) { ports.insert(a.port); });
  ASSERT_TRUE(primary->fork().ok());
  ASSERT_TRUE(primary->fork().ok());
  ASSERT_TRUE(loop.run_until([&] { return t.listening == 4; }));
  EXPECT_EQ(ports.size(), 2u);
  EXPECT_EQ(primary->handle_count(), 2u);
  std::set<std::string> bodies;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] {
    for (int p : ports) bodies.insert(uvc_test::http_body(uvc_test::http_get(p)));
  }));
  EXPECT_EQ(bodies, (std::set<std::string>{"server a\n", "server b\n"}));
  bool done = false;
  primary->disconnect([&] { done = true; });
  ASSERT_TRUE(loop.run_until([&] { return done && t.exited == 2; }));
  EXPECT_EQ(primary->handle_count(), 0u);
}

TEST(PrimaryHandles, PolicyFromNodeClusterSchedPolicy) {
  ::setenv("NODE_CLUSTER_SCHED_POLICY", "none", 1);
  EXPECT_EQ(policy_from_env(), Policy::none);
  ::setenv("NODE_CLUSTER_SCHED_POLICY", "rr", 1);
  EXPECT_EQ(policy_from_env(), Policy::rr);
  ::setenv("NODE_CLUSTER_SCHED_POLICY", "bogus", 1);
  EXPECT_EQ(policy_from_env(), Policy::rr);  // Node on Linux: anything else is RR
  ::unsetenv("NODE_CLUSTER_SCHED_POLICY");
  EXPECT_EQ(policy_from_env(), Policy::rr);
}

}  // namespace

namespace {

TEST(PrimaryEvents, UserMessagesBothWaysAndKillIsNotAGracefulExit) {
  uvc_test::TestLoop loop;
  auto primary = Primary::create(loop, {.exec = uvc_test::fixture("cluster_echo_worker.js")});
  Trace t;
  attach(*primary, t);
  std::vector<Json> on_worker, on_cluster;
  auto w = primary->fork();
  ASSERT_TRUE(w.ok());
  (*w)->on_message([&](const Json& m) { on_worker.push_back(m); });
  primary->on_message([&](WorkerHandle&, const Json& m) { on_cluster.push_back(m); });
  bool online = false;
  (*w)->on_online([&] { online = true; });
  ASSERT_TRUE(loop.run_until([&] { return online; }));
  EXPECT_EQ((*w)->state(), WorkerHandle::State::online);
  EXPECT_TRUE((*w)->is_connected());
  EXPECT_FALSE((*w)->exited_after_disconnect().has_value());  // undefined until it leaves
  EXPECT_TRUE((*w)->send({{"hi", 1}}));
  ASSERT_TRUE(loop.run_until([&] { return on_cluster.size() == 1; }));
  Json expect = {{"echo", {{"hi", 1}}}, {"id", (*w)->id()}};
  EXPECT_EQ(on_worker, std::vector<Json>{expect});  // worker 'message' first, then cluster's
  EXPECT_EQ(on_cluster, std::vector<Json>{expect});
  EXPECT_TRUE((*w)->kill());  // Node 20: process.kill(SIGTERM), no disconnect first
  ASSERT_TRUE(loop.run_until([&] { return t.exited == 1 && primary->workers().empty(); }));
  EXPECT_EQ((*w)->exit_status()->signal, std::optional<std::string>("SIGTERM"));
  EXPECT_EQ((*w)->exited_after_disconnect(), std::optional<bool>(false));
  EXPECT_FALSE((*w)->send("late"));
}

}  // namespace
