#include "request_server.hpp"

namespace uvcluster::cluster {

namespace {
int init_stream(uv_loop_t* loop, uv_pipe_t* h) { return uv_pipe_init(loop, h, 0); }
int init_stream(uv_loop_t* loop, uv_tcp_t* h) { return uv_tcp_init(loop, h); }
}  // namespace

template <class H>
struct RequestServer<H>::Conn {
  RequestServer* server;
  uint64_t id;
  detail::UvHandle<H> stream;
  detail::UvHandle<uv_timer_t> deadline;
  std::string buffered;
  bool answered = false;  // a request was taken (or refused): later bytes are ignored
  bool replying = false;  // its reply is being written
  char buf[4096];
};

template <class H>
RequestServer<H>::RequestServer(uv_loop_t* loop, RequestLimits limits, RequestHandlers handlers)
    : loop_(loop), limits_(limits), handlers_(std::move(handlers)) {
  if (init_stream(loop_, listener_.get()) == 0) {
    listener_.mark_initialized();
    listener_->data = this;
  }
}

template <class H>
RequestServer<H>::~RequestServer() {
  listener_.close();
  conns_.clear();
}

template <class H>
Status RequestServer<H>::listen() {
  if (!listener_.initialized()) return Error::make("ERR_UV_INIT", "the listening handle could not be initialized");
  if (int rc = uv_listen(listener_.stream(), 64, on_connection); rc != 0) return Error::from_uv(rc, "listen");
  return Ok{};
}

template <class H>
void RequestServer<H>::close() {
  listener_.close();
  for (auto it = conns_.begin(); it != conns_.end();) it = it->second->replying ? std::next(it) : conns_.erase(it);
}

template <class H>
void RequestServer<H>::on_connection(uv_stream_t* server, int status) {
  if (status == 0) static_cast<RequestServer*>(server->data)->accept_one();
}

template <class H>
void RequestServer<H>::accept_one() {
  auto c = std::make_unique<Conn>();
  c->server = this;
  c->id = next_id_++;
  if (init_stream(loop_, c->stream.get()) != 0) return;
  c->stream.mark_initialized();
  if (uv_accept(listener_.stream(), c->stream.stream()) != 0) return;
  c->stream->data = c.get();
  uv_os_fd_t fd = -1;
  uv_fileno(c->stream.base(), &fd);
  Conn& conn = *c;
  uint64_t id = c->id;
  conns_[id] = std::move(c);
  if (conns_.size() > limits_.max_connections) {
    conn.answered = true;
    reply(id, handlers_.busy());
    return;
  }
  if (handlers_.admit)
    if (auto refusal = handlers_.admit(fd)) {
      conn.answered = true;
      reply(id, std::move(*refusal));
      return;
    }
  if (uv_timer_init(loop_, conn.deadline.get()) == 0) {
    conn.deadline.mark_initialized();
    conn.deadline->data = &conn;
    uv_timer_start(conn.deadline.get(), [](uv_timer_t* t) {
      auto& c = *static_cast<Conn*>(t->data);
      c.answered = true;
      c.server->reply(c.id, c.server->handlers_.timed_out());
    }, limits_.timeout_ms, 0);
  } else {
    drop(id);  // without a deadline a silent client would hold the connection forever
    return;
  }
  int rc = uv_read_start(conn.stream.stream(),
      [](uv_handle_t* h, size_t, uv_buf_t* buf) {
        auto& c = *static_cast<Conn*>(h->data);
        *buf = uv_buf_init(c.buf, sizeof c.buf);
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto& c = *static_cast<Conn*>(s->data);
        c.server->on_read(c, n, buf);
      });
  if (rc != 0) drop(id);
}

template <class H>
void RequestServer<H>::on_read(Conn& c, ssize_t n, const uv_buf_t* buf) {
  if (n < 0) {  // EOF or error: nobody is left to answer
    drop(c.id);
    return;
  }
  if (c.answered) return;
  c.buffered.append(buf->base, static_cast<size_t>(n));
  size_t len = handlers_.complete(c.buffered);
  if (len == 0 && c.buffered.size() <= limits_.max_request_bytes) return;
  c.answered = true;
  c.deadline.close();
  if (len == 0 || len > limits_.max_request_bytes) {
    c.buffered.clear();
    reply(c.id, handlers_.too_large());
    return;
  }
  std::string request = c.buffered.substr(0, len);
  c.buffered.clear();
  handlers_.request(c.id, request);  // may reply (and so destroy `c`) at once
}

template <class H>
bool RequestServer<H>::reply(uint64_t conn, std::string bytes) {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return false;
  Conn& c = *it->second;
  if (c.replying) return false;
  c.replying = true;
  c.deadline.close();
  struct Write {
    uv_write_t req;
    std::string data;
    std::weak_ptr<bool> alive;
    RequestServer* server;
    uint64_t conn;
  };
  auto w = std::make_unique<Write>();
  w->data = std::move(bytes);
  w->alive = alive_;
  w->server = this;
  w->conn = conn;
  w->req.data = w.get();
  uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int rc = uv_write(&w->req, c.stream.stream(), &b, 1, [](uv_write_t* req, int) {
    std::unique_ptr<Write> done(static_cast<Write*>(req->data));
    if (done->alive.lock()) done->server->drop(done->conn);
  });
  if (rc != 0) {
    drop(conn);
    return false;
  }
  w.release();  // owned by the write callback
  return true;
}

template <class H>
void RequestServer<H>::drop(uint64_t conn) {
  conns_.erase(conn);  // closes the stream and the deadline
}

template class RequestServer<uv_pipe_t>;
template class RequestServer<uv_tcp_t>;

}  // namespace uvcluster::cluster
