#include "uvcluster/fork.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>

namespace uvcluster {
namespace {

bool is_js_module(const std::string& module) {
  for (const char* ext : {".js", ".mjs", ".cjs"}) {
    std::string_view e(ext);
    if (module.size() > e.size() && module.compare(module.size() - e.size(), e.size(), e) == 0)
      return true;
  }
  return false;
}

// Node forks process.execPath (absolute). We resolve `node` on this process's PATH now, so a
// child env without PATH still finds it.
std::string default_node() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    std::string candidate = (dir.empty() ? "." : dir) + "/node";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "node";
}

}  // namespace

Result<std::shared_ptr<ChildProcess>> fork(uv_loop_t* loop, std::string module,
                                           std::vector<std::string> args, ForkOptions options) {
  SpawnOptions so;
  so.process = std::move(options.process);
  so.process.shell = false;  // Node's fork sets options.shell = false
  so.serialization = options.serialization;
  if (options.stdio) {
    if (std::none_of(options.stdio->begin(), options.stdio->end(),
                     [](const Stdio& s) { return s.kind == Stdio::Kind::ipc; }))
      return Error::make("ERR_CHILD_PROCESS_IPC_REQUIRED",
                         "Forked processes must have an IPC channel, missing value 'ipc' in "
                         "options.stdio");
    so.stdio = std::move(*options.stdio);
  } else {
    Stdio s = options.silent ? Stdio::pipe() : Stdio::inherit();
    so.stdio = {s, s, s, Stdio::ipc()};
  }

  std::string file;
  std::vector<std::string> argv;
  if (options.exec_path || is_js_module(module)) {
    file = options.exec_path ? *options.exec_path : default_node();
    argv = std::move(options.exec_argv);
    argv.push_back(std::move(module));
  } else {
    file = std::move(module);
  }
  argv.insert(argv.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  return spawn(loop, std::move(file), std::move(argv), std::move(so));
}

}  // namespace uvcluster
