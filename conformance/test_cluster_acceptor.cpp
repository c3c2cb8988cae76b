// cluster::Acceptor, the one accept loop: policies, counters, and the out-of-fds pause (nginx's
// answer to EMFILE) that replaces a busy spin on the level-triggered listening socket.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "support.hpp"
#include "uvcluster/cluster/accept_turn.hpp"
#include "uvcluster/cluster/acceptor.hpp"
#include "uvcluster/cluster/sockets.hpp"

using namespace uvcluster;
using namespace uvcluster::cluster;

namespace {

struct Listening {
  Fd fd;
  int port = 0;
};

Listening listen_loopback() {
  auto fd = bind_tcp({.address = "127.0.0.1", .port = 0});
  EXPECT_TRUE(fd.ok());
  EXPECT_TRUE(listen_fd(fd->get(), 64).ok());
  int port = local_address(fd->get())->port;
  return {std::move(fd.value()), port};
}

Fd tcp_socket() { return Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)); }

bool connect_loopback(int fd, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
}

// Lowers RLIMIT_NOFILE to just above the highest open fd and fills every free slot, so the next
// accept() fails with EMFILE; the destructor frees the slots and restores the limit.
struct FdTableFull {
  rlimit saved{};
  std::vector<Fd> filler;
  FdTableFull() {
    ::getrlimit(RLIMIT_NOFILE, &saved);
    int highest = 0;
    for (int fd : uvc_test::open_fds()) highest = std::max(highest, fd);
    rlimit low = saved;
    low.rlim_cur = static_cast<rlim_t>(highest + 8);
    ::setrlimit(RLIMIT_NOFILE, &low);
    for (;;) {
      Fd f(::fcntl(0, F_DUPFD_CLOEXEC, 0));
      if (!f) break;
      filler.push_back(std::move(f));
    }
  }
  ~FdTableFull() {
    filler.clear();
    ::setrlimit(RLIMIT_NOFILE, &saved);
  }
};

}  // namespace

TEST(ClusterAcceptor, PolicyOneAcceptsOnePerWakeUpDrainAcceptsAll) {
  for (AcceptPolicy policy : {AcceptPolicy::one, AcceptPolicy::drain}) {
    uvc_test::TestLoop loop;
    Listening l = listen_loopback();
    std::vector<Fd> got;
    auto acc = Acceptor::start(loop, l.fd.get(), {.policy = policy}, [&](Fd c) { got.push_back(std::move(c)); });
    ASSERT_TRUE(acc.ok());
    std::vector<Fd> clients;
    for (int i = 0; i < 4; ++i) {
      clients.push_back(tcp_socket());
      ASSERT_TRUE(connect_loopback(clients.back().get(), l.port));
    }
    ASSERT_TRUE(loop.run_until([&] { return got.size() == 4; }));
    const AcceptorCounters& c = (*acc)->counters();
    EXPECT_EQ(c.accepted, 4u);
    if (policy == AcceptPolicy::one) {
      EXPECT_EQ(c.accept_eagain, 0u);  // never asks past the one connection it was woken for
      EXPECT_GE(c.wakeups, 4u);
    } else {
      EXPECT_EQ(c.accept_eagain, c.wakeups);  // every batch ends in EAGAIN
    }
    EXPECT_EQ(c.errors_total(), 0u);
  }
}

// Issue 8 defect 5: a C++ worker out of fds spun at 100% CPU, because the accept pass returned on
// EMFILE while the pending connection kept the level-triggered socket readable. Each loop turn
// below would wake the acceptor and fail one more accept; paused, it fails once per retry.
TEST(ClusterAcceptor, OutOfFdsPausesInsteadOfSpinningAndRecoversByItself) {
  uvc_test::TestLoop loop;
  Listening l = listen_loopback();
  std::vector<Fd> got;
  auto acc = Acceptor::start(loop, l.fd.get(), {.policy = AcceptPolicy::drain, .retry_ms = 50},
                             [&](Fd c) { got.push_back(std::move(c)); });
  ASSERT_TRUE(acc.ok());
  std::vector<Fd> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(tcp_socket());
  {
    FdTableFull full;
    ASSERT_FALSE(full.filler.empty());
    for (auto& c : clients) ASSERT_TRUE(connect_loopback(c.get(), l.port));  // needs no new fd
    for (int turn = 0; turn < 50; ++turn) uv_run(loop, UV_RUN_NOWAIT);
    const AcceptorCounters& c = (*acc)->counters();
    uint64_t emfile = c.errors.count(EMFILE) ? c.errors.at(EMFILE) : 0;
    EXPECT_GE(emfile, 1u);
    EXPECT_EQ(got.size(), 0u);
    // One failed accept per watch period: the first, then one after each retry — never a spin.
    EXPECT_LE(emfile, c.resumes + 1) << "accept retried " << emfile << " times in 50 loop turns";
    EXPECT_LE(c.wakeups, c.resumes + 1);
    EXPECT_GE(c.pauses, 1u);
  }
  // Fds are back: the retry timer resumes watching and the backlog is served.
  ASSERT_TRUE(loop.run_until([&] { return got.size() == 3; }));
  EXPECT_FALSE((*acc)->paused());
}

TEST(ClusterAcceptor, ConnectionHandlerMayDestroyTheAcceptor) {
  uvc_test::TestLoop loop;
  Listening l = listen_loopback();
  std::unique_ptr<Acceptor> acc;
  int got = 0;
  auto a = Acceptor::start(loop, l.fd.get(), {.policy = AcceptPolicy::drain}, [&](Fd) {
    ++got;
    acc.reset();
  });
  ASSERT_TRUE(a.ok());
  acc = std::move(a.value());
  std::vector<Fd> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(tcp_socket());
    ASSERT_TRUE(connect_loopback(clients.back().get(), l.port));
  }
  ASSERT_TRUE(loop.run_until([&] { return got == 1; }));
  uv_run(loop, UV_RUN_NOWAIT);
  EXPECT_EQ(got, 1);
}

namespace {
// One "worker" of the turn test: its own thread, loop, AcceptTurn mapping and exclusive Acceptor
// on the shared listening socket, keeping every connection it gets (keep-alive clients).
struct TurnWorker {
  std::atomic<int> got{0};
  std::atomic<bool> started{false};
  AcceptorCounters counters;
  std::string error;
  uv_async_t stop{};
  std::unique_ptr<Acceptor> acc;
  std::thread thread;

  void run(int listen_fd, int turn_fd, std::atomic<int>& total) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    std::vector<Fd> conns;
    AcceptorOptions ao{.policy = AcceptPolicy::one, .wait = AcceptWait::exclusive};
    auto turn = AcceptTurn::attach(turn_fd);
    if (!turn.ok()) error = turn.error().message;
    else ao.turn = std::move(turn.value());
    auto a = Acceptor::start(&loop, listen_fd, ao, [&](Fd c) {
      conns.push_back(std::move(c));
      ++got;
      ++total;
    });
    if (!a.ok()) error = a.error().message;
    else acc = std::move(a.value());
    stop.data = this;
    uv_async_init(&loop, &stop, [](uv_async_t* h) {
      auto* self = static_cast<TurnWorker*>(h->data);
      if (self->acc) self->counters = self->acc->counters();
      self->acc.reset();  // joins its waiter thread
      uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
    });
    started = true;
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
};

// Waits (bounded) for a condition set by other threads; false if it never came.
bool wait_for(const std::function<bool()>& cond, int limit_ms = 30000) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(limit_ms);
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Who keeps the four acceptors from accepting until the burst is queued: this thread holding the
// turn (released afterwards), or a child process holding it that is then SIGKILLed (the others
// must move the turn on by themselves).
enum class Gate { held, dead_holder };

// A child process that takes `turn_fd`'s turn, says so on a pipe and waits to be killed. Killed
// and reaped when the guard goes, whatever the test did meanwhile.
struct TurnHoldingChild {
  pid_t pid = -1;
  bool start(int turn_fd) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return false;
    Fd r(p[0]), w(p[1]);
    pid = ::fork();
    if (pid < 0) return false;
    if (pid == 0) {
      auto turn = AcceptTurn::attach(turn_fd);
      if (!turn.ok() || !turn.value()->acquire([] { return false; })) ::_exit(1);
      char one = 1;
      (void)!::write(w.get(), &one, 1);
      for (;;) ::pause();
    }
    w.reset();
    char got = 0;
    return ::read(r.get(), &got, 1) == 1;
  }
  // SIGKILL and reap: from then on the holder's pid is gone for kill(pid, 0).
  bool kill_and_reap() {
    if (pid <= 0) return false;
    ::kill(pid, SIGKILL);
    int status = 0;
    bool reaped = ::waitpid(pid, &status, 0) == pid;
    pid = -1;
    return reaped;
  }
  ~TurnHoldingChild() { (void)kill_and_reap(); }
};

// Four exclusive acceptors on one socket; `burst` connections are queued in the backlog before
// any of them may accept. Returns each worker's connection count (-1 on a setup failure).
std::vector<int> serve_burst(Gate gate, int burst, std::vector<AcceptorCounters>& counters,
                             uint64_t* handoffs = nullptr) {
  constexpr int kWorkers = 4;
  Listening l = listen_loopback();
  TurnHoldingChild child;
  auto created = AcceptTurn::create();
  EXPECT_TRUE(created.ok());
  if (!created.ok()) return {};
  std::shared_ptr<AcceptTurn> turn = std::move(created.value());
  if (gate == Gate::held) {
    EXPECT_TRUE(turn->acquire([] { return false; }));  // nobody accepts until the burst is queued
  }
  if (gate == Gate::dead_holder && !child.start(turn->fd())) {
    ADD_FAILURE() << "the holding child did not take the turn";
    return {};
  }
  std::atomic<int> total{0};
  std::vector<std::unique_ptr<TurnWorker>> workers;
  for (int i = 0; i < kWorkers; ++i) {
    workers.push_back(std::make_unique<TurnWorker>());
    TurnWorker* w = workers.back().get();
    w->thread = std::thread([&, w] { w->run(l.fd.get(), turn->fd(), total); });
  }
  for (auto& w : workers) EXPECT_TRUE(wait_for([&] { return w->started.load(); }));
  EXPECT_TRUE(wait_for([&] { return turn->queued() == kWorkers; }));
  std::vector<Fd> clients;
  for (int i = 0; i < burst; ++i) {
    clients.push_back(tcp_socket());
    EXPECT_TRUE(connect_loopback(clients.back().get(), l.port));  // completes in the backlog
  }
  if (gate == Gate::held) turn->release(/*again=*/false);
  if (gate == Gate::dead_holder) {
    EXPECT_TRUE(child.kill_and_reap());
  }
  EXPECT_TRUE(wait_for([&] { return total.load() == burst; }));
  if (handoffs) *handoffs = turn->turns_taken();
  std::vector<int> per_worker;
  for (auto& w : workers) {
    uv_async_send(&w->stop);
    w->thread.join();
    EXPECT_EQ(w->error, "");
    per_worker.push_back(w->got.load());
    counters.push_back(w->counters);
  }
  return per_worker;
}
}  // namespace

// Issue 13 §4: under a burst (wrk opens its keep-alive connections at once) the level-triggered
// listener reports "readable" to every worker back from its accept pass, so the first back takes
// most of the burst and races the peers woken for the same connections (EAGAIN). With an
// AcceptTurn, one holder at a time waits and accepts one connection, then the turn goes round in
// queue order: every worker gets one before anyone gets a second, and no accept finds EAGAIN.
TEST(ClusterAcceptor, AcceptTurnDealsABurstOutInTurnWithoutEagain) {
  std::vector<AcceptorCounters> counters;
  std::vector<int> per_worker = serve_burst(Gate::held, 8, counters);
  ASSERT_EQ(per_worker.size(), 4u);
  for (int got : per_worker) EXPECT_GE(got, 1) << "a worker got none of the burst";
  for (const AcceptorCounters& c : counters) {
    EXPECT_EQ(c.accept_eagain, 0u);
    EXPECT_EQ(c.empty_wakeups, 0u);
  }
  std::string dealt;
  for (int got : per_worker) dealt += std::to_string(got) + " ";
  RecordProperty("per_worker", dealt);
}

// Issue 13 §4 item 3: under load a holder takes its share of the connections already queued (up
// to AcceptorOptions::turn_batch, 4) per turn, so the hand-off is paid once per batch: a burst of
// 32 queued for 4 holders takes far fewer turns than connections (one per connection before),
// still without EAGAIN and with every worker served.
TEST(ClusterAcceptor, AcceptTurnTakesABatchOfTheQueuedConnectionsPerTurn) {
  constexpr int kBurst = 32;
  std::vector<AcceptorCounters> counters;
  uint64_t handoffs = 0;
  std::vector<int> per_worker = serve_burst(Gate::held, kBurst, counters, &handoffs);
  ASSERT_EQ(per_worker.size(), 4u);
  for (int got : per_worker) EXPECT_GE(got, 1) << "a worker got none of the burst";
  for (const AcceptorCounters& c : counters) EXPECT_EQ(c.accept_eagain, 0u);
  RecordProperty("handoffs", static_cast<int>(handoffs));
  EXPECT_LE(handoffs, static_cast<uint64_t>(kBurst) * 3 / 4);  // measured 12-14; one per turn: 33+
}

// Issue 13 §4: a worker killed while it holds the turn must not stop the others for good. The
// turn is held by a child process when the burst arrives; the child is SIGKILLed (and reaped);
// the four waiters, woken by no hand-off, see the turn stuck on a gone process and move it on,
// and the burst is still dealt out in turn without EAGAIN.
TEST(ClusterAcceptor, AcceptTurnSurvivesAHolderKilledWithTheTurn) {
  std::vector<AcceptorCounters> counters;
  std::vector<int> per_worker = serve_burst(Gate::dead_holder, 8, counters);
  ASSERT_EQ(per_worker.size(), 4u);
  for (int got : per_worker) EXPECT_GE(got, 1) << "a worker got none of the burst";
  for (const AcceptorCounters& c : counters) EXPECT_EQ(c.accept_eagain, 0u);
}

// Issue 13 §4 item 1: passing the turn wakes only the next ticket's holder, not every queued
// waiter (a herd of threads on every hand-off). Four threads, each with its own mapping, take the
// turn 50 times each; the hand-offs must wake no more threads than there were hand-offs. (Waking
// the whole queue wakes up to three per hand-off whenever the others sleep.)
TEST(ClusterAcceptor, AcceptTurnHandOffWakesOnlyTheNextHolder) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 50;
  auto created = AcceptTurn::create();
  ASSERT_TRUE(created.ok());
  std::shared_ptr<AcceptTurn> gate = std::move(created.value());
  ASSERT_TRUE(gate->acquire([] { return false; }));  // all four queue before the first hand-off
  std::atomic<int> turns{0};
  std::vector<std::thread> threads;
  std::vector<std::string> errors(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto t = AcceptTurn::attach(gate->fd());
      if (!t.ok()) {
        errors[i] = t.error().message;
        return;
      }
      AcceptTurn& mine = *t.value();
      for (int r = 0; r < kRounds; ++r) {
        if (!mine.acquire([] { return false; })) {
          errors[i] = "acquire failed";
          return;
        }
        ++turns;
        mine.release(/*again=*/r + 1 < kRounds);
      }
    });
  }
  EXPECT_TRUE(wait_for([&] { return gate->queued() == kThreads; }));
  uint64_t woken_before = gate->threads_woken();
  uint64_t passed_before = gate->turns_taken();
  gate->release(/*again=*/false);
  for (auto& t : threads) t.join();
  for (auto& e : errors) EXPECT_EQ(e, "");
  EXPECT_EQ(turns.load(), kThreads * kRounds);
  uint64_t woken = gate->threads_woken() - woken_before;
  uint64_t handoffs = gate->turns_taken() - passed_before;
  RecordProperty("threads_woken", static_cast<int>(woken));
  RecordProperty("handoffs", static_cast<int>(handoffs));
  EXPECT_LE(woken, handoffs);
}
