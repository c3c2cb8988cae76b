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
  std::atomic<uint32_t> state;    // 0 fresh page, 1 being initialised, 2 ready
  std::atomic<uint32_t> queued;   // threads waiting in acquire()
  // The ticket whose holder has the turn; the waiters' futex word. Each waiter sleeps with its
  // ticket's bit (FUTEX_WAIT_BITSET) and a hand-off wakes only the next ticket's bit.
  std::atomic<uint32_t> serving;
  std::atomic<uint32_t> next;     // the next ticket to hand out
  std::atomic<uint64_t> woken;    // threads woken by hand-offs (diagnostics)
  // Who holds each ticket (by ticket % kSlots): a pid, or kAbandoned; a waiter that sees the turn
  // stuck on a ticket whose process is gone or that was abandoned moves it on.
  std::atomic<int32_t> owner[AcceptTurn::kSlots];
  // One slot per holder (process attached): who, connections accepted, queued for the turn now.
  struct Slot {
    std::atomic<int32_t> pid;
    std::atomic<uint32_t> queued;
    std::atomic<uint64_t> accepted;
  } slots[AcceptTurn::kSlots];
};

namespace {
constexpr size_t kPage = 4096;
constexpr long kSliceNs = 100'000'000;  // how often a waiter re-checks `stopping` and the holder
constexpr uint32_t kReady = 2;
constexpr int32_t kAbandoned = -1;
static_assert(sizeof(AcceptTurn::Shared) <= kPage);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

bool gone(int32_t pid) { return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH; }

uint32_t* word(std::atomic<uint32_t>& a) { return reinterpret_cast<uint32_t*>(&a); }

// A waiter sleeps on `serving` with its ticket's bit, so a hand-off wakes the next ticket's holder
// and not the whole queue. Bits repeat every 32 tickets: with more than 32 queued, a hand-off may
// also wake a thread 32 tickets further, which re-checks and sleeps again. Not FUTEX_PRIVATE: the
// word is shared between processes.
uint32_t ticket_bit(uint32_t ticket) { return 1u << (ticket % 32); }

// Sleeps while `serving` is `expected`, until woken with `bit` or for at most kSliceNs. True when
// the slice ran out (FUTEX_WAIT_BITSET's timeout is absolute, on CLOCK_MONOTONIC).
bool sleep_on(std::atomic<uint32_t>& serving, uint32_t expected, uint32_t bit) {
  timespec deadline{};
  ::clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_nsec += kSliceNs;
  if (deadline.tv_nsec >= 1'000'000'000) {
    deadline.tv_nsec -= 1'000'000'000;
    ++deadline.tv_sec;
  }
  long rc = ::syscall(SYS_futex, word(serving), FUTEX_WAIT_BITSET, expected, &deadline, nullptr, bit);
  return rc != 0 && errno == ETIMEDOUT;
}

// Wakes the threads sleeping with `bit`; returns how many.
long wake(std::atomic<uint32_t>& serving, uint32_t bit) {
  long n = ::syscall(SYS_futex, word(serving), FUTEX_WAKE_BITSET, INT_MAX, nullptr, nullptr, bit);
  return n > 0 ? n : 0;
}

}  // namespace

AcceptTurn::AcceptTurn(Key, Fd fd, Shared* shared) : fd_(std::move(fd)), shared_(shared) {}

AcceptTurn::~AcceptTurn() {
  abandon();
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

Result<Fd> AcceptTurn::new_page() {
  Fd fd(::memfd_create("uvcluster-accept-turn", MFD_CLOEXEC));
  if (!fd) return Error::from_uv(-errno, "memfd_create");
  if (::ftruncate(fd.get(), kPage) != 0) return Error::from_uv(-errno, "ftruncate");
  return fd;
}

Result<std::shared_ptr<AcceptTurn>> AcceptTurn::create() {
  auto fd = new_page();
  if (!fd.ok()) return fd.error();
  auto turn = attach(fd->get());
  if (!turn.ok()) return turn.error();
  turn.value()->fd_ = std::move(fd.value());
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
    s->state.store(kReady);  // a zeroed page is a valid empty queue
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

void AcceptTurn::take_ticket() {
  ticket_ = shared_->next.fetch_add(1);
  shared_->owner[ticket_ % kSlots].store(static_cast<int32_t>(::getpid()));
  has_ticket_ = true;
}

void AcceptTurn::advance_from(uint32_t ticket) {
  // Moves the turn past `ticket` and past every abandoned ticket after it, then wakes the holder
  // of the ticket now served (only it: the others' tickets are not due).
  for (uint32_t t = ticket; shared_->serving.compare_exchange_strong(t, t + 1); ++t) {
    uint32_t next = t + 1;
    if (next == shared_->next.load() || shared_->owner[next % kSlots].load() != kAbandoned) break;
  }
  if (long n = wake(shared_->serving, ticket_bit(shared_->serving.load())); n > 0) shared_->woken.fetch_add(n);
}

void AcceptTurn::abandon() {
  if (!has_ticket_) return;
  has_ticket_ = false;
  shared_->owner[ticket_ % kSlots].store(kAbandoned);
  if (shared_->serving.load() == ticket_) advance_from(ticket_);
}

bool AcceptTurn::acquire(const std::function<bool()>& stopping) {
  Shared* s = shared_;
  if (!has_ticket_) take_ticket();
  s->queued.fetch_add(1);
  if (slot_ >= 0) s->slots[slot_].queued.store(1);
  bool got = false;
  for (;;) {
    uint32_t cur = s->serving.load();
    if (cur == ticket_) {
      got = true;
      break;
    }
    if (stopping()) break;
    if (sleep_on(s->serving, cur, ticket_bit(ticket_)) && s->serving.load() == cur) {
      // The turn has not moved for a whole slice: its holder may be gone. (Hand-offs to other
      // tickets do not wake us, so a dead holder is seen within two slices.)
      int32_t owner = s->owner[cur % kSlots].load();
      if (owner == kAbandoned || gone(owner)) advance_from(cur);
    }
  }
  s->queued.fetch_sub(1);
  if (slot_ >= 0) s->slots[slot_].queued.store(0);
  if (!got) {
    abandon();
    return false;
  }
  has_ticket_ = false;
  return true;
}

void AcceptTurn::release(bool again) {
  uint32_t mine = ticket_;
  // Queue again before passing the turn on: our place then does not depend on this thread being
  // scheduled in time, so the turn goes round in a fixed order.
  if (again) take_ticket();
  advance_from(mine);
}

void AcceptTurn::wake_waiters() { wake(shared_->serving, FUTEX_BITSET_MATCH_ANY); }

uint32_t AcceptTurn::queued() const { return shared_->queued.load(); }
uint64_t AcceptTurn::turns_taken() const { return shared_->serving.load(); }
uint64_t AcceptTurn::threads_woken() const { return shared_->woken.load(); }

}  // namespace uvcluster::cluster
