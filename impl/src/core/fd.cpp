#include "uvcluster/fd.hpp"

#include <fcntl.h>

namespace uvcluster {

Fd Fd::dup_of(int fd) { return Fd(::fcntl(fd, F_DUPFD_CLOEXEC, 0)); }

}  // namespace uvcluster
