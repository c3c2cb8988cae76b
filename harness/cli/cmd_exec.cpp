#include "commands.hpp"
#include <cstdio>
namespace uvcluster::cli {
int run_exec(int, char**) { std::fprintf(stderr, "uvcluster exec: not yet\n"); return 2; }
void help_exec() { std::fprintf(stdout, "usage: uvcluster exec ...\n"); }
}
