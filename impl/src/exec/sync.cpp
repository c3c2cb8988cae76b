// spawn_sync() and the exec*_sync forms: spawn() on a private loop, serviced until `close`, so
// writing stdin and draining stdout/stderr happen together and cannot deadlock.
#include "uvcluster/sync.hpp"

#include <unistd.h>

#include "core/utf8.hpp"
#include "process/untimed.hpp"

namespace uvcluster {
namespace {

// A loop owned by one call; closing walks any handle still open (there should be none).
class PrivateLoop {
 public:
  PrivateLoop() { uv_loop_init(&loop_); }
  ~PrivateLoop() {
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_walk(&loop_, [](uv_handle_t* h, void*) { if (!uv_is_closing(h)) uv_close(h, nullptr); }, nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
  uv_loop_t* get() { return &loop_; }

 private:
  uv_loop_t loop_{};
};

Error sync_error(int status, const std::string& file, const std::vector<std::string>& args) {
  Error e = Error::from_uv(status, "spawnSync " + file, file);
  e.spawnargs = args;
  return e;
}

}  // namespace

Result<SpawnSyncResult> spawn_sync(std::string file, std::vector<std::string> args,
                                   SpawnSyncOptions options) {
  auto process = detail::untimed(options.process);  // the timer is ours: it ends in ETIMEDOUT
  if (!process) return process.error();
  const SpawnOptions so{.process = std::move(*process), .stdio = options.stdio};

  SpawnSyncResult result;
  PrivateLoop loop;
  bool closed = false;
  {
    auto spawned = spawn(loop.get(), file, args, so);
    if (!spawned) return spawned.error();
    auto child = spawned.value();
    // The error's file/args are those actually run (the shell, with -c "<command>").
    const std::string run_file = child->spawnfile();
    const std::vector<std::string> run_args(child->spawnargs().begin() + 1, child->spawnargs().end());

    std::vector<std::optional<std::string>> output(options.stdio.size());
    size_t total = 0;
    // Node's SyncProcessRunner::Kill: close every stdio pipe, then kill, so a grandchild that
    // inherited the pipes cannot keep us waiting (the kill does nothing if the child has exited).
    auto fail_and_kill = [&](int status) {
      if (result.error) return;
      result.error = sync_error(status, run_file, run_args);
      for (size_t i = 1; i < options.stdio.size(); ++i)
        if (Readable* r = child->readable(i)) r->destroy();
      if (Writable* in = child->stdin_pipe()) in->destroy();
      child->kill(options.process.kill_signal);
    };
    for (size_t i = 1; i < options.stdio.size(); ++i) {
      Readable* r = child->readable(i);
      if (!r) continue;
      output[i] = std::string();
      r->on_data([&, i](std::string_view d) {
        output[i]->append(d);  // whole chunks, as Node's sync runner keeps them
        total += d.size();
        if (options.max_buffer > 0 && total > options.max_buffer) fail_and_kill(UV_ENOBUFS);
      });
    }
    if (Writable* in = child->stdin_pipe()) {
      if (options.input && !options.input->empty()) in->write(*options.input);
      in->end();
    }
    detail::UvHandle<uv_timer_t> timer;
    if (options.process.timeout_ms > 0) {
      timer.must_init(uv_timer_init(loop.get(), timer.get()), "uv_timer_init");
      timer->data = &fail_and_kill;
      uv_timer_start(timer.get(), [](uv_timer_t* t) {
        (*static_cast<decltype(fail_and_kill)*>(t->data))(UV_ETIMEDOUT);
      }, static_cast<uint64_t>(options.process.timeout_ms), 0);
    }
    bool started = true;
    child->on_error([&](const Error& e) {
      if (child->pid()) return;  // kill errors after a start are not the run's error
      started = false;
      result.error = sync_error(e.errnum, run_file, run_args);
    });
    // As in Node, the timer runs until `close`, not `exit`: a child that exited while a
    // grandchild holds its pipes still times out (ETIMEDOUT with the child's status).
    child->on_close([&](const ExitStatus& st) {
      closed = true;
      timer.close();
      if (!started) return;
      result.pid = child->pid().value_or(0);
      result.status = st.code;
      result.signal = st.signal;
    });
    while (!closed && uv_run(loop.get(), UV_RUN_ONCE)) {
    }
    if (started) {
      if (options.encoding == Encoding::utf8)
        for (auto& o : output)
          if (o) *o = detail::utf8_sanitize(*o);
      if (output.size() > 1 && output[1]) result.stdout_data = *output[1];
      if (output.size() > 2 && output[2]) result.stderr_data = *output[2];
      result.output = std::move(output);
    }
  }
  return result;
}

namespace {

Result<std::string, ExecSyncError> check_exec_sync(Result<SpawnSyncResult> ran, bool stdio_default,
                                                   std::string cmd) {
  if (!ran) return ExecSyncError{ran.error(), {}, cmd};
  SpawnSyncResult& r = ran.value();
  // Node echoes the captured stderr to ours unless the caller chose stdio.
  if (stdio_default && !r.stderr_data.empty()) {
    size_t off = 0;
    while (off < r.stderr_data.size()) {
      ssize_t n = ::write(2, r.stderr_data.data() + off, r.stderr_data.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  }
  if (r.error) {
    Error e = *r.error;
    return ExecSyncError{std::move(e), std::move(r), std::move(cmd)};
  }
  if (r.status != 0) {
    std::string msg = "Command failed: " + cmd;
    if (!r.stderr_data.empty()) msg += "\n" + r.stderr_data;
    return ExecSyncError{Error::make("", std::move(msg)), std::move(r), std::move(cmd)};
  }
  return std::move(r.stdout_data);
}

bool default_stdio(const SpawnSyncOptions& o) {
  return o.stdio.size() == 3 && o.stdio[0].kind == Stdio::Kind::pipe &&
         o.stdio[1].kind == Stdio::Kind::pipe && o.stdio[2].kind == Stdio::Kind::pipe;
}

}  // namespace

Result<std::string, ExecSyncError> exec_sync(std::string command, SpawnSyncOptions options) {
  auto& shell = options.process.shell;
  if (!std::holds_alternative<std::string>(shell) || std::get<std::string>(shell).empty()) shell = true;
  bool stdio_default = default_stdio(options);
  std::string cmd = command;
  return check_exec_sync(spawn_sync(std::move(command), {}, std::move(options)), stdio_default, cmd);
}

Result<std::string, ExecSyncError> exec_file_sync(std::string file, std::vector<std::string> args,
                                                  SpawnSyncOptions options) {
  bool stdio_default = default_stdio(options);
  std::string cmd = options.process.argv0.value_or(file);
  for (const auto& a : args) cmd += " " + a;
  return check_exec_sync(spawn_sync(std::move(file), std::move(args), std::move(options)),
                         stdio_default, cmd);
}

}  // namespace uvcluster
