#pragma once
// Steering for policy `reuseport` (issue 8): the kernel hashes each new connection to one socket
// of a port's SO_REUSEPORT group, a stopped worker's socket included, and a worker out of fds
// refuses what lands on it. A BPF_PROG_TYPE_SK_REUSEPORT program attached to the group
// (SO_ATTACH_REUSEPORT_EBPF) picks instead `hash % n` over slots 0..n-1 of a
// BPF_MAP_TYPE_REUSEPORT_SOCKARRAY that hold the *eligible* workers' sockets, n being read from
// a one-entry ARRAY map. n = 0, or a failed lookup, returns SK_PASS without a choice: the
// kernel's own hash applies. The same program also picks where a closing socket's queued
// connections migrate (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE, Linux >= 5.14; older kernels load it
// for selection only and migrate by tcp_migrate_req and hash).
//
// No build dependency: the 23 instruction slots are assembled here from <linux/bpf.h> and loaded
// with the raw bpf(2) syscall; the map and program fds are close-on-exec (the kernel opens them
// so) and owned by Fd. Loading needs CAP_BPF and CAP_NET_ADMIN (root): a caller that gets an error
// from any step keeps the kernel's hash, as without steering.
//
// Eligibility (ReusePortHandle decides it): a worker is out while it is stopped (SIGSTOP, learnt
// from SIGCHLD with waitid(WSTOPPED | WCONTINUED | WNOWAIT)) or while fewer than kFdsOutBelow of
// its fds are free, and back once continued and with at least kFdsBackAt free. What a stopped
// worker's socket already queued is moved to the others (move_queue).
#include <cstdint>
#include <optional>
#include <vector>

#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

class ReusePortSteering {
 public:
  // Sockets the array holds at most; with more eligible workers than this, n = 0 (kernel hash).
  static constexpr uint32_t kCapacity = 1024;

  // The two maps and the program. The error names the bpf(2) command that failed.
  static Result<ReusePortSteering> create();

  // Attaches the program to `listen_fd`'s SO_REUSEPORT group (the group keeps it while any of
  // its sockets lives; attaching again replaces it by itself).
  Status attach(int listen_fd) const;

  // Slots 0..n-1 := `listening_fds` (each listening in the group), then n. Empty, or more than
  // kCapacity: n = 0, the kernel's hash over the whole group. The sockets move through n = 0 (a
  // socket can sit in one slot only), so for a few syscalls the kernel's hash applies.
  Status steer_to(const std::vector<int>& listening_fds);

  // Moves the connections queued on `listening_fd`, a stopped worker's socket already out of the
  // array, to the eligible workers, and leaves it listening in the group: shutdown() ends its
  // listen, and the kernel migrates each queued connection through the program; listen() again
  // puts it back (the kernel resurrects a shut-down reuseport socket). Only a worker that cannot
  // run may have its socket cycled: one that ran between the two calls would see its accept
  // fail (EINVAL). The socket must be bound to its port explicitly (else shutdown frees the
  // port). ENOTSUP when the program was loaded for selection only (Linux < 5.14): there
  // shutdown() would reset the queue unless tcp_migrate_req is on.
  Status move_queue(int listening_fd, int backlog) const;

  ReusePortSteering(ReusePortSteering&&) noexcept = default;
  ReusePortSteering& operator=(ReusePortSteering&&) noexcept = default;

 private:
  ReusePortSteering(Fd count_map, Fd socket_map, Fd program, bool migrates)
      : count_map_(std::move(count_map)), socket_map_(std::move(socket_map)), program_(std::move(program)),
        migrates_(migrates) {}
  Status set_count(uint32_t n);

  Fd count_map_;   // ARRAY, 1 entry: n
  Fd socket_map_;  // REUSEPORT_SOCKARRAY, kCapacity entries
  Fd program_;
  bool migrates_ = false;  // loaded as BPF_SK_REUSEPORT_SELECT_OR_MIGRATE
  uint32_t filled_ = 0;  // slots written by the last steer_to
};

// The fd-headroom rule, with hysteresis so a worker near its limit does not flap: an eligible
// worker goes out when fewer than kFdsOutBelow fds are free (libuv's EMFILE answer would close
// what it accepts), an ineligible one comes back at kFdsBackAt free.
constexpr uint64_t kFdsOutBelow = 2;
constexpr uint64_t kFdsBackAt = 8;
struct FdUse {
  uint64_t open = 0;        // entries of /proc/PID/fd
  uint64_t soft_limit = 0;  // RLIMIT_NOFILE soft limit (RLIM_INFINITY as is)
};
bool has_fd_headroom(bool eligible_now, const FdUse& use);
// ENOENT / ESRCH once the process is gone.
Result<FdUse> fd_use(int pid);

// The last stop or continue of child `pid`, left for anyone else to read (WNOWAIT): true while it
// is stopped, false once continued, nullopt when there is none to report (never stopped, or
// reaped). Never reaps an exit.
std::optional<bool> child_stopped(int pid);

}  // namespace uvcluster::cluster
