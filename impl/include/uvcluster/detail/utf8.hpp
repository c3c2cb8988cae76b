#pragma once
// UTF-8 helpers shared by exec (truncation at a character boundary) and the decoders.
#include <cstddef>
#include <string>
#include <string_view>

namespace uvcluster::detail {

// The largest n <= cap such that bytes[0, n) does not end inside a multi-byte sequence that
// continues past n. Only the tail is inspected; invalid bytes count as single characters.
size_t utf8_boundary(std::string_view bytes, size_t cap);

// Decodes like Node's utf8 StringDecoder over the whole input: each maximal invalid subpart
// becomes U+FFFD; valid input is returned unchanged.
std::string utf8_sanitize(std::string_view bytes);

}  // namespace uvcluster::detail
