#include "uvcluster/cluster/shared_handle.hpp"

namespace uvcluster::cluster {

Result<std::unique_ptr<ServerHandle>> SharedHandle::open_for(const ServerHandleContext&, const ServerQuery& q) {
  return open_as<SharedHandle>(q);
}

Result<Fd> SharedHandle::socket_for(int worker) {
  auto out = Fd::dup(socket_.fd.get());
  if (out.ok()) workers_.insert(worker);
  return out;
}

}  // namespace uvcluster::cluster
