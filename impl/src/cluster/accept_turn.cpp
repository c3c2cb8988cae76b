#include "uvcluster/cluster/accept_turn.hpp"

#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
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
  // One slot per holder (process attached): who, connections accepted, queued for the turn now.
  struct Slot {
    std::atomic<int32_t> pid;
    std::atomic<uint32_t> queued;
    std::atomic<uint64_t> accepted;
  } slots[AcceptTurn::kSlots];
};

namespace {
constexpr size_t kPage = 4096;
constexpr long kSliceNs = 100'000'000;  // how often a blocked thread re-checks `stopping`
constexpr uint32_t kReady = 2;
static_assert(sizeof(AcceptTurn::Shared) <= kPage);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

bool gone(int32_t pid) { return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH; }

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

AcceptTurn::~AcceptTurn() {
  if (slot_ >= 0) shared_->slots[slot_].pid.store(0);
  ::munmap(shared_, kPage);
}

void AcceptTurn::take_slot() {
  // A free slot, or one whose process is gone. It starts at the fewest connections of the live
  // holders, so a newcomer is dealt its share from now on instead of catching up on the past.
  int32_t me = static_cast<int32_t>(::getpid());
  for (int i = 0; i < kSlots && slot_ < 0; ++i) {
    int32_t pid = shared_->slots[i].pid.load();
    if ((pid == 0 || gone(pid)) && shared_->slots[i].pid.compare_exchange_strong(pid, me)) slot_ = i;
  }
  if (slot_ < 0) return;  // more holders than slots: this one takes turns without a count
  uint64_t fewest = UINT64_MAX;
  for (int i = 0; i < kSlots; ++i)
    if (i != slot_ && shared_->slots[i].pid.load() != 0) fewest = std::min(fewest, shared_->slots[i].accepted.load());
  shared_->slots[slot_].accepted.store(fewest == UINT64_MAX ? 0 : fewest);
  shared_->slots[slot_].queued.store(0);
}

void AcceptTurn::note_accepted() {
  if (slot_ >= 0) shared_->slots[slot_].accepted.fetch_add(1);
}

bool AcceptTurn::should_pass() const {
  if (slot_ < 0) return false;
  uint64_t mine = shared_->slots[slot_].accepted.load();
  for (int i = 0; i < kSlots; ++i) {
    const Shared::Slot& s = shared_->slots[i];
    if (i != slot_ && s.pid.load() != 0 && s.queued.load() && s.accepted.load() + kSlack <= mine) return true;
  }
  return false;
}

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
  turn->take_slot();
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
  if (slot_ >= 0) s->slots[slot_].queued.store(1);
  for (;;) {
    if (stopping()) {
      s->queued.fetch_sub(1);
      if (slot_ >= 0) s->slots[slot_].queued.store(0);
      return false;
    }
    timespec deadline = after_ns(CLOCK_MONOTONIC, kSliceNs);
    int rc = pthread_mutex_clocklock(&s->mutex, CLOCK_MONOTONIC, &deadline);
    if (rc == EOWNERDEAD) rc = pthread_mutex_consistent(&s->mutex);  // its holder died: ours now
    if (rc == 0) break;
    if (rc != ETIMEDOUT && rc != EINTR) {  // ENOTRECOVERABLE: nobody can take turns any more
      s->queued.fetch_sub(1);
      if (slot_ >= 0) s->slots[slot_].queued.store(0);
      return false;
    }
  }
  s->queued.fetch_sub(1);
  if (slot_ >= 0) s->slots[slot_].queued.store(0);
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
