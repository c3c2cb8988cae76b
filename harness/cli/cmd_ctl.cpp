// uvcluster status|reload|scale|stop|metrics: the client side of a named cluster's control
// socket (cluster/control_server.hpp), and the control plane `uvcluster run --name` starts.
#include <dirent.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "uvcluster/cluster/control_server.hpp"
#include "uvcluster/cluster/metrics.hpp"
#include "uvcluster/cluster/supervisor.hpp"

namespace uvcluster::cli {

namespace {

using Json = nlohmann::json;

// Exit codes a script can rely on (README, "Controlling a running cluster").
constexpr int kDone = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;
constexpr int kUnreachable = 3;
constexpr int kForbidden = 4;

constexpr int kQuickTimeoutMs = 10000;  // status, metrics, scale; reload and stop wait for the end

const char* kFooter = R"(
The cluster is the one `uvcluster run --name NAME` started; its socket is
$UVCLUSTER_HOME/NAME.sock (default ~/.uvcluster/NAME.sock), usable by its owner and root only.

exit codes:
  0  done
  1  the cluster refused or failed the operation (a reload whose new worker died, a scale
     while it stops, an error reply)
  2  usage error
  3  no such cluster, or not reachable (no socket, its process is gone, or no reply in 10 s
     to status, metrics or scale; reload and stop wait for their end)
  4  not allowed (the cluster belongs to another user)
)";

struct Spec {
  const char* name;
  const char* description;
};

const Spec kStatus{"status", "Show a named cluster's workers (without NAME: every cluster in $UVCLUSTER_HOME)"};
const Spec kReload{"reload", "Rolling reload of a named cluster, as SIGHUP; returns once it has ended"};
const Spec kScale{"scale", "Set a named cluster's number of instances"};
const Spec kStop{"stop", "Stop a named cluster (as SIGTERM); returns once every worker has exited"};
const Spec kMetrics{"metrics", "Print a named cluster's metrics in Prometheus text format"};

std::string usage_name(const Spec& s) { return std::string("uvcluster ") + s.name; }

std::unique_ptr<CLI::App> make_app(const Spec& s) {
  auto app = std::make_unique<CLI::App>(s.description, usage_name(s));
  app->footer(kFooter);
  return app;
}

// nullopt: go on; otherwise the exit code (help printed, or a usage error reported).
std::optional<int> parse(CLI::App& app, const Spec& s, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return kDone;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: %s\n", usage_name(s).c_str(), e.what());
    std::cerr << app.help();
    return kUsage;
  }
  return std::nullopt;
}

CLI::Validator cluster_name() {
  return CLI::Validator(
      [](std::string& v) {
        return cluster::valid_cluster_name(v) ? std::string() : "a cluster name is 1-64 of letters, digits, '.', '_', '-'";
      },
      "NAME");
}

// Sends one request; on failure prints why and returns the exit code.
std::optional<int> ask(const Spec& s, const std::string& name, const Json& request, int timeout_ms, Json& reply) {
  std::string dir = cluster::control_directory();
  std::string path = cluster::control_socket_path(dir, name);
  auto r = cluster::control_request(path, request, timeout_ms);
  if (!r.ok()) {
    const auto& code = r.error().code;
    std::string why = code == "ENOENT" || code == "ECONNREFUSED" ? "no cluster named '" + name + "' is running in " + dir
                      : code == "ETIMEDOUT" ? "cluster '" + name + "' did not answer in time"
                                            : "cannot reach cluster '" + name + "': " + r.error().message;
    std::fprintf(stderr, "%s: %s\n", usage_name(s).c_str(), why.c_str());
    return code == "EACCES" || code == "EPERM" ? kForbidden : kUnreachable;
  }
  reply = std::move(r.value());
  if (reply.value("ok", false)) return std::nullopt;
  const Json& e = reply.contains("error") && reply["error"].is_object() ? reply["error"] : Json::object();
  std::string code = e.value("code", "error");
  std::fprintf(stderr, "%s: %s: %s (%s)\n", usage_name(s).c_str(), name.c_str(), e.value("message", "failed").c_str(),
               code.c_str());
  return code == "forbidden" ? kForbidden : kFailed;
}

std::string duration(int64_t ms) {
  int64_t s = ms / 1000;
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else if (s < 86400) std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(s / 86400), static_cast<long long>(s / 3600 % 24));
  return buf;
}

std::string or_dash(const Json& v, const std::function<std::string(const Json&)>& show) {
  return v.is_null() ? "-" : show(v);
}

void print_status(const Json& s) {
  int up = 0;
  for (auto& w : s["workers"]) up += w.value("state", "") == "up";
  std::printf("%s  pid %d  %s  %d/%zu up  restarts %d  connections %llu  uptime %s%s\n",
              s.value("name", "?").c_str(), s.value("pid", 0), s.value("policy", "?").c_str(), up, s["workers"].size(),
              s.value("restarts", 0), static_cast<unsigned long long>(s.value("connections", uint64_t{0})),
              duration(s.value("uptime_ms", int64_t{0})).c_str(),
              s.value("draining", false) ? "  stopping" : s.value("reloading", false) ? "  reloading" : "");
  std::printf("  %-8s %-8s %-8s %-8s %-8s %-9s %-10s %s\n", "instance", "pid", "state", "uptime", "restarts", "cpu",
              "memory", "connections");
  for (auto& w : s["workers"]) {
    std::string pid = or_dash(w["pid"], [](const Json& v) { return std::to_string(v.get<int>()); });
    std::string uptime = or_dash(w["uptime_ms"], [](const Json& v) { return duration(v.get<int64_t>()); });
    std::string cpu = or_dash(w["cpu_seconds"], [](const Json& v) {
      char b[32];
      std::snprintf(b, sizeof b, "%.2fs", v.get<double>());
      return std::string(b);
    });
    std::string rss = or_dash(w["rss_bytes"], [](const Json& v) {
      char b[32];
      std::snprintf(b, sizeof b, "%.1f MiB", static_cast<double>(v.get<uint64_t>()) / (1 << 20));
      return std::string(b);
    });
    std::printf("  %-8d %-8s %-8s %-8s %-8d %-9s %-10s %llu\n", w.value("instance", 0), pid.c_str(),
                w.value("state", "?").c_str(), uptime.c_str(), w.value("restarts", 0), cpu.c_str(), rss.c_str(),
                static_cast<unsigned long long>(w.value("connections", uint64_t{0})));
  }
}

// The names of the sockets in the control directory (stale ones included).
std::vector<std::string> cluster_names(const std::string& dir) {
  std::vector<std::string> names;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return names;
  while (dirent* e = ::readdir(d.get())) {
    std::string f = e->d_name;
    if (f.size() > 5 && f.ends_with(".sock") && cluster::valid_cluster_name(f.substr(0, f.size() - 5)))
      names.push_back(f.substr(0, f.size() - 5));
  }
  std::sort(names.begin(), names.end());
  return names;
}

int status_of_all(bool json) {
  std::string dir = cluster::control_directory();
  Json all = Json::array();
  for (auto& name : cluster_names(dir)) {
    auto r = cluster::control_request(cluster::control_socket_path(dir, name), {{"cmd", "status"}}, kQuickTimeoutMs);
    if (!r.ok()) {
      // A socket left by a process that died: not a running cluster.
      if (r.error().code != "ECONNREFUSED" && r.error().code != "ENOENT")
        std::fprintf(stderr, "uvcluster status: %s: %s\n", name.c_str(), r.error().message.c_str());
      continue;
    }
    if (r->value("ok", false)) all.push_back((*r)["status"]);
  }
  if (json) {
    std::printf("%s\n", all.dump().c_str());
  } else if (all.empty()) {
    std::printf("no cluster running in %s\n", dir.c_str());
  } else {
    for (size_t i = 0; i < all.size(); ++i) {
      if (i) std::printf("\n");
      print_status(all[i]);
    }
  }
  return kDone;
}

}  // namespace

int run_status(int argc, char** argv) {
  auto app = make_app(kStatus);
  std::string name;
  bool json = false;
  app->add_option("NAME", name, "the cluster (default: every cluster)")->check(cluster_name());
  app->add_flag("--json", json, "one JSON document on stdout (an array without NAME)");
  if (auto exit = parse(*app, kStatus, argc, argv)) return *exit;
  if (name.empty()) return status_of_all(json);
  Json reply;
  if (auto failed = ask(kStatus, name, {{"cmd", "status"}}, kQuickTimeoutMs, reply)) return *failed;
  if (json) std::printf("%s\n", reply["status"].dump().c_str());
  else print_status(reply["status"]);
  return kDone;
}

namespace {
// A command whose only argument is NAME: one request, then `done` prints the reply.
int named_command(const Spec& spec, int argc, char** argv, const Json& request, int timeout_ms,
                  const std::function<void(const std::string& name, const Json& reply)>& done) {
  auto app = make_app(spec);
  std::string name;
  app->add_option("NAME", name, "the cluster")->required()->check(cluster_name());
  if (auto exit = parse(*app, spec, argc, argv)) return *exit;
  Json reply;
  if (auto failed = ask(spec, name, request, timeout_ms, reply)) return *failed;
  done(name, reply);
  return kDone;
}
}  // namespace

int run_reload(int argc, char** argv) {
  return named_command(kReload, argc, argv, {{"cmd", "reload"}}, -1, [](const std::string& name, const Json&) {
    std::printf("%s: reloaded\n", name.c_str());
  });
}

int run_scale(int argc, char** argv) {
  auto app = make_app(kScale);
  std::string name;
  int instances = 0;
  app->add_option("NAME", name, "the cluster")->required()->check(cluster_name());
  app->add_option("N", instances, "instances (1..1024)")->required()->check(CLI::Range(1, 1024));
  if (auto exit = parse(*app, kScale, argc, argv)) return *exit;
  Json reply;
  if (auto failed = ask(kScale, name, {{"cmd", "scale"}, {"instances", instances}}, kQuickTimeoutMs, reply)) return *failed;
  std::printf("%s: %d instances\n", name.c_str(), instances);
  return kDone;
}

int run_stop(int argc, char** argv) {
  return named_command(kStop, argc, argv, {{"cmd", "stop"}}, -1, [](const std::string& name, const Json& reply) {
    std::printf("%s: stopped (exit code %d)\n", name.c_str(), reply.value("exit_code", -1));
  });
}

int run_metrics(int argc, char** argv) {
  return named_command(kMetrics, argc, argv, {{"cmd", "metrics"}}, kQuickTimeoutMs,
                       [](const std::string&, const Json& reply) { std::fputs(reply.value("text", "").c_str(), stdout); });
}

namespace {
void print_help(int (*run)(int, char**), const Spec& s) {
  std::string name = s.name, help = "--help";
  char* argv[] = {name.data(), help.data(), nullptr};
  run(2, argv);
}
}  // namespace

void help_status() { print_help(run_status, kStatus); }
void help_reload() { print_help(run_reload, kReload); }
void help_scale() { print_help(run_scale, kScale); }
void help_stop() { print_help(run_stop, kStop); }
void help_metrics() { print_help(run_metrics, kMetrics); }

Result<ControlPlane> start_control_plane(uv_loop_t* loop, const std::shared_ptr<cluster::Supervisor>& sup,
                                         const std::string& name, std::optional<int> metrics_port) {
  ControlPlane plane;
  if (!name.empty()) {
    auto control = cluster::ControlServer::start(loop, sup, {.name = name});
    if (!control.ok()) return control.error();
    plane.control = std::move(control.value());
  }
  if (metrics_port) {
    auto metrics = cluster::MetricsServer::start(loop, sup, *metrics_port);
    if (!metrics.ok()) return metrics.error();
    plane.metrics = std::move(metrics.value());
  }
  return plane;
}

}  // namespace uvcluster::cli
