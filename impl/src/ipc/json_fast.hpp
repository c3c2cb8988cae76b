#pragma once
// A fast JSON text -> nlohmann::json parser for IPC frames (nlohmann's lexer costs ~18 ns per
// string byte). Accepts RFC 8259 JSON; produces what nlohmann would, except that lone UTF-16
// surrogates in \u escapes (which JSON.stringify emits and nlohmann rejects) become U+FFFD.
// Returns false when it cannot parse (syntax error, or nesting deeper than 256): the caller
// then falls back to nlohmann, so this never changes what is rejected except surrogates.
// Input must be valid UTF-8 (parse_frame sanitizes first).
#include <nlohmann/json.hpp>
#include <string_view>

namespace uvcluster::ipc::detail_json {
bool fast_parse(std::string_view text, nlohmann::json& out);
}

namespace uvcluster::ipc::detail_json {
// Appends the compact JSON text of `v` to `out`, byte-identical to
// v.dump(-1, ' ', false, error_handler_t::replace) (invalid UTF-8 becomes U+FFFD).
void fast_dump(const nlohmann::json& v, std::string& out);
}
