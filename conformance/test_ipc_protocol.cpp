// Channel against a scripted raw peer over a socketpair: bad input, handle ACK/NACK, queueing.
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ipc/channel_owner.hpp"  // impl/src: white-box
#include "fd_leak_test.hpp"
#include "support.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/ipc/channel.hpp"

using namespace uvcluster;
using ipc::Json;

namespace {
// The next sendmsg on `short_send_fd` sends only its first `short_send_bytes` bytes (a socket
// buffer with room for part of a frame, which a ~100-byte frame on a unix socket cannot be made
// to meet otherwise); libc's sendmsg is interposed in this binary for it, every other call passes.
int short_send_fd = -1;
size_t short_send_bytes = 0;
}  // namespace

extern "C" ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  static auto real = reinterpret_cast<ssize_t (*)(int, const struct msghdr*, int)>(dlsym(RTLD_NEXT, "sendmsg"));
  if (fd < 0 || fd != short_send_fd) return real(fd, msg, flags);
  short_send_fd = -1;
  std::vector<iovec> head;
  for (size_t i = 0, left = short_send_bytes; i < msg->msg_iovlen && left > 0; ++i) {
    size_t n = std::min(left, msg->msg_iov[i].iov_len);
    head.push_back(iovec{msg->msg_iov[i].iov_base, n});
    left -= n;
  }
  msghdr cut = *msg;
  cut.msg_iov = head.data();
  cut.msg_iovlen = head.size();
  return real(fd, &cut, flags);
}

namespace {

// Sends `data` with `fd` attached (SCM_RIGHTS) when fd >= 0.
void raw_send(int sock, const std::string& data, int fd = -1) {
  msghdr msg{};
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof(ctrl);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  ASSERT_EQ(sendmsg(sock, &msg, 0), static_cast<ssize_t>(data.size()));
}

// Writes all of `data` to the raw end, which the Pair's reader made non-blocking (run it on a
// thread while the loop turns).
void send_all(int sock, const std::string& data) {
  for (size_t off = 0; off < data.size();) {
    ssize_t n = ::send(sock, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      pollfd pfd{sock, POLLOUT, 0};
      ::poll(&pfd, 1, 1000);
    } else {
      ADD_FAILURE() << "send: " << std::strerror(errno);
      return;
    }
  }
}

struct Pair {
  uvc_test::TestLoop& loop;
  std::unique_ptr<ipc::Channel> ch;
  int peer = -1;                       // raw end, written with raw_send
  detail::UvHandle<uv_pipe_t> reader;  // reads the raw end (fds, if any, are discarded by read())
  std::string from_channel;
  bool peer_eof = false;
  std::function<void(const std::string& line)> on_peer_line;
  size_t consumed = 0;
  std::vector<Json> messages;
  std::vector<std::optional<ipc::HandleType>> handle_types;
  std::vector<std::optional<std::string>> keys;
  std::vector<std::string> errors;
  bool disconnected = false, closed = false;
  bool keep_handles = false;             // keep received handles (fd + socket-list token)
  std::vector<ipc::ReceivedHandle> kept;

  Pair(uvc_test::TestLoop& l, ipc::ChannelOptions o = {}) : loop(l) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    auto made = ipc::ChannelOwner::make(loop.get(), o);  // the owner's side, as spawn() has it
    EXPECT_TRUE(made.ok());
    ch = std::move(*made);
    EXPECT_EQ(uv_pipe_open(ipc::ChannelOwner::pipe(*ch), sv[0]), 0);
    ch->on_message([this](const Json& m, ipc::ReceivedHandle* h) {
      messages.push_back(m);
      handle_types.push_back(h ? std::optional(h->type) : std::nullopt);
      keys.push_back(h ? h->key : std::nullopt);
      if (h && keep_handles) kept.push_back(std::move(*h));
    });
    ch->on_error([this](const Error& e) { errors.push_back(e.code); });
    ch->on_disconnect([this] { disconnected = true; });
    ch->on_close([this] { closed = true; });
    ipc::ChannelOwner::start(*ch);
    peer = sv[1];
    reader.must_init(uv_pipe_init(loop.get(), reader.get(), 0), "uv_pipe_init");
    uv_pipe_open(reader.get(), fcntl(peer, F_DUPFD_CLOEXEC, 0));
    reader->data = this;
    uv_read_start(
        reader.stream(),
        [](uv_handle_t*, size_t, uv_buf_t* b) {
          static char buf[65536];
          *b = uv_buf_init(buf, sizeof buf);
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
          auto* self = static_cast<Pair*>(s->data);
          if (n < 0) {
            self->peer_eof = true;
            uv_read_stop(s);
            return;
          }
          self->from_channel.append(b->base, static_cast<size_t>(n));
          size_t nl;
          while ((nl = self->from_channel.find('\n', self->consumed)) != std::string::npos) {
            std::string line = self->from_channel.substr(self->consumed, nl - self->consumed);
            self->consumed = nl + 1;
            if (self->on_peer_line) self->on_peer_line(line);
          }
        });
  }
  ~Pair() {
    if (peer >= 0) close(peer);
  }
  size_t lines_from_channel() const {
    return static_cast<size_t>(std::count(from_channel.begin(), from_channel.end(), '\n'));
  }
};

int count_of(const std::vector<std::string>& v, const std::string& s) {
  return static_cast<int>(std::count(v.begin(), v.end(), s));
}

class IpcProtocol : public uvc_test::FdLeakTest {};

}  // namespace

TEST_F(IpcProtocol, BadFramesAreSkipped) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  raw_send(p.peer, "nope\n\n{\"ok\":1}\n");
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 1; }));
  EXPECT_EQ(p.messages[0], (Json{{"ok", 1}}));
  EXPECT_EQ(count_of(p.errors, "ERR_IPC_BAD_FRAME"), 2);
  EXPECT_TRUE(p.ch->connected());
}

TEST_F(IpcProtocol, DeeplyNestedFramesAreSkipped) {
  // A million levels (2 MB): no crash, one ERR_IPC_BAD_FRAME each, the next frame still arrives.
  // 1000 levels (the default bound) is a message; 1001 is not.
  uvc_test::TestLoop loop;
  Pair p(loop);
  auto nest = [](size_t n, const std::string& open, const std::string& inner, const std::string& close) {
    std::string s;
    for (size_t i = 0; i < n; ++i) s += open;
    s += inner;
    for (size_t i = 0; i < n; ++i) s += close;
    return s;
  };
  std::thread writer([&] {
    send_all(p.peer, nest(1000000, "[", "", "]") + "\n");
    send_all(p.peer, nest(1000000, "{\"a\":", "1", "}") + "\n");
    send_all(p.peer, nest(1001, "[", "", "]") + "\n");
    send_all(p.peer, nest(1000, "[", "", "]") + "\n{\"ok\":1}\n");
  });
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 2; }, 60000));
  writer.join();
  EXPECT_EQ(count_of(p.errors, "ERR_IPC_BAD_FRAME"), 3);
  size_t depth = 0;
  for (const Json* v = &p.messages[0]; v && v->is_array(); v = v->empty() ? nullptr : &v->front()) ++depth;
  EXPECT_EQ(depth, 1000u);
  EXPECT_EQ(p.messages[1], (Json{{"ok", 1}}));
  EXPECT_TRUE(p.ch->connected());

  ipc::ChannelOptions shallow;
  shallow.max_nesting_depth = 2;
  Pair q(loop, shallow);
  raw_send(q.peer, "[[[]]]\n[[]]\n");
  ASSERT_TRUE(loop.run_until([&] { return q.messages.size() == 1; }));
  EXPECT_EQ(q.errors, std::vector<std::string>{"ERR_IPC_BAD_FRAME"});
}

TEST_F(IpcProtocol, FrameTooLargeCloses) {
  uvc_test::TestLoop loop;
  Pair p(loop, ipc::ChannelOptions{1024});
  raw_send(p.peer, "\"ok\"\n");
  raw_send(p.peer, "\"" + std::string(2000, 'x'));
  ASSERT_TRUE(loop.run_until([&] { return p.closed && p.peer_eof; }));
  EXPECT_EQ(p.messages.size(), 1u);
  EXPECT_EQ(p.errors, std::vector<std::string>{"ERR_IPC_FRAME_TOO_LARGE"});
  EXPECT_TRUE(p.disconnected);
}

TEST_F(IpcProtocol, UnexpectedHandleIsClosed) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  raw_send(p.peer, "\"plain\"\n", fds[0]);
  close(fds[0]);
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 1 && !p.errors.empty(); }));
  EXPECT_EQ(p.errors, std::vector<std::string>{"ERR_IPC_UNEXPECTED_HANDLE"});
  EXPECT_FALSE(p.handle_types[0].has_value());
  // The channel closed its copy: the pipe's write end sees no reader.
  EXPECT_TRUE(loop.run_until([&] {
    char c = 0;
    return write(fds[1], &c, 1) < 0 && errno == EPIPE;
  }, 5000));
  close(fds[1]);
}

// More fds in one message than a read takes (libuv's and the channel's control buffers hold 64;
// Linux lets a sender attach up to 253): the kernel closes those that do not fit, the frame gets
// one, each other one is reported and closed, and no copy outlives the channel's handling. The
// message comes alone (read by libuv) or queued behind a hand-off (read by the channel's own
// read of the handles queued behind one).
TEST_F(IpcProtocol, MoreFdsInOneMessageThanAReadTakesAreAllClosed) {
  for (bool behind_a_hand_off : {false, true}) {
    SCOPED_TRACE(behind_a_hand_off ? "queued behind a hand-off" : "alone");
    uvc_test::TestLoop loop;
    Pair p(loop);
    int fds[2];
    ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
    std::string frame = "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":\"x\"}\n";
    if (behind_a_hand_off) raw_send(p.peer, frame, fds[0]);
    constexpr size_t kAttached = 200;
    std::vector<int> copies(kAttached, fds[0]);
    iovec iov{frame.data(), frame.size()};
    std::vector<char> ctrl(CMSG_SPACE(sizeof(int) * kAttached));
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.data();
    msg.msg_controllen = ctrl.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * kAttached);
    std::memcpy(CMSG_DATA(c), copies.data(), sizeof(int) * kAttached);
    ASSERT_EQ(sendmsg(p.peer, &msg, 0), static_cast<ssize_t>(frame.size()));
    close(fds[0]);
    size_t frames = behind_a_hand_off ? 2 : 1;
    ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == frames && p.lines_from_channel() == frames; }));
    for (const auto& type : p.handle_types) EXPECT_TRUE(type.has_value());
    EXPECT_EQ(p.from_channel, behind_a_hand_off ? "{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"cmd\":\"NODE_HANDLE_ACK\"}\n"
                                                : "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
    EXPECT_FALSE(p.errors.empty());
    EXPECT_LT(p.errors.size(), kAttached - 1);  // the kernel dropped some: they never reached us
    for (const auto& e : p.errors) EXPECT_EQ(e, "ERR_IPC_UNEXPECTED_HANDLE");
    EXPECT_TRUE(loop.run_until([&] {  // every copy closed: the pipe's write end sees no reader
      char b = 0;
      return write(fds[1], &b, 1) < 0 && errno == EPIPE;
    }, 5000));
    close(fds[1]);
  }
}

TEST_F(IpcProtocol, HandleWithoutFdIsNacked) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":\"x\"}\n\"after\"\n");
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 1 && p.messages.size() == 1; }));
  EXPECT_EQ(p.from_channel, "{\"cmd\":\"NODE_HANDLE_NACK\"}\n");
  EXPECT_EQ(p.messages[0], "after");
}

TEST_F(IpcProtocol, HandleIsAckedAndDelivered) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  raw_send(p.peer, "\"one\"\n");
  raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"two\":2},\"key\":\"4:0.0.0.0:80\"}\n",
           sv[0]);
  raw_send(p.peer, "\"three\"\n");
  close(sv[0]);
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 3 && p.lines_from_channel() == 1; }));
  EXPECT_EQ(p.from_channel, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
  EXPECT_EQ(p.messages[1], (Json{{"two", 2}}));
  EXPECT_FALSE(p.handle_types[0]);
  EXPECT_EQ(p.handle_types[1], ipc::HandleType::socket);
  EXPECT_EQ(p.keys[1], "4:0.0.0.0:80");
  EXPECT_FALSE(p.handle_types[2]);
  EXPECT_TRUE(p.errors.empty());
  close(sv[1]);
}

TEST_F(IpcProtocol, SocketListAnsweredWhileTheSocketIsHeld) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  p.keep_handles = true;
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":\"s\",\"key\":\"k\"}\n", sv[0]);
  close(sv[0]);
  raw_send(p.peer, "{\"cmd\":\"NODE_SOCKET_GET_COUNT\",\"key\":\"unknown\"}\n"  // no list: no answer
                   "{\"cmd\":\"NODE_SOCKET_GET_COUNT\",\"key\":\"k\"}\n"
                   "{\"cmd\":\"NODE_SOCKET_NOTIFY_CLOSE\",\"key\":\"k\"}\n");  // waits for the close
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 2 && p.kept.size() == 1; }));
  EXPECT_EQ(p.from_channel,
            "{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"cmd\":\"NODE_SOCKET_COUNT\",\"count\":1,\"key\":\"k\"}\n");
  ASSERT_TRUE(p.kept[0].connection);
  p.kept.clear();  // the socket is closed: the waiting NOTIFY_CLOSE is answered
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 3; }));
  raw_send(p.peer, "{\"cmd\":\"NODE_SOCKET_NOTIFY_CLOSE\",\"key\":\"k\"}\n"  // already empty: at once
                   "{\"cmd\":\"NODE_SOCKET_GET_COUNT\",\"key\":\"k\"}\n");
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 5; }));
  EXPECT_EQ(p.from_channel.substr(p.from_channel.find("\n", p.from_channel.find("COUNT")) + 1),
            "{\"cmd\":\"NODE_SOCKET_ALL_CLOSED\",\"key\":\"k\"}\n"
            "{\"cmd\":\"NODE_SOCKET_ALL_CLOSED\",\"key\":\"k\"}\n"
            "{\"cmd\":\"NODE_SOCKET_COUNT\",\"count\":0,\"key\":\"k\"}\n");
  EXPECT_TRUE(p.errors.empty());
  close(sv[1]);
}

TEST_F(IpcProtocol, NodeDoubleWrappedRetransmissionIsUnwrapped) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  // What node v20 re-sends after a NACK (observed; see channel.hpp).
  raw_send(p.peer,
           "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"cmd\":\"NODE_HANDLE\",\"type\":"
           "\"net.Socket\",\"msg\":{\"hello\":1},\"key\":\"4:127.0.0.1:0\"}}\n",
           sv[0]);
  close(sv[0]);
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 1 && p.lines_from_channel() == 1; }));
  EXPECT_EQ(p.messages[0], (Json{{"hello", 1}}));
  EXPECT_EQ(p.handle_types[0], ipc::HandleType::socket);
  EXPECT_EQ(p.keys[0], "4:127.0.0.1:0");
  EXPECT_EQ(p.from_channel, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");  // one ACK
  close(sv[1]);
}

TEST_F(IpcProtocol, PeerDiesMidMessage) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  raw_send(p.peer, "\"whole\"\n{\"half\":");
  close(p.peer);
  p.peer = -1;
  p.reader.close();
  ASSERT_TRUE(loop.run_until([&] { return p.closed; }));
  EXPECT_EQ(p.messages, std::vector<Json>{"whole"});
  EXPECT_EQ(p.errors, std::vector<std::string>{"ERR_IPC_TRUNCATED"});
  EXPECT_TRUE(p.disconnected);
  std::string code;
  EXPECT_FALSE(p.ch->send("x", std::nullopt, {}, [&](const Error* e) { code = e ? e->code : ""; }));
  ASSERT_TRUE(loop.run_until([&] { return !code.empty(); }));
  EXPECT_EQ(code, "ERR_IPC_CHANNEL_CLOSED");
  EXPECT_EQ(p.ch->disconnect().error().code, "ERR_IPC_DISCONNECTED");
}

TEST_F(IpcProtocol, SendQueuesBehindHandleAndReturnsNodesBooleans) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  // test-child-process-send-returns-boolean.js: true, true, false, false
  EXPECT_TRUE(p.ch->send("one", ipc::OutgoingHandle{ipc::HandleType::native, Fd::dup(sv[0]).value()}));
  EXPECT_TRUE(p.ch->send("two", ipc::OutgoingHandle{ipc::HandleType::native, Fd::dup(sv[0]).value()}));
  EXPECT_FALSE(p.ch->send("three"));
  EXPECT_FALSE(p.ch->send("four"));
  p.on_peer_line = [&](const std::string& line) {
    if (line.find("NODE_HANDLE") != std::string::npos) raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
  };
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 4; }));
  EXPECT_EQ(p.from_channel,
            "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":\"one\"}\n"
            "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":\"two\"}\n"
            "\"three\"\n\"four\"\n");
  close(sv[0]);
  close(sv[1]);
}

TEST_F(IpcProtocol, NackRetransmitsSocketThreeTimesThenGivesUp) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  int handle_frames = 0;
  p.on_peer_line = [&](const std::string& line) {
    if (line.find("NODE_HANDLE") != std::string::npos) {
      ++handle_frames;
      raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE_NACK\"}\n");
    }
  };
  bool acked = false;
  int done_calls = 0;
  ipc::SendOptions so;
  so.on_acked = [&] { acked = true; };
  p.ch->send("s", ipc::OutgoingHandle{ipc::HandleType::socket, Fd::dup(sv[0]).value(), "4:0.0.0.0:1"}, so,
             [&](const Error* e) { EXPECT_EQ(e, nullptr); ++done_calls; });
  p.ch->send("after");
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 5; }));
  EXPECT_EQ(handle_frames, 4);  // first send + MAX_HANDLE_RETRANSMISSIONS (3)
  EXPECT_EQ(done_calls, 1);
  EXPECT_TRUE(acked);
  EXPECT_EQ(count_of(p.errors, "ERR_IPC_HANDLE_NOT_RECEIVED"), 1);
  EXPECT_EQ(p.from_channel.substr(p.from_channel.size() - 8), "\"after\"\n");
  close(sv[0]);
  close(sv[1]);
}

TEST_F(IpcProtocol, DisconnectWaitsForPendingAck) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  p.ch->send("h", ipc::OutgoingHandle{ipc::HandleType::server, Fd::dup(sv[0]).value()});
  p.ch->send("queued");
  ASSERT_TRUE(p.ch->disconnect().ok());
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 1; }));
  EXPECT_FALSE(p.disconnected);
  raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
  ASSERT_TRUE(loop.run_until([&] { return p.closed && p.peer_eof; }));
  EXPECT_TRUE(p.disconnected);
  EXPECT_EQ(p.lines_from_channel(), 2u);  // the queued message went out before the close
  close(sv[0]);
  close(sv[1]);
}

// The hand-off's round trip is one write each way: the ACK of a received handle is not written
// on its own before the listeners run; it leaves in one write with the reply they send.
TEST_F(IpcProtocol, HandleAckAndTheReplyItTriggersLeaveInOneWrite) {
  uvc_test::TestLoop loop;
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  auto made = ipc::ChannelOwner::make(loop.get());
  ASSERT_TRUE(made.ok());
  auto ch = std::move(*made);
  ASSERT_EQ(uv_pipe_open(ipc::ChannelOwner::pipe(*ch), sv[0]), 0);
  int peer = sv[1];
  bool answered = false;
  ssize_t written_before_reply = -2;
  ch->on_internal_message([&](const Json& m, ipc::ReceivedHandle* h) {
    if (!h) return;
    char probe[256];
    written_before_reply = ::recv(peer, probe, sizeof probe, MSG_PEEK | MSG_DONTWAIT);
    ch->send(Json{{"cmd", "NODE_CLUSTER"}, {"ack", m["seq"]}, {"accepted", true}});
    answered = true;
  });
  ipc::ChannelOwner::start(*ch);
  int conn[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, conn), 0);
  raw_send(peer, "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"cmd\":\"NODE_CLUSTER\",\"seq\":7}}\n",
           conn[0]);
  ::close(conn[0]);
  ::close(conn[1]);
  ASSERT_TRUE(loop.run_until([&] { return answered; }));
  EXPECT_EQ(written_before_reply, -1);  // nothing written yet when the listener ran (EAGAIN)
  pollfd pfd{peer, POLLIN, 0};
  ASSERT_TRUE(loop.run_until([&] { return ::poll(&pfd, 1, 0) == 1; }));
  char buf[512];
  ssize_t n = ::recv(peer, buf, sizeof buf, MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)),
            "{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"accepted\":true,\"ack\":7,\"cmd\":\"NODE_CLUSTER\"}\n");
  ch.reset();
  ::close(peer);
}

// A hand-off window: pipelined handles go out without waiting for the ACKs of the ones before
// them; the ACKs answer them in order, and a plain message is not held back by them.
// send_encoded (the hand-off's fast path) writes the frame send() writes, at once and when it
// has to wait behind an unacknowledged handle.
TEST_F(IpcProtocol, SendEncodedWritesTheSameFramesAsSend) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Json message = {{"act", "newconn"}, {"cmd", "NODE_CLUSTER"}, {"key", "k \"\xC3\xA9\""}, {"seq", 12}};
  std::string encoded = ipc::encode_frame(message);
  encoded.pop_back();
  auto borrowed = [&] { return ipc::OutgoingHandle{ipc::HandleType::native, Fd{}, std::nullopt, sv[0]}; };
  EXPECT_TRUE(p.ch->send(message, borrowed()));
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 1; }));
  EXPECT_TRUE(p.ch->send_encoded(encoded, borrowed()));  // queued behind the first one's ACK
  raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 2; }));
  raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
  ipc::SendOptions o;
  o.done_on_failure_only = true;
  EXPECT_TRUE(p.ch->send_encoded(encoded, borrowed(), o));  // at once (after that ACK is read)
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 3; }));
  std::string frame = "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":" + encoded + "}\n";
  EXPECT_EQ(p.from_channel, frame + frame + frame);
  EXPECT_TRUE(p.errors.empty());
  close(sv[0]);
  close(sv[1]);
}

// A hand-off frame that sendmsg takes only part of (its fd went with the first byte): the rest
// follows in order, byte for byte, whichever of the frame's three pieces (wrapper head, message,
// tail) the cut falls in, and the next frame comes after it.
TEST_F(IpcProtocol, AHandOffFramePartlySentIsFinishedInOrder) {
  std::string encoded = R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":12})";
  std::string frame = "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":" + encoded + "}\n";
  for (size_t cut : {size_t{1}, size_t{20}, frame.size() - encoded.size() - 1, frame.size() - 2, frame.size() - 1}) {
    SCOPED_TRACE("sendmsg took " + std::to_string(cut) + " of " + std::to_string(frame.size()) + " bytes");
    uvc_test::TestLoop loop;
    Pair p(loop);
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    auto borrowed = [&] { return ipc::OutgoingHandle{ipc::HandleType::native, Fd{}, std::nullopt, sv[0]}; };
    ASSERT_EQ(uv_fileno(reinterpret_cast<uv_handle_t*>(ipc::ChannelOwner::pipe(*p.ch)), &short_send_fd), 0);
    short_send_bytes = cut;
    ipc::SendOptions o;
    o.done_on_failure_only = true;
    EXPECT_TRUE(p.ch->send_encoded(encoded, borrowed(), o));
    EXPECT_EQ(short_send_fd, -1);  // the cut sendmsg was made
    ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 1; }));
    raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
    EXPECT_TRUE(p.ch->send_encoded(encoded, borrowed(), o));  // waits for that ACK, then at once
    ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 2; }));
    EXPECT_EQ(p.from_channel, frame + frame);
    EXPECT_TRUE(p.errors.empty());
    close(sv[0]);
    close(sv[1]);
  }
}

// A line filter consumes the lines it recognises before any parse; the others go on as usual.
TEST_F(IpcProtocol, LineFilterConsumesOnlyWhatItRecognises) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  std::vector<std::string> filtered;
  p.ch->set_line_filter([&](std::string_view line) {
    filtered.emplace_back(line);
    return line == "{\"cmd\":\"NODE_X\",\"n\":1}";
  });
  raw_send(p.peer, "{\"cmd\":\"NODE_X\",\"n\":1}\n\"user\"\n{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 1; }));
  EXPECT_EQ(p.messages[0], "user");
  EXPECT_EQ(filtered, (std::vector<std::string>{"{\"cmd\":\"NODE_X\",\"n\":1}", "\"user\""}));  // not the ACK
}

// A handle filter sees the NODE_HANDLE frames match_handle_frame recognises; what it takes is
// answered by accept() (ACK with the fd, or NACK without one) and never parsed or delivered; what
// it declines goes the general way, bad frames included.
TEST_F(IpcProtocol, HandleFilterTakesWhatItRecognisesAndLeavesTheRest) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  std::vector<std::string> offered;
  std::vector<bool> taken;  // per accepted frame: a handle with an fd came back
  p.ch->set_handle_filter([&](ipc::HandleFrame& f) {
    offered.emplace_back(f.message_json());
    if (f.message_json() != R"({"hot":1})" || f.type() != ipc::HandleType::native) return false;
    ipc::ReceivedHandle* h = f.accept();
    taken.push_back(h && h->fd.valid());
    return true;
  });
  const std::string head = R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":)";
  int conn[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, conn), 0);
  raw_send(p.peer, head + R"({"hot":1}})" "\n", conn[0]);  // taken: ACK
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 1; }));
  raw_send(p.peer, head + R"({"cold":1}})" "\n", conn[0]);  // declined: the general path ACKs, delivers
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 1; }));
  raw_send(p.peer, head + R"({"hot":1}})" "\n");  // taken without an fd: NACK
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 3; }));
  raw_send(p.peer, head + R"({"hot":1},"key":"k"})" "\n", conn[0]);  // a key: declined, delivered
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 2; }));
  raw_send(p.peer, head + R"({"hot":1}}})" "\n", conn[0]);  // not JSON: declined, a bad frame
  ASSERT_TRUE(loop.run_until([&] { return p.errors.size() == 2; }));
  raw_send(p.peer, R"({"cmd":"NODE_HANDLE","msg":{"hot":1},"type":"net.Native"})" "\n", conn[0]);  // not offered
  ASSERT_TRUE(loop.run_until([&] { return p.messages.size() == 3; }));
  ::close(conn[0]);
  ::close(conn[1]);
  EXPECT_EQ(offered, (std::vector<std::string>{R"({"hot":1})", R"({"cold":1})", R"({"hot":1})",
                                               R"({"hot":1},"key":"k")", R"({"hot":1}})"}));
  EXPECT_EQ(taken, (std::vector<bool>{true, false}));
  EXPECT_EQ(p.messages, (std::vector<Json>{{{"cold", 1}}, {{"hot", 1}}, {{"hot", 1}}}));
  EXPECT_EQ(p.keys[1], std::optional<std::string>("k"));
  EXPECT_EQ(p.errors, (std::vector<std::string>{"ERR_IPC_BAD_FRAME", "ERR_IPC_UNEXPECTED_HANDLE"}));
  const std::string ack = "{\"cmd\":\"NODE_HANDLE_ACK\"}\n", nack = "{\"cmd\":\"NODE_HANDLE_NACK\"}\n";
  EXPECT_EQ(p.from_channel, ack + ack + nack + ack + ack);
}

// Frames written while a read is handled gather and leave after it, in the order they were sent,
// whether they are small (gathered), big (queued) or carry a handle; a `done` runs once, later,
// never inside send(); a disconnect asked for meanwhile waits until they are written.
TEST_F(IpcProtocol, FramesWrittenDuringAReadKeepTheirOrder) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int conn[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, conn), 0);
  std::string big(100 * 1024, 'b');
  int done_calls = 0;
  bool done_inside_send = false;
  p.ch->on_internal_message([&](const Json& m, ipc::ReceivedHandle* h) {
    if (!h || m != Json{{"cmd", "NODE_X"}}) return;
    p.ch->send(Json("small1"), std::nullopt, {}, [&](const Error* e) {
      EXPECT_EQ(e, nullptr);
      ++done_calls;
    });
    done_inside_send = done_calls > 0;
    p.ch->send(Json("with fd"), ipc::OutgoingHandle{ipc::HandleType::native, Fd{}, std::nullopt, conn[1]});
    p.ch->send(Json(big));  // these wait for that handle's ACK
    p.ch->send_encoded("\"small2\"");
    p.ch->send(Json("after the handle"));
    ASSERT_TRUE(p.ch->disconnect().ok());
  });
  raw_send(p.peer, R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_X"}})" "\n", conn[0]);
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 3; }));
  EXPECT_FALSE(done_inside_send);
  raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
  ASSERT_TRUE(loop.run_until([&] { return p.peer_eof && p.closed; }));
  ::close(conn[0]);
  ::close(conn[1]);
  EXPECT_EQ(done_calls, 1);
  EXPECT_EQ(p.from_channel, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n\"small1\"\n"
                            "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":\"with fd\"}\n\"" +
                                big + "\"\n\"small2\"\n\"after the handle\"\n");
  EXPECT_TRUE(p.errors.empty());
}

TEST_F(IpcProtocol, PipelinedHandlesDoNotWaitForEarlierAcks) {
  uvc_test::TestLoop loop;
  Pair p(loop);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  int acked = 0;
  for (const char* m : {"one", "two", "three"}) {
    ipc::SendOptions o;
    o.pipelined = true;
    o.on_acked = [&] { ++acked; };
    // Borrowed: the channel sends our descriptor as is and keeps no copy of it.
    EXPECT_TRUE(p.ch->send(m, ipc::OutgoingHandle{ipc::HandleType::native, Fd{}, std::nullopt, sv[0]}, o));
  }
  EXPECT_TRUE(p.ch->send("plain"));
  ASSERT_TRUE(loop.run_until([&] { return p.lines_from_channel() == 4; }));
  EXPECT_EQ(p.from_channel,
            "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":\"one\"}\n"
            "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":\"two\"}\n"
            "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":\"three\"}\n"
            "\"plain\"\n");
  raw_send(p.peer, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
  ASSERT_TRUE(loop.run_until([&] { return acked == 3; }));
  close(sv[0]);
  close(sv[1]);
}
