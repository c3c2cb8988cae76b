#pragma once
// ipc::Channel: Node's IPC channel (child_process 'ipc' stdio, serialization "json" or "advanced")
// over a libuv IPC pipe (Node's lib/internal/child_process.js: setupChannel, handleConversion).
// Wire format and protocol: docs/protocol.md §1–§2.
//
//   * Framing (json): one JSON text + '\n' per message, UTF-8. Any JSON value is a message.
//   * Framing (advanced): a 4-byte big-endian length + V8 ValueSerializer data; non-JSON values
//     (undefined, BigInt, Date, Map, Buffer, circular references, ...) are {"$v8":...} objects in
//     the Json message (uvcluster/ipc/v8_serializer.hpp). Everything below holds in both modes;
//     the internal messages (NODE_HANDLE, ACK, ...) are the same objects, serialized the same way.
//   * Messages whose `cmd` is a string longer than 5 chars starting with "NODE_" are internal:
//     they go to on_internal_message, never to on_message.
//   * Handles travel as {"cmd":"NODE_HANDLE","type":...,"msg":<user message>[,"key":...]} with the
//     fd attached (SCM_RIGHTS); the receiver answers NODE_HANDLE_ACK (or NODE_HANDLE_NACK when no
//     fd arrived). One handle is in flight per channel; later sends queue behind it, in order
//     (SendOptions::pipelined handles excepted: a hand-off window).
//
// Lifetime: owned by the ChildProcess (parent side: child->channel()) or by the caller (child
// side, from parent_channel()). Events are delivered on the loop, never from inside
// send()/disconnect().
//
// Socket list (Node's SocketListReceive): for each server key we received net.Sockets with, we
// answer {"cmd":"NODE_SOCKET_GET_COUNT","key"} with {"cmd":"NODE_SOCKET_COUNT","key","count"}
// (the sockets whose ReceivedHandle::connection is still held) and
// {"cmd":"NODE_SOCKET_NOTIFY_CLOSE","key"} with {"cmd":"NODE_SOCKET_ALL_CLOSED","key"} once that
// count is 0 (at once if it already is). Unknown keys get no answer, as from Node. These messages
// still reach on_internal_message. (Sending side: we keep no server objects, so we never ask.)
//
// Receiving (as Node): a NODE_HANDLE frame takes the oldest fd received with it; the channel
// answers {"cmd":"NODE_HANDLE_ACK"} at once (before the listeners run), or
// {"cmd":"NODE_HANDLE_NACK"} when no fd came (nothing is delivered then). The user message
// inside goes to on_message (or on_internal_message if it is itself internal) with a
// ReceivedHandle; NODE_HANDLE_ACK/NACK also reach on_internal_message. User messages that arrive
// before any on_message listener are kept and replayed (Node's kPendingMessages).
//
// Sending: when nothing is queued, a handle frame and its fd go out in one sendmsg on the
// channel's socket (no duplicate, no libuv handle); otherwise it waits in the queue as a
// close-on-exec duplicate written by uv_write2. An owned fd is kept until the ACK. Frames written
// while a read is being handled (an ACK and the reply it triggers) leave in one write. On NACK a net.Socket sent without keep_open is re-sent
// up to 3 times (Node's MAX_HANDLE_RETRANSMISSIONS), then given up with error
// ERR_IPC_HANDLE_NOT_RECEIVED (Node: SentHandleNotReceivedWarning); other types just release
// the queue. Deliberate difference, verified against node v20: Node re-sends the already
// wrapped message as a *double-wrapped* net.Native frame (and a Node receiver then ACKs twice);
// we re-send the original frame, which any receiver ACKs once. We do accept Node's
// double-wrapped form and unwrap it (one ACK).
//
// Bad input (Node would throw an uncaught exception; we never crash or leak an fd):
//   not JSON / empty line        → error ERR_IPC_BAD_FRAME, the line is skipped, reading goes on
//   advanced: not V8 data, or a value we do not model (SharedArrayBuffer, WebAssembly, ...)
//                                → error ERR_IPC_BAD_FRAME, the frame is skipped, reading goes on
//   advanced: send() of a message that cannot be written (v8_serializer.hpp)
//                                → ERR_IPC_UNSERIALIZABLE to `done` (or on_error), send() is false
//   nested > max_nesting_depth   → error ERR_IPC_BAD_FRAME, the line is skipped (Node would take
//                                  it; see framing.hpp for the bound's reason)
//   line (advanced: announced length) > max_frame_bytes
//                                → error ERR_IPC_FRAME_TOO_LARGE, then disconnect + close
//   fd with no NODE_HANDLE       → error ERR_IPC_UNEXPECTED_HANDLE, the fd is closed (an fd left
//                                  over when no partial frame is buffered can never be claimed)
//   > 64 fds in one message      → a read takes 64 (as libuv's); the kernel closes the rest
//   NODE_HANDLE without an fd    → NODE_HANDLE_NACK sent, nothing delivered, no error
//   peer closes mid-frame        → error ERR_IPC_TRUNCATED, then disconnect + close
//   invalid UTF-8                → one U+FFFD per maximal invalid subpart (as Node's
//                                  StringDecoder: `E2 82` before a non-continuation byte is one)
//   lone \uD800-\uDFFF escapes   → kept (WTF-8 in the std::string) and sent back as \udxxx, so
//                                  echoing a message returns the same JS string
//   read/write failures          → the libuv error (Error::from_uv, syscall "read"/"write")
//
// Disconnect: disconnect() waits for a pending handle ACK (queued sends go out after it) and for
// every queued write, then closes the pipe and emits `disconnect`, then `close`. EOF from the
// peer does the same. Unlike Node (nodejs/node#19433) the ChildProcess still gets `close` after
// a parent-side disconnect(), because the channel always emits on_close.
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "uvcluster/detail/event.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/fd.hpp"
#include "uvcluster/ipc/framing.hpp"
#include "uvcluster/ipc/serialization.hpp"

namespace uvcluster::ipc {

struct ChannelOwner;  // spawn() and parent_channel(): they open the pipe (impl/src)

using Json = nlohmann::json;

// What a passed handle is, as Node names it in NODE_HANDLE's `type`. A `dgram` frame also carries
// `dgramType` ("udp4"/"udp6", from the socket's family): a Node receiver makes a dgram.Socket of
// that type around the fd; `dgram_native` is the raw UDP handle (what cluster's primary sends).
enum class HandleType {
  server /*net.Server*/,
  socket /*net.Socket*/,
  native /*net.Native*/,
  dgram /*dgram.Socket*/,
  dgram_native /*dgram.Native*/
};
// "net.Server", "net.Socket", "net.Native", "dgram.Socket", "dgram.Native"
const char* handle_type_name(HandleType t);

// A handle to send. The channel owns `fd` (pass Fd::dup(x).value() to keep your own) and closes it
// once the receiver has ACKed (or the channel is gone).
struct OutgoingHandle {
  HandleType type = HandleType::native;
  Fd fd{};
  std::optional<std::string> key{};  // net.Socket accepted by a server: the server's key
  // Instead of `fd`: the caller's own descriptor, which it keeps. Sent as is when the frame can
  // go out at once (no duplicate); duplicated only if the frame has to wait in a queue.
  int borrowed = -1;
};

// A handle received with a message. A listener that wants it moves `fd` out; otherwise the
// channel closes it after the listeners ran.
struct ReceivedHandle {
  HandleType type = HandleType::native;
  Fd fd{};
  std::optional<std::string> key{};
  // Set for a net.Socket that came with a server key: Node's sender counts the socket among its
  // server's connections until every copy of this is released, and its server.close() /
  // getConnections() wait for our answer (the NODE_SOCKET_* socket list, answered as Node's
  // receiver does). Keep it (move it out with `fd`) for as long as you keep the socket open.
  std::shared_ptr<const void> connection{};
};

struct SendOptions {
  // Node's keepOpen: for a net.Socket, the sender keeps its socket open after the ACK. Here the
  // channel always closes its own fd; keep_open=false makes it call `on_acked` so the caller can
  // close the original (Node closes the socket after ACK).
  bool keep_open = false;
  std::function<void()> on_acked{};
  // A hand-off window: this handle does not wait for the ACK of the handles sent before it (nor
  // does anything wait for its own). ACK/NACKs answer handles in the order they were sent. For
  // net.Native handles, which are never re-sent.
  bool pipelined = false;
  // The caller's `done` only acts on failures: a frame written at once schedules no success
  // call (the hand-off sends one per connection). It may still get nullptr after a queued write.
  bool done_on_failure_only = false;
  // Without a `done`: a failure of this send goes to the channel's on_send_failure handler with
  // this tag (0: none, the error event as before), so a hot sender needs no callback per send.
  uint64_t failure_tag = 0;
};

struct ChannelOptions {
  size_t max_frame_bytes = 64 * 1024 * 1024;  // a longer line: error ERR_IPC_FRAME_TOO_LARGE, close
  // Deeper arrays/objects: error ERR_IPC_BAD_FRAME, the line is skipped (why 1000: framing.hpp).
  size_t max_nesting_depth = kMaxNestingDepth;
  // Both ends must agree: fork()/spawn() tell a child through NODE_CHANNEL_SERIALIZATION_MODE,
  // and parent_channel() follows that variable.
  Serialization serialization = Serialization::json;
  // Buffers the channel keeps between messages (json mode: the read buffer, the last frame
  // written) above 4 MiB are given back once no such big message has been read or written for
  // this long (an unref'd timer): a stream of 16 MiB messages re-uses them instead of
  // page-faulting them anew for each, and a single huge message does not pin its memory.
  // Having given such buffers back (or those of a bad or oversized frame, once the channel is
  // gone), the channel calls glibc's malloc_trim(0) once, so the freed pages leave the RSS:
  // at most once per idle period, never per message.
  unsigned big_buffer_idle_ms = 1000;
};

class HandleFrame;

class Channel {
  struct Key {
    explicit Key() = default;
  };

 public:
  Channel(Key, uv_loop_t* loop, ChannelOptions options);  // made by spawn() / parent_channel()
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Sends one message (and a handle). Returns Node's backpressure hint: false when the write
  // queue is over the high-water mark. `done` runs once the message is written (or failed).
  // On a closed/disconnected channel: returns false and `done`/on_error get
  // ERR_IPC_CHANNEL_CLOSED ("Channel closed"). A big message with nothing queued before it
  // starts leaving while it is encoded (json mode; docs/spawn-and-big-ipc.md): part of it may
  // already be written when send() returns; `message` is not used after that.
  bool send(const Json& message, std::optional<OutgoingHandle> handle = std::nullopt,
            SendOptions options = {}, std::function<void(const Error*)> done = {});

  // send() with a handle, for a message already encoded as compact JSON (exactly what send()
  // would encode it to, no newline): the hand-off's fast path, no JSON value built or dumped.
  // Where the frame cannot leave at once (advanced mode, a queue behind an ACK, no fd) the
  // message is parsed and takes send()'s path.
  bool send_encoded(std::string_view message_json, OutgoingHandle handle, SendOptions options = {},
                    std::function<void(const Error*)> done = {});
  // The same without a handle (a worker's answer to a newconn): in json mode with no handle of
  // ours waiting for its ACK, the bytes are written as they are; otherwise parsed and send().
  bool send_encoded(std::string_view message_json, std::function<void(const Error*)> done = {});

  // Closes the channel once queued sends and a pending handle ACK are done; emits `disconnect`
  // then `close`. A second call returns ERR_IPC_DISCONNECTED.
  Status disconnect();
  bool connected() const;
  // Bytes of buffer held between messages (read buffer, spare write buffer, corked replies):
  // up to a few MiB for the channel's life, more only until big_buffer_idle_ms after the last
  // message above 4 MiB.
  size_t buffer_bytes_held() const;

  // Whether the channel keeps the loop alive (Node refs it while there are message listeners).
  void ref();
  void unref();
  // Default rule before any ref()/unref(): the owner side (spawn) is always ref'd, like Node's
  // ChildProcess channel; parent_channel() turns this on, so the child-side channel keeps the
  // loop alive only while on_message/on_disconnect listeners exist (Node's _forkChild).
  // Internal-message listeners do not count (as in Node); call ref() if you need them to.
  void set_ref_by_listeners(bool on);

  void on_message(std::function<void(const Json&, ReceivedHandle*)> fn);
  void on_internal_message(std::function<void(const Json&, ReceivedHandle*)> fn);
  void on_disconnect(std::function<void()> fn);
  // json mode: sees each line before it is parsed (after the ACK fast path); returning true
  // consumes it, no event follows. For a hot reply recognised without building a JSON value
  // (the primary's hand-off answers). One filter per channel.
  void set_line_filter(std::function<bool(std::string_view line)> fn);
  // json mode: sees each NODE_HANDLE frame that match_handle_frame() recognises on its bytes
  // (no key; see framing.hpp), before it is parsed: a hot handle message (a newconn) handled
  // without building a JSON value. The filter either returns false without calling
  // HandleFrame::accept() (the frame then takes the general path, as if there were no filter),
  // or recognises the message's bytes in full as one JSON text, calls accept() and returns true.
  // One filter per channel.
  void set_handle_filter(std::function<bool(HandleFrame& frame)> fn);
  // The failures of sends made with a SendOptions::failure_tag and no `done`, with that tag and
  // the error `done` would have had. One handler per channel.
  void on_send_failure(std::function<void(uint64_t tag, const Error&)> fn);
  // Protocol and I/O errors. Codes: ERR_IPC_BAD_FRAME (a line that is not JSON or empty, or an
  // advanced frame that is not V8 data we model; it is skipped), ERR_IPC_UNSERIALIZABLE (a send
  // without `done` that advanced mode cannot write), ERR_IPC_FRAME_TOO_LARGE (channel closed), ERR_IPC_UNEXPECTED_HANDLE (fd
  // with no NODE_HANDLE; fd closed), ERR_IPC_TRUNCATED (peer closed mid-message), system codes.
  void on_error(std::function<void(const Error&)> fn);
  void on_close(std::function<void()> fn);

  struct Impl;

 private:
  friend struct ChannelOwner;
  Status init();
  uv_pipe_t* pipe();
  void start();
  void destroy();

  std::shared_ptr<Impl> impl_;
};

// A NODE_HANDLE frame offered to a handle filter (Channel::set_handle_filter), valid during the
// call.
class HandleFrame {
 public:
  HandleType type() const { return type_; }
  // The bytes of the frame's `msg`, unchecked (match_handle_frame).
  std::string_view message_json() const { return message_; }
  // Answers the frame as the general path does: takes the oldest fd received and sends
  // NODE_HANDLE_ACK, or, when no fd came, sends NODE_HANDLE_NACK and returns nullptr (nothing is
  // to be delivered then). Move the fd out of the handle to keep it; the channel closes it after
  // the filter otherwise. A second call returns the same.
  ReceivedHandle* accept();

 private:
  friend struct Channel::Impl;
  HandleFrame(Channel::Impl& channel, HandleType type, std::string_view message)
      : channel_(channel), type_(type), message_(message) {}
  Channel::Impl& channel_;
  HandleType type_;
  std::string_view message_;
  bool answered_ = false;
  std::optional<ReceivedHandle> handle_{};
};

// The message on_internal_message gets for a NODE_HANDLE_ACK read in json mode (one object, so a
// listener can recognise the hand-off's ACK by its address, without a lookup).
const Json& handle_ack_message();

// Child side: opens the channel the parent gave us through NODE_CHANNEL_FD, in the mode
// NODE_CHANNEL_SERIALIZATION_MODE names ("json" when unset; options.serialization is ignored),
// and removes both variables from the environment, as Node does. Errors: ERR_IPC_NO_CHANNEL
// when NODE_CHANNEL_FD is missing or not an open fd, or the mode is neither json nor advanced.
Result<std::unique_ptr<Channel>> parent_channel(uv_loop_t* loop, ChannelOptions options = {});

}  // namespace uvcluster::ipc
