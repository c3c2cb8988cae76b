#include "uvcluster/cluster/shared_handle.hpp"

#include "uvcluster/cluster/accept_turn.hpp"

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
  return accept_queue_length(socket_.fd.get()).value_or(0);
}

Result<std::unique_ptr<ServerHandle>> ExclusiveHandle::open_for(const ServerHandleContext&, const ServerQuery& q) {
  auto page = AcceptTurn::new_page();
  if (!page.ok()) return page.error();
  auto bound = bind_for(q);
  if (!bound.ok()) return bound.error();
  return std::unique_ptr<ServerHandle>(std::make_unique<ExclusiveHandle>(std::move(*bound), std::move(*page)));
}

void ExclusiveHandle::add(int worker, AddReply reply) {
  SharedHandle::add(worker, [reply = std::move(reply)](int errnum, Json fields, std::optional<ipc::OutgoingHandle> handle) {
    if (errnum == 0) fields["acceptTurn"] = true;
    reply(errnum, std::move(fields), std::move(handle));
  });
}

Result<Fd> ExclusiveHandle::accept_turn_for(int worker) const {
  if (!has(worker)) return Error::from_uv(UV_ENOENT, "acceptTurn");
  return Fd::dup(turn_page_.get());
}

}  // namespace uvcluster::cluster
