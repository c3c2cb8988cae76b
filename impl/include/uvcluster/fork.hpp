#pragma once
// fork(): spawn a module with an IPC channel (Node's child_process.fork).
#include <uv.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "uvcluster/error.hpp"
#include "uvcluster/process.hpp"

namespace uvcluster {

struct ForkOptions {
  ProcessOptions process{};  // `shell` is ignored, as by Node's fork
  // The program that runs `module`: default `node` (resolved on PATH at fork time) for .js/.mjs/.cjs modules;
  // otherwise the module is executed directly (a C++ child that calls ipc::parent_channel()).
  std::optional<std::string> exec_path{};
  std::vector<std::string> exec_argv{};  // arguments for exec_path before the module
  bool silent = false;                   // stdio pipes instead of inherit
  std::optional<std::vector<Stdio>> stdio{};  // must contain exactly one Stdio::ipc()
  ipc::Serialization serialization = ipc::Serialization::json;  // Node's `serialization`
};

// The child's channel is `child->channel()`. Errors as spawn(); a stdio without an ipc slot is
// ERR_CHILD_PROCESS_IPC_REQUIRED.
Result<std::shared_ptr<ChildProcess>> fork(uv_loop_t* loop, std::string module,
                                           std::vector<std::string> args = {},
                                           ForkOptions options = {});

}  // namespace uvcluster
