#include "uvcluster/cluster/output_log.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include <cstdio>
#include <optional>

namespace uvcluster::cluster {

std::string format_line(const LineFormat& f, int instance, std::string_view line,
                        std::chrono::system_clock::time_point now) {
  std::string out;
  out.reserve(line.size() + f.name.size() + 40);
  if (f.prefix) {
    out += std::to_string(instance);
    out += '|';
    out += f.name;
    out += " | ";
  }
  if (f.timestamp) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    time_t secs = static_cast<time_t>(ms / 1000);
    struct tm utc {};
    gmtime_r(&secs, &utc);
    char stamp[96];
    std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ: ", utc.tm_year + 1900, utc.tm_mon + 1,
                  utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(ms % 1000));
    out += stamp;
  }
  out += line;
  if (out.empty() || out.back() != '\n') out += '\n';  // a stream's unterminated last piece
  return out;
}

namespace {
Result<Fd> open_append(const std::string& path, bool truncate) {
  int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0);
  Fd fd(::open(path.c_str(), flags, 0644));
  if (!fd) return Error::from_uv(-errno, "open", path);
  return fd;
}
}  // namespace

Result<std::unique_ptr<RotatingFile>> RotatingFile::open(std::string path, Options options) {
  auto fd = open_append(path, false);
  if (!fd.ok()) return fd.error();
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return Error::from_uv(-errno, "fstat", path);
  if (!S_ISREG(st.st_mode)) options.max_bytes = 0;  // /dev/stdout, a fifo: nothing to rotate
  return std::make_unique<RotatingFile>(std::move(path), options, std::move(fd.value()),
                                        static_cast<uint64_t>(st.st_size));
}

RotatingFile::RotatingFile(std::string path, Options options, Fd fd, uint64_t size)
    : path_(std::move(path)), opt_(options), fd_(std::move(fd)), size_(size) {}

Status RotatingFile::rotate() {
  if (opt_.keep > 0) {
    auto name = [this](int k) { return path_ + "." + std::to_string(k); };
    ::unlink(name(opt_.keep).c_str());
    for (int k = opt_.keep - 1; k >= 1; --k) ::rename(name(k).c_str(), name(k + 1).c_str());
    if (::rename(path_.c_str(), name(1).c_str()) != 0) return Error::from_uv(-errno, "rename", path_);
  }
  auto fd = open_append(path_, /*truncate=*/true);
  if (!fd.ok()) return fd.error();
  fd_ = std::move(fd.value());
  size_ = 0;
  return Ok{};
}

Status RotatingFile::write(std::string_view line) {
  if (opt_.max_bytes > 0 && size_ > 0 && size_ + line.size() > opt_.max_bytes) {
    if (auto st = rotate(); !st.ok()) return st;
  }
  while (!line.empty()) {
    ssize_t n = ::write(fd_.get(), line.data(), line.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::from_uv(n < 0 ? -errno : UV_EIO, "write", path_);
    line.remove_prefix(static_cast<size_t>(n));
    size_ += static_cast<uint64_t>(n);
  }
  return Ok{};
}

}  // namespace uvcluster::cluster
