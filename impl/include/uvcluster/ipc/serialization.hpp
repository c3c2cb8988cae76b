#pragma once
// Node's IPC serialization modes (child_process `serialization` option; docs/protocol.md §1.2, §1.3).
#include <optional>
#include <string_view>

namespace uvcluster::ipc {

enum class Serialization {
  json,      // one JSON text + '\n' per message
  advanced,  // 4-byte big-endian length + V8 ValueSerializer output (uvcluster/ipc/v8_serializer.hpp)
};

// "json" / "advanced": the value of NODE_CHANNEL_SERIALIZATION_MODE and of the CLI's flag.
const char* serialization_name(Serialization s);
std::optional<Serialization> parse_serialization(std::string_view name);

}  // namespace uvcluster::ipc
