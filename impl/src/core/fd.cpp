#include "uvcluster/fd.hpp"

#include <fcntl.h>

#include <cerrno>

namespace uvcluster {

Result<Fd> Fd::dup(int fd) {
  int out = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (out < 0) return Error::from_uv(-errno, "dup");
  return Fd(out);
}

}  // namespace uvcluster
