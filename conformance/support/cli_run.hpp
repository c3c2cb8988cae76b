#pragma once
// `uvcluster run ...` as a child of a test loop, its --json stdout parsed as events (one JSON
// document per line) and its stderr kept as text.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "support.hpp"
#include "uvcluster/process.hpp"

namespace uvc_test {

struct CliRun {
  using Json = nlohmann::json;
  std::shared_ptr<uvcluster::ChildProcess> child;
  std::vector<Json> events;
  std::string out_buf, err;
  std::optional<uvcluster::ExitStatus> exit;
  bool closed = false;

  CliRun(uv_loop_t* loop, std::vector<std::string> args) {
    // A run given a name (--name, a config file's name) opens a control socket: one home per
    // test process, so tests running side by side with the same name do not meet.
    if (!::getenv("UVCLUSTER_HOME"))
      ::setenv("UVCLUSTER_HOME", (::testing::TempDir() + "uvc_home_" + std::to_string(::getpid())).c_str(), 1);
    args.insert(args.begin(), "run");
    auto c = uvcluster::spawn(loop, cli(), args, {});
    EXPECT_TRUE(c.ok());
    child = c.value();
    child->stdout_pipe()->on_data([this](std::string_view d) {
      out_buf.append(d);
      for (size_t nl; (nl = out_buf.find('\n')) != std::string::npos;) {
        std::string line = out_buf.substr(0, nl);
        out_buf.erase(0, nl + 1);
        events.push_back(Json::parse(line, nullptr, false));
      }
    });
    child->stderr_pipe()->on_data([this](std::string_view d) { err.append(d); });
    child->on_exit([this](const uvcluster::ExitStatus& s) { exit = s; });
    child->on_close([this](const uvcluster::ExitStatus&) { closed = true; });
  }
  int count(const std::string& ev) const {
    int n = 0;
    for (auto& e : events) n += e.value("event", "") == ev;
    return n;
  }
  const Json* last(const std::string& ev) const {
    for (auto it = events.rbegin(); it != events.rend(); ++it)
      if (it->value("event", "") == ev) return &*it;
    return nullptr;
  }
  int port() const {
    auto* l = last("listening");
    return l ? l->value("port", 0) : 0;
  }
  // SIGTERM, then the exit code once the CLI has closed (nullopt: it did not end in time).
  std::optional<int> drain(TestLoop& loop) {
    child->kill("SIGTERM");
    if (!loop.run_until([&] { return closed; }, 60000)) return std::nullopt;
    return exit->code;
  }
  size_t index_of(const std::string& ev, int id) const {
    for (size_t i = 0; i < events.size(); ++i)
      if (events[i].value("event", "") == ev && events[i].value("id", -1) == id) return i;
    return SIZE_MAX;
  }
};

}  // namespace uvc_test
