#include "uvcluster/cluster/process_usage.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

Result<ProcessUsage> process_usage(int pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::from_uv(-errno, "open", path);
  char buf[1024];
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n <= 0) return Error::from_uv(n < 0 ? -errno : -ENOENT, "read", path);
  std::string_view text(buf, static_cast<size_t>(n));
  // The command name (field 2) is in parentheses and may hold spaces or ')': fields count from
  // the last ')'.
  size_t close = text.rfind(')');
  if (close == std::string_view::npos) return Error::make("EINVAL", path + ": unexpected format");
  std::istringstream fields{std::string(text.substr(close + 1))};
  std::vector<std::string> f;  // f[0] is field 3 (state)
  for (std::string s; f.size() < 22 && fields >> s;) f.push_back(s);
  if (f.size() < 22) return Error::make("EINVAL", path + ": too few fields");
  auto number = [](const std::string& s) { return std::strtoull(s.c_str(), nullptr, 10); };
  static const long ticks = ::sysconf(_SC_CLK_TCK);
  static const long page = ::sysconf(_SC_PAGESIZE);
  ProcessUsage u;
  u.cpu_seconds = static_cast<double>(number(f[14 - 3]) + number(f[15 - 3])) / static_cast<double>(ticks);
  u.rss_bytes = number(f[24 - 3]) * static_cast<uint64_t>(page);
  return u;
}

std::optional<uint64_t> parse_size(std::string_view text) {
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end == text.data() || n == 0) return std::nullopt;
  std::string unit(end, text.data() + text.size());
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() == 3 && unit.ends_with("IB")) unit.resize(1);  // KiB
  else if (unit.size() == 2 && unit.back() == 'B') unit.resize(1);  // KB
  int shift = 0;
  if (unit.empty() || unit == "B") shift = 0;
  else if (unit == "K") shift = 10;
  else if (unit == "M") shift = 20;
  else if (unit == "G") shift = 30;
  else return std::nullopt;
  if (n > (std::numeric_limits<uint64_t>::max() >> shift)) return std::nullopt;
  return n << shift;
}

}  // namespace uvcluster::cluster
