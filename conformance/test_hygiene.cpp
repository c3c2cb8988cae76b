// Resource hygiene: spawning leaves no fd and no zombie behind, and a child sees only the fds it
// was given (everything the library opens is close-on-exec).
#include <fcntl.h>
#include <gtest/gtest.h>

#include "support.hpp"
#include "uvcluster/exec.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/process.hpp"
#include "uvcluster/sync.hpp"

using namespace uvcluster;
using uvc_test::TestLoop;

namespace {

// libuv opens one process-wide pipe for SIGCHLD on the first spawn and keeps it; take the
// baseline after that, so the comparison is about what each spawn leaves behind.
std::set<int> baseline_after_first_spawn() {
  auto r = spawn_sync("/bin/true");
  EXPECT_TRUE(r.ok());
  return uvc_test::open_fds();
}

TEST(Hygiene, ThousandSpawnsLeaveFdsAndNoZombies) {
  auto before = baseline_after_first_spawn();
  {
    TestLoop loop;
    constexpr int kTotal = 1000, kConcurrent = 16;
    int started = 0, closed = 0, failures = 0;
    std::function<void()> start_one = [&] {
      if (started == kTotal) return;
      ++started;
      auto child = spawn(loop, "/bin/true");
      ASSERT_TRUE(child.ok());
      child.value()->on_close([&](const ExitStatus& s) {
        if (s.code != 0) ++failures;
        ++closed;
        start_one();
      });
    };
    for (int i = 0; i < kConcurrent; ++i) start_one();
    ASSERT_TRUE(loop.run_until([&] { return closed == kTotal; }, 120000));
    EXPECT_EQ(failures, 0);
  }
  EXPECT_EQ(uvc_test::open_fds(), before);
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

TEST(Hygiene, ExecAndSyncLeaveNothingBehind) {
  auto before = baseline_after_first_spawn();
  {
    TestLoop loop;
    int done = 0;
    for (int i = 0; i < 50; ++i) {
      ExecOptions o;
      o.max_buffer = 2;  // some are killed for max_buffer, the rest finish
      ASSERT_TRUE(exec(loop, i % 2 ? "echo 1" : "echo 12345", o, [&](ExecResult) { ++done; }).ok());
    }
    ASSERT_TRUE(loop.run_until([&] { return done == 50; }));
  }
  for (int i = 0; i < 50; ++i) {
    SpawnSyncOptions so;
    so.process.timeout_ms = i % 10 == 0 ? 50 : 0;
    ASSERT_TRUE(spawn_sync(i % 10 == 0 ? "/bin/sleep" : "/bin/true", {i % 10 == 0 ? "5" : ""}, so).ok());
  }
  EXPECT_EQ(uvc_test::open_fds(), before);
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

// While another child's pipes are open in the parent, a new child still sees only 0, 1, 2 (and
// an explicitly given slot): the loop's epoll fd, signal pipes and other pipes are close-on-exec.
TEST(Hygiene, ChildSeesOnlyTheFdsItWasGiven) {
  // fds this test process inherited without close-on-exec (from whoever started it) pass on to
  // any child, in Node too; they are not the library's. Everything else must stay behind.
  std::string expected = "0\n1\n2\n4\n";
  std::set<int> expected_fds = {0, 1, 2, 4};
  for (int fd : uvc_test::open_fds())
    if (fd > 2 && !(fcntl(fd, F_GETFD) & FD_CLOEXEC)) expected_fds.insert(fd);
  expected.clear();
  for (int fd : expected_fds) expected += std::to_string(fd) + "\n";
  TestLoop loop;
  auto holder = spawn(loop, "/bin/cat").value();  // keeps 3 pipe fds open in the parent
  SpawnOptions so;
  so.stdio = {Stdio::pipe(), Stdio::pipe(), Stdio::pipe(), Stdio::ignore(), Stdio::pipe()};
  auto lister = spawn(loop, uvc_test::helper("list_fds"), {}, so).value();
  std::string out;
  bool closed = false;
  lister->stdout_pipe()->on_data([&](std::string_view d) { out.append(d); });
  lister->on_close([&](const ExitStatus&) { closed = true; });
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
  EXPECT_EQ(out, expected);
  holder->stdin_pipe()->end();
  bool holder_closed = false;
  holder->on_close([&](const ExitStatus&) { holder_closed = true; });
  ASSERT_TRUE(loop.run_until([&] { return holder_closed; }));
}

}  // namespace
