#pragma once
// spawn(): Node's child_process.spawn on a libuv loop.
//
// Errors Node throws synchronously (bad arguments) come back as the Result's error; errors Node
// emits (ENOENT, EACCES, ...) come as the child's `error` event. Events are never emitted
// during spawn() itself: listeners attached right after it returns see all of them.
#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "uvcluster/detail/event.hpp"
#include "uvcluster/detail/ticker.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/ipc/serialization.hpp"
#include "uvcluster/stream.hpp"

namespace uvcluster {

namespace ipc { class Channel; }
namespace detail { class PidfdChild; }

struct Stdio {
  enum class Kind { pipe, inherit, ignore, fd, ipc };
  Kind kind = Kind::pipe;
  int fd = -1;  // Kind::fd: the parent's fd the child gets in this slot

  static Stdio pipe() { return {Kind::pipe, -1}; }
  static Stdio inherit() { return {Kind::inherit, -1}; }
  static Stdio ignore() { return {Kind::ignore, -1}; }
  static Stdio from_fd(int fd) { return {Kind::fd, fd}; }
  static Stdio ipc() { return {Kind::ipc, -1}; }
};

using Env = std::map<std::string, std::string>;

// How a child is started, shared by every way of starting one (spawn, exec, the sync forms,
// fork): each of their option structs embeds one as `process`.
struct ProcessOptions {
  std::optional<std::string> cwd{};
  std::optional<Env> env{};            // nullopt: the parent's environment
  std::optional<std::string> argv0{};  // argv[0] seen by the child; default: file
  // false: run file directly. true: /bin/sh -c "<file args...>". A string: that shell.
  // exec()/exec_sync() always use a shell; fork() never does (Node ignores it there).
  std::variant<bool, std::string> shell = false;
  std::optional<uint32_t> uid{};
  std::optional<uint32_t> gid{};
  bool detached = false;               // own session and process group (setsid)
  // > 0: kill with kill_signal when it expires (exec: Node's execFile timer; sync: then ETIMEDOUT).
  int64_t timeout_ms = 0;
  std::string kill_signal = "SIGTERM";
};

struct SpawnOptions {
  ProcessOptions process{};
  std::vector<Stdio> stdio = {Stdio::pipe(), Stdio::pipe(), Stdio::pipe()};
  // The ipc slot's channel mode; the child learns it from NODE_CHANNEL_SERIALIZATION_MODE.
  ipc::Serialization serialization = ipc::Serialization::json;
};

// Exit status as Node reports it: exactly one of code/signal is set once the child has exited.
struct ExitStatus {
  std::optional<int> code{};
  std::optional<std::string> signal{};
};

class ChildProcess : public std::enable_shared_from_this<ChildProcess> {
  struct Key {
    explicit Key() = default;
  };

 public:
  ChildProcess(Key, uv_loop_t* loop);  // use spawn()
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Events, in Node's order: spawn, (data), exit, close; or error (and no spawn) on failure.
  void on_spawn(std::function<void()> fn) { spawn_.add(std::move(fn)); }
  void on_exit(std::function<void(const ExitStatus&)> fn) { exit_.add(std::move(fn)); }
  void on_close(std::function<void(const ExitStatus&)> fn) { close_.add(std::move(fn)); }
  void on_error(std::function<void(const Error&)> fn) { error_.add(std::move(fn)); }

  std::optional<int> pid() const { return pid_; }
  Writable* stdin_pipe() { return stdin_.get(); }   // null unless stdio[0] is a pipe
  Readable* stdout_pipe() { return readable(1); }   // null unless stdio[1] is a pipe
  Readable* stderr_pipe() { return readable(2); }
  Readable* readable(size_t fd);                     // any readable pipe slot
  ipc::Channel* channel() { return channel_.get(); } // the ipc slot's channel, if any

  // Sends a signal. Returns true when delivered (and sets killed()); false if the process has
  // exited or the name is unknown (an unknown name also emits `error` ERR_UNKNOWN_SIGNAL).
  bool kill(const std::string& signal = "SIGTERM");
  bool kill(int signum);
  bool killed() const { return killed_; }
  const std::optional<ExitStatus>& exit_status() const { return exit_status_; }
  bool exited() const { return exit_status_.has_value(); }

  const std::string& spawnfile() const { return file_; }
  const std::vector<std::string>& spawnargs() const { return argv_; }  // argv incl. argv0

 private:
  friend Result<std::shared_ptr<ChildProcess>> spawn(uv_loop_t*, std::string,
                                                     std::vector<std::string>, SpawnOptions);
  void started();
  void on_process_exit(int64_t exit_status, int term_signal);
  void maybe_close();
  void failed(int status);

  uv_loop_t* loop_;
  detail::UvHandle<uv_process_t> process_;         // a child started by uv_spawn (fork)
  std::unique_ptr<detail::PidfdChild> pidfd_child_;  // or by posix_spawn, watched by pidfd
  detail::UvHandle<uv_timer_t> timeout_;
  detail::Ticker ticker_;
  std::unique_ptr<Writable> stdin_;
  std::vector<std::unique_ptr<Readable>> readables_;  // index = fd slot (null if not a pipe)
  std::unique_ptr<ipc::Channel> channel_;
  std::optional<int> pid_{};
  std::optional<ExitStatus> exit_status_{};
  std::string file_;
  std::vector<std::string> argv_;
  std::string kill_signal_;
  int pending_closes_ = 0;  // exit + readable pipes (+ ipc) still to finish before `close`
  bool killed_ = false;
  bool closed_ = false;
  std::shared_ptr<ChildProcess> self_;  // keeps the object alive until `close`
  detail::Event<> spawn_;
  detail::Event<const ExitStatus&> exit_;
  detail::Event<const ExitStatus&> close_;
  detail::Event<const Error&> error_;
};

// Starts `file` with `args`. Validation errors (empty file, NUL in an argument, negative
// timeout, unknown kill_signal, more than one ipc slot) are returned; spawn failures such as
// ENOENT are emitted as `error` on the returned child.
Result<std::shared_ptr<ChildProcess>> spawn(uv_loop_t* loop, std::string file,
                                            std::vector<std::string> args = {},
                                            SpawnOptions options = {});

}  // namespace uvcluster
