#pragma once
// Node's SharedHandle (lib/internal/cluster/shared_handle.js): one bound, not yet listening
// socket per key (TCP, unix socket, or the primary's own fd for listen({fd})), sent to every
// worker, which listens and accepts on it itself. The socket file of a unix socket is removed
// when the last worker leaves.
#include "uvcluster/cluster/server_handle.hpp"
#include "uvcluster/cluster/sockets.hpp"

namespace uvcluster::cluster {

class SharedHandle : public SocketHandle {
 public:
  explicit SharedHandle(const ServerQuery& q);
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);

  // Node's `errno` for this key: 0, or the negative bind error (then the key is dropped).
  int errnum() const { return errnum_; }
  // A dup of the shared socket for `worker`, or the negative errno.
  Result<Fd> socket_for(int worker) override;

 protected:
  template <class Handle>
  static Result<std::unique_ptr<ServerHandle>> open_as(const ServerQuery& q) {
    auto h = std::make_unique<Handle>(q);
    if (h->errnum() != 0) return Error::from_uv(h->errnum(), "bind");
    return std::unique_ptr<ServerHandle>(std::move(h));
  }

 private:
  void on_last_removed() override { socket_ = {}; }
  BoundSocket socket_;
  int errnum_ = 0;
};

}  // namespace uvcluster::cluster
