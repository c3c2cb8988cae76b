#include "uvcluster/cluster/sockets.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <uv.h>

#include <cerrno>
#include <cstring>

namespace uvcluster::cluster {
namespace {

Result<Fd> bind_one(const char* ip, int family, const BindSpec& spec) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (spec.port < 0 || spec.port > 65535) return Error::from_uv(UV_EINVAL, "bind");
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(spec.port));
    if (inet_pton(AF_INET6, ip, &a->sin6_addr) != 1) return Error::from_uv(UV_EINVAL, "bind");
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(spec.port));
    if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) return Error::from_uv(UV_EINVAL, "bind");
    len = sizeof *a;
  }
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
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    Error e = Error::from_uv(-errno, "bind");
    return e;
  }
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
  int family = spec.address->find(':') != std::string::npos ? AF_INET6 : AF_INET;
  return bind_one(spec.address->c_str(), family, spec);
}

Status listen_fd(int fd, int backlog) {
  if (::listen(fd, backlog > 0 ? backlog : 511) != 0) return Error::from_uv(-errno, "listen");
  return Ok{};
}

bool is_listening(int fd) {
  int v = 0;
  socklen_t len = sizeof v;
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v != 0;
}

Result<SockName> local_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return Error::from_uv(-errno, "getsockname");
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

Fd accept_connection(int listen_fd) {
  return Fd(::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
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
