#include "uvcluster/ipc/framing.hpp"

#include <algorithm>
#include <cstring>
#include <new>

#include "json_fast.hpp"
#include "core/utf8.hpp"

namespace uvcluster::ipc {

namespace {
constexpr size_t kInitialCapacity = 64 * 1024;
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
  return false;
}

bool FrameReader::commit(size_t n, const std::function<void(std::string_view)>& on_line) {
  if (failed_) return false;
  size_t scan = end_;  // bytes before it were scanned by an earlier commit
  end_ += n;
  while (scan < end_) {
    const void* found = std::memchr(data_.get() + scan, '\n', end_ - scan);
    if (!found) break;
    size_t newline = static_cast<size_t>(static_cast<const char*>(found) - data_.get());
    size_t line_begin = begin_;
    if (newline - line_begin > max_) return fail();
    begin_ = scan = newline + 1;
    on_line(std::string_view(data_.get() + line_begin, newline - line_begin));
    if (failed_) return false;
  }
  if (end_ - begin_ > max_) return fail();
  if (begin_ == end_) {
    begin_ = end_ = 0;
    if (!keep_big_) release_big_buffer();
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
  std::memcpy(space(n).data(), data, n);
  return commit(n, on_line);
}

Result<nlohmann::json> parse_frame(std::string_view line, size_t max_depth) {
  // The parser decodes invalid UTF-8 inside strings as the line's decoding would (outside them
  // it is a syntax error either way): a valid line is read once, not checked and then parsed.
  nlohmann::json j;
  auto status = detail_json::parse(line, j, max_depth);
  if (status == detail_json::ParseStatus::ok) return j;
  // Errors give the size of the line as decoded (what Node's JSON.parse saw).
  size_t decoded = detail::utf8_valid(line) ? line.size() : detail::utf8_sanitize(line).size();
  if (status == detail_json::ParseStatus::too_deep)
    return Error::make("ERR_IPC_BAD_FRAME", "IPC frame nests arrays/objects deeper than " +
                                                std::to_string(max_depth) + " levels (" +
                                                std::to_string(decoded) + " bytes)");
  return Error::make("ERR_IPC_BAD_FRAME", "IPC frame is not a JSON text (" + std::to_string(decoded) + " bytes)");
}

void encode_frame_into(const nlohmann::json& message, std::string& out) {
  out.clear();
  try {
    detail_json::fast_dump(message, out);
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
  if (!line.starts_with(kHead) || !line.ends_with('}')) return std::nullopt;
  std::string_view rest = line.substr(kHead.size(), line.size() - kHead.size() - 1);
  auto name_char = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.'; };
  size_t type_end = 0;
  while (type_end < rest.size() && name_char(rest[type_end])) ++type_end;
  if (type_end == 0 || rest.substr(type_end, kMsg.size()) != kMsg) return std::nullopt;
  return HandleFrameBytes{rest.substr(0, type_end), rest.substr(type_end + kMsg.size())};
}

}  // namespace uvcluster::ipc
