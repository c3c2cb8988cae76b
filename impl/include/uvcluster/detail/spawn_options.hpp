#pragma once
// The SpawnOptions fields every higher-level option struct (exec, sync) passes through as-is.
#include "uvcluster/process.hpp"

namespace uvcluster::detail {

// Node's ERR_OUT_OF_RANGE for a negative `timeout` (spawn's and execFile's own timer).
inline Error timeout_out_of_range(int64_t timeout_ms) {
  return Error::make("ERR_OUT_OF_RANGE",
                     "The value of \"timeout\" is out of range. It must be an unsigned integer. "
                     "Received " + std::to_string(timeout_ms));
}

template <class Options>
SpawnOptions common_spawn_options(const Options& o) {
  SpawnOptions so;
  so.cwd = o.cwd;
  so.env = o.env;
  so.argv0 = o.argv0;
  so.shell = o.shell;
  so.uid = o.uid;
  so.gid = o.gid;
  so.kill_signal = o.kill_signal;
  return so;
}

}  // namespace uvcluster::detail
