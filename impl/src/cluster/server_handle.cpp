#include "uvcluster/cluster/server_handle.hpp"

#include "uvcluster/cluster/reuseport_handle.hpp"
#include "uvcluster/cluster/round_robin_handle.hpp"
#include "uvcluster/cluster/shared_handle.hpp"

namespace uvcluster::cluster {

Result<ServerQuery> parse_query(const Json& msg) {
  ServerQuery q;
  q.key = server_key(msg);
  if (auto it = msg.find("address"); it != msg.end() && it->is_string()) q.where.address = it->get<std::string>();
  if (auto it = msg.find("addressType"); it != msg.end()) q.where.address_type = *it;
  auto port = msg.find("port");
  bool port_ok = port != msg.end() && port->is_number_integer() && port->get<int64_t>() >= 0 &&
                 port->get<int64_t>() <= 65535;
  if (port_ok) q.where.port = port->get<int>();
  // Only TCP is served: unix pipes, UDP and listen({fd}) answer ENOTSUP rather than crashing the
  // primary (Node would throw for a bad port inside the primary).
  const Json& at = q.where.address_type;
  bool tcp = at.is_number_integer() && (at.get<int>() == 4 || at.get<int>() == 6);
  auto fd = msg.find("fd");
  bool has_fd = fd != msg.end() && fd->is_number_integer() && fd->get<int>() >= 0;
  if (!tcp || has_fd) return Error::from_uv(UV_ENOTSUP, "listen");
  if (!port_ok) return Error::from_uv(UV_EINVAL, "listen");
  q.spec.address = q.where.address;
  q.spec.port = q.where.port;
  q.spec.address_type = at.get<int>();
  if (auto f = msg.find("flags"); f != msg.end() && f->is_number_integer()) q.spec.ipv6_only = (f->get<int>() & 1) != 0;
  if (auto b = msg.find("backlog"); b != msg.end() && b->is_number_integer() && b->get<int>() > 0)
    q.backlog = b->get<int>();
  return q;
}

void SocketHandle::add(int worker, AddReply reply) {
  auto fd = socket_for(worker);
  if (!fd.ok()) return reply(fd.error().errnum, {}, std::nullopt);
  reply(0, {}, ipc::OutgoingHandle{ipc::HandleType::native, std::move(fd.value()), std::nullopt});
}

bool SocketHandle::remove(int worker, bool) {
  workers_.erase(worker);
  if (workers_.empty()) on_last_removed();
  return workers_.empty();
}

const std::vector<HandleKind>& handle_kinds() {
  static const std::vector<HandleKind> kinds = {
      {"round-robin", [](Policy p, const ServerQuery&) { return p == Policy::rr; }, &RoundRobinHandle::open_for},
      {"sticky", [](Policy p, const ServerQuery&) { return p == Policy::sticky; }, &RoundRobinHandle::open_for},
      {"reuseport", [](Policy p, const ServerQuery&) { return p == Policy::reuseport; }, &ReusePortHandle::open_for},
      {"shared", [](Policy, const ServerQuery&) { return true; }, &SharedHandle::open_for},
  };
  return kinds;
}

}  // namespace uvcluster::cluster
