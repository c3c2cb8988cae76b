#pragma once
// Subcommands of the `uvcluster` tool. Each returns the process exit status.
// Exit status 2 means bad usage (a one-line message on stderr, then --help).
#include <uv.h>

#include <memory>
#include <optional>
#include <string>

#include "uvcluster/error.hpp"

namespace uvcluster::cluster {
class Supervisor;
class ControlServer;
class MetricsServer;
}  // namespace uvcluster::cluster

namespace uvcluster::cli {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);  // argv[0] is the subcommand name
  void (*help)();
};

int run_exec(int argc, char** argv);
void help_exec();
int run_ipc(int argc, char** argv);
void help_ipc();
int run_ipc_echo(int argc, char** argv);
void help_ipc_echo();
int run_run(int argc, char** argv);
void help_run();
int run_lab(int argc, char** argv);
void help_lab();
// The control plane's client commands (cmd_ctl.cpp).
int run_status(int argc, char** argv);
void help_status();
int run_reload(int argc, char** argv);
void help_reload();
int run_scale(int argc, char** argv);
void help_scale();
int run_stop(int argc, char** argv);
void help_stop();
int run_metrics(int argc, char** argv);
void help_metrics();

// `run --name` / `--metrics-port`: the control socket and the metrics endpoint of a supervisor
// (each closes once the supervisor is done), or the error that kept one from starting.
struct ControlPlane {
  std::shared_ptr<cluster::ControlServer> control;
  std::shared_ptr<cluster::MetricsServer> metrics;
};
Result<ControlPlane> start_control_plane(uv_loop_t* loop, const std::shared_ptr<cluster::Supervisor>& sup,
                                         const std::string& name, std::optional<int> metrics_port);

}  // namespace uvcluster::cli
