#pragma once
// The control plane of a named cluster: a unix socket, $UVCLUSTER_HOME/NAME.sock (default
// ~/.uvcluster/NAME.sock), through which any shell (`uvcluster status|reload|scale|stop|metrics`)
// drives the Supervisor. docs/control.md describes the protocol; in short:
//
//   request: one JSON object on one line, at most max_request_bytes, within request_timeout_ms
//     {"cmd":"status"} {"cmd":"metrics"} {"cmd":"reload"} {"cmd":"scale","instances":N} {"cmd":"stop"}
//   reply: one JSON object on one line, then the server closes the connection
//     {"ok":true,...}  or  {"ok":false,"error":{"code":"bad-request","message":"..."}}
//   `reload` is answered once the reload has ended (ok, or the error reload-failed); `stop` once
//   every worker has exited ({"ok":true,"exit_code":N}); the others at once.
//
// Who may talk to it: the directory is created 0700, the socket is 0600, and each peer's
// SO_PEERCRED uid must be ours or root — a refused peer gets the error `forbidden`. A bad,
// oversized, late, unknown or refused request is answered with an error and changes nothing.
// Starting: a socket left by a dead process (connect says ECONNREFUSED) is replaced; a live one
// of the same name is the error EADDRINUSE. The socket is removed when the supervisor is done
// (and when the server is destroyed).
// Threading and lifetime: loop thread only; keep the shared_ptr while the loop runs.
#include <uv.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "uvcluster/error.hpp"

namespace uvcluster::cluster {

class Supervisor;
template <class H>
class RequestServer;

// $UVCLUSTER_HOME, else $HOME/.uvcluster.
std::string control_directory();
// 1..64 of [A-Za-z0-9._-], not starting with '.': a file name, never a path.
bool valid_cluster_name(std::string_view name);
std::string control_socket_path(const std::string& directory, const std::string& name);

struct ControlOptions {
  std::string name;
  std::string directory = control_directory();
  size_t max_request_bytes = 4096;
  uint64_t request_timeout_ms = 10000;
  size_t max_clients = 16;
};

// status's reply body: the cluster and, per instance, its worker's pid, state, uptime, restarts,
// CPU seconds and RSS (from /proc) and connections handed out.
nlohmann::json status_json(Supervisor& sup, const std::string& name, int64_t uptime_ms);

class ControlServer : public std::enable_shared_from_this<ControlServer> {
  struct Key {
    explicit Key() = default;
  };

 public:
  static Result<std::shared_ptr<ControlServer>> start(uv_loop_t* loop, std::shared_ptr<Supervisor> sup,
                                                      ControlOptions options);
  ControlServer(Key, uv_loop_t* loop, std::shared_ptr<Supervisor> sup, ControlOptions options);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  const std::string& path() const { return path_; }
  // Stops listening and removes the socket; replies already being written are finished.
  void close();

 private:
  struct Waiters;
  Status bind_socket();
  void attach();
  void handle(uint64_t conn, std::string_view line);
  void answer(uint64_t conn, const nlohmann::json& reply);

  uv_loop_t* loop_;
  std::weak_ptr<Supervisor> sup_;
  ControlOptions opt_;
  std::string path_;
  uint64_t started_ms_ = 0;
  std::optional<std::pair<uint64_t, uint64_t>> socket_id_;  // (st_dev, st_ino) of our socket
  std::unique_ptr<RequestServer<uv_pipe_t>> server_;
  std::unique_ptr<Waiters> waiters_;
};

// The client side, blocking (for the CLI): sends `request` to the socket at `path` and returns
// the reply. Errors: ENOENT (no such cluster), ECONNREFUSED (its process is gone), EACCES,
// ETIMEDOUT (no reply within timeout_ms; < 0 waits as long as it takes), EPROTO (not a reply).
Result<nlohmann::json> control_request(const std::string& path, const nlohmann::json& request, int timeout_ms);

}  // namespace uvcluster::cluster
