// `uvcluster lab`: runs one cell of the strategy lab and prints its record. The flags are checked
// here (bad usage: one line + help, exit 2); the measuring itself is scripts/lab/cell.py, which
// drives wrk/perf and reads /proc — a harness, so it stays in Python and this is a thin exec.
#include <unistd.h>

#include <errno.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "commands.hpp"

#ifndef UVC_SOURCE_DIR
#error "UVC_SOURCE_DIR must be defined by the build"
#endif
#ifndef UVC_BUILD_DIR
#error "UVC_BUILD_DIR must be defined by the build"
#endif

namespace uvcluster::cli {
namespace {

const char* const kStrategies[] = {"naive", "proxy", "shared", "exclusive", "rr",
                                   "reuseport", "nginx", "node-rr", "node-none", "uvc-run"};

bool one_of(const std::string& v, std::initializer_list<const char*> set) {
  for (const char* s : set)
    if (v == s) return true;
  return false;
}

bool is_strategy(const std::string& v) {
  for (const char* s : kStrategies)
    if (v == s) return true;
  return false;
}

bool positive_int(const std::string& v, long lo, long hi) {
  if (v.empty()) return false;
  char* end = nullptr;
  long n = std::strtol(v.c_str(), &end, 10);
  return *end == '\0' && n >= lo && n <= hi;
}

int bad(const std::string& msg) {
  std::fprintf(stderr, "uvcluster lab: %s\n", msg.c_str());
  help_lab();
  return 2;
}

}  // namespace

void help_lab() {
  std::fprintf(stdout,
               "usage: uvcluster lab --strategy NAME --app native|node --workers N\n"
               "                     --load keepalive|close --duration S [--connections C] [--json]\n"
               "Runs one cell of the strategy lab on 127.0.0.1 and prints its JSON record.\n"
               "  --strategy   naive proxy shared exclusive rr reuseport nginx node-rr node-none uvc-run\n"
               "  --workers    1..16    --duration  seconds, 1..600    --connections  1..2000 (50)\n"
               "Extra options after `--` go to scripts/lab/cell.py (e.g. -- --accept drain).\n");
}

int run_lab(int argc, char** argv) {
  std::string strategy, app, workers, load, duration, connections = "50";
  bool json = false;
  std::vector<std::string> passthrough;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      help_lab();
      return 0;
    }
    if (a == "--json") {
      json = true;
      continue;
    }
    if (a == "--") {
      for (++i; i < argc; ++i) passthrough.emplace_back(argv[i]);
      break;
    }
    std::string* slot = a == "--strategy"      ? &strategy
                        : a == "--app"         ? &app
                        : a == "--workers"     ? &workers
                        : a == "--load"        ? &load
                        : a == "--duration"    ? &duration
                        : a == "--connections" ? &connections
                                               : nullptr;
    if (!slot) return bad("unknown option '" + a + "'");
    if (i + 1 >= argc) return bad("missing value for " + a);
    *slot = argv[++i];
  }
  if (strategy.empty()) return bad("missing --strategy");
  if (!is_strategy(strategy)) return bad("unknown strategy '" + strategy + "'");
  if (!one_of(app, {"native", "node"})) return bad("--app must be native or node");
  if (!positive_int(workers, 1, 16)) return bad("--workers must be an integer in 1..16");
  if (!one_of(load, {"keepalive", "close"})) return bad("--load must be keepalive or close");
  if (!positive_int(duration, 1, 600)) return bad("--duration must be whole seconds in 1..600");
  if (!positive_int(connections, 1, 2000)) return bad("--connections must be an integer in 1..2000");

  std::string script = std::string(UVC_SOURCE_DIR) + "/scripts/lab/cell.py";
  std::vector<std::string> args = {"/usr/bin/python3", script,          "--build",    UVC_BUILD_DIR,
                                   "--strategy",       strategy,        "--app",      app,
                                   "--workers",        workers,         "--load",     load,
                                   "--duration",       duration,        "--connections", connections};
  if (json) args.emplace_back("--json");
  args.insert(args.end(), passthrough.begin(), passthrough.end());
  std::vector<char*> cargv;
  for (auto& s : args) cargv.push_back(s.data());
  cargv.push_back(nullptr);
  ::execv(cargv[0], cargv.data());
  std::fprintf(stderr, "uvcluster lab: cannot run %s: %s\n", cargv[0], std::strerror(errno));
  return 1;
}

}  // namespace uvcluster::cli
