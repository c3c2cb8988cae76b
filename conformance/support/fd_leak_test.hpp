#pragma once
// A fixture for tests that must leave no fd open: SIGPIPE ignored (a peer may close first), the
// process's fds listed before the test (after libuv's process-wide signal pipe exists) and
// compared after it.
#include <gtest/gtest.h>

#include <csignal>
#include <set>

#include "support.hpp"

namespace uvc_test {

class FdLeakTest : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);
    { TestLoop warm_up; }  // libuv opens a process-wide signal pipe with the first loop
    before_ = open_fds();
  }
  void TearDown() override { EXPECT_EQ(open_fds(), before_) << "fd leak"; }

 private:
  std::set<int> before_;
};

}  // namespace uvc_test
