#pragma once
// exec() and exec_file(): run a command, buffer its output, call back once with Node's result.
#include <uv.h>

#include <cstddef>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "uvcluster/error.hpp"
#include "uvcluster/process.hpp"

namespace uvcluster {

enum class Encoding { utf8, buffer };

constexpr size_t kDefaultMaxBuffer = 1024 * 1024;
constexpr size_t kUnlimited = std::numeric_limits<size_t>::max();  // Node's maxBuffer: Infinity

struct ExecOptions {
  // exec_file: shell false by default. exec(): always a shell (true = /bin/sh, or the given path).
  ProcessOptions process{};
  Encoding encoding = Encoding::utf8;
  // Per stream. Output past it is cut at exactly max_buffer bytes (utf8: at the last whole
  // character at or below the cap, so a multi-byte character is never split), the child is
  // killed with process.kill_signal, and the error is ERR_CHILD_PROCESS_STDIO_MAXBUFFER. 0: any
  // output is too much. kUnlimited: no limit.
  size_t max_buffer = kDefaultMaxBuffer;
};

// Node's error passed to exec's callback.
struct ExecError {
  Error error;  // code/message (+ errno/syscall/path/spawnargs for spawn errors)
  // Set when the error comes from how the child ended (non-zero exit, signal, timeout):
  // Node's `code` is then the exit code (null when signalled), with `killed` and `signal`.
  struct Exit {
    std::optional<int> code;
    bool killed = false;
    std::optional<std::string> signal;
  };
  std::optional<Exit> exit{};
  std::string cmd;
};

struct ExecResult {
  std::optional<ExecError> error{};
  // utf8: valid UTF-8 (invalid input bytes become U+FFFD, as Node's decoder does).
  // buffer: the raw bytes.
  std::string stdout_data;
  std::string stderr_data;
};

using ExecCallback = std::function<void(ExecResult)>;

// `command` runs through the shell (/bin/sh -c, or options.shell when it is a path).
Result<std::shared_ptr<ChildProcess>> exec(uv_loop_t* loop, std::string command,
                                           ExecOptions options, ExecCallback callback);
// Runs `file` directly (or through the shell if options.shell says so).
Result<std::shared_ptr<ChildProcess>> exec_file(uv_loop_t* loop, std::string file,
                                                std::vector<std::string> args,
                                                ExecOptions options, ExecCallback callback);

}  // namespace uvcluster
