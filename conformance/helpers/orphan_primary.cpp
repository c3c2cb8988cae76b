// A C++ program that uses the library's cluster::Primary directly (no CLI): forks N workers of
// a Node script and prints `uvcluster run --json`-shaped fork/listening events on stdout, then
// runs until killed. argv: N script [script args...]. The test kills it to check that the
// library's default (workers_die_with_primary) takes the workers with it.
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "uvcluster/cluster/primary.hpp"

using namespace uvcluster;

namespace {
void print(const nlohmann::json& event) {
  std::printf("%s\n", event.dump().c_str());
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: orphan_primary N script [args...]\n");
    return 2;
  }
  uv_loop_t* loop = uv_default_loop();
  cluster::PrimarySettings settings{.exec = argv[2], .args = {argv + 3, argv + argc}};
  settings.stdio = std::vector<Stdio>{Stdio::inherit(), Stdio::from_fd(2), Stdio::inherit(), Stdio::ipc()};
  auto primary = cluster::Primary::create(loop, settings);
  primary->on_fork([](cluster::WorkerHandle& w) {
    print({{"event", "fork"}, {"id", w.id()}, {"pid", *w.pid()}});
  });
  primary->on_listening([](cluster::WorkerHandle& w, const cluster::Address& a) {
    print({{"event", "listening"}, {"id", w.id()}, {"pid", *w.pid()}, {"port", a.port}});
  });
  for (int i = 0; i < std::atoi(argv[1]); ++i) {
    if (auto w = primary->fork(); !w.ok()) {
      std::fprintf(stderr, "fork: %s\n", w.error().message.c_str());
      return 1;
    }
  }
  return uv_run(loop, UV_RUN_DEFAULT);
}
