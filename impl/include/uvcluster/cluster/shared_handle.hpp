#pragma once
// Node's SharedHandle (lib/internal/cluster/shared_handle.js): one bound, not yet listening
// socket per key, sent to every worker, which listens and accepts on it itself.
#include <set>

#include "uvcluster/cluster/server_handle.hpp"
#include "uvcluster/cluster/sockets.hpp"

namespace uvcluster::cluster {

class SharedHandle : public ServerHandle {
 public:
  explicit SharedHandle(const BindSpec& spec);
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);

  // Node's `errno` for this key: 0, or the negative bind error (then the key is dropped).
  int errnum() const { return errnum_; }
  // A dup of the shared socket for `worker`, or the negative errno.
  Result<Fd> socket_for(int worker);

  void add(int worker, AddReply reply) override;
  bool remove(int worker, bool gone) override;
  bool has(int worker) const override { return workers_.count(worker) != 0; }

 private:
  Fd fd_;
  int errnum_ = 0;
  std::set<int> workers_;
};

}  // namespace uvcluster::cluster
