/* A planted regression for proving `make bench-compare` (README "Regression tracking"): an
 * LD_PRELOAD shim that busy-waits a fixed number of microseconds before chosen libc socket calls,
 * so a side runs slower without a change to the library.
 *   UVC_DELAY_US     microseconds to add per call (default 0: the shim does nothing)
 *   UVC_DELAY_CALLS  comma-separated subset of sendmsg,accept4,writev (default sendmsg)
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

enum { kSendmsg = 1, kAccept4 = 2, kWritev = 4 };

static long delay_ns = -1;
static int delayed_calls = 0;

static void configure(void) {
  if (delay_ns >= 0) return;
  const char* us = getenv("UVC_DELAY_US");
  const char* calls = getenv("UVC_DELAY_CALLS");
  if (!calls || !*calls) calls = "sendmsg";
  int mask = 0;
  if (strstr(calls, "sendmsg")) mask |= kSendmsg;
  if (strstr(calls, "accept4")) mask |= kAccept4;
  if (strstr(calls, "writev")) mask |= kWritev;
  delayed_calls = mask;
  delay_ns = us ? atol(us) * 1000L : 0;
}

static void spin(int call) {
  configure();
  if (delay_ns <= 0 || !(delayed_calls & call)) return;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  do {
    clock_gettime(CLOCK_MONOTONIC, &now);
  } while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < delay_ns);
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
