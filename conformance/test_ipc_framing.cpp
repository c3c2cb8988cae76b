// FrameReader / encode / parse: Node's json framing without libuv.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <optional>
#include <pthread.h>
#include <random>
#include <string>
#include <vector>

#include "core/utf8.hpp"
#include "ipc/json_fast.hpp"  // impl/src: white-box (every scan variant)
#include "uvcluster/ipc/framing.hpp"

using namespace uvcluster::ipc;
using nlohmann::json;

namespace {
std::vector<std::string> feed_all(FrameReader& r, const std::vector<std::string>& chunks) {
  std::vector<std::string> lines;
  for (auto& c : chunks) r.feed(c.data(), c.size(), [&](std::string_view l) { lines.emplace_back(l); });
  return lines;
}
}  // namespace

TEST(IpcFraming, SplitsLinesAcrossReads) {
  FrameReader r;
  auto lines = feed_all(r, {"{\"a\":", "1}\n\"x\"\n4", "2\n", "null\n"});
  ASSERT_EQ(lines, (std::vector<std::string>{"{\"a\":1}", "\"x\"", "42", "null"}));
  EXPECT_FALSE(r.buffering());
}

// A read of whole lines (an ACK and a newconn's answer, every hand-off) is delivered from the
// read's own bytes: no copy into the reader, whose buffer is not even made; a trailing partial
// line is copied in and completed by the next read.
TEST(IpcFraming, WholeLinesAreDeliveredFromTheReadWithoutACopy) {
  FrameReader r;
  std::string wire = "{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"ack\":1}\n";
  std::vector<const char*> at;
  ASSERT_TRUE(r.feed(wire.data(), wire.size(), [&](std::string_view line) { at.push_back(line.data()); }));
  ASSERT_EQ(at.size(), 2u);
  EXPECT_EQ(at[0], wire.data());
  EXPECT_EQ(at[1], wire.data() + wire.find('\n') + 1);
  EXPECT_EQ(r.capacity(), 0u);
  auto lines = feed_all(r, {"1\n{\"a\":", "2}\n"});
  EXPECT_EQ(lines, (std::vector<std::string>{"1", "{\"a\":2}"}));
  EXPECT_FALSE(r.buffering());
}

TEST(IpcFraming, MultiByteCharacterSplitBetweenReads) {
  std::string frame = encode_frame(json("é€😀"));
  // Split at every byte position, including inside each multi-byte sequence.
  for (size_t cut = 1; cut < frame.size(); ++cut) {
    FrameReader r;
    auto lines = feed_all(r, {frame.substr(0, cut), frame.substr(cut)});
    ASSERT_EQ(lines.size(), 1u) << cut;
    auto v = parse_frame(lines[0]);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(v.value(), json("é€😀"));
  }
}

TEST(IpcFraming, ByteAtATime) {
  std::string wire = encode_frame(json{{"k", "\u2028\n\"\\"}}) + encode_frame(json::array({1, 2.5, "x"}));
  FrameReader r;
  std::vector<json> got;
  for (char c : wire)
    r.feed(&c, 1, [&](std::string_view l) { got.push_back(parse_frame(l).value()); });
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0]["k"], "\u2028\n\"\\");
  EXPECT_EQ(got[1], json::array({1, 2.5, "x"}));
}

TEST(IpcFraming, TooLargeFailsForGood) {
  FrameReader r(8);
  std::vector<std::string> lines;
  auto cb = [&](std::string_view l) { lines.emplace_back(l); };
  EXPECT_TRUE(r.feed("12345678\n", 9, cb));  // exactly the limit is fine
  EXPECT_TRUE(r.feed("12345", 5, cb));
  EXPECT_FALSE(r.feed("6789", 4, cb));        // partial line over the limit
  EXPECT_TRUE(r.failed());
  EXPECT_FALSE(r.feed("1\n", 2, cb));
  EXPECT_EQ(lines.size(), 1u);
  FrameReader r2(4);
  EXPECT_FALSE(r2.feed("123456\n", 7, cb));  // complete line over the limit
}

// Issue 8: an oversized line's buffer (up to the frame cap, 64 MiB by default) is freed when
// the reader fails, not kept until the channel object goes away.
TEST(IpcFraming, OversizedLineReleasesTheBuffer) {
  FrameReader r(1024 * 1024);
  auto cb = [](std::string_view) {};
  std::string chunk(256 * 1024, 'a');
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(r.feed(chunk.data(), chunk.size(), cb));
  EXPECT_GE(r.capacity(), 1024u * 1024);
  EXPECT_FALSE(r.feed("b", 1, cb));
  EXPECT_TRUE(r.failed());
  EXPECT_EQ(r.capacity(), 0u);
}

// Issue 8: the buffer doubles while a line grows, but never past the longest line (max + 1
// bytes tell it is oversized): the line that crosses a 64 MiB cap reserved 128 MiB first.
TEST(IpcFraming, BufferNeverGrowsPastTheFrameCap) {
  const size_t max = 200 * 1024;
  FrameReader r(max);
  auto cb = [](std::string_view) {};
  std::string chunk(150 * 1024, 'a');
  ASSERT_TRUE(r.feed(chunk.data(), chunk.size(), cb));
  ASSERT_TRUE(r.feed(chunk.data(), 40 * 1024, cb));
  EXPECT_LE(r.capacity(), max + 1);
  EXPECT_FALSE(r.feed(chunk.data(), 20 * 1024, cb));
  EXPECT_EQ(r.capacity(), 0u);
}

TEST(IpcFraming, BadFramesAreErrors) {
  for (std::string bad : {"", " ", "{", "nope", "[1,]", "1 2", "\"unterminated"}) {
    auto r = parse_frame(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, "ERR_IPC_BAD_FRAME");
  }
  EXPECT_TRUE(parse_frame(" 1 ").ok());
  EXPECT_TRUE(parse_frame("{\"a\":1}\r").ok());
}

TEST(IpcFraming, InvalidUtf8BecomesReplacementCharacter) {
  // One U+FFFD per maximal invalid subpart, as Node's StringDecoder (the truncated E2 82 is one;
  // the Node differential is IpcNodeChild.InvalidUtf8DecodedAsNodeDecodesIt).
  const std::string fffd = "\xEF\xBF\xBD";
  auto r = parse_frame("\"a\xff" "b\xe2\x82\"");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.value(), json("a" + fffd + "b" + fffd));
  EXPECT_EQ(parse_frame("\"\xf0\x9f\x98\"").value(), json(fffd));              // truncated 4-byte
  EXPECT_EQ(parse_frame("\"\xed\xa0\x80\"").value(), json(fffd + fffd + fffd));  // raw surrogate
  EXPECT_EQ(parse_frame("\"\xe0\x80\"").value(), json(fffd + fffd));            // overlong
  // Encoding a string with invalid UTF-8 never throws and yields valid JSON.
  std::string bad = "x\xc3";
  std::string wire = encode_frame(json(bad));
  EXPECT_TRUE(parse_frame(std::string_view(wire).substr(0, wire.size() - 1)).ok());
}

TEST(IpcFraming, EncodeMatchesJsonStringify) {
  EXPECT_EQ(encode_frame(json{{"hello", "world"}}), "{\"hello\":\"world\"}\n");
  EXPECT_EQ(encode_frame(json("ready")), "\"ready\"\n");
  EXPECT_EQ(encode_frame(json(42)), "42\n");
  EXPECT_EQ(encode_frame(json(nullptr)), "null\n");
  EXPECT_EQ(encode_frame(json("a\nb\u0001")), "\"a\\nb\\u0001\"\n");
  EXPECT_EQ(encode_frame(json(std::nan(""))), "null\n");
}

TEST(IpcFraming, InternalRule) {
  EXPECT_TRUE(is_internal(json{{"cmd", "NODE_bar"}}));
  EXPECT_TRUE(is_internal(json{{"cmd", "NODE_HANDLE_ACK"}}));
  EXPECT_FALSE(is_internal(json{{"cmd", "NODE_"}}));
  EXPECT_FALSE(is_internal(json{{"cmd", "fooNODE_"}}));
  EXPECT_FALSE(is_internal(json{{"cmd", 1}}));
  EXPECT_FALSE(is_internal(json("NODE_HANDLE")));
  EXPECT_FALSE(is_internal(json::array({"NODE_HANDLE"})));
}

TEST(IpcFraming, FastParserMatchesNlohmann) {
  for (std::string t :
       {"0", "-0", "1", "-1", "18446744073709551615", "18446744073709551616", "-9223372036854775808",
        "-9223372036854775809", "1.5", "-1.25e-3", "1E10", "1e-400", "0.1", "123456789.123456789",
        "\"\"", "\"a\\u00e9\\ud83d\\ude00\\/\\b\\f\\n\\r\\t\\\"\\\\\"", "[]", "{}", " [ 1 , { \"a\" : [ ] } ] ",
        "{\"a\":1,\"a\":2}", "true", "false", "null", "[[[[[[[[[[1]]]]]]]]]]"}) {
    auto ref = json::parse(t, nullptr, false);
    auto got = parse_frame(t);
    ASSERT_TRUE(got.ok()) << t;
    EXPECT_EQ(got.value(), ref) << t;
    EXPECT_EQ(got.value().dump(), ref.dump()) << t;
  }
  std::string deepest = std::string(kMaxNestingDepth, '[') + std::string(kMaxNestingDepth, ']');
  auto got = parse_frame(deepest);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got.value(), json::parse(deepest));
  // JSON.parse refuses a BOM (nlohmann skips it); a number past double range is ±inf as in JS.
  EXPECT_FALSE(parse_frame("\xEF\xBB\xBF" "1").ok());
  EXPECT_FALSE(parse_frame(std::string("\"x\"\0{}", 6)).ok());  // nlohmann stops at a NUL: "x"
  EXPECT_EQ(parse_frame("[1e400,-1e400,1e-400]").value().dump(), "[null,null,0.0]");
  for (std::string bad : {"01", "1.", ".5", "-", "1e", "+1", "[1,]", "{\"a\"}", "{\"a\":1,}", "tru", "nul",
                          "\"\\x\"", "\"\\u12\"", "\"a\tb\"", "[1 2]", "{1:2}", "'a'"}) {
    EXPECT_FALSE(parse_frame(bad).ok()) << bad;
  }
}

TEST(IpcFraming, DeepNestingIsABadFrame) {
  auto nest = [](size_t n, const std::string& open, const std::string& close) {
    std::string s;
    for (size_t i = 0; i < n; ++i) s += open;
    for (size_t i = 0; i < n; ++i) s += close;
    return s;
  };
  for (const auto& text : {nest(kMaxNestingDepth + 1, "[", "]"), nest(1000000, "[", "]"),
                           nest(1000000, "{\"a\":[", "]}"), nest(1000000, "[", "")}) {
    auto r = parse_frame(text);
    ASSERT_FALSE(r.ok()) << text.size();
    EXPECT_EQ(r.error().code, "ERR_IPC_BAD_FRAME");
  }
  EXPECT_TRUE(parse_frame(nest(3, "[", "]"), 3).ok());
  EXPECT_FALSE(parse_frame(nest(4, "[", "]"), 3).ok());
}

namespace {
// Runs `fn` on a thread whose whole stack is 64 KiB (a recursive parse needs ~136 B per level:
// 1,000 levels would overflow it) and waits for it.
void on_small_stack(std::function<void()> fn) {
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, 64 * 1024), 0);
  pthread_t thread;
  auto body = [](void* arg) -> void* {
    (*static_cast<std::function<void()>*>(arg))();
    return nullptr;
  };
  ASSERT_EQ(pthread_create(&thread, &attr, body, &fn), 0);
  pthread_attr_destroy(&attr);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
}
}  // namespace

// Issue 8: the nesting check must not grow the stack with the input's nesting (a hostile frame
// touched ~136 KB of the primary's main stack, kept in its RSS for good). The parse keeps its
// open arrays/objects on a heap stack, so any depth parses or fails within a 64 KiB stack.
TEST(IpcFraming, NestingCostsNoStack) {
  const std::string million = std::string(1000000, '[') + std::string(1000000, ']');
  const std::string hundred_thousand = std::string(100000, '[') + std::string(100000, ']');
  std::optional<uvcluster::Result<json>> refused, accepted;
  on_small_stack([&] {
    refused = parse_frame(million);
    accepted = parse_frame(hundred_thousand, 100000);
    if (accepted->ok()) accepted->value() = nullptr;  // nlohmann's destructor is iterative too
  });
  ASSERT_TRUE(refused && accepted);
  ASSERT_FALSE(refused->ok());
  EXPECT_EQ(refused->error().code, "ERR_IPC_BAD_FRAME");
  EXPECT_NE(refused->error().message.find("deeper than 1000 levels"), std::string::npos)
      << refused->error().message;
  EXPECT_TRUE(accepted->ok()) << accepted->error().message;
}

TEST(IpcFraming, LoneSurrogatesRoundTripAsJsonStringifyWritesThem) {
  // Node's JSON.stringify('\ud800') is "\ud800" (well-formed stringify); nlohmann alone rejects
  // it. We keep it as WTF-8 and write it back the same way (the Node differential is
  // IpcNodeParent.LoneSurrogatesRoundTripThroughIpcEcho).
  std::string text = "[\"\\ud800 lone\",\"\\udc00x\",\"\\ud800\\u0041\",\"\\udbff\\udfff\",\"\\ude00\\ud83d\"]";
  auto r = parse_frame(text);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.value(), json::array({"\xED\xA0\x80 lone", "\xED\xB0\x80x", "\xED\xA0\x80" "A",
                                    "\xF4\x8F\xBF\xBF", "\xED\xB8\x80\xED\xA0\xBD"}));
  EXPECT_EQ(encode_frame(r.value()),
            "[\"\\ud800 lone\",\"\\udc00x\",\"\\ud800A\",\"\xF4\x8F\xBF\xBF\",\"\\ude00\\ud83d\"]\n");
}

TEST(IpcFraming, FastEncoderMatchesNlohmannDump) {
  std::vector<json> values = {
      nullptr, true, false, 0, -1, 42u, 18446744073709551615ull, -9223372036854775807LL - 1, 1.5, -0.0,
      1e300, 0.1, 1e-7, "", "plain", "q\"b\\s/\b\f\n\r\t\x01\x1f\x7f", "é😀\u2028", std::string("bad\xff\xc3", 5),
      json::array({1, "two", json::object(), json::array()}), json{{"z", 1}, {"a", {{"k\"", nullptr}}}}};
  for (auto& v : values) {
    EXPECT_EQ(encode_frame(v), v.dump(-1, ' ', false, json::error_handler_t::replace) + "\n") << v.dump();
  }
}

namespace {
// A string with every kind of byte the encoder and parser treat differently: plain ASCII runs,
// quotes, backslashes, control characters, multi-byte UTF-8 and a lone surrogate (WTF-8).
std::string mixed_text(size_t size) {
  static const std::string pieces[] = {"plain ascii text ", "\"", "\\", "\n", std::string(1, '\0'),
                                       "\x1f", "é", "€", "😀", "\xED\xA0\x80", "/"};
  std::string s;
  s.reserve(size + 8);
  for (size_t i = 0; s.size() < size; ++i) s += pieces[(i * 7) % std::size(pieces)];
  s.resize(size);  // may cut a multi-byte character at the end: that is invalid UTF-8 ...
  while (!s.empty() && (static_cast<unsigned char>(s.back()) & 0x80)) s.pop_back();  // ... so not
  return s;
}

// Feeds `wire` through space()/commit() in reads of the given sizes (cycled), as the channel does.
std::vector<std::string> read_in_chunks(const std::string& wire, const std::vector<size_t>& sizes) {
  FrameReader r;
  std::vector<std::string> lines;
  size_t off = 0;
  for (size_t k = 0; off < wire.size(); ++k) {
    size_t n = std::min(sizes[k % sizes.size()], wire.size() - off);
    auto room = r.space(n);
    EXPECT_GE(room.size(), n);
    std::memcpy(room.data(), wire.data() + off, n);
    EXPECT_TRUE(r.commit(n, [&](std::string_view l) { lines.emplace_back(l); }));
    off += n;
  }
  EXPECT_FALSE(r.buffering());
  return lines;
}
}  // namespace

// A big message comes back byte for byte, whatever sizes the reads have.
TEST(IpcFraming, LargeMessagesRoundTripExactly) {
  for (size_t size : {size_t{64} << 10, size_t{1} << 20, size_t{16} << 20}) {
    json message = {{"big", mixed_text(size)}, {"tail", 1}};
    std::string frame = encode_frame(message);
    auto lines = read_in_chunks(frame + encode_frame(json("next")), {65536, 212992, 7, 1 << 20});
    ASSERT_EQ(lines.size(), 2u) << size;
    auto back = parse_frame(lines[0]);
    ASSERT_TRUE(back.ok()) << size;
    EXPECT_TRUE(back.value() == message) << size;  // not EXPECT_EQ: no 16 MiB failure printout
    EXPECT_EQ(parse_frame(lines[1]).value(), json("next"));
  }
}

// Frames cut into two and three reads at every position (a read may end right before or after
// a '\n', inside a multi-byte character or an escape) come out the same.
TEST(IpcFraming, SplitAtEveryBoundary) {
  std::string wire = encode_frame(json{{"k", "a\"b\\c\né€😀\xED\xA0\x80"}}) + encode_frame(json(1)) +
                     encode_frame(json::array({"x", nullptr}));
  std::vector<std::string> whole = read_in_chunks(wire, {wire.size()});
  ASSERT_EQ(whole.size(), 3u);
  for (size_t a = 0; a <= wire.size(); ++a) {
    for (size_t b = a; b <= wire.size(); ++b) {
      FrameReader r;
      std::vector<std::string> lines;
      auto sink = [&](std::string_view l) { lines.emplace_back(l); };
      for (auto [from, to] : {std::pair{size_t{0}, a}, std::pair{a, b}, std::pair{b, wire.size()}}) {
        if (to == from) continue;
        auto room = r.space(to - from);
        std::memcpy(room.data(), wire.data() + from, to - from);
        ASSERT_TRUE(r.commit(to - from, sink));
      }
      ASSERT_EQ(lines, whole) << a << " " << b;
    }
  }
}

// The parser checks UTF-8 while it scans strings (no separate pass), 64 bytes a step: every
// kind of byte it must stop at, at every position around the steps' edges, in a string of
// plain text, gives nlohmann's value for the line decoded first (Node's StringDecoder), and
// the encoder gives nlohmann's text back (with lone surrogates, our documented difference).
TEST(IpcFraming, OnePassDecoderMatchesDecodingFirstAtEveryPosition) {
  const std::vector<std::string> specials = {
      "\\\"", "\\\\", "\\n", "\\u00e9", "\\ud83d\\ude00", "\\/", "é", "€", "😀",
      "\xff", "\xe2\x82", "\xed\xa0\x80", "\xc0\xaf", "\xf0\x9f\x98", "\x7f"};
  for (const auto& special : specials) {
    for (size_t at = 0; at <= 200; ++at) {
      std::string body = std::string(at, 'a') + special + std::string(200 - at, 'b');
      std::string line = "{\"k\":\"" + body + "\",\"n\":1}";
      auto got = parse_frame(line);
      ASSERT_TRUE(got.ok()) << at << " " << special;
      std::string decoded = uvcluster::detail::utf8_sanitize(line);
      auto ref = json::parse(decoded, nullptr, false);
      ASSERT_FALSE(ref.is_discarded()) << at << " " << special;
      ASSERT_EQ(got.value(), ref) << at << " " << special;
      ASSERT_EQ(encode_frame(got.value()), ref.dump(-1, ' ', false, json::error_handler_t::replace) + "\n")
          << at << " " << special;
    }
  }
  // A raw control character or an unfinished string is still a syntax error at every position.
  for (size_t at = 0; at <= 130; ++at) {
    std::string body = std::string(at, 'a') + "\x01" + std::string(130 - at, 'b');
    EXPECT_FALSE(parse_frame("\"" + body + "\"").ok()) << at;
    EXPECT_FALSE(parse_frame("\"" + std::string(at, 'a')).ok()) << at;
  }
  // Errors report the size of the line as decoded (5 bytes, one U+FFFD for the FF byte makes them 7).
  auto bad = parse_frame("[\"\xff\",");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("(7 bytes)"), std::string::npos) << bad.error().message;
}

// match_handle_frame (the handle filter's view of a NODE_HANDLE line, no parse) against the
// general parse of the same line: whenever the `message` bytes it gives are one JSON text, the
// line is exactly the wrapper {cmd, type, msg} around that text. Hostile lines included.
TEST(IpcFraming, HandleFrameBytesAgreeWithTheGeneralParse) {
  const std::string head = R"({"cmd":"NODE_HANDLE","type":")";
  const std::string newconn = R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"127.0.0.1:0:4:undefined:0","seq":12})";
  struct Case {
    std::string line;
    bool matches;          // match_handle_frame gives bytes
    bool message_is_json;  // and they are one JSON text
  };
  std::vector<Case> cases = {
      {head + R"(net.Native","msg":)" + newconn + "}", true, true},  // ours and Node's
      {head + R"(net.Socket","msg":"text"})", true, true},
      {head + R"(dgram.Native","msg":{"a":[1,{"b":"}"}]}})", true, true},
      {head + R"(net.Native","msg": {"a":1} })", true, true},           // spaces inside msg: still one text
      {head + R"(net.Native","msg":)" + newconn + R"(,"key":"k"})", true, false},  // a key: never one text
      {head + R"(dgram.Socket","msg":1,"dgramType":"udp4"})", true, false},
      {head + R"(net.Native","msg":)" + newconn, true, false},          // truncated: the inner '}' is taken
      {head + R"(net.Native","msg":)" + newconn + "}}", true, false},   // one '}' too many
      {head + R"(net.Native","msg":{"a":1}},"x":{})", true, false},
      {head + R"(net.Native","msg":})", true, false},                    // no message at all
      {head + R"(net.Native","msg":{"a":1)", false, false},              // no closing brace
      {head + R"(net.\u004eative","msg":{}})", false, false},             // an escape in the type
      {head + R"(","msg":{}})", false, false},                            // empty type
      {head + R"(net Native","msg":{}})", false, false},
      {R"({"cmd":"NODE_HANDLE","msg":{},"type":"net.Native"})", false, false},  // another order
      {R"({ "cmd":"NODE_HANDLE","type":"net.Native","msg":{}})", false, false},
      {R"({"cmd":"NODE_HANDLE_ACK"})", false, false},
      {R"({"cmd":"NODE_HANDLE","type":"net.Native"})", false, false},
      {"", false, false},
  };
  for (const auto& c : cases) {
    auto m = match_handle_frame(c.line);
    ASSERT_EQ(m.has_value(), c.matches) << c.line;
    if (!m) continue;
    auto message = parse_frame(m->message);
    EXPECT_EQ(message.ok(), c.message_is_json) << c.line;
    auto general = parse_frame(c.line);
    if (!message.ok()) continue;
    ASSERT_TRUE(general.ok()) << c.line;
    EXPECT_EQ(general.value(), (json{{"cmd", "NODE_HANDLE"}, {"type", std::string(m->type)}, {"msg", message.value()}}))
        << c.line;
  }
  auto ours = match_handle_frame(cases[0].line);
  EXPECT_EQ(ours->type, "net.Native");
  EXPECT_EQ(ours->message, newconn);
}

// The scan for a string's plain runs is chosen at run time (AVX-512, AVX2, SSE2/64-bit words);
// the tests above only reach the chosen one, so every variant this CPU can run is checked here
// against a byte loop: each kind of stop byte at every offset of runs up to 3 vector steps
// long, and at no offset (the scan must stop at the end, never read past it: the buffer ends
// exactly at `end`, so ASan sees an over-read).
TEST(IpcFraming, EveryPlainScanStopsWhereTheByteLoopDoes) {
  const unsigned char stops[] = {'"', '\\', 0x00, 0x1F, 0x80, 0xFF};
  for (const auto& scan : uvcluster::ipc::detail_json::plain_scans()) {
    SCOPED_TRACE(scan.name);
    for (size_t len = 0; len <= 200; ++len) {
      std::vector<char> buf(len, 'a');
      const char* begin = buf.data();
      ASSERT_EQ(scan.skip_plain(begin, begin + len), begin + len) << "no stop, " << len << " bytes";
      for (size_t at = 0; at < len; ++at) {
        for (unsigned char stop : stops) {
          buf[at] = static_cast<char>(stop);
          ASSERT_EQ(scan.skip_plain(begin, begin + len) - begin, static_cast<ptrdiff_t>(at))
              << "byte " << int(stop) << " at " << at << " of " << len;
        }
        buf[at] = ' ';  // plain (the lowest plain byte), and the next offset's run goes on past it
      }
    }
  }
}

namespace {
// A JSON text with strings of random pieces: long plain runs, quotes, escapes, control bytes,
// non-ASCII (valid and not), lone surrogates, escaped newlines; as a bare string, an object
// (long runs in keys too) or an array with numbers and spaces around.
std::string random_line(std::mt19937& rng) {
  static const std::vector<std::string> pieces = {
      "\"", "\\", "\n", "\t", std::string(1, '\0'), "\x1f", "é", "€", "😀", "\xED\xA0\x80", "\xff", "/", " "};
  auto text = [&] {
    std::string s;
    size_t parts = rng() % 8;
    for (size_t i = 0; i < parts; ++i) {
      if (rng() % 2) s += std::string(rng() % 3 == 0 ? rng() % 2000 : rng() % 40, static_cast<char>('a' + rng() % 26));
      else s += pieces[rng() % pieces.size()];
    }
    return s;
  };
  json v;
  switch (rng() % 4) {
    case 0: v = text(); break;
    case 1: v = json{{text(), text()}, {"n", rng() % 1000}, {text(), json::array({text(), 1.5})}}; break;
    case 2: v = json::array({rng() % 7, text(), nullptr, text()}); break;
    default: v = std::string(rng() % 3000, 'x') + text(); break;
  }
  std::string line = encode_frame(v);
  line.pop_back();
  if (rng() % 4 == 0) line = " " + line + " \t";  // whitespace runs are plain too
  return line;
}

struct HintedLine {
  std::string line;
  std::optional<PlainRun> run;
  std::string run_bytes;  // the copy's bytes as delivered (empty when there was no copy)
  bool had_copy = false;
  json parsed;
  bool parsed_ok = false;
  bool took_copy = false;
};
}  // namespace

// Issue 13 §2: a big line's runs found and copied while it arrives (FrameReader::plain_run) and
// the parse that uses them (parse_frame with the run): for random lines cut into random reads
// (several lines per read, newlines and escapes at read edges, thresholds low enough that every
// line is tracked), the run is what it claims (plain bytes, ending at a non-plain byte or the
// line's end, its copy equal to them) and the parse gives exactly the value of the plain parse.
TEST(IpcFraming, ParseWithTheArrivalRunEqualsThePlainParseForEveryRandomSplit) {
  std::mt19937 rng(1313);
  size_t runs_seen = 0, copies_taken = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<std::string> lines;
    std::string wire;
    for (size_t n = 1 + rng() % 4; n > 0; --n) {
      lines.push_back(random_line(rng));
      wire += lines.back() + "\n";
    }
    FrameReader::BigLine big{rng() % 64, 1 + rng() % 48};
    FrameReader r(1 << 20, big);
    std::vector<HintedLine> got;
    auto sink = [&](std::string_view l) {
      HintedLine h{std::string(l), std::nullopt, {}, false, {}, false, false};
      if (const PlainRun* run = r.plain_run()) {
        h.run = *run;
        h.had_copy = run->text && !run->text->empty();
        if (h.had_copy) h.run_bytes = *run->text;
      }
      auto parsed = parse_frame(l, kMaxNestingDepth, r.plain_run());
      h.parsed_ok = parsed.ok();
      if (parsed.ok()) h.parsed = parsed.value();
      h.took_copy = h.had_copy && r.plain_run()->text->empty();
      got.push_back(std::move(h));
    };
    for (size_t off = 0; off < wire.size();) {
      size_t n = std::min<size_t>(wire.size() - off, 1 + rng() % (rng() % 2 ? 64 : 4096));
      auto room = r.space(n);
      std::memcpy(room.data(), wire.data() + off, n);
      ASSERT_TRUE(r.commit(n, sink));
      off += n;
    }
    ASSERT_EQ(got.size(), lines.size()) << trial;
    for (size_t i = 0; i < lines.size(); ++i) {
      const HintedLine& h = got[i];
      ASSERT_EQ(h.line, lines[i]) << trial;
      auto plain = parse_frame(h.line);
      ASSERT_EQ(h.parsed_ok, plain.ok()) << trial << " " << h.line;
      if (plain.ok()) {
        ASSERT_EQ(h.parsed, plain.value()) << trial << " " << h.line;
      }
      if (!h.run) continue;
      ++runs_seen;
      copies_taken += h.took_copy;
      ASSERT_LE(h.run->begin, h.run->end) << trial;
      ASSERT_LE(h.run->end, h.line.size()) << trial;
      for (size_t k = h.run->begin; k < h.run->end; ++k) {
        unsigned char c = static_cast<unsigned char>(h.line[k]);
        ASSERT_TRUE(c >= 0x20 && c < 0x80 && c != '"' && c != '\\') << trial << " byte " << k;
      }
      if (h.run->end < h.line.size()) {
        unsigned char c = static_cast<unsigned char>(h.line[h.run->end]);
        ASSERT_FALSE(c >= 0x20 && c < 0x80 && c != '"' && c != '\\') << trial << " run end " << h.run->end;
      }
      if (h.had_copy) {
        ASSERT_EQ(h.run_bytes, h.line.substr(h.run->begin, h.run->end - h.run->begin)) << trial;
      }
    }
  }
  // The mechanism ran: runs were found, and strings took their copies.
  EXPECT_GT(runs_seen, 100u);
  EXPECT_GT(copies_taken, 50u);
}

// The point of the copy: a big string that arrives in several reads is not copied again after
// its last byte: the parsed string is the very buffer the reader filled while it arrived.
TEST(IpcFraming, BigStringArrivingInReadsIsTakenNotCopiedAgain) {
  std::string wire = encode_frame(json(std::string(300 * 1024, 'x'))) + encode_frame(json("next"));
  FrameReader r;
  std::vector<json> values;
  const char* copy_data = nullptr;
  const char* parsed_data = nullptr;
  auto sink = [&](std::string_view l) {
    const PlainRun* run = r.plain_run();
    if (run && run->text) copy_data = run->text->data();
    auto parsed = parse_frame(l, kMaxNestingDepth, run);
    ASSERT_TRUE(parsed.ok());
    if (parsed.value().is_string() && values.empty()) parsed_data = parsed.value().get_ref<const std::string&>().data();
    values.push_back(std::move(parsed.value()));
  };
  for (size_t off = 0, n = 16 * 1024; off < wire.size(); off += n, n = 100 * 1024) {
    n = std::min(n, wire.size() - off);
    auto room = r.space(n);
    std::memcpy(room.data(), wire.data() + off, n);
    ASSERT_TRUE(r.commit(n, sink));
  }
  ASSERT_EQ(values.size(), 2u);
  EXPECT_EQ(values[0], json(std::string(300 * 1024, 'x')));
  EXPECT_EQ(values[1], json("next"));
  ASSERT_NE(copy_data, nullptr);  // the reader copied the run while it arrived ...
  EXPECT_EQ(parsed_data, copy_data);  // ... and the parse moved that copy into the value
  EXPECT_EQ(r.bytes_held(), r.capacity());  // nothing of the copy is left
}

// Dense stop bytes (non-ASCII text) in a big line: the arrival scan falls back to memchr, and
// the line, its neighbours and their values are still exactly right.
TEST(IpcFraming, BigLineOfNonAsciiTextArrivesIntact) {
  std::string text;
  while (text.size() < 200 * 1024) text += "é€😀 日本語 ";
  std::string wire = encode_frame(json{{"t", text}}) + encode_frame(json(std::string(70000, 'y') + "z"));
  for (size_t read : {size_t{1000}, size_t{4096}, size_t{65536}, size_t{212992}}) {
    auto lines = read_in_chunks(wire, {read});
    ASSERT_EQ(lines.size(), 2u) << read;
    EXPECT_EQ(parse_frame(lines[0]).value(), (json{{"t", text}})) << read;
    EXPECT_EQ(parse_frame(lines[1]).value(), json(std::string(70000, 'y') + "z")) << read;
  }
}

// The encoder offers a long string's plain bytes `every` at a time (a channel writes them, and
// the frame's bytes before them, while it encodes the rest): whatever the progress takes, of
// the offered bytes and of `out`, the bytes it took followed by the rest of `out` are the frame.
TEST(IpcFraming, EncodeProgressTakesBytesAndTheFrameIsUnchanged) {
  struct Taker final : EncodeProgress {
    Taker(size_t every, std::mt19937& rng) : EncodeProgress(every), rng(rng) {}
    size_t encoded(std::string& out, std::string_view plain) override {
      offered.push_back(plain.size());
      if (rng() % 3 == 0) return 0;  // the socket took nothing
      size_t from_out = rng() % (out.size() - sent + 1);
      wire.append(out, sent, from_out);
      sent += from_out;
      if (sent < out.size()) return 0;  // bytes of `plain` only once `out` is all taken
      size_t n = rng() % (plain.size() + 1);
      wire.append(plain.substr(0, n));
      return n;
    }
    std::mt19937& rng;
    std::string wire;
    size_t sent = 0;
    std::vector<size_t> offered;
  };
  std::mt19937 rng(77);
  size_t offers = 0;
  for (int trial = 0; trial < 300; ++trial) {
    json v = json{{"a", std::string(rng() % 5000, 'q') + random_line(rng)}, {"b", json::array({random_line(rng)})}};
    std::string frame, out;
    encode_frame_into(v, frame);
    Taker progress(1 + rng() % 700, rng);
    encode_frame_into(v, out, &progress);
    ASSERT_EQ(progress.wire + out.substr(progress.sent), frame) << trial;
    for (size_t n : progress.offered) ASSERT_EQ(n, progress.every) << trial;
    offers += progress.offered.size();
  }
  EXPECT_GT(offers, 300u);
}
