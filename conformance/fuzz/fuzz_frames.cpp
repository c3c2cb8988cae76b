// libFuzzer target: FrameReader + parse_frame + encode_frame (+ the fast parser) must never crash, and any value we
// parse must survive an encode/parse round trip. The first input byte chooses read sizes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "json_fast.hpp"  // impl/src/ipc
#include "uvcluster/ipc/framing.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t step = (data[0] % 17) + 1;
  uvcluster::ipc::FrameReader reader(4096);
  const char* p = reinterpret_cast<const char*>(data + 1);
  size_t n = size - 1;
  for (size_t off = 0; off < n; off += step) {
    size_t len = off + step > n ? n - off : step;
    reader.feed(p + off, len, [](std::string_view line) {
      // Differential: the fast parser must agree with nlohmann wherever both accept, and may
      // only accept more when \u escapes (lone surrogates) are involved.
      std::string clean = uvcluster::ipc::sanitize_utf8(line);
      auto ref = nlohmann::json::parse(clean.begin(), clean.end(), nullptr, false);
      nlohmann::json fast;
      bool fast_ok = uvcluster::ipc::detail_json::fast_parse(clean, fast);
      if (fast_ok && !ref.is_discarded() && !(fast == ref)) __builtin_trap();
      if (fast_ok && ref.is_discarded() && clean.find("\\u") == std::string::npos) __builtin_trap();
      auto r = uvcluster::ipc::parse_frame(line);
      if (!r.ok()) return;
      (void)uvcluster::ipc::is_internal(r.value());
      std::string wire = uvcluster::ipc::encode_frame(r.value());
      if (wire != r.value().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n")
        __builtin_trap();  // fast_dump must match nlohmann byte for byte
      if (wire.empty() || wire.back() != '\n') __builtin_trap();
      if (wire.find('\n') != wire.size() - 1) __builtin_trap();  // one frame, one newline
      auto again = uvcluster::ipc::parse_frame(std::string_view(wire).substr(0, wire.size() - 1));
      if (!again.ok()) __builtin_trap();
    });
  }
  return 0;
}
