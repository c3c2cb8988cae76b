#pragma once
// Listening-socket plumbing shared by the primary's handles and the C++ worker. Every fd is
// non-blocking and close-on-exec from birth; errors come back as Node-shaped values
// (code "EADDRINUSE", syscall "bind").
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>

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

// The file of a unix socket the primary bound, removed when its owner goes (libuv unlinks a
// bound pipe's path when the handle closes, so Node's primary removes it as the cluster stops).
class SocketFile {
 public:
  SocketFile() = default;
  explicit SocketFile(std::string path) : path_(std::move(path)) {}
  SocketFile(SocketFile&& o) noexcept : path_(std::exchange(o.path_, {})) {}
  SocketFile& operator=(SocketFile&& o) noexcept {
    if (this != &o) {
      reset();
      path_ = std::exchange(o.path_, {});
    }
    return *this;
  }
  SocketFile(const SocketFile&) = delete;
  SocketFile& operator=(const SocketFile&) = delete;
  ~SocketFile() { reset(); }
  void reset();

 private:
  std::string path_;
};

// A socket the primary bound for a server, with the file to remove for a unix socket.
struct BoundSocket {
  Fd fd;
  SocketFile file;
};
// A bound unix stream socket (not listening). EADDRINUSE when the path exists (no stale-socket
// cleanup, as in Node); ENAMETOOLONG past sun_path (Node 20's libuv silently truncates).
Result<BoundSocket> bind_pipe(const std::string& path);
// Node's readableAll / writableAll (uv_pipe_chmod): adds read and/or write for everyone to the
// socket file's mode.
Status chmod_pipe(const std::string& path, bool readable_all, bool writable_all);

// A bound UDP socket, as dgram._createSocketHandle makes for a SharedHandle. `flags` are Node's
// bind flags: UV_UDP_IPV6ONLY (1), UV_UDP_REUSEADDR (4).
constexpr int kUdpIpv6Only = 1;
constexpr int kUdpReuseAddr = 4;
Result<Fd> bind_udp(const std::string& address, int port, int flags);

// listen({fd: N}) in a worker: Node's primary opens *its own* descriptor N (a TCP or unix
// stream socket, else EINVAL). A close-on-exec duplicate of it.
Result<Fd> adopt_stream_fd(int fd);
// AF_INET / AF_INET6 (the only sockets with a sockname Node reports).
bool is_inet(int fd);
// listen(); backlog <= 0 means Node's default 511.
Status listen_fd(int fd, int backlog);
bool is_listening(int fd);
// A drain's first step on a shared listening TCP socket: a classic BPF socket filter drops the
// SYNs that reach it, so no new connection enters its backlog while the ones queued (and the
// handshakes under way) stay for the workers to accept. A dropped client retransmits its SYN and
// is refused once the socket closes. ENOTSOCK/EINVAL for a socket that is not listening TCP.
Status refuse_new_connections(int fd);
// Connections waiting in a listening TCP socket's accept queue (TCP_INFO's tcpi_unacked in the
// LISTEN state); ENOPROTOOPT for a non-TCP socket, EINVAL for one that is not listening.
Result<uint32_t> accept_queue_length(int listen_fd);

struct SockName {
  std::string address;
  std::string family;  // "IPv4" | "IPv6"
  int port = 0;
  nlohmann::json to_json() const { return {{"address", address}, {"family", family}, {"port", port}}; }
};
// EAFNOSUPPORT for a socket that is not AF_INET / AF_INET6.
Result<SockName> local_address(int fd);

// One accept4(NONBLOCK|CLOEXEC); the error's errnum is the negative errno (EAGAIN: none waiting).
Result<Fd> accept_connection(int listen_fd);
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
