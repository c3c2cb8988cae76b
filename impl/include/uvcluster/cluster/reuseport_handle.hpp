#pragma once
// Beyond Node: policy `reuseport` binds a fresh SO_REUSEPORT socket for each worker, so the
// kernel balances between per-worker accept queues. Unmodified Node workers take it like a
// SharedHandle's socket. listen(0): the first bind picks the port, later sockets join it.
#include "uvcluster/cluster/server_handle.hpp"
#include "uvcluster/cluster/sockets.hpp"

namespace uvcluster::cluster {

class ReusePortHandle : public SocketHandle {
 public:
  // Binds the first socket (its error is the key's, and the key is dropped); listen(0) fixes the
  // port there.
  static Result<std::unique_ptr<ReusePortHandle>> open(BindSpec spec);
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);

  Result<Fd> socket_for(int worker) override;  // a new socket in the port's SO_REUSEPORT group

  ReusePortHandle(BindSpec spec, Fd probe) : spec_(std::move(spec)), probe_(std::move(probe)) {}

 private:
  BindSpec spec_;
  Fd probe_;  // the first bind, handed to the first worker
};

}  // namespace uvcluster::cluster
