// spawn(): the events Node's ChildProcess gives, in Node's order, compared with what Node itself
// reports for the same scenario (fixtures/spawn_events.js).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>

#include "support.hpp"
#include "uvcluster/process.hpp"

using namespace uvcluster;
using uvc_test::TestLoop;

namespace {

std::string str(const std::optional<int>& v) { return v ? std::to_string(*v) : "null"; }
std::string str(const std::optional<std::string>& v) { return v ? *v : "null"; }

struct Observed {
  std::vector<std::string> events;
  std::string stderr_text;  // apart from events: stdout's and stderr's ends race
  bool killed = false;
  bool closed = false;
};

Observed observe(const std::string& file, std::vector<std::string> args, SpawnOptions options = {}) {
  TestLoop loop;
  Observed o;
  auto spawned = spawn(loop, file, std::move(args), std::move(options));
  EXPECT_TRUE(spawned.ok());
  if (!spawned) return o;
  auto child = spawned.value();
  child->on_spawn([&] { o.events.push_back("spawn"); });
  child->on_error([&](const Error& e) {
    nlohmann::json args = e.spawnargs;
    o.events.push_back("error:" + e.code + ":" + std::to_string(e.errnum) + ":" + e.syscall + ":" + e.path + ":" +
                       args.dump());
  });
  child->on_exit([&](const ExitStatus& s) { o.events.push_back("exit:" + str(s.code) + ":" + str(s.signal)); });
  auto text = std::make_shared<std::array<std::string, 2>>();
  for (int i = 0; i < 2; ++i) {
    Readable* r = child->readable(i + 1);
    const char* name = i == 0 ? "stdout" : "stderr";
    r->on_data([text, i](std::string_view d) { (*text)[i].append(d); });
    r->on_end([&o, text, i, name] {
      if (i == 1) o.stderr_text = (*text)[i];
      else if (!(*text)[i].empty()) o.events.push_back(std::string(name) + ":" + (*text)[i]);
    });
  }
  child->on_close([&](const ExitStatus& s) {
    o.events.push_back("close:" + str(s.code) + ":" + str(s.signal));
    o.killed = child->killed();
    o.closed = true;
  });
  EXPECT_TRUE(loop.run_until([&] { return o.closed; }, 20000));
  return o;
}

void expect_same_as_node(const std::string& scenario, const Observed& ours) {
  auto node = uvc_test::run_node_fixture("spawn_events.js", {scenario});
  EXPECT_EQ(nlohmann::json(ours.events), node["events"]) << scenario;
  EXPECT_EQ(ours.stderr_text, node["stderr"]) << scenario;
  EXPECT_EQ(ours.killed, node["killed"].get<bool>()) << scenario;
}

TEST(Spawn, EventOrderSpawnDataExitClose) {
  expect_same_as_node("echo", observe("/bin/echo", {"hi"}));
}

TEST(Spawn, MissingExecutableIsErrorWithNodeShapeAndNoSpawnEvent) {
  auto o = observe("/no/such/file", {"a", "b"});
  expect_same_as_node("enoent", o);
  ASSERT_FALSE(o.events.empty());
  EXPECT_EQ(o.events.front(), "error:ENOENT:-2:spawn /no/such/file:/no/such/file:[\"a\",\"b\"]");
}

TEST(Spawn, MissingCwdIsAnErrorEvent) {
  SpawnOptions so;
  so.process.cwd = "/no/such/dir";
  expect_same_as_node("missing_cwd", observe("/bin/true", {}, so));
}

// The grandchild keeps stdout open after its parent exits: `exit` comes first, `close` only
// once the grandchild has written and ended (it waits on stdin, which Node closes at exit).
TEST(Spawn, GrandchildHoldingStdoutDelaysCloseNotExit) {
  auto o = observe("/bin/sh", {"-c", "exec 3<&0; (read x <&3; echo late) & exit 0"});
  expect_same_as_node("grandchild", o);
  EXPECT_EQ(o.events, (std::vector<std::string>{"spawn", "exit:0:null", "stdout:late\n", "close:0:null"}));
}

TEST(Spawn, ExitBySignal) { expect_same_as_node("signal", observe("/bin/sh", {"-c", "kill -USR1 $$"})); }

TEST(Spawn, ExitCodeAndBothStreams) {
  expect_same_as_node("exit_code", observe("/bin/sh", {"-c", "echo out; echo err >&2; exit 7"}));
}

TEST(Spawn, TimeoutKillsWithKillSignal) {
  SpawnOptions so;
  so.process.timeout_ms = 100;
  expect_same_as_node("timeout", observe("/bin/sleep", {"10"}, so));
  so.process.kill_signal = "SIGKILL";
  expect_same_as_node("timeout_sigkill", observe("/bin/sleep", {"10"}, so));
}

TEST(Spawn, StdinRoundTripWithBackpressure) {
  TestLoop loop;
  auto child = spawn(loop, "/bin/cat").value();
  std::string big(1 << 20, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  bool first_write = child->stdin_pipe()->write(big);
  EXPECT_FALSE(first_write) << "1 MiB must exceed the high-water mark";
  child->stdin_pipe()->end();
  std::string got;
  bool closed = false;
  child->stdout_pipe()->on_data([&](std::string_view d) { got.append(d); });
  child->on_close([&](const ExitStatus& s) {
    EXPECT_EQ(s.code, 0);
    closed = true;
  });
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
  EXPECT_EQ(got, big);
}

TEST(Spawn, KillReportsDeliveryAndUnknownSignal) {
  TestLoop loop;
  auto child = spawn(loop, "/bin/sleep", {"10"}).value();
  std::vector<std::string> errors;
  child->on_error([&](const Error& e) { errors.push_back(e.code); });
  EXPECT_FALSE(child->kill("SIGNOPE"));
  EXPECT_EQ(errors, std::vector<std::string>{"ERR_UNKNOWN_SIGNAL"});
  EXPECT_FALSE(child->killed());
  EXPECT_TRUE(child->kill("SIGINT"));
  EXPECT_TRUE(child->killed());
  bool closed = false;
  child->on_close([&](const ExitStatus& s) {
    EXPECT_EQ(s.signal, "SIGINT");
    closed = true;
  });
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
  EXPECT_FALSE(child->kill("SIGTERM")) << "kill after exit is false, as in Node";
}

TEST(Spawn, ShellOptionJoinsWords) {
  TestLoop loop;
  SpawnOptions so;
  so.process.shell = true;
  auto child = spawn(loop, "echo", {"$((6*7))", "'a  b'"}, so).value();
  EXPECT_EQ(child->spawnfile(), "/bin/sh");
  EXPECT_EQ(child->spawnargs(), (std::vector<std::string>{"/bin/sh", "-c", "echo $((6*7)) 'a  b'"}));
  std::string out;
  bool closed = false;
  child->stdout_pipe()->on_data([&](std::string_view d) { out.append(d); });
  child->on_close([&](const ExitStatus&) { closed = true; });
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
  EXPECT_EQ(out, "42 a  b\n");
}

TEST(Spawn, EnvArgv0AndInheritedFdSlot) {
  TestLoop loop;
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  SpawnOptions so;
  so.process.env = Env{{"ONLY", "this"}};
  so.process.argv0 = "custom-name";
  so.stdio = {Stdio::ignore(), Stdio::from_fd(p[1]), Stdio::inherit()};
  auto child = spawn(loop, "/bin/sh", {"-c", "echo \"$0 $ONLY $(env | wc -l)\""}, so).value();
  EXPECT_EQ(child->stdout_pipe(), nullptr);
  bool closed = false;
  child->on_close([&](const ExitStatus&) { closed = true; });
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
  close(p[1]);
  char buf[256];
  ssize_t n = read(p[0], buf, sizeof buf);
  close(p[0]);
  ASSERT_GT(n, 0);
  // sh adds PWD (and may add others); ONLY is there and the parent's env is not.
  std::string line(buf, n);
  EXPECT_EQ(line.rfind("custom-name this ", 0), 0u) << line;
  EXPECT_LE(std::stoi(line.substr(17)), 3) << line;
}

}  // namespace

// Issue 8's fault lab: the primary's RSS grew ~64 KB after its first worker exits. Each child
// pipe's Readable carried its own 64 KiB read buffer (two per worker: stdout and stderr),
// allocated untouched, then made resident as worker churn had the heap reuse those pages. The
// streams of one loop now share one buffer; this measures the heap a child's pipes cost.
TEST(Spawn, ChildPipesShareTheLoopsReadBuffer) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizer's allocator does not report through mallinfo2";
#endif
  TestLoop loop;
  auto heap_in_use = [] {
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
  };
  constexpr int kChildren = 8;
  std::vector<std::shared_ptr<ChildProcess>> children;
  children.reserve(kChildren);
  size_t before = heap_in_use();
  for (int i = 0; i < kChildren; ++i) {
    auto c = spawn(loop, "/bin/sh", {"-c", "read line"});  // stdin, stdout and stderr piped
    ASSERT_TRUE(c.ok());
    children.push_back(c.value());
  }
  size_t per_child = (heap_in_use() - before) / kChildren;
  int closed = 0;
  for (auto& c : children) {
    c->on_close([&](const ExitStatus&) { ++closed; });
    c->kill("SIGKILL");
  }
  EXPECT_TRUE(loop.run_until([&] { return closed == kChildren; }, 20000));
  // Was ~135 KiB (two 64 KiB buffers and the rest); a child's bookkeeping is a few KiB.
  EXPECT_LT(per_child, 32u * 1024) << "heap bytes per child with piped stdio";
}

// The shared buffer must not mix streams: children writing at once each get their own bytes.
TEST(Spawn, ConcurrentOutputOfManyChildrenStaysApart) {
  TestLoop loop;
  constexpr int kChildren = 6;
  constexpr size_t kBytes = 300 * 1000;  // several reads each, interleaved between children
  std::vector<std::string> got(kChildren);
  std::vector<std::shared_ptr<ChildProcess>> children;
  int closed = 0;
  for (int i = 0; i < kChildren; ++i) {
    char letter = static_cast<char>('a' + i);
    auto c = spawn(loop, "/bin/sh", {"-c", "head -c " + std::to_string(kBytes) + " /dev/zero | tr '\\0' " + letter});
    ASSERT_TRUE(c.ok());
    c.value()->readable(1)->on_data([&got, i](std::string_view d) { got[i].append(d); });
    c.value()->on_close([&](const ExitStatus&) { ++closed; });
    children.push_back(c.value());
  }
  ASSERT_TRUE(loop.run_until([&] { return closed == kChildren; }, 30000));
  for (int i = 0; i < kChildren; ++i)
    EXPECT_EQ(got[i], std::string(kBytes, static_cast<char>('a' + i))) << "child " << i;
}

namespace {
// The pid of every pidfd this process holds (from /proc/self/fdinfo: "Pid:" of an
// anon_inode:[pidfd]).
std::vector<int> pidfd_targets() {
  std::vector<int> pids;
  for (int fd = 0; fd < 1024; ++fd) {
    char link[64], target[64] = {};
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    if (readlink(link, target, sizeof target - 1) <= 0 || std::string(target) != "anon_inode:[pidfd]")
      continue;
    std::ifstream info("/proc/self/fdinfo/" + std::to_string(fd));
    for (std::string line; std::getline(info, line);)
      if (line.rfind("Pid:", 0) == 0) pids.push_back(std::stoi(line.substr(4)));
  }
  return pids;
}
}  // namespace

// spawn starts the child without fork (posix_spawn) and watches its exit through a pidfd; with
// uid/gid, which posix_spawn cannot set, it falls back to uv_spawn (no pidfd).
TEST(Spawn, WatchesTheChildThroughAPidfdAndFallsBackForUid) {
  for (bool with_uid : {false, true}) {
    TestLoop loop;
    SpawnOptions so;
    so.stdio = {Stdio::pipe(), Stdio::ignore(), Stdio::ignore()};
    if (with_uid) so.process.uid = getuid();  // setuid to ourselves needs no privilege
    auto child = spawn(loop, "/bin/cat", {}, so).value();  // runs until its stdin ends
    ASSERT_TRUE(child->pid());
    auto pids = pidfd_targets();
    bool watched = std::find(pids.begin(), pids.end(), *child->pid()) != pids.end();
    EXPECT_EQ(watched, !with_uid);
    std::optional<ExitStatus> exit;
    bool closed = false;
    child->on_exit([&](const ExitStatus& s) { exit = s; });
    child->on_close([&](const ExitStatus&) { closed = true; });
    child->stdin_pipe()->end();
    ASSERT_TRUE(loop.run_until([&] { return closed; }));
    ASSERT_TRUE(exit);
    EXPECT_EQ(exit->code, 0);
    pids = pidfd_targets();
    EXPECT_EQ(std::find(pids.begin(), pids.end(), *child->pid()), pids.end());  // closed after exit
  }
}

// Slots whose source fds are other slots' numbers (8 <- 9, 9 <- 8): each child fd gets the
// parent fd it names, not one already overwritten by an earlier slot.
TEST(Spawn, SwappedFdSlots) {
  TestLoop loop;
  int a[2], b[2];
  ASSERT_EQ(pipe2(a, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(b, O_CLOEXEC), 0);
  for (int* fd : {&a[0], &a[1], &b[0], &b[1]}) {  // none of them may sit at 8 or 9
    int high = fcntl(*fd, F_DUPFD_CLOEXEC, 64);
    close(*fd);
    *fd = high;
  }
  // Park the write ends at fds 8 and 9 (moving whatever was there out of the way).
  int saved8 = fcntl(8, F_DUPFD_CLOEXEC, 64), saved9 = fcntl(9, F_DUPFD_CLOEXEC, 64);
  ASSERT_EQ(dup3(a[1], 8, O_CLOEXEC), 8);
  ASSERT_EQ(dup3(b[1], 9, O_CLOEXEC), 9);
  close(a[1]);
  close(b[1]);
  SpawnOptions so;
  so.stdio.assign(10, Stdio::ignore());  // sh redirects single-digit fds only
  so.stdio[8] = Stdio::from_fd(9);
  so.stdio[9] = Stdio::from_fd(8);
  auto child = spawn(loop, "/bin/sh", {"-c", "echo eight >&8; echo nine >&9"}, so).value();
  bool closed = false;
  child->on_close([&](const ExitStatus&) { closed = true; });
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
  for (int fd : {8, 9}) close(fd);
  if (saved8 >= 0) dup3(saved8, 8, O_CLOEXEC), close(saved8);
  if (saved9 >= 0) dup3(saved9, 9, O_CLOEXEC), close(saved9);
  char buf[64];
  ssize_t n = read(a[0], buf, sizeof buf);  // a's write end was fd 8 -> the child's fd 9
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "nine\n");
  n = read(b[0], buf, sizeof buf);
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "eight\n");
  close(a[0]);
  close(b[0]);
}
