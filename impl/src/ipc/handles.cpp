#include "handles.hpp"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>

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

bool parse_handle_type(const std::string& name, HandleType* out) {
  if (name == "net.Server") *out = HandleType::server;
  else if (name == "net.Socket") *out = HandleType::socket;
  else if (name == "net.Native") *out = HandleType::native;
  else if (name == "dgram.Socket") *out = HandleType::dgram;
  else if (name == "dgram.Native") *out = HandleType::dgram_native;
  else return false;
  return true;
}

int make_send_stream(uv_loop_t* loop, Fd dup, SendStream& out) {
  if (!dup) return UV_EBADF;
  // uv_pipe_open accepts any descriptor; libuv only needs a stream handle to read the fd from.
  int rc = uv_pipe_init(loop, out.pipe.get(), 0);
  if (rc < 0) return rc;
  out.pipe.mark_initialized();
  rc = uv_pipe_open(out.pipe.get(), dup.get());
  if (rc < 0) return rc;  // dup closed by Fd; the (fd-less) handle closes on destruction
  dup.release();          // now owned by the pipe handle
  return 0;
}

Fd take_pending(uv_loop_t* loop, uv_pipe_t* ipc_pipe, int* err) {
  *err = 0;
  // Whatever its type, the descriptor is accepted into a TCP handle: uv_accept only records it
  // there, whereas uv_pipe_pending_type would probe it (ioctl, fstat, getsockname, getsockopt).
  uvcluster::detail::UvHandle<uv_tcp_t> tmp;
  if ((*err = uv_tcp_init(loop, tmp.get())) < 0) return Fd();
  tmp.mark_initialized();
  if ((*err = uv_accept(reinterpret_cast<uv_stream_t*>(ipc_pipe), tmp.stream())) < 0) return Fd();
  // Take the descriptor out of the handle (libuv received it close-on-exec, MSG_CMSG_CLOEXEC):
  // closing the handle then neither closes it nor asks epoll to forget an fd it never watched,
  // and no duplicate is needed.
  Fd fd(tmp->io_watcher.fd);
  tmp->io_watcher.fd = -1;
  return fd;
}

}  // namespace detail_handles
}  // namespace uvcluster::ipc
