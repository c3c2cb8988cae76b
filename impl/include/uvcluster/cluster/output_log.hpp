#pragma once
// What the supervisor does with a worker's output line (SupervisorOptions::log):
//   prefix     "<instance>|<name> | " in front of each line, as `pm2 logs` shows them;
//   timestamp  then "<UTC ISO 8601 with ms>: " (PM2's --time);
//   files      a stream with a RotatingFile goes there instead of on_output.
// A line is written with one write(2) (looping only on a short write), so it is never torn,
// and a rotation happens between lines, never inside one.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

struct LineFormat {
  std::string name;        // the app's name in the prefix
  bool prefix = true;      // "<instance>|<name> | "
  bool timestamp = false;  // "2026-12-01T14:40:05.123Z: " after the prefix
};

// The formatted line (the input keeps its '\n', if any; the output ends with one).
std::string format_line(const LineFormat& f, int instance, std::string_view line,
                        std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

// An append-only log file rotated by size: when a line would take FILE past max_bytes, FILE
// becomes FILE.1 (FILE.1 becomes FILE.2 …, FILE.<keep> is deleted) and a new FILE is started.
// keep = 0 truncates FILE instead. max_bytes = 0 never rotates. A line longer than max_bytes
// gets a file of its own. Writes block the loop briefly: this is a regular file.
class RotatingFile {
 public:
  struct Options {
    uint64_t max_bytes = 0;
    int keep = 5;
  };
  static Result<std::unique_ptr<RotatingFile>> open(std::string path, Options options);
  RotatingFile(std::string path, Options options, Fd fd, uint64_t size);

  // The whole line, or the error (the caller prints the line elsewhere rather than lose it).
  Status write(std::string_view line);
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

 private:
  Status rotate();
  std::string path_;
  Options opt_;
  Fd fd_;
  uint64_t size_;
};

}  // namespace uvcluster::cluster
