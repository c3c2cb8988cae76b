#include "uvcluster/cluster/shared_handle.hpp"

#include <cerrno>

namespace uvcluster::cluster {

SharedHandle::SharedHandle(const BindSpec& spec) {
  auto fd = bind_tcp(spec);
  if (!fd.ok()) {
    errnum_ = fd.error().errnum;
    return;
  }
  fd_ = std::move(fd.value());
}

Result<std::unique_ptr<ServerHandle>> SharedHandle::open_for(const ServerHandleContext&, const ServerQuery& q) {
  auto h = std::make_unique<SharedHandle>(q.spec);
  if (h->errnum() != 0) return Error::from_uv(h->errnum(), "bind");
  return std::unique_ptr<ServerHandle>(std::move(h));
}

Result<Fd> SharedHandle::socket_for(int worker) {
  if (errnum_ != 0) return Error::from_uv(errnum_, "bind");
  Fd out = Fd::dup_of(fd_.get());
  if (!out) return Error::from_uv(-errno, "dup");
  workers_.insert(worker);
  return out;
}

}  // namespace uvcluster::cluster
