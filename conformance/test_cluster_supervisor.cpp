// cluster::Supervisor in-process: slots and NODE_APP_INSTANCE, reload, scale, drain, output
// relay, spawn failure. Real Node workers (fixtures/supervised_worker.js); waits on events.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "http_client.hpp"
#include "support.hpp"
#include "uvcluster/cluster/supervisor.hpp"

using namespace uvcluster;
using namespace uvcluster::cluster;

namespace {

SupervisorOptions worker_options(int instances, std::vector<std::string> flags = {}) {
  SupervisorOptions o;
  o.primary.exec = uvc_test::fixture("supervised_worker.js");
  o.primary.args = {"0", "127.0.0.1"};
  o.primary.args.insert(o.primary.args.end(), flags.begin(), flags.end());
  o.primary.policy = Policy::rr;
  o.instances = instances;
  return o;
}

// What a test sees of a supervisor: counts and the worker ids per event.
struct Seen {
  std::map<std::string, int> count;
  std::map<int, int> instance_of;  // worker id → slot
  std::map<int, ExitStatus> exits;
  std::optional<SupervisorResult> done;
  int port = 0;

  explicit Seen(Supervisor& s) {
    s.on_fork([this](WorkerHandle& w, int instance) {
      ++count["fork"];
      instance_of[w.id()] = instance;
    });
    s.on_listening([this](WorkerHandle&, const Address& a) {
      ++count["listening"];
      port = a.port;
    });
    s.on_exit([this](WorkerHandle& w, const ExitStatus& st) {
      ++count["exit"];
      exits[w.id()] = st;
    });
    s.on_reload_done([this] { ++count["reload-done"]; });
    s.on_done([this](const SupervisorResult& r) { done = r; });
  }
};

std::set<std::string> instances_answering(uvc_test::TestLoop& loop, int port, int requests) {
  std::set<std::string> seen;
  EXPECT_TRUE(uvc_test::run_client(loop, [&] {
    for (int i = 0; i < requests; ++i) {
      std::string body = uvc_test::http_body(uvc_test::http_get(port));
      seen.insert(body.substr(0, body.find(" worker")));
    }
  }));
  return seen;
}

}  // namespace

TEST(Supervisor, InstancesKeepTheirNumberAcrossAReload) {
  uvc_test::TestLoop loop;
  auto sup = Supervisor::create(loop, worker_options(2));
  Seen seen(*sup);
  sup->start();
  ASSERT_TRUE(loop.run_until([&] { return seen.count["listening"] == 2; }));
  EXPECT_EQ(instances_answering(loop, seen.port, 20), (std::set<std::string>{"instance 0", "instance 1"}));
  ASSERT_TRUE(sup->reload());
  ASSERT_TRUE(loop.run_until([&] { return seen.count["reload-done"] == 1; }));
  auto st = sup->stats();
  ASSERT_EQ(st.instances.size(), 2u);
  for (auto& i : st.instances) {
    EXPECT_EQ(i.state, InstanceStatus::State::up);
    ASSERT_TRUE(i.id);
    EXPECT_GT(*i.id, 2) << "a replacement serves the slot";
    EXPECT_EQ(seen.instance_of[*i.id], i.instance);
  }
  EXPECT_EQ(st.live, 2u);
  EXPECT_EQ(instances_answering(loop, seen.port, 20), (std::set<std::string>{"instance 0", "instance 1"}));
  sup->drain();
  ASSERT_TRUE(loop.run_until([&] { return seen.done.has_value(); }));
  EXPECT_EQ(seen.done->exit_code, 0);
}

TEST(Supervisor, ScaleUpForksNewSlotsScaleDownStopsTheHighest) {
  uvc_test::TestLoop loop;
  auto opt = worker_options(1, {"timer"});
  opt.kill_timeout_ms = 60000;  // the stop must end by the signal, not by SIGKILL
  auto sup = Supervisor::create(loop, opt);
  Seen seen(*sup);
  sup->start();
  ASSERT_TRUE(loop.run_until([&] { return seen.count["listening"] == 1; }));
  ASSERT_TRUE(sup->scale(3));
  ASSERT_TRUE(loop.run_until([&] { return seen.count["listening"] == 3; }));
  EXPECT_EQ(instances_answering(loop, seen.port, 30),
            (std::set<std::string>{"instance 0", "instance 1", "instance 2"}));
  ASSERT_TRUE(sup->scale(1));
  ASSERT_TRUE(loop.run_until([&] { return seen.count["exit"] == 2; }));
  for (int id : {2, 3}) {
    EXPECT_EQ(seen.exits[id].signal, std::optional<std::string>("SIGTERM")) << "the timer held it: signalled";
  }
  auto st = sup->stats();
  ASSERT_EQ(st.instances.size(), 1u);
  EXPECT_EQ(st.live, 1u);
  EXPECT_EQ(st.restarts, 0);
  sup->drain();
  ASSERT_TRUE(loop.run_until([&] { return seen.done.has_value(); }));
  EXPECT_EQ(seen.done->exit_code, 0);
  EXPECT_EQ(seen.done->stats.exits, 3u);
}

TEST(Supervisor, EnvAndInstanceVariableReachTheWorkers) {
  uvc_test::TestLoop loop;
  auto opt = worker_options(2, {"env", "APP_SLOT"});
  opt.instance_var = "APP_SLOT";
  opt.env = {{"EXTRA", "1"}};
  opt.relay_output = true;
  auto sup = Supervisor::create(loop, opt);
  Seen seen(*sup);
  std::multiset<std::string> lines;
  sup->on_output([&](WorkerHandle&, OutputStream s, std::string_view line) {
    if (s == OutputStream::out) lines.emplace(line);
  });
  sup->start();
  ASSERT_TRUE(loop.run_until([&] { return seen.count["listening"] == 2 && lines.size() == 2; }));
  EXPECT_EQ(lines, (std::multiset<std::string>{"env APP_SLOT=0\n", "env APP_SLOT=1\n"}));
  sup->drain();
  ASSERT_TRUE(loop.run_until([&] { return seen.done.has_value(); }));
}

TEST(Supervisor, RelayedOutputComesAsWholeLinesPerWorker) {
  constexpr int kLines = 10, kSize = 200000;  // longer than one pipe read
  uvc_test::TestLoop loop;
  auto opt = worker_options(2, {"lines", std::to_string(kLines), std::to_string(kSize)});
  opt.relay_output = true;
  auto sup = Supervisor::create(loop, opt);
  Seen seen(*sup);
  std::map<int, int> whole;  // worker id → whole lines
  int bad = 0;
  sup->on_output([&](WorkerHandle& w, OutputStream s, std::string_view line) {
    bool ok = s == OutputStream::err && line.size() == kSize + 1 && line.back() == '\n' &&
              line.find_first_not_of(line[0]) == kSize;
    ok ? ++whole[w.id()] : ++bad;
  });
  sup->start();
  ASSERT_TRUE(loop.run_until([&] { return whole[1] + whole[2] + bad == 2 * kLines; }));
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(whole[1], kLines);
  EXPECT_EQ(whole[2], kLines);
  sup->drain();
  ASSERT_TRUE(loop.run_until([&] { return seen.done.has_value(); }));
}

TEST(Supervisor, ACommandThatCannotStartEndsWithExitCode1) {
  uvc_test::TestLoop loop;
  SupervisorOptions opt;
  opt.primary.exec = "/nonexistent/uvcluster-worker";
  opt.instances = 2;
  auto sup = Supervisor::create(loop, opt);
  Seen seen(*sup);
  std::vector<std::string> errors;
  sup->on_error([&](WorkerHandle*, const Error& e) { errors.push_back(e.code); });
  sup->start();
  ASSERT_TRUE(loop.run_until([&] { return seen.done.has_value(); }));
  EXPECT_EQ(seen.done->exit_code, 1);
  ASSERT_FALSE(errors.empty());
  EXPECT_EQ(errors[0], "ENOENT");
  EXPECT_EQ(seen.count["exit"], 0);
}

TEST(Supervisor, WaitReadyCountsAWorkerUpOnlyAfterItsReadyMessage) {
  uvc_test::TestLoop loop;
  auto opt = worker_options(1, {"ready-on-go"});
  opt.wait_ready = true;
  auto sup = Supervisor::create(loop, opt);
  Seen seen(*sup);
  int ready = 0;
  std::optional<InstanceStatus::State> at_listening;
  sup->on_listening([&](WorkerHandle& w, const Address&) {
    at_listening = sup->stats().instances[0].state;
    w.send("go");
  });
  sup->on_ready([&](WorkerHandle&) { ++ready; });
  sup->start();
  ASSERT_TRUE(loop.run_until([&] { return ready == 1; }));
  EXPECT_EQ(at_listening, InstanceStatus::State::starting);
  EXPECT_EQ(sup->stats().instances[0].state, InstanceStatus::State::up);
  sup->drain();
  ASSERT_TRUE(loop.run_until([&] { return seen.done.has_value(); }));
}

TEST(Supervisor, ListenTimeoutFailsAStartThatNeverGetsReady) {
  uvc_test::TestLoop loop;
  auto opt = worker_options(1);  // listens but never sends "ready"
  opt.wait_ready = true;
  opt.listen_timeout_ms = 2000;
  opt.restart = false;
  auto sup = Supervisor::create(loop, opt);
  Seen seen(*sup);
  int timeouts = 0;
  sup->on_startup_timeout([&](WorkerHandle&) { ++timeouts; });
  sup->start();
  ASSERT_TRUE(loop.run_until([&] { return seen.done.has_value(); }));
  EXPECT_EQ(timeouts, 1);
  EXPECT_EQ(seen.exits[1].signal, std::optional<std::string>("SIGKILL"));
  EXPECT_EQ(seen.done->exit_code, 1);
}

TEST(LineSplitter, WholeLinesAcrossReadsAndLongLinesInPiecesOfTheCap) {
  std::vector<std::string> out;
  auto sink = [&](std::string_view l) { out.emplace_back(l); };
  LineSplitter s(8);
  s.feed("ab\ncd", sink);
  s.feed("e\nfghijklmnopq\n", sink);
  s.feed("tail", sink);
  s.finish(sink);
  EXPECT_EQ(out, (std::vector<std::string>{"ab\n", "cde\n", "fghijklm", "nopq\n", "tail"}));
}
