#include "pidfd_child.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>

#ifndef P_PIDFD
#define P_PIDFD 3  // Linux 5.4; glibc headers before 2.36 lack it
#endif

extern char** environ;

namespace uvcluster::detail {
namespace {

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// Frees what posix_spawn_*_init allocated, whatever path leaves spawn().
struct SpawnAttributes {
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  int attr_rc = posix_spawnattr_init(&attr);
  int actions_rc = posix_spawn_file_actions_init(&actions);
  ~SpawnAttributes() {
    if (attr_rc == 0) posix_spawnattr_destroy(&attr);
    if (actions_rc == 0) posix_spawn_file_actions_destroy(&actions);
  }
};

// libuv's child sets its stdio (fds 0-2) to blocking mode; the file description is shared, so
// clearing O_NONBLOCK here has the same effect.
int make_blocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return -errno;
  if ((flags & O_NONBLOCK) && ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) return -errno;
  return 0;
}

}  // namespace

bool pidfd_spawn_available() {
  static const bool available = [] {
    Fd self(pidfd_open(::getpid()));
    if (!self) return false;
    siginfo_t info{};  // waitid(P_PIDFD) on a non-child fails with ECHILD; without it, EINVAL
    return ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(self.get()), &info,
                    WEXITED | WNOHANG) < 0 && errno == ECHILD;
  }();
  return available;
}

Result<std::unique_ptr<PidfdChild>> PidfdChild::spawn(uv_loop_t* loop, const PidfdSpawnRequest& request,
                                                      ExitFn on_exit, bool* ran) {
  *ran = false;
  auto failed = [](int negative_errno) { return Error::from_uv(negative_errno, "spawn"); };
  SpawnAttributes sa;
  if (sa.attr_rc != 0) return failed(-sa.attr_rc);
  if (sa.actions_rc != 0) return failed(-sa.actions_rc);
  // As libuv's child: every classic signal back to its default, nothing blocked; a new session
  // when detached.
  sigset_t defaults, none;
  sigemptyset(&defaults);
  sigemptyset(&none);
  for (int sig = 1; sig < 32; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) sigaddset(&defaults, sig);
  short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
  if (request.detached) flags |= POSIX_SPAWN_SETSID;
  int rc = posix_spawnattr_setflags(&sa.attr, flags);
  if (rc == 0) rc = posix_spawnattr_setsigdefault(&sa.attr, &defaults);
  if (rc == 0) rc = posix_spawnattr_setsigmask(&sa.attr, &none);
  if (rc == 0 && request.cwd) rc = posix_spawn_file_actions_addchdir_np(&sa.actions, request.cwd);
  // A source fd that is itself a slot number would be overwritten by that slot's dup2 before it
  // is read: such sources are first copied above every slot.
  const int slots = static_cast<int>(request.fds.size());
  std::vector<Fd> moved;
  for (int i = 0; rc == 0 && i < slots; ++i) {
    const ChildFd& c = request.fds[static_cast<size_t>(i)];
    if (c.kind == ChildFd::Kind::dev_null && i <= 2) {
      rc = posix_spawn_file_actions_addopen(&sa.actions, i, "/dev/null", i == 0 ? O_RDONLY : O_RDWR, 0);
    } else if (c.kind == ChildFd::Kind::dup) {
      int from = c.from;
      if (from < slots && from != i) {
        moved.emplace_back(::fcntl(from, F_DUPFD_CLOEXEC, slots));
        if (!moved.back()) return failed(-errno);
        from = moved.back().get();
      }
      if (i <= 2 && c.from == i) {
        if (int err = make_blocking(from); err < 0) return failed(err);
      }
      // from == i: glibc (>= 2.29) clears FD_CLOEXEC instead, so the slot is inherited.
      rc = posix_spawn_file_actions_adddup2(&sa.actions, from, i);
    }
  }
  if (rc != 0) return failed(-rc);
  pid_t pid = -1;
  rc = posix_spawn(&pid, request.file, &sa.actions, &sa.attr, request.argv,
                   request.envp ? request.envp : environ);
  if (rc != 0) return failed(-rc);
  *ran = true;

  auto child = std::make_unique<PidfdChild>(Key{});
  child->pid_ = pid;
  child->loop_ = loop;
  child->pidfd_ = Fd(pidfd_open(pid));  // the child is not reaped yet: its pid cannot be reused
  int err = child->pidfd_ ? uv_poll_init(loop, child->poll_.get(), child->pidfd_.get()) : -errno;
  if (err == 0) {
    child->poll_.mark_initialized();
    child->poll_->data = child.get();
    err = uv_poll_start(child->poll_.get(), UV_READABLE, [](uv_poll_t* p, int, int) {
      static_cast<PidfdChild*>(p->data)->on_readable();
    });
  }
  if (err < 0) {  // cannot watch it: do not leave an unwatched child behind
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    child->reaped_ = true;
    return failed(err);
  }
  child->on_exit_ = std::move(on_exit);
  return child;
}

PidfdChild::~PidfdChild() = default;  // members close in reverse order: poll_ before pidfd_

void PidfdChild::on_readable() {
  poll_.close();  // readable = exited (a zombie until report_exit reaps it)
  int err = uv_idle_init(loop_, keep_polling_.get());
  if (err == 0) {
    keep_polling_.mark_initialized();
    err = uv_idle_start(keep_polling_.get(), [](uv_idle_t*) {});
  }
  if (err == 0) err = uv_check_init(loop_, after_poll_.get());
  if (err == 0) {
    after_poll_.mark_initialized();
    after_poll_->data = this;
    err = uv_check_start(after_poll_.get(), [](uv_check_t* c) {
      auto* self = static_cast<PidfdChild*>(c->data);
      if (++self->checks_ == 2) self->report_exit();  // the 1st check is this turn's, before the next poll
    });
  }
  if (err < 0) report_exit();  // cannot wait a turn: report now rather than never
}

void PidfdChild::report_exit() {
  keep_polling_.close();
  after_poll_.close();
  siginfo_t info{};
  int rc;
  do {  // it has exited: this does not block
    rc = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.get()), &info, WEXITED);
  } while (rc < 0 && errno == EINTR);
  reaped_ = true;
  int64_t exit_status = 0;
  int term_signal = 0;
  // rc < 0 (ECHILD): reaped by the kernel because SIGCHLD is SIG_IGN; the status is lost.
  if (rc == 0 && info.si_code == CLD_EXITED) exit_status = info.si_status;
  else if (rc == 0) term_signal = info.si_status;  // CLD_KILLED / CLD_DUMPED
  auto fn = std::move(on_exit_);
  if (fn) fn(exit_status, term_signal);  // may destroy this object: nothing after it
}

int PidfdChild::kill(int signum) {
  if (reaped_) return UV_ESRCH;
  if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), signum, nullptr, 0) == 0) return 0;
  return uv_translate_sys_error(errno);
}

std::optional<std::string> resolve_executable(const std::string& file, char* const* envp) {
  if (file.find('/') != std::string::npos) return file;
  const char* path = nullptr;
  if (envp) {
    for (char* const* e = envp; *e; ++e)
      if (std::strncmp(*e, "PATH=", 5) == 0) {
        path = *e + 5;  // the first, as getenv
        break;
      }
  } else {
    path = std::getenv("PATH");
  }
  // execvp's default search path when PATH is unset (glibc).
  std::string_view dirs = path ? path : "/bin:/usr/bin";
  for (;;) {
    size_t colon = dirs.find(':');
    std::string_view dir = dirs.substr(0, colon);
    std::string candidate = dir.empty() ? file : std::string(dir) + "/" + file;  // "" = cwd
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    if (colon == std::string_view::npos) return std::nullopt;
    dirs.remove_prefix(colon + 1);
  }
}

}  // namespace uvcluster::detail
