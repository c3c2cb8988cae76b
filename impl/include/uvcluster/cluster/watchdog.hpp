#pragma once
// Watchdog: workers never outlive their primary (docs/orphans.md).
//
// A small process forked (not exec'd) from the primary holds one end of a socketpair whose only
// other end is the primary's. When the primary process dies, however it dies (SIGKILL included),
// the kernel closes that end and the watchdog reads EOF: it SIGKILLs the process group of every
// worker it was told about (each worker leads its own group, so the processes it started die
// too), then every process still carrying this cluster's token in its environment (a worker
// caught between fork and exec, a worker's child that left the group with setsid), and exits.
// Destroying the Watchdog does the same for what is left, then reaps it.
#include <sys/types.h>
#include <uv.h>

#include <memory>
#include <optional>
#include <set>
#include <string>

#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

class Watchdog {
  struct Key {
    explicit Key() = default;
  };

 public:
  // Workers get kTokenVar=token() in their environment; their children inherit it.
  static constexpr const char* kTokenVar = "UVCLUSTER_LIFELINE";

  // With a loop, a watchdog that dies on its own (killed by hand, OOM) is replaced at once;
  // without, at the next message. The loop handle is unref'd: it never keeps the loop alive.
  static Result<std::unique_ptr<Watchdog>> start(uv_loop_t* loop = nullptr);
  Watchdog(Key, uv_loop_t* loop, std::string token);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  const std::string& token() const { return token_; }
  pid_t pid() const { return pid_; }

  // Around each worker spawn: spawning() before it, then spawned(pid), or spawned(nullopt) when
  // it failed. Between the two the watchdog looks for the worker by its token if the primary dies.
  void spawning();
  void spawned(std::optional<int> pid);
  // The worker was waited for: its pid may be reused, so it is never signalled by pid again. Its
  // process group is still killed with the primary while it has members (the worker's children).
  void reaped(int pid);

 private:
  Status fork_process();
  // Reaps a watchdog that died (or cannot be told) and starts another, told what it knew.
  void replace();
  // One record to the watchdog, replacing it first if needed; callers update watched_ and
  // spawning_ only after sending, so a replacement is told the state before this record.
  void send(int32_t op, int pid = 0);

  uv_loop_t* loop_;
  std::string token_;
  Fd lifeline_;  // the primary's end: close-on-exec, so no worker holds it
  detail::UvHandle<uv_poll_t> hangup_;  // the watchdog's end closed: it died
  pid_t pid_ = -1;
  std::set<int> watched_;  // spawned and not yet reaped
  int spawning_ = 0;
};

}  // namespace uvcluster::cluster
