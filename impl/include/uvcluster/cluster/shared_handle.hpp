#pragma once
// Node's SharedHandle (lib/internal/cluster/shared_handle.js): one bound, not yet listening
// socket per key, sent to every worker, which listens and accepts on it itself.
#include "uvcluster/cluster/server_handle.hpp"
#include "uvcluster/cluster/sockets.hpp"

namespace uvcluster::cluster {

class SharedHandle : public SocketHandle {
 public:
  explicit SharedHandle(const BindSpec& spec);
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);

  // Node's `errno` for this key: 0, or the negative bind error (then the key is dropped).
  int errnum() const { return errnum_; }
  // A dup of the shared socket for `worker`, or the negative errno.
  Result<Fd> socket_for(int worker) override;

 private:
  void on_last_removed() override { fd_.reset(); }
  Fd fd_;
  int errnum_ = 0;
};

}  // namespace uvcluster::cluster
