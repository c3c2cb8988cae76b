#pragma once
// uvcluster: Node's process model (spawn, exec, the sync forms, fork, the IPC channel, the
// cluster module) on a libuv loop. This header includes every public header; the rules below
// hold for all of them and are not repeated in each.
//
// Threading. Every object belongs to the uv_loop_t it was made on: call it, and destroy it, on
// the thread that runs that loop, and only there. Events and callbacks run on that thread, from
// the loop, never from inside the call that caused them (spawn() returns before `spawn` fires;
// send() before its `done`). The sync forms (spawn_sync, exec_sync, exec_file_sync) run their
// own private loop and block the calling thread until the child has closed.
//
// Lifetime. What a factory returns in a unique_ptr is yours: destroying it stops it at once (its
// handles close, its fds are closed, no listener runs again). ChildProcess is shared: it keeps
// itself alive until its `close` event, so dropping your shared_ptr never cuts a child's events
// short; Primary and Supervisor live while you hold them. Pointers and references handed out
// (child->stdout_pipe(), child->channel(), a WorkerHandle&) are borrowed from their owner and
// valid while it lives; fds passed as `int` are borrowed and must outlive the borrower. libuv
// frees a closed handle's memory from its close callback, so run the loop once more after the
// last object is gone, before uv_loop_close().
//
// Errors are values: see error.hpp.
#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/cluster/supervisor.hpp"
#include "uvcluster/cluster/worker.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/exec.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"
#include "uvcluster/process.hpp"
#include "uvcluster/signals.hpp"
#include "uvcluster/stream.hpp"
#include "uvcluster/sync.hpp"
