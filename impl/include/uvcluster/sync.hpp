#pragma once
// spawn_sync(), exec_sync(), exec_file_sync(): block until the child has exited, running it on a
// private libuv loop so stdin, stdout and stderr are serviced together (no pipe deadlock).
#include <cstddef>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "uvcluster/error.hpp"
#include "uvcluster/exec.hpp"
#include "uvcluster/process.hpp"

namespace uvcluster {

struct SpawnSyncOptions {
  ProcessOptions process{};  // timeout_ms > 0: kill with kill_signal, error ETIMEDOUT
  std::optional<std::string> input{};  // written to stdin, then stdin is closed
  std::vector<Stdio> stdio = {Stdio::pipe(), Stdio::pipe(), Stdio::pipe()};
  // Summed over all output pipes; whole read chunks are kept (Node's sync semantics).
  // Going over kills the child; error ENOBUFS. 0: no limit.
  size_t max_buffer = kDefaultMaxBuffer;
  Encoding encoding = Encoding::buffer;
};

struct SpawnSyncResult {
  int pid = 0;                                       // 0 if the process never started
  std::optional<std::vector<std::optional<std::string>>> output{};  // per stdio slot; nullopt if never started
  std::string stdout_data;
  std::string stderr_data;
  std::optional<int> status{};           // exit code; nullopt if signalled or never started
  std::optional<std::string> signal{};
  std::optional<Error> error{};          // ENOENT, ENOBUFS, ETIMEDOUT, ...
};

// Validation errors (as spawn()) are returned; everything else is in the result.
Result<SpawnSyncResult> spawn_sync(std::string file, std::vector<std::string> args = {},
                                   SpawnSyncOptions options = {});

// Node's execSync/execFileSync throw; here the error is returned with the whole result, as
// Node merges it into the thrown error. message: "Command failed: <cmd>[\n<stderr>]" for a bad
// exit, or the system error's message.
struct ExecSyncError {
  Error error;
  SpawnSyncResult result;
  std::string cmd;
};

// stdout on success. Unless options.stdio was changed, captured stderr is also written to this
// process's stderr, as Node does.
Result<std::string, ExecSyncError> exec_sync(std::string command, SpawnSyncOptions options = {});
Result<std::string, ExecSyncError> exec_file_sync(std::string file,
                                                  std::vector<std::string> args = {},
                                                  SpawnSyncOptions options = {});

}  // namespace uvcluster
