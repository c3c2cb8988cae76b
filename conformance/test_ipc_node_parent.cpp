// Node parent <-> C++ child (helpers/ipc_child and `uvcluster ipc-echo`), and the ipc CLI.
#include <gtest/gtest.h>

#include "support.hpp"

using nlohmann::json;

TEST(IpcNodeParent, ValuesBigAndBurstWithCppChild) {
  json r = uvc_test::run_node_fixture("ipc_cpp_child.js", {uvc_test::helper("ipc_child"), "values"});
  EXPECT_EQ(r["internal"], json::array({{{"cmd", "NODE_TEST_INTERNAL"}, {"from", "C++"}}}));
  EXPECT_EQ(r["user"], json::array({{{"hello", "from C++"}, {"envCleared", true}}}));
  EXPECT_EQ(r["bigOk"], true);
  EXPECT_EQ(r["burstOk"], true);
  EXPECT_EQ(r["events"], json::array({"disconnect", json::array({"exit", 0, nullptr})}));
}

TEST(IpcNodeParent, NodeParentDisconnects) {
  json r = uvc_test::run_node_fixture("ipc_cpp_child.js", {uvc_test::helper("ipc_child"), "parent-disconnect"});
  // The C++ child exits 0 only if it saw `disconnect` (else 4).
  EXPECT_EQ(r["events"], json::array({"disconnect", json::array({"exit", 0, nullptr})}));
}

TEST(IpcNodeParent, CppChildDisconnects) {
  json r = uvc_test::run_node_fixture("ipc_cpp_child.js", {uvc_test::helper("ipc_child"), "child-disconnect"});
  EXPECT_EQ(r["events"], json::array({"disconnect", json::array({"exit", 0, nullptr})}));
}

TEST(IpcNodeParent, UnrefdChannelLetsCppChildExit) {
  json r = uvc_test::run_node_fixture("ipc_cpp_child.js", {uvc_test::helper("ipc_child"), "idle", "x", "unref"});
  bool saw_exit4 = false;
  for (auto& e : r["events"]) saw_exit4 |= e == json::array({"exit", 4, nullptr});
  EXPECT_TRUE(saw_exit4) << r;
  EXPECT_EQ(r["user"].size(), 1u);  // the hello was still sent before the loop ended
}

TEST(IpcNodeParent, UvclusterIpcEchoAsChild) {
  json r = uvc_test::run_node_fixture("ipc_cpp_child.js", {uvc_test::cli(), "values", "ipc-echo"});
  EXPECT_EQ(r["bigOk"], true);
  EXPECT_EQ(r["burstOk"], true);
  EXPECT_EQ(r["events"], json::array({"disconnect", json::array({"exit", 0, nullptr})}));
}

TEST(IpcNodeParent, LoneSurrogatesRoundTripThroughIpcEcho) {
  // Oracle: a Node echo child gives every string back unchanged; so must `uvcluster ipc-echo`.
  json node = uvc_test::run_node_fixture("ipc_echo_strings.js", {uvc_test::fixture("ipc_echo_child.js")});
  ASSERT_EQ(node["got"], node["sent"]) << node;
  json ours = uvc_test::run_node_fixture("ipc_echo_strings.js", {uvc_test::cli(), "ipc-echo"});
  EXPECT_EQ(ours["got"], node["got"]);
}

TEST(IpcNodeParent, SocketListAnsweredAsNodesReceiverDoes) {
  // A Node server that sent an accepted socket to a child asks that child for the socket list
  // in getConnections() and close(); a C++ child must answer as a Node child does.
  json node = uvc_test::run_node_fixture("socket_list_parent.js", {uvc_test::fixture("socket_list_child.js")});
  ASSERT_EQ(node["steps"], json::parse(R"([["held",1],["count",1],"child-closed",["server-closed",null]])"));
  json ours = uvc_test::run_node_fixture("socket_list_parent.js", {uvc_test::helper("ipc_child"), "x"});
  EXPECT_EQ(ours["steps"], node["steps"]);
}

TEST(IpcCli, StdinLinesToMessagesAndBack) {
  auto c = uvc_test::run_capture(
      {uvc_test::cli(), "ipc", "--replies", "5", "--", uvc_test::fixture("ipc_echo_child.js")},
      "\"hi\"\n{\"a\":[1,{\"b\":null}]}\nnot json\n\n42\n");
  EXPECT_EQ(c.status, 0) << c.err;
  EXPECT_EQ(c.out, "\"hi\"\n{\"a\":[1,{\"b\":null}]}\n\"not json\"\n\"\"\n42\n");
}

TEST(IpcCli, ExitStatusPropagates) {
  auto c = uvc_test::run_capture({uvc_test::cli(), "ipc", "--", uvc_test::fixture("ipc_echo_child.js")},
                                 "\"exit\"\n");
  EXPECT_EQ(c.status, 7) << c.err;
  auto s = uvc_test::run_capture({uvc_test::cli(), "ipc", "--", "/bin/sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(s.status, 128 + 15);
}

TEST(IpcCli, CppChildThroughCli) {
  auto c = uvc_test::run_capture({uvc_test::cli(), "ipc", "--replies", "2", "--", uvc_test::helper("ipc_child")},
                                 "{\"x\":1}\n");
  EXPECT_EQ(c.status, 0) << c.err;
  EXPECT_EQ(c.out, "{\"envCleared\":true,\"hello\":\"from C++\"}\n{\"x\":1}\n");
}

TEST(IpcCli, UsageErrors) {
  auto a = uvc_test::run_capture({uvc_test::cli(), "ipc"});
  EXPECT_EQ(a.status, 2);
  EXPECT_NE(a.err.find("missing command"), std::string::npos);
  EXPECT_NE(a.out.find("usage: uvcluster ipc"), std::string::npos);
  auto b = uvc_test::run_capture({uvc_test::cli(), "ipc", "--bogus", "x"});
  EXPECT_EQ(b.status, 2);
  auto e = uvc_test::run_capture({uvc_test::cli(), "ipc-echo"});
  EXPECT_EQ(e.status, 1);  // no channel
  EXPECT_NE(e.err.find("NODE_CHANNEL_FD"), std::string::npos);
}
