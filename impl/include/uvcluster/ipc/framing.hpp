#pragma once
// Node's 'json' IPC framing (lib/internal/child_process/serialization.js; docs/protocol.md §1.2),
// independent of libuv so it can be unit tested and fuzzed.
//
//   * A frame is one JSON text followed by '\n' (0x0A). 0x0A never occurs inside a UTF-8
//     multi-byte sequence, so the reader splits raw bytes: a character split between two reads
//     is simply completed by the next feed() (Node decodes with a StringDecoder to the same end).
//   * A line that is not JSON (including an empty line) is a bad frame. Node throws an uncaught
//     SyntaxError there; we report ERR_IPC_BAD_FRAME and skip the line.
//   * Invalid UTF-8 inside a line is replaced before parsing as Node's StringDecoder does: one
//     U+FFFD per maximal invalid subpart (`E2 82` then `"` is one U+FFFD, `FF` is one).
//   * "\ud800"-style lone surrogate escapes (JSON.stringify emits them) are kept as WTF-8 inside
//     the string and escaped back by encode_frame, so a message round-trips unchanged.
//   * Arrays/objects nested deeper than the channel's max_nesting_depth (kMaxNestingDepth =
//     1000 by default) make the line a bad frame, found with bounded work; the parse keeps its
//     open arrays/objects on a heap stack, so no input's nesting grows the thread's stack.
//     Node's JSON.parse takes any depth, but nlohmann's copy, compare and dump are recursive: measured,
//     they need ~250 B of stack per level in a release build and ~5.5 KB in the -O0
//     AddressSanitizer build (a 1,600-level value overflows its 8 MiB stack). 1000 levels keep
//     every walk of a parsed message within 8 MiB in every build we ship or test. Node's sender
//     (JSON.stringify, recursive) stops at ~4,170 levels on its default stack (node v20 x64):
//     a Node message nested 1,001..4,170 levels deep is the one thing Node could receive and
//     we refuse. A C++ peer that needs more can raise ChannelOptions::max_nesting_depth.
//   * A line (complete, or still incomplete in the buffer) longer than max_frame_bytes makes the
//     reader fail for good (ERR_IPC_FRAME_TOO_LARGE) and free its buffer; the channel then
//     closes.
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "uvcluster/error.hpp"

namespace uvcluster::ipc {

// What a FrameReader learned about a big line while it arrived: bytes [begin, end) of the line
// are plain (printable ASCII but '"' and '\\': what a JSON string holds verbatim), and the line
// ends at `end` or its byte there is not plain. When `text` is not null it holds a copy of those
// bytes, which the parse of a string whose content starts at `begin` may take instead of
// copying them again (parse_frame).
struct PlainRun {
  size_t begin = 0;
  size_t end = 0;
  std::string* text = nullptr;
};

class FrameReader {
 public:
  // Arrival-time work on a big line: once an incomplete line holds `track_from` bytes, every
  // read's new bytes are scanned with the JSON string scan (which stops at '\n' too) instead of
  // memchr, and the first plain run of at least `copy_from` bytes is copied out as it arrives.
  // That work then runs while the rest of the line is still on its way, not after its last
  // byte (the parse skips the run's scan and takes its copy). Tests lower both.
  struct BigLine {
    size_t track_from = 16 * 1024;
    size_t copy_from = 64 * 1024;
  };
  explicit FrameReader(size_t max_frame_bytes = 64 * 1024 * 1024) : max_(max_frame_bytes) {}
  FrameReader(size_t max_frame_bytes, BigLine big) : max_(max_frame_bytes), big_(big) {}

  // Reading without a copy: space(min) is where the next read may write (at least `min` bytes,
  // all the free room when there is more), commit(n, on_line) takes the n bytes just written
  // there. Only those new bytes are scanned for '\n', so a long frame arriving in many reads
  // costs one scan and no re-assembly. on_line(line) runs for every complete line (without the
  // '\n'), in order; the view is valid during the call. commit returns false once a line
  // exceeded max_frame_bytes (then and on every later call; nothing more is delivered).
  std::span<char> space(size_t min);
  bool commit(size_t n, const std::function<void(std::string_view)>& on_line);
  // The same for bytes that are elsewhere: with no partial line held, the complete lines are
  // delivered from `data` itself and only a trailing partial line is copied in; else copies
  // them in, then commit().
  bool feed(const char* data, size_t n, const std::function<void(std::string_view)>& on_line);
  // Bytes of an incomplete line held back (Node's channel.buffering).
  bool buffering() const { return end_ > begin_; }
  size_t buffered() const { return end_ - begin_; }
  bool failed() const { return failed_; }
  // Bytes of buffer held (0 once failed: an oversized line's buffer is freed at once).
  size_t capacity() const { return cap_; }
  // The same with the copy of a plain run (at most `capacity()` more, only while a line arrives).
  size_t bytes_held() const { return cap_ + (run_copy_.empty() ? 0 : run_copy_.capacity()); }
  // During on_line: the plain run found while that line arrived (null if none; a line that
  // arrived in one read never has one). Its `text` may be moved from.
  const PlainRun* plain_run() const { return delivering_ && scan_.have_run ? &scan_.run : nullptr; }

  // A drained buffer up to kRetainedCapacity is kept for the next line (a channel carrying
  // 1 MiB messages re-uses it instead of page-faulting a new one for each); a bigger one is
  // given back at once unless keep_big_buffer(true): then its owner gives it back with
  // release_big_buffer() once big lines stop coming (the channel: after an idle delay).
  static constexpr size_t kRetainedCapacity = 4 * 1024 * 1024;
  void keep_big_buffer(bool on) { keep_big_ = on; }
  // Frees a buffer above kRetainedCapacity that holds no partial line; true if it did.
  bool release_big_buffer();

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  bool fail();
  size_t track_big_line();
  bool deliver(size_t line_begin, size_t newline, const std::function<void(std::string_view)>& on_line);
  void end_big_line();
  size_t max_;
  BigLine big_;
  // Held bytes are [begin_, end_) of a malloc'ed buffer of cap_ bytes: malloc so that growing a
  // big buffer can be a realloc (mremap for large blocks) instead of a copy.
  std::unique_ptr<char, Free> data_;
  size_t cap_ = 0;
  size_t begin_ = 0;
  size_t end_ = 0;
  bool failed_ = false;
  bool keep_big_ = false;
  // The incomplete big line's arrival-time scan, in offsets from the line's first byte; reset
  // for every big line.
  struct LineScan {
    bool active = false;    // the line reached track_from bytes
    size_t scanned = 0;     // bytes before it were scanned
    size_t run_start = 0;   // the current plain run began here
    bool copying = false;   // the current run is being copied into run_copy_
    bool have_run = false;  // `run` is the line's first run of copy_from bytes
    PlainRun run;
  } scan_;
  bool delivering_ = false;  // on_line of a big line is running (plain_run() is valid)
  std::string run_copy_;
  size_t last_run_ = 0;  // the last copied run's length: the next copy reserves that much
};

// Default deepest nesting of arrays/objects a frame may have ("[[]]" is 2); see above.
inline constexpr size_t kMaxNestingDepth = 1000;

// Parses one line into a message: ERR_IPC_BAD_FRAME if it is not a JSON text (as JSON.parse
// sees it: no BOM, and a NUL byte is an error, not an end) or nests deeper than max_depth. Never throws; work is linear in the line and
// stack use does not depend on the input (the parse is iterative). `run`, what the reader learned
// while the line arrived (FrameReader::plain_run, may be null), gives the same value with less
// work after the line's last byte.
Result<nlohmann::json> parse_frame(std::string_view line, size_t max_depth = kMaxNestingDepth,
                                   const PlainRun* run = nullptr);
// Encodes a message as Node's JSON.stringify would (compact; WTF-8 lone surrogates as \udxxx;
// other invalid UTF-8 becomes U+FFFD) plus the '\n'. Never throws.
std::string encode_frame(const nlohmann::json& message);
// Told while a big frame is encoded, at every `every` plain bytes of a long string: `out` holds
// the frame's bytes encoded so far (but those the progress took), `plain` the next `every`
// bytes, which go on the wire as they are. Returns how many of `plain`, from its start, it took
// (a sender writes them straight from the message); the rest are appended to `out`. A sender
// may also take bytes of `out` (it remembers which): the frame is the bytes it took, in order,
// then the rest of `out`.
class EncodeProgress {
 public:
  explicit EncodeProgress(size_t every) : every(every) {}
  virtual size_t encoded(std::string& out, std::string_view plain) = 0;
  const size_t every;

 protected:
  ~EncodeProgress() = default;
};
// The same into `out` (cleared first), re-using its capacity; `progress` (may be null) is told
// as long strings are encoded, and what it takes is not in `out`.
void encode_frame_into(const nlohmann::json& message, std::string& out, EncodeProgress* progress = nullptr);
// Node's isInternal: an object whose `cmd` is a string longer than 5 chars starting "NODE_".
bool is_internal(const nlohmann::json& message);

// A NODE_HANDLE frame recognised on its bytes, as Node's and our senders write one without a
// key: {"cmd":"NODE_HANDLE","type":"<type>","msg":<message>}, `type` a name of letters and dots.
// `message` is every byte between "msg": and the line's last '}', unchecked: only when it is one
// complete JSON text is the line that wrapper around it (then parse_frame(line) gives
// {cmd, type, msg: parse_frame(message)}). A caller must recognise it in full before trusting it;
// anything else (a key, other members, escapes, spaces) gives nullopt or an unrecognised message.
struct HandleFrameBytes {
  std::string_view type;
  std::string_view message;
};
std::optional<HandleFrameBytes> match_handle_frame(std::string_view line);

}  // namespace uvcluster::ipc
