#pragma once
// The SpawnOptions fields every higher-level option struct (exec, sync) passes through as-is.
#include "uvcluster/process.hpp"

namespace uvcluster::detail {

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
