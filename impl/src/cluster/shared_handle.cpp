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

void SharedHandle::stop_accepting() {
  // Not TCP, or not listening yet: nothing to refuse, and nothing waits in a backlog.
  refusing_ = socket_.fd && refuse_new_connections(socket_.fd.get()).ok();
}

size_t SharedHandle::waiting() const {
  if (!socket_.fd || !refusing_) return 0;
  return backlog_length(socket_.fd.get()).value_or(0);
}

}  // namespace uvcluster::cluster
