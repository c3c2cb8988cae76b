#include "uvcluster/cluster/shared_handle.hpp"

#include <cerrno>

namespace uvcluster::cluster {

SharedHandle::SharedHandle(const ServerQuery& q) {
  auto bound = bind_for(q);
  if (!bound.ok()) {
    errnum_ = bound.error().errnum;
    return;
  }
  socket_ = std::move(bound.value());
}

Result<std::unique_ptr<ServerHandle>> SharedHandle::open_for(const ServerHandleContext&, const ServerQuery& q) {
  return open_as<SharedHandle>(q);
}

Result<Fd> SharedHandle::socket_for(int worker) {
  if (errnum_ != 0) return Error::from_uv(errnum_, "bind");
  Fd out = Fd::dup_of(socket_.fd.get());
  if (!out) return Error::from_uv(-errno, "dup");
  workers_.insert(worker);
  return out;
}

}  // namespace uvcluster::cluster
