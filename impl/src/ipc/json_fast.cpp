#include "json_fast.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <locale.h>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/utf8.hpp"

namespace uvcluster::ipc::detail_json {
namespace {

using json = nlohmann::json;

// strtod in the "C" locale whatever the process locale is, for the numbers from_chars reports
// out of range: they become ±inf (as in JSON.parse) or the nearest subnormal/±0 (as nlohmann).
double strtod_c(const char* first, const char* last) {
  static const locale_t c_locale = newlocale(LC_NUMERIC_MASK, "C", locale_t{});
  std::string copy(first, last);
  return c_locale ? strtod_l(copy.c_str(), nullptr, c_locale) : std::strtod(copy.c_str(), nullptr);
}

// "Plain" bytes are those a JSON string holds verbatim on the wire and in memory alike:
// printable ASCII but '"' and '\\' (control characters, escapes and bytes >= 0x80 need a closer
// look). Both the parser and the encoder spend most of a big string finding plain runs, so that
// is vectorized: 64 bytes a step with AVX-512 or AVX2 where the CPU has it (chosen at run
// time; AVX2 is ~3 times as fast as 16 SSE2 bytes a step on 1 MiB of L2-resident text here), 16
// with SSE2 (every x86-64), else 8 with plain 64-bit arithmetic (a byte loop held a 1 MiB
// message to ~1 GB/s).
// Signed compares: bytes >= 0x80 are negative, so "< 0x20" takes them too. A byte loop
// finishes the block that holds a stop byte. (Copying while checking, in one loop, was tried:
// the destination's first writes then cost what the separate check saved.)
bool is_plain(char ch) {
  unsigned char c = static_cast<unsigned char>(ch);
  return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

const char* skip_plain_portable(const char* p, const char* end) {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
  while (end - p >= 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    __m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                _mm_cmplt_epi8(v, space));
    if (int mask = _mm_movemask_epi8(stop)) return p + __builtin_ctz(static_cast<unsigned>(mask));
    p += 16;
  }
#else
  constexpr uint64_t kOnes = 0x0101010101010101ULL;
  constexpr uint64_t kHigh = 0x8080808080808080ULL;
  auto has_zero_byte = [](uint64_t x) { return (x - kOnes) & ~x & kHigh; };
  while (end - p >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    uint64_t stop = has_zero_byte(w ^ (kOnes * '"')) | has_zero_byte(w ^ (kOnes * '\\')) |
                    ((w - kOnes * 0x20) & ~w & kHigh) | (w & kHigh);  // some byte < 0x20 or >= 0x80
    if (stop) break;
    p += 8;
  }
#endif
  while (p < end && is_plain(*p)) ++p;
  return p;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Bit i set when byte i of the 64 in a, b is not plain.
__attribute__((target("avx2"))) inline uint64_t stops64_avx2(__m256i a, __m256i b) {
  const __m256i quote = _mm256_set1_epi8('"'), backslash = _mm256_set1_epi8('\\');
  const __m256i space = _mm256_set1_epi8(0x20);
  __m256i sa = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(a, quote), _mm256_cmpeq_epi8(a, backslash)),
                               _mm256_cmpgt_epi8(space, a));
  __m256i sb = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(b, quote), _mm256_cmpeq_epi8(b, backslash)),
                               _mm256_cmpgt_epi8(space, b));
  return static_cast<uint32_t>(_mm256_movemask_epi8(sa)) |
         static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_epi8(sb))) << 32;
}

__attribute__((target("avx2"))) const char* skip_plain_avx2(const char* p, const char* end) {
  while (end - p >= 64) {
    uint64_t stops = stops64_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    if (stops) return p + __builtin_ctzll(stops);
    p += 64;
  }
  return skip_plain_portable(p, end);
}

// 64 bytes a step as one 512-bit vector, a mask register per compare (AVX-512BW): ~30 % faster
// than the AVX2 loop on 1 MiB of L2-resident text on this machine's Xeon (32-40 µs against
// 48-57 µs per MiB).
__attribute__((target("avx512bw"))) const char* skip_plain_avx512(const char* p, const char* end) {
  const __m512i quote = _mm512_set1_epi8('"'), backslash = _mm512_set1_epi8('\\');
  const __m512i space = _mm512_set1_epi8(0x20);
  while (end - p >= 64) {
    __m512i v = _mm512_loadu_si512(p);
    uint64_t stops = _mm512_cmpeq_epi8_mask(v, quote) | _mm512_cmpeq_epi8_mask(v, backslash) |
                     _mm512_cmplt_epi8_mask(v, space);
    if (stops) return p + __builtin_ctzll(stops);
    p += 64;
  }
  return skip_plain_portable(p, end);
}

#endif

using SkipFn = const char* (*)(const char*, const char*);

SkipFn choose_skip_plain() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // AVX-512 only where 512-bit integer work does not slow the clock much: VBMI2 marks Ice Lake
  // and later (simdjson draws the same line); older AVX-512 parts take the AVX2 path.
  if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi2")) return skip_plain_avx512;
  if (__builtin_cpu_supports("avx2")) return skip_plain_avx2;
#endif
  return skip_plain_portable;
}

}  // namespace

const char* skip_plain(const char* p, const char* end) {
  static const SkipFn chosen = choose_skip_plain();
  return chosen(p, end);
}

namespace {

// Appends the plain bytes that start at p to `out`; returns the first byte that is not plain.
// The run is found first, so `out` grows once, by its exact length.
const char* append_plain(const char* p, const char* end, std::string& out) {
  const char* stop = skip_plain(p, end);
  out.append(p, static_cast<size_t>(stop - p));
  return stop;
}

const char kHex[] = "0123456789abcdef";

void escape_u(unsigned cp, std::string& out) {
  out += "\\u";
  out.push_back(kHex[(cp >> 12) & 15]);
  out.push_back(kHex[(cp >> 8) & 15]);
  out.push_back(kHex[(cp >> 4) & 15]);
  out.push_back(kHex[cp & 15]);
}

// After a byte >= 0x80 inside a string: appends the run of non-ASCII characters that starts at
// p to `out` as Node's StringDecoder decodes it (valid characters as they are, one U+FFFD per
// maximal invalid subpart) and returns where the run ends. kWtf8Escapes (the encoder): WTF-8
// lone surrogates, which the parser makes of "\ud800", are written back as \udxxx instead.
template <bool kWtf8Escapes>
const char* append_non_ascii(const char* p, const char* end, std::string& out) {
  const char* run = p;  // valid bytes not yet appended
  while (p < end && static_cast<unsigned char>(*p) >= 0x80) {
    std::string_view rest(p, static_cast<size_t>(end - p));
    if (kWtf8Escapes) {
      if (unsigned cp = detail::wtf8_surrogate_at(rest)) {
        out.append(run, static_cast<size_t>(p - run));
        escape_u(cp, out);
        p += 3;
        run = p;
        continue;
      }
    }
    size_t subpart = 1;
    if (size_t n = detail::utf8_char_at(rest, &subpart)) {
      p += n;
      continue;
    }
    out.append(run, static_cast<size_t>(p - run));
    out += "\xEF\xBF\xBD";
    p += subpart;
    run = p;
  }
  out.append(run, static_cast<size_t>(p - run));
  return p;
}

// The arrays/objects open around the value being parsed, innermost last: inline for the usual
// shallow message (no allocation), on the heap beyond that.
class OpenContainers {
 public:
  static constexpr size_t kInline = 32;
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  void push(json* container) {
    if (size_ < inline_.size()) inline_[size_] = container;
    else spilled_.push_back(container);
    ++size_;
  }
  json* back() const { return size_ <= inline_.size() ? inline_[size_ - 1] : spilled_.back(); }
  void pop() {
    if (size_ > inline_.size()) spilled_.pop_back();
    --size_;
  }

 private:
  std::array<json*, kInline> inline_;
  std::vector<json*> spilled_;
  size_t size_ = 0;
};

struct Parser {
  const char* p;
  const char* end;
  size_t max_depth;
  // A plain run known from the line's arrival (FrameReader): [run_begin, run_end) is not
  // scanned again, and run_text (while not null) is the copy a string starting there takes.
  const char* run_begin;
  const char* run_end;
  std::string* run_text;
  bool too_deep = false;
  bool scanned_ahead = false;  // the rest of the text is known not to nest too deep

  void ws() {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  }
  bool lit(const char* word, size_t n) {
    if (static_cast<size_t>(end - p) < n || std::memcmp(p, word, n) != 0) return false;
    p += n;
    return true;
  }
  static void put_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  bool hex4(uint32_t& v) {
    if (end - p < 4) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = *p++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else return false;
    }
    return true;
  }
  // At the opening quote. Invalid UTF-8 becomes U+FFFD here, as if the line had been decoded
  // first (outside strings any byte >= 0x80 is a syntax error either way), so a valid line is
  // read once instead of being checked and then parsed.
  bool string(std::string& s) {
    ++p;
    for (;;) {
      if (p >= run_begin && p < run_end) take_run(s);
      else p = append_plain(p, end, s);
      if (p >= end) return false;
      unsigned char c = static_cast<unsigned char>(*p);
      if (c >= 0x80) {
        p = append_non_ascii<false>(p, end, s);
        continue;
      }
      ++p;
      if (c == '"') return true;
      if (c != '\\') return false;  // raw control character
      if (p >= end) return false;
      switch (*p++) {
        case '"': s.push_back('"'); break;
        case '\\': s.push_back('\\'); break;
        case '/': s.push_back('/'); break;
        case 'b': s.push_back('\b'); break;
        case 'f': s.push_back('\f'); break;
        case 'n': s.push_back('\n'); break;
        case 'r': s.push_back('\r'); break;
        case 't': s.push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!hex4(cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            const char* save = p;
            if (end - p >= 6 && p[0] == '\\' && p[1] == 'u' && (p += 2, hex4(lo)) && lo >= 0xDC00 &&
                lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              p = save;  // lone high surrogate: kept as WTF-8 (ED A0..AF xx)
            }
          }
          put_utf8(s, cp);  // a lone low surrogate too: WTF-8 (ED B0..BF xx)
          break;
        }
        default: return false;
      }
    }
  }
  // Inside the known run: its bytes up to run_end are plain. Moved when the string starts with
  // them and the copy is not oversized for them (a copy reserved for a longer run is copied).
  void take_run(std::string& s) {
    size_t n = static_cast<size_t>(run_end - p);
    if (s.empty() && p == run_begin && run_text && run_text->size() == n && run_text->capacity() <= 2 * n) {
      s = std::move(*run_text);
      run_text = nullptr;
    } else {
      s.append(p, n);
    }
    p = run_end;
  }
  bool number(json& out) {
    const char* start = p;
    bool neg = false, is_float = false;
    if (*p == '-') {
      neg = true;
      ++p;
    }
    if (p >= end) return false;
    if (*p == '0') {
      ++p;
    } else if (*p >= '1' && *p <= '9') {
      while (p < end && *p >= '0' && *p <= '9') ++p;
    } else {
      return false;
    }
    if (p < end && *p == '.') {
      is_float = true;
      ++p;
      if (p >= end || *p < '0' || *p > '9') return false;
      while (p < end && *p >= '0' && *p <= '9') ++p;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
      is_float = true;
      ++p;
      if (p < end && (*p == '+' || *p == '-')) ++p;
      if (p >= end || *p < '0' || *p > '9') return false;
      while (p < end && *p >= '0' && *p <= '9') ++p;
    }
    if (!is_float) {
      if (neg) {
        int64_t v;
        auto r = std::from_chars(start, p, v);
        if (r.ec == std::errc() && r.ptr == p) {
          out = v;
          return true;
        }
      } else {
        uint64_t v;
        auto r = std::from_chars(start, p, v);
        if (r.ec == std::errc() && r.ptr == p) {
          out = v;
          return true;
        }
      }
    }
    double d;
    auto r = std::from_chars(start, p, d);
    if (r.ptr != p) return false;
    out = r.ec == std::errc::result_out_of_range ? strtod_c(start, p) : d;
    return true;
  }
  // The scalar at p (not an array or object) into `out`.
  bool scalar(json& out) {
    switch (*p) {
      case '"': {
        std::string s;
        if (!string(s)) return false;
        out = std::move(s);
        return true;
      }
      case 't':
        if (!lit("true", 4)) return false;
        out = true;
        return true;
      case 'f':
        if (!lit("false", 5)) return false;
        out = false;
        return true;
      case 'n':
        if (!lit("null", 4)) return false;
        out = nullptr;
        return true;
      default:
        return number(out);
    }
  }
  // After an object's '{' or ',': the member's key and ':'; returns its value's slot, or null.
  json* member(json::object_t& obj) {
    ws();
    if (p >= end || *p != '"') return nullptr;
    std::string key;
    if (!string(key)) return nullptr;
    ws();
    if (p >= end || *p != ':') return nullptr;
    ++p;
    json& slot = obj[std::move(key)];
    slot = nullptr;  // a duplicate key starts afresh: the last one wins, as in JSON.parse
    return &slot;
  }
  // Where an open container's next value goes: a new last element, or the member whose key and
  // ':' are parsed here (null if they are not there).
  json* next_slot(json& container) {
    if (container.is_array()) return &container.get_ref<json::array_t&>().emplace_back();
    return member(container.get_ref<json::object_t&>());
  }
  // One value into `root`, iteratively: the containers still open are an explicit stack, so
  // hostile nesting costs a bounded heap stack (max_depth pointers), never the thread's stack.
  // A pointer into a container stays valid while it is open: only its last element grows.
  bool value(json& root) {
    OpenContainers open;
    json* out = &root;
    for (;;) {
      ws();
      if (p >= end) return false;
      if (*p == '{' || *p == '[') {
        if (open.size() >= max_depth) {
          too_deep = true;
          return false;
        }
        // Deeper than the inline stack: scan the rest once before building more levels, so a
        // too-deep frame is refused having built 32 of them, not max_depth (1,000 nested
        // arrays are ~64 KB of heap, touched and then freed by every hostile frame).
        if (open.size() == OpenContainers::kInline && !scanned_ahead) {
          if (nests_deeper_than({p, static_cast<size_t>(end - p)}, max_depth, open.size())) {
            too_deep = true;
            return false;
          }
          scanned_ahead = true;
        }
        bool is_object = *p == '{';
        ++p;
        ws();
        if (is_object) *out = json::object();
        else *out = json::array();
        if (p < end && *p == (is_object ? '}' : ']')) {
          ++p;
        } else {
          open.push(out);
          out = next_slot(*out);
          if (!out) return false;
          continue;
        }
      } else if (!scalar(*out)) {
        return false;
      }
      // A value is complete: close the containers it completes, then find the next slot.
      for (;;) {
        if (open.empty()) return true;
        json& container = *open.back();
        ws();
        if (p >= end) return false;
        if (*p == ',') {
          ++p;
          out = next_slot(container);
          if (!out) return false;
          break;
        }
        if (*p != (container.is_object() ? '}' : ']')) return false;
        ++p;
        open.pop();
      }
    }
  }
};

}  // namespace

std::vector<PlainScan> plain_scans() {
  std::vector<PlainScan> scans;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bw")) scans.push_back({"avx512", skip_plain_avx512});
  if (__builtin_cpu_supports("avx2")) scans.push_back({"avx2", skip_plain_avx2});
#endif
  scans.push_back({"portable", skip_plain_portable});
  return scans;
}

bool nests_deeper_than(std::string_view text, size_t max_depth, size_t depth) {
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    char c = *p++;
    if (c == '[' || c == '{') {
      if (++depth > max_depth) return true;
    } else if (c == ']' || c == '}') {
      if (depth > 0) --depth;
    } else if (c == '"') {
      for (;;) {  // to the closing quote: only '"' and '\\' matter inside a string
        p = skip_plain(p, end);
        if (p >= end) return false;
        if (*p == '"') {
          ++p;
          break;
        }
        p += *p == '\\' && end - p >= 2 ? 2 : 1;
      }
    }
  }
  return false;
}

ParseStatus parse(std::string_view text, nlohmann::json& out, size_t max_depth, const PlainRun* run) {
  const char* end = text.data() + text.size();
  Parser ps{text.data(), end, max_depth, end, end, nullptr};
  if (run) {
    ps.run_begin = text.data() + run->begin;
    ps.run_end = text.data() + run->end;
    ps.run_text = run->text;
  }
  json v;
  if (!ps.value(v)) return ps.too_deep ? ParseStatus::too_deep : ParseStatus::syntax_error;
  ps.ws();
  if (ps.p != ps.end) return ParseStatus::syntax_error;
  out = std::move(v);
  return ParseStatus::ok;
}

namespace {

// JSON.stringify of the string `s` holds: valid UTF-8 is copied as is, WTF-8 lone surrogates
// (ED A0..BF xx, what parse() makes of "\ud800") are escaped back as \udxxx (well-formed
// JSON.stringify), any other invalid byte sequence becomes one U+FFFD per maximal subpart.
void dump_string(const std::string& s, std::string& out, EncodeProgress* progress) {
  // Room for the text as it is, the quotes and the frame's '\n' (escapes may still grow it).
  out.reserve(out.size() + s.size() + 3);
  out.push_back('"');
  const char* p = s.data();
  const char* end = p + s.size();
  while (p < end) {
    if (progress) {  // plain runs go `every` bytes at a time, each full step offered first
      const char* limit = p + std::min(static_cast<size_t>(end - p), progress->every);
      const char* stop = skip_plain(p, limit);
      size_t n = static_cast<size_t>(stop - p);
      bool full = n == progress->every;
      size_t taken = full ? std::min(progress->encoded(out, {p, n}), n) : 0;
      out.append(p + taken, n - taken);
      p = stop;
      if (full) continue;
    } else {
      p = append_plain(p, end, out);
    }
    if (p >= end) break;
    unsigned char c = static_cast<unsigned char>(*p);
    if (c >= 0x80) {
      p = append_non_ascii<true>(p, end, out);
      continue;
    }
    ++p;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default: escape_u(c, out);
    }
  }
  out.push_back('"');
}

}  // namespace

void fast_dump(const nlohmann::json& v, std::string& out, EncodeProgress* progress) {
  using json = nlohmann::json;
  switch (v.type()) {
    case json::value_t::object: {
      out.push_back('{');
      bool first = true;
      for (const auto& [k, val] : v.get_ref<const json::object_t&>()) {
        if (!first) out.push_back(',');
        first = false;
        dump_string(k, out, progress);
        out.push_back(':');
        fast_dump(val, out, progress);
      }
      out.push_back('}');
      return;
    }
    case json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& val : v.get_ref<const json::array_t&>()) {
        if (!first) out.push_back(',');
        first = false;
        fast_dump(val, out, progress);
      }
      out.push_back(']');
      return;
    }
    case json::value_t::string: dump_string(v.get_ref<const std::string&>(), out, progress); return;
    case json::value_t::boolean: out += v.get<bool>() ? "true" : "false"; return;
    case json::value_t::null: out += "null"; return;
    case json::value_t::number_integer: {
      char buf[24];
      auto r = std::to_chars(buf, buf + sizeof buf, v.get<int64_t>());
      out.append(buf, r.ptr);
      return;
    }
    case json::value_t::number_unsigned: {
      char buf[24];
      auto r = std::to_chars(buf, buf + sizeof buf, v.get<uint64_t>());
      out.append(buf, r.ptr);
      return;
    }
    default:  // floats (nlohmann's exact formatting), binary, discarded
      out += v.dump(-1, ' ', false, json::error_handler_t::replace);
      return;
  }
}

}  // namespace uvcluster::ipc::detail_json
