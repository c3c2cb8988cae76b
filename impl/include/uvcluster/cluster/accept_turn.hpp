#pragma once
// AcceptTurn: the accept turn that the processes sharing one listening socket pass round, so one
// connection wakes one process, none finds EAGAIN, and a burst is dealt out in turn.
//
// Why: EPOLLEXCLUSIVE wakes one waiter per arriving connection, but the listener is level-
// triggered, so every worker that comes back to epoll_wait while the backlog is not empty is told
// "readable" again; two of them then race for one connection (EAGAIN), and the worker that comes
// back first takes a burst (wrk's 50 keep-alive connections) nearly alone. With a turn, only its
// holder waits on the socket: it waits until the socket is readable, accepts its share of the
// queued connections (its loop's accept pass; AcceptorOptions::turn_batch), then takes a new
// ticket and passes the turn to the next ticket. Tickets are served in order, so the turn goes
// round in a fixed order that does not depend on which waiter thread the scheduler runs first
// (an earlier version on a mutex did: a worker whose thread had not re-queued in time was skipped,
// and one worker could take most of a burst).
//
// What: a ticket queue (futex on the serving ticket; each waiter sleeps with its ticket's bit and a
// hand-off wakes only the next ticket's holder, not the whole queue) in one shared page of a memfd
// (close-on-exec), with the owner pid of each ticket and a connection count per holder. A
// launcher creates it (new_page()) and hands the fd to the workers: hello-native inherits it
// (--accept-turn-fd N); under cluster::Primary with policy exclusive, the primary makes one per
// server key and a C++ worker asks for it after its queryServer (worker.hpp). A zeroed page is a
// valid empty queue. A waiter that sees the turn stuck for 100 ms on a ticket whose process is
// gone (or that was abandoned) moves it on, so a worker that dies holding or awaiting the turn
// stops the others for at most two such slices (hand-offs to other tickets do not wake a waiter).
// "Gone" is kill(pid, 0) == ESRCH: a dead worker counts once its parent has reaped it.
//
// Threads: acquire/release from one thread at a time per holder (the ExclusiveWaiter's thread);
// wake_waiters from any thread. Lifetime: the mapping lives as long as the AcceptTurn object, and
// its destructor gives up a ticket it still holds; the fd is only needed to attach.
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

  // A fresh turn's memfd (close-on-exec), not mapped: a launcher that takes no turn itself hands
  // it to its workers.
  static Result<Fd> new_page();
  // A new turn in a fresh memfd, mapped here too (a holder; fd() can be handed to others).
  static Result<std::shared_ptr<AcceptTurn>> create();
  // Maps the turn behind an inherited memfd (borrowed: the caller may close it afterwards).
  static Result<std::shared_ptr<AcceptTurn>> attach(int fd);

  AcceptTurn(Key, Fd fd, Shared* shared);
  ~AcceptTurn();
  AcceptTurn(const AcceptTurn&) = delete;
  AcceptTurn& operator=(const AcceptTurn&) = delete;

  int fd() const { return fd_.get(); }

  // Blocks until this holder's ticket is served (taking a ticket first if it has none). Returns
  // false, without the turn and giving up the ticket, once `stopping()` is true; it is checked at
  // least every 100 ms and after every wake_waiters().
  bool acquire(const std::function<bool()>& stopping);
  // Takes this holder's ticket now, if it has none: a holder that reports itself ready (a worker's
  // `listening`) is then in the queue already, and the turn cannot go round without it.
  void queue_up() {
    if (!has_ticket_) take_ticket();
  }
  // Passes the turn to the next ticket; `again`: take a new ticket first (queue behind the others).
  void release(bool again = true);
  // The holder's loop accepted a connection (its count, for should_pass). Any thread.
  void note_accepted();
  // True when another holder is queued for the turn and kSlack or more connections behind this
  // one: the holder then passes the turn on without accepting, so a burst is shared out even when
  // a worker came back to the queue late (it was not scheduled in time). Only a queued holder is
  // favoured, so a busy or stuck worker never holds the others up.
  bool should_pass() const;
  // Gives up a ticket taken by release(again) but not used (the holder stops waiting on the
  // socket for a while), so the turn does not stop at it.
  void leave_queue() { abandon(); }
  // Wakes threads waiting in acquire() (so they re-check `stopping`).
  void wake_waiters();

  // Threads waiting in acquire() now, turns passed since creation, and threads that passing the
  // turn woke (at most one per hand-off while 32 or fewer are queued) (tests, diagnostics).
  uint32_t queued() const;
  uint64_t turns_taken() const;
  uint64_t threads_woken() const;

 private:
  void take_slot();
  void take_ticket();
  void advance_from(uint32_t ticket);
  void abandon();

  Fd fd_;
  Shared* shared_;
  int slot_ = -1;
  uint32_t ticket_ = 0;
  bool has_ticket_ = false;
};

}  // namespace uvcluster::cluster
