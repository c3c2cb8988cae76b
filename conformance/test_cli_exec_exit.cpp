// `uvcluster exec` exit statuses: an internal failure (here: no fd left for the event loop) is
// 70, not the usage code 2, and not a crash; bad usage stays 2.
#include <gtest/gtest.h>

#include <string>

#include "support.hpp"
#include "uvcluster/sync.hpp"

namespace {

uvcluster::SpawnSyncResult run_sh(const std::string& script) {
  uvcluster::SpawnSyncOptions o;
  o.process.timeout_ms = 60000;
  auto r = uvcluster::spawn_sync("/bin/sh", {"-c", script}, o).value();
  EXPECT_FALSE(r.error) << r.error->message;
  return r;
}

TEST(CliExecExit, InternalFailureIsSeventyWithAMessage) {
  // Only fds 0-2 open below the limit of 6: enough to load the program, for the epoll fd and
  // libuv's process-wide signal pipe, not for the loop's own signal pipe, so uv_loop_init fails
  // with EMFILE (its result used to go unchecked: a crash). Under ASan, LeakSanitizer's exit scan
  // needs fds of its own, so it is off for this one child.
  auto r = run_sh(
      "for fd in 3 4 5 6 7 8 9; do eval \"exec $fd>&-\"; done; "
      "export ASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0\"; ulimit -n 6 && exec " +
      uvc_test::cli() + " exec -- /bin/true");
  EXPECT_EQ(r.signal, std::nullopt) << r.stderr_data;
  EXPECT_EQ(r.status, std::optional<int>(70)) << r.stderr_data;
  EXPECT_NE(r.stderr_data.find("uvcluster exec: internal error: uv_loop_init: EMFILE"),
            std::string::npos)
      << r.stderr_data;
}

TEST(CliExecExit, BadUsageIsTwo) {
  auto r = run_sh(uvc_test::cli() + " exec --timeout x -- /bin/true");
  EXPECT_EQ(r.status, std::optional<int>(2)) << r.stderr_data;
}

}  // namespace
