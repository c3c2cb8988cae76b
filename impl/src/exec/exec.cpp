// exec() / exec_file(): Node's execFile exithandler on top of spawn(): per-stream buffering with
// max_buffer enforced while reading, and one callback with Node's error shape.
//
// The timeout is execFile's own timer, not spawn's: like Node's it destroys stdout/stderr before
// killing the child, so a grandchild that inherited the pipes cannot hold the callback back, and
// it stays armed until `close` (not `exit`): a child that exited while a grandchild keeps its
// pipes open is answered when the timer fires, with what was read by then and killed = true.
#include "uvcluster/exec.hpp"

#include "core/utf8.hpp"
#include "process/untimed.hpp"
#include "uvcluster/detail/uv_handle.hpp"

namespace uvcluster {
namespace {

struct ExecRun : std::enable_shared_from_this<ExecRun> {
  ExecOptions options;
  ExecCallback callback;
  std::string cmd;
  std::string output[2];  // stdout, stderr
  std::optional<ExecError> error;
  bool killed = false;  // killed by us for max_buffer or timeout
  bool done = false;
  std::weak_ptr<ChildProcess> child;
  detail::UvHandle<uv_timer_t> timeout;

  int start_timeout(uv_loop_t* loop) {
    int rc = uv_timer_init(loop, timeout.get());
    if (rc < 0) return rc;
    timeout.mark_initialized();
    timeout->data = this;
    return uv_timer_start(
        timeout.get(), [](uv_timer_t* t) { static_cast<ExecRun*>(t->data)->kill_child(); },
        static_cast<uint64_t>(options.process.timeout_ms), 0);
  }

  void on_chunk(int index, std::string_view chunk) {
    if (done || error) return;
    std::string& buf = output[index];
    if (options.max_buffer == kUnlimited || buf.size() + chunk.size() <= options.max_buffer) {
      buf.append(chunk);
      return;
    }
    // Over the cap: keep exactly max_buffer bytes (utf8: never split a character), then stop.
    size_t room = options.max_buffer - buf.size();
    if (options.encoding == Encoding::utf8) {
      // Look a few bytes past the cap to see whether it falls inside a character.
      buf.append(chunk.substr(0, room + 3));
      buf.resize(detail::utf8_boundary(buf, options.max_buffer));
    } else {
      buf.append(chunk.substr(0, room));
    }
    Error e = Error::make("ERR_CHILD_PROCESS_STDIO_MAXBUFFER",
                          std::string(index == 0 ? "stdout" : "stderr") + " maxBuffer length exceeded");
    error = ExecError{std::move(e), std::nullopt, {}};
    kill_child();
  }

  void kill_child() {
    timeout.close();
    auto c = child.lock();
    if (!c) return;
    // Node destroys both streams, then kills: the child may die of SIGPIPE or of kill_signal
    // (killing a child that already exited does nothing; `close` then follows at once).
    killed = true;
    if (auto* r = c->stdout_pipe()) r->destroy();
    if (auto* r = c->stderr_pipe()) r->destroy();
    c->kill(options.process.kill_signal);
  }

  void finish(const std::optional<ExitStatus>& status, bool child_killed) {
    if (done) return;
    done = true;
    timeout.close();
    ExecResult result;
    for (int i = 0; i < 2; ++i) {
      std::string& out = i == 0 ? result.stdout_data : result.stderr_data;
      out = options.encoding == Encoding::utf8 ? detail::utf8_sanitize(output[i]) : std::move(output[i]);
    }
    bool success = !error && status && status->code == 0 && !status->signal;
    if (!success) {
      if (!error) {
        ExecError ex;
        ExecError::Exit exit;
        exit.code = status ? status->code : std::nullopt;
        exit.killed = child_killed || killed;
        exit.signal = status ? status->signal : std::nullopt;
        ex.exit = exit;
        ex.error = Error::make("", "Command failed: " + cmd + "\n" + result.stderr_data);
        error = std::move(ex);
      }
      error->cmd = cmd;
      result.error = std::move(error);
    }
    auto cb = std::move(callback);
    if (cb) cb(std::move(result));
  }
};

}  // namespace

Result<std::shared_ptr<ChildProcess>> exec_file(uv_loop_t* loop, std::string file,
                                                std::vector<std::string> args, ExecOptions options,
                                                ExecCallback callback) {
  auto run = std::make_shared<ExecRun>();
  run->cmd = file;
  for (const auto& a : args) run->cmd += " " + a;

  auto process = detail::untimed(options.process);  // the timer is ours (see the top)
  if (!process) return process.error();
  auto spawned = spawn(loop, std::move(file), std::move(args), {.process = std::move(*process)});
  if (!spawned) return spawned.error();

  run->options = std::move(options);
  run->callback = std::move(callback);
  auto child = spawned.value();
  run->child = child;
  if (run->options.process.timeout_ms > 0 && child->pid()) {
    if (int rc = run->start_timeout(loop); rc < 0) {
      child->kill(run->options.process.kill_signal);  // cannot honour the timeout: do not run unbounded
      run->error = ExecError{Error::from_uv(rc, "uv_timer_start"), std::nullopt, {}};
    }
  }
  for (int i = 0; i < 2; ++i) {
    if (auto* r = child->readable(i + 1)) r->on_data([run, i](std::string_view d) { run->on_chunk(i, d); });
  }
  // `run` lives as long as the child's listeners, i.e. until `close`.
  child->on_error([run](const Error& e) {
    if (run->done || run->error) return;
    // A spawn failure (no pid) ends the run at once, as Node's errorhandler does.
    if (auto c = run->child.lock(); c && !c->pid()) {
      run->error = ExecError{e, std::nullopt, {}};
      run->finish(std::nullopt, false);
    }
  });
  child->on_close([run, weak = std::weak_ptr<ChildProcess>(child)](const ExitStatus& status) {
    auto c = weak.lock();
    run->finish(status, c && c->killed());
  });
  return child;
}

Result<std::shared_ptr<ChildProcess>> exec(uv_loop_t* loop, std::string command, ExecOptions options,
                                           ExecCallback callback) {
  auto& shell = options.process.shell;
  if (!std::holds_alternative<std::string>(shell) || std::get<std::string>(shell).empty()) shell = true;
  return exec_file(loop, std::move(command), {}, std::move(options), std::move(callback));
}

}  // namespace uvcluster
