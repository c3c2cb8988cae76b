// The watchdog process. Everything in watchdog_main runs in a child forked from a possibly
// multi-threaded primary, so it only makes async-signal-safe calls: raw syscalls, no malloc,
// no locks, fixed-size tables.
#include "uvcluster/cluster/watchdog.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <vector>

namespace uvcluster::cluster {
namespace {

constexpr int kLifelineFd = 0;      // the watchdog's end, moved here so it can close the rest
constexpr int kPruneMs = 1000;      // how often groups of reaped workers are checked for members
constexpr int kSpawnWaitMs = 1000;  // how long a worker caught before exec is looked for
constexpr int kMaxGroups = 16384;

// The primary's records: {op, pid} as two int32 in one SOCK_SEQPACKET message.
enum : int32_t { kSpawning = 1, kSpawned = 2, kSpawnFailed = 3, kReaped = 4, kWatch = 5 };
struct Record {
  int32_t op;
  int32_t pid;
};

struct Group {
  pid_t pgid;
  bool leader_reaped;  // the worker is gone: only kill(-pgid) is safe, and only while non-empty
};

// The watchdog's state lives in its own copy of this process's memory (fork without exec).
Group g_groups[kMaxGroups];
int g_group_count = 0;

void add_group(pid_t pgid) {
  if (pgid <= 1) return;  // kill(-0) and kill(-1) mean "my group" and "everyone"
  for (int i = 0; i < g_group_count; ++i)
    if (g_groups[i].pgid == pgid) return;
  if (g_group_count < kMaxGroups) g_groups[g_group_count++] = {pgid, false};
}

// A group whose leader was reaped is dropped once it is empty: its number may then be reused.
void prune_groups() {
  int kept = 0;
  for (int i = 0; i < g_group_count; ++i) {
    const Group& g = g_groups[i];
    if (g.leader_reaped && ::kill(-g.pgid, 0) < 0 && errno == ESRCH) continue;
    g_groups[kept++] = g;
  }
  g_group_count = kept;
}

void mark_reaped(pid_t pid) {
  for (int i = 0; i < g_group_count; ++i)
    if (g_groups[i].pgid == pid) g_groups[i].leader_reaped = true;
  prune_groups();
}

void kill_groups() {
  for (int i = 0; i < g_group_count; ++i) {
    ::kill(-g_groups[i].pgid, SIGKILL);
    // Not reaped: the pid is still this worker's, even if it has left its group.
    if (!g_groups[i].leader_reaped) ::kill(g_groups[i].pgid, SIGKILL);
  }
}

// "UVCLUSTER_LIFELINE=<token>", set in the watchdog only (it points into its copy of the
// primary's memory): processes carrying it are this cluster's.
const char* g_token_entry = nullptr;
size_t g_token_len = 0;

int append_number(char* out, long n) {
  char digits[24];
  int len = 0;
  do {
    digits[len++] = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n > 0);
  for (int i = 0; i < len; ++i) out[i] = digits[len - 1 - i];
  return len;
}

// True when /proc/<pid>/environ contains the token entry (read in chunks; a match may straddle
// two reads, so the tail of the previous chunk is kept in front of the next).
bool carries_token(long pid) {
  char path[48] = "/proc/";
  int n = 6 + append_number(path + 6, pid);
  std::memcpy(path + n, "/environ", 9);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  static char buf[8192 + 256];  // a chunk, after up to g_token_len - 1 carried bytes
  size_t carry = 0;
  bool found = false;
  for (;;) {
    ssize_t r = ::read(fd, buf + carry, sizeof buf - carry);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    size_t len = carry + static_cast<size_t>(r);
    for (size_t i = 0; i + g_token_len <= len && !found; ++i)
      found = std::memcmp(buf + i, g_token_entry, g_token_len) == 0;
    if (found) break;
    carry = len < g_token_len ? len : g_token_len - 1;
    std::memmove(buf, buf + len - carry, carry);
  }
  ::close(fd);
  return found;
}

// One pass over /proc: SIGKILL every process carrying the token. A pidfd taken before the
// check makes the kill reach the process that was checked, even if its pid is reused meanwhile.
int sweep_token_carriers() {
  int dir = ::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return 0;
  pid_t self = ::getpid();
  int killed = 0;
  alignas(8) static char entries[16384];
  for (;;) {
    long got = ::syscall(SYS_getdents64, dir, entries, sizeof entries);
    if (got <= 0) break;
    for (long off = 0; off < got;) {
      struct Dirent64 {
        uint64_t ino;
        int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[1];
      };
      auto* e = reinterpret_cast<Dirent64*>(entries + off);
      off += e->reclen;
      long pid = 0;
      const char* c = e->name;
      for (; *c >= '0' && *c <= '9'; ++c) pid = pid * 10 + (*c - '0');
      if (*c != '\0' || pid <= 0 || pid == self) continue;
      int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
      if (pidfd < 0 && errno != ENOSYS) continue;  // already gone
      if (carries_token(pid)) {
        if (pidfd >= 0) ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
        else ::kill(static_cast<pid_t>(pid), SIGKILL);
        ++killed;
      }
      if (pidfd >= 0) ::close(pidfd);
    }
  }
  ::close(dir);
  return killed;
}

void sleep_ms(long ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1000000};
  while (::nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

// The primary is gone (or let us go): kill its workers' groups, then what carries the token.
[[noreturn]] void kill_everything(int spawning) {
  kill_groups();
  // Token carriers: until a pass finds none (a process may fork while we look), and, if a
  // worker was being spawned, until it has exec'd (before exec it carries the primary's env).
  timespec start{};
  ::clock_gettime(CLOCK_MONOTONIC, &start);
  int found_total = 0;
  for (int pass = 0; pass < 1000; ++pass) {
    int found = sweep_token_carriers();
    found_total += found;
    if (found == 0 && found_total >= spawning) break;
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (found == 0 && elapsed >= kSpawnWaitMs) break;
    if (found == 0) sleep_ms(10);
  }
  ::_exit(0);
}

void quiet_signals() {
  // Inherited handlers are the primary's (libuv's), with state that is not ours: default them.
  // Signals a terminal or an operator sends to a group are ignored: the watchdog ends only when
  // its primary does.
  for (int s = 1; s < NSIG; ++s) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    struct sigaction sa {};
    sa.sa_handler = SIG_DFL;
    for (int ignored : {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU,
                        SIGUSR1, SIGUSR2})
      if (s == ignored) sa.sa_handler = SIG_IGN;
    ::sigaction(s, &sa, nullptr);  // fails harmlessly for signals libc reserves
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

void close_all_but_lifeline(int lifeline) {
  if (lifeline != kLifelineFd) {
    ::dup2(lifeline, kLifelineFd);  // the copy is not close-on-exec; nothing is exec'd here
  }
  // Everything else (listening sockets, worker channels, the primary's own fds) is closed: the
  // watchdog must not keep a port busy or a worker's channel open after the primary died.
  if (::syscall(SYS_close_range, kLifelineFd + 1, ~0U, 0) < 0) {
    for (int fd = kLifelineFd + 1; fd < 65536; ++fd) ::close(fd);
  }
}

[[noreturn]] void watchdog_main(int lifeline, const std::string& token_entry) {
  g_token_entry = token_entry.data();
  g_token_len = token_entry.size();
  ::prctl(PR_SET_NAME, "uvc-watchdog", 0, 0, 0);
  ::setpgid(0, 0);  // a kill of the primary's group (a terminal's Ctrl-C) does not reach it
  quiet_signals();
  close_all_but_lifeline(lifeline);
  int spawning = 0;
  for (;;) {
    pollfd p{kLifelineFd, POLLIN, 0};
    int ready = ::poll(&p, 1, kPruneMs);
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      prune_groups();
      continue;
    }
    Record r{};
    ssize_t n = ::recv(kLifelineFd, &r, sizeof r, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: the primary's end is closed
    if (n != sizeof r) continue;
    switch (r.op) {
      case kSpawning: ++spawning; break;
      case kSpawned: --spawning; add_group(r.pid); break;
      case kSpawnFailed: --spawning; break;
      case kReaped: mark_reaped(r.pid); break;
      case kWatch: add_group(r.pid); break;
      default: break;
    }
  }
  kill_everything(spawning > 0 ? spawning : 0);
}

std::string random_token() {
  unsigned char bytes[16] = {};
  size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t r = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  if (got < sizeof bytes) {  // no entropy source: still unique per process and moment
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    long mix[2] = {static_cast<long>(::getpid()) ^ ts.tv_sec, ts.tv_nsec};
    std::memcpy(bytes, mix, sizeof mix);
  }
  static const char* hex = "0123456789abcdef";
  std::string token;
  for (unsigned char b : bytes) {
    token += hex[b >> 4];
    token += hex[b & 15];
  }
  return token;
}

}  // namespace

Result<std::unique_ptr<Watchdog>> Watchdog::start(uv_loop_t* loop) {
  auto wd = std::make_unique<Watchdog>(Key{}, loop, random_token());
  if (auto st = wd->fork_process(); !st.ok()) return st.error();
  return wd;
}

Watchdog::Watchdog(Key, uv_loop_t* loop, std::string token) : loop_(loop), token_(std::move(token)) {}

Watchdog::~Watchdog() {
  hangup_.close();  // before its fd
  lifeline_.reset();
  while (pid_ > 0 && ::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

Status Watchdog::fork_process() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return Error::from_uv(-errno, "socketpair");
  Fd ours(sv[0]), theirs(sv[1]);
  std::string entry = std::string(kTokenVar) + "=" + token_;
  pid_t pid = ::fork();
  if (pid < 0) return Error::from_uv(-errno, "fork");
  if (pid == 0) watchdog_main(theirs.get(), entry);  // never returns
  theirs.reset();
  lifeline_ = std::move(ours);
  pid_ = pid;
  if (loop_) {
    detail::UvHandle<uv_poll_t> poll;
    if (int rc = uv_poll_init(loop_, poll.get(), lifeline_.get()); rc < 0) return Error::from_uv(rc, "uv_poll_init");
    poll.mark_initialized();
    poll->data = this;
    // The watchdog never writes: any event on this end means it is gone.
    uv_poll_start(poll.get(), UV_READABLE | UV_DISCONNECT,
                  [](uv_poll_t* h, int, int) { static_cast<Watchdog*>(h->data)->replace(); });
    uv_unref(poll.base());
    hangup_ = std::move(poll);
  }
  return Ok{};
}

void Watchdog::replace() {
  hangup_.close();  // before its fd
  lifeline_.reset();
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);  // not reaped yet, so the pid is still the watchdog's
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  pid_ = -1;
  if (!fork_process().ok()) return;
  std::vector<Record> known;
  for (int w : watched_) known.push_back({kWatch, w});
  for (int i = 0; i < spawning_; ++i) known.push_back({kSpawning, 0});
  for (const Record& k : known) ::send(lifeline_.get(), &k, sizeof k, MSG_NOSIGNAL);
}

void Watchdog::send(int32_t op, int pid) {
  Record r{op, pid};
  for (int attempt = 0; attempt < 2; ++attempt) {
    ssize_t n;
    do n = ::send(lifeline_.get(), &r, sizeof r, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(sizeof r)) return;
    replace();
  }
}

void Watchdog::spawning() {
  send(kSpawning);
  ++spawning_;
}

void Watchdog::spawned(std::optional<int> pid) {
  send(pid ? kSpawned : kSpawnFailed, pid.value_or(0));
  --spawning_;
  if (pid) watched_.insert(*pid);
}

void Watchdog::reaped(int pid) {
  if (!watched_.count(pid)) return;
  send(kReaped, pid);
  watched_.erase(pid);
}

}  // namespace uvcluster::cluster
