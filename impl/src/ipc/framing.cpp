#include "uvcluster/ipc/framing.hpp"

#include <cstring>

#include "json_fast.hpp"
#include "core/utf8.hpp"

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

Result<nlohmann::json> parse_frame(std::string_view line, size_t max_depth) {
  std::string fixed;
  if (!detail::utf8_valid(line)) {
    fixed = detail::utf8_sanitize(line);
    line = fixed;
  }
  nlohmann::json j;
  switch (detail_json::parse(line, j, max_depth)) {
    case detail_json::ParseStatus::ok: return j;
    case detail_json::ParseStatus::too_deep:
      return Error::make("ERR_IPC_BAD_FRAME", "IPC frame nests arrays/objects deeper than " +
                                                  std::to_string(max_depth) + " levels (" +
                                                  std::to_string(line.size()) + " bytes)");
    case detail_json::ParseStatus::syntax_error: break;
  }
  return Error::make("ERR_IPC_BAD_FRAME",
                     "IPC frame is not a JSON text (" + std::to_string(line.size()) + " bytes)");
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
