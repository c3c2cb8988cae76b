// Issue 13 §1: a steady-state rr hand-off allocates nothing on the heap, in the primary and in a
// C++ worker's receive path. Every operator new of this binary and every libuv allocation
// (uv_replace_allocator) is counted, on the loop thread only and only while the loop runs (the
// test's own bookkeeping between turns is not counted). After a warm-up the allocations of the
// next hand-offs must be 0: a mechanism, not a rate. UVC_ALLOC_TRACE=1 prints the stack of each
// counted allocation on stderr (how the sites were found).
#include <dlfcn.h>
#include <execinfo.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fd_leak_test.hpp"
#include "support.hpp"
#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/cluster/worker.hpp"

using namespace uvcluster;
using namespace uvcluster::cluster;

namespace {

thread_local bool counting = false;  // on the loop thread, while the loop turns
thread_local bool tracing_now = false;
std::atomic<uint64_t> allocations{0};
bool trace_allocations = std::getenv("UVC_ALLOC_TRACE") != nullptr;

void counted() {
  if (!counting) return;
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (!trace_allocations || tracing_now) return;
  tracing_now = true;
  void* frames[24];
  int n = backtrace(frames, 24);  // warmed up before counting starts: no allocation here
  static const char kRule[] = "---- allocation\n";
  (void)!::write(2, kRule, sizeof kRule - 1);
  backtrace_symbols_fd(frames, n, 2);
  tracing_now = false;
}

void* counted_malloc(size_t n) {
  counted();
  return std::malloc(n);
}
void* counted_calloc(size_t count, size_t n) {
  counted();
  return std::calloc(count, n);
}
void* counted_realloc(void* p, size_t n) {
  counted();
  return std::realloc(p, n);
}

// Counting is off while the test looks at its results between two turns of the loop.
struct NotCounted {
  bool was = std::exchange(counting, false);
  ~NotCounted() { counting = was; }
};

bool measuring = false;  // what run_counted counts

// Turns the loop until done() (run_until), counting the loop's allocations when `measuring`;
// done() itself is not counted.
bool run_counted(uvc_test::TestLoop& loop, const std::function<bool()>& done, int limit_ms = 30000) {
  std::function<bool()> uncounted_done = [&done] {
    NotCounted pause;
    return done();
  };
  counting = measuring;
  bool ok = loop.run_until(uncounted_done, limit_ms);
  counting = false;
  return ok;
}

// Installs the counting allocators (libuv's too) and warms backtrace() up.
void start_counting_allocations() {
  static bool installed = [] {
    void* frame[1];
    backtrace(frame, 1);
    return uv_replace_allocator(counted_malloc, counted_realloc, counted_calloc, std::free) == 0;
  }();
  ASSERT_TRUE(installed);
}

}  // namespace

// The libuv calls a hand-off could make per connection besides its read: taking the fd
// (uv_pipe_pending_count, uv_accept) and writing the ACK and answer (uv_try_write). The
// library's calls bind to these definitions, counted as the allocations are; each forwards to
// libuv's own, looked up before main (a lookup may allocate).
namespace {
std::atomic<uint64_t> libuv_calls{0};
template <class Fn>
Fn libuv_function(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}
const auto real_uv_accept = libuv_function<int (*)(uv_stream_t*, uv_stream_t*)>("uv_accept");
const auto real_uv_pipe_pending_count = libuv_function<int (*)(uv_pipe_t*)>("uv_pipe_pending_count");
const auto real_uv_try_write = libuv_function<int (*)(uv_stream_t*, const uv_buf_t[], unsigned)>("uv_try_write");
void counted_libuv_call() {
  if (counting) libuv_calls.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

extern "C" int uv_accept(uv_stream_t* server, uv_stream_t* client) {
  counted_libuv_call();
  return real_uv_accept(server, client);
}
extern "C" int uv_pipe_pending_count(uv_pipe_t* handle) {
  counted_libuv_call();
  return real_uv_pipe_pending_count(handle);
}
extern "C" int uv_try_write(uv_stream_t* handle, const uv_buf_t bufs[], unsigned int nbufs) {
  counted_libuv_call();
  return real_uv_try_write(handle, bufs, nbufs);
}

void* operator new(size_t n) {
  counted();
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  counted();
  return std::malloc(n ? n : 1);
}
void* operator new[](size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace {

// One GET with Connection: close, read to EOF: plain syscalls, nothing allocated. False on any
// failure (a receive timeout guards against a hang).
bool one_request(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  static const char kRequest[] = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
            ::write(fd, kRequest, sizeof kRequest - 1) == static_cast<ssize_t>(sizeof kRequest - 1);
  size_t got = 0;
  char buf[512];
  for (ssize_t n; ok && (n = ::read(fd, buf, sizeof buf)) != 0;) {
    if (n < 0) ok = false;
    else got += static_cast<size_t>(n);
  }
  ::close(fd);
  return ok && got > 0;
}

uint64_t accepted(const Primary& p) {
  NotCounted pause;
  return p.stats().handoffs.accepted;
}

}  // namespace

// A real primary (rr, Node's window of 1) and two C++ workers; two clients each make serial
// Connection: close requests. Of 2 × 150 hand-offs, the last 2 × 75 allocate nothing in the primary.
TEST(HandOffAllocations, ThePrimaryAllocatesNothingPerHandOffOnceWarm) {
  start_counting_allocations();
  constexpr int kClients = 2;
  constexpr int kPerClientPhase = 75;
  uvc_test::TestLoop loop;
  auto primary = Primary::create(loop, {.exec = uvc_test::helper("cluster_http_worker"),
                                        .args = {"0", "127.0.0.1"},
                                        .policy = Policy::rr});
  int listening = 0;
  int port = 0;
  primary->on_listening([&](WorkerHandle&, const Address& a) {
    port = a.port;
    ++listening;
  });
  int exited = 0;  // the test ends once the workers are gone (their handles are released at exit)
  primary->on_exit([&](WorkerHandle&, const ExitStatus&) { ++exited; });
  for (int i = 0; i < kClients; ++i) ASSERT_TRUE(primary->fork().ok());
  ASSERT_TRUE(loop.run_until([&] { return listening == kClients; }));

  std::atomic<int> phase{0};  // 1: warm-up done; 2: go on; 3: measured part done
  std::atomic<int> done_in_phase{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&] {
      for (int i = 0; i < kPerClientPhase; ++i) failures += !one_request(port);
      if (++done_in_phase == kClients) phase = 1;
      while (phase.load() < 2) std::this_thread::yield();
      for (int i = 0; i < kPerClientPhase; ++i) failures += !one_request(port);
      if (++done_in_phase == 2 * kClients) phase = 3;
    });
  }
  const uint64_t warm = kClients * kPerClientPhase;
  bool warmed = run_counted(loop, [&] { return phase.load() == 1 && accepted(*primary) == warm; }, 120000);
  uint64_t before = allocations.load();
  measuring = true;
  phase = 2;
  bool measured = warmed && run_counted(loop, [&] { return phase.load() == 3 && accepted(*primary) == 2 * warm; }, 120000);
  measuring = false;
  uint64_t during = allocations.load() - before;
  phase = 2;  // a client still warming up (a failed run) goes on, and ends
  for (auto& t : clients) t.join();
  ASSERT_TRUE(warmed);
  ASSERT_TRUE(measured);
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(during, 0u) << "heap allocations in the primary during " << warm << " hand-offs";

  bool disconnected = false;
  primary->disconnect([&] { disconnected = true; });
  ASSERT_TRUE(loop.run_until([&] { return disconnected && primary->workers().empty() && exited == kClients; }));
}

namespace {

constexpr const char* kKey = "127.0.0.1:0:4:undefined:0";

void send_with_fd(int sock, const std::string& data, int fd) {
  msghdr msg{};
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ASSERT_EQ(sendmsg(sock, &msg, MSG_NOSIGNAL), static_cast<ssize_t>(data.size()));
}

// What the worker wrote so far, appended to `out` (never blocks); false at EOF.
bool drain(int sock, std::string& out) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(sock, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) out.append(buf, static_cast<size_t>(n));
    else return n != 0;
  }
}

class HandOffAllocationsInWorker : public uvc_test::FdLeakTest {};

}  // namespace

// A C++ worker (cluster::Worker) on a socketpair; the test plays our primary (returnRefused
// confirmed) and sends newconns one at a time, as the primary does at a window of 1. Of 200,
// the last 100 are received, ACKed, answered and delivered without a heap allocation, and
// without a libuv call to take their fd or to write their ACK and answer (the channel takes
// the fd libuv's read received and writes to its socket itself).
TEST_F(HandOffAllocationsInWorker, ACppWorkerReceivesANewconnWithoutAllocatingOrCallingLibuv) {
  start_counting_allocations();
  constexpr int kHandOffs = 200;
  uvc_test::TestLoop loop;
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd primary(sv[0]);
  ::setenv("NODE_UNIQUE_ID", "1", 1);
  ::setenv("NODE_CHANNEL_FD", std::to_string(sv[1]).c_str(), 1);
  auto started = Worker::start(loop);
  ASSERT_TRUE(started.ok());
  std::unique_ptr<Worker> worker = std::move(started.value());
  bool listening = false;
  int delivered = 0;
  ListenOptions lo;
  lo.host = "127.0.0.1";
  worker->listen(lo, [&](Result<ListenAddress> r) { listening = r.ok(); },
                 [&](Fd) { ++delivered; });  // the connection closes here
  std::string written;
  ASSERT_TRUE(loop.run_until([&] {
    drain(primary.get(), written);
    return written.find("\"queryServer\"") != std::string::npos;
  }));
  std::string reply = std::string(R"({"cmd":"NODE_CLUSTER","ack":1,"key":")") + kKey +
                      R"(","returnRefused":true,"sockname":{"address":"127.0.0.1","family":"IPv4","port":4321},"seq":0})" "\n";
  ASSERT_EQ(::write(primary.get(), reply.data(), reply.size()), static_cast<ssize_t>(reply.size()));
  ASSERT_TRUE(loop.run_until([&] { return listening; }));

  uint64_t before = 0;
  uint64_t calls_before = 0;
  for (int i = 0; i < kHandOffs; ++i) {
    if (i == kHandOffs / 2) {
      before = allocations.load();
      calls_before = libuv_calls.load();
      measuring = true;
    }
    std::string seq = std::to_string(i + 1);
    std::string frame = std::string(R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":{"act":"newconn","cmd":"NODE_CLUSTER","key":")") +
                        kKey + R"(","seq":)" + seq + "}}\n";
    int conn[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, conn), 0);
    send_with_fd(primary.get(), frame, conn[0]);
    ::close(conn[0]);
    ::close(conn[1]);
    written.clear();
    std::string answer = "\"ack\":" + seq + ",";
    ASSERT_TRUE(run_counted(loop, [&] {
      drain(primary.get(), written);
      return delivered == i + 1 && written.find(answer) != std::string::npos;
    })) << written;
  }
  measuring = false;
  uint64_t during = allocations.load() - before;
  EXPECT_EQ(during, 0u) << "heap allocations in the worker during " << kHandOffs / 2 << " hand-offs";
  EXPECT_EQ(libuv_calls.load() - calls_before, 0u)
      << "uv_pipe_pending_count/uv_accept/uv_try_write calls in the worker during " << kHandOffs / 2 << " hand-offs";
  EXPECT_EQ(worker->counters().accepted, static_cast<uint64_t>(kHandOffs));

  worker.reset();
  loop.run_until([] { return true; });
}
