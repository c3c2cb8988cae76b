// libFuzzer target: FrameReader + parse_frame + encode_frame must never crash, the JSON parser
// must accept exactly what nlohmann accepts (bar the documented differences), any value we
// parse must survive an encode/parse round trip, and match_handle_frame (the NODE_HANDLE fast
// path's view of a line) must agree with the parse. The same for the advanced (V8) framing: any
// payload decode_v8_payload takes must encode again and decode to the same value.
//
// Input layout. First byte < 0x80: the rest is fed to a FrameReader (max 4096-byte lines, big-line
// thresholds from the first byte) in reads of (first byte % 17) + 1 bytes; the runs it finds
// while lines arrive are checked and used by a second parse. 0x80..0xBF ("v8" mode): the rest, after the header
// FF 0F when bit 0x20 is set, is one V8 payload; it is also fed, as length-prefixed frames, to a
// V8FrameReader (max 4096) in reads of (first byte % 17) + 1 bytes. First byte >= 0xC0 ("deep" mode, to reach nesting far
// past -max_len): bytes 1-2 are a repeat count K (big-endian, capped at 20000 and at 256 KiB of
// P and S), the rest is P '\0' S '\0' M and the line P*K + M + S*K goes to parse_frame directly.
// Seeds in seeds/.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "json_fast.hpp"  // impl/src/ipc
#include "core/utf8.hpp"
#include "uvcluster/ipc/framing.hpp"
#include "uvcluster/ipc/v8_serializer.hpp"

namespace {

using nlohmann::json;
namespace ipc = uvcluster::ipc;

bool has_surrogate_escape(const std::string& s) {
  for (size_t i = s.find("\\u"); i != std::string::npos; i = s.find("\\u", i + 1)) {
    if (i + 3 < s.size() && (s[i + 2] == 'd' || s[i + 2] == 'D') &&
        std::string("89abcdefABCDEF").find(s[i + 3]) != std::string::npos)
      return true;
  }
  return false;
}

// Numbers past double range: JSON.parse (and we) make them ±inf; nlohmann refuses them.
bool has_non_finite(const json& v) {
  if (v.is_number_float()) return !std::isfinite(v.get<double>());
  if (v.is_structured())
    for (const auto& x : v)
      if (has_non_finite(x)) return true;
  return false;
}

// The reference value's exact nlohmann text, or "" when it holds WTF-8 (strict dump throws).
std::string strict_dump(const json& v) {
  try {
    return v.dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (...) {
    return {};
  }
}

void check_line(std::string_view line) {
  std::string clean = uvcluster::detail::utf8_sanitize(line);
  json fast;
  auto status = ipc::detail_json::parse(clean, fast, ipc::kMaxNestingDepth);
  bool fast_ok = status == ipc::detail_json::ParseStatus::ok;
  bool surrogates = has_surrogate_escape(clean);
  bool bom = clean.rfind("\xEF\xBB\xBF", 0) == 0;  // nlohmann skips a BOM, JSON.parse does not
  // nlohmann's parser is iterative, so it may check any depth (its result is only compared,
  // never walked recursively, unless the fast parser accepted the same text).
  auto ref = json::parse(clean.begin(), clean.end(), nullptr, false);
  if (fast_ok && !ref.is_discarded() && !(fast == ref)) __builtin_trap();
  if (fast_ok && ref.is_discarded() && !surrogates && !has_non_finite(fast)) __builtin_trap();
  // nlohmann also takes a NUL byte for the end of input ("1\0garbage" is 1); JSON.parse does not.
  bool nul = clean.find('\0') != std::string::npos;
  if (!fast_ok && !ref.is_discarded() && !bom && !nul && status != ipc::detail_json::ParseStatus::too_deep)
    __builtin_trap();  // nothing nlohmann accepts may be refused, except a BOM, a NUL or depth

  auto r = ipc::parse_frame(line);
  if (r.ok() != fast_ok) __builtin_trap();
  // The handle filter's view of a NODE_HANDLE line: when its message bytes are one JSON text,
  // the line is exactly the wrapper {cmd, type, msg} around it.
  if (auto h = ipc::match_handle_frame(line)) {
    auto m = ipc::parse_frame(h->message);
    if (m.ok() && (!r.ok() || !(r.value() == json{{"cmd", "NODE_HANDLE"}, {"type", std::string(h->type)},
                                                  {"msg", m.value()}})))
      __builtin_trap();
  }
  // The parser decodes invalid UTF-8 in one pass: the same value as decoding the line first.
  if (r.ok() && !(r.value() == fast)) __builtin_trap();
  if (!r.ok()) {
    if (r.error().code != "ERR_IPC_BAD_FRAME") __builtin_trap();
    return;
  }
  (void)ipc::is_internal(r.value());
  std::string wire = ipc::encode_frame(r.value());
  std::string exact = strict_dump(r.value());
  if (!exact.empty() && wire != exact + "\n") __builtin_trap();  // fast_dump == nlohmann's dump
  if (wire.empty() || wire.back() != '\n') __builtin_trap();
  if (wire.find('\n') != wire.size() - 1) __builtin_trap();  // one frame, one newline
  auto again = ipc::parse_frame(std::string_view(wire).substr(0, wire.size() - 1));
  // Lossless: the text we send parses back to a value we send as the same text (±inf, which
  // JSON.stringify also writes as null, is the only value that changes on the way).
  if (!again.ok() || ipc::encode_frame(again.value()) != wire) __builtin_trap();
}

// The text form compares NaN and -0 exactly (Json's == does not).
std::string v8_text(const json& v) { return ipc::encode_frame(ipc::v8_text_form(v)); }

void check_v8_payload(std::string_view payload) {
  auto r = ipc::decode_v8_payload(payload);
  if (!r.ok()) {
    if (r.error().code != "ERR_IPC_BAD_FRAME") __builtin_trap();
    return;
  }
  (void)ipc::is_internal(r.value());
  auto frame = ipc::encode_v8_frame(r.value());
  if (!frame.ok()) __builtin_trap();  // everything we decode can be sent back
  auto again = ipc::decode_v8_payload(std::string_view(frame.value()).substr(4));
  if (!again.ok()) __builtin_trap();
  // Lossless up to property order: objects come back with sorted keys, so an object that several
  // places share may be written first at another place (its refs' paths in the text form move
  // with it) once; from then on the round trip is a fixed point, byte for byte.
  auto frame_again = ipc::encode_v8_frame(again.value());
  if (!frame_again.ok() || frame_again.value() != frame.value()) __builtin_trap();
  const std::string text = v8_text(r.value());
  if (v8_text(again.value()) != text && text.find(R"("$v8":"ref")") == std::string::npos) __builtin_trap();
  auto from_text = ipc::encode_v8_frame(ipc::v8_text_form(r.value()));  // the CLI's round trip
  if (!from_text.ok()) __builtin_trap();
}

void fuzz_v8(uint8_t mode, std::string_view rest) {
  std::string payload = (mode & 0x20) ? std::string("\xFF\x0F") : std::string();
  payload += rest;
  check_v8_payload(payload);
  size_t step = (mode % 17) + 1;
  ipc::V8FrameReader reader(4096);
  for (size_t off = 0; off < rest.size(); off += step)
    reader.feed(rest.data() + off, std::min(step, rest.size() - off), [](std::string_view p) { check_v8_payload(p); });
}

// A run the reader found while the line arrived is what it claims (plain bytes, ending at a
// byte that is not plain or at the line's end, its copy equal to them), and the parse that
// uses it gives what the parse without it gives.
void check_run(std::string_view line, const ipc::PlainRun* run) {
  if (!run) return;
  auto plain_byte = [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
  };
  if (run->begin > run->end || run->end > line.size()) __builtin_trap();
  for (size_t k = run->begin; k < run->end; ++k)
    if (!plain_byte(line[k])) __builtin_trap();
  if (run->end < line.size() && plain_byte(line[run->end])) __builtin_trap();
  if (run->text && !run->text->empty() && *run->text != line.substr(run->begin, run->end - run->begin))
    __builtin_trap();
  auto without = ipc::parse_frame(line);
  auto with = ipc::parse_frame(line, ipc::kMaxNestingDepth, run);
  if (without.ok() != with.ok()) __builtin_trap();
  if (without.ok() && !(without.value() == with.value())) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] >= 0x80 && data[0] < 0xC0) {
    fuzz_v8(data[0], std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
    return 0;
  }
  if (data[0] >= 0xC0) {
    if (size < 3) return 0;
    size_t k = std::min<size_t>((size_t{data[1]} << 8) | data[2], 20000);
    std::string_view rest(reinterpret_cast<const char*>(data + 3), size - 3);
    size_t z1 = rest.find('\0');
    size_t z2 = z1 == std::string_view::npos ? z1 : rest.find('\0', z1 + 1);
    std::string_view p = rest.substr(0, z1);
    std::string_view s = z1 == std::string_view::npos ? "" : rest.substr(z1 + 1, z2 - z1 - 1);
    std::string_view m = z2 == std::string_view::npos ? "" : rest.substr(z2 + 1);
    k = std::min(k, size_t{256 * 1024} / std::max<size_t>(1, p.size() + s.size()));  // fast runs
    std::string line;
    line.reserve((p.size() + s.size()) * k + m.size());
    for (size_t i = 0; i < k; ++i) line += p;
    line += m;
    for (size_t i = 0; i < k; ++i) line += s;
    if (line.find('\n') == std::string::npos) check_line(line);
    return 0;
  }
  size_t step = (data[0] % 17) + 1;
  // Low big-line thresholds (from the first byte too), so the reader's arrival-time runs are made.
  ipc::FrameReader reader(4096, ipc::FrameReader::BigLine{size_t{data[0]} % 5 * 8, size_t{data[0]} % 7 + 1});
  const char* p = reinterpret_cast<const char*>(data + 1);
  size_t n = size - 1;
  for (size_t off = 0; off < n; off += step) {
    size_t len = off + step > n ? n - off : step;
    reader.feed(p + off, len, [&reader](std::string_view line) {
      check_run(line, reader.plain_run());
      check_line(line);
    });
  }
  return 0;
}
