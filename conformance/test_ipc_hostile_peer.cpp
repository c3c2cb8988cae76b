// A hostile peer on a real IPC channel: a cluster worker writing frames no Node sender could
// produce (a million levels of nesting) must cost it its channel (an `error` event, then it is
// disconnected and replaced like a crashed worker), never the primary.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>

#include "http_client.hpp"
#include "support.hpp"
#include "uvcluster/process.hpp"

using namespace uvcluster;
using Json = nlohmann::json;

TEST(IpcHostilePeer, DeeplyNestedQueryServerIsABadFrameNotACrash) {
  uvc_test::TestLoop loop;
  char dir[] = "/tmp/uvc-hostile-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string marker = std::string(dir) + "/hostile-once";
  auto c = spawn(loop, uvc_test::cli(),
                 {"run", "-i", "1", "--json", "--", uvc_test::fixture("cluster_deep_worker.js"), "0",
                  "127.0.0.1", marker},
                 {});
  ASSERT_TRUE(c.ok());
  auto child = c.value();
  std::string out, err;
  int port = 0;
  std::string channel_error;
  std::optional<ExitStatus> status;
  child->stdout_pipe()->on_data([&](std::string_view d) {
    out.append(d);
    for (size_t nl; (nl = out.find('\n')) != std::string::npos; out.erase(0, nl + 1)) {
      Json e = Json::parse(out.substr(0, nl), nullptr, false);
      if (e.is_object() && e.value("event", "") == "listening" && e.value("port", 0) > 0) port = e["port"];
      if (e.is_object() && e.value("event", "") == "error") channel_error = e.value("code", "");
    }
  });
  child->stderr_pipe()->on_data([&](std::string_view d) { err.append(d); });
  child->on_close([&](const ExitStatus& s) { status = s; });
  ASSERT_TRUE(loop.run_until([&] { return port > 0 || status.has_value(); }, 60000)) << err;
  ASSERT_FALSE(status.has_value()) << "the primary died: signal "
                                   << status->signal.value_or("none") << "\n" << err;
  EXPECT_EQ(channel_error, "ERR_IPC_BAD_FRAME") << err;
  std::string body;
  ASSERT_TRUE(uvc_test::run_client(loop, [&] { body = uvc_test::http_body(uvc_test::http_get(port)); }));
  EXPECT_EQ(body.rfind("worker ", 0), 0u) << body;
  child->kill("SIGTERM");
  ASSERT_TRUE(loop.run_until([&] { return status.has_value(); }, 60000));
  EXPECT_EQ(status->signal, std::nullopt);
  EXPECT_EQ(status->code, std::optional<int>(0)) << err;
  std::filesystem::remove_all(dir);
}
