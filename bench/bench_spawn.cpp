// spawn / exec / exec_file of a trivial program, each measured to `close` (the point Node's
// callbacks fire). Twins: node/spawn.js. Names are shared with the twins so scripts/bench.py
// can print uvcluster/Node ratios.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "uvcluster/exec.hpp"
#include "uvcluster/process.hpp"

using namespace uvcluster;

namespace {

struct Loop {
  uv_loop_t loop{};
  Loop() {
    if (int rc = uv_loop_init(&loop); rc != 0) {
      std::fprintf(stderr, "bench_spawn: uv_loop_init: %s\n", uv_err_name(rc));
      std::abort();
    }
  }
  ~Loop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
};

// spawn_true_1gib: the same from a parent with 1 GiB resident, where a fork-based spawn pays for
// copying the page tables (the limit twin, bench/limits/raw_spawn.c, runs vfork at both sizes).
void spawn_true(benchmark::State& state) {
  std::vector<char> ballast(static_cast<size_t>(state.range(0)) << 20, 1);  // touched: resident
  Loop l;
  SpawnOptions so;
  so.stdio = {Stdio::ignore(), Stdio::ignore(), Stdio::ignore()};  // Node twin: stdio 'ignore'
  for (auto _ : state) {
    bool closed = false;
    spawn(&l.loop, "/bin/true", {}, so).value()->on_close([&](const ExitStatus&) { closed = true; });
    while (!closed) uv_run(&l.loop, UV_RUN_ONCE);
  }
  benchmark::DoNotOptimize(ballast.data());
}

template <bool Shell>
void exec_true(benchmark::State& state) {
  Loop l;
  for (auto _ : state) {
    bool done = false;
    auto cb = [&](ExecResult r) {
      if (r.error) state.SkipWithError(r.error->error.message.c_str());
      done = true;
    };
    if (Shell) exec(&l.loop, "true", {}, cb);
    else exec_file(&l.loop, "/bin/true", {}, {}, cb);
    while (!done) uv_run(&l.loop, UV_RUN_ONCE);
  }
}

long vm_hwm_kib() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

// A child that would write 1 GiB under the default 1 MiB max_buffer: the parent's peak RSS must
// stay near idle (the output is cut and the child killed while reading, not after).
void exec_maxbuffer_1gib_rss(benchmark::State& state) {
  Loop l;
  long idle = vm_hwm_kib();
  for (auto _ : state) {
    bool done = false;
    exec(&l.loop, "head -c 1073741824 /dev/zero", {}, [&](ExecResult r) {
      if (!r.error || r.error->error.code != "ERR_CHILD_PROCESS_STDIO_MAXBUFFER")
        state.SkipWithError("expected a maxBuffer error");
      done = true;
    });
    while (!done) uv_run(&l.loop, UV_RUN_ONCE);
  }
  state.counters["peak_rss_over_idle_kib"] = static_cast<double>(vm_hwm_kib() - idle);
}

}  // namespace

BENCHMARK(spawn_true)->Name("spawn_true")->Arg(0)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(spawn_true)->Name("spawn_true_1gib")->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(exec_true<true>)->Name("exec_true")->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(exec_true<false>)->Name("exec_file_true")->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(exec_maxbuffer_1gib_rss)->Name("exec_maxbuffer_1gib_rss")->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_MAIN();
