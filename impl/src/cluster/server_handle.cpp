#include "uvcluster/cluster/server_handle.hpp"

#include <climits>
#include <cstdint>
#include <filesystem>

#include "uvcluster/cluster/reuseport_handle.hpp"
#include "uvcluster/cluster/round_robin_handle.hpp"
#include "uvcluster/cluster/shared_handle.hpp"
#include "uvcluster/cluster/udp_handle.hpp"

namespace uvcluster::cluster {

namespace {

// Node's primary: path.relative(process.cwd(), address), unless the absolute path is shorter.
std::string shortest_pipe_path(const std::string& path) {
  std::error_code ec;
  auto cwd = std::filesystem::current_path(ec);
  if (ec) return path;
  std::string relative = std::filesystem::path(path).lexically_relative(cwd).string();
  if (relative.empty() || path.size() < relative.size()) return path;
  return relative;
}

bool is_int(const Json& j, int64_t lo, int64_t hi) {
  return j.is_number_integer() && j.get<int64_t>() >= lo && j.get<int64_t>() <= hi;
}

}  // namespace

Result<ServerQuery> parse_query(const Json& msg) {
  ServerQuery q;
  q.key = server_key(msg);
  auto field = [&](const char* name) -> const Json& {
    static const Json absent;
    auto it = msg.find(name);
    return it == msg.end() ? absent : *it;
  };
  const Json& address = field("address");
  const Json& port = field("port");
  const Json& at = field("addressType");
  if (address.is_string()) q.where.address = address.get<std::string>();
  q.where.address_type = at;
  if (is_int(port, -1, 65535)) q.where.port = port.get<int>();
  if (auto b = field("backlog"); b.is_number_integer() && b.get<int>() > 0) q.backlog = b.get<int>();
  const Json& flags = field("flags");
  int flag_bits = flags.is_number_integer() ? flags.get<int>() : 0;
  // Node's primary would throw on a malformed query; the worker gets an errno instead.
  if (const Json& fd = field("fd"); is_int(fd, 0, INT32_MAX)) {
    q.fd = fd.get<int>();
    return q;
  }
  if (at == "udp4" || at == "udp6") {
    if (!is_int(port, 0, 65535)) return Error::from_uv(UV_EINVAL, "bind");
    q.transport = Transport::udp;
    q.udp_address = address.is_string() ? address.get<std::string>() : (at == "udp4" ? "0.0.0.0" : "::");
    q.udp_port = port.get<int>();
    q.udp_flags = flag_bits;
    return q;
  }
  if (port.is_number_integer() && port.get<int64_t>() < 0) {
    // A unix socket (Node: port -1, addressType -1, address = the worker's absolute path).
    if (!address.is_string() || address.get_ref<const std::string&>().empty()) return Error::from_uv(UV_EINVAL, "listen");
    q.transport = Transport::pipe;
    q.path = shortest_pipe_path(address.get<std::string>());
    q.readable_all = field("readableAll") == true;
    q.writable_all = field("writableAll") == true;
    return q;
  }
  if (!(at == 4 || at == 6)) return Error::from_uv(UV_ENOTSUP, "listen");
  if (!is_int(port, 0, 65535)) return Error::from_uv(UV_EINVAL, "listen");
  q.spec.address = q.where.address;
  q.spec.port = q.where.port;
  q.spec.address_type = at.get<int>();
  q.spec.ipv6_only = (flag_bits & 1) != 0;
  return q;
}

Result<BoundSocket> bind_for(const ServerQuery& q) {
  if (q.fd) {
    auto fd = adopt_stream_fd(*q.fd);
    if (!fd.ok()) return fd.error();
    return BoundSocket{std::move(fd.value()), {}};
  }
  Result<Fd> fd = Error::from_uv(UV_ENOTSUP, "listen");
  switch (q.transport) {
    case Transport::pipe: return bind_pipe(q.path);
    case Transport::udp: fd = bind_udp(q.udp_address, q.udp_port, q.udp_flags); break;
    case Transport::tcp: fd = bind_tcp(q.spec); break;
  }
  if (!fd.ok()) return fd.error();
  return BoundSocket{std::move(fd.value()), {}};
}

void SocketHandle::add(int worker, AddReply reply) {
  auto fd = socket_for(worker);
  if (!fd.ok()) return reply(fd.error().errnum, {}, std::nullopt);
  reply(0, {}, ipc::OutgoingHandle{handle_type(), std::move(fd.value()), std::nullopt});
}

bool SocketHandle::remove(int worker, bool) {
  workers_.erase(worker);
  if (workers_.empty()) on_last_removed();
  return workers_.empty();
}

const std::vector<HandleKind>& handle_kinds() {
  static const std::vector<HandleKind> kinds = {
      // UDP is connectionless: never round-robin (Node), whatever the policy.
      {"udp", [](Policy, const ServerQuery& q) { return q.transport == Transport::udp; }, &UdpHandle::open_for},
      // Sticky keys on the client's IP address: a unix-socket client has none, so it gets rr.
      {"sticky", [](Policy p, const ServerQuery& q) { return p == Policy::sticky && q.transport == Transport::tcp; },
       &RoundRobinHandle::open_for},
      {"round-robin", [](Policy p, const ServerQuery&) { return p == Policy::rr || p == Policy::sticky; },
       &RoundRobinHandle::open_for},
      {"reuseport", [](Policy p, const ServerQuery& q) { return p == Policy::reuseport && q.transport == Transport::tcp && !q.fd; },
       &ReusePortHandle::open_for},
      {"exclusive", [](Policy p, const ServerQuery&) { return p == Policy::exclusive; }, &ExclusiveHandle::open_for},
      {"shared", [](Policy, const ServerQuery&) { return true; }, &SharedHandle::open_for},
  };
  return kinds;
}

}  // namespace uvcluster::cluster
