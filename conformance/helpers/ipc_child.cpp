// C++ child for Node parents: announces itself with one internal and one user message, echoes
// every message, disconnects on "disconnect", exits with 3 on "exit"; argument "unref" unrefs
// the channel (exit status 4: the loop ended without a disconnect). A message with a handle is
// answered {"held": n} and the handle is kept (fd and socket-list token) until "close-sockets",
// which closes them all and answers "closed".
#include <cstdlib>
#include <cstdio>
#include <string>
#include <vector>

#include "uvcluster/ipc/channel.hpp"

using namespace uvcluster;

int main(int argc, char** argv) {
  uv_loop_t* loop = uv_default_loop();
  auto r = ipc::parent_channel(loop);
  if (!r) {
    std::fprintf(stderr, "ipc_child: %s\n", r.error().message.c_str());
    return 1;
  }
  ipc::Channel& ch = *r.value();
  bool env_cleared = !std::getenv("NODE_CHANNEL_FD") && !std::getenv("NODE_CHANNEL_SERIALIZATION_MODE");
  ch.send(ipc::Json{{"cmd", "NODE_TEST_INTERNAL"}, {"from", "C++"}});
  ch.send(ipc::Json{{"hello", "from C++"}, {"envCleared", env_cleared}});
  std::vector<ipc::ReceivedHandle> held;
  ch.on_message([&](const ipc::Json& m, ipc::ReceivedHandle* h) {
    if (h) {
      held.push_back(std::move(*h));
      ch.send(ipc::Json{{"held", held.size()}});
    } else if (m == "close-sockets") {
      ch.send("closed");  // first, as from Node, whose sockets announce 'close' a turn later
      held.clear();
    } else if (m == "disconnect") {
      (void)ch.disconnect();
    } else if (m == "exit") {
      std::exit(3);
    } else {
      ch.send(m);
    }
  });
  // "unref": the channel no longer keeps us alive, so we exit (4) while still connected.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "unref") ch.unref();
  bool disconnected = false;
  ch.on_disconnect([&] { disconnected = true; });
  uv_run(loop, UV_RUN_DEFAULT);
  r.value().reset();
  uv_run(loop, UV_RUN_DEFAULT);
  return disconnected ? 0 : 4;
}
