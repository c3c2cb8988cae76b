// Bad input to spawn/exec/sync is a clear error value (Node's code names), never a crash, and
// leaves no fd or child behind.
#include <gtest/gtest.h>

#include "support.hpp"
#include "uvcluster/exec.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/process.hpp"
#include "uvcluster/sync.hpp"

using namespace uvcluster;
using uvc_test::TestLoop;

namespace {

TEST(BadInput, ValidationErrorsAreReturnedNotThrown) {
  ASSERT_TRUE(spawn_sync("/bin/true").ok());  // libuv's one process-wide SIGCHLD pipe, opened once
  auto before = uvc_test::open_fds();
  {
    TestLoop loop;
    auto code_of = [&](std::string file, std::vector<std::string> args, SpawnOptions so = {}) {
      auto r = spawn(loop, std::move(file), std::move(args), std::move(so));
      return r.ok() ? std::string("ok") : r.error().code;
    };
    EXPECT_EQ(code_of("", {}), "ERR_INVALID_ARG_VALUE");
    EXPECT_EQ(code_of(std::string("/bin/e\0cho", 10), {}), "ERR_INVALID_ARG_VALUE");
    EXPECT_EQ(code_of("/bin/echo", {std::string("a\0b", 3)}), "ERR_INVALID_ARG_VALUE");
    SpawnOptions neg;
    neg.process.timeout_ms = -1;
    EXPECT_EQ(code_of("/bin/true", {}, neg), "ERR_OUT_OF_RANGE");
    SpawnOptions sig;
    sig.process.kill_signal = "SIGNOPE";
    EXPECT_EQ(code_of("/bin/true", {}, sig), "ERR_UNKNOWN_SIGNAL");
    SpawnOptions two_ipc;
    two_ipc.stdio = {Stdio::pipe(), Stdio::pipe(), Stdio::pipe(), Stdio::ipc(), Stdio::ipc()};
    EXPECT_EQ(code_of("/bin/true", {}, two_ipc), "ERR_IPC_ONE_PIPE");
    SpawnOptions env;
    env.process.env = Env{{"K", std::string("v\0x", 3)}};
    EXPECT_EQ(code_of("/bin/true", {}, env), "ERR_INVALID_ARG_VALUE");

    ForkOptions no_ipc;
    no_ipc.stdio = std::vector<Stdio>{Stdio::pipe(), Stdio::pipe(), Stdio::pipe()};
    auto f = fork(loop, "/bin/true", {}, no_ipc);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.error().code, "ERR_CHILD_PROCESS_IPC_REQUIRED");

    ExecOptions eo;
    eo.process.timeout_ms = -5;
    bool called = false;
    auto e = exec(loop, "true", eo, [&](ExecResult) { called = true; });
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.error().code, "ERR_OUT_OF_RANGE");
    SpawnSyncOptions so;
    so.process.kill_signal = "NOPE";
    auto s = spawn_sync("/bin/true", {}, so);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().code, "ERR_UNKNOWN_SIGNAL");
    SpawnSyncOptions sync_neg;  // Node's spawnSync validates its timeout too
    sync_neg.process.timeout_ms = -1;
    auto sn = spawn_sync("/bin/true", {}, sync_neg);
    ASSERT_FALSE(sn.ok());
    EXPECT_EQ(sn.error().code, "ERR_OUT_OF_RANGE");
    loop.run();
    EXPECT_FALSE(called) << "a rejected exec never calls back";
  }
  EXPECT_EQ(uvc_test::open_fds(), before);
}

TEST(BadInput, MissingCwdAndExecutableCallBackOnceWithEnoent) {
  TestLoop loop;
  int calls = 0;
  ExecOptions o;
  o.process.cwd = "/no/such/dir";
  exec_file(loop, "/bin/true", {}, o, [&](ExecResult r) {
    ++calls;
    ASSERT_TRUE(r.error);
    EXPECT_EQ(r.error->error.code, "ENOENT");
    EXPECT_EQ(r.error->cmd, "/bin/true");
  });
  exec_file(loop, "/no/such/file", {"a"}, {}, [&](ExecResult r) {
    ++calls;
    ASSERT_TRUE(r.error);
    EXPECT_EQ(r.error->error.code, "ENOENT");
    EXPECT_EQ(r.error->error.syscall, "spawn /no/such/file");
    EXPECT_EQ(r.error->cmd, "/no/such/file a");
  });
  loop.run();
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

}  // namespace
