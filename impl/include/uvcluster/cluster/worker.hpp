#pragma once
// The worker side of Node's cluster protocol for C++ programs (Node's lib/internal/cluster/child.js)
// — a C++ worker can be forked by a Node primary or by cluster::Primary.
//
//   if (cluster::is_worker()) {
//     auto w = cluster::Worker::start(loop);            // opens the channel, sends `online`
//     (*w)->listen({.port = 8000}, on_listening, [](Fd conn) { /* serve */ });
//   }
//
// Every connection arrives as an accepted, non-blocking, close-on-exec socket Fd, whatever the
// primary's policy: rr (from `newconn`), shared (`none`/`reuseport`: this worker accepts on the
// socket it was sent, driven by uv_poll; policy `one` or `drain`), or `exclusive` (the shared
// socket sits in a private epoll set with EPOLLIN|EPOLLEXCLUSIVE; a waiter thread blocks on that
// set and hands each wake-up to the loop thread, which accepts — see exclusive_waiter.hpp).
// Shared sockets are accepted on by cluster::Acceptor (acceptor.hpp): out of fds, the worker
// stops watching the socket and retries on a timer instead of spinning.
#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "uvcluster/cluster/acceptor.hpp"
#include "uvcluster/cluster/protocol.hpp"
#include "uvcluster/detail/event.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"
#include "uvcluster/ipc/channel.hpp"

namespace uvcluster::cluster {

// NODE_UNIQUE_ID present (even empty) → this process is a cluster worker (Node's rule).
bool is_worker();
bool is_primary();

struct ListenOptions {
  std::optional<std::string> host{};  // numeric IP; nullopt = Node's listen(port) (address null)
  int port = 0;
  int backlog = 511;
  AcceptPolicy accept_policy = AcceptPolicy::one;
  // Use EPOLLEXCLUSIVE on a shared socket. nullopt: when the primary says UVCLUSTER_SCHED_POLICY=exclusive.
  std::optional<bool> exclusive{};
  // exclusive only: after this many accepts, re-register the socket in the epoll set so this
  // worker moves to the back of the wait queue (nginx 1.21.6 does it every 16). 0 = never.
  int exclusive_rotate = 0;
  // exclusive only: when the primary offers one (cluster::Primary with policy exclusive), accept
  // in turn with the other workers on the socket (accept_turn.hpp); false = rotation only.
  bool accept_turn = true;
};

// How a server's connections reach this worker: handed over by the primary (rr), accepted here
// on the shared socket (shared), or accepted here through an EPOLLEXCLUSIVE wait (exclusive).
enum class ListenMode { rr, shared, exclusive };
const char* to_string(ListenMode m);  // "rr" | "shared" | "exclusive"

// What listen() reports: the address actually bound.
struct ListenAddress {
  std::string address;
  int port = 0;
  int address_type = 4;
  ListenMode mode = ListenMode::rr;
  bool accept_turn = false;  // exclusive: this worker accepts in turn with its peers
};

// The accept counters of this worker's shared sockets, summed over its servers (AcceptorCounters:
// `errors` = failed accepts by errno, EMFILE = 24), plus rr hand-offs: `accepted` counts both.
struct WorkerCounters : AcceptorCounters {
  uint64_t refused = 0;  // rr newconn answered accepted:false
};

class Worker {
 public:
  // Opens the parent's channel (NODE_CHANNEL_FD), removes NODE_UNIQUE_ID from the environment as
  // Node does, and sends {act:"online"}. ERR_IPC_NO_CHANNEL / ERR_CLUSTER_NOT_WORKER on failure.
  static Result<std::unique_ptr<Worker>> start(uv_loop_t* loop);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // The worker's own state, as Node's cluster.worker.state spells it (to_string).
  enum class State { online, listening, disconnecting, destroying };

  int id() const;
  State state() const;
  bool exited_after_disconnect() const;
  bool connected() const;

  // Listens through queryServer. Returns a server id (for close_server). on_listening gets the
  // bound address or an error shaped like Node's (code "EADDRINUSE", syscall "bind").
  int listen(ListenOptions options, std::function<void(Result<ListenAddress>)> on_listening,
             std::function<void(Fd conn)> on_connection);
  // Closes one server: sends {act:"close", key}; stops accepting.
  void close_server(int server_id);

  // Worker-initiated graceful disconnect (cluster.worker.disconnect()): closes servers, tells the
  // primary exitedAfterDisconnect, waits for its ack, then disconnects the channel.
  void disconnect();
  // cluster.worker.destroy(): as disconnect() with state "destroying". Node then calls
  // process.exit(0); a C++ worker ends when its loop has nothing left (or exits itself).
  void destroy();

  bool send(const Json& message);
  void on_message(std::function<void(const Json&)> fn);
  // The channel went away: by the primary's `disconnect` act (servers are already closed) or
  // because the primary died. Node then exits(0) unless exitedAfterDisconnect; a C++ worker
  // decides itself — servers are closed, so the loop ends once its own connections are done.
  void on_disconnect(std::function<void()> fn);

  const WorkerCounters& counters() const;
  ipc::Channel& channel();

  struct Impl;
  explicit Worker(std::shared_ptr<Impl> impl);  // use start()

 private:
  std::shared_ptr<Impl> impl_;
};

const char* to_string(Worker::State s);  // "online" | "listening" | "disconnecting" | "destroying"

}  // namespace uvcluster::cluster
