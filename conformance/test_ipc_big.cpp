// Big messages through a real channel: a C++ parent and `uvcluster ipc-echo` (issue 13 §2).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "ipc/channel_owner.hpp"  // impl/src: two channels over one socketpair
#include "support.hpp"
#include "uvcluster/detail/read_buffer.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"

using namespace uvcluster;
using ipc::Json;

namespace {
std::string mixed_text(size_t size) {
  static const std::string pieces[] = {"plain ascii run of text ", "\"", "\\", "\n", "\t", "é", "€",
                                       "😀", "\xED\xA0\x80", std::string(1, '\0')};
  std::string s;
  for (size_t i = 0; s.size() < size; ++i) s += pieces[(i * 3) % std::size(pieces)];
  return s;
}
}  // namespace

// 64 KiB, 1 MiB and 16 MiB strings there and back, each equal to what was sent, in order.
TEST(IpcBig, EchoedByteForByte) {
  uvc_test::TestLoop loop;
  auto child = fork(loop.get(), uvc_test::cli(), {"ipc-echo"}).value();
  std::vector<Json> back;
  std::vector<Error> errors;
  bool closed = false;
  child->channel()->on_message([&](const Json& m, ipc::ReceivedHandle*) { back.push_back(m); });
  child->channel()->on_error([&](const Error& e) { errors.push_back(e); });
  child->on_close([&](const ExitStatus&) { closed = true; });
  std::vector<Json> sent;
  for (size_t size : {size_t{64} << 10, size_t{1} << 20, size_t{16} << 20})
    sent.push_back(Json{{"size", size}, {"text", mixed_text(size)}});
  for (const auto& m : sent) child->channel()->send(m);
  ASSERT_TRUE(loop.run_until([&] { return back.size() >= sent.size() || !errors.empty(); }, 120000));
  EXPECT_TRUE(errors.empty()) << errors.front().message;
  ASSERT_EQ(back.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_TRUE(back[i] == sent[i]) << "message " << i;
  ASSERT_TRUE(child->channel()->disconnect().ok());
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
}

namespace {
// Two channels of this process over one socketpair (both ends ours, so both sides' buffers can
// be looked at), reading as spawn() and parent_channel() start them.
struct ChannelPair {
  std::unique_ptr<ipc::Channel> a, b;
  std::vector<Json> at_b;
  size_t at_a = 0;
  std::vector<std::string> errors;
  ChannelPair(uv_loop_t* loop, ipc::ChannelOptions options) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    a = ipc::ChannelOwner::make(loop, options).value();
    b = ipc::ChannelOwner::make(loop, options).value();
    EXPECT_EQ(uv_pipe_open(ipc::ChannelOwner::pipe(*a), sv[0]), 0);
    EXPECT_EQ(uv_pipe_open(ipc::ChannelOwner::pipe(*b), sv[1]), 0);
    a->on_message([this](const Json&, ipc::ReceivedHandle*) { ++at_a; });
    b->on_message([this](const Json& m, ipc::ReceivedHandle*) { at_b.push_back(m); });
    for (auto* c : {a.get(), b.get()}) c->on_error([this](const Error& e) { errors.push_back(e.code); });
    ipc::ChannelOwner::start(*a);
    ipc::ChannelOwner::start(*b);
  }
};
constexpr size_t kAbove4MiB = size_t{6} << 20;
}  // namespace

// Issue 13: buffers above 4 MiB used to be given back after every message, so a stream of
// 16 MiB messages page-faulted ~16,000 times per round trip (its buffers made anew each time).
// Now the reader's buffer and the sent frame's buffer stay for the next big message (here the
// idle delay is longer than the test, so they are still there when it looks).
TEST(IpcBig, BuffersAbove4MiBStayForTheNextBigMessage) {
  uvc_test::TestLoop loop;
  ChannelPair pair(loop.get(), ipc::ChannelOptions{.big_buffer_idle_ms = 600000});
  bool written = false;
  Json big = std::string(kAbove4MiB, 'x');
  pair.a->send(big, std::nullopt, {}, [&](const Error* e) { written = !e; });
  ASSERT_TRUE(loop.run_until([&] { return (written && !pair.at_b.empty()) || !pair.errors.empty(); }, 120000));
  ASSERT_TRUE(pair.errors.empty()) << pair.errors.front();
  EXPECT_TRUE(pair.at_b.front() == big);
  EXPECT_GE(pair.a->buffer_bytes_held(), kAbove4MiB) << "the sent frame's buffer was given back";
  EXPECT_GE(pair.b->buffer_bytes_held(), kAbove4MiB) << "the read buffer was given back";
}

// ... and given back once big messages stop, even while small ones keep coming (a small frame
// written from the kept buffer, or read into it, must not keep it).
TEST(IpcBig, BuffersAbove4MiBAreGivenBackWhileOnlySmallMessagesFollow) {
  uvc_test::TestLoop loop;
  ChannelPair pair(loop.get(), ipc::ChannelOptions{.big_buffer_idle_ms = 50});
  pair.a->send(Json(std::string(kAbove4MiB, 'x')));
  ASSERT_TRUE(loop.run_until([&] { return !pair.at_b.empty() || !pair.errors.empty(); }, 120000));
  // Small messages both ways, one in flight at a time, until both sides hold at most 4 MiB.
  size_t small_sent = 0;
  auto released = [&] {
    return pair.a->buffer_bytes_held() <= ipc::FrameReader::kRetainedCapacity &&
           pair.b->buffer_bytes_held() <= ipc::FrameReader::kRetainedCapacity;
  };
  pair.b->on_message([&](const Json& m, ipc::ReceivedHandle*) {
    if (m.is_number()) pair.b->send(m);
  });
  pair.a->on_message([&](const Json&, ipc::ReceivedHandle*) {
    if (!released() && small_sent < 1000000) pair.a->send(Json(++small_sent));
  });
  pair.a->send(Json(++small_sent));
  EXPECT_TRUE(loop.run_until([&] { return released() || !pair.errors.empty(); }, 120000))
      << "held after " << small_sent << " small round trips: " << pair.a->buffer_bytes_held() << " and "
      << pair.b->buffer_bytes_held() << " bytes";
  EXPECT_TRUE(pair.errors.empty());
}

// Issue 13 §2: a big frame starts leaving while it is encoded (the part the socket takes is
// written every 128 KiB of text) and its rest follows as an ordinary write. Frames sent right
// after it, big or small, plain or not, must come out whole and in order, each `done` called once.
TEST(IpcBig, FramesWrittenWhileEncodedKeepTheirPlaceInTheStream) {
  uvc_test::TestLoop loop;
  ChannelPair pair(loop.get(), ipc::ChannelOptions{});
  std::vector<Json> sent = {Json(std::string(size_t{1} << 20, 'x')), Json(1),
                            Json{{"text", mixed_text(300 * 1024)}}, Json("small"),
                            Json::array({std::string(600 * 1024, 'y'), mixed_text(200 * 1024)}), Json(2)};
  std::vector<int> done;
  for (size_t i = 0; i < sent.size(); ++i)
    pair.a->send(sent[i], std::nullopt, {}, [&done, i](const Error* e) { done.push_back(e ? -1 : static_cast<int>(i)); });
  ASSERT_TRUE(loop.run_until([&] { return pair.at_b.size() >= sent.size() || !pair.errors.empty(); }, 120000));
  ASSERT_TRUE(pair.errors.empty()) << pair.errors.front();
  ASSERT_EQ(pair.at_b.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_TRUE(pair.at_b[i] == sent[i]) << "message " << i;
  ASSERT_TRUE(loop.run_until([&] { return done.size() >= sent.size(); }, 60000));
  EXPECT_EQ(done, (std::vector<int>{0, 1, 2, 3, 4, 5}));
}

// Issue 8: between json frames a channel reads into its loop's shared buffer, which lives as long
// as the loop, so any page of it a read fills stays resident for good. A big (or hostile) frame
// must continue in the channel's own buffer after its first 16 KiB, leaving the rest of the
// shared buffer untouched (it made 64 KB of the primary resident for good after ipc-oversized).
TEST(IpcBig, BigFrameLeavesTheSharedReadBufferBeyond16KiBUntouched) {
  uvc_test::TestLoop loop;
  auto child = fork(loop.get(), uvc_test::cli(), {"ipc-echo"}).value();
  auto shared = detail::SharedReadBuffer::for_loop(loop.get());  // the one the channel reads into
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  auto first = (reinterpret_cast<uintptr_t>(shared->data()) + 16 * 1024 + page - 1) / page * page;
  auto last = (reinterpret_cast<uintptr_t>(shared->data()) + detail::SharedReadBuffer::kSize) / page * page;
  ASSERT_GT(last, first);
  void* tail = reinterpret_cast<void*>(first);
  size_t tail_bytes = last - first;
  // The buffer is scratch space: drop those pages, then see whether the frame brings them back.
  ASSERT_EQ(::madvise(tail, tail_bytes, MADV_DONTNEED), 0);
  std::vector<Json> back;
  child->channel()->on_message([&](const Json& m, ipc::ReceivedHandle*) { back.push_back(m); });
  Json sent = {{"text", std::string(size_t{1} << 20, 'x')}};
  child->channel()->send(sent);
  ASSERT_TRUE(loop.run_until([&] { return !back.empty(); }, 60000));
  EXPECT_TRUE(back.front() == sent);
  std::vector<unsigned char> resident(tail_bytes / page);
  ASSERT_EQ(::mincore(tail, tail_bytes, resident.data()), 0);
  size_t touched = 0;
  for (unsigned char r : resident) touched += r & 1;
  EXPECT_EQ(touched, 0u) << "of " << resident.size() << " pages past the first 16 KiB";
  bool closed = false;
  child->on_close([&](const ExitStatus&) { closed = true; });
  ASSERT_TRUE(child->channel()->disconnect().ok());
  ASSERT_TRUE(loop.run_until([&] { return closed; }));
}
