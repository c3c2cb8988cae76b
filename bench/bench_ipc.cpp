// IPC micro-benchmarks: a C++ parent (uvcluster::fork + ipc::Channel) against the C++ child
// `uvcluster ipc-echo`. Node twins: bench/node/ipc_*.js (Node parent + Node echo child).
#include <benchmark/benchmark.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <sys/resource.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <memory>
#include <string>

#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"

using namespace uvcluster;
using ipc::Json;

namespace {

// Seconds each timed benchmark runs for: 2 by default; UVC_BENCH_MIN_TIME overrides it (the
// A/B comparison takes many short samples, scripts/bench_compare.py). Registration happens during
// static initialisation, where reading the environment is fine.
double bench_min_time() {
  const char* v = std::getenv("UVC_BENCH_MIN_TIME");
  char* end = nullptr;
  double s = v ? std::strtod(v, &end) : 0.0;
  return (v && end != v && *end == '\0' && s > 0.0) ? s : 2.0;
}

struct EchoChild {
  uv_loop_t loop{};
  std::shared_ptr<ChildProcess> child;
  size_t received = 0;
  size_t handles = 0;
  bool closed = false;
  EchoChild() {
    if (int rc = uv_loop_init(&loop); rc != 0) {
      std::fprintf(stderr, "bench_ipc: uv_loop_init: %s\n", uv_err_name(rc));
      std::abort();
    }
    auto r = fork(&loop, UVC_CLI, {"ipc-echo"});
    child = r.value();
    child->on_close([this](const ExitStatus&) { closed = true; });
    child->channel()->on_message([this](const Json&, ipc::ReceivedHandle* h) {
      ++received;
      if (h) ++handles;  // the fd closes when the listener returns
    });
  }
  ipc::Channel& ch() { return *child->channel(); }
  void wait(size_t n) {
    while (received < n) uv_run(&loop, UV_RUN_ONCE);
  }
  ~EchoChild() {
    (void)ch().disconnect();
    while (!closed) uv_run(&loop, UV_RUN_ONCE);
    child.reset();
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
};

void BM_IpcPingPong(benchmark::State& state) {
  EchoChild e;
  Json msg = {{"ping", 1}};
  e.ch().send(msg);  // warm-up: child started
  e.wait(1);
  for (auto _ : state) {
    e.ch().send(msg);
    e.wait(e.received + 1);
  }
  state.SetItemsProcessed(state.iterations());  // round trips
}
BENCHMARK(BM_IpcPingPong)->Unit(benchmark::kMicrosecond)->MinTime(bench_min_time())->UseRealTime();

void BM_IpcStream100k(benchmark::State& state) {
  EchoChild e;
  e.ch().send(0);
  e.wait(1);
  for (auto _ : state) {
    size_t target = e.received + 100000;
    for (int i = 0; i < 100000; ++i) e.ch().send(Json{{"i", i}});
    e.wait(target);
  }
  state.SetItemsProcessed(state.iterations() * 100000);  // messages sent (each echoed back)
}
BENCHMARK(BM_IpcStream100k)->Unit(benchmark::kMillisecond)->Iterations(5)->UseRealTime();

// Minor page faults so far of this process and of the echo child (/proc/PID/stat field 10): a
// page touched for the first time costs one, so faults per round trip show buffers re-made.
long faults_so_far(const EchoChild& e) {
  rusage self{};
  ::getrusage(RUSAGE_SELF, &self);
  long child = 0;
  if (auto pid = e.child->pid()) {
    std::ifstream stat("/proc/" + std::to_string(*pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    // Fields after the ")" that ends the command name: state is field 3, minflt field 10.
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    std::string field;
    for (int i = 3; i <= 10 && rest >> field; ++i) {}
    child = std::atol(field.c_str());
  }
  return self.ru_minflt + child;
}

// CPU time so far of this process and of the echo child, in ns (a CPU-time clock of another
// process: clock_getcpuclockid). Moves less than the wall time when other work shares the cores.
double cpu_ns_so_far(const EchoChild& e) {
  auto ns = [](clockid_t clock) {
    timespec ts{};
    clock_gettime(clock, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
  };
  clockid_t child = CLOCK_PROCESS_CPUTIME_ID;
  auto pid = e.child->pid();
  bool have_child = pid && clock_getcpuclockid(*pid, &child) == 0;
  return ns(CLOCK_PROCESS_CPUTIME_ID) + (have_child ? ns(child) : 0.0);
}

// One string message of `chars` characters there and back (the frame is chars + 3 bytes). The
// limit twin, bench/limits/raw_ipc.c, moves the same bytes over a bare socketpair.
void big_round_trip(benchmark::State& state, size_t chars) {
  EchoChild e;
  e.ch().send(0);
  e.wait(1);
  Json big = std::string(chars, 'x');
  e.ch().send(big);  // warm-up: buffers grown, pages touched on both sides
  e.wait(2);
  long faults_before = faults_so_far(e);
  double cpu_before = cpu_ns_so_far(e);
  for (auto _ : state) {
    e.ch().send(big);
    e.wait(e.received + 1);
  }
  state.counters["cpu_ns_per_rt"] = benchmark::Counter(cpu_ns_so_far(e) - cpu_before, benchmark::Counter::kAvgIterations);
  state.counters["faults_per_rt"] =
      benchmark::Counter(static_cast<double>(faults_so_far(e) - faults_before), benchmark::Counter::kAvgIterations);
  state.SetBytesProcessed(state.iterations() * 2 * static_cast<int64_t>(chars));  // there and back
}
void BM_Ipc64KiB(benchmark::State& state) { big_round_trip(state, size_t{64} << 10); }
void BM_Ipc1MiB(benchmark::State& state) { big_round_trip(state, size_t{1} << 20); }
void BM_Ipc16MiB(benchmark::State& state) { big_round_trip(state, size_t{16} << 20); }
BENCHMARK(BM_Ipc64KiB)->Unit(benchmark::kMicrosecond)->MinTime(bench_min_time())->UseRealTime();
BENCHMARK(BM_Ipc1MiB)->Unit(benchmark::kMillisecond)->MinTime(bench_min_time())->UseRealTime();
BENCHMARK(BM_Ipc16MiB)->Unit(benchmark::kMillisecond)->MinTime(bench_min_time())->UseRealTime();

void BM_IpcHandlePassing(benchmark::State& state) {
  EchoChild e;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(fd, 16);
  e.ch().send(0);
  e.wait(1);
  for (auto _ : state) {
    e.ch().send(Json{{"h", 1}}, ipc::OutgoingHandle{ipc::HandleType::server, Fd::dup(fd).value()});
    e.wait(e.received + 1);  // the child ACKed ours and sent it back (we ACKed theirs)
  }
  ::close(fd);
  state.SetItemsProcessed(state.iterations());  // handle round trips (2 handles, 2 ACKs each)
}
BENCHMARK(BM_IpcHandlePassing)->Unit(benchmark::kMicrosecond)->MinTime(bench_min_time())->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
