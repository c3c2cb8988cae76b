#include "uvcluster/error.hpp"

#include <uv.h>

#include <cstdio>
#include <cstdlib>

namespace uvcluster {

Error Error::from_uv(int status, std::string syscall, std::string path) {
  Error e;
  e.errnum = status;
  e.code = uv_err_name(status);
  e.syscall = std::move(syscall);
  e.path = std::move(path);
  // Node: "<syscall> <CODE>", with the path after the syscall when there is one and the
  // syscall does not already name it (spawn's syscall is "spawn <file>").
  e.message = e.syscall;
  if (!e.path.empty() && e.syscall.find(e.path) == std::string::npos) e.message += " " + e.path;
  e.message += " " + e.code;
  return e;
}

Error Error::make(std::string code, std::string message) {
  Error e;
  e.code = std::move(code);
  e.message = std::move(message);
  return e;
}

namespace detail {

void bad_result_access(const char* what, const std::string& error) {
  std::fprintf(stderr, "uvcluster: %s%s%s\n", what, error.empty() ? "" : ": ", error.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace detail

}  // namespace uvcluster
