// uvcluster: the command-line face of the library (see README.md, "The uvcluster tool").
#include <cstdio>
#include <cstring>
#include <iterator>

#include "commands.hpp"

namespace {

using uvcluster::cli::Command;

const Command kCommands[] = {
    {"exec", "run a command through exec/execFile and print Node's result as JSON",
     uvcluster::cli::run_exec, uvcluster::cli::help_exec},
    {"ipc", "fork a command with an IPC channel: stdin lines -> messages -> stdout lines",
     uvcluster::cli::run_ipc, uvcluster::cli::help_ipc},
    {"ipc-echo", "IPC child that echoes every message (and handle) back to its parent",
     uvcluster::cli::run_ipc_echo, uvcluster::cli::help_ipc_echo},
    {"run", "run N copies of a server as cluster workers behind a C++ primary",
     uvcluster::cli::run_run, uvcluster::cli::help_run},
    {"lab", "run one cell of the strategy lab (strategy x app x workers x load) and print its record",
     uvcluster::cli::run_lab, uvcluster::cli::help_lab},
    {"status", "show the workers of a cluster started with `run --name` (or of every one)",
     uvcluster::cli::run_status, uvcluster::cli::help_status},
    {"reload", "rolling reload of a named cluster (as SIGHUP), waiting for its end",
     uvcluster::cli::run_reload, uvcluster::cli::help_reload},
    {"scale", "set the number of instances of a named cluster", uvcluster::cli::run_scale,
     uvcluster::cli::help_scale},
    {"stop", "stop a named cluster (as SIGTERM), waiting until its workers have exited",
     uvcluster::cli::run_stop, uvcluster::cli::help_stop},
    {"metrics", "print a named cluster's metrics (Prometheus text format)", uvcluster::cli::run_metrics,
     uvcluster::cli::help_metrics},
};

void usage(FILE* out) {
  std::fprintf(out, "usage: uvcluster <command> [options]\n\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out, "\n`uvcluster <command> --help` describes one command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "uvcluster: missing command\n");
    usage(stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(stdout);
    return 0;
  }
  for (const auto& c : kCommands) {
    if (!std::strcmp(argv[1], c.name)) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "uvcluster: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
