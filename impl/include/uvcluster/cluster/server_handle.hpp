#pragma once
// The primary's handle for one server key, Node's `handle` in lib/internal/cluster/primary.js:
// RoundRobinHandle (the primary accepts and hands connections out), SharedHandle (every worker
// gets the bound socket and accepts itself) and ReusePortHandle (one SO_REUSEPORT socket per
// worker) and UdpHandle (a SharedHandle for UDP, never round-robin) implement it. The primary only
// calls add/remove; a new kind of handle is a new file plus one line in handle_kinds()
// (server_handle.cpp). TCP, unix-socket and UDP servers and listen({fd}) are all served.
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/ipc/channel.hpp"

namespace uvcluster::cluster {

struct PrimaryStats;


// What kind of server a worker asks for (Node tells them apart by addressType and port).
enum class Transport { tcp, pipe, udp };

// A parsed queryServer (Node's message fields, checked).
struct ServerQuery {
  std::string key{};
  Address where{};
  Transport transport = Transport::tcp;
  BindSpec spec{};  // tcp
  // pipe: the path the primary binds. The worker sends an absolute path; Node's primary binds it
  // relative to its own cwd when that is shorter, so a socket deep in a long directory still
  // fits sun_path (~108 bytes).
  std::string path{};
  bool readable_all = false;  // pipe, round-robin only: Node's SharedHandle never chmods
  bool writable_all = false;
  std::string udp_address{};  // udp: the worker's looked-up IP
  int udp_port = 0;
  int udp_flags = 0;       // kUdpIpv6Only | kUdpReuseAddr
  std::optional<int> fd{};  // listen({fd: N}): the *primary's* descriptor N, as in Node
  int backlog = 511;
};
// Node's primary would throw on a malformed query; we answer the worker with this errno instead.
Result<ServerQuery> parse_query(const Json& msg);

// The socket for `q`, bound and not listening (Node's net._createServerHandle and
// dgram._createSocketHandle).
Result<BoundSocket> bind_for(const ServerQuery& q);

class ServerHandle {
 public:
  // errnum 0 = success; `fields` go into the queryServer reply (e.g. rr's sockname); `handle` is
  // sent with it (a shared socket). Node's handle.add(worker, send).
  using AddReply = std::function<void(int errnum, Json fields, std::optional<ipc::OutgoingHandle> handle)>;

  virtual ~ServerHandle() = default;
  virtual void add(int worker, AddReply reply) = 0;
  // Node's handle.remove(worker). `gone`: the worker can no longer answer (exit, channel closed).
  // True when no worker is left: the primary then drops the key (and the handle closes).
  virtual bool remove(int worker, bool gone) = 0;
  virtual bool has(int worker) const = 0;
  // Adds this handle's hand-off and accept counters (rr only).
  virtual void count(PrimaryStats&) const {}
  // A drain's first step: stop taking connections and keep serving those already taken (rr: the
  // listening socket closes, what the kernel had queued on it taken first; a shared or steered
  // reuseport TCP socket: new SYNs are dropped). Default: nothing to stop.
  virtual void stop_accepting() {}
  // Connections taken that no worker has yet (rr: the queue; a refusing socket: its backlog).
  virtual size_t waiting() const { return 0; }
  // The accept turn's memfd (accept_turn.hpp) that `worker`'s acceptor shares with the other
  // workers on this socket, for the worker's {act:"acceptTurn"} (exclusive only); an error
  // otherwise.
  virtual Result<Fd> accept_turn_for(int /*worker*/) const { return Error::from_uv(UV_ENOENT, "acceptTurn"); }

  Json data = nullptr;  // the first worker's server data (TLS ticket keys), returned to all
  uint64_t serial = 0;  // tells a reply for this handle from one for a later handle of the key
};

// A handle that answers each worker's query with a listening socket of its own to accept on
// (SharedHandle: a dup of one socket; ReusePortHandle: one SO_REUSEPORT socket each).
class SocketHandle : public ServerHandle {
 public:
  // The socket for `worker` (recorded as a member), or the error for its listen.
  virtual Result<Fd> socket_for(int worker) = 0;
  // How the socket travels: net.Native (TCP, pipe) or dgram.Native (UDP), as Node sends it.
  virtual ipc::HandleType handle_type() const { return ipc::HandleType::native; }
  void add(int worker, AddReply reply) override;
  bool remove(int worker, bool gone) override;
  bool has(int worker) const override { return workers_.count(worker) != 0; }

 protected:
  virtual void on_last_removed() {}
  std::set<int> workers_;
};

// What a handle kind needs from the primary.
struct ServerHandleContext {
  uv_loop_t* loop = nullptr;
  Policy policy = Policy::rr;
  uint64_t handoff_timeout_ms = 10000;
  int rr_window = 1;  // rr: hand-offs in flight per worker
  bool reuseport_migrate_queues = true;
  bool reuseport_steering = true;
  std::function<std::optional<int>(int worker)> pid_of{};
  std::function<void(const SteeringChange&)> steering_changed{};
  std::function<void(const Error&)> steering_unavailable{};
  // rr: how a connection reaches `worker` ({act:"newconn"} + the fd, with the primary's seq/ack).
  std::function<HandOffSender(int worker)> newconn{};
};

struct HandleKind {
  const char* name;
  bool (*serves)(Policy policy, const ServerQuery& query);
  Result<std::unique_ptr<ServerHandle>> (*open)(const ServerHandleContext& ctx, const ServerQuery& query);
};
// The first kind whose `serves` is true makes the handle for a new key.
const std::vector<HandleKind>& handle_kinds();

}  // namespace uvcluster::cluster
