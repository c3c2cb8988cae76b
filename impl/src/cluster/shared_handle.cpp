#include "uvcluster/cluster/shared_handle.hpp"

#include <cerrno>

namespace uvcluster::cluster {

SharedHandle::SharedHandle(const BindSpec& spec, bool per_worker_reuseport)
    : spec_(spec), reuseport_(per_worker_reuseport) {
  spec_.reuseport = per_worker_reuseport;
  auto fd = bind_tcp(spec_);
  if (!fd.ok()) {
    errnum_ = fd.error().errnum;
    return;
  }
  fd_ = std::move(fd.value());
  if (reuseport_ && spec_.port == 0) {
    // listen(0): the first bind picks the port; every later per-worker socket joins that port.
    if (auto n = local_address(fd_.get()); n.ok()) spec_.port = n->port;
  }
}

Fd SharedHandle::add(int worker, int& err) {
  err = errnum_;
  if (errnum_ != 0) return Fd{};
  Fd out;
  if (reuseport_) {
    // The first worker takes the probe socket itself; the primary keeps no copy, so when that
    // worker dies its socket leaves the SO_REUSEPORT group instead of black-holing connections.
    if (fd_) {
      out = std::move(fd_);
    } else {
      auto fd = bind_tcp(spec_);
      if (!fd.ok()) {
        err = fd.error().errnum;
        return Fd{};
      }
      out = std::move(fd.value());
    }
  } else {
    out = Fd::dup_of(fd_.get());
    if (!out) {
      err = -errno;
      return Fd{};
    }
  }
  workers_.insert(worker);
  return out;
}

bool SharedHandle::remove(int worker) {
  workers_.erase(worker);
  if (workers_.empty()) fd_.reset();
  return workers_.empty();
}

}  // namespace uvcluster::cluster
