#pragma once
// The owner's side of Readable and Writable (spawn()'s ChildProcess): making them, the pipe to
// hand to uv_spawn, and starting to read once the child has spawned. Kept out of stream.hpp so
// a user of a child's streams sees only what a user may call.
#include <memory>

#include "uvcluster/stream.hpp"

namespace uvcluster::detail {

struct StreamOwner {
  template <class Stream>
  static Result<std::unique_ptr<Stream>> make(uv_loop_t* loop) {
    auto s = std::make_unique<Stream>(typename Stream::Key{});
    if (auto st = s->init(loop); !st) return st.error();
    return s;
  }
  template <class Stream>
  static uv_stream_t* stream(Stream& s) {
    return s.pipe_.stream();
  }
  static void start(Readable& r) { r.start(); }
};

}  // namespace uvcluster::detail
