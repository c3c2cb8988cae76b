/* The physical limit for a big IPC message (issue 13 §2): the bytes of one JSON string frame
 * ('"', SIZE 'x', '"', '\n') there and back over an AF_UNIX socketpair between a parent and a
 * forked child, with blocking read/write and a newline scan of each read's new bytes only --
 * the essential work of a JSON-lines channel without parsing or event loop.
 *
 * usage: raw_ipc SIZE_BYTES SECONDS NAME
 * prints one JSON line: {"name": NAME, "ns_per_op": <per round trip>, "iterations": n,
 * "cpu_ns_per_op": <CPU time of both processes per round trip>} (the CPU figure moves less
 * than the wall time when other work shares the cores).
 * exit 0, or 1 with a message on stderr when a syscall fails. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
  fprintf(stderr, "raw_ipc: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    p += w;
    n -= (size_t)w;
  }
}

/* Reads one frame into buf (capacity cap); returns its length with the '\n', 0 at EOF. */
static size_t read_frame(int fd, char *buf, size_t cap) {
  size_t have = 0;
  for (;;) {
    if (have == cap) {
      errno = EMSGSIZE;
      die("read");
    }
    ssize_t r = read(fd, buf + have, cap - have);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (r == 0) return 0;
    char *nl = memchr(buf + have, '\n', (size_t)r); /* only the bytes this read brought */
    have += (size_t)r;
    if (nl) return have;
  }
}

static double clock_ns(clockid_t clock) {
  struct timespec ts;
  if (clock_gettime(clock, &ts) < 0) die("clock_gettime");
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: raw_ipc SIZE_BYTES SECONDS NAME\n");
    return 2;
  }
  size_t size = strtoull(argv[1], NULL, 10);
  double seconds = strtod(argv[2], NULL);
  size_t frame_len = size + 3;
  char *frame = malloc(frame_len);
  char *back = malloc(frame_len);
  if (!frame || !back) die("malloc");
  frame[0] = '"';
  memset(frame + 1, 'x', size);
  frame[size + 1] = '"';
  frame[size + 2] = '\n';

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) { /* the echo child */
    close(sv[0]);
    size_t n;
    while ((n = read_frame(sv[1], back, frame_len)) > 0) write_all(sv[1], back, n);
    _exit(0);
  }
  close(sv[1]);
  write_all(sv[0], frame, frame_len); /* warm-up: the child is running and its pages touched */
  if (read_frame(sv[0], back, frame_len) != frame_len) die("echo");
  clockid_t child_cpu;
  if (clock_getcpuclockid(pid, &child_cpu) != 0) die("clock_getcpuclockid");
  double cpu_start = clock_ns(CLOCK_PROCESS_CPUTIME_ID) + clock_ns(child_cpu);
  long iterations = 0;
  double start = now_ns(), elapsed = 0;
  while (iterations < 3 || elapsed < seconds * 1e9) {
    write_all(sv[0], frame, frame_len);
    if (read_frame(sv[0], back, frame_len) != frame_len) die("echo");
    ++iterations;
    elapsed = now_ns() - start;
  }
  double cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID) + clock_ns(child_cpu) - cpu_start;
  if (memcmp(frame, back, frame_len) != 0) {
    fprintf(stderr, "raw_ipc: the echo differs from the frame\n");
    return 1;
  }
  close(sv[0]);
  waitpid(pid, NULL, 0);
  printf("{\"name\": \"%s\", \"ns_per_op\": %.1f, \"iterations\": %ld, \"cpu_ns_per_op\": %.1f}\n", argv[3],
         elapsed / (double)iterations, iterations, cpu / (double)iterations);
  free(frame);
  free(back);
  return 0;
}
