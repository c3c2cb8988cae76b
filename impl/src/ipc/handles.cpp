#include "handles.hpp"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>
#include <utility>

namespace uvcluster::ipc {

const char* handle_type_name(HandleType t) {
  switch (t) {
    case HandleType::server: return "net.Server";
    case HandleType::socket: return "net.Socket";
    case HandleType::native: return "net.Native";
    case HandleType::dgram: return "dgram.Socket";
    case HandleType::dgram_native: return "dgram.Native";
  }
  return "net.Native";
}

namespace detail_handles {

const char* dgram_type_of(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 && ss.ss_family == AF_INET6) return "udp6";
  return "udp4";
}

std::optional<HandleType> parse_handle_type(std::string_view name) {
  if (name == "net.Server") return HandleType::server;
  if (name == "net.Socket") return HandleType::socket;
  if (name == "net.Native") return HandleType::native;
  if (name == "dgram.Socket") return HandleType::dgram;
  if (name == "dgram.Native") return HandleType::dgram_native;
  return std::nullopt;
}

Result<std::unique_ptr<SendStream>> make_send_stream(uv_loop_t* loop, Fd dup) {
  if (!dup) return Error::from_uv(UV_EBADF, "write");
  // uv_pipe_open accepts any descriptor; libuv only needs a stream handle to read the fd from.
  auto out = std::make_unique<SendStream>();
  if (int rc = uv_pipe_init(loop, out->pipe.get(), 0); rc < 0) return Error::from_uv(rc, "write");
  out->pipe.mark_initialized();
  // On failure dup closes with its Fd, and the (fd-less) handle on destruction.
  if (int rc = uv_pipe_open(out->pipe.get(), dup.get()); rc < 0) return Error::from_uv(rc, "write");
  dup.release();  // now owned by the pipe handle
  return out;
}

Result<Fd> take_pending(uv_pipe_t* ipc_pipe, uv_tcp_t* receiver) {
  if (ipc_pipe->queued_fds == nullptr && ipc_pipe->accepted_fd >= 0) return Fd(std::exchange(ipc_pipe->accepted_fd, -1));
  // Whatever its type, the descriptor is accepted into a TCP handle: uv_accept only records it
  // there, whereas uv_pipe_pending_type would probe it (ioctl, fstat, getsockname, getsockopt).
  if (int rc = uv_accept(reinterpret_cast<uv_stream_t*>(ipc_pipe), reinterpret_cast<uv_stream_t*>(receiver)); rc < 0)
    return Error::from_uv(rc, "accept");
  // Take the descriptor out of the handle (libuv received it close-on-exec, MSG_CMSG_CLOEXEC):
  // the handle, never started, is empty again for the next one; no epoll entry, no duplicate.
  Fd fd(receiver->io_watcher.fd);
  receiver->io_watcher.fd = -1;
  return fd;
}

}  // namespace detail_handles
}  // namespace uvcluster::ipc
