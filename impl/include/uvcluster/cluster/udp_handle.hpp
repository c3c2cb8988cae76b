#pragma once
// UDP (dgram) servers in workers, as Node's primary serves them: a SharedHandle whatever the
// policy (connectionless, nothing to round-robin). The primary binds once per key
// (dgram._createSocketHandle: the worker's address, port and flags UV_UDP_IPV6ONLY /
// UV_UDP_REUSEADDR) and sends every worker a dup as `dgram.Native`; each worker reads from it, so
// bind(0) gives all workers one port. `exclusive: true` binds never reach the primary.
#include "uvcluster/cluster/shared_handle.hpp"

namespace uvcluster::cluster {

class UdpHandle : public SharedHandle {
 public:
  using SharedHandle::SharedHandle;
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext&, const ServerQuery& q) {
    return open_as<UdpHandle>(q);
  }
  ipc::HandleType handle_type() const override { return ipc::HandleType::dgram_native; }
};

}  // namespace uvcluster::cluster
