/* raw_rr: the physical limit of a round-robin hand-off on this machine. A bare C primary and its
 * forked workers doing only what Node's rr protocol needs per connection, nothing else:
 *
 *   primary: epoll_wait, accept4 (one per readiness report: never an accept known to fail with
 *            EAGAIN), one sendmsg carrying the fd (SCM_RIGHTS) with a short newconn frame, close
 *            of its copy, and a read of the worker's short ack (several acks per read when they
 *            pile up).
 *   worker:  recvmsg (frames + fds; with a window > 1, on until none is left), one write of the
 *            ack(s), then HTTP: epoll_ctl ADD, read the request, write a `Connection: close`
 *            answer, close.
 *
 * --reuseport is the same workers without any hand-off, the yardstick of its cost: each worker
 * accepts on its own SO_REUSEPORT listener (all on one port, made by the primary before the fork
 * so that every one listens before the first `listening` line), accept4 once per readiness
 * report, then the same HTTP. The primary only waits for the stop.
 *
 * Usage: raw_rr [--workers N] [--window K] [--no-ack] [--reuseport] [--port P]
 *   --window K  up to K hand-offs in flight per worker (default 1, Node's); the primary queues
 *               the rest and hands them out as acks come back.
 *   --no-ack    the workers never answer and the primary never waits (the lower bound of any
 *               acknowledged protocol); a full channel blocks the primary's sendmsg.
 * Prints one JSON line per worker, {"event":"listening","worker":I,"pid":P,"port":PORT}; on
 * SIGTERM/SIGINT it stops its workers (SIGTERM, by pid), prints {"event":"stats","workers":
 * [{"pid":P,"connections":N},...]} (connections handed out; with --reuseport, accepted by each
 * worker) and exits 0. Workers die with the primary (PR_SET_PDEATHSIG). 127.0.0.1 only. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#endif
#endif
#ifndef CALLGRIND_ZERO_STATS
#define CALLGRIND_ZERO_STATS
#define CALLGRIND_DUMP_STATS
#endif

#define MAX_WORKERS 64
#define QUEUE_CAP 65536
#define MAX_FDS_PER_READ 64

static volatile sig_atomic_t stopping = 0;
static void on_stop(int sig) {
  (void)sig;
  stopping = 1;
}

static volatile sig_atomic_t zero_requested = 0, dump_requested = 0;
static void on_callgrind_request(int sig) {
  if (sig == SIGUSR1) zero_requested = 1;
  else dump_requested = 1;
}

/* In a worker after each wake-up: a client request is not made from the signal handler. */
static void serve_callgrind_requests(void) {
  if (zero_requested) {
    zero_requested = 0;
    CALLGRIND_ZERO_STATS;
  }
  if (dump_requested) {
    dump_requested = 0;
    CALLGRIND_DUMP_STATS;
  }
}

static void die(const char* what) {
  fprintf(stderr, "raw_rr: %s: %s\n", what, strerror(errno));
  exit(1);
}

static const char kResponse[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
    "hello world\n";

/* ---------------------------------------------------------------- worker */

/* Serves one ready connection: one read of the request, one answer, close (Connection: close). */
static void serve(int fd, char* buf, size_t len) {
  ssize_t got = read(fd, buf, len);
  if (got > 0) (void)!write(fd, kResponse, sizeof kResponse - 1);
  if (got < 0 && errno == EAGAIN) return;
  close(fd);
}

/* A worker's loop: ready connections are served; when `source` (the channel, or the listener
 * with --reuseport) is readable, take() adds the new connection(s) to `ep`, or returns nonzero
 * when the worker is done (the primary is gone). */
typedef int (*take_fn)(int ep, int source, void* ctx);

static int worker_loop(int source, take_fn take, void* ctx) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = source};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, source, &ev) != 0) die("epoll_ctl");
  char buf[16384];
  for (;;) {
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, -1);
    serve_callgrind_requests();
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd != source) serve(fd, buf, sizeof buf);
      else if (take(ep, source, ctx) != 0) return 0;
    }
  }
}

static void watch(int ep, int conn) {
  struct epoll_event cev = {.events = EPOLLIN, .data.fd = conn};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, conn, &cev) != 0) close(conn);
}

struct hand_off {
  int ack;
  int window;
};

/* The hand-off: recvmsg (frames + fds), one write of the ack(s). A unix stream read stops after
 * a message carrying fds, so with a window > 1 the worker reads on (non-blocking) until nothing
 * is left, and acks all it got in one write. */
static int take_handed_off(int ep, int channel, void* how) {
  const struct hand_off* h = how;
  char buf[16384];
  char acks[MAX_FDS_PER_READ * 4]; /* 2 bytes each: < MAX_FDS_PER_READ before the last read, that many in it */
  size_t nacks = 0;
  int flags = MSG_CMSG_CLOEXEC;
  do {
    union {
      struct cmsghdr align;
      char space[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_READ)];
    } control;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    ssize_t got = recvmsg(channel, &msg, flags);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) break;
    if (got <= 0) return 1; /* the primary is gone */
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      int* fds = (int*)CMSG_DATA(c);
      /* The primary accepted with SOCK_NONBLOCK: the file status is shared, nothing to set. */
      for (size_t k = 0; k < count; ++k, ++nacks) watch(ep, fds[k]);
    }
    flags |= MSG_DONTWAIT;
  } while (h->ack && h->window > 1 && nacks < MAX_FDS_PER_READ);
  if (h->ack && nacks > 0) {
    for (size_t k = 0; k < nacks; ++k) memcpy(acks + k * 2, "a\n", 2);
    if (write(channel, acks, nacks * 2) < 0 && errno != EINTR) return 1;
  }
  return 0;
}

/* --reuseport, no hand-off: one accept4 per readiness report; `accepted` is this worker's slot
 * in memory shared with the primary. */
static int take_accepted(int ep, int listener, void* accepted) {
  int conn = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (conn < 0) return 0;
  ++*(volatile unsigned long long*)accepted;
  watch(ep, conn);
  return 0;
}

/* ---------------------------------------------------------------- primary */

struct worker {
  pid_t pid;
  int channel;
  int in_flight;
  unsigned long long handed;
};

static int queue[QUEUE_CAP];
static size_t q_head, q_len;

static int send_conn(struct worker* w, int conn, unsigned long long seq) {
  char frame[160];
  int len = snprintf(frame, sizeof frame,
                     "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"act\":\"newconn\","
                     "\"key\":\"127.0.0.1:0:4\",\"cmd\":\"NODE_CLUSTER\",\"seq\":%llu}}\n", seq);
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(int))];
  } control;
  memset(&control, 0, sizeof control);
  struct iovec iov = {.iov_base = frame, .iov_len = (size_t)len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                       .msg_controllen = sizeof control.space};
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &conn, sizeof(int));
  ssize_t r;
  do r = sendmsg(w->channel, &msg, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  close(conn); /* the kernel holds the in-flight reference */
  if (r < 0) return -1;
  ++w->in_flight;
  ++w->handed;
  return 0;
}

/* --reuseport: nothing to hand out. Signals blocked, so one arriving before sigsuspend waits. */
static void wait_for_stop(void) {
  sigset_t stop, old;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, &old);
  while (!stopping) sigsuspend(&old);
  sigprocmask(SIG_SETMASK, &old, NULL);
}

/* Until SIGTERM/SIGINT: accepts on `lfd` and hands each connection out round-robin. */
static void hand_out(struct worker* workers, int nworkers, int lfd, int window, int ack) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = MAX_WORKERS};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) die("epoll_ctl");
  if (ack) {
    for (int i = 0; i < nworkers; ++i) {
      struct epoll_event wev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
      if (epoll_ctl(ep, EPOLL_CTL_ADD, workers[i].channel, &wev) != 0) die("epoll_ctl");
    }
  }

  unsigned long long seq = 0;
  int next = 0; /* round-robin cursor */
  char abuf[4096];
  while (!stopping) {
    struct epoll_event evs[MAX_WORKERS + 1];
    int n = epoll_wait(ep, evs, MAX_WORKERS + 1, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int e = 0; e < n; ++e) {
      uint32_t tag = evs[e].data.u32;
      if (tag == MAX_WORKERS) {
        int conn = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (conn < 0) continue; /* EAGAIN only when another wake-up took it; ECONNABORTED... */
        if (q_len == QUEUE_CAP) {
          close(conn);
          continue;
        }
        queue[(q_head + q_len++) % QUEUE_CAP] = conn;
      } else {
        struct worker* w = &workers[tag];
        ssize_t got = read(w->channel, abuf, sizeof abuf);
        if (got <= 0) {
          if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
          epoll_ctl(ep, EPOLL_CTL_DEL, w->channel, NULL); /* the worker died */
          w->in_flight = window; /* never chosen again */
          continue;
        }
        for (ssize_t k = 0; k < got; ++k)
          if (abuf[k] == '\n' && w->in_flight > 0) --w->in_flight;
      }
    }
    /* Hand the queue out: round-robin over the workers with a free slot. */
    while (q_len > 0) {
      int chosen = -1;
      for (int k = 0; k < nworkers; ++k) {
        int i = (next + k) % nworkers;
        if (!ack || workers[i].in_flight < window) {
          chosen = i;
          break;
        }
      }
      if (chosen < 0) break;
      next = (chosen + 1) % nworkers;
      int conn = queue[q_head];
      q_head = (q_head + 1) % QUEUE_CAP;
      --q_len;
      if (send_conn(&workers[chosen], conn, ++seq) != 0) workers[chosen].in_flight = window;
      if (!ack) workers[chosen].in_flight = 0;
    }
  }
}

static int listen_on(int port, int reuseport, struct sockaddr_in* bound) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport && setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) die("SO_REUSEPORT");
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(lfd, (struct sockaddr*)&sa, sizeof sa) != 0) die("bind");
  if (listen(lfd, 511) != 0) die("listen");
  socklen_t slen = sizeof *bound;
  if (getsockname(lfd, (struct sockaddr*)bound, &slen) != 0) die("getsockname");
  return lfd;
}

int main(int argc, char** argv) {
  int nworkers = 2, window = 1, ack = 1, port = 0, reuseport = 0;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--workers") && i + 1 < argc) nworkers = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--window") && i + 1 < argc) window = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--no-ack")) ack = 0;
    else if (!strcmp(argv[i], "--reuseport")) reuseport = 1;
    else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: raw_rr [--workers N] [--window K] [--no-ack] [--reuseport] [--port P]\n");
      return 2;
    }
  }
  if (nworkers < 1 || nworkers > MAX_WORKERS || window < 1 || port < 0 || port > 65535) {
    fprintf(stderr, "raw_rr: --workers 1..%d, --window >= 1, --port 0..65535\n", MAX_WORKERS);
    return 2;
  }

  /* With --reuseport one listener per worker, all on the first one's port; else the primary's. */
  struct sockaddr_in sa;
  int listeners[MAX_WORKERS];
  int nlisteners = reuseport ? nworkers : 1;
  for (int i = 0; i < nlisteners; ++i) listeners[i] = listen_on(i ? ntohs(sa.sin_port) : port, reuseport, &sa);
  int lfd = listeners[0];
  volatile unsigned long long* accepted = NULL;
  if (reuseport) {
    accepted = mmap(NULL, sizeof(unsigned long long) * MAX_WORKERS, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (accepted == MAP_FAILED) die("mmap");
  }

  struct sigaction sact = {.sa_handler = on_stop};
  sigaction(SIGTERM, &sact, NULL);
  sigaction(SIGINT, &sact, NULL);

  struct worker workers[MAX_WORKERS];
  pid_t self = getpid();
  for (int i = 0; i < nworkers; ++i) {
    int sv[2];
    /* Blocking: with acks the window keeps the channel far below its buffer; without, a full
     * channel blocking sendmsg is the only backpressure there is. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != self) _exit(0);
      signal(SIGTERM, SIG_DFL);
      signal(SIGINT, SIG_DFL);
      struct sigaction request = {.sa_handler = on_callgrind_request}; /* no SA_RESTART: EINTR */
      sigaction(SIGUSR1, &request, NULL);
      sigaction(SIGUSR2, &request, NULL);
      close(sv[0]);
      for (int k = 0; k < i; ++k) close(workers[k].channel);
      for (int k = 0; k < nlisteners; ++k)
        if (!reuseport || k != i) close(listeners[k]);
      _exit(reuseport ? worker_loop(listeners[i], take_accepted, (void*)&accepted[i])
                      : worker_loop(sv[1], take_handed_off, &(struct hand_off){ack, window}));
    }
    close(sv[1]);
    workers[i] = (struct worker){.pid = pid, .channel = sv[0]};
  }
  for (int i = 0; i < nworkers; ++i)
    printf("{\"event\":\"listening\",\"worker\":%d,\"pid\":%d,\"port\":%d}\n", i, (int)workers[i].pid,
           ntohs(sa.sin_port));
  fflush(stdout);

  if (reuseport) {
    for (int i = 0; i < nlisteners; ++i) close(listeners[i]); /* the workers' now */
    wait_for_stop();
  } else {
    hand_out(workers, nworkers, lfd, window, ack);
  }

  for (int i = 0; i < nworkers; ++i) kill(workers[i].pid, SIGTERM);
  for (int i = 0; i < nworkers; ++i) waitpid(workers[i].pid, NULL, 0);
  printf("{\"event\":\"stats\",\"workers\":[");
  for (int i = 0; i < nworkers; ++i)
    printf("%s{\"pid\":%d,\"connections\":%llu}", i ? "," : "", (int)workers[i].pid,
           reuseport ? accepted[i] : workers[i].handed);
  printf("]}\n");
  return 0;
}
