// The C++ worker's rr hand-off fast path (a newconn recognised on the NODE_HANDLE frame's bytes,
// answered without JSON values) against its general path (the same Worker with the channel's
// handle filter removed): the same frames, hostile ones included, must give the same bytes on
// the channel, the same connections and the same counters. The test plays the primary on a
// socketpair, one sendmsg per step.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fd_leak_test.hpp"
#include "support.hpp"
#include "uvcluster/cluster/worker.hpp"

using namespace uvcluster;
using namespace uvcluster::cluster;

// The syscalls made on one watched fd (the worker's end of the channel), counted by interposing
// libc's write, writev, send, sendmsg and recvmsg in this binary (libuv and the channel call them
// through the PLT); every call is passed on unchanged.
namespace {
int watched_fd = -1;
int writes_on_watched = 0;
int failed_reads_on_watched = 0;

template <typename Fn>
Fn next_symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}
}  // namespace

extern "C" ssize_t write(int fd, const void* buf, size_t n) {
  static auto real = next_symbol<ssize_t (*)(int, const void*, size_t)>("write");
  if (fd >= 0 && fd == watched_fd) ++writes_on_watched;
  return real(fd, buf, n);
}
extern "C" ssize_t writev(int fd, const struct iovec* iov, int n) {
  static auto real = next_symbol<ssize_t (*)(int, const struct iovec*, int)>("writev");
  if (fd >= 0 && fd == watched_fd) ++writes_on_watched;
  return real(fd, iov, n);
}
extern "C" ssize_t send(int fd, const void* buf, size_t n, int flags) {
  static auto real = next_symbol<ssize_t (*)(int, const void*, size_t, int)>("send");
  if (fd >= 0 && fd == watched_fd) ++writes_on_watched;
  return real(fd, buf, n, flags);
}
extern "C" ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  static auto real = next_symbol<ssize_t (*)(int, const struct msghdr*, int)>("sendmsg");
  if (fd >= 0 && fd == watched_fd) ++writes_on_watched;
  return real(fd, msg, flags);
}
extern "C" ssize_t recvmsg(int fd, struct msghdr* msg, int flags) {
  static auto real = next_symbol<ssize_t (*)(int, struct msghdr*, int)>("recvmsg");
  ssize_t n = real(fd, msg, flags);
  if (n < 0 && fd >= 0 && fd == watched_fd && errno == EAGAIN) ++failed_reads_on_watched;
  return n;
}

namespace {

// One sendmsg: `data` with `fds` attached (SCM_RIGHTS), so a step arrives in one read.
void send_with_fds(int sock, const std::string& data, const std::vector<int>& fds) {
  msghdr msg{};
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 4)] = {};
  ASSERT_LE(fds.size(), 4u);
  if (!fds.empty()) {
    msg.msg_control = ctrl;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ASSERT_EQ(sendmsg(sock, &msg, MSG_NOSIGNAL), static_cast<ssize_t>(data.size()));
}

// A connection to hand over: one end of a fresh socketpair (the other end is closed at once).
int connection_fd() {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ::close(sv[1]);
  return sv[0];
}

// Takes what is waiting on `sock` (never blocks), and the fds that came with it.
void receive_with_fds(int sock, std::string& data, std::vector<Fd>& fds) {
  for (;;) {
    char buf[4096];
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 4)] = {};
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof ctrl;
    ssize_t n = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n <= 0) return;
    data.append(buf, static_cast<size_t>(n));
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.emplace_back(fd);
      }
    }
  }
}

constexpr const char* kKey = "127.0.0.1:0:4:undefined:0";

// A Worker on one end of a socketpair; the test holds the other (the primary's) end.
struct ScriptedWorker {
  int primary = -1;
  int worker_end = -1;  // the Worker's end of the channel
  std::unique_ptr<Worker> worker;
  std::string written;  // everything the worker wrote on its channel
  bool eof = false;
  std::vector<bool> connections;  // per delivered connection: its fd was valid
  std::vector<int> markers;
  std::vector<std::string> errors;
  bool listening = false;

  ScriptedWorker(uvc_test::TestLoop& loop, bool fast_path) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    primary = sv[0];
    worker_end = sv[1];
    ::setenv("NODE_UNIQUE_ID", "1", 1);
    ::setenv("NODE_CHANNEL_FD", std::to_string(sv[1]).c_str(), 1);
    auto w = Worker::start(loop);
    EXPECT_TRUE(w.ok());
    if (!w.ok()) return;
    worker = std::move(w.value());
    if (!fast_path) worker->channel().set_handle_filter({});
    worker->channel().on_error([this](const Error& e) { errors.push_back(e.code); });
    worker->on_message([this](const ipc::Json& m) { markers.push_back(m.value("marker", -1)); });
    ListenOptions lo;
    lo.host = "127.0.0.1";
    worker->listen(lo, [this](Result<ListenAddress> r) { listening = r.ok(); },
                   [this](Fd conn) { connections.push_back(conn.valid()); });
  }
  ~ScriptedWorker() {
    worker.reset();
    if (primary >= 0) ::close(primary);
  }
  // Takes what the worker wrote so far (never blocks).
  void drain() {
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(primary, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        written.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) eof = true;
      return;
    }
  }
  bool wrote_line_containing(const std::string& s) {
    drain();
    return written.find(s) != std::string::npos;
  }
};

class WorkerHandoff : public uvc_test::FdLeakTest {};

}  // namespace

TEST_F(WorkerHandoff, FastPathAndGeneralPathAnswerEveryFrameAlike) {
  uvc_test::TestLoop loop;
  ScriptedWorker fast(loop, true);
  ScriptedWorker general(loop, false);
  ASSERT_TRUE(fast.worker && general.worker);
  std::string frame_head = R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":)";
  for (ScriptedWorker* w : {&fast, &general}) {
    // online (seq 0), then queryServer (seq 1): answered as an rr primary does (no fd).
    ASSERT_TRUE(loop.run_until([&] { return w->wrote_line_containing("\"queryServer\""); }));
    send_with_fds(w->primary,
                  std::string(R"({"cmd":"NODE_CLUSTER","ack":1,"key":")") + kKey +
                      R"(","sockname":{"address":"127.0.0.1","family":"IPv4","port":4321},"seq":0})" + "\n",
                  {});
    ASSERT_TRUE(loop.run_until([&] { return w->listening; }));
  }
  auto newconn = [&](const std::string& key, const std::string& seq) {
    return frame_head + R"({"act":"newconn","cmd":"NODE_CLUSTER","key":")" + key + R"(","seq":)" + seq + "}}";
  };
  struct Step {
    std::string frame;
    bool with_fd;
  };
  std::vector<Step> steps = {
      {newconn(kKey, "5"), true},  // ours: accepted
      {frame_head + R"({"cmd":"NODE_CLUSTER","act":"newconn","key":")" + kKey + R"(","seq":6}})", true},  // Node's
      {newconn("127.0.0.1:1:4:undefined:0", "7"), true},  // a key we do not serve: refused
      {newconn(kKey, "8"), false},                         // no fd: NACK, nothing delivered
      {newconn("127.0.0.\\u0031:0:4:undefined:0", "9"), true},  // an escape: the general path decodes it
      {newconn(kKey, "10").substr(0, newconn(kKey, "10").size() - 1), true},  // truncated: a bad frame
      {newconn(kKey, "11") + "}", true},                                      // one brace too many
      {newconn(kKey, "12").substr(0, newconn(kKey, "12").size() - 1) + R"(,"key":"k"})", true},  // a wrapper key
      {newconn(kKey, "1.5"), true},
      {newconn(kKey, "-3"), true},
      {newconn(kKey, "1e2"), true},
      {R"({"cmd":"NODE_HANDLE","type":"net.Foo","msg":{"act":"newconn","cmd":"NODE_CLUSTER","key":")" +
           std::string(kKey) + R"(","seq":13}})",
       true},  // an unknown type
      {frame_head + newconn(kKey, "14") + "}", true},  // double-wrapped (Node's NACK retransmission)
      {frame_head + R"({"act":"newconn","cmd":"NODE_CLUSTER","key":")" + kKey + R"(","seq":15,"x":1}})", true},
      {newconn(kKey, "16"), true},  // ours again, after all that
  };
  int marker = 0;
  for (const auto& step : steps) {
    ++marker;
    // A marker (a user message with its own fd, taken first) and the step in one sendmsg, so
    // both workers read them in one read; once the marker is delivered the step is handled.
    std::string data = frame_head + R"({"marker":)" + std::to_string(marker) + "}}\n" + step.frame + "\n";
    for (ScriptedWorker* w : {&fast, &general}) {
      std::vector<int> fds{connection_fd()};
      if (step.with_fd) fds.push_back(connection_fd());
      send_with_fds(w->primary, data, fds);
      for (int fd : fds) ::close(fd);
      ASSERT_TRUE(loop.run_until([&] { return !w->markers.empty() && w->markers.back() == marker; })) << step.frame;
    }
  }
  for (ScriptedWorker* w : {&fast, &general}) {
    send_with_fds(w->primary, R"({"cmd":"NODE_CLUSTER","act":"disconnect","seq":99})" "\n", {});
    ASSERT_TRUE(loop.run_until([&] {
      w->drain();
      return w->eof;
    }));
  }
  EXPECT_EQ(fast.written, general.written);
  EXPECT_EQ(fast.connections, general.connections);
  EXPECT_EQ(fast.errors, general.errors);
  EXPECT_EQ(fast.worker->counters().accepted, general.worker->counters().accepted);
  EXPECT_EQ(fast.worker->counters().refused, general.worker->counters().refused);
  // What both must have written for the plain cases (the seq after online, queryServer and
  // listening is 3).
  EXPECT_NE(fast.written.find("{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"accepted\":true,\"ack\":5,\"cmd\":\"NODE_CLUSTER\",\"seq\":3}\n"),
            std::string::npos)
      << fast.written;
  EXPECT_NE(fast.written.find("{\"accepted\":false,\"ack\":7,"), std::string::npos);
  EXPECT_NE(fast.written.find("{\"cmd\":\"NODE_HANDLE_NACK\"}\n"), std::string::npos);
  EXPECT_EQ(fast.connections.size(), 11u);  // all but the refused, the fd-less and the 2 bad frames
  EXPECT_EQ(fast.worker->counters().refused, 1u);
}

// Issue 13 §1: a C++ worker declares `returnRefused` in its queryServer; under a primary that
// confirms it (ours) a refused connection goes back attached to the answer, on the fast and the
// general path alike; without the confirmation (Node's primary) the answer is the plain one.
TEST_F(WorkerHandoff, ARefusedConnectionGoesBackOnlyWhenThePrimaryAskedForIt) {
  for (bool confirmed : {true, false}) {
    for (bool fast_path : {true, false}) {
      SCOPED_TRACE(std::string(confirmed ? "confirmed" : "not confirmed") + (fast_path ? ", fast path" : ", general path"));
      uvc_test::TestLoop loop;
      ScriptedWorker w(loop, fast_path);
      ASSERT_TRUE(w.worker);
      ASSERT_TRUE(loop.run_until([&] { return w.wrote_line_containing("\"queryServer\""); }));
      EXPECT_NE(w.written.find("\"returnRefused\":true"), std::string::npos) << w.written;
      send_with_fds(w.primary,
                    std::string(R"({"cmd":"NODE_CLUSTER","ack":1,"key":")") + kKey + R"(",)" +
                        (confirmed ? R"("returnRefused":true,)" : "") +
                        R"("sockname":{"address":"127.0.0.1","family":"IPv4","port":4321},"seq":0})" + "\n",
                    {});
      ASSERT_TRUE(loop.run_until([&] { return w.listening; }));
      w.drain();
      int conn = connection_fd();
      struct stat sent{};
      ASSERT_EQ(::fstat(conn, &sent), 0);
      send_with_fds(w.primary,
                    R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":{"act":"newconn","cmd":"NODE_CLUSTER",)"
                    R"("key":"127.0.0.1:1:4:undefined:0","seq":7}})" "\n",  // a key it does not serve: refused
                    {conn});
      ::close(conn);
      std::string got;
      std::vector<Fd> fds;
      ASSERT_TRUE(loop.run_until([&] {
        receive_with_fds(w.primary, got, fds);
        return got.find("\"ack\":7") != std::string::npos;
      }));
      if (confirmed) {
        EXPECT_NE(got.find(R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":{"accepted":false,"ack":7,)"),
                  std::string::npos) << got;
        ASSERT_EQ(fds.size(), 1u);
        struct stat back{};
        ASSERT_EQ(::fstat(fds[0].get(), &back), 0);
        EXPECT_EQ(back.st_ino, sent.st_ino);  // the very connection
        send_with_fds(w.primary, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n", {});
      } else {
        EXPECT_NE(got.find("{\"accepted\":false,\"ack\":7,"), std::string::npos) << got;
        EXPECT_TRUE(fds.empty());
      }
      EXPECT_EQ(w.worker->counters().refused, 1u);
      EXPECT_TRUE(w.connections.empty());
      send_with_fds(w.primary, R"({"cmd":"NODE_CLUSTER","act":"disconnect","seq":99})" "\n", {});
      ASSERT_TRUE(loop.run_until([&] {
        w.drain();
        return w.eof;
      }));
    }
  }
}

// Issue 13 §1, the window (--rr-window K): newconns queued behind each other on the channel
// reach the worker one per recvmsg (the kernel stops a unix stream read after a message with
// fds). The worker reads them all on one wake-up and its ACKs and answers leave in ONE write, in
// the frames' order (before: one write per newconn). At a window of 1 (one newconn at a time)
// the read for more fails, so it is only tried now and then: a bounded number of failed reads.
TEST_F(WorkerHandoff, NewconnsQueuedOnTheChannelAreAnsweredInOneWrite) {
  uvc_test::TestLoop loop;
  ScriptedWorker w(loop, true);
  ASSERT_TRUE(w.worker);
  ASSERT_TRUE(loop.run_until([&] { return w.wrote_line_containing("\"queryServer\""); }));
  send_with_fds(w.primary,
                std::string(R"({"cmd":"NODE_CLUSTER","ack":1,"key":")") + kKey +
                    R"(","sockname":{"address":"127.0.0.1","family":"IPv4","port":4321},"seq":0})" + "\n",
                {});
  ASSERT_TRUE(loop.run_until([&] { return w.listening; }));
  w.drain();
  w.written.clear();
  auto send_newconn = [&](int seq) {
    int conn = connection_fd();
    send_with_fds(w.primary,
                  std::string(R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":{"act":"newconn","cmd":"NODE_CLUSTER","key":")") +
                      kKey + R"(","seq":)" + std::to_string(seq) + "}}\n",
                  {conn});
    ::close(conn);
  };
  constexpr int kQueued = 8;
  for (int seq = 1; seq <= kQueued; ++seq) send_newconn(seq);  // all queued before the worker runs
  watched_fd = w.worker_end;
  writes_on_watched = 0;
  ASSERT_TRUE(loop.run_until([&] { return w.connections.size() == static_cast<size_t>(kQueued); }));
  int burst_writes = writes_on_watched;
  ASSERT_TRUE(loop.run_until([&] { return w.wrote_line_containing("\"ack\":" + std::to_string(kQueued) + ","); }));
  EXPECT_EQ(burst_writes, 1) << w.written;
  size_t at = 0;
  for (int seq = 1; seq <= kQueued; ++seq) {  // each newconn's ACK then its answer, in order
    size_t ack = w.written.find("{\"cmd\":\"NODE_HANDLE_ACK\"}\n", at);
    size_t answer = w.written.find("{\"accepted\":true,\"ack\":" + std::to_string(seq) + ",", at);
    ASSERT_NE(ack, std::string::npos) << seq << ": " << w.written;
    ASSERT_NE(answer, std::string::npos) << seq << ": " << w.written;
    EXPECT_LT(ack, answer) << seq;
    at = answer;
  }

  // A window of 1: each newconn waits for the previous answer.
  constexpr int kOneByOne = 64;
  failed_reads_on_watched = 0;
  for (int i = 1; i <= kOneByOne; ++i) {
    int seq = kQueued + i;
    send_newconn(seq);
    ASSERT_TRUE(loop.run_until([&] { return w.wrote_line_containing("\"ack\":" + std::to_string(seq) + ","); }));
  }
  watched_fd = -1;
  // A few misses before it stops trying, then one try every 32 newconns.
  EXPECT_LE(failed_reads_on_watched, 4 + kOneByOne / 32) << "reads that found nothing";
  EXPECT_EQ(w.connections.size(), static_cast<size_t>(kQueued + kOneByOne));
}
