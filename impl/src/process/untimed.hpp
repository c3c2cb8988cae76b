#pragma once
// For exec_file() and spawn_sync(), which run their own timeout timer (Node's execFile and
// spawnSync timers end the run differently from spawn's): spawn() must not arm one too.
#include "uvcluster/process.hpp"

namespace uvcluster::detail {

// `process` with spawn's timer off, once its timeout_ms is known to be valid: a negative one is
// Node's ERR_OUT_OF_RANGE, as spawn() itself would answer.
Result<ProcessOptions> untimed(ProcessOptions process);

}  // namespace uvcluster::detail
