#include "support.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <gtest/gtest.h>
#include <stdexcept>

namespace uvc_test {

std::string fixture(const std::string& name) { return std::string(UVC_FIXTURES_DIR) + "/" + name; }
std::string helper(const std::string& name) { return std::string(UVC_HELPERS_DIR) + "/" + name; }
std::string cli() { return UVC_CLI; }
std::string node() { return UVC_NODE; }

Captured run_capture(const std::vector<std::string>& argv, const std::string& input) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC))
    throw std::runtime_error("pipe2 failed");
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  Captured c;
  size_t written = 0;
  int in_fd = in[1];
  if (input.empty()) {
    close(in_fd);
    in_fd = -1;
  } else {
    fcntl(in_fd, F_SETFL, O_NONBLOCK);
  }
  signal(SIGPIPE, SIG_IGN);
  bool out_open = true, err_open = true;
  char buf[65536];
  while (out_open || err_open) {
    pollfd fds[3] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}, {in_fd, POLLOUT, 0}};
    if (!out_open) fds[0].fd = -1;
    if (!err_open) fds[1].fd = -1;
    if (poll(fds, 3, -1) < 0) continue;
    if (fds[2].revents && in_fd >= 0) {
      ssize_t n = write(in_fd, input.data() + written, input.size() - written);
      if (n > 0) written += n;
      if (n < 0 || written == input.size()) {
        close(in_fd);
        in_fd = -1;
      }
    }
    for (int i = 0; i < 2; ++i) {
      if (!fds[i].revents) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
      } else {
        (i == 0 ? c.out : c.err).append(buf, n);
      }
    }
  }
  if (in_fd >= 0) close(in_fd);
  close(out[0]);
  close(err[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  c.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return c;
}

nlohmann::json run_node_fixture(const std::string& script, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {node(), fixture(script)};
  argv.insert(argv.end(), args.begin(), args.end());
  auto c = run_capture(argv);
  if (c.status != 0) {
    ADD_FAILURE() << "node fixture " << script << " exited " << c.status << ": " << c.err;
    return nullptr;
  }
  return nlohmann::json::parse(c.out);
}

std::set<int> open_fds() {
  std::set<int> fds;
  DIR* d = opendir("/proc/self/fd");
  int own = dirfd(d);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (fd != own) fds.insert(fd);
  }
  closedir(d);
  return fds;
}

std::vector<int> zombie_children() {
  std::vector<int> zombies;
  pid_t self = getpid();
  DIR* d = opendir("/proc");
  while (dirent* e = readdir(d)) {
    int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream f("/proc/" + std::string(e->d_name) + "/stat");
    std::string line;
    if (!std::getline(f, line)) continue;
    auto close_paren = line.rfind(')');
    if (close_paren == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(line.c_str() + close_paren + 1, " %c %d", &state, &ppid) != 2) continue;
    if (ppid == self && state == 'Z') zombies.push_back(pid);
  }
  closedir(d);
  return zombies;
}

TestLoop::TestLoop() { uv_loop_init(&loop_); }

TestLoop::~TestLoop() {
  // Let pending closes finish, then close whatever is still open so the loop can close.
  uv_run(&loop_, UV_RUN_NOWAIT);
  uv_walk(
      &loop_, [](uv_handle_t* h, void*) { if (!uv_is_closing(h)) uv_close(h, nullptr); }, nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_EQ(uv_loop_close(&loop_), 0) << "handles left open on the test loop";
}

bool TestLoop::run_until(const std::function<bool()>& done, int limit_ms) {
  bool expired = false;
  uv_timer_t guard;
  if (uv_timer_init(&loop_, &guard) != 0) std::abort();  // cannot fail on a live loop
  guard.data = &expired;
  uv_timer_start(
      &guard, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, limit_ms, 0);
  uv_unref(reinterpret_cast<uv_handle_t*>(&guard));
  while (!done() && !expired) {
    if (uv_run(&loop_, UV_RUN_ONCE) == 0 && !done()) {
      break;  // nothing left that could make `done` true
    }
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
  uv_run(&loop_, UV_RUN_NOWAIT);
  EXPECT_FALSE(expired) << "event did not happen within " << limit_ms << " ms";
  return done();
}

void TestLoop::run() { uv_run(&loop_, UV_RUN_DEFAULT); }

}  // namespace uvc_test
