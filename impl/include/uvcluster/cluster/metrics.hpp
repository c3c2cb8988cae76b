#pragma once
// A Supervisor's metrics in Prometheus' text exposition format (version 0.0.4), and an HTTP
// endpoint serving them from the supervisor's own loop.
//
// The families (docs/control.md lists them with their meaning):
//   uvcluster_workers{state}                        gauge    slots by state (every state listed)
//   uvcluster_worker_processes                      gauge    worker processes alive
//   uvcluster_restarts_total                        counter
//   uvcluster_worker_restarts_total{instance}       counter
//   uvcluster_worker_connections_total{instance}    counter  rr connections handed to the slot
//   uvcluster_worker_cpu_seconds_total{instance}    counter  its current worker's user+system
//   uvcluster_worker_resident_memory_bytes{instance} gauge
//   uvcluster_worker_uptime_seconds{instance}       gauge
//   uvcluster_rr_queue_length                       gauge    connections waiting in the primary
//   uvcluster_rr_in_flight                          gauge    hand-offs awaiting an answer
//   uvcluster_handoffs_total{result}                counter  accepted|refused|requeued|dropped|timed_out
//   uvcluster_handoff_latency_seconds               histogram newconn sent → the worker's answer
//   uvcluster_primary_cpu_seconds_total             counter  this process
//   uvcluster_primary_resident_memory_bytes         gauge
//
// Why the HTTP endpoint is ours and not prometheus-cpp's Exposer: the Exposer runs civetweb's
// own threads, and a Supervisor lives on one loop thread; serving on that loop needs no locks
// and no threads. prometheus-cpp's core (its data model and TextSerializer) writes the text.
#include <uv.h>

#include <memory>
#include <string>

#include "uvcluster/error.hpp"

namespace uvcluster::cluster {

class Supervisor;
template <class H>
class RequestServer;

std::string prometheus_text(Supervisor& sup);

// GET /metrics on 127.0.0.1:port (0: a free port); any other path is 404, another method 405.
class MetricsServer {
  struct Key {
    explicit Key() = default;
  };

 public:
  explicit MetricsServer(Key) {}
  // Closes by itself once the supervisor is done.
  static Result<std::unique_ptr<MetricsServer>> start(uv_loop_t* loop, const std::shared_ptr<Supervisor>& sup, int port);
  ~MetricsServer();
  int port() const { return port_; }
  void close();

 private:
  std::shared_ptr<RequestServer<uv_tcp_t>> server_;
  int port_ = 0;
};

}  // namespace uvcluster::cluster
