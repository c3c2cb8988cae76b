#pragma once
// What one process costs right now, from /proc/PID/stat (Linux): CPU time and resident memory.
// Read on demand (status, metrics, the memory limit's sampling), never cached.
#include <cstdint>
#include <optional>
#include <string_view>

#include "uvcluster/error.hpp"

namespace uvcluster::cluster {

struct ProcessUsage {
  double cpu_seconds = 0;  // user + system, since the process started
  uint64_t rss_bytes = 0;  // resident set size
};

// ENOENT once the process is gone (or reaped).
Result<ProcessUsage> process_usage(int pid);

// "512", "300K", "150M", "2G" (powers of 1024; a trailing "B" or "iB" is allowed): bytes, or
// nullopt for anything else, zero included.
std::optional<uint64_t> parse_size(std::string_view text);

}  // namespace uvcluster::cluster
