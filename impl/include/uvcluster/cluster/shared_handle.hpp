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
  explicit SharedHandle(BoundSocket socket) : socket_(std::move(socket)) {}
  // Binds for `q`; a bind error is Node's `errno` for this key (the primary then drops the key).
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);

  // A dup of the shared socket for `worker`.
  Result<Fd> socket_for(int worker) override;
  // TCP: new connections are refused (their SYNs dropped); the workers empty the backlog.
  void stop_accepting() override;
  size_t waiting() const override;  // TCP: the socket's backlog

 protected:
  template <class Handle>
  static Result<std::unique_ptr<ServerHandle>> open_as(const ServerQuery& q) {
    auto bound = bind_for(q);
    if (!bound.ok()) return bound.error();
    return std::unique_ptr<ServerHandle>(std::make_unique<Handle>(std::move(*bound)));
  }

 private:
  void on_last_removed() override { socket_ = {}; }
  BoundSocket socket_;
  bool refusing_ = false;  // stop_accepting() attached the filter
};

// Policy exclusive (ours): a SharedHandle whose workers also share an accept turn, one memfd
// page per key made here (the primary never takes the turn itself). The queryServer reply says
// {acceptTurn: true}; a C++ worker then asks for the page ({act:"acceptTurn", key}) and accepts
// in turn with its peers; a Node worker ignores the field and accepts as under `none`.
class ExclusiveHandle : public SharedHandle {
 public:
  ExclusiveHandle(BoundSocket socket, Fd turn_page) : SharedHandle(std::move(socket)), turn_page_(std::move(turn_page)) {}
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);

  void add(int worker, AddReply reply) override;
  Result<Fd> accept_turn_for(int worker) const override;

 private:
  Fd turn_page_;
};

}  // namespace uvcluster::cluster
