#pragma once
// spawn without fork (issue 13 §3): posix_spawn, which glibc runs as clone(CLONE_VM|CLONE_VFORK)
// on a small stack of its own, so its cost does not grow with the parent's page tables (fork's
// does: /bin/true from a parent with 1 GiB touched costs ~10x more), and the child's exit read
// from a pidfd watched by the loop. libuv never learns the pid: its SIGCHLD handler only waits
// for pids it spawned, so the child is reaped here (waitid on the pidfd) and nowhere else.
#include <sys/types.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::detail {

// True where the kernel has pidfd_open and waitid(P_PIDFD) (Linux 5.4+); probed once.
bool pidfd_spawn_available();

// What the child finds in one fd slot.
struct ChildFd {
  enum class Kind { untouched, dup, dev_null };
  Kind kind = Kind::untouched;
  int from = -1;  // dup: the parent's fd (any number; collisions with other slots are handled)
};

struct PidfdSpawnRequest {
  const char* file = nullptr;  // a path (with a '/'); PATH search is the caller's
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;
  bool detached = false;  // new session (setsid), as UV_PROCESS_DETACHED
  std::vector<ChildFd> fds;
};

// The child's exit, watched by the loop through its pidfd.
class PidfdChild {
  struct Key {
    explicit Key() = default;
  };

 public:
  explicit PidfdChild(Key) {}  // use spawn()
  using ExitFn = std::function<void(int64_t exit_status, int term_signal)>;
  // Starts the child; the result watches it and on_exit runs once, from the loop, when it has
  // exited and been reaped. On an error nothing is left running, and *ran tells whether the
  // child ran (it was then killed: its exit could not be watched), so that a caller does not
  // start it a second time another way.
  static Result<std::unique_ptr<PidfdChild>> spawn(uv_loop_t* loop, const PidfdSpawnRequest& request,
                                                   ExitFn on_exit, bool* ran);
  ~PidfdChild();
  PidfdChild(const PidfdChild&) = delete;
  PidfdChild& operator=(const PidfdChild&) = delete;

  pid_t pid() const { return pid_; }
  // 0 or a negative libuv error (UV_ESRCH once the child is gone): uv_process_kill's twin, with
  // its signature, as the caller picks one of the two.
  int kill(int signum);

 private:
  void on_readable();

  void report_exit();

  uv_loop_t* loop_ = nullptr;
  pid_t pid_ = -1;
  Fd pidfd_;
  UvHandle<uv_poll_t> poll_;
  // The exit is reported after the next turn's I/O poll: the kernel closes the child's files
  // before its pidfd becomes readable, so its pipes' ends are already pending, and libuv's
  // SIGCHLD route (slower) always let them arrive first. Node's order stays: data, end, exit.
  UvHandle<uv_idle_t> keep_polling_;  // an active idle handle makes that poll not block
  UvHandle<uv_check_t> after_poll_;
  int checks_ = 0;
  ExitFn on_exit_;
  bool reaped_ = false;
};

// The first PATH entry (from `envp`'s PATH, else the parent's, else execvp's default) holding an
// executable regular file named `file`; nullopt when there is none (uv_spawn then reports the
// error execvp gives). A file with a '/' is returned as is.
std::optional<std::string> resolve_executable(const std::string& file, char* const* envp);

}  // namespace uvcluster::detail
