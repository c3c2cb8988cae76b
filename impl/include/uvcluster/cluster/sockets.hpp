#pragma once
// Listening-socket plumbing shared by the primary's handles and the C++ worker. Every fd is
// non-blocking and close-on-exec from birth; errors come back as Node-shaped values
// (code "EADDRINUSE", syscall "bind").
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

struct BindSpec {
  std::optional<std::string> address{};  // numeric IP; nullopt = Node's default ("::", then 0.0.0.0)
  int port = 0;
  int address_type = 4;  // 4 | 6 (a nullopt address ignores it, as Node does)
  bool ipv6_only = false;
  bool reuseport = false;  // SO_REUSEPORT: one socket per worker, kernel-balanced
};

// A bound (not listening) TCP socket, as net._createServerHandle makes for a SharedHandle.
Result<Fd> bind_tcp(const BindSpec& spec);
// listen(); backlog <= 0 means Node's default 511.
Status listen_fd(int fd, int backlog);
bool is_listening(int fd);

struct SockName {
  std::string address;
  std::string family;  // "IPv4" | "IPv6"
  int port = 0;
  nlohmann::json to_json() const { return {{"address", address}, {"family", family}, {"port", port}}; }
};
Result<SockName> local_address(int fd);

// One accept4(NONBLOCK|CLOEXEC). Invalid Fd with errno set on failure.
Fd accept_connection(int listen_fd);
// Makes a received fd non-blocking + close-on-exec (fds arriving over SCM_RIGHTS may be neither).
void make_nonblocking_cloexec(int fd);

// Node raises RLIMIT_NOFILE's soft limit to the hard one at primary start; a primary that
// queues accepted connections would otherwise run out near 1024.
void raise_nofile_limit();

// net.ipv4.tcp_migrate_req = 1 (Linux >= 5.14, per network namespace): when an SO_REUSEPORT
// listener closes (its worker died), the kernel moves the connections queued on it to another
// listener of the group instead of resetting them. Ok when it is (now) on; the error (EACCES for
// a non-root primary, ENOENT on an older kernel) when it cannot be turned on.
Status enable_reuseport_migration();

}  // namespace uvcluster::cluster
