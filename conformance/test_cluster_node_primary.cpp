// Node's cluster primary + C++ workers (cluster::Worker), rr and none: Node is the oracle for the
// worker side of the protocol (online, queryServer, listening, newconn/accepted, disconnect).
#include <gtest/gtest.h>

#include "support.hpp"

namespace {

class NodePrimaryCppWorkers : public ::testing::TestWithParam<const char*> {};

TEST_P(NodePrimaryCppWorkers, ServesEveryRequestAndDisconnectsCleanly) {
  auto out = uvc_test::run_node_fixture(
      "cluster_node_primary.js", {uvc_test::helper("cluster_http_worker"), "2", "40", GetParam()});
  EXPECT_EQ(out["failures"], 0);
  int total = 0;
  for (auto& [id, count] : out["answers"].items()) total += count.get<int>();
  EXPECT_EQ(total, 40);
  if (std::string(GetParam()) == "rr") {
    EXPECT_EQ(out["answers"].size(), 2u) << out.dump();
  }
  ASSERT_EQ(out["events"].size(), 2u);
  for (auto& [id, events] : out["events"].items()) {
    ASSERT_GE(events.size(), 5u) << out.dump();
    EXPECT_EQ(events[0], "fork");
    EXPECT_EQ(events[1], "online");
    EXPECT_EQ(events[2], "listening");
    EXPECT_EQ(out["exits"][id]["code"], 0);
    EXPECT_EQ(out["exits"][id]["exitedAfterDisconnect"], true);
    EXPECT_EQ(out["exits"][id]["state"], "dead");
  }
  for (auto& a : out["listening"]) {
    EXPECT_EQ(a["address"], "127.0.0.1");
    EXPECT_EQ(a["addressType"], 4);
  }
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

INSTANTIATE_TEST_SUITE_P(Policies, NodePrimaryCppWorkers, ::testing::Values("rr", "none"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
