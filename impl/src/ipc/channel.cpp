// ipc::Channel: Node's IPC channel (json or advanced serialization) over a libuv IPC pipe (see
// channel.hpp for behaviour).
#include "uvcluster/ipc/channel.hpp"

#include <malloc.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "handles.hpp"
#include "json_fast.hpp"
#include "uvcluster/detail/read_buffer.hpp"
#include "uvcluster/detail/ring.hpp"
#include "uvcluster/detail/ticker.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/ipc/framing.hpp"
#include "uvcluster/ipc/v8_serializer.hpp"

namespace uvcluster::ipc {

namespace {
constexpr size_t kHighWaterMark = 65536 * 2;  // Node: writeQueueSize < 131072
constexpr int kMaxHandleRetransmissions = 3;  // Node's MAX_HANDLE_RETRANSMISSIONS
constexpr size_t kMinRead = 64 * 1024;
constexpr size_t kMaxRead = 16 * 1024 * 1024;  // one read may fill all the free room up to this
// Between json frames a read lands in the loop's shared buffer, which lives as long as the loop:
// whatever part of it a read ever fills stays resident for good. Real traffic between frames
// (hand-offs, their answers, small messages) fills its first page; a read of the first 64 KiB
// of a big or hostile frame made all 16 pages resident (the primary's lasting +64 KB after
// the fault lab's ipc-oversized and ipc-nested). A frame that does not end in this first read
// continues straight in the reader's own buffer, which goes when the frame (or channel) does.
constexpr size_t kReadBetweenFrames = 16 * 1024;
// The ACK as it arrives in json mode (without the newline): recognised without a JSON parse.
constexpr std::string_view kAckLine = "{\"cmd\":\"NODE_HANDLE_ACK\"}";

Error channel_closed() { return Error::make("ERR_IPC_CHANNEL_CLOSED", "Channel closed"); }

const std::string* cmd_of(const Json& m) {
  if (!m.is_object()) return nullptr;
  auto it = m.find("cmd");
  if (it == m.end() || !it->is_string()) return nullptr;
  return &it->get_ref<const std::string&>();
}
}  // namespace

struct Channel::Impl : std::enable_shared_from_this<Channel::Impl> {
  enum class State { idle, open, closing, closed };

  struct Queued {
    Json message;
    std::optional<OutgoingHandle> handle;
    SendOptions options;
    std::function<void(const Error*)> done;
  };
  struct InFlight {
    std::string frame;  // kept for a re-send only (a resendable type); empty otherwise
    HandleType type = HandleType::native;
    Fd fd;  // kept for a re-send (or owned by us until the ACK); empty for a borrowed native fd
    SendOptions options;
    int retransmissions = 0;
  };
  struct Buffered {
    Json message;
    std::optional<ReceivedHandle> handle;
  };
  struct Done {
    std::function<void(const Error*)> fn;
    bool swallow = false;
  };
  // One uv_write: a frame with an fd, or several plain frames coalesced while a write was busy.
  struct WriteReq {
    uv_write_t req{};
    std::string data;
    size_t sent = 0;  // bytes of `data` that left while it was encoded (EarlyWrite)
    Fd fd;  // close-on-exec duplicate to attach (SCM_RIGHTS), if any
    std::unique_ptr<detail_handles::SendStream> send;
    std::vector<Done> dones;
    std::weak_ptr<Impl> impl;
  };


  Impl(uv_loop_t* l, ChannelOptions o)
      : loop(l),
        options(o),
        ticker(l),
        reader(o.max_frame_bytes),
        v8_reader(o.max_frame_bytes),
        ack_frame(encode(Json{{"cmd", "NODE_HANDLE_ACK"}}).value()),
        nack_frame(encode(Json{{"cmd", "NODE_HANDLE_NACK"}}).value()) {}

  // Declared first, so destroyed last. glibc keeps free memory at the heap's top up to its trim
  // threshold (128 KiB, raised to twice the size of a freed multi-megabyte buffer) and never
  // returns free pages inside the heap: a hostile frame's buffers would stay in the process's
  // RSS for good. malloc_trim(0) returns both, once a channel that got a bad or oversized
  // frame has freed all of its memory: once per hostile peer, never on the hot path.
  struct TrimHeapWhenGone {
    bool armed = false;
    ~TrimHeapWhenGone() {
      if (armed) malloc_trim(0);
    }
  } trim_heap_when_gone;
  uv_loop_t* loop;
  ChannelOptions options;
  detail::UvHandle<uv_pipe_t> pipe;
  detail::Ticker ticker;
  // Between frames, reads land in the loop's shared buffer (no per-channel buffer held by an
  // idle worker's channel); while a json frame is incomplete, libuv reads straight into the
  // reader's buffer (a long frame arriving in many reads is neither copied nor re-assembled).
  FrameReader reader;       // json mode
  V8FrameReader v8_reader;  // advanced mode
  std::string ack_frame;
  std::string nack_frame;
  std::shared_ptr<detail::SharedReadBuffer> rbuf = detail::SharedReadBuffer::for_loop(loop);

  State state = State::idle;
  bool connected = false;
  bool reading = false;
  bool listener_refcount = false;  // child side: ref only while message/disconnect listeners exist
  std::optional<bool> explicit_ref;
  bool disconnect_after_ack = false;
  bool disconnect_when_drained = false;
  bool emit_disconnect_on_close = true;
  // The buffer of the last finished write, kept for the next frame: a channel sending 1 MiB
  // messages does not allocate and page-fault a new 1 MiB buffer for each.
  std::string spare_frame;
  static constexpr size_t kSpareFrameMax = FrameReader::kRetainedCapacity;
  // Buffers above 4 MiB (the reader's, spare_frame) are kept only while this runs: started by
  // every message big enough to need one, it gives them back after big_buffer_idle_ms without.
  // Unref'd: it never keeps the loop alive.
  detail::UvHandle<uv_timer_t> big_buffer_timer;
  uv_os_fd_t socket_fd = -1;  // the pipe's, read once: see socket()
  // The pipe's socket, for the syscalls made on it beside libuv (send_direct, write_now,
  // read_queued_handles); -1 before the pipe has one.
  int socket() {
    if (socket_fd < 0 && uv_fileno(pipe.base(), &socket_fd) != 0) return -1;
    return socket_fd;
  }
  bool write_in_flight = false;                 // one uv_write at a time; the rest waits here
  bool corked = false;  // a read is being handled: frames written meanwhile leave together after it
  // While corked, with nothing queued before them, small plain frames gather here (an ACK and the
  // reply it triggers) and leave in one write once the read is handled; the buffer is kept.
  std::string cork_buf;
  std::vector<Done> cork_dones;  // of the corked frames that have a `done`
  // Corked frames without one whose failure is an error event (not swallowed): counted, so a
  // worker's answer (once per hand-off) adds no Done to destroy after its write.
  size_t cork_error_events = 0;
  static constexpr size_t kCorkMax = 64 * 1024;
  std::deque<std::unique_ptr<WriteReq>> outq;   // (plain frames are appended to the last one)
  size_t outq_bytes = 0;

  detail::Ring<InFlight> unacked{4};  // handles sent, oldest first: ACK/NACKs answer them in order
  size_t blocking = 0;           // entries of `unacked` that hold later sends back (not pipelined)
  std::deque<Queued> queue;
  detail::Ring<Fd> received_fds{4};
  static constexpr size_t kMaxQueuedReads = 64;  // per wake-up: other handles get their turn
  static constexpr size_t kMaxFdsPerRead = 64;   // libuv's own limit per message
  // Whether a read after a handle is worth its syscall: on while such reads find something (a
  // window > 1 under load), off after a few that found nothing (at a window of 1, all of them),
  // then tried once every kProbeEvery handles: at a window of 1 that is one failed recvmsg per
  // kProbeEvery hand-offs.
  struct QueuedHandleReads {
    static constexpr unsigned kMissesAllowed = 4;
    static constexpr unsigned kProbeEvery = 32;
    bool on = true;
    unsigned misses = 0;
    unsigned since_probe = 0;
    bool worth_a_read() {
      if (on) return true;
      if (++since_probe < kProbeEvery) return false;
      since_probe = 0;
      return true;
    }
    void record(bool found) {
      if (found) {
        on = true;
        misses = 0;
      } else if (!on || ++misses >= kMissesAllowed) {
        on = false;
        misses = 0;
      }
    }
  } queued_handles;
  // Takes each received fd out of the pipe (take_pending); never started.
  detail::UvHandle<uv_tcp_t> fd_receiver;
  std::deque<Buffered> backlog;
  // Node's SocketListReceive per server key: keyed net.Sockets still held, and how many
  // NODE_SOCKET_NOTIFY_CLOSE requests wait for that count to reach 0.
  struct SocketList {
    size_t connections = 0;
    size_t close_waiters = 0;
  };
  std::map<std::string, SocketList> socket_lists;

  detail::Event<const Json&, ReceivedHandle*> message_ev;
  detail::Event<const Json&, ReceivedHandle*> internal_ev;
  detail::Event<> disconnect_ev;
  detail::Event<const Error&> error_ev;
  detail::Event<> close_ev;
  std::function<bool(std::string_view)> line_filter;
  std::function<bool(HandleFrame&)> handle_filter;
  std::function<void(uint64_t tag, const Error&)> send_failure;  // SendOptions::failure_tag

  // A tagged send's `done`: its failure goes to the channel's send_failure handler. Small enough
  // for std::function's inline storage (no allocation per send); it is only ever called by the
  // channel while the channel lives (deferred calls check that first).
  std::function<void(const Error*)> tagged_done(uint64_t tag) {
    return [self = this, tag](const Error* e) {
      if (e && self->send_failure) self->send_failure(tag, *e);
    };
  }

  // Runs fn on the loop's next turn if the channel still exists.
  void defer(std::function<void(Impl&)> fn) {
    std::weak_ptr<Impl> weak = weak_from_this();
    ticker.defer([weak, fn = std::move(fn)] {
      if (auto self = weak.lock()) fn(*self);
    });
  }

  void emit_error_later(Error e) {
    defer([e = std::move(e)](Impl& self) { self.error_ev.emit(e); });
  }

  void update_ref() {
    if (!pipe.initialized() || state != State::open) return;
    bool want = explicit_ref ? *explicit_ref
                             : (!listener_refcount || !message_ev.empty() || !disconnect_ev.empty());
    if (want) uv_ref(pipe.base());
    else uv_unref(pipe.base());
  }

  // ---- the serialization mode -------------------------------------------------------------

  bool advanced() const { return options.serialization == Serialization::advanced; }

  Result<std::string> encode(const Json& message) const {
    if (advanced()) return encode_v8_frame(message, options.max_nesting_depth);
    return encode_frame(message);
  }
  Result<Json> decode(std::string_view frame) const {
    if (advanced()) return decode_v8_payload(frame, options.max_nesting_depth);
    return parse_frame(frame, options.max_nesting_depth, reader.plain_run());
  }
  // Made once: the readers take it by reference, so a read builds no std::function.
  const std::function<void(std::string_view)> on_frame = [this](std::string_view frame) { on_line(frame); };
  bool feed(size_t n) {
    return advanced() ? v8_reader.feed(rbuf->data(), n, on_frame) : reader.feed(rbuf->data(), n, on_frame);
  }
  bool buffering() const { return advanced() ? v8_reader.buffering() : reader.buffering(); }
  size_t buffered() const { return advanced() ? v8_reader.buffered() : reader.buffered(); }

  // ---- writing ----------------------------------------------------------------------------

  static constexpr size_t kCoalesceMax = 256 * 1024;

  // Queues one frame (with a duplicate of `fd` attached when fd >= 0). Frames go out in order;
  // while a write is in flight, plain frames are coalesced into one buffer (fewer syscalls).
  // On failure `done` (or, unless swallow_errors, the error event) gets the error later.
  int write(std::string frame, int fd, std::function<void(const Error*)> done,
            bool swallow_errors = false, bool done_on_failure_only = false) {
    if (state != State::open) {
      if (done) fail_later(std::move(done), channel_closed());
      return UV_EPIPE;
    }
    if (fd < 0 && cork(frame, false, done, swallow_errors)) {
      keep_spare(frame);
      return 0;
    }
    if (fd >= 0) {
      ssize_t sent = send_direct(frame, fd);
      if (sent == static_cast<ssize_t>(frame.size())) {
        if (done && !done_on_failure_only) defer([done = std::move(done)](Impl&) { done(nullptr); });
        keep_spare(frame);
        return 0;
      }
      if (sent > 0) {  // the fd went with the first byte; the rest follows as plain bytes
        frame.erase(0, static_cast<size_t>(sent));
        fd = -1;
      }
    }
    queue_corked();  // what gathered goes first
    if (fd < 0 && !outq.empty() && !outq.back()->fd && outq.back()->data.size() < kCoalesceMax) {
      outq_bytes += frame.size();
      outq.back()->data += frame;
      outq.back()->dones.push_back(Done{std::move(done), swallow_errors});
      return 0;
    }
    auto w = std::make_unique<WriteReq>();
    w->data = std::move(frame);
    w->dones.push_back(Done{std::move(done), swallow_errors});
    w->impl = weak_from_this();
    if (fd >= 0) {
      auto dup = Fd::dup(fd);
      if (!dup) {
        report_failure(*w, dup.error().errnum);
        return dup.error().errnum;
      }
      w->fd = std::move(*dup);
    }
    if (!write_in_flight && outq.empty() && !corked) return submit(std::move(w));
    outq_bytes += w->data.size();
    outq.push_back(std::move(w));
    return 0;
  }

  // A small plain frame written while a read is handled, with nothing queued or being written:
  // appended to cork_buf (no write request) and written by uncork(). False: take the queue.
  // With `newline`, `bytes` is a message given as its bytes (send_encoded): its frame's newline
  // is appended here, no copy of the frame made first (a worker's answer, once per hand-off).
  bool cork(std::string_view bytes, bool newline, std::function<void(const Error*)>& done, bool swallow_errors) {
    if (!corked || write_in_flight || !outq.empty() || cork_buf.size() + bytes.size() + newline > kCorkMax)
      return false;
    cork_buf.append(bytes);
    if (newline) cork_buf += '\n';
    if (done) cork_dones.push_back(Done{std::move(done), swallow_errors});
    else if (!swallow_errors) ++cork_error_events;
    return true;
  }

  // The internal answers (ACK/NACK): no copy of the frame when it can be corked.
  void write_control(const std::string& frame) {
    std::function<void(const Error*)> none;
    if (state != State::open || !cork(frame, false, none, true)) write(frame, -1, {}, true);
  }

  // cork_buf becomes a queued write (something that cannot be corked follows it). Nothing is
  // queued while cork_buf holds bytes: a frame that cannot join it queues it first.
  void queue_corked() {
    if (cork_buf.empty()) return;
    auto w = std::make_unique<WriteReq>();
    w->data = std::exchange(cork_buf, std::string());
    w->dones = std::exchange(cork_dones, {});
    w->dones.resize(w->dones.size() + std::exchange(cork_error_events, 0));  // Done{}: an error event
    w->impl = weak_from_this();
    outq_bytes += w->data.size();
    outq.push_back(std::move(w));
  }

  // The read is handled: what gathered is written at once when the socket takes it (no write
  // request, so libuv neither re-arms the pipe's epoll entry nor defers a callback), else queued.
  void uncork() {
    corked = false;
    if (!cork_buf.empty() && state == State::open && !write_in_flight) {
      size_t n = write_now(cork_buf, cork_dones);
      if (n == cork_buf.size()) {
        cork_buf.clear();
        cork_dones.clear();
        cork_error_events = 0;
      } else {
        cork_buf.erase(0, n);  // at most kCorkMax bytes
      }
    }
    queue_corked();
    pump();
  }

  // Writes what the socket takes at once (no write request, so libuv neither re-arms the pipe's
  // epoll entry nor defers a callback) and returns how many bytes that was; when it took them
  // all, the `done`s run as after a uv_write. Called with no write of ours in flight: a send on
  // the socket itself (as send_direct) skips uv_try_write's checks and wrappers, once per
  // hand-off. A failure writes nothing here; the queued write that follows reports it.
  size_t write_now(std::string_view data, std::vector<Done>& dones) {
    if (uv_stream_get_write_queue_size(pipe.stream()) != 0) return 0;
    int sock = socket();
    if (sock < 0) return 0;
    ssize_t n;
    do n = ::send(sock, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    size_t taken = n > 0 ? static_cast<size_t>(n) : 0;
    if (taken == data.size()) written_now(dones);
    return taken;
  }

  // Frames written synchronously: their `done`s run on the next turn, as after a uv_write.
  void written_now(std::vector<Done>& dones) {
    if (std::any_of(dones.begin(), dones.end(), [](const Done& d) { return bool(d.fn); })) {
      defer([dones = std::move(dones)](Impl&) {
        for (auto& d : dones)
          if (d.fn) d.fn(nullptr);
      });
    }
    if (disconnect_when_drained) defer([](Impl& self) { self.maybe_finish_disconnect(); });
  }

  // The hand-off's hot path: with nothing queued, the frame and `fd` leave in one sendmsg on the
  // channel's own socket: no duplicate of the fd, no libuv handle made to carry it. Returns the
  // bytes sent (the fd travels with the first), or -1 when the queued path must take the frame
  // (something is queued, EAGAIN, or an error that path then reports as usual).
  ssize_t send_direct(const std::string& frame, int fd) {
    iovec iov{const_cast<char*>(frame.data()), frame.size()};
    return send_direct(&iov, 1, fd);
  }
  ssize_t send_direct(iovec* iov, size_t count, int fd) {
    if (write_in_flight || !outq.empty() || !cork_buf.empty() || uv_stream_get_write_queue_size(pipe.stream()) != 0)
      return -1;
    int sock = socket();
    if (sock < 0) return -1;
    union {
      cmsghdr align;
      char space[CMSG_SPACE(sizeof(int))];
    } control{};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    ssize_t n;
    do n = ::sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    return n;
  }

  void report_failure(WriteReq& w, int rc) {
    for (auto& d : w.dones) {
      if (d.fn) fail_later(std::move(d.fn), Error::from_uv(rc, "write"));
      else if (!d.swallow) emit_error_later(Error::from_uv(rc, "write"));
    }
  }

  int submit(std::unique_ptr<WriteReq> w) {
    uv_buf_t buf = uv_buf_init(w->data.data() + w->sent, static_cast<unsigned>(w->data.size() - w->sent));
    if (!w->fd) {  // no request when the socket takes it all; else the rest is queued
      size_t n = write_now({buf.base, buf.len}, w->dones);
      if (n == buf.len) {
        keep_spare(w->data);
        return 0;
      }
      buf = uv_buf_init(buf.base + n, buf.len - static_cast<unsigned>(n));
    }
    int rc;
    if (w->fd) {
      auto send = detail_handles::make_send_stream(loop, std::move(w->fd));
      if (send) {
        w->send = std::move(*send);
        rc = uv_write2(&w->req, pipe.stream(), &buf, 1, w->send->stream(), on_write);
      } else {
        rc = send.error().errnum;
      }
    } else {
      rc = uv_write(&w->req, pipe.stream(), &buf, 1, on_write);
    }
    if (rc < 0) {
      report_failure(*w, rc);
      return rc;
    }
    w->req.data = w.get();
    write_in_flight = true;
    (void)w.release();  // owned by on_write from now on
    return 0;
  }

  // Nothing waits to be written: a frame may go straight to the socket.
  bool nothing_pending() const {
    return state == State::open && !write_in_flight && outq.empty() && cork_buf.empty() &&
           uv_stream_get_write_queue_size(pipe.stream()) == 0;
  }

  // A big frame starts leaving while it is encoded: at every kEarlyWriteEvery plain bytes of a
  // long string, what the socket takes at once is written: the frame's unsent bytes, then those
  // plain bytes straight from the message (no copy of what the socket took). The peer copies
  // the first part out while the rest is encoded (else the encode and the peer's reads run one
  // after the other). Used only when nothing_pending(), which nothing changes during the encode.
  static constexpr size_t kEarlyWriteEvery = 128 * 1024;
  struct EarlyWrite final : EncodeProgress {
    explicit EarlyWrite(Impl& impl) : EncodeProgress(kEarlyWriteEvery), channel(impl) {}
    size_t encoded(std::string& out, std::string_view plain) override {
      if (failed) return 0;
      size_t unsent = out.size() - sent;
      uv_buf_t bufs[2] = {uv_buf_init(out.data() + sent, static_cast<unsigned>(unsent)),
                          uv_buf_init(const_cast<char*>(plain.data()), static_cast<unsigned>(plain.size()))};
      int n = unsent ? uv_try_write(channel.pipe.stream(), bufs, 2) : uv_try_write(channel.pipe.stream(), bufs + 1, 1);
      if (n < 0) {
        failed = n != UV_EAGAIN;  // the write of the rest reports it
        return 0;
      }
      wrote = wrote || n > 0;
      size_t taken = static_cast<size_t>(n);
      if (taken <= unsent) {
        sent += taken;
        return 0;
      }
      sent = out.size();
      return taken - unsent;
    }
    Impl& channel;
    size_t sent = 0;  // bytes of the encoder's `out` written
    bool wrote = false;
    bool failed = false;
  };

  // The rest of a frame that started leaving while it was encoded (its bytes from `sent` on):
  // nothing was queued before it, so it goes at once.
  int write_rest(std::string frame, size_t sent, std::function<void(const Error*)> done) {
    auto w = std::make_unique<WriteReq>();
    w->data = std::move(frame);
    w->sent = sent;
    w->dones.push_back(Done{std::move(done), false});
    w->impl = weak_from_this();
    return submit(std::move(w));
  }

  void pump() {
    while (!write_in_flight && !outq.empty() && state == State::open) {
      auto w = std::move(outq.front());
      outq.pop_front();
      outq_bytes -= w->data.size();
      submit(std::move(w));
    }
  }

  size_t pending_bytes() const { return uv_stream_get_write_queue_size(pipe.stream()) + outq_bytes + cork_buf.size(); }

  static void on_write(uv_write_t* req, int status) {
    std::unique_ptr<WriteReq> w(static_cast<WriteReq*>(req->data));
    auto self = w->impl.lock();
    if (!self) return;
    self->write_in_flight = false;
    self->pump();  // start the next write before running callbacks
    for (auto& d : w->dones) {
      if (status < 0) {
        Error e = status == UV_ECANCELED ? channel_closed() : Error::from_uv(status, "write");
        if (d.fn) d.fn(&e);
        else if (!d.swallow && status != UV_ECANCELED) self->error_ev.emit(e);
      } else if (d.fn) {
        d.fn(nullptr);
      }
    }
    self->keep_spare(w->data);
    self->maybe_finish_disconnect();
  }

  void keep_spare(std::string& data) {
    if (data.size() > kBigMessage) hold_big_buffers();
    bool allowed = data.capacity() <= kSpareFrameMax || big_buffer_timer.active();
    if (allowed && data.capacity() > spare_frame.capacity()) spare_frame = std::move(data);
  }

  // ---- big buffers ------------------------------------------------------------------------

  // A message this long may have grown a buffer past 4 MiB (they grow by doubling).
  static constexpr size_t kBigMessage = FrameReader::kRetainedCapacity / 2;

  void hold_big_buffers() {
    if (!big_buffer_timer.initialized()) return;
    reader.keep_big_buffer(true);
    uv_timer_start(big_buffer_timer.get(), on_big_buffers_idle, options.big_buffer_idle_ms, 0);
  }

  static void on_big_buffers_idle(uv_timer_t* t) { static_cast<Impl*>(t->data)->release_big_buffers(); }

  // The reader gives its buffer back now, or when the line it holds is done.
  void release_big_buffers() {
    reader.keep_big_buffer(false);
    bool released = reader.release_big_buffer();
    if (spare_frame.capacity() > kSpareFrameMax) {
      spare_frame = std::string();
      released = true;
    }
    // glibc keeps freed memory below its trim threshold (twice the largest freed mmap'ed
    // block, up to 64 MiB) at the heap's top: give it back, once per idle period.
    if (released) malloc_trim(0);
  }

  void fail_later(std::function<void(const Error*)> done, Error e) {
    defer([done = std::move(done), e = std::move(e)](Impl& self) {
      if (done) done(&e);
      else self.error_ev.emit(e);
    });
  }

  static bool resendable(HandleType type, const SendOptions& o) { return type == HandleType::socket && !o.keep_open; }

  // The message is copied only when it has to wait for an ACK; otherwise it is encoded from
  // the caller's object (a 1 MiB string is not duplicated on its way out).
  bool send_now(const Json& message, std::optional<OutgoingHandle> handle, SendOptions options,
                std::function<void(const Error*)> done) {
    const std::string* cmd = cmd_of(message);
    bool is_ack = cmd && (*cmd == "NODE_HANDLE_ACK" || *cmd == "NODE_HANDLE_NACK");
    Queued q{Json(), std::move(handle), std::move(options), std::move(done)};
    if (blocking > 0 && !is_ack) {
      q.message = message;
      if (q.handle && q.handle->borrowed >= 0) {  // the caller's fd: waiting needs our own copy
        auto dup = Fd::dup(std::exchange(q.handle->borrowed, -1));
        if (!dup) {
          if (q.done) fail_later(std::move(q.done), Error::from_uv(dup.error().errnum, "write"));
          return false;
        }
        q.handle->fd = std::move(*dup);
      }
      queue.push_back(std::move(q));
      return queue.size() == 1;
    }
    if (has_fd(q.handle)) {
      auto encoded = advanced() ? encode_v8_handle_frame(handle_type_name(q.handle->type), message,
                                                          q.handle->key ? &*q.handle->key : nullptr,
                                                          this->options.max_nesting_depth)
                                : Result<std::string>(json_handle_frame(q.handle->type, encode_message(message),
                                                                        q.handle->key, raw_fd(*q.handle), {}));
      if (!encoded) {
        fail_later(std::move(q.done), std::move(encoded.error()));
        return false;  // q.handle's fd closes here
      }
      if (!write_handle_frame(std::move(encoded.value()), q)) return false;
    } else {
      if (advanced()) {
        auto encoded = encode(message);
        if (!encoded) {
          fail_later(std::move(q.done), std::move(encoded.error()));
          return false;
        }
        if (write(std::move(encoded.value()), -1, std::move(q.done)) < 0) return false;
      } else {
        std::string frame = std::move(spare_frame);
        EarlyWrite early(*this);
        encode_frame_into(message, frame, nothing_pending() ? &early : nullptr);
        int rc = early.wrote ? write_rest(std::move(frame), early.sent, std::move(q.done))
                                : write(std::move(frame), -1, std::move(q.done));
        if (rc < 0) return false;
      }
    }
    return pending_bytes() < kHighWaterMark;
  }

  // The json-mode hand-off fast path (Channel::send_encoded): `message_json` is already the
  // message's encoding, so no JSON value is built or dumped. Same effects as send_now.
  bool send_encoded_now(std::string_view message_json, Queued& q) {
    // Built in the spare buffer, which a frame sent at once gives back (write): no allocation.
    if (!write_handle_frame(
            json_handle_frame(q.handle->type, message_json, q.handle->key, raw_fd(*q.handle), std::move(spare_frame)), q))
      return false;
    return pending_bytes() < kHighWaterMark;
  }

  // The hand-off's own path (send_encoded of a borrowed net.Native fd with no `done`, nothing
  // queued or waiting for an ACK): the wrapper's head, the message and the wrapper's end leave
  // from three iovecs in one sendmsg (no frame assembled, no callback made) and the handle
  // waits for its ACK in `unacked`. False, with nothing sent: the general path takes it.
  bool send_handle_at_once(std::string_view message_json, const OutgoingHandle& handle, SendOptions& options) {
    if (handle.type != HandleType::native || handle.key || handle.fd.valid() || handle.borrowed < 0) return false;
    static constexpr std::string_view kTail = "}\n";
    std::string_view head = handle_frame_head(handle.type);
    iovec iov[3] = {{const_cast<char*>(head.data()), head.size()},
                    {const_cast<char*>(message_json.data()), message_json.size()},
                    {const_cast<char*>(kTail.data()), kTail.size()}};
    size_t total = head.size() + message_json.size() + kTail.size();
    ssize_t sent = send_direct(iov, 3, handle.borrowed);
    if (sent <= 0) return false;
    if (static_cast<size_t>(sent) < total) {  // the fd went with the first byte; the rest is queued
      std::string rest = std::move(spare_frame);  // the unsent ends of the three pieces, as they are
      rest.clear();
      size_t skip = static_cast<size_t>(sent);
      for (const iovec& piece : iov) {
        size_t taken = std::min(skip, piece.iov_len);
        rest.append(static_cast<const char*>(piece.iov_base) + taken, piece.iov_len - taken);
        skip -= taken;
      }
      std::function<void(const Error*)> done;
      if (options.failure_tag) done = tagged_done(options.failure_tag);
      write(std::move(rest), -1, std::move(done), false, true);
    }
    if (!options.pipelined) ++blocking;  // (a net.Native is never re-sent: no frame kept)
    unacked.push_back(InFlight{std::string(), handle.type, Fd{}, std::move(options), 0});
    return true;
  }

  static bool has_fd(const std::optional<OutgoingHandle>& h) { return h && (h->fd.valid() || h->borrowed >= 0); }
  static int raw_fd(const OutgoingHandle& h) { return h.fd.valid() ? h.fd.get() : h.borrowed; }

  // A message's json encoding without the newline (the wrapper ends the frame).
  static std::string encode_message(const Json& message) {
    std::string m = encode_frame(message);
    m.pop_back();
    return m;
  }

  // Writes a NODE_HANDLE frame with q's fd and keeps it until its ACK (a NACK may re-send it).
  // False when the write failed (q's fd, if owned, closes with q).
  bool write_handle_frame(std::string frame, Queued& q) {
    int raw = raw_fd(*q.handle);
    bool resend = resendable(q.handle->type, q.options);
    std::string kept_frame = resend ? frame : std::string();  // only a NACK's re-send needs it
    if (write(std::move(frame), raw, std::move(q.done), false, q.options.done_on_failure_only) < 0) return false;
    Fd kept = std::move(q.handle->fd);
    if (!kept && resend) kept = Fd::dup(raw).value_or(Fd());  // a NACK re-sends it
    bool pipelined = q.options.pipelined && !resend;
    if (!pipelined) ++blocking;
    unacked.push_back(InFlight{std::move(kept_frame), q.handle->type, std::move(kept), std::move(q.options), 0});
    return true;
  }

  // The NODE_HANDLE wrapper, in Node's key order: cmd, type, msg, then key or dgramType.
  static std::string json_handle_frame(HandleType type, std::string_view message_json,
                                       const std::optional<std::string>& key, int fd, std::string frame) {
    frame.assign(handle_frame_head(type));
    frame.append(message_json);
    if (type == HandleType::dgram) {
      frame += ",\"dgramType\":\"";
      frame += detail_handles::dgram_type_of(fd);
      frame += '"';
    } else if (key) {
      frame += ",\"key\":";
      detail_json::fast_dump(Json(*key), frame);
    }
    frame.append(std::string_view("}\n"));
    return frame;
  }

  // `{"cmd":"NODE_HANDLE","type":"<type>","msg":`, spelled out per type (no strlen, one copy).
  static std::string_view handle_frame_head(HandleType type) {
    switch (type) {
      case HandleType::server: return R"({"cmd":"NODE_HANDLE","type":"net.Server","msg":)";
      case HandleType::socket: return R"({"cmd":"NODE_HANDLE","type":"net.Socket","msg":)";
      case HandleType::native: break;
      case HandleType::dgram: return R"({"cmd":"NODE_HANDLE","type":"dgram.Socket","msg":)";
      case HandleType::dgram_native: return R"({"cmd":"NODE_HANDLE","type":"dgram.Native","msg":)";
    }
    return R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":)";
  }

  void on_handle_reply(bool ack) {
    if (unacked.empty()) return;  // stray ACK/NACK
    InFlight& f = unacked.front();
    bool retransmittable = resendable(f.type, f.options);
    if (!ack && retransmittable && f.retransmissions < kMaxHandleRetransmissions) {
      // Node re-sends the already wrapped message as a double-wrapped net.Native (verified
      // against node v20, see channel.hpp); we re-send the original frame, which any receiver
      // (Node or us) handles like the first attempt and ACKs once.
      ++f.retransmissions;
      if (write(f.frame, f.fd.get(), {}, true) == 0) return;  // still waiting
    }
    if (!ack && retransmittable)
      error_ev.emit(Error::make("ERR_IPC_HANDLE_NOT_RECEIVED",
                                "Handle did not reach the receiving process correctly"));
    if (unacked.empty()) return;  // a listener tore the channel down
    InFlight& done = unacked.front();
    bool was_blocking = !(done.options.pipelined && !retransmittable);
    std::function<void()> on_acked;
    if (!done.options.keep_open) on_acked = std::move(done.options.on_acked);
    unacked.pop_front();  // our copy of the fd, if we kept one, closes here
    if (was_blocking) --blocking;
    if (on_acked) on_acked();
    if (blocking > 0) return;
    if (!queue.empty()) {  // (moving a deque allocates, even an empty one: not per hand-off)
      auto items = std::move(queue);
      queue.clear();
      for (auto& item : items)
        send_now(item.message, std::move(item.handle), std::move(item.options), std::move(item.done));
    }
    if (disconnect_after_ack && unacked.empty()) {
      disconnect_after_ack = false;
      disconnect_when_drained = true;
      maybe_finish_disconnect();
    }
  }

  // ---- reading ----------------------------------------------------------------------------

  static void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* self = static_cast<Impl*>(h->data);
    if (!self->advanced() && self->reader.buffering()) {
      std::span<char> room = self->reader.space(kMinRead);
      *buf = uv_buf_init(room.data(), static_cast<unsigned>(std::min<size_t>(room.size(), kMaxRead)));
    } else {
      *buf = self->rbuf->get();
      if (!self->advanced()) buf->len = std::min<size_t>(buf->len, kReadBetweenFrames);
    }
  }

  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    auto self = static_cast<Impl*>(s->data)->shared_from_this();
    self->handle_read(nread, buf->base == self->rbuf->data());
  }

  void handle_read(ssize_t nread, bool in_shared_buffer) {
    if (nread == 0) return;
    if (nread < 0) {
      if (nread != UV_EOF) error_ev.emit(Error::from_uv(static_cast<int>(nread), "read"));
      else if (buffering())
        error_ev.emit(Error::make("ERR_IPC_TRUNCATED",
                                  "IPC channel closed in the middle of a message (" +
                                      std::to_string(buffered()) + " bytes dropped)"));
      teardown(true);
      return;
    }
    bool handle_came = false;
    while (state == State::open && detail_handles::has_pending(pipe.get())) {
      handle_came = true;
      auto fd = detail_handles::take_pending(pipe.get(), fd_receiver.get());
      if (fd) received_fds.push_back(std::move(*fd));
      else error_ev.emit(std::move(fd).error());
    }
    corked = true;  // an ACK and the reply it triggers leave in one write
    bool ok = consume(static_cast<size_t>(nread), in_shared_buffer);
    if (ok && handle_came && state == State::open && !advanced() && queued_handles.worth_a_read())
      ok = read_queued_handles();
    uncork();
    if (state != State::open) return;
    if (!ok) {
      trim_heap_when_gone.armed = true;
      error_ev.emit(Error::make("ERR_IPC_FRAME_TOO_LARGE",
                                "IPC frame exceeds " + std::to_string(options.max_frame_bytes) +
                                    " bytes"));
      teardown(true);
      return;
    }
    // An fd can only belong to a NODE_HANDLE frame that starts in the read that carried it; with
    // no partial frame left, nothing can claim it.
    if (!buffering()) {
      while (!received_fds.empty() && state == State::open) {
        received_fds.pop_front();
        error_ev.emit(Error::make("ERR_IPC_UNEXPECTED_HANDLE",
                                  "received a file descriptor without a NODE_HANDLE message"));
      }
    }
  }

  bool consume(size_t n, bool in_shared_buffer) {
    return in_shared_buffer ? feed(n) : reader.commit(n, on_frame);
  }

  // A primary with a window > 1 queues several handles (newconns) on the channel, and the kernel
  // gives one per recvmsg (a unix stream read stops after a message carrying fds); libuv reads
  // once per wake-up on a short read. Read on here, before the corked answers leave: the answers
  // to all of them go in one write, after one wake-up. At a window of 1 nothing can be queued
  // behind the read (the primary waits for its answer) and this read would fail: see
  // QueuedHandleReads. EOF and errors are left to libuv's next read (the socket stays readable).
  bool read_queued_handles() {
    if (socket() < 0) return true;
    size_t reads = 0;
    bool ok = true;
    while (ok && state == State::open && reads < kMaxQueuedReads) {
      uv_buf_t buf;
      on_alloc(pipe.base(), 0, &buf);
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerRead)];
      iovec iov{buf.base, buf.len};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ssize_t n;
      do n = ::recvmsg(socket_fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      while (n < 0 && errno == EINTR);
      if (n <= 0) break;
      ++reads;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t k = 0; k < count; ++k) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
          received_fds.push_back(Fd(fd));
        }
      }
      ok = consume(static_cast<size_t>(n), buf.base == rbuf->data());
    }
    queued_handles.record(reads > 0);
    return ok;
  }

  void on_line(std::string_view line) {
    if (state != State::open) return;
    if (!advanced() && line == kAckLine) {  // every hand-off's answer: no parse
      on_handle_reply(true);
      if (state == State::open) internal_ev.emit(handle_ack_message(), nullptr);
      return;
    }
    if (line.size() > kBigMessage && !advanced()) hold_big_buffers();
    if (line_filter && !advanced() && line_filter(line)) return;
    if (handle_filter && !advanced() && filter_handle_frame(line)) return;
    auto parsed = decode(line);
    if (!parsed) {
      trim_heap_when_gone.armed = true;
      error_ev.emit(parsed.error());
      return;
    }
    Json& msg = parsed.value();
    if (!is_internal(msg)) {
      deliver_user(msg, nullptr);
      return;
    }
    const std::string& cmd = *cmd_of(msg);
    if (cmd == "NODE_HANDLE") {
      receive_handle(msg);
      return;
    }
    if (cmd == "NODE_HANDLE_ACK" || cmd == "NODE_HANDLE_NACK") on_handle_reply(cmd == "NODE_HANDLE_ACK");
    if (cmd == "NODE_SOCKET_GET_COUNT" || cmd == "NODE_SOCKET_NOTIFY_CLOSE") answer_socket_list(cmd, msg);
    if (state == State::open) internal_ev.emit(msg, nullptr);
  }

  // ---- socket list ------------------------------------------------------------------------

  // A token that counts one received keyed socket until its last copy is released.
  std::shared_ptr<const void> track_socket(const std::string& key) {
    ++socket_lists[key].connections;
    static const char tag = 0;  // any non-null address: the token is a count, not an object
    std::weak_ptr<Impl> weak = weak_from_this();
    return std::shared_ptr<const void>(&tag, [weak, key](const void*) {
      if (auto self = weak.lock()) self->socket_closed(key);
    });
  }

  void send_all_closed(const std::string& key) {
    if (connected) send_now(Json{{"cmd", "NODE_SOCKET_ALL_CLOSED"}, {"key", key}}, {}, {}, {});
  }

  void socket_closed(const std::string& key) {
    auto it = socket_lists.find(key);
    if (it == socket_lists.end() || it->second.connections == 0) return;
    if (--it->second.connections > 0) return;
    for (size_t waiters = std::exchange(it->second.close_waiters, 0); waiters > 0; --waiters)
      send_all_closed(key);
  }

  void answer_socket_list(const std::string& cmd, const Json& msg) {
    auto k = msg.find("key");
    if (k == msg.end() || !k->is_string()) return;
    const std::string& key = k->get_ref<const std::string&>();
    auto it = socket_lists.find(key);
    if (it == socket_lists.end()) return;  // Node has no list for that key: no answer
    if (cmd == "NODE_SOCKET_GET_COUNT") {
      if (connected)
        send_now(Json{{"cmd", "NODE_SOCKET_COUNT"}, {"key", key}, {"count", it->second.connections}},
                 {}, {}, {});
    } else if (it->second.connections == 0) {
      send_all_closed(key);
    } else {
      ++it->second.close_waiters;
    }
  }

  // A NODE_HANDLE frame's answer: its fd (the oldest received) and an ACK at once, before
  // anything is delivered (Node); or, when no fd arrived, a NACK and nothing to deliver.
  std::optional<Fd> answer_handle_frame() {
    if (received_fds.empty()) {
      write_control(nack_frame);
      return std::nullopt;
    }
    Fd fd = std::move(received_fds.front());
    received_fds.pop_front();
    write_control(ack_frame);
    return fd;
  }

  bool filter_handle_frame(std::string_view line) {
    auto bytes = match_handle_frame(line);
    if (!bytes) return false;
    auto type = detail_handles::parse_handle_type(bytes->type);
    if (!type) return false;  // the general path's rule for an unknown name
    HandleFrame frame(*this, *type, bytes->message);
    bool consumed = handle_filter(frame);
    return consumed || frame.answered_;  // once answered, the frame is gone either way
  }

  void receive_handle(Json& wrapper) {
    auto answered = answer_handle_frame();
    if (!answered) return;
    Fd fd = std::move(*answered);
    // Node's NACK retransmission wraps the wrapper again as net.Native: unwrap to the original.
    Json* inner = &wrapper;
    for (;;) {
      auto it = inner->find("msg");
      if (it == inner->end()) break;
      const std::string* c = cmd_of(*it);
      if (!c || *c != "NODE_HANDLE") break;
      inner = &*it;
    }
    ReceivedHandle h;
    h.fd = std::move(fd);
    if (auto t = inner->find("type"); t != inner->end() && t->is_string())
      h.type = detail_handles::parse_handle_type(t->get_ref<const std::string&>()).value_or(h.type);
    if (auto k = inner->find("key"); k != inner->end() && k->is_string()) {
      h.key = k->get<std::string>();
      if (h.type == HandleType::socket && !h.key->empty()) h.connection = track_socket(*h.key);
    }
    Json msg;
    if (auto m = inner->find("msg"); m != inner->end()) msg = std::move(*m);
    if (is_internal(msg)) internal_ev.emit(msg, &h);
    else deliver_user(msg, &h);
  }

  void deliver_user(const Json& msg, ReceivedHandle* h) {
    if (message_ev.empty()) {
      // Node keeps messages that arrive before any 'message' listener (kPendingMessages).
      Buffered b{msg, std::nullopt};
      if (h) b.handle = std::move(*h);
      backlog.push_back(std::move(b));
      return;
    }
    message_ev.emit(msg, h);
  }

  void replay_backlog() {
    while (!backlog.empty() && !message_ev.empty() && state != State::closed) {
      Buffered b = std::move(backlog.front());
      backlog.pop_front();
      message_ev.emit(b.message, b.handle ? &*b.handle : nullptr);
    }
  }

  // ---- closing ----------------------------------------------------------------------------

  void maybe_finish_disconnect() {
    if (disconnect_when_drained && !write_in_flight && outq.empty() && cork_buf.empty() && state == State::open)
      teardown(true);
  }

  void teardown(bool emit_disconnect) {
    if (state != State::open) return;
    state = State::closing;
    connected = false;
    emit_disconnect_on_close = emit_disconnect;
    received_fds.clear();
    unacked.clear();
    blocking = 0;
    auto items = std::move(queue);
    queue.clear();
    for (auto& q : items)
      if (q.done) fail_later(std::move(q.done), channel_closed());
    queue_corked();
    auto unsent = std::move(outq);
    outq.clear();
    outq_bytes = 0;
    for (auto& w : unsent)
      for (auto& d : w->dones)
        if (d.fn) fail_later(std::move(d.fn), channel_closed());
    auto self = shared_from_this();
    pipe.close([self] {
      self->state = State::closed;
      if (self->emit_disconnect_on_close) self->disconnect_ev.emit();
      self->close_ev.emit();
      self->replay_backlog();  // messages read before the close still reach a late listener
    });
  }
};

Channel::Channel(Key, uv_loop_t* loop, ChannelOptions options)
    : impl_(std::make_shared<Impl>(loop, options)) {}

Channel::~Channel() {
  auto& i = *impl_;
  i.message_ev.clear();
  i.internal_ev.clear();
  i.disconnect_ev.clear();
  i.error_ev.clear();
  i.close_ev.clear();
  i.unacked.clear();
  i.queue.clear();
  i.outq.clear();
  i.received_fds.clear();
  i.backlog.clear();
  i.state = Impl::State::closed;
  i.pipe.close();
  i.fd_receiver.close();
  i.big_buffer_timer.close();
  i.ticker.close();
}

Status Channel::init() {
  if (int rc = uv_pipe_init(impl_->loop, impl_->pipe.get(), 1); rc < 0)
    return Error::from_uv(rc, "pipe");
  impl_->pipe.mark_initialized();
  impl_->pipe->data = impl_.get();
  impl_->fd_receiver.must_init(uv_tcp_init(impl_->loop, impl_->fd_receiver.get()), "uv_tcp_init");
  impl_->big_buffer_timer.must_init(uv_timer_init(impl_->loop, impl_->big_buffer_timer.get()), "uv_timer_init");
  impl_->big_buffer_timer->data = impl_.get();
  uv_unref(impl_->big_buffer_timer.base());
  impl_->state = Impl::State::open;
  impl_->connected = true;
  return Ok{};
}

uv_pipe_t* Channel::pipe() { return impl_->pipe.get(); }

void Channel::start() {
  auto& i = *impl_;
  if (i.state != Impl::State::open || i.reading) return;
  int rc = uv_read_start(i.pipe.stream(), Impl::on_alloc, Impl::on_read);
  if (rc < 0) {
    i.emit_error_later(Error::from_uv(rc, "read"));
    i.defer([](Impl& self) { self.teardown(true); });
    return;
  }
  i.reading = true;
  i.update_ref();
}

void Channel::destroy() {
  auto& i = *impl_;
  if (i.state == Impl::State::open) {
    i.teardown(false);
  } else if (i.state == Impl::State::idle) {
    i.state = Impl::State::closed;
    i.defer([](Impl& self) { self.close_ev.emit(); });
  }
}

bool Channel::send(const Json& message, std::optional<OutgoingHandle> handle, SendOptions options,
                   std::function<void(const Error*)> done) {
  auto& i = *impl_;
  if (!done && options.failure_tag) done = i.tagged_done(options.failure_tag);
  if (i.state != Impl::State::open || !i.connected) {
    i.fail_later(std::move(done), channel_closed());
    return false;  // `handle` (and its fd) is dropped here
  }
  return i.send_now(message, std::move(handle), std::move(options), std::move(done));
}

Status Channel::disconnect() {
  auto& i = *impl_;
  if (i.state != Impl::State::open || !i.connected)
    return Error::make("ERR_IPC_DISCONNECTED", "IPC channel is already disconnected");
  i.connected = false;
  if (!i.unacked.empty()) {
    i.disconnect_after_ack = true;
  } else {
    i.disconnect_when_drained = true;
    i.defer([](Impl& self) { self.maybe_finish_disconnect(); });  // never synchronous
  }
  return Ok{};
}

bool Channel::send_encoded(std::string_view message_json, OutgoingHandle handle, SendOptions options,
                           std::function<void(const Error*)> done) {
  auto& i = *impl_;
  if (!done && i.state == Impl::State::open && i.connected && !i.advanced() && i.blocking == 0 &&
      i.send_handle_at_once(message_json, handle, options))
    return i.pending_bytes() < kHighWaterMark;
  if (!done && options.failure_tag) done = i.tagged_done(options.failure_tag);
  Impl::Queued q{Json(), std::move(handle), std::move(options), std::move(done)};
  if (i.state != Impl::State::open || !i.connected || i.advanced() || i.blocking > 0 || !Impl::has_fd(q.handle)) {
    // The general path (it may have to keep the message as a value in its queue).
    auto parsed = parse_frame(message_json, i.options.max_nesting_depth);
    if (!parsed) {
      i.fail_later(std::move(q.done), std::move(parsed.error()));
      return false;
    }
    return send(parsed.value(), std::move(q.handle), std::move(q.options), std::move(q.done));
  }
  return i.send_encoded_now(message_json, q);
}

bool Channel::send_encoded(std::string_view message_json, std::function<void(const Error*)> done) {
  auto& i = *impl_;
  if (i.state != Impl::State::open || !i.connected || i.advanced() || i.blocking > 0) {
    auto parsed = parse_frame(message_json, i.options.max_nesting_depth);
    if (!parsed) {
      i.fail_later(std::move(done), std::move(parsed.error()));
      return false;
    }
    return send(parsed.value(), std::nullopt, {}, std::move(done));
  }
  if (!i.cork(message_json, true, done, false)) {
    std::string frame = std::move(i.spare_frame);
    frame.assign(message_json);
    frame += '\n';
    if (i.write(std::move(frame), -1, std::move(done)) < 0) return false;
  }
  return i.pending_bytes() < kHighWaterMark;
}

namespace {
const Json kHandleAckMessage = {{"cmd", "NODE_HANDLE_ACK"}};  // (no guard to check per call)
}  // namespace

const Json& handle_ack_message() { return kHandleAckMessage; }

ReceivedHandle* HandleFrame::accept() {
  if (!answered_) {
    answered_ = true;
    if (auto fd = channel_.answer_handle_frame()) handle_ = ReceivedHandle{type_, std::move(*fd), std::nullopt, nullptr};
  }
  return handle_ ? &*handle_ : nullptr;
}

bool Channel::connected() const { return impl_->state == Impl::State::open && impl_->connected; }

size_t Channel::buffer_bytes_held() const {
  auto& i = *impl_;
  return i.reader.bytes_held() + i.spare_frame.capacity() + i.cork_buf.capacity();
}

void Channel::ref() {
  impl_->explicit_ref = true;
  impl_->update_ref();
}
void Channel::unref() {
  impl_->explicit_ref = false;
  impl_->update_ref();
}

void Channel::on_message(std::function<void(const Json&, ReceivedHandle*)> fn) {
  auto& i = *impl_;
  i.message_ev.add(std::move(fn));
  i.update_ref();
  if (!i.backlog.empty()) i.defer([](Impl& self) { self.replay_backlog(); });
}
void Channel::on_internal_message(std::function<void(const Json&, ReceivedHandle*)> fn) {
  impl_->internal_ev.add(std::move(fn));
}
void Channel::set_line_filter(std::function<bool(std::string_view line)> fn) { impl_->line_filter = std::move(fn); }
void Channel::on_send_failure(std::function<void(uint64_t tag, const Error&)> fn) {
  impl_->send_failure = std::move(fn);
}
void Channel::set_handle_filter(std::function<bool(HandleFrame&)> fn) { impl_->handle_filter = std::move(fn); }

void Channel::on_disconnect(std::function<void()> fn) {
  impl_->disconnect_ev.add(std::move(fn));
  impl_->update_ref();
}
void Channel::on_error(std::function<void(const Error&)> fn) { impl_->error_ev.add(std::move(fn)); }
void Channel::on_close(std::function<void()> fn) { impl_->close_ev.add(std::move(fn)); }

void Channel::set_ref_by_listeners(bool on) {
  impl_->listener_refcount = on;
  impl_->update_ref();
}

}  // namespace uvcluster::ipc
