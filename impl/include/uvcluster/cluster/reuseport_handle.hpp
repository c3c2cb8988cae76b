#pragma once
// Beyond Node: policy `reuseport` binds a fresh SO_REUSEPORT socket for each worker, so the
// kernel balances between per-worker accept queues. Unmodified Node workers take it like a
// SharedHandle's socket. listen(0): the first bind picks the port, later sockets join it.
#include "uvcluster/cluster/server_handle.hpp"
#include "uvcluster/cluster/sockets.hpp"

namespace uvcluster::cluster {

class ReusePortHandle : public SocketHandle {
 public:
  explicit ReusePortHandle(const BindSpec& spec);
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);

  int errnum() const { return errnum_; }  // the first bind's error (then the key is dropped)
  Result<Fd> socket_for(int worker) override;      // a new socket in the port's SO_REUSEPORT group

 private:
  BindSpec spec_;
  Fd probe_;  // the first bind, handed to the first worker
  int errnum_ = 0;
};

}  // namespace uvcluster::cluster
