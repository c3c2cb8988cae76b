#include "uvcluster/ipc/framing.hpp"

#include <algorithm>
#include <cstring>
#include <new>

#include "json_fast.hpp"
#include "core/utf8.hpp"

namespace uvcluster::ipc {

namespace {
constexpr size_t kInitialCapacity = 64 * 1024;
// A big line's arrival-time scan restarts after every byte that is not plain; where they are
// dense (non-ASCII text, many escapes) it looks for the newline with memchr for the rest of the
// read instead, so no text costs more than a few vector steps per 256 bytes over memchr.
constexpr size_t kRestartsPerRead = 16;
constexpr size_t kBytesPerRestart = 256;
constexpr size_t kNoNewline = static_cast<size_t>(-1);
}  // namespace

std::span<char> FrameReader::space(size_t min) {
  if (cap_ - end_ < min) {
    size_t held = end_ - begin_;
    if (begin_ > 0) {
      std::memmove(data_.get(), data_.get() + begin_, held);  // a partial line moves to the front
      begin_ = 0;
      end_ = held;
    }
    if (cap_ - end_ < min) {
      // Doubling, but not past the longest line (max_ + 1 bytes show a line is oversized): the
      // line that crosses a 64 MiB cap does not reserve 128 MiB first.
      size_t cap = std::max(held + min, std::min(std::max(cap_ * 2, kInitialCapacity), max_ + 1));
      char* grown = static_cast<char*>(std::realloc(data_.get(), cap));
      if (!grown) throw std::bad_alloc();  // as std::string would
      (void)data_.release();
      data_.reset(grown);
      cap_ = cap;
    }
  }
  return {data_.get() + end_, cap_ - end_};
}

bool FrameReader::fail() {
  failed_ = true;
  begin_ = end_ = 0;
  data_.reset();  // up to max_frame_bytes of a frame that will never be read: give it back now
  cap_ = 0;
  end_big_line();
  return false;
}

void FrameReader::end_big_line() {
  scan_ = LineScan{};
  std::string().swap(run_copy_);  // empty once the parse took it; else a copy nobody wanted
}

// Scans the incomplete line's bytes from scan_.scanned on (offsets from its first byte) with
// the string scan, and copies the first plain run of copy_from bytes as it arrives. Returns the
// offset of the line's '\n', or kNoNewline while it is incomplete.
size_t FrameReader::track_big_line() {
  const char* line = data_.get() + begin_;
  size_t end = end_ - begin_;
  size_t pos = scan_.scanned;
  size_t restarts = kRestartsPerRead + (end - pos) / kBytesPerRestart;
  while (pos < end) {
    size_t stop = static_cast<size_t>(detail_json::skip_plain(line + pos, line + end) - line);
    scan_.scanned = stop;
    if (scan_.copying) {
      if (run_copy_.capacity() < stop - scan_.run_start)  // grows as the line buffer did, never past it
        run_copy_.reserve(std::min(std::max(stop - scan_.run_start, 2 * run_copy_.capacity()), cap_));
      run_copy_.append(line + pos, stop - pos);
    } else if (!scan_.have_run && stop - scan_.run_start >= big_.copy_from) {
      // Room for the last copied run: a stream of equal big messages copies each run once,
      // without regrowing; never more than the line buffer.
      run_copy_.reserve(std::min(std::max(stop - scan_.run_start, last_run_), cap_));
      run_copy_.assign(line + scan_.run_start, stop - scan_.run_start);
      scan_.copying = true;
    }
    if (stop == end) return kNoNewline;
    if (scan_.copying) {  // the copied run ends at this byte
      scan_.copying = false;
      scan_.have_run = true;
      scan_.run = PlainRun{scan_.run_start, stop, &run_copy_};
      last_run_ = stop - scan_.run_start;
    }
    if (line[stop] == '\n') return stop;
    pos = scan_.scanned = scan_.run_start = stop + 1;
    if (restarts == 0) {
      const void* found = std::memchr(line + pos, '\n', end - pos);
      if (found) return static_cast<size_t>(static_cast<const char*>(found) - line);
      scan_.scanned = scan_.run_start = end;  // the next read's bytes start a new run
      return kNoNewline;
    }
    --restarts;
  }
  return kNoNewline;
}

bool FrameReader::deliver(size_t line_begin, size_t newline, const std::function<void(std::string_view)>& on_line) {
  if (newline - line_begin > max_) return fail();
  begin_ = newline + 1;
  delivering_ = scan_.active;
  on_line(std::string_view(data_.get() + line_begin, newline - line_begin));
  delivering_ = false;
  if (scan_.active) end_big_line();
  return !failed_;
}

bool FrameReader::commit(size_t n, const std::function<void(std::string_view)>& on_line) {
  if (failed_) return false;
  size_t scan = end_;  // bytes before it were scanned by an earlier commit
  end_ += n;
  if (scan_.active) {
    size_t newline = track_big_line();
    if (newline != kNoNewline) {
      if (!deliver(begin_, begin_ + newline, on_line)) return false;
      scan = begin_;
    } else {
      scan = end_;
    }
  }
  while (scan < end_) {
    const void* found = std::memchr(data_.get() + scan, '\n', end_ - scan);
    if (!found) break;
    size_t newline = static_cast<size_t>(static_cast<const char*>(found) - data_.get());
    if (!deliver(begin_, newline, on_line)) return false;
    scan = begin_;
  }
  if (end_ - begin_ > max_) return fail();
  if (begin_ == end_) {
    begin_ = end_ = 0;
    if (!keep_big_) release_big_buffer();
  } else if (!scan_.active && end_ - begin_ >= big_.track_from) {
    // An incomplete big line: its later reads are scanned as they arrive. This first scan
    // finds no '\n' (memchr just looked) but its runs and copy.
    scan_.active = true;
    track_big_line();
  }
  return true;
}

bool FrameReader::release_big_buffer() {
  if (cap_ <= kRetainedCapacity || buffering()) return false;
  begin_ = end_ = 0;
  data_.reset();
  cap_ = 0;
  return true;
}

bool FrameReader::feed(const char* data, size_t n, const std::function<void(std::string_view)>& on_line) {
  if (failed_) return false;
  if (n == 0) return true;
  if (!buffering()) {
    // Between lines, the complete lines are delivered from where they are; only a partial line
    // at the end is copied in (a read of an ACK and an answer copies nothing).
    const char* end = data + n;
    for (const void* found; data < end && (found = std::memchr(data, '\n', static_cast<size_t>(end - data)));) {
      const char* newline = static_cast<const char*>(found);
      if (static_cast<size_t>(newline - data) > max_) return fail();
      on_line(std::string_view(data, static_cast<size_t>(newline - data)));
      data = newline + 1;
    }
    n = static_cast<size_t>(end - data);
    if (n == 0) return true;
  }
  std::memcpy(space(n).data(), data, n);
  return commit(n, on_line);
}

Result<nlohmann::json> parse_frame(std::string_view line, size_t max_depth, const PlainRun* run) {
  if (run && (run->begin > run->end || run->end > line.size())) run = nullptr;  // not this line's
  // The parser decodes invalid UTF-8 inside strings as the line's decoding would (outside them
  // it is a syntax error either way): a valid line is read once, not checked and then parsed.
  nlohmann::json j;
  auto status = detail_json::parse(line, j, max_depth, run);
  if (status == detail_json::ParseStatus::ok) return j;
  // Errors give the size of the line as decoded (what Node's JSON.parse saw).
  size_t decoded = detail::utf8_valid(line) ? line.size() : detail::utf8_sanitize(line).size();
  if (status == detail_json::ParseStatus::too_deep)
    return Error::make("ERR_IPC_BAD_FRAME", "IPC frame nests arrays/objects deeper than " +
                                                std::to_string(max_depth) + " levels (" +
                                                std::to_string(decoded) + " bytes)");
  return Error::make("ERR_IPC_BAD_FRAME", "IPC frame is not a JSON text (" + std::to_string(decoded) + " bytes)");
}

void encode_frame_into(const nlohmann::json& message, std::string& out, EncodeProgress* progress) {
  out.clear();
  try {
    detail_json::fast_dump(message, out, progress);
  } catch (...) {
    out = "null";  // unreachable with error_handler replace; never throw across the loop
  }
  out.push_back('\n');
}

std::string encode_frame(const nlohmann::json& message) {
  std::string s;
  encode_frame_into(message, s);
  return s;
}

bool is_internal(const nlohmann::json& message) {
  if (!message.is_object()) return false;
  auto it = message.find("cmd");
  if (it == message.end() || !it->is_string()) return false;
  const auto& cmd = it->get_ref<const std::string&>();
  return cmd.size() > 5 && cmd.compare(0, 5, "NODE_") == 0;
}

std::optional<HandleFrameBytes> match_handle_frame(std::string_view line) {
  constexpr std::string_view kHead = "{\"cmd\":\"NODE_HANDLE\",\"type\":\"";
  constexpr std::string_view kMsg = "\",\"msg\":";
  // Every hand-off's type: recognised by one compare, not a scan of the name.
  constexpr std::string_view kNativeHead = "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":";
  if (!line.ends_with('}')) return std::nullopt;
  if (line.starts_with(kNativeHead))
    return HandleFrameBytes{kNativeHead.substr(kHead.size(), 10), line.substr(kNativeHead.size(), line.size() - kNativeHead.size() - 1)};
  if (!line.starts_with(kHead)) return std::nullopt;
  std::string_view rest = line.substr(kHead.size(), line.size() - kHead.size() - 1);
  auto name_char = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.'; };
  size_t type_end = 0;
  while (type_end < rest.size() && name_char(rest[type_end])) ++type_end;
  if (type_end == 0 || rest.substr(type_end, kMsg.size()) != kMsg) return std::nullopt;
  return HandleFrameBytes{rest.substr(0, type_end), rest.substr(type_end + kMsg.size())};
}

}  // namespace uvcluster::ipc
