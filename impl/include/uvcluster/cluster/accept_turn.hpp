#pragma once
// AcceptTurn: the accept turn that the processes sharing one listening socket pass round, so one
// connection wakes one process, none finds EAGAIN, and a burst is dealt out in turn.
//
// Why: EPOLLEXCLUSIVE wakes one waiter per arriving connection, but the listener is level-
// triggered, so every worker that comes back to epoll_wait while the backlog is not empty is told
// "readable" again; two of them then race for one connection (EAGAIN), and the worker that comes
// back first takes a burst (wrk's 50 keep-alive connections) nearly alone. With a turn, only its
// holder waits on the socket: it waits until the socket is readable, accepts one connection (its
// loop's accept pass), passes the turn on, and queues for it again behind the others. The kernel
// queues futex waiters first come, first served, so the turn goes round; a worker whose loop is
// still busy is not queued and is skipped, as Node's rr skips a busy worker.
//
// What: a robust, process-shared pthread mutex (a holder that dies hands it on: EOWNERDEAD) and
// two counters in one shared page of a memfd (close-on-exec). The launcher creates it and the
// workers inherit the fd (hello-native --accept-turn-fd N); the first process that attaches a
// fresh page initialises it, the others wait for that.
//
// Threads: acquire/release from one thread at a time per holder (the ExclusiveWaiter's thread);
// wake_yielders from any thread. Lifetime: the mapping lives as long as the AcceptTurn object;
// the fd is only needed to attach.
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"

namespace uvcluster::cluster {

class AcceptTurn {
  struct Key {
    explicit Key() = default;
  };

 public:
  struct Shared;  // the shared page's layout (accept_turn.cpp)
  static constexpr int kSlots = 64;     // holders with a connection count; more take turns without one
  static constexpr uint64_t kSlack = 2;  // pass the turn to a queued holder this many connections behind

  // A new turn in a fresh memfd (close-on-exec; a launcher hands fd() to its workers).
  static Result<std::shared_ptr<AcceptTurn>> create();
  // Maps the turn behind an inherited memfd (borrowed: the caller may close it afterwards).
  static Result<std::shared_ptr<AcceptTurn>> attach(int fd);

  AcceptTurn(Key, Fd fd, Shared* shared);
  ~AcceptTurn();
  AcceptTurn(const AcceptTurn&) = delete;
  AcceptTurn& operator=(const AcceptTurn&) = delete;

  int fd() const { return fd_.get(); }

  // Blocks until this thread holds the turn. If it released the turn while others were queued,
  // it first waits until one of them has taken it (no barging: the turn goes round). Returns
  // false, without the turn, once `stopping()` is true; it is checked at least every 100 ms and
  // after every wake_yielders().
  bool acquire(const std::function<bool()>& stopping);
  void release();
  // The holder's loop accepted a connection (its count, for should_pass). Any thread.
  void note_accepted();
  // True when another holder is queued for the turn and kSlack or more connections behind this
  // one: the holder then passes the turn on without accepting, so a burst is shared out even when
  // a worker came back to the queue late (it was not scheduled in time). Only a queued holder is
  // favoured, so a busy or stuck worker never holds the others up.
  bool should_pass() const;
  // Wakes threads waiting in acquire() for the turn to move on (so they re-check `stopping`).
  void wake_yielders();

  // Threads queued for the turn now, and turns taken since creation (tests, diagnostics).
  uint32_t queued() const;
  uint64_t turns_taken() const;

 private:
  void take_slot();

  Fd fd_;
  Shared* shared_;
  int slot_ = -1;
  uint32_t taken_at_release_ = 0;  // the handoff count when we last released with others queued
  bool yield_ = false;             // ... and whether they were queued
};

}  // namespace uvcluster::cluster
