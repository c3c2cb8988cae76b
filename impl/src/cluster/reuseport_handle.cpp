#include "uvcluster/cluster/reuseport_handle.hpp"

namespace uvcluster::cluster {

ReusePortHandle::ReusePortHandle(const BindSpec& spec) : spec_(spec) {
  spec_.reuseport = true;
  auto fd = bind_tcp(spec_);
  if (!fd.ok()) {
    errnum_ = fd.error().errnum;
    return;
  }
  probe_ = std::move(fd.value());
  if (spec_.port == 0) {
    if (auto n = local_address(probe_.get()); n.ok()) spec_.port = n->port;
  }
}

Result<std::unique_ptr<ServerHandle>> ReusePortHandle::open_for(const ServerHandleContext& ctx, const ServerQuery& q) {
  // Best effort: without it (not root, old kernel) a killed worker's queue is lost, as before.
  if (ctx.reuseport_migrate_queues) (void)enable_reuseport_migration();
  auto h = std::make_unique<ReusePortHandle>(q.spec);
  if (h->errnum() != 0) return Error::from_uv(h->errnum(), "bind");
  return std::unique_ptr<ServerHandle>(std::move(h));
}

Result<Fd> ReusePortHandle::socket_for(int worker) {
  if (errnum_ != 0) return Error::from_uv(errnum_, "bind");
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
