#include "uvcluster/cluster/reuseport_handle.hpp"

namespace uvcluster::cluster {

Result<std::unique_ptr<ReusePortHandle>> ReusePortHandle::open(BindSpec spec) {
  spec.reuseport = true;
  auto probe = bind_tcp(spec);
  if (!probe.ok()) return probe.error();
  if (spec.port == 0) {
    if (auto n = local_address(probe->get()); n.ok()) spec.port = n->port;
  }
  return std::make_unique<ReusePortHandle>(std::move(spec), std::move(*probe));
}

Result<std::unique_ptr<ServerHandle>> ReusePortHandle::open_for(const ServerHandleContext& ctx, const ServerQuery& q) {
  // Best effort: without it (not root, old kernel) a killed worker's queue is lost, as before.
  if (ctx.reuseport_migrate_queues) (void)enable_reuseport_migration();
  return open(q.spec).transform([](auto h) { return std::unique_ptr<ServerHandle>(std::move(h)); });
}

Result<Fd> ReusePortHandle::socket_for(int worker) {
  Fd out;
  if (probe_) {
    // The first worker takes the probe socket itself; the primary keeps no copy, so when that
    // worker dies its socket leaves the SO_REUSEPORT group instead of black-holing connections.
    out = std::move(probe_);
  } else {
    auto fd = bind_tcp(spec_);
    if (!fd.ok()) return fd.error();
    out = std::move(fd.value());
  }
  workers_.insert(worker);
  return out;
}

}  // namespace uvcluster::cluster
