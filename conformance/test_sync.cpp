// spawn_sync / exec_sync / exec_file_sync: Node's result object and error shapes.
#include <gtest/gtest.h>

#include "support.hpp"
#include "uvcluster/sync.hpp"

using namespace uvcluster;

namespace {

TEST(SpawnSync, ResultObjectLikeNodes) {
  SpawnSyncOptions so;
  so.input = "from stdin\n";
  auto r = spawn_sync("/bin/sh", {"-c", "cat; echo e >&2; exit 3"}, so);
  ASSERT_TRUE(r.ok());
  EXPECT_GT(r->pid, 0);
  ASSERT_TRUE(r->output.has_value());
  ASSERT_EQ(r->output->size(), 3u);
  EXPECT_FALSE((*r->output)[0].has_value()) << "stdin's slot is null";
  EXPECT_EQ((*r->output)[1], "from stdin\n");
  EXPECT_EQ(r->stdout_data, "from stdin\n");
  EXPECT_EQ(r->stderr_data, "e\n");
  EXPECT_EQ(r->status, 3);
  EXPECT_FALSE(r->signal);
  EXPECT_FALSE(r->error);
}

// Reading both pipes together: a child writing 4 MiB to each stream would deadlock a runner
// that drains one pipe at a time.
TEST(SpawnSync, BothPipesDrainedTogether) {
  SpawnSyncOptions so;
  so.max_buffer = 0;  // unlimited, as in Node
  auto r = spawn_sync("/bin/sh", {"-c", "head -c 4194304 /dev/zero >&2; head -c 4194304 /dev/zero"}, so);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stdout_data.size(), 4194304u);
  EXPECT_EQ(r->stderr_data.size(), 4194304u);
  EXPECT_EQ(r->status, 0);
}

TEST(SpawnSync, NeverStartedHasNullOutputAndSpawnSyncError) {
  auto r = spawn_sync("/no/such/file", {"x"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->pid, 0);
  EXPECT_FALSE(r->output.has_value());
  EXPECT_FALSE(r->status.has_value());
  ASSERT_TRUE(r->error.has_value());
  EXPECT_EQ(r->error->code, "ENOENT");
  EXPECT_EQ(r->error->syscall, "spawnSync /no/such/file");
  EXPECT_EQ(r->error->path, "/no/such/file");
  EXPECT_EQ(r->error->spawnargs, std::vector<std::string>{"x"});
}

TEST(SpawnSync, TimeoutIsEtimedoutAfterTheChildReallyExited) {
  SpawnSyncOptions so;
  so.process.timeout_ms = 100;
  so.process.kill_signal = "SIGKILL";
  auto r = spawn_sync("/bin/sleep", {"10"}, so);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->error.has_value());
  EXPECT_EQ(r->error->code, "ETIMEDOUT");
  EXPECT_EQ(r->signal, "SIGKILL");
  EXPECT_FALSE(r->status.has_value());
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

TEST(ExecSync, ErrorsCarryTheWholeResult) {
  SpawnSyncOptions so;
  so.stdio = {Stdio::pipe(), Stdio::pipe(), Stdio::pipe()};
  so.max_buffer = 10;
  auto r = exec_sync("head -c 100000 /dev/zero | tr '\\0' x; exec sleep 10", so);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().error.code, "ENOBUFS");
  EXPECT_GE(r.error().result.stdout_data.size(), 10u) << "whole chunks are kept";
  EXPECT_EQ(r.error().result.signal, "SIGTERM");

  auto ok = exec_file_sync("/bin/echo", {"fine"});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok.value(), "fine\n");

  SpawnSyncOptions quiet;
  quiet.stdio = {Stdio::pipe(), Stdio::pipe(), Stdio::ignore()};
  auto bad = exec_file_sync("/bin/sh", {"-c", "exit 5"}, quiet);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().error.message, "Command failed: /bin/sh -c exit 5");
  EXPECT_EQ(bad.error().result.status, 5);
}

}  // namespace
