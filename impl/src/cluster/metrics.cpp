#include "uvcluster/cluster/metrics.hpp"

#include <unistd.h>

#include <prometheus/text_serializer.h>

#include <sstream>
#include <string_view>

#include "request_server.hpp"
#include "uvcluster/cluster/process_usage.hpp"
#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/cluster/supervisor.hpp"

namespace uvcluster::cluster {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily family(std::string name, std::string help, MetricType type) {
  return MetricFamily{std::move(name), std::move(help), type, {}};
}

ClientMetric sample(double value, MetricType type, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) m.counter.value = value;
  else m.gauge.value = value;
  return m;
}

void add(MetricFamily& f, double value, std::vector<ClientMetric::Label> labels = {}) {
  f.metric.push_back(sample(value, f.type, std::move(labels)));
}

ClientMetric latency_histogram(const PrimaryStats::HandOffLatency& l) {
  ClientMetric m;
  m.histogram.sample_count = l.count;
  m.histogram.sample_sum = l.sum_seconds;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < l.counts.size(); ++i) {
    cumulative += l.counts[i];
    m.histogram.bucket.push_back({cumulative, PrimaryStats::HandOffLatency::kBoundsSeconds[i]});
  }
  return m;  // the serializer adds le="+Inf" = sample_count
}

}  // namespace

std::string prometheus_text(Supervisor& sup) {
  SupervisorStats s = sup.stats();
  std::vector<MetricFamily> out;

  auto workers = family("uvcluster_workers", "Instances (slots) by state.", MetricType::Gauge);
  using State = InstanceStatus::State;
  for (State st : {State::starting, State::up, State::backoff, State::errored, State::stopped}) {
    int n = 0;
    for (auto& i : s.instances) n += i.state == st;
    add(workers, n, {{"state", to_string(st)}});
  }
  out.push_back(std::move(workers));
  auto processes = family("uvcluster_worker_processes", "Worker processes alive, reload replacements included.",
                          MetricType::Gauge);
  add(processes, static_cast<double>(s.live));
  out.push_back(std::move(processes));
  auto restarts = family("uvcluster_restarts_total", "Restarts of crashed workers.", MetricType::Counter);
  add(restarts, s.restarts);
  out.push_back(std::move(restarts));

  auto slot_restarts = family("uvcluster_worker_restarts_total", "Restarts of the instance's workers.", MetricType::Counter);
  auto connections = family("uvcluster_worker_connections_total",
                            "Connections handed to the instance's workers by the rr primary.", MetricType::Counter);
  auto cpu = family("uvcluster_worker_cpu_seconds_total", "User and system CPU time of the instance's current worker.",
                    MetricType::Counter);
  auto rss = family("uvcluster_worker_resident_memory_bytes", "Resident memory of the instance's current worker.",
                    MetricType::Gauge);
  auto uptime = family("uvcluster_worker_uptime_seconds", "Time since the instance's current worker was forked.",
                       MetricType::Gauge);
  for (auto& i : s.instances) {
    std::vector<ClientMetric::Label> instance{{"instance", std::to_string(i.instance)}};
    add(slot_restarts, i.restarts, instance);
    add(connections, static_cast<double>(i.connections), instance);
    if (!i.pid) continue;
    add(uptime, static_cast<double>(i.uptime_ms) / 1000, instance);
    if (auto u = process_usage(*i.pid); u.ok()) {
      add(cpu, u->cpu_seconds, instance);
      add(rss, static_cast<double>(u->rss_bytes), instance);
    }
  }
  for (auto* f : {&slot_restarts, &connections, &cpu, &rss, &uptime}) out.push_back(std::move(*f));

  PrimaryStats p = sup.primary() ? sup.primary()->stats() : PrimaryStats{};
  auto queue = family("uvcluster_rr_queue_length", "Connections accepted by the rr primary, waiting for a worker.",
                      MetricType::Gauge);
  add(queue, static_cast<double>(p.queued));
  out.push_back(std::move(queue));
  auto in_flight = family("uvcluster_rr_in_flight", "Hand-offs sent to a worker and not answered yet.", MetricType::Gauge);
  add(in_flight, static_cast<double>(p.in_flight));
  out.push_back(std::move(in_flight));
  auto handoffs = family("uvcluster_handoffs_total", "Ends of rr hand-offs by result.", MetricType::Counter);
  const auto& h = p.handoffs;
  for (auto [result, n] : {std::pair{"accepted", h.accepted}, {"refused", h.refused}, {"requeued", h.requeued},
                           {"dropped", h.dropped}, {"timed_out", h.timed_out}})
    add(handoffs, static_cast<double>(n), {{"result", result}});
  out.push_back(std::move(handoffs));
  auto latency = family("uvcluster_handoff_latency_seconds",
                        "From sending a newconn to the worker's answer, seen by the primary.", MetricType::Histogram);
  latency.metric.push_back(latency_histogram(p.handoff_latency));
  out.push_back(std::move(latency));

  auto self = process_usage(static_cast<int>(::getpid()));
  auto primary_cpu = family("uvcluster_primary_cpu_seconds_total", "User and system CPU time of the primary.",
                            MetricType::Counter);
  auto primary_rss = family("uvcluster_primary_resident_memory_bytes", "Resident memory of the primary.",
                            MetricType::Gauge);
  if (self.ok()) {
    add(primary_cpu, self->cpu_seconds);
    add(primary_rss, static_cast<double>(self->rss_bytes));
  }
  out.push_back(std::move(primary_cpu));
  out.push_back(std::move(primary_rss));

  std::ostringstream text;
  prometheus::TextSerializer().Serialize(text, out);
  return text.str();
}

namespace {

std::string http_response(std::string_view status, std::string_view body) {
  std::string r = "HTTP/1.1 ";
  r += status;
  r += "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: ";
  r += std::to_string(body.size());
  r += "\r\nConnection: close\r\n\r\n";
  r += body;
  return r;
}

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(uv_loop_t* loop, const std::shared_ptr<Supervisor>& supervisor,
                                                            int port) {
  std::weak_ptr<Supervisor> sup = supervisor;
  auto m = std::make_unique<MetricsServer>(Key{});
  RequestHandlers h;
  h.complete = [](std::string_view b) {
    size_t end = b.find("\r\n\r\n");
    return end == std::string_view::npos ? 0 : end + 4;
  };
  h.too_large = [] { return http_response("431 Request Header Fields Too Large", "request too large\n"); };
  h.timed_out = [] { return http_response("408 Request Timeout", "request timeout\n"); };
  h.busy = [] { return http_response("503 Service Unavailable", "too many connections\n"); };
  auto* self = m.get();
  h.request = [self, sup](uint64_t conn, std::string_view req) {
    std::string_view line = req.substr(0, req.find("\r\n"));
    size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
    std::string_view method = line.substr(0, sp1);
    std::string_view target = sp1 == std::string_view::npos || sp2 <= sp1 ? "" : line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view path = target.substr(0, target.find('?'));
    auto s = sup.lock();
    std::string reply;
    if (method != "GET" && method != "HEAD") reply = http_response("405 Method Not Allowed", "GET /metrics\n");
    else if (path != "/metrics") reply = http_response("404 Not Found", "GET /metrics\n");
    else if (!s) reply = http_response("503 Service Unavailable", "the cluster has stopped\n");
    else reply = http_response("200 OK", prometheus_text(*s));
    if (method == "HEAD") reply.resize(reply.find("\r\n\r\n") + 4);
    self->server_->reply(conn, std::move(reply));
  };
  m->server_ = std::make_shared<RequestServer<uv_tcp_t>>(loop, RequestLimits{.max_request_bytes = 8192}, std::move(h));
  if (!m->server_->initialized()) return Error::make("ERR_UV_INIT", "uv_tcp_init failed");
  auto fd = bind_tcp({.address = "127.0.0.1", .port = port});
  if (!fd.ok()) return fd.error();
  auto bound = local_address(fd->get());
  if (!bound.ok()) return bound.error();
  m->port_ = bound->port;
  if (int rc = uv_tcp_open(m->server_->handle(), fd->get()); rc != 0) return Error::from_uv(rc, "uv_tcp_open");
  fd->release();  // the handle owns it now
  if (auto st = m->server_->listen(); !st.ok()) return st.error();
  // Once the cluster is done the endpoint closes, so the loop can end.
  supervisor->on_done([server = std::weak_ptr(m->server_)](const SupervisorResult&) {
    if (auto s = server.lock()) s->close();
  });
  return m;
}

MetricsServer::~MetricsServer() = default;

void MetricsServer::close() {
  if (server_) server_->close();
}

}  // namespace uvcluster::cluster
