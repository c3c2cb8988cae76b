// C++ parent (uvcluster::fork + ipc::Channel) <-> real Node child.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ipc/channel_owner.hpp"  // impl/src: white-box
#include "support.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"
#include "uvcluster/ipc/framing.hpp"

using namespace uvcluster;
using ipc::Json;

namespace {

struct NodeChild {
  uvc_test::TestLoop& loop;
  std::shared_ptr<ChildProcess> child;
  std::vector<Json> messages;
  std::vector<Json> internal;
  std::vector<Error> errors;
  bool disconnected = false;
  bool closed = false;
  ExitStatus status;

  explicit NodeChild(uvc_test::TestLoop& l, const std::string& script = "ipc_echo_child.js") : loop(l) {
    auto r = fork(loop.get(), uvc_test::fixture(script));
    EXPECT_TRUE(r.ok());
    child = r.value();
    child->on_close([this](const ExitStatus& s) {
      closed = true;
      status = s;
    });
    ch().on_message([this](const Json& m, ipc::ReceivedHandle*) { messages.push_back(m); });
    ch().on_internal_message([this](const Json& m, ipc::ReceivedHandle*) { internal.push_back(m); });
    ch().on_disconnect([this] { disconnected = true; });
    ch().on_error([this](const Error& e) { errors.push_back(e); });
  }
  ipc::Channel& ch() { return *child->channel(); }
  bool wait_messages(size_t n, int ms = 20000) {
    return loop.run_until([&] { return messages.size() >= n; }, ms);
  }
  void finish() {
    if (ch().connected()) {
      ASSERT_TRUE(ch().disconnect().ok());
    }
    ASSERT_TRUE(loop.run_until([&] { return closed; }));
  }
};

}  // namespace

TEST(IpcNodeChild, ValuesRoundTrip) {
  uvc_test::TestLoop loop;
  NodeChild c(loop);
  std::vector<Json> values = {
      "hello", 42, -1.5, 0, nullptr, true, false, Json::array(), Json::object(),
      Json{{"nested", {{"a", Json::array({1, "two", nullptr, Json{{"x", Json::array()}}})}}}},
      "quote\" backslash\\ newline\n tab\t nul\u0000 ctrl\u001f", "\u2028\u2029", "é€😀 𝄞",
      Json{{"emoji😀", "astral 𝄞"}}, 1e300, 9007199254740991LL};
  for (auto& v : values) EXPECT_TRUE(c.ch().send(v));
  ASSERT_TRUE(c.wait_messages(values.size()));
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(c.messages[i], values[i]) << i;
  c.finish();
  EXPECT_TRUE(c.errors.empty());
  EXPECT_EQ(c.status.code, 0);
}

TEST(IpcNodeChild, InvalidUtf8DecodedAsNodeDecodesIt) {
  // Raw frames with invalid UTF-8 go to a Node echo child: Node's channel decodes them with its
  // StringDecoder and sends back what it made of them, which must be what parse_frame makes of
  // the same bytes (one U+FFFD per maximal invalid subpart: `E2 82` then `"` is ONE).
  const std::vector<std::string> lines = {
      "\"a\xff b\xe2\x82\"", "\"\xe2\x82\"", "\"\xf0\x9f\x98\"", "\"\xed\xa0\x80\"",
      "\"\xe0\x80\xaf\"", "\"\xc3\"", "\"\xf4\x90\x80\x80\"", "\"\xc0\xaf\xfe\"",
      "{\"k\xe2\x82\":\"\xf0\x9f\x98\x80\xf0\x9f\"}"};
  uvc_test::TestLoop loop;
  NodeChild c(loop);
  std::string wire;
  for (auto& l : lines) wire += l + "\n";
  uv_buf_t buf = uv_buf_init(wire.data(), static_cast<unsigned>(wire.size()));
  ASSERT_EQ(uv_try_write(reinterpret_cast<uv_stream_t*>(ipc::ChannelOwner::pipe(c.ch())), &buf, 1),
            static_cast<int>(wire.size()));
  ASSERT_TRUE(c.wait_messages(lines.size()));
  for (size_t i = 0; i < lines.size(); ++i) {
    auto ours = ipc::parse_frame(lines[i]);
    ASSERT_TRUE(ours.ok()) << i;
    EXPECT_EQ(ours.value(), c.messages[i]) << i << ": " << c.messages[i].dump();
  }
  c.finish();
  EXPECT_TRUE(c.errors.empty());
}

TEST(IpcNodeChild, OneMebibyteMessage) {
  uvc_test::TestLoop loop;
  NodeChild c(loop);
  std::string big;
  while (big.size() < (1u << 20)) big += "abcdefghij é😀 \\ \" \n";  // multi-byte + escapes
  Json msg = {{"big", big}};
  c.ch().send(msg);
  ASSERT_TRUE(c.wait_messages(1));
  EXPECT_EQ(c.messages[0], msg);
  c.finish();
}

TEST(IpcNodeChild, TenThousandInOrder) {
  uvc_test::TestLoop loop;
  NodeChild c(loop);
  bool saw_backpressure = false;
  for (int i = 0; i < 10000; ++i)
    if (!c.ch().send(Json{{"i", i}, {"pad", std::string(64, 'p')}})) saw_backpressure = true;
  ASSERT_TRUE(c.wait_messages(10000, 60000));
  for (int i = 0; i < 10000; ++i) ASSERT_EQ(c.messages[i]["i"], i);
  (void)saw_backpressure;  // depends on scheduling; the order is what matters
  c.finish();
}

TEST(IpcNodeChild, InternalAndUserRouting) {
  uvc_test::TestLoop loop;
  NodeChild c(loop);
  c.ch().send("internal");
  c.ch().send(Json{{"cmd", "fooNODE_"}});
  ASSERT_TRUE(c.wait_messages(2));
  ASSERT_EQ(c.internal.size(), 1u);
  EXPECT_EQ(c.internal[0], (Json{{"cmd", "NODE_TEST_INTERNAL"}, {"n", 1}}));
  EXPECT_EQ(c.messages[0], (Json{{"cmd", "NODE_"}, {"user", true}}));  // too short: user message
  EXPECT_EQ(c.messages[1], (Json{{"cmd", "fooNODE_"}}));
  c.finish();
}

TEST(IpcNodeChild, ParentDisconnects) {
  uvc_test::TestLoop loop;
  NodeChild c(loop);
  c.ch().send("ping");
  ASSERT_TRUE(c.wait_messages(1));
  ASSERT_TRUE(c.ch().disconnect().ok());
  EXPECT_FALSE(c.ch().connected());
  EXPECT_FALSE(c.disconnected);  // asynchronous
  auto again = c.ch().disconnect();
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, "ERR_IPC_DISCONNECTED");
  std::string send_error;
  EXPECT_FALSE(c.ch().send("late", std::nullopt, {}, [&](const Error* e) { send_error = e ? e->code : "none"; }));
  ASSERT_TRUE(loop.run_until([&] { return c.closed; }));
  EXPECT_TRUE(c.disconnected);
  EXPECT_EQ(send_error, "ERR_IPC_CHANNEL_CLOSED");
  EXPECT_EQ(c.status.code, 0);  // Node child exits once its channel is gone
}

TEST(IpcNodeChild, ChildDisconnects) {
  uvc_test::TestLoop loop;
  NodeChild c(loop);
  c.ch().send("disconnect");
  ASSERT_TRUE(loop.run_until([&] { return c.disconnected && c.closed; }));
  EXPECT_FALSE(c.ch().connected());
  EXPECT_EQ(c.status.code, 0);
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}

TEST(IpcNodeChild, ExitCodeAndNoLeaks) {
  {  // warm-up: libuv opens its process-wide SIGCHLD pipe on the first spawn
    uvc_test::TestLoop loop;
    NodeChild c(loop);
    c.finish();
  }
  auto before = uvc_test::open_fds();
  {
    uvc_test::TestLoop loop;
    NodeChild c(loop);
    c.ch().send("exit");
    ASSERT_TRUE(loop.run_until([&] { return c.closed; }));
    EXPECT_EQ(c.status.code, 7);
    EXPECT_TRUE(c.disconnected);
  }
  EXPECT_EQ(uvc_test::open_fds(), before);
  EXPECT_TRUE(uvc_test::zombie_children().empty());
}
