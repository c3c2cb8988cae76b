#include "uvcluster/stream.hpp"

namespace uvcluster {

// ---- Readable ---------------------------------------------------------------------------------

Status Readable::init(uv_loop_t* loop) {
  buf_ = detail::SharedReadBuffer::for_loop(loop);
  if (int rc = uv_pipe_init(loop, pipe_.get(), 0); rc < 0) return Error::from_uv(rc, "pipe");
  pipe_.mark_initialized();
  pipe_->data = this;
  return Ok{};
}

Readable::~Readable() { *alive_ = false; }

void Readable::start() {
  if (started_ || closed_ || !pipe_.initialized()) return;
  started_ = true;
  if (!paused_) read();
}

void Readable::read() {
  if (int rc = uv_read_start(pipe_.stream(), on_alloc, on_read); rc < 0) {
    auto alive = alive_;
    error_.emit(Error::from_uv(rc, "read"));
    if (*alive) finish();
  }
}

void Readable::pause() {
  paused_ = true;
  if (started_ && pipe_.initialized()) uv_read_stop(pipe_.stream());
}

void Readable::resume() {
  paused_ = false;
  if (started_ && pipe_.initialized() && !ended_) read();
}

void Readable::destroy() { finish(); }

void Readable::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* self = static_cast<Readable*>(h->data);
  *buf = self->buf_->get();
}

void Readable::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* self = static_cast<Readable*>(s->data);
  auto alive = self->alive_;
  if (nread > 0) {
    self->data_.emit(std::string_view(self->buf_->data(), static_cast<size_t>(nread)));
    return;
  }
  if (nread == UV_EOF) {
    self->ended_ = true;
    uv_read_stop(s);
    self->end_.emit();
    if (*alive) self->finish();
  } else if (nread < 0) {
    self->error_.emit(Error::from_uv(static_cast<int>(nread), "read"));
    if (*alive) self->finish();
  }
}

void Readable::finish() {
  if (!pipe_.initialized()) return;
  uv_read_stop(pipe_.stream());
  pipe_.close([this, alive = alive_] {
    if (!*alive) return;
    closed_ = true;
    close_.emit();
  });
}

// ---- Writable ---------------------------------------------------------------------------------

struct Writable::WriteReq {
  uv_write_t req{};
  std::string data;
  std::function<void(const Error*)> done;
  Writable* self;
  std::shared_ptr<bool> alive;
};

Status Writable::init(uv_loop_t* loop) {
  if (int rc = uv_pipe_init(loop, pipe_.get(), 0); rc < 0) return Error::from_uv(rc, "pipe");
  pipe_.mark_initialized();
  pipe_->data = this;
  return Ok{};
}

Writable::~Writable() { *alive_ = false; }

size_t Writable::writable_length() const {
  return pipe_.initialized() ? uv_stream_get_write_queue_size(pipe_.stream()) : 0;
}

bool Writable::write(std::string data, std::function<void(const Error*)> done) {
  if (ending_ || closed_ || !pipe_.initialized()) {
    auto err = Error::make("ERR_STREAM_WRITE_AFTER_END", "write after end");
    if (done) done(&err);
    return false;
  }
  auto req = std::make_unique<WriteReq>();
  req->data = std::move(data);
  req->done = std::move(done);
  req->self = this;
  req->alive = alive_;
  req->req.data = req.get();
  uv_buf_t buf = uv_buf_init(req->data.data(), static_cast<unsigned>(req->data.size()));
  int rc = uv_write(&req->req, pipe_.stream(), &buf, 1, [](uv_write_t* w, int status) {
    std::unique_ptr<WriteReq> r(static_cast<WriteReq*>(w->data));
    Error err;
    if (status < 0) err = Error::from_uv(status, "write");
    if (r->done) r->done(status < 0 ? &err : nullptr);
    if (!*r->alive) return;
    Writable* self = r->self;
    if (status < 0 && status != UV_ECANCELED) {
      self->error_.emit(err);
    } else if (status == 0 && self->needs_drain_ && self->writable_length() == 0) {
      self->needs_drain_ = false;
      self->drain_.emit();
    }
  });
  if (rc < 0) {
    auto err = Error::from_uv(rc, "write");
    if (req->done) req->done(&err);
    error_.emit(err);
    return false;
  }
  req.release();  // owned by libuv until the write callback
  bool below = writable_length() < kHighWaterMark;
  if (!below) needs_drain_ = true;
  return below;
}

void Writable::end(std::function<void()> on_finish) {
  if (ending_ || closed_ || !pipe_.initialized()) return;
  ending_ = true;
  struct ShutdownReq {
    uv_shutdown_t req{};
    Writable* self;
    std::shared_ptr<bool> alive;
    std::function<void()> on_finish;
  };
  auto req = std::make_unique<ShutdownReq>();
  req->self = this;
  req->alive = alive_;
  req->on_finish = std::move(on_finish);
  req->req.data = req.get();
  int rc = uv_shutdown(&req->req, pipe_.stream(), [](uv_shutdown_t* s, int) {
    std::unique_ptr<ShutdownReq> r(static_cast<ShutdownReq*>(s->data));
    if (r->on_finish) r->on_finish();
    if (*r->alive) r->self->close_now();
  });
  if (rc < 0) {
    close_now();
    return;
  }
  req.release();
}

void Writable::destroy() { close_now(); }

void Writable::close_now() {
  if (!pipe_.initialized()) return;
  pipe_.close([this, alive = alive_] {
    if (!*alive) return;
    closed_ = true;
    close_.emit();
  });
}

}  // namespace uvcluster
