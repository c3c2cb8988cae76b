/* The physical limit for spawn (issue 13 §3): vfork + execve("/bin/true") + waitpid, from a
 * parent that first touches RSS_MIB MiB of memory -- what starting a trivial child costs when the
 * parent's page tables are not copied, at the parent size the spawn benchmark runs at.
 *
 * usage: raw_spawn RSS_MIB SECONDS NAME
 * prints one JSON line: {"name": NAME, "ns_per_op": <per spawn>, "iterations": n}
 * exit 0, or 1 with a message on stderr when a syscall fails or /bin/true does not exit 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int spawn_true(void) {
  char *argv[] = {"/bin/true", NULL};
  pid_t pid = vfork();
  if (pid < 0) return -1;
  if (pid == 0) {
    execve("/bin/true", argv, environ);
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: raw_spawn RSS_MIB SECONDS NAME\n");
    return 2;
  }
  size_t rss = strtoull(argv[1], NULL, 10) << 20;
  double seconds = strtod(argv[2], NULL);
  char *ballast = rss ? malloc(rss) : NULL;
  if (rss && !ballast) {
    fprintf(stderr, "raw_spawn: cannot allocate %s MiB\n", argv[1]);
    return 1;
  }
  if (rss) memset(ballast, 1, rss); /* resident, as the parent's heap would be */
  if (spawn_true() < 0) { /* warm-up */
    fprintf(stderr, "raw_spawn: %s\n", strerror(errno));
    return 1;
  }
  long iterations = 0;
  double start = now_ns(), elapsed = 0;
  while (iterations < 20 || elapsed < seconds * 1e9) {
    if (spawn_true() < 0) {
      fprintf(stderr, "raw_spawn: %s\n", strerror(errno));
      return 1;
    }
    ++iterations;
    elapsed = now_ns() - start;
  }
  printf("{\"name\": \"%s\", \"ns_per_op\": %.1f, \"iterations\": %ld}\n", argv[3], elapsed / (double)iterations,
         iterations);
  volatile char keep = rss ? ballast[rss - 1] : 0; /* the ballast stays live until here */
  (void)keep;
  free(ballast);
  return 0;
}
