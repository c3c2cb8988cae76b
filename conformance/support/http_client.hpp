#pragma once
// A tiny blocking HTTP/1.1 client for loopback tests (run it on a std::thread while the test's
// loop turns). Independent of the library under test.
#include <string>

namespace uvc_test {

// GET / with Connection: close; returns the whole response ("" on failure). Receive timeout
// `timeout_ms` guards against a hang (it fails the request, it does not sleep).
std::string http_get(int port, int timeout_ms = 10000);
// The body after the blank line.
std::string http_body(const std::string& response);

}  // namespace uvc_test

#include <functional>

#include "support.hpp"

namespace uvc_test {
// Runs `fn` (blocking client work) on a thread while `loop` turns, waking the loop through a
// uv_async when it finishes. Returns false if it did not finish within limit_ms.
bool run_client(TestLoop& loop, const std::function<void()>& fn, int limit_ms = 60000);
}  // namespace uvc_test

namespace uvc_test {
// libuv opens a process-wide signal pipe on first uv_spawn/uv_signal use; call this before taking
// an open_fds() baseline so that pipe is not reported as a leak.
void warm_up_libuv();
}  // namespace uvc_test
