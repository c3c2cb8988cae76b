#include "uvcluster/ipc/framing.hpp"

#include <cstring>

#include "json_fast.hpp"

namespace uvcluster::ipc {

bool FrameReader::feed(const char* data, size_t n, const std::function<void(std::string_view)>& on_line) {
  if (failed_) return false;
  const char* p = data;
  const char* end = data + n;
  while (p < end) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
    if (!nl) {
      size_t rest = static_cast<size_t>(end - p);
      if (buf_.size() + rest > max_) {
        failed_ = true;
        buf_.clear();
        return false;
      }
      buf_.append(p, rest);
      return true;
    }
    size_t len = static_cast<size_t>(nl - p);
    if (buf_.size() + len > max_) {
      failed_ = true;
      buf_.clear();
      return false;
    }
    if (buf_.empty()) {
      on_line(std::string_view(p, len));  // fast path: no copy
    } else {
      buf_.append(p, len);
      std::string line = std::move(buf_);
      buf_.clear();
      on_line(line);
    }
    if (failed_) return false;  // a callback may reset/fail the reader
    p = nl + 1;
  }
  return true;
}

namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 if invalid.
size_t utf8_seq(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t left = s.size() - i;
  auto cont = [&](size_t k) { return (b(k) & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return left >= 2 && cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (left < 3 || !cont(i + 1) || !cont(i + 2)) return 0;
    if (c == 0xE0 && b(i + 1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(i + 1) >= 0xA0) return 0;  // surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (left < 4 || !cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    if (c == 0xF0 && b(i + 1) < 0x90) return 0;
    if (c == 0xF4 && b(i + 1) >= 0x90) return 0;
    return 4;
  }
  return 0;
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= s.size()) break;
    size_t k = utf8_seq(s, i);
    if (!k) return false;
    i += k;
  }
  return true;
}

}  // namespace

std::string sanitize_utf8(std::string_view s) {
  if (valid_utf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (i < s.size()) {
    size_t k = utf8_seq(s, i);
    if (k) {
      out.append(s.data() + i, k);
      i += k;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

Result<nlohmann::json> parse_frame(std::string_view line) {
  nlohmann::json j;
  std::string fixed;
  if (!valid_utf8(line)) {
    fixed = sanitize_utf8(line);
    line = fixed;
  }
  if (detail_json::fast_parse(line, j)) return j;
  // Deep nesting, huge exponents, or a syntax error: nlohmann has the last word.
  j = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return Error::make("ERR_IPC_BAD_FRAME", "IPC frame is not a JSON text (" +
                                                std::to_string(line.size()) + " bytes)");
  }
  return j;
}

std::string encode_frame(const nlohmann::json& message) {
  std::string s;
  try {
    detail_json::fast_dump(message, s);
  } catch (...) {
    s = "null";  // unreachable with error_handler replace; never throw across the loop
  }
  s.push_back('\n');
  return s;
}

bool is_internal(const nlohmann::json& message) {
  if (!message.is_object()) return false;
  auto it = message.find("cmd");
  if (it == message.end() || !it->is_string()) return false;
  const auto& cmd = it->get_ref<const std::string&>();
  return cmd.size() > 5 && cmd.compare(0, 5, "NODE_") == 0;
}

}  // namespace uvcluster::ipc
