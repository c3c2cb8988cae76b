#include "uvcluster/cluster/accept_turn.hpp"

#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace uvcluster::cluster {

struct AcceptTurn::Shared {
  std::atomic<uint32_t> state;      // 0 fresh page, 1 being initialised, 2 ready
  std::atomic<uint32_t> queued;     // threads blocked on the mutex
  std::atomic<uint32_t> taken;      // turns taken (wraps); futex word of the yielders
  std::atomic<uint32_t> yielders;   // threads waiting for `taken` to move
  pthread_mutex_t mutex;            // robust, process-shared
};

namespace {
constexpr size_t kPage = 4096;
constexpr long kSliceNs = 100'000'000;  // how often a blocked thread re-checks `stopping`
constexpr uint32_t kReady = 2;
static_assert(sizeof(AcceptTurn::Shared) <= kPage);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

uint32_t* word(std::atomic<uint32_t>& a) { return reinterpret_cast<uint32_t*>(&a); }

timespec after_ns(clockid_t clock, long ns) {
  timespec t{};
  ::clock_gettime(clock, &t);
  t.tv_nsec += ns;
  t.tv_sec += t.tv_nsec / 1'000'000'000;
  t.tv_nsec %= 1'000'000'000;
  return t;
}

Status init_mutex(pthread_mutex_t* m) {
  pthread_mutexattr_t attr;
  if (int rc = pthread_mutexattr_init(&attr); rc != 0) return Error::from_uv(-rc, "pthread_mutexattr_init");
  int rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  if (rc == 0) rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  if (rc == 0) rc = pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) return Error::from_uv(-rc, "pthread_mutex_init");
  return Ok{};
}
}  // namespace

AcceptTurn::AcceptTurn(Key, Fd fd, Shared* shared) : fd_(std::move(fd)), shared_(shared) {}

AcceptTurn::~AcceptTurn() { ::munmap(shared_, kPage); }

Result<std::shared_ptr<AcceptTurn>> AcceptTurn::create() {
  Fd fd(::memfd_create("uvcluster-accept-turn", MFD_CLOEXEC));
  if (!fd) return Error::from_uv(-errno, "memfd_create");
  if (::ftruncate(fd.get(), kPage) != 0) return Error::from_uv(-errno, "ftruncate");
  auto turn = attach(fd.get());
  if (!turn.ok()) return turn.error();
  turn.value()->fd_ = std::move(fd);
  return turn;
}

Result<std::shared_ptr<AcceptTurn>> AcceptTurn::attach(int fd) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return Error::from_uv(-errno, "fstat");
  if (st.st_size < static_cast<off_t>(kPage)) return Error::from_uv(-EINVAL, "accept turn (memfd too small)");
  void* p = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Error::from_uv(-errno, "mmap");
  auto turn = std::make_shared<AcceptTurn>(Key{}, Fd{}, static_cast<Shared*>(p));
  Shared* s = turn->shared_;
  uint32_t fresh = 0;
  if (s->state.compare_exchange_strong(fresh, 1)) {
    if (auto st2 = init_mutex(&s->mutex); !st2.ok()) {
      s->state.store(0);
      return st2.error();
    }
    s->state.store(kReady);
  } else {
    // Another process is initialising the fresh page: a few microseconds.
    for (int spins = 0; s->state.load() != kReady; ++spins) {
      if (spins > 1'000'000) return Error::from_uv(-ETIMEDOUT, "accept turn (never initialised)");
      ::sched_yield();
    }
  }
  return turn;
}

bool AcceptTurn::acquire(const std::function<bool()>& stopping) {
  Shared* s = shared_;
  if (yield_) {
    // We released with others queued: let one of them take the turn before we queue again. One
    // bounded wait: a queued process that died would otherwise hold us here for ever.
    yield_ = false;
    timespec deadline = after_ns(CLOCK_MONOTONIC, kSliceNs);
    s->yielders.fetch_add(1);
    while (s->taken.load() == taken_at_release_ && !stopping()) {
      timespec now{};
      ::clock_gettime(CLOCK_MONOTONIC, &now);
      long left = (deadline.tv_sec - now.tv_sec) * 1'000'000'000L + (deadline.tv_nsec - now.tv_nsec);
      if (left <= 0) break;
      timespec rel{left / 1'000'000'000L, left % 1'000'000'000L};
      ::syscall(SYS_futex, word(s->taken), FUTEX_WAIT, taken_at_release_, &rel, nullptr, 0);
    }
    s->yielders.fetch_sub(1);
  }
  s->queued.fetch_add(1);
  for (;;) {
    if (stopping()) {
      s->queued.fetch_sub(1);
      return false;
    }
    timespec deadline = after_ns(CLOCK_MONOTONIC, kSliceNs);
    int rc = pthread_mutex_clocklock(&s->mutex, CLOCK_MONOTONIC, &deadline);
    if (rc == EOWNERDEAD) rc = pthread_mutex_consistent(&s->mutex);  // its holder died: ours now
    if (rc == 0) break;
    if (rc != ETIMEDOUT && rc != EINTR) {  // ENOTRECOVERABLE: nobody can take turns any more
      s->queued.fetch_sub(1);
      return false;
    }
  }
  s->queued.fetch_sub(1);
  s->taken.fetch_add(1);
  if (s->yielders.load() > 0) ::syscall(SYS_futex, word(s->taken), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
  return true;
}

void AcceptTurn::release() {
  taken_at_release_ = shared_->taken.load();
  yield_ = shared_->queued.load() > 0;
  pthread_mutex_unlock(&shared_->mutex);
}

void AcceptTurn::wake_yielders() {
  ::syscall(SYS_futex, word(shared_->taken), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

uint32_t AcceptTurn::queued() const { return shared_->queued.load(); }
uint64_t AcceptTurn::turns_taken() const { return shared_->taken.load(); }

}  // namespace uvcluster::cluster
