#pragma once
// Node's 'json' IPC framing (docs/protocol.md §1.2), independent of libuv so it can be unit
// tested and fuzzed.
//
//   * A frame is one JSON text followed by '\n' (0x0A). 0x0A never occurs inside a UTF-8
//     multi-byte sequence, so the reader splits raw bytes: a character split between two reads
//     is simply completed by the next feed() (Node decodes with a StringDecoder to the same end).
//   * A line that is not JSON (including an empty line) is a bad frame. Node throws an uncaught
//     SyntaxError there; we report ERR_IPC_BAD_FRAME and skip the line.
//   * Invalid UTF-8 inside a line is replaced by U+FFFD before parsing, as Node's decoder does.
//   * A line (complete, or still incomplete in the buffer) longer than max_frame_bytes makes the
//     reader fail for good (ERR_IPC_FRAME_TOO_LARGE); the channel then closes.
#include <cstddef>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "uvcluster/error.hpp"

namespace uvcluster::ipc {

class FrameReader {
 public:
  explicit FrameReader(size_t max_frame_bytes = 64 * 1024 * 1024) : max_(max_frame_bytes) {}

  // Feeds bytes; calls on_line(line) for every complete line (without the '\n'), in order.
  // Returns false once a line exceeded max_frame_bytes (then and on every later call; nothing
  // more is delivered).
  bool feed(const char* data, size_t n, const std::function<void(std::string_view)>& on_line);
  // Bytes of an incomplete line held back (Node's channel.buffering).
  bool buffering() const { return !buf_.empty(); }
  size_t buffered() const { return buf_.size(); }
  bool failed() const { return failed_; }
  void reset() {
    buf_.clear();
    failed_ = false;
  }

 private:
  size_t max_;
  std::string buf_;
  bool failed_ = false;
};

// Parses one line into a message: ERR_IPC_BAD_FRAME if it is not a JSON text. Never throws.
Result<nlohmann::json> parse_frame(std::string_view line);
// Encodes a message as Node's JSON.stringify would (compact; invalid UTF-8 in strings becomes
// U+FFFD) plus the '\n'. Never throws.
std::string encode_frame(const nlohmann::json& message);
// Node's isInternal: an object whose `cmd` is a string longer than 5 chars starting "NODE_".
bool is_internal(const nlohmann::json& message);
// Replaces invalid UTF-8 sequences by U+FFFD (returns the input unchanged when valid).
std::string sanitize_utf8(std::string_view s);

}  // namespace uvcluster::ipc
