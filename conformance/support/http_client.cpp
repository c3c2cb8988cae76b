#include "http_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace uvc_test {

std::string http_get(int port, int timeout_ms) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return {};
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if (::send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof req - 1)) {
      char buf[4096];
      for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        out.append(buf, static_cast<size_t>(n));
      }
    }
  }
  ::close(fd);
  return out;
}

std::string http_body(const std::string& response) {
  auto p = response.find("\r\n\r\n");
  return p == std::string::npos ? std::string() : response.substr(p + 4);
}

}  // namespace uvc_test

#include <atomic>
#include <thread>

namespace uvc_test {

bool run_client(TestLoop& loop, const std::function<void()>& fn, int limit_ms) {
  struct State {
    std::atomic<bool> done{false};
    uv_async_t async{};
  } st;
  if (uv_async_init(loop.get(), &st.async, [](uv_async_t*) {}) != 0) std::abort();  // out of fds: no test can run
  std::thread t([&] {
    fn();
    st.done = true;
    uv_async_send(&st.async);
  });
  bool ok = loop.run_until([&] { return st.done.load(); }, limit_ms);
  t.join();  // if the limit hit, the client's own receive timeouts end it
  uv_close(reinterpret_cast<uv_handle_t*>(&st.async), nullptr);
  uv_run(loop.get(), UV_RUN_NOWAIT);
  return ok;
}

}  // namespace uvc_test

namespace uvc_test {
void warm_up_libuv() {
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) std::abort();
  uv_signal_t sig;
  if (uv_signal_init(&loop, &sig) != 0) std::abort();
  uv_close(reinterpret_cast<uv_handle_t*>(&sig), nullptr);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}
}  // namespace uvc_test
