#pragma once
// fd <-> libuv stream conversions used by the channel to pass handles (SCM_RIGHTS via libuv).
#include <uv.h>

#include <memory>
#include <optional>
#include <string_view>

#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fd.hpp"
#include "uvcluster/ipc/channel.hpp"

namespace uvcluster::ipc::detail_handles {

// A temporary libuv stream that owns a close-on-exec duplicate of `fd`, to be given to
// uv_write2 as send_handle. Closing it (RAII) closes the duplicate only.
struct SendStream {
  uvcluster::detail::UvHandle<uv_pipe_t> pipe;
  uv_stream_t* stream() const { return pipe.stream(); }
};
// A pipe handle on `fd` for uv_write2 to send; takes ownership of `fd` (a close-on-exec
// duplicate made by the caller).
Result<std::unique_ptr<SendStream>> make_send_stream(uv_loop_t* loop, Fd fd);

// Takes one pending descriptor from `ipc_pipe` (close-on-exec, without probing its type), from
// the pipe's read callback. With none queued behind it (the usual case) it is taken from where
// libuv's read put it, as uv_accept would (libuv 1.44 src/unix/stream.c; the pipe is reading, so
// the POLLIN uv_accept re-arms for a listening socket is on already). Otherwise uv_accept moves
// it into `receiver`, an initialized TCP handle that is never started, and we take it out again,
// so one receiver serves every descriptor of a channel.
Result<Fd> take_pending(uv_pipe_t* ipc_pipe, uv_tcp_t* receiver);
// Whether a descriptor is pending (uv_pipe_pending_count() > 0 for an IPC pipe, without the call).
inline bool has_pending(const uv_pipe_t* ipc_pipe) { return ipc_pipe->accepted_fd >= 0; }

// "net.Server", "net.Socket", "net.Native", "dgram.Socket", "dgram.Native"; nullopt otherwise.
std::optional<HandleType> parse_handle_type(std::string_view name);
// A dgram.Socket frame's `dgramType`: "udp6" for an AF_INET6 socket, else "udp4".
const char* dgram_type_of(int fd);

}  // namespace uvcluster::ipc::detail_handles
