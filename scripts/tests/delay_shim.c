/* A planted regression for proving `make bench-compare` (README "Regression tracking"): an
 * LD_PRELOAD shim that busy-waits a fixed number of microseconds before chosen libc socket calls,
 * so a side runs slower without a change to the library.
 *   UVC_DELAY_US     microseconds to add per call (default 0: the shim does nothing)
 *   UVC_DELAY_CALLS  comma-separated subset of sendmsg,accept4,writev (default sendmsg); an entry
 *                    may carry its own delay, e.g. "sendmsg:1.5,accept4:12" (µs, fractions allowed)
 * sendmsg carries every fd the RR primary hands to a worker and every IPC message with a handle;
 * accept4 is every accepted connection. A busy wait, not a sleep: a sleep's wake-up latency on a
 * loaded machine would add noise, a spin adds the same CPU time every call. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

enum { kSendmsg, kAccept4, kWritev, kCalls };
static const char* const kNames[kCalls] = {"sendmsg", "accept4", "writev"};

static int configured = 0;
static long delay_ns[kCalls];

static void configure(void) {
  if (configured) return;
  configured = 1;
  const char* us = getenv("UVC_DELAY_US");
  const char* calls = getenv("UVC_DELAY_CALLS");
  long fallback_ns = us ? atol(us) * 1000L : 0;
  if (!calls || !*calls) calls = "sendmsg";
  for (int c = 0; c < kCalls; ++c) {
    const char* at = strstr(calls, kNames[c]);
    if (!at) continue;
    at += strlen(kNames[c]);
    delay_ns[c] = *at == ':' ? (long)(strtod(at + 1, NULL) * 1000.0) : fallback_ns;
  }
}

static void spin(int call) {
  configure();
  if (delay_ns[call] <= 0) return;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  do {
    clock_gettime(CLOCK_MONOTONIC, &now);
  } while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < delay_ns[call]);
}

ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  static ssize_t (*real)(int, const struct msghdr*, int);
  if (!real) real = (ssize_t(*)(int, const struct msghdr*, int))dlsym(RTLD_NEXT, "sendmsg");
  spin(kSendmsg);
  return real(fd, msg, flags);
}

int accept4(int fd, struct sockaddr* addr, socklen_t* len, int flags) {
  static int (*real)(int, struct sockaddr*, socklen_t*, int);
  if (!real) real = (int (*)(int, struct sockaddr*, socklen_t*, int))dlsym(RTLD_NEXT, "accept4");
  spin(kAccept4);
  return real(fd, addr, len, flags);
}

ssize_t writev(int fd, const struct iovec* iov, int n) {
  static ssize_t (*real)(int, const struct iovec*, int);
  if (!real) real = (ssize_t(*)(int, const struct iovec*, int))dlsym(RTLD_NEXT, "writev");
  spin(kWritev);
  return real(fd, iov, n);
}
