// Big messages through a real channel: a C++ parent and `uvcluster ipc-echo` (issue 13 §2).
#include <gtest/gtest.h>

#include <string>

#include "support.hpp"
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
