#pragma once
// The IPC JSON parser and encoder (nlohmann's own lexer costs ~18 ns per string byte, and its
// parser neither bounds nesting nor keeps lone surrogates). parse() accepts exactly RFC 8259
// JSON text, as JSON.parse does (no BOM, no comments), and produces what nlohmann would, except:
//   * lone UTF-16 surrogates in \u escapes (JSON.stringify emits them; nlohmann rejects them) are
//     kept as WTF-8 (ED A0..BF xx), and fast_dump escapes them back, so a value round-trips;
//   * arrays/objects nested deeper than max_depth are refused (too_deep), with bounded work
//     and stack, and before they are built: a text that opens a 33rd level is first scanned
//     ahead with nests_deeper_than (shallow texts, all real traffic, never pay that scan);
//     numbers out of double range become ±inf / ±0 (JSON.parse gives the same).
// Invalid UTF-8 in the input gives what decoding it first would (Node's StringDecoder: one U+FFFD
// per maximal invalid subpart inside strings; a syntax error outside them).
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "uvcluster/ipc/framing.hpp"

namespace uvcluster::ipc::detail_json {

enum class ParseStatus { ok, syntax_error, too_deep };
// `run` (may be null; its range must lie within `text`) spares the string scan over its bytes,
// and a string whose content starts at its `begin` takes its `text` when it holds those bytes.
ParseStatus parse(std::string_view text, nlohmann::json& out, size_t max_depth, const PlainRun* run = nullptr);

// Whether `text` nests arrays/objects deeper than max_depth when `depth` levels are already
// open before it, judged on its bytes alone: the brackets outside strings are counted, no value
// is built and nothing is allocated (linear; any parser can call it before it builds a value).
// A text that is not JSON gets an answer too; its parse then reports what is wrong with it.
bool nests_deeper_than(std::string_view text, size_t max_depth, size_t depth = 0);

// Appends the compact JSON text of `v` to `out` as JSON.stringify would write the value it
// stands for: byte-identical to v.dump(-1, ' ', false, error_handler_t::replace) for valid
// UTF-8 strings; WTF-8 surrogates are written as \udxxx, other invalid UTF-8 as U+FFFD per
// maximal subpart. `progress` (may be null) is told every `progress->every` bytes of a long
// string.
void fast_dump(const nlohmann::json& v, std::string& out, EncodeProgress* progress = nullptr);

// The first byte of [p, end) that is not plain (printable ASCII but '"' and '\\'), or end: the
// fastest of plain_scans() on this CPU.
const char* skip_plain(const char* p, const char* end);

// The scans for a string's first byte that is not plain (printable ASCII but '"' and '\\') this
// CPU can run, each by name ("avx512", "avx2", "portable"): one is chosen at run time, so tests
// check every one against a byte loop.
struct PlainScan {
  const char* name;
  const char* (*skip_plain)(const char* p, const char* end);
};
std::vector<PlainScan> plain_scans();

}  // namespace uvcluster::ipc::detail_json
