#pragma once
// The owner's side of a Channel (spawn()'s ChildProcess, parent_channel()): making it with its
// pipe initialized, the pipe to hand to uv_spawn or to open an fd on, starting to read, and
// closing at once without waiting (destroy). Kept out of channel.hpp so a user of a channel sees
// only what a user may call.
#include <memory>

#include "uvcluster/ipc/channel.hpp"

namespace uvcluster::ipc {

struct ChannelOwner {
  static Result<std::unique_ptr<Channel>> make(uv_loop_t* loop, ChannelOptions options = {}) {
    auto c = std::make_unique<Channel>(Channel::Key{}, loop, options);
    if (auto st = c->init(); !st) return st.error();
    return c;
  }
  static uv_pipe_t* pipe(Channel& c) { return c.pipe(); }
  static void start(Channel& c) { c.start(); }
  static void destroy(Channel& c) { c.destroy(); }
};

}  // namespace uvcluster::ipc
