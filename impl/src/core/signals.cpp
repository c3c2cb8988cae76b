#include "uvcluster/signals.hpp"

#include <csignal>
#include <cstdlib>

namespace uvcluster {
namespace {

struct Named {
  const char* name;
  int number;
};

// The POSIX/Linux signals Node knows by name (os.constants.signals).
constexpr Named kSignals[] = {
    {"SIGHUP", SIGHUP},   {"SIGINT", SIGINT},       {"SIGQUIT", SIGQUIT}, {"SIGILL", SIGILL},
    {"SIGTRAP", SIGTRAP}, {"SIGABRT", SIGABRT},     {"SIGIOT", SIGIOT},   {"SIGBUS", SIGBUS},
    {"SIGFPE", SIGFPE},   {"SIGKILL", SIGKILL},     {"SIGUSR1", SIGUSR1}, {"SIGSEGV", SIGSEGV},
    {"SIGUSR2", SIGUSR2}, {"SIGPIPE", SIGPIPE},     {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM},
    {"SIGCHLD", SIGCHLD}, {"SIGSTKFLT", SIGSTKFLT}, {"SIGCONT", SIGCONT}, {"SIGSTOP", SIGSTOP},
    {"SIGTSTP", SIGTSTP}, {"SIGTTIN", SIGTTIN},     {"SIGTTOU", SIGTTOU}, {"SIGURG", SIGURG},
    {"SIGXCPU", SIGXCPU}, {"SIGXFSZ", SIGXFSZ},     {"SIGVTALRM", SIGVTALRM},
    {"SIGPROF", SIGPROF}, {"SIGWINCH", SIGWINCH},   {"SIGIO", SIGIO},     {"SIGPOLL", SIGPOLL},
    {"SIGPWR", SIGPWR},   {"SIGSYS", SIGSYS},
};

}  // namespace

std::optional<int> signal_number(std::string_view name) {
  for (const auto& s : kSignals) {
    if (name == s.name) return s.number;
  }
  if (!name.empty() && name.size() < 4 && name.find_first_not_of("0123456789") == std::string_view::npos) {
    int n = std::atoi(std::string(name).c_str());
    if (n >= 0 && n < NSIG) return n;
  }
  return std::nullopt;
}

std::string signal_name(int signum) {
  for (const auto& s : kSignals) {
    // SIGIOT/SIGPOLL are aliases; the first entry with the number wins (SIGABRT, SIGIO).
    if (s.number == signum && std::string_view(s.name) != "SIGIOT" &&
        std::string_view(s.name) != "SIGPOLL")
      return s.name;
  }
  return {};
}

}  // namespace uvcluster
