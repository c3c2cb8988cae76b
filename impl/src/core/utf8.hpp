#pragma once
// UTF-8 helpers shared by exec (truncation at a character boundary), the IPC frame decoder and
// the IPC JSON encoder. Invalid input follows the Unicode "maximal subpart" rule, as V8's and
// Node's utf8 decoders (StringDecoder, Buffer#toString) do: `E2 82` then a non-continuation byte
// is ONE U+FFFD, `FF` is one, `ED A0 80` (an encoded surrogate) is three.
#include <cstddef>
#include <string>
#include <string_view>

namespace uvcluster::detail {

// The largest n <= cap such that bytes[0, n) does not end inside a multi-byte sequence that
// continues past n. Only the tail is inspected; invalid bytes count as single characters.
size_t utf8_boundary(std::string_view bytes, size_t cap);

// Whether `bytes` is well-formed UTF-8 (ASCII runs are checked 8 bytes at a time).
bool utf8_valid(std::string_view bytes);

// Decodes like Node's utf8 StringDecoder over the whole input: each maximal invalid subpart
// becomes U+FFFD; valid input is returned unchanged.
std::string utf8_sanitize(std::string_view bytes);

// At the start of the non-empty `s`: the length of the well-formed character there, or 0 when
// there is none; then *subpart is the length of the maximal invalid subpart (>= 1), the bytes
// one U+FFFD stands for.
size_t utf8_char_at(std::string_view s, size_t* subpart);

// When `s` starts with the WTF-8 form of a lone UTF-16 surrogate (ED A0..BF 80..BF), that code
// unit (0xD800..0xDFFF); otherwise 0. The IPC JSON parser keeps "\ud800" escapes this way so
// that they can be escaped back unchanged.
unsigned wtf8_surrogate_at(std::string_view s);

}  // namespace uvcluster::detail
