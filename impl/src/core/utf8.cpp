#include "core/utf8.hpp"

#include <cstdint>
#include <cstring>

namespace uvcluster::detail {
namespace {

// Length of the valid sequence starting at s[i], or 0 if invalid (incl. truncated); *subpart is
// then the length of the maximal subpart (the Unicode rule WHATWG/V8 decoders use).
size_t valid_sequence(std::string_view s, size_t i, size_t* subpart) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  *subpart = 1;
  if (c < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c == 0xE0) { need = 2; lo = 0xA0; }
  else if (c >= 0xE1 && c <= 0xEC) need = 2;
  else if (c == 0xED) { need = 2; hi = 0x9F; }
  else if (c >= 0xEE && c <= 0xEF) need = 2;
  else if (c == 0xF0) { need = 3; lo = 0x90; }
  else if (c >= 0xF1 && c <= 0xF3) need = 3;
  else if (c == 0xF4) { need = 3; hi = 0x8F; }
  else return 0;
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return 0;
    unsigned char ck = b(i + k);
    unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (ck < l || ck > h) return 0;
    *subpart = k + 1;
  }
  return need + 1;
}

}  // namespace

size_t utf8_boundary(std::string_view bytes, size_t cap) {
  if (cap >= bytes.size()) return bytes.size();
  // Walk back over at most 3 continuation bytes to the lead byte of the character at `cap`.
  size_t lead = cap;
  while (lead > 0 && cap - lead < 3 && (static_cast<unsigned char>(bytes[lead]) & 0xC0) == 0x80) --lead;
  if (lead == cap) return cap;  // bytes[cap] starts a character: cutting there splits nothing
  size_t subpart = 0;
  size_t len = valid_sequence(bytes, lead, &subpart);
  // A valid character straddling the cap is dropped whole; anything else is cut as bytes.
  return (len && lead + len > cap) ? lead : cap;
}

bool utf8_valid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    while (i + 32 <= s.size()) {  // ASCII runs 32 bytes a step (the compiler vectorizes it)
      uint64_t w[4];
      std::memcpy(w, s.data() + i, 32);
      if ((w[0] | w[1] | w[2] | w[3]) & 0x8080808080808080ULL) break;
      i += 32;
    }
    while (i + 8 <= s.size()) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= s.size()) break;
    size_t subpart;
    size_t len = valid_sequence(s, i, &subpart);
    if (!len) return false;
    i += len;
  }
  return true;
}

std::string utf8_sanitize(std::string_view s) {
  if (utf8_valid(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    size_t subpart = 1;
    size_t len = valid_sequence(s, i, &subpart);
    if (len) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");  // one U+FFFD per maximal invalid subpart
      i += subpart;
    }
  }
  return out;
}

size_t utf8_char_at(std::string_view s, size_t* subpart) { return valid_sequence(s, 0, subpart); }

unsigned wtf8_surrogate_at(std::string_view s) {
  if (s.size() < 3) return 0;
  auto b0 = static_cast<unsigned char>(s[0]), b1 = static_cast<unsigned char>(s[1]),
       b2 = static_cast<unsigned char>(s[2]);
  if (b0 != 0xED || b1 < 0xA0 || b1 > 0xBF || (b2 & 0xC0) != 0x80) return 0;
  return 0xD000u | ((b1 & 0x3Fu) << 6) | (b2 & 0x3Fu);
}

}  // namespace uvcluster::detail
