#include "uvcluster/cluster/control_server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ipc/json_fast.hpp"
#include "request_server.hpp"
#include "uvcluster/cluster/metrics.hpp"
#include "uvcluster/cluster/process_usage.hpp"
#include "uvcluster/cluster/supervisor.hpp"
#include "uvcluster/fd.hpp"
#include "uvcluster/ipc/framing.hpp"

namespace uvcluster::cluster {

using Json = nlohmann::json;

namespace {

constexpr int kMaxInstances = 1024;  // as `uvcluster run -i`
constexpr size_t kMaxReplyBytes = 16 << 20;

// nlohmann's parse of a peer's line, refused (discarded) without building anything when it
// nests deeper than the IPC channel allows: nlohmann has no depth limit, and a 16 MiB reply of
// '[' would build 16 million arrays.
Json parse_bounded(std::string_view line) {
  if (ipc::detail_json::nests_deeper_than(line, ipc::kMaxNestingDepth)) return Json(Json::value_t::discarded);
  return Json::parse(line, nullptr, false);
}

Json error_reply(const std::string& code, const std::string& message) {
  return {{"ok", false}, {"error", {{"code", code}, {"message", message}}}};
}

std::string line_of(const Json& j) { return j.dump() + "\n"; }

// mkdir -p with mode 0700 for the directories it creates.
Status make_directories(const std::string& dir) {
  for (size_t slash = dir.find('/', 1);; slash = dir.find('/', slash + 1)) {
    std::string prefix = dir.substr(0, slash);  // the whole path once no '/' is left
    if (::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) return Error::from_uv(-errno, "mkdir", prefix);
    if (slash == std::string::npos) break;
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return Error::from_uv(-errno, "stat", dir);
  if (!S_ISDIR(st.st_mode)) return Error::from_uv(UV_ENOTDIR, "mkdir", dir);
  return Ok{};
}

Result<Fd> connect_unix(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return Error::from_uv(UV_ENAMETOOLONG, "connect", path);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_uv(-errno, "socket");
  int rc;
  do rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  while (rc != 0 && errno == EINTR);
  if (rc != 0) return Error::from_uv(-errno, "connect", path);
  return fd;
}

// Clears the way for a new socket at `path`: nothing there, or a socket nobody listens on.
Status claim(const std::string& path, const std::string& name) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? Status(Ok{}) : Status(Error::from_uv(-errno, "lstat", path));
  if (!S_ISSOCK(st.st_mode)) return Error::make("EEXIST", path + " exists and is not a socket");
  auto live = connect_unix(path);
  if (live.ok() || live.error().code == "EAGAIN")  // EAGAIN: a live listener with a full backlog
    return Error::make("EADDRINUSE", "a cluster named '" + name + "' is already running (" + path + ")");
  if (live.error().code != "ECONNREFUSED") return live.error();
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Error::from_uv(-errno, "unlink", path);
  return Ok{};
}

std::optional<std::string> refuse_stranger(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return line_of(error_reply("forbidden", "cannot identify the peer (SO_PEERCRED)"));
  if (cred.uid != ::geteuid() && cred.uid != 0)
    return line_of(error_reply("forbidden", "uid " + std::to_string(cred.uid) + " may not control this cluster"));
  return std::nullopt;
}

}  // namespace

std::string control_directory() {
  if (const char* home = std::getenv("UVCLUSTER_HOME"); home && *home) return home;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.uvcluster";
}

bool valid_cluster_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name[0] == '.') return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

std::string control_socket_path(const std::string& directory, const std::string& name) {
  return directory + "/" + name + ".sock";
}

Json status_json(Supervisor& sup, const std::string& name, int64_t uptime_ms) {
  auto s = sup.stats();
  Json workers = Json::array();
  for (auto& i : s.instances) {
    Json w = {{"instance", i.instance},
              {"id", i.id ? Json(*i.id) : Json(nullptr)},
              {"pid", i.pid ? Json(*i.pid) : Json(nullptr)},
              {"state", to_string(i.state)},
              {"uptime_ms", i.pid ? Json(i.uptime_ms) : Json(nullptr)},
              {"restarts", i.restarts},
              {"connections", i.connections},
              {"cpu_seconds", nullptr},
              {"rss_bytes", nullptr}};
    if (i.pid)
      if (auto u = process_usage(*i.pid); u.ok()) {
        w["cpu_seconds"] = u->cpu_seconds;
        w["rss_bytes"] = u->rss_bytes;
      }
    workers.push_back(std::move(w));
  }
  return {{"name", name},
          {"pid", ::getpid()},
          {"policy", policy_name(s.policy)},
          {"uptime_ms", uptime_ms},
          {"restarts", s.restarts},
          {"connections", s.connections},
          {"processes", s.live},
          {"reloading", s.reloading},
          {"draining", s.draining},
          {"workers", workers}};
}

// Connections waiting for the end of a reload or of a stop.
struct ControlServer::Waiters {
  struct Reload {
    uint64_t conn;
    int skip;  // reload ends to let pass first: the one running when a queued request came
  };
  std::vector<Reload> reload;
  std::vector<uint64_t> stop;
};

Result<std::shared_ptr<ControlServer>> ControlServer::start(uv_loop_t* loop, std::shared_ptr<Supervisor> sup,
                                                            ControlOptions options) {
  if (!valid_cluster_name(options.name))
    return Error::make("EINVAL", "invalid cluster name '" + options.name + "'");
  auto server = std::make_shared<ControlServer>(Key{}, loop, sup, std::move(options));
  if (auto st = server->bind_socket(); !st.ok()) return st.error();
  server->attach();
  return server;
}

ControlServer::ControlServer(Key, uv_loop_t* loop, std::shared_ptr<Supervisor> sup, ControlOptions options)
    : loop_(loop), sup_(sup), opt_(std::move(options)), waiters_(std::make_unique<Waiters>()) {
  path_ = control_socket_path(opt_.directory, opt_.name);
  started_ms_ = uv_now(loop_);
}

ControlServer::~ControlServer() { close(); }

Status ControlServer::bind_socket() {
  if (auto st = make_directories(opt_.directory); !st.ok()) return st;
  if (auto st = claim(path_, opt_.name); !st.ok()) return st;
  RequestHandlers h;
  h.complete = [](std::string_view b) {
    size_t nl = b.find('\n');
    return nl == std::string_view::npos ? 0 : nl + 1;
  };
  h.admit = refuse_stranger;
  h.too_large = [max = opt_.max_request_bytes] {
    return line_of(error_reply("too-large", "a request is one line of at most " + std::to_string(max) + " bytes"));
  };
  h.timed_out = [] { return line_of(error_reply("timeout", "no complete request in time")); };
  h.busy = [] { return line_of(error_reply("busy", "too many control connections")); };
  std::weak_ptr<ControlServer> self = weak_from_this();
  h.request = [self](uint64_t conn, std::string_view line) {
    if (auto s = self.lock()) s->handle(conn, line);
  };
  server_ = std::make_unique<RequestServer<uv_pipe_t>>(
      loop_, RequestLimits{opt_.max_request_bytes, opt_.request_timeout_ms, opt_.max_clients}, std::move(h));
  if (!server_->initialized()) return Error::make("ERR_UV_INIT", "uv_pipe_init failed");
  // Bound under a private name, made 0600, then linked into place: the socket is never reachable
  // with looser permissions, and link() fails if another cluster took the name meanwhile.
  std::string tmp = opt_.directory + "/." + opt_.name + ".sock." + std::to_string(::getpid());
  ::unlink(tmp.c_str());
  if (int rc = uv_pipe_bind(server_->handle(), tmp.c_str()); rc != 0) return Error::from_uv(rc, "bind", tmp);
  int rc = ::chmod(tmp.c_str(), 0600) == 0 ? 0 : -errno;
  if (rc == 0 && ::link(tmp.c_str(), path_.c_str()) != 0)
    rc = errno == EEXIST ? UV_EADDRINUSE : -errno;
  ::unlink(tmp.c_str());
  if (rc == UV_EADDRINUSE)
    return Error::make("EADDRINUSE", "a cluster named '" + opt_.name + "' is already running (" + path_ + ")");
  if (rc != 0) return Error::from_uv(rc, "link", path_);
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0)
    socket_id_ = std::pair{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  if (auto listening = server_->listen(); !listening.ok()) {
    close();
    return listening.error();
  }
  return Ok{};
}

void ControlServer::attach() {
  auto sup = sup_.lock();
  if (!sup) return;
  std::weak_ptr<ControlServer> self = weak_from_this();
  auto reload_ended = [self](bool ok) {
    auto s = self.lock();
    if (!s) return;
    std::vector<uint64_t> due;
    auto& waiting = s->waiters_->reload;
    for (auto it = waiting.begin(); it != waiting.end();) {
      if (it->skip > 0) {
        --it->skip;
        ++it;
      } else {
        due.push_back(it->conn);
        it = waiting.erase(it);
      }
    }
    for (uint64_t conn : due)
      s->answer(conn, ok ? Json{{"ok", true}} : error_reply("reload-failed", "a new worker died before it was up; "
                                                                              "its instance keeps the old one"));
  };
  sup->on_reload_done([reload_ended] { reload_ended(true); });
  sup->on_reload_failed([reload_ended](int) { reload_ended(false); });
  sup->on_done([self](const SupervisorResult& r) {
    auto s = self.lock();
    if (!s) return;
    for (auto& w : s->waiters_->reload) s->answer(w.conn, error_reply("stopping", "the cluster stopped"));
    for (uint64_t conn : s->waiters_->stop) s->answer(conn, {{"ok", true}, {"exit_code", r.exit_code}});
    s->waiters_->reload.clear();
    s->waiters_->stop.clear();
    s->close();
  });
}

void ControlServer::answer(uint64_t conn, const Json& reply) {
  if (server_) server_->reply(conn, line_of(reply));
}

void ControlServer::handle(uint64_t conn, std::string_view line) {
  Json req = parse_bounded(line);
  if (req.is_discarded() || !req.is_object())
    return answer(conn, error_reply("bad-request", "a request is one JSON object on one line"));
  auto cmd = req.find("cmd");
  if (cmd == req.end() || !cmd->is_string())
    return answer(conn, error_reply("bad-request", "the request has no \"cmd\" string"));
  const std::string& name = cmd->get_ref<const std::string&>();
  if (name != "status" && name != "metrics" && name != "reload" && name != "scale" && name != "stop")
    return answer(conn, error_reply("unknown-command", "unknown cmd '" + name.substr(0, 64) +
                                                           "' (status, metrics, reload, scale, stop)"));
  auto sup = sup_.lock();
  if (!sup) return answer(conn, error_reply("stopping", "the cluster has stopped"));
  if (name == "status") return answer(conn, {{"ok", true}, {"status", status_json(*sup, opt_.name, static_cast<int64_t>(uv_now(loop_) - started_ms_))}});
  if (name == "metrics") return answer(conn, {{"ok", true}, {"text", prometheus_text(*sup)}});
  if (name == "stop") {
    waiters_->stop.push_back(conn);
    sup->drain("stop");
    return;
  }
  if (sup->draining()) return answer(conn, error_reply("stopping", "the cluster is stopping"));
  if (name == "scale") {
    auto n = req.find("instances");
    if (n == req.end() || !n->is_number_integer() || *n < 1 || *n > kMaxInstances)
      return answer(conn, error_reply("bad-argument", "\"instances\" must be an integer in 1.." +
                                                          std::to_string(kMaxInstances)));
    int count = n->get<int>();
    if (!sup->scale(count)) return answer(conn, error_reply("stopping", "the cluster is stopping"));
    return answer(conn, {{"ok", true}, {"instances", count}});
  }
  // reload: a reload running now ends first; ours (queued) ends after it.
  waiters_->reload.push_back({conn, sup->stats().reloading ? 1 : 0});
  if (!sup->reload()) {
    waiters_->reload.pop_back();
    answer(conn, error_reply("stopping", "the cluster is stopping"));
  }
}

void ControlServer::close() {
  if (server_) server_->close();
  if (!socket_id_) return;
  // Remove the socket only if it is still ours (not one a later cluster put there).
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_dev) == socket_id_->first &&
      static_cast<uint64_t>(st.st_ino) == socket_id_->second)
    ::unlink(path_.c_str());
  socket_id_.reset();
}

Result<Json> control_request(const std::string& path, const Json& request, int timeout_ms) {
  auto fd = connect_unix(path);
  if (!fd.ok()) return fd.error();
  std::string out = line_of(request);
  std::optional<Error> write_error;
  for (std::string_view rest = out; !rest.empty();) {
    ssize_t n = ::send(fd->get(), rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      // The server may have answered (a refusal) and closed before reading: read that answer.
      write_error = Error::from_uv(-errno, "write", path);
      break;
    }
    rest.remove_prefix(static_cast<size_t>(n));
  }
  std::string in;
  char buf[65536];
  while (in.find('\n') == std::string::npos) {
    pollfd p{fd->get(), POLLIN, 0};
    int ready = ::poll(&p, 1, timeout_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return Error::from_uv(UV_ETIMEDOUT, "read", path);
    ssize_t n = ::read(fd->get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return write_error ? *write_error : Error::from_uv(-errno, "read", path);
    if (n == 0 || in.size() + static_cast<size_t>(n) > kMaxReplyBytes)
      return write_error ? *write_error : Error::make("EPROTO", "no reply from " + path);
    in.append(buf, static_cast<size_t>(n));
  }
  Json reply = parse_bounded(std::string_view(in).substr(0, in.find('\n')));
  if (reply.is_discarded() || !reply.is_object() || !reply.contains("ok"))
    return Error::make("EPROTO", "not a control reply from " + path);
  return reply;
}

}  // namespace uvcluster::cluster
