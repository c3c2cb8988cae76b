// STUB until the ipc branch lands: owner-side only (the pipe spawn() needs); send() fails.
#include "uvcluster/ipc/channel.hpp"

#include "uvcluster/detail/uv_handle.hpp"

namespace uvcluster::ipc {

struct Channel::Impl {
  detail::UvHandle<uv_pipe_t> pipe;
  detail::Event<> close;
  uv_loop_t* loop;
};

const char* handle_type_name(HandleType t) {
  switch (t) {
    case HandleType::server: return "net.Server";
    case HandleType::socket: return "net.Socket";
    case HandleType::native: return "net.Native";
  }
  return "net.Native";
}

Channel::Channel(uv_loop_t* loop, ChannelOptions) : impl_(std::make_shared<Impl>()) { impl_->loop = loop; }
Channel::~Channel() { impl_->pipe.close(); }
int Channel::init() {
  int rc = uv_pipe_init(impl_->loop, impl_->pipe.get(), 1);
  if (rc == 0) impl_->pipe.mark_initialized();
  return rc;
}
uv_pipe_t* Channel::pipe() { return impl_->pipe.get(); }
void Channel::start() {}
void Channel::destroy() {
  auto impl = impl_;
  impl_->pipe.close([impl] { impl->close.emit(); });
}
void Channel::on_close(std::function<void()> fn) { impl_->close.add(std::move(fn)); }
bool Channel::send(const Json&, std::optional<OutgoingHandle>, SendOptions, std::function<void(const Error*)>) { return false; }
Status Channel::disconnect() { return Error::make("ERR_IPC_DISCONNECTED", "IPC channel is already disconnected"); }
bool Channel::connected() const { return false; }
void Channel::ref() {}
void Channel::unref() {}
void Channel::on_message(std::function<void(const Json&, ReceivedHandle*)>) {}
void Channel::on_internal_message(std::function<void(const Json&, ReceivedHandle*)>) {}
void Channel::on_disconnect(std::function<void()>) {}
void Channel::on_error(std::function<void(const Error&)>) {}

Result<std::unique_ptr<Channel>> parent_channel(uv_loop_t*, ChannelOptions) {
  return Error::make("ERR_IPC_NO_CHANNEL", "not implemented");
}

}  // namespace uvcluster::ipc
