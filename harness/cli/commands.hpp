#pragma once
// Subcommands of the `uvcluster` tool. Each returns the process exit status.
// Exit status 2 means bad usage (a one-line message on stderr, then --help).
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

}  // namespace uvcluster::cli
