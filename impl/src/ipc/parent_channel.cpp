// Child side of fork(): the channel our parent (Node or uvcluster) opened as NODE_CHANNEL_FD.
#include <fcntl.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include "ipc/channel_owner.hpp"

namespace uvcluster::ipc {

Result<std::unique_ptr<Channel>> parent_channel(uv_loop_t* loop, ChannelOptions options) {
  const char* fd_env = std::getenv("NODE_CHANNEL_FD");
  const char* mode_env = std::getenv("NODE_CHANNEL_SERIALIZATION_MODE");
  std::string fd_text = fd_env ? fd_env : "";
  std::string mode = mode_env ? mode_env : "json";
  // Node deletes both variables during bootstrap, so grandchildren do not inherit them.
  ::unsetenv("NODE_CHANNEL_FD");
  ::unsetenv("NODE_CHANNEL_SERIALIZATION_MODE");
  if (fd_text.empty()) return Error::make("ERR_IPC_NO_CHANNEL", "NODE_CHANNEL_FD is not set");
  char* end = nullptr;
  errno = 0;
  long fd = std::strtol(fd_text.c_str(), &end, 10);
  if (errno || *end || fd < 0 || fd > 1 << 20)
    return Error::make("ERR_IPC_NO_CHANNEL", "NODE_CHANNEL_FD is not a descriptor: " + fd_text);
  auto serialization = parse_serialization(mode);
  if (!serialization)
    return Error::make("ERR_IPC_NO_CHANNEL", "unsupported NODE_CHANNEL_SERIALIZATION_MODE: " + mode);
  options.serialization = *serialization;
  int flags = ::fcntl(static_cast<int>(fd), F_GETFD);
  if (flags < 0)
    return Error::make("ERR_IPC_NO_CHANNEL", "NODE_CHANNEL_FD " + fd_text + " is not open");
  ::fcntl(static_cast<int>(fd), F_SETFD, flags | FD_CLOEXEC);

  auto channel = ChannelOwner::make(loop, options);
  if (!channel) return channel.error();
  if (int rc = uv_pipe_open(ChannelOwner::pipe(**channel), static_cast<int>(fd)); rc < 0)
    return Error::from_uv(rc, "uv_pipe_open");
  (*channel)->set_ref_by_listeners(true);
  ChannelOwner::start(**channel);
  return channel;
}

}  // namespace uvcluster::ipc
