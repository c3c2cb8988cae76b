// Advanced serialization: the V8 codec against bytes node v20 wrote (unit), and differential
// tests with Node as the oracle both ways (Node parent <-> `uvcluster ipc-echo`, `uvcluster ipc`
// <-> Node child), handles included.
#include <gtest/gtest.h>

#include <sstream>

#include "support.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"
#include "uvcluster/ipc/v8_serializer.hpp"

using nlohmann::json;
namespace ipc = uvcluster::ipc;

namespace {

std::string unhex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  return out;
}

json decode_hex(std::string_view hex) {
  auto r = ipc::decode_v8_payload(unhex(hex));
  EXPECT_TRUE(r.ok()) << hex << ": " << (r.ok() ? "" : r.error().message);
  return r.ok() ? ipc::v8_text_form(r.value()) : json();
}

std::string encode_hex(const json& message) {
  auto r = ipc::encode_v8_frame(message);
  EXPECT_TRUE(r.ok()) << message << ": " << (r.ok() ? "" : r.error().message);
  if (!r.ok()) return {};
  std::string h;
  char b[3];
  for (unsigned char c : r.value().substr(4)) {
    std::snprintf(b, sizeof b, "%02x", c);
    h += b;
  }
  return h;
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

// Payloads as node v20 writes them: v8.serialize() output, with the host-object tag (0) Node's
// ChildProcessSerializer adds before a view, as its advanced channel frames them.
TEST(IpcV8Codec, DecodesWhatNodeWrites) {
  EXPECT_EQ(decode_hex("ff0f6f490222016122017849047b02"), json::parse(R"({"1":"a","x":2})"));
  EXPECT_EQ(decode_hex("ff0f522201613f"), json::parse(R"({"$v8":"RegExp","source":"a","flags":"gimsuy"})"));
  EXPECT_EQ(decode_hex("ff0f5a2100000000000000000100000000000000"), json::parse(R"({"$v8":"BigInt","value":"-18446744073709551616"})"));
  EXPECT_EQ(decode_hex("ff0f3b490249043a02"), json::parse(R"({"$v8":"Map","entries":[[1,2]]})"));
  EXPECT_EQ(decode_hex("ff0f6302ac20"), json("\xE2\x82\xAC"));
  EXPECT_EQ(decode_hex("ff0f5c000a0107"), json::parse(R"({"$v8":"Buffer","data":"07"})"));
  EXPECT_EQ(decode_hex("ff0f6f220473656c665e007b01"), json::parse(R"({"self":{"$v8":"ref","path":""}})"));
  EXPECT_EQ(decode_hex("ff0f610b4914490240010b"), json::parse(R"({"$v8":"Array","length":11,"properties":{"10":1}})"));
  EXPECT_EQ(decode_hex("ff0f72546d2201742e"), json::parse(R"({"$v8":"Error","name":"TypeError","message":"t"})"));
  EXPECT_EQ(decode_hex("ff0f41025f30240002"), json::parse(R"([{"$v8":"undefined"},null])"));
}

TEST(IpcV8Codec, EncodesAsNodeWrites) {
  EXPECT_EQ(encode_hex(json::parse(R"({"$v8":"Map","entries":[[1,2]]})")), "ff0f3b490249043a02");
  EXPECT_EQ(encode_hex(json::parse(R"({"self":{"$v8":"ref","path":""}})")), "ff0f6f220473656c665e007b01");
  EXPECT_EQ(encode_hex(json::parse(R"({"$v8":"Float64Array","data":"000000000000f03f"})")), "ff0f5c000808000000000000f03f");
  EXPECT_EQ(encode_hex(json::parse(R"({"$v8":"BigInt","value":"1"})")), "ff0f5a100100000000000000");
  EXPECT_EQ(encode_hex(json(2147483648.0)), "ff0f4e000000000000e041");  // a double stays one
  EXPECT_EQ(encode_hex(json(-5)), "ff0f4909");
}

// An Invalid Date (new Date(NaN)) and a Number object holding NaN, Infinity or -0 survive the
// text form (the CLI's and the fuzzer's round trip): their value becomes {"$v8":"number"}, which
// the encoder must take back. A fuzz input found the Date case failing.
TEST(IpcV8Codec, DateAndNumberObjectsKeepNaNThroughTheTextForm) {
  const char* payloads[] = {
      "ff0f44000000000000f87f",   // new Date(NaN)
      "ff0f6e000000000000f87f",   // new Number(NaN)
      "ff0f6e000000000000f07f",   // new Number(Infinity)
      "ff0f6e0000000000000080",   // new Number(-0)
      "ff0f410244fcbfffffffffffff4400008056febc7842240002",  // the fuzz input: [Invalid Date, Date]
  };
  for (const char* hex : payloads) {
    json text = decode_hex(hex);
    ASSERT_FALSE(text.is_null()) << hex;
    auto again = ipc::encode_v8_frame(text);
    ASSERT_TRUE(again.ok()) << hex << ": " << text << ": " << again.error().message;
    auto back = ipc::decode_v8_payload(std::string_view(again.value()).substr(4));
    ASSERT_TRUE(back.ok()) << hex;
    EXPECT_EQ(ipc::v8_text_form(back.value()), text) << hex;
  }
  EXPECT_EQ(decode_hex("ff0f44000000000000f87f"), json::parse(R"({"$v8":"Date","value":{"$v8":"number","value":"NaN"}})"));
}

// Objects come back with sorted keys, so an object shared by several properties can be written
// first under another key than it arrived under (the fuzz input: {x: o, y: o, "\x01": [o]}).
// The graph is kept: one object, reached from all three places, and a second round trip is exact.
TEST(IpcV8Codec, ASharedObjectKeepsItsGraphWhenSortedKeysMoveItsFirstPlace) {
  auto first = ipc::decode_v8_payload(unhex("ff0f6f2201786f22017349027b012201795e0122010141015e012400017b03"));
  ASSERT_TRUE(first.ok()) << first.error().message;
  auto frame = ipc::encode_v8_frame(first.value());
  ASSERT_TRUE(frame.ok());
  auto again = ipc::decode_v8_payload(std::string_view(frame.value()).substr(4));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(ipc::v8_text_form(again.value()), json::parse(R"({"\u0001":[{"s":1}],
      "x":{"$v8":"ref","path":"/\u0001/0"},"y":{"$v8":"ref","path":"/\u0001/0"}})"));
  auto frame_again = ipc::encode_v8_frame(again.value());
  ASSERT_TRUE(frame_again.ok());
  EXPECT_EQ(frame_again.value(), frame.value());
}

TEST(IpcV8Codec, BadInputIsAnErrorNeverACrash) {
  for (const char* hex : {"", "ff", "ff10", "ff0f", "ff0f6f", "ff0f5e05", "ff0f75", "ff0f4102", "ff0f3b49023a02",
                          "ff0f5c000e0100", "ff0f5c00050300000000", "ff0f22ffff0f"}) {
    auto r = ipc::decode_v8_payload(unhex(hex));
    ASSERT_FALSE(r.ok()) << hex;
    EXPECT_EQ(r.error().code, "ERR_IPC_BAD_FRAME") << hex;
  }
  auto tag = ipc::decode_v8_payload(unhex("ff0f75"));  // SharedArrayBuffer: named in the error
  EXPECT_NE(tag.error().message.find("'u'"), std::string::npos) << tag.error().message;
  for (const char* bad : {R"({"$v8":"Nope"})", R"({"$v8":"ref","path":"/missing"})", R"({"$v8":"hole"})",
                          R"({"$v8":"Int16Array","data":"00"})", R"({"$v8":"BigInt","value":"12x"})",
                          R"({"a":{"$v8":"ref","path":"/b"},"b":{"$v8":"ref","path":"/a"}})"}) {
    auto r = ipc::encode_v8_frame(json::parse(bad));
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, "ERR_IPC_UNSERIALIZABLE") << bad;
  }
}

TEST(IpcV8Codec, NestingIsBoundedBothWays) {
  std::string deep = "ff0f";
  for (int i = 0; i < 1001; ++i) deep += "4101";  // [[[...]]] 1001 levels
  deep += "30";
  for (int i = 0; i < 1001; ++i) deep += "240001";
  auto r = ipc::decode_v8_payload(unhex(deep));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("deeper than 1000"), std::string::npos) << r.error().message;
  std::string ok_depth = "ff0f";
  for (int i = 0; i < 1000; ++i) ok_depth += "4101";
  ok_depth += "30";
  for (int i = 0; i < 1000; ++i) ok_depth += "240001";
  EXPECT_TRUE(ipc::decode_v8_payload(unhex(ok_depth)).ok());
  std::string hosts = "ff0f";  // Node's non-view host objects nest without a container each
  for (int i = 0; i < 200000; ++i) hosts += "5c01";
  EXPECT_FALSE(ipc::decode_v8_payload(unhex(hosts)).ok());
}

TEST(IpcV8Codec, FrameReaderSplitsAnywhere) {
  std::string stream = ipc::encode_v8_frame(json{{"a", 1}}).value() + ipc::encode_v8_frame(json("b")).value();
  for (size_t step = 1; step <= stream.size(); ++step) {
    ipc::V8FrameReader reader;
    std::vector<json> got;
    for (size_t off = 0; off < stream.size(); off += step)
      ASSERT_TRUE(reader.feed(stream.data() + off, std::min(step, stream.size() - off), [&](std::string_view p) {
        got.push_back(ipc::decode_v8_payload(p).value());
      }));
    EXPECT_EQ(got, (std::vector<json>{json{{"a", 1}}, json("b")})) << step;
    EXPECT_FALSE(reader.buffering());
  }
  ipc::V8FrameReader small(8);
  EXPECT_FALSE(small.feed("\0\0\0\x09", 4, [](std::string_view) {}));
}

// Oracle first: a Node echo child returns every value deep-equal (identity of shared and
// circular references included); `uvcluster ipc-echo` must do the same.
TEST(IpcV8NodeParent, EveryValueRoundTripsThroughIpcEcho) {
  json node = uvc_test::run_node_fixture("ipc_v8_echo_parent.js", {uvc_test::fixture("ipc_v8_echo_child.js")});
  for (const auto& r : node["results"]) ASSERT_EQ(r[1], "ok") << "oracle: " << r;
  json ours = uvc_test::run_node_fixture("ipc_v8_echo_parent.js", {uvc_test::cli()});
  ASSERT_EQ(ours["results"].size(), node["results"].size()) << ours;
  for (const auto& r : ours["results"]) EXPECT_EQ(r[1], "ok") << r;
  EXPECT_EQ(ours["handle"], node["handle"]);
  EXPECT_EQ(ours["handle"], json::parse(R"({"same":true,"type":"Server","port":true})"));
  EXPECT_EQ(ours["exit"], json::parse("[0,null]"));
}

// A C++ parent: what a Node child sends prints in the text form, and that text sent back
// makes the same values on the Node side.
TEST(IpcV8CppParent, NodeChildValuesThroughTheCli) {
  auto sent = uvc_test::run_capture({uvc_test::cli(), "ipc", "--serialization", "advanced", "--replies", "30", "--",
                                     uvc_test::fixture("ipc_v8_child.js"), "send-all"});
  ASSERT_EQ(sent.status, 0) << sent.err;
  auto lines = lines_of(sent.out);
  ASSERT_EQ(lines.size(), 30u) << sent.out;
  EXPECT_EQ(json::parse(lines[5]), json::parse(R"([{"$v8":"BigInt","value":"0"},{"$v8":"BigInt","value":"1"},
      {"$v8":"BigInt","value":"-1"},{"$v8":"BigInt","value":"123"},{"$v8":"BigInt","value":"18446744073709551616"},
      {"$v8":"BigInt","value":"-18446744073709551616"},
      {"$v8":"BigInt","value":"1606938044258990275541962092341162602522202993782792835301383"}])"));
  EXPECT_EQ(json::parse(lines[24]), json::parse(R"({"name":"c","self":{"$v8":"ref","path":""}})"));
  std::string back;
  for (auto& l : lines) back += l + "\n";
  auto checked = uvc_test::run_capture({uvc_test::cli(), "ipc", "--serialization", "advanced", "--replies", "30", "--",
                                        uvc_test::fixture("ipc_v8_child.js"), "check"},
                                       back);
  ASSERT_EQ(checked.status, 0) << checked.err;
  auto replies = lines_of(checked.out);
  ASSERT_EQ(replies.size(), 30u) << checked.out;
  for (auto& r : replies) EXPECT_TRUE(json::parse(r).contains("ok")) << r;
}

TEST(IpcV8Cli, UnknownSerializationIsAUsageError) {
  auto c = uvc_test::run_capture({uvc_test::cli(), "ipc", "--serialization", "yaml", "--", "/bin/true"});
  EXPECT_EQ(c.status, 2);
  EXPECT_NE(c.err.find("--serialization needs json or advanced"), std::string::npos) << c.err;
}

// An unwritable message is an error for that send only; the channel goes on.
TEST(IpcV8Channel, UnserializableMessageIsAnErrorNotAClose) {
  uvc_test::TestLoop loop;
  uvcluster::ForkOptions fo;
  fo.serialization = ipc::Serialization::advanced;
  auto child = uvcluster::fork(loop, uvc_test::fixture("ipc_v8_echo_child.js"), {}, std::move(fo));
  ASSERT_TRUE(child.ok());
  ipc::Channel* ch = child.value()->channel();
  std::vector<json> got;
  ch->on_message([&](const json& m, ipc::ReceivedHandle*) { got.push_back(m); });
  std::string code;
  EXPECT_FALSE(ch->send(json{{"$v8", "Symbol"}}, std::nullopt, {}, [&](const uvcluster::Error* e) {
    code = e ? e->code : "none";
  }));
  ch->send(json{{"$v8", "Set"}, {"values", {1, "a"}}});
  ASSERT_TRUE(loop.run_until([&] { return !code.empty() && got.size() == 1; }));
  EXPECT_EQ(code, "ERR_IPC_UNSERIALIZABLE");
  EXPECT_EQ(got[0], (json{{"$v8", "Set"}, {"values", {1, "a"}}}));
  ASSERT_TRUE(ch->disconnect().ok());
  bool closed = false;
  child.value()->on_close([&](const uvcluster::ExitStatus&) { closed = true; });
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
}
