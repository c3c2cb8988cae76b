#pragma once
// Per-process counters of the lab's C++ programs and how they reach the cell runner
// (scripts/lab/cell.py): a JSON file written atomically (tmp + rename) so the runner never
// reads half a file. Where: $UVC_LAB_STATS (a path) or $UVC_LAB_STATS_DIR/<pid>.json.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

namespace uvcluster::lab {

inline std::string stats_path(const char* suffix = ".json") {
  if (const char* p = std::getenv("UVC_LAB_STATS"); p && *p && std::string(suffix) == ".json")
    return p;
  if (const char* d = std::getenv("UVC_LAB_STATS_DIR"); d && *d)
    return std::string(d) + "/" + std::to_string(::getpid()) + suffix;
  return {};
}

inline void write_atomically(const std::string& path, const std::string& text) {
  if (path.empty()) return;
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "we");  // "e": O_CLOEXEC
  if (!f) return;
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  std::rename(tmp.c_str(), path.c_str());
}

// Writes the stats record, and prints it on stderr when no file was asked for.
inline void publish(const nlohmann::json& j) {
  std::string path = stats_path();
  if (path.empty()) {
    std::fprintf(stderr, "%s\n", j.dump().c_str());
  } else {
    write_atomically(path, j.dump() + "\n");
  }
}

// The "ready" marker: the runner waits for one per worker instead of guessing with sleeps.
inline void mark_ready(const nlohmann::json& j) {
  std::string path = stats_path(".ready");
  if (!path.empty()) write_atomically(path, j.dump() + "\n");
}

}  // namespace uvcluster::lab
