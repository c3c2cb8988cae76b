// `uvcluster ipc -- CMD [ARGS...]` (a parent with a channel) and `uvcluster ipc-echo` (a child
// that echoes every message back).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "uvcluster/detail/uv_handle.hpp"
#include "uvcluster/fork.hpp"
#include "uvcluster/ipc/channel.hpp"
#include "uvcluster/ipc/framing.hpp"
#include "uvcluster/ipc/v8_serializer.hpp"
#include "uvcluster/signals.hpp"

namespace uvcluster::cli {
namespace {

using ipc::Json;

// One message as one JSON line, written as the json channel writes it (lone surrogates as
// \udxxx); advanced-mode values in their text form ({"$v8":...}, bytes in hex).
void print_message(const Json& m, ipc::Serialization mode) {
  std::string s = ipc::encode_frame(mode == ipc::Serialization::advanced ? ipc::v8_text_form(m) : m);
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

// One stdin line → one message: the line parsed as the channel parses a frame, or (when it is
// not a frame, including an empty line) the line itself as a JSON string.
Json line_to_message(const std::string& line) {
  auto parsed = ipc::parse_frame(line);
  return parsed ? std::move(parsed.value()) : Json(line);
}

struct StdinReader {
  detail::UvHandle<uv_pipe_t> pipe;
  detail::UvHandle<uv_tty_t> tty;
  std::string buf;
  std::vector<char> rbuf = std::vector<char>(65536);
  std::function<void(const std::string&)> on_line;
  std::function<void()> on_end;

  void feed(const char* p, size_t n) {
    buf.append(p, n);
    size_t start = 0;
    for (size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string line = buf.substr(start, nl - start);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      on_line(line);
    }
    buf.erase(0, start);
  }
  void end() {
    if (!buf.empty()) {
      std::string rest = std::move(buf);
      buf.clear();
      on_line(rest);
    }
    on_end();
  }
  uv_stream_t* stream() { return tty.initialized() ? tty.stream() : pipe.stream(); }

  // A regular file (or /dev/null) is read at once; pipes, sockets and ttys through libuv.
  void start(uv_loop_t* loop) {
    struct stat st {};
    uv_handle_type t = uv_guess_handle(0);
    if (fstat(0, &st) == 0 && !S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode) && t != UV_TTY) {
      ssize_t n;
      while ((n = ::read(0, rbuf.data(), rbuf.size())) > 0) feed(rbuf.data(), static_cast<size_t>(n));
      end();
      return;
    }
    int rc;
    if (t == UV_TTY) {
      rc = uv_tty_init(loop, tty.get(), 0, 1);
      if (rc == 0) tty.mark_initialized();
    } else {
      rc = uv_pipe_init(loop, pipe.get(), 0);
      if (rc == 0) {
        pipe.mark_initialized();
        rc = uv_pipe_open(pipe.get(), 0);
      }
    }
    if (rc < 0) {
      end();
      return;
    }
    stream()->data = this;
    uv_read_start(
        stream(),
        [](uv_handle_t* h, size_t, uv_buf_t* b) {
          auto* self = static_cast<StdinReader*>(h->data);
          *b = uv_buf_init(self->rbuf.data(), static_cast<unsigned>(self->rbuf.size()));
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t*) {
          auto* self = static_cast<StdinReader*>(s->data);
          if (n > 0) self->feed(self->rbuf.data(), static_cast<size_t>(n));
          else if (n < 0) {
            uv_read_stop(s);
            self->pipe.close();
            self->tty.close();
            self->end();
          }
        });
  }
};

}  // namespace

void help_ipc() {
  std::fprintf(stdout,
               "usage: uvcluster ipc [--serialization json|advanced] [--replies N] -- CMD [ARGS...]\n"
               "\n"
               "Forks CMD with a Node IPC channel (a .js CMD runs under node, anything else is\n"
               "executed directly and finds the channel through NODE_CHANNEL_FD).\n"
               "  * --serialization: the channel's mode, as Node's fork() option (default json);\n"
               "    advanced frames V8-serialized values: a line's {\"$v8\":KIND,...} objects stand\n"
               "    for values JSON has not (undefined, BigInt, Date, RegExp, Map, Set, Buffer,\n"
               "    typed arrays, references; see docs/protocol.md), printed the same way\n"
               "    (bytes as hex strings);\n"
               "  * every stdin line is sent as one message: the line parsed as JSON, or, when it\n"
               "    is not JSON (an empty line included), the line itself as a JSON string;\n"
               "  * every message received is printed as one JSON line on stdout; a message that\n"
               "    came with a handle prints as {\"message\":...,\"handle\":\"net.Socket\"} and the\n"
               "    handle is closed;\n"
               "  * the child's stdout and stderr go to our stderr;\n"
               "  * at stdin EOF the queued messages are sent, then the channel is disconnected\n"
               "    (with --replies N: only once N messages have been received, so replies to the\n"
               "    last lines are not lost).\n"
               "Exit status: the child's exit code, or 128+signal. Usage errors exit 2.\n");
}

void help_ipc_echo() {
  std::fprintf(stdout,
               "usage: uvcluster ipc-echo\n"
               "\n"
               "The child side of a channel (run it with Node's fork() or `uvcluster ipc`): sends\n"
               "every message back unchanged (a message that came with a handle goes back with\n"
               "that same handle) and exits 0 when the parent disconnects. The channel's mode\n"
               "(json or advanced) is the parent's, from NODE_CHANNEL_SERIALIZATION_MODE. Exits 1\n"
               "when there is no channel (NODE_CHANNEL_FD unset or the mode unknown).\n");
}

int run_ipc(int argc, char** argv) {
  int i = 1;
  if (i < argc && (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h"))) {
    help_ipc();
    return 0;
  }
  long replies = 0;
  ipc::Serialization mode = ipc::Serialization::json;
  for (;;) {
    if (i < argc && !std::strcmp(argv[i], "--replies")) {
      char* end = nullptr;
      replies = i + 1 < argc ? std::strtol(argv[i + 1], &end, 10) : -1;
      if (replies < 0 || !end || *end) {
        std::fprintf(stderr, "uvcluster ipc: --replies needs a count\n");
        help_ipc();
        return 2;
      }
      i += 2;
    } else if (i < argc && !std::strcmp(argv[i], "--serialization")) {
      auto parsed = i + 1 < argc ? ipc::parse_serialization(argv[i + 1]) : std::nullopt;
      if (!parsed) {
        std::fprintf(stderr, "uvcluster ipc: --serialization needs json or advanced\n");
        help_ipc();
        return 2;
      }
      mode = *parsed;
      i += 2;
    } else {
      break;
    }
  }
  if (i < argc && !std::strcmp(argv[i], "--")) ++i;
  else if (i < argc && argv[i][0] == '-') {
    std::fprintf(stderr, "uvcluster ipc: unknown option '%s'\n", argv[i]);
    help_ipc();
    return 2;
  }
  if (i >= argc) {
    std::fprintf(stderr, "uvcluster ipc: missing command\n");
    help_ipc();
    return 2;
  }
  std::string cmd = argv[i++];
  std::vector<std::string> args(argv + i, argv + argc);

  uv_loop_t* loop = uv_default_loop();
  ForkOptions fo;
  fo.stdio = std::vector<Stdio>{Stdio::ignore(), Stdio::from_fd(2), Stdio::from_fd(2), Stdio::ipc()};
  fo.serialization = mode;
  auto forked = fork(loop, cmd, args, std::move(fo));
  if (!forked) {
    std::fprintf(stderr, "uvcluster ipc: %s\n", forked.error().message.c_str());
    return 2;
  }
  std::shared_ptr<ChildProcess> child = forked.value();
  int status = 1;
  bool spawn_failed = false;
  child->on_error([&](const Error& e) {
    std::fprintf(stderr, "uvcluster ipc: %s\n", e.message.c_str());
    spawn_failed = true;
  });
  child->on_close([&](const ExitStatus& st) {
    if (spawn_failed) status = 127;
    else if (st.signal) status = 128 + signal_number(*st.signal).value_or(0);
    else status = st.code.value_or(1);
  });
  ipc::Channel* ch = child->channel();
  long received = 0;
  bool stdin_done = false;
  auto maybe_disconnect = [&] {
    if (stdin_done && received >= replies && ch->connected()) (void)ch->disconnect();
  };
  ch->on_message([&](const Json& m, ipc::ReceivedHandle* h) {
    ++received;
    if (h) {
      print_message(Json{{"message", m}, {"handle", ipc::handle_type_name(h->type)}}, mode);
      h->fd.reset();
    } else {
      print_message(m, mode);
    }
    maybe_disconnect();
  });
  ch->on_error([](const Error& e) {
    if (e.code != "ERR_IPC_CHANNEL_CLOSED")
      std::fprintf(stderr, "uvcluster ipc: channel error %s: %s\n", e.code.c_str(), e.message.c_str());
  });
  StdinReader in;
  in.on_line = [ch](const std::string& line) {
    if (ch->connected()) ch->send(line_to_message(line));
  };
  in.on_end = [&] {
    stdin_done = true;
    maybe_disconnect();
  };
  in.start(loop);
  uv_run(loop, UV_RUN_DEFAULT);
  child.reset();
  uv_run(loop, UV_RUN_DEFAULT);
  return status;
}

int run_ipc_echo(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    help_ipc_echo();
    return 0;
  }
  if (argc > 1) {
    std::fprintf(stderr, "uvcluster ipc-echo: unexpected argument '%s'\n", argv[1]);
    help_ipc_echo();
    return 2;
  }
  uv_loop_t* loop = uv_default_loop();
  auto ch = ipc::parent_channel(loop);
  if (!ch) {
    std::fprintf(stderr, "uvcluster ipc-echo: %s\n", ch.error().message.c_str());
    return 1;
  }
  ipc::Channel* c = ch.value().get();
  c->on_message([c](const Json& m, ipc::ReceivedHandle* h) {
    if (h && h->fd) {
      c->send(m, ipc::OutgoingHandle{h->type, std::move(h->fd), h->key});
    } else {
      c->send(m);
    }
  });
  c->on_error([](const Error& e) {
    if (e.code != "ERR_IPC_CHANNEL_CLOSED")
      std::fprintf(stderr, "uvcluster ipc-echo: %s: %s\n", e.code.c_str(), e.message.c_str());
  });
  uv_run(loop, UV_RUN_DEFAULT);
  ch.value().reset();
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}

}  // namespace uvcluster::cli
