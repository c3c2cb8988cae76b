#pragma once
// Node's SharedHandle (lib/internal/cluster/shared_handle.js): one bound, not yet listening
// socket per key, sent to every worker, which listens and accepts on it itself. The `reuseport`
// variant (beyond Node) binds a fresh SO_REUSEPORT socket for each worker instead, so the kernel
// balances between per-worker accept queues — unmodified Node workers take it like a shared fd.
#include <set>

#include "uvcluster/cluster/sockets.hpp"

namespace uvcluster::cluster {

class SharedHandle {
 public:
  explicit SharedHandle(const BindSpec& spec, bool per_worker_reuseport = false);

  // Node's `errno` for this key: 0, or the negative bind error (then the key is dropped).
  int errnum() const { return errnum_; }
  // A socket for `worker` (a dup of the shared one, or a new SO_REUSEPORT socket). Invalid Fd and
  // a negative errno in `err` on failure.
  Fd add(int worker, int& err);
  bool remove(int worker);  // true when no worker is left (the primary then drops the key)
  bool has(int worker) const { return workers_.count(worker) != 0; }
  int port() const { return spec_.port; }

 private:
  BindSpec spec_;
  bool reuseport_;
  Fd fd_;  // the shared socket (not used for reuseport after the port is known)
  int errnum_ = 0;
  std::set<int> workers_;
};

}  // namespace uvcluster::cluster
