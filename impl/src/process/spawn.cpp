// spawn(): argument validation, the uv_spawn call, and the ChildProcess life cycle
// (spawn -> exit -> close, or error -> close).
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <mutex>

#include "core/stream_owner.hpp"
#include "ipc/channel_owner.hpp"
#include "pidfd_child.hpp"
#include "process/untimed.hpp"
#include "uvcluster/process.hpp"
#include "uvcluster/signals.hpp"

extern char** environ;

namespace uvcluster {
namespace {

Error invalid_arg(const std::string& name, const std::string& value) {
  std::string shown = value;
  std::replace(shown.begin(), shown.end(), '\0', '0');
  return Error::make("ERR_INVALID_ARG_VALUE", "The argument '" + name +
                                                  "' must be a string without null bytes. Received '" +
                                                  shown + "'");
}

bool has_nul(const std::string& s) { return s.find('\0') != std::string::npos; }

// Node's ERR_OUT_OF_RANGE for a negative `timeout`.
Error timeout_out_of_range(int64_t timeout_ms) {
  return Error::make("ERR_OUT_OF_RANGE",
                     "The value of \"timeout\" is out of range. It must be an unsigned integer. "
                     "Received " + std::to_string(timeout_ms));
}

// A child writing to a closed pipe must not kill the parent: ignore SIGPIPE unless the
// application installed its own handler (Node does the same at startup).
void ignore_sigpipe_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      signal(SIGPIPE, SIG_IGN);
    }
  });
}

std::optional<Error> validate(const std::string& file, const std::vector<std::string>& args,
                              const SpawnOptions& options) {
  const ProcessOptions& o = options.process;
  if (file.empty())
    return Error::make("ERR_INVALID_ARG_VALUE", "The argument 'file' cannot be empty. Received ''");
  if (has_nul(file)) return invalid_arg("file", file);
  for (size_t i = 0; i < args.size(); ++i)
    if (has_nul(args[i])) return invalid_arg("args[" + std::to_string(i) + "]", args[i]);
  if (o.cwd && has_nul(*o.cwd)) return invalid_arg("po.cwd", *o.cwd);
  if (o.argv0 && has_nul(*o.argv0)) return invalid_arg("options.argv0", *o.argv0);
  if (auto* sh = std::get_if<std::string>(&o.shell); sh && has_nul(*sh))
    return invalid_arg("options.shell", *sh);
  if (o.env) {
    for (const auto& [k, v] : *o.env) {
      if (has_nul(k) || has_nul(v)) return invalid_arg("po.env['" + k + "']", v);
    }
  }
  if (o.timeout_ms < 0) return timeout_out_of_range(o.timeout_ms);
  if (!signal_number(o.kill_signal))
    return Error::make("ERR_UNKNOWN_SIGNAL", "Unknown signal: " + o.kill_signal);
  if (std::count_if(options.stdio.begin(), options.stdio.end(),
                    [](const Stdio& s) { return s.kind == Stdio::Kind::ipc; }) > 1)
    return Error::make("ERR_IPC_ONE_PIPE", "Child process can have only one IPC pipe");
  for (const auto& s : options.stdio)
    if (s.kind == Stdio::Kind::fd && s.fd < 0)
      return Error::make("ERR_INVALID_ARG_VALUE", "stdio fd must be a non-negative integer");
  return std::nullopt;
}

// Node's normalizeSpawnArguments for the shell option: one command line through `sh -c`.
void apply_shell(std::string& file, std::vector<std::string>& args, const ProcessOptions& o) {
  const std::string* shell_path = std::get_if<std::string>(&o.shell);
  bool use_shell = shell_path ? !shell_path->empty() : std::get<bool>(o.shell);
  if (!use_shell) return;
  std::string command = file;
  for (const auto& a : args) command += " " + a;
  file = shell_path ? *shell_path : "/bin/sh";
  args = {"-c", command};
}

std::vector<std::string> env_entries(const std::optional<Env>& env) {
  std::vector<std::string> out;
  if (env) {
    for (const auto& [k, v] : *env) out.push_back(k + "=" + v);
  } else {
    for (char** e = environ; *e; ++e) out.emplace_back(*e);
  }
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

Result<ProcessOptions> detail::untimed(ProcessOptions process) {
  if (process.timeout_ms < 0) return timeout_out_of_range(process.timeout_ms);
  process.timeout_ms = 0;
  return process;
}

ChildProcess::ChildProcess(Key, uv_loop_t* loop) : loop_(loop), ticker_(loop) {}

ChildProcess::~ChildProcess() { ticker_.close(); }

Readable* ChildProcess::readable(size_t fd) {
  return fd < readables_.size() ? readables_[fd].get() : nullptr;
}

Result<std::shared_ptr<ChildProcess>> spawn(uv_loop_t* loop, std::string file,
                                            std::vector<std::string> args, SpawnOptions options) {
  if (auto err = validate(file, args, options)) return *err;
  ignore_sigpipe_once();
  const ProcessOptions& po = options.process;
  apply_shell(file, args, po);

  auto child = std::make_shared<ChildProcess>(ChildProcess::Key{}, loop);
  child->file_ = file;
  child->argv_ = {po.argv0.value_or(file)};
  child->argv_.insert(child->argv_.end(), args.begin(), args.end());
  child->kill_signal_ = po.kill_signal;

  std::vector<std::string> env = env_entries(po.env);
  std::vector<uv_stdio_container_t> stdio(options.stdio.size());
  child->readables_.resize(options.stdio.size());
  for (size_t i = 0; i < options.stdio.size(); ++i) {
    const Stdio& s = options.stdio[i];
    uv_stdio_container_t& c = stdio[i];
    switch (s.kind) {
      case Stdio::Kind::pipe:
        if (i == 0) {
          auto in = detail::StreamOwner::make<Writable>(loop);
          if (!in) return in.error();
          child->stdin_ = std::move(*in);
          c.flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_READABLE_PIPE);
          c.data.stream = detail::StreamOwner::stream(*child->stdin_);
        } else {
          auto out = detail::StreamOwner::make<Readable>(loop);
          if (!out) return out.error();
          child->readables_[i] = std::move(*out);
          c.flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
          c.data.stream = detail::StreamOwner::stream(*child->readables_[i]);
        }
        break;
      case Stdio::Kind::inherit:
        c.flags = UV_INHERIT_FD;
        c.data.fd = static_cast<int>(i);
        break;
      case Stdio::Kind::ignore:
        c.flags = UV_IGNORE;
        break;
      case Stdio::Kind::fd:
        c.flags = UV_INHERIT_FD;
        c.data.fd = s.fd;
        break;
      case Stdio::Kind::ipc: {
        auto channel = ipc::ChannelOwner::make(loop, ipc::ChannelOptions{.serialization = options.serialization});
        if (!channel) return channel.error();
        child->channel_ = std::move(*channel);
        c.flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE);
        c.data.stream = reinterpret_cast<uv_stream_t*>(ipc::ChannelOwner::pipe(*child->channel_));
        // Node appends these after the user's env; the child finds its end of the channel here.
        env.push_back("NODE_CHANNEL_FD=" + std::to_string(i));
        env.push_back(std::string("NODE_CHANNEL_SERIALIZATION_MODE=") +
                      ipc::serialization_name(options.serialization));
        break;
      }
    }
  }

  std::vector<std::string> argv = child->argv_;
  auto argv_c = c_strings(argv);
  auto env_c = c_strings(env);

  // posix_spawn + pidfd: a spawn whose cost does not grow with the parent's memory (see
  // pidfd_child.hpp). Not for uid/gid (posix_spawn cannot set them), nor where the kernel lacks
  // pidfds, nor for a file not found on PATH or found through a relative PATH entry while `cwd`
  // changes what it means; and if posix_spawn fails, uv_spawn runs instead, so every error
  // (ENOENT, EACCES, a script without #! that execvp runs with /bin/sh, ...) is uv_spawn's own.
  // `ran`: the child started (then its result is final, never a second start through uv_spawn).
  bool ran = false;
  auto spawn_without_fork = [&]() -> int {
    if (po.uid || po.gid || !detail::pidfd_spawn_available()) return UV_ENOTSUP;
    auto path = detail::resolve_executable(file, po.env ? env_c.data() : nullptr);
    if (!path || (po.cwd && path->front() != '/')) return UV_ENOENT;
    detail::PidfdSpawnRequest request;
    request.file = path->c_str();
    request.argv = argv_c.data();
    request.envp = env_c.data();
    request.cwd = po.cwd ? po.cwd->c_str() : nullptr;
    request.detached = po.detached;
    request.fds.resize(stdio.size());
    std::vector<Fd> parent_ends(stdio.size()), child_ends(stdio.size());
    for (size_t i = 0; i < stdio.size(); ++i) {
      const uv_stdio_container_t& c = stdio[i];
      detail::ChildFd& slot = request.fds[i];
      if (c.flags & UV_CREATE_PIPE) {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) return uv_translate_sys_error(errno);
        parent_ends[i] = Fd(pair[0]);
        child_ends[i] = Fd(pair[1]);
        slot = {detail::ChildFd::Kind::dup, pair[1]};
      } else if (c.flags & UV_INHERIT_FD) {
        slot = {detail::ChildFd::Kind::dup, c.data.fd};
      } else {
        slot = {detail::ChildFd::Kind::dev_null, -1};  // libuv: /dev/null for 0-2 only
      }
    }
    ChildProcess* raw = child.get();
    auto started = detail::PidfdChild::spawn(
        loop, request,
        [raw](int64_t exit_status, int term_signal) { raw->on_process_exit(exit_status, term_signal); }, &ran);
    if (!started) return started.error().errnum;  // becomes uv_spawn's status below
    child->pidfd_child_ = std::move(*started);
    for (size_t i = 0; i < stdio.size(); ++i) {
      if (!parent_ends[i]) continue;
      auto* pipe = reinterpret_cast<uv_pipe_t*>(stdio[i].data.stream);
      if (int open_rc = uv_pipe_open(pipe, parent_ends[i].get()); open_rc < 0) {
        // Cannot happen for a fresh socket on an unopened pipe; if it did, the child must not
        // run unconnected: it is killed and reported like any child killed by a signal.
        child->pidfd_child_->kill(SIGKILL);
        break;
      }
      (void)parent_ends[i].release();  // the pipe handle owns it now
    }
    return 0;
  };

  child->process_->data = child.get();
  int rc = spawn_without_fork();
  if (rc == 0) {
    child->pid_ = child->pidfd_child_->pid();
  } else if (!ran) {
    uv_process_options_t uvo{};
    uvo.file = file.c_str();
    uvo.args = argv_c.data();
    uvo.env = env_c.data();
    uvo.cwd = po.cwd ? po.cwd->c_str() : nullptr;
    uvo.stdio_count = static_cast<int>(stdio.size());
    uvo.stdio = stdio.data();
    if (po.detached) uvo.flags |= UV_PROCESS_DETACHED;
    if (po.uid) {
      uvo.flags |= UV_PROCESS_SETUID;
      uvo.uid = *po.uid;
    }
    if (po.gid) {
      uvo.flags |= UV_PROCESS_SETGID;
      uvo.gid = *po.gid;
    }
    uvo.exit_cb = [](uv_process_t* p, int64_t status, int term_signal) {
      static_cast<ChildProcess*>(p->data)->on_process_exit(status, term_signal);
    };
    rc = uv_spawn(loop, child->process_.get(), &uvo);
    child->process_.mark_initialized();  // initialized even on failure; must be closed
    if (rc == 0) child->pid_ = child->process_->pid;
  }
  child->self_ = child;
  if (rc < 0) {
    child->failed(rc);
  } else {
    if (po.timeout_ms > 0) {
      child->timeout_.must_init(uv_timer_init(loop, child->timeout_.get()), "uv_timer_init");
      child->timeout_->data = child.get();
      uv_timer_start(
          child->timeout_.get(),
          [](uv_timer_t* t) {
            auto* self = static_cast<ChildProcess*>(t->data);
            self->kill(self->kill_signal_);
          },
          static_cast<uint64_t>(po.timeout_ms), 0);
    }
    child->started();
  }
  return child;
}

void ChildProcess::started() {
  // close waits for exit, every readable pipe, and the IPC channel.
  pending_closes_ = 1;
  for (auto& r : readables_) {
    if (!r) continue;
    ++pending_closes_;
    r->on_close([this] { maybe_close(); });
  }
  if (channel_) {
    ++pending_closes_;
    channel_->on_close([this] { maybe_close(); });
  }
  ticker_.defer([this] {
    spawn_.emit();
    for (auto& r : readables_)
      if (r) detail::StreamOwner::start(*r);
    if (channel_) ipc::ChannelOwner::start(*channel_);
  });
}

void ChildProcess::failed(int status) {
  process_.close();
  Error err = Error::from_uv(status, "spawn " + file_, file_);
  err.spawnargs.assign(argv_.begin() + 1, argv_.end());
  exit_status_ = ExitStatus{status, std::nullopt};
  // Node: `error`, then `close` with the negative errno once the unused pipes are closed.
  ticker_.defer([this, err] {
    error_.emit(err);
    pending_closes_ = 1;
    if (stdin_) stdin_->destroy();
    for (auto& r : readables_) {
      if (!r) continue;
      ++pending_closes_;
      r->on_close([this] { maybe_close(); });
      r->destroy();
    }
    if (channel_) {
      ++pending_closes_;
      channel_->on_close([this] { maybe_close(); });
      ipc::ChannelOwner::destroy(*channel_);
    }
    maybe_close();
  });
}

void ChildProcess::on_process_exit(int64_t exit_status, int term_signal) {
  ExitStatus status;
  if (term_signal) {
    status.signal = signal_name(term_signal);
  } else {
    status.code = static_cast<int>(exit_status);
  }
  exit_status_ = status;
  timeout_.close();
  process_.close();
  pidfd_child_.reset();
  if (stdin_) stdin_->destroy();
  auto keep = shared_from_this();
  exit_.emit(status);
  maybe_close();
}

void ChildProcess::maybe_close() {
  if (closed_ || --pending_closes_ > 0) return;
  closed_ = true;
  auto keep = std::move(self_);
  close_.emit(*exit_status_);
  ticker_.close();
}

bool ChildProcess::kill(const std::string& signal) {
  auto signum = signal_number(signal);
  if (!signum) {
    error_.emit(Error::make("ERR_UNKNOWN_SIGNAL", "Unknown signal: " + signal));
    return false;
  }
  return kill(*signum);
}

bool ChildProcess::kill(int signum) {
  if ((!process_.initialized() && !pidfd_child_) || exit_status_) return false;
  int rc = pidfd_child_ ? pidfd_child_->kill(signum) : uv_process_kill(process_.get(), signum);
  if (rc == 0) {
    killed_ = true;
    return true;
  }
  if (rc != UV_ESRCH) error_.emit(Error::from_uv(rc, "kill"));
  return false;
}

}  // namespace uvcluster
