#pragma once
// Shared test support: run Node fixtures (the oracle), helper binaries, fd and zombie checks,
// and a loop that runs until an event happened.
#include <uv.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace uvc_test {

std::string fixture(const std::string& name);  // absolute path of fixtures/<name>
std::string helper(const std::string& name);   // absolute path of a built helper binary
std::string cli();                             // the built `uvcluster` binary
std::string node();                            // /usr/bin/node

struct Captured {
  std::string out;
  std::string err;
  int status = -1;  // exit code, or 128+signal
};
// Runs argv (no shell) to completion with stdin from `input`; independent of the library under
// test so the oracle cannot share its bugs.
Captured run_capture(const std::vector<std::string>& argv, const std::string& input = "");
// Runs `node fixtures/<script> args...` and parses its stdout as one JSON document.
nlohmann::json run_node_fixture(const std::string& script, const std::vector<std::string>& args = {});

std::set<int> open_fds();                 // /proc/self/fd, minus the fd used to list it
std::vector<int> zombie_children();       // pids of our children in state Z

// Owns a uv loop; run() turns it until `done()` is true or the loop has nothing left.
// A safety timer (not a sleep: it only fires if the event never comes) fails the test after
// `limit_ms`. The destructor closes every handle and checks uv_loop_close succeeds.
class TestLoop {
 public:
  TestLoop();
  ~TestLoop();
  uv_loop_t* get() { return &loop_; }
  operator uv_loop_t*() { return &loop_; }
  // Returns false if the limit was hit first.
  bool run_until(const std::function<bool()>& done, int limit_ms = 30000);
  void run();  // until no active handles remain

 private:
  uv_loop_t loop_;
};

}  // namespace uvc_test
