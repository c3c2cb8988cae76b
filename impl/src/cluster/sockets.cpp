#include "uvcluster/cluster/sockets.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <iterator>

namespace uvcluster::cluster {
namespace {

struct SockAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&ss); }
};

Result<SockAddr> make_sockaddr(const char* ip, int family, int port) {
  SockAddr out;
  if (port < 0 || port > 65535) return Error::from_uv(UV_EINVAL, "bind");
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&out.ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, ip, &a->sin6_addr) != 1) return Error::from_uv(UV_EINVAL, "bind");
    out.len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&out.ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) return Error::from_uv(UV_EINVAL, "bind");
    out.len = sizeof *a;
  }
  return out;
}

int family_of(const std::string& ip) { return ip.find(':') != std::string::npos ? AF_INET6 : AF_INET; }

Result<Fd> bind_one(const char* ip, int family, const BindSpec& spec) {
  auto addr = make_sockaddr(ip, family, spec.port);
  if (!addr.ok()) return addr.error();
  Fd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_uv(-errno, "socket");
  int one = 1;
  // libuv sets SO_REUSEADDR on every TCP bind; Node's handles behave the same.
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (spec.reuseport &&
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
    return Error::from_uv(-errno, "setsockopt");
  if (family == AF_INET6) {
    int v6only = spec.ipv6_only ? 1 : 0;
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
  }
  if (::bind(fd.get(), addr->get(), addr->len) != 0) return Error::from_uv(-errno, "bind");
  return fd;
}

}  // namespace

Result<Fd> bind_tcp(const BindSpec& spec) {
  if (!spec.address) {
    // Node: an unspecified address tries "::" (dual-stack) and falls back to 0.0.0.0.
    auto r = bind_one("::", AF_INET6, spec);
    if (r.ok() || r.error().code == "EADDRINUSE" || r.error().code == "EACCES") return r;
    return bind_one("0.0.0.0", AF_INET, spec);
  }
  return bind_one(spec.address->c_str(), family_of(*spec.address), spec);
}

void SocketFile::reset() {
  if (!path_.empty()) ::unlink(path_.c_str());
  path_.clear();
}

Result<BoundSocket> bind_pipe(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) return Error::from_uv(UV_ENAMETOOLONG, "bind", path);
  std::memcpy(a.sun_path, path.data(), path.size());
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_uv(-errno, "socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
    return Error::from_uv(-errno, "bind", path);
  return BoundSocket{std::move(fd), SocketFile(path)};
}

Status chmod_pipe(const std::string& path, bool readable_all, bool writable_all) {
  mode_t wanted = (readable_all ? S_IRUSR | S_IRGRP | S_IROTH : 0) | (writable_all ? S_IWUSR | S_IWGRP | S_IWOTH : 0);
  if (wanted == 0) return Ok{};
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return Error::from_uv(-errno, "uv_pipe_chmod", path);
  if ((st.st_mode & wanted) == wanted) return Ok{};
  if (::chmod(path.c_str(), (st.st_mode & 07777) | wanted) != 0) return Error::from_uv(-errno, "uv_pipe_chmod", path);
  return Ok{};
}

Result<Fd> bind_udp(const std::string& address, int port, int flags) {
  int family = family_of(address);
  auto addr = make_sockaddr(address.c_str(), family, port);
  if (!addr.ok()) return addr.error();
  Fd fd(::socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_uv(-errno, "socket");
  int one = 1;
  // As uv_udp_bind: SO_REUSEADDR only when asked, IPV6_V6ONLY only when asked.
  if ((flags & kUdpReuseAddr) && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
    return Error::from_uv(-errno, "setsockopt");
  if (family == AF_INET6 && (flags & kUdpIpv6Only) &&
      ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)
    return Error::from_uv(-errno, "setsockopt");
  if (::bind(fd.get(), addr->get(), addr->len) != 0) return Error::from_uv(-errno, "bind");
  return fd;
}

Result<Fd> adopt_stream_fd(int fd) {
  int type = 0, domain = 0;
  socklen_t len = sizeof type;
  bool stream_socket = ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
  len = sizeof domain;
  bool known = stream_socket && ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 &&
               (domain == AF_INET || domain == AF_INET6 || domain == AF_UNIX);
  // Node: createHandle() throws for anything but TCP / PIPE, which the primary answers EINVAL.
  if (!known) return Error::from_uv(UV_EINVAL, "bind");
  auto out = Fd::dup(fd);
  if (out) make_nonblocking_cloexec(out->get());
  return out;
}

bool is_inet(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 &&
         (ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
}

Status listen_fd(int fd, int backlog) {
  if (::listen(fd, backlog > 0 ? backlog : 511) != 0) return Error::from_uv(-errno, "listen");
  return Ok{};
}

Result<uint32_t> accept_queue_length(int listen_fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(listen_fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return Error::from_uv(-errno, "getsockopt");
  if (info.tcpi_state != TCP_LISTEN) return Error::from_uv(UV_EINVAL, "getsockopt");
  return info.tcpi_unacked;
}

bool is_listening(int fd) {
  int v = 0;
  socklen_t len = sizeof v;
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v != 0;
}

bool is_listening_tcp(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM && is_inet(fd) &&
         is_listening(fd);
}

Status refuse_new_connections(int fd) {
  if (!is_listening_tcp(fd)) return Error::from_uv(UV_EINVAL, "refuse_new_connections");
  // The filter sees the TCP header: byte 13 holds the flags; a SYN without ACK is dropped.
  sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),  // SYN | ACK
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0),
      BPF_STMT(BPF_RET | BPF_K, 0xffffffff),
  };
  sock_fprog prog{static_cast<unsigned short>(std::size(code)), code};
  if (::setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) != 0)
    return Error::from_uv(-errno, "setsockopt(SO_ATTACH_FILTER)");
  return Ok{};
}

Result<SockName> local_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return Error::from_uv(-errno, "getsockname");
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) return Error::from_uv(UV_EAFNOSUPPORT, "getsockname");
  char buf[INET6_ADDRSTRLEN] = {};
  SockName n;
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    n.family = "IPv6";
    n.port = ntohs(a->sin6_port);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    n.family = "IPv4";
    n.port = ntohs(a->sin_port);
  }
  n.address = buf;
  return n;
}

Result<Fd> accept_connection(int listen_fd) {
  int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return Error::from_uv(-errno, "accept");
  return Fd(fd);
}

void make_nonblocking_cloexec(int fd) {
  int on = 1;
  ::ioctl(fd, FIONBIO, &on);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

Status enable_reuseport_migration() {
  constexpr const char* kSysctl = "/proc/sys/net/ipv4/tcp_migrate_req";
  Fd fd(::open(kSysctl, O_RDWR | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    Fd ro(::open(kSysctl, O_RDONLY | O_CLOEXEC));  // not ours to change, but maybe already on
    char c = 0;
    if (ro && ::pread(ro.get(), &c, 1, 0) == 1 && c == '1') return Ok{};
    return Error::from_uv(-err, "open", kSysctl);
  }
  char c = 0;
  if (::pread(fd.get(), &c, 1, 0) == 1 && c == '1') return Ok{};
  if (::pwrite(fd.get(), "1\n", 2, 0) != 2) return Error::from_uv(-errno, "write", kSysctl);
  return Ok{};
}

void raise_nofile_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

}  // namespace uvcluster::cluster
