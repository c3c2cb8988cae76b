#pragma once
// Fd: sole owner of a file descriptor; closes it on destruction. Move-only.
#include <unistd.h>

#include <utility>

#include "uvcluster/error.hpp"

namespace uvcluster {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // A close-on-exec duplicate of `fd`.
  static Result<Fd> dup(int fd);

 private:
  int fd_ = -1;
};

}  // namespace uvcluster
