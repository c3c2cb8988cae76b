#pragma once
// Byte streams over libuv pipes: the parent's ends of a child's stdio.
#include <uv.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "uvcluster/detail/event.hpp"
#include "uvcluster/detail/read_buffer.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/error.hpp"

namespace uvcluster {

namespace detail { struct StreamOwner; }  // the process that owns the pipes (impl/src)

// Reads until EOF. Reading starts once the child has spawned; data with no listener is dropped.
// Events: data(bytes), end() at EOF, error(Error), close() once the pipe is closed (after end,
// error or destroy()).
class Readable {
  struct Key {
    explicit Key() = default;
  };

 public:
  explicit Readable(Key) {}  // made by the ChildProcess that owns it
  Readable(const Readable&) = delete;
  Readable& operator=(const Readable&) = delete;
  ~Readable();

  void on_data(std::function<void(std::string_view)> fn) { data_.add(std::move(fn)); }
  void on_end(std::function<void()> fn) { end_.add(std::move(fn)); }
  void on_error(std::function<void(const Error&)> fn) { error_.add(std::move(fn)); }
  void on_close(std::function<void()> fn) { close_.add(std::move(fn)); }

  void pause();   // stop reading (the writer blocks once the pipe buffer fills)
  void resume();  // read again
  void destroy(); // stop reading and close now; emits close, not end
  bool closed() const { return closed_; }
  bool ended() const { return ended_; }

 private:
  friend struct detail::StreamOwner;
  Status init(uv_loop_t* loop);
  void start();
  void read();  // uv_read_start; a failure is an error event, then close
  static void on_alloc(uv_handle_t*, size_t, uv_buf_t*);
  static void on_read(uv_stream_t*, ssize_t, const uv_buf_t*);
  void finish();

  detail::UvHandle<uv_pipe_t> pipe_;
  detail::Event<std::string_view> data_;
  detail::Event<> end_;
  detail::Event<const Error&> error_;
  detail::Event<> close_;
  std::shared_ptr<detail::SharedReadBuffer> buf_;  // the loop's (read_buffer.hpp)
  bool started_ = false, paused_ = false, ended_ = false, closed_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Writes queued in order. write() returns Node's backpressure hint: false once more than
// `high_water_mark` bytes are queued in libuv; `drain` fires when the queue empties again.
class Writable {
  struct Key {
    explicit Key() = default;
  };

 public:
  static constexpr size_t kHighWaterMark = 16 * 1024;
  explicit Writable(Key) {}  // made by the ChildProcess that owns it
  Writable(const Writable&) = delete;
  Writable& operator=(const Writable&) = delete;
  ~Writable();

  bool write(std::string data, std::function<void(const Error*)> done = {});
  void end(std::function<void()> on_finish = {});  // flush, then shut down and close
  void destroy();
  size_t writable_length() const;
  bool closed() const { return closed_; }

  void on_drain(std::function<void()> fn) { drain_.add(std::move(fn)); }
  void on_error(std::function<void(const Error&)> fn) { error_.add(std::move(fn)); }
  void on_close(std::function<void()> fn) { close_.add(std::move(fn)); }

 private:
  friend struct detail::StreamOwner;
  Status init(uv_loop_t* loop);
  struct WriteReq;
  void close_now();
  detail::UvHandle<uv_pipe_t> pipe_;
  detail::Event<> drain_;
  detail::Event<const Error&> error_;
  detail::Event<> close_;
  bool ending_ = false, closed_ = false, needs_drain_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace uvcluster
