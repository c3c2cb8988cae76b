#pragma once
// One request per connection, one reply, then close: what the control socket (a unix socket,
// uv_pipe_t) and the metrics endpoint (TCP, uv_tcp_t) have in common. Every resource a client
// can make us hold is bounded: the request's size, the time to send it, the connections at once.
// Loop thread only. Destroying the server closes the listener and every connection at once.
#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/error.hpp"

namespace uvcluster::cluster {

struct RequestLimits {
  size_t max_request_bytes = 4096;
  uint64_t timeout_ms = 10000;  // to send a whole request
  size_t max_connections = 16;
};

struct RequestHandlers {
  // Length of the first complete request at the start of `buffered`; 0 while incomplete.
  std::function<size_t(std::string_view buffered)> complete;
  // nullopt admits the peer (the accepted socket's fd); otherwise the reply that refuses it.
  std::function<std::optional<std::string>(int fd)> admit;
  // A whole request. Answer now or later with reply(conn, ...).
  std::function<void(uint64_t conn, std::string_view request)> request;
  // Replies for a request over the size limit, one not sent in time, and a server at its
  // connection limit.
  std::function<std::string()> too_large, timed_out, busy;
};

template <class H>  // uv_pipe_t | uv_tcp_t
class RequestServer {
 public:
  RequestServer(uv_loop_t* loop, RequestLimits limits, RequestHandlers handlers);
  RequestServer(const RequestServer&) = delete;
  RequestServer& operator=(const RequestServer&) = delete;
  ~RequestServer();

  // The listening handle, initialized by the constructor; the owner binds it, then listen().
  H* handle() { return listener_.get(); }
  bool initialized() const { return listener_.initialized(); }
  Status listen();
  // Writes `bytes`, then closes the connection. False if that connection is gone or answered.
  bool reply(uint64_t conn, std::string bytes);
  // Stops listening and closes the connections, but lets replies being written finish.
  void close();

 private:
  struct Conn;
  static void on_connection(uv_stream_t* server, int status);
  void accept_one();
  void on_read(Conn& c, ssize_t n, const uv_buf_t* buf);
  void drop(uint64_t conn);

  uv_loop_t* loop_;
  RequestLimits limits_;
  RequestHandlers handlers_;
  detail::UvHandle<H> listener_;
  std::map<uint64_t, std::unique_ptr<Conn>> conns_;
  uint64_t next_id_ = 1;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // expires with us: for writes still in libuv
};

extern template class RequestServer<uv_pipe_t>;
extern template class RequestServer<uv_tcp_t>;

}  // namespace uvcluster::cluster
