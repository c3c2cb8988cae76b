// `uvcluster exec`: run one command through exec_file/exec (or their sync forms) and print what
// Node's callback (or thrown error) would carry, as one JSON object.
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "uvcluster/exec.hpp"
#include "uvcluster/signals.hpp"
#include "uvcluster/sync.hpp"

namespace uvcluster::cli {
namespace {

using OJson = nlohmann::ordered_json;

struct ExecArgs {
  bool shell = false, sync = false;
  ExecOptions options;
  std::vector<std::string> command;  // FILE ARGS...
};

std::string base64(std::string_view in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
    out += {k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], k[v & 63]};
  }
  if (i + 1 == in.size()) {
    unsigned v = (unsigned char)in[i] << 16;
    out += {k[v >> 18], k[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8;
    out += {k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], '='};
  }
  return out;
}

int usage_error(const std::string& message) {
  std::fprintf(stderr, "uvcluster exec: %s (see uvcluster exec --help)\n", message.c_str());
  return 2;
}

// Not the caller's fault: the event loop could not be set up (e.g. no fd left) or ended without a
// result. 70 is sysexits' EX_SOFTWARE, distinct from bad usage (2) and from success (0).
constexpr int kExitInternal = 70;

int internal_error(const std::string& message) {
  std::fprintf(stderr, "uvcluster exec: internal error: %s\n", message.c_str());
  return kExitInternal;
}

bool parse_count(const char* s, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s, &end, 10);
  if (errno || !*s || *end || v < 0) return false;
  *out = v;
  return true;
}

// Returns an error message, or "" when the arguments are good.
std::string parse(int argc, char** argv, ExecArgs& a) {
  int i = 1;
  auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
  for (; i < argc; ++i) {
    std::string f = argv[i];
    const char* v = nullptr;
    if (f == "--") { ++i; break; }
    if (f == "--shell") a.shell = true;
    else if (f == "--sync") a.sync = true;
    else if (f == "--max-buffer") {
      if (!(v = value())) return "--max-buffer needs a value";
      int64_t n;
      if (!std::strcmp(v, "Infinity")) a.options.max_buffer = kUnlimited;
      else if (parse_count(v, &n)) a.options.max_buffer = static_cast<size_t>(n);
      else return std::string("--max-buffer must be a non-negative integer or Infinity, got '") + v + "'";
    } else if (f == "--timeout") {
      if (!(v = value())) return "--timeout needs a value";
      if (!parse_count(v, &a.options.process.timeout_ms)) return std::string("--timeout must be a non-negative integer, got '") + v + "'";
    } else if (f == "--kill-signal") {
      if (!(v = value())) return "--kill-signal needs a value";
      if (!signal_number(v)) return std::string("unknown signal '") + v + "'";
      a.options.process.kill_signal = v;
    } else if (f == "--encoding") {
      if (!(v = value())) return "--encoding needs a value";
      if (!std::strcmp(v, "utf8")) a.options.encoding = Encoding::utf8;
      else if (!std::strcmp(v, "buffer")) a.options.encoding = Encoding::buffer;
      else return std::string("--encoding must be utf8 or buffer, got '") + v + "'";
    } else if (f == "--cwd") {
      if (!(v = value())) return "--cwd needs a value";
      a.options.process.cwd = v;
    } else if (f == "--env") {
      if (!(v = value())) return "--env needs K=V";
      const char* eq = std::strchr(v, '=');
      if (!eq || eq == v) return std::string("--env needs K=V, got '") + v + "'";
      if (!a.options.process.env) a.options.process.env = Env{};
      (*a.options.process.env)[std::string(v, eq)] = eq + 1;
    } else {
      return "unknown option '" + f + "'";
    }
  }
  for (; i < argc; ++i) a.command.emplace_back(argv[i]);
  if (a.command.empty()) return "missing command after --";
  return "";
}

OJson text(const ExecArgs& a, const std::string& bytes) {
  return a.options.encoding == Encoding::buffer ? OJson(base64(bytes)) : OJson(bytes);
}

OJson optional_code(const std::optional<int>& v) { return v ? OJson(*v) : OJson(nullptr); }
OJson optional_str(const std::optional<std::string>& v) { return v ? OJson(*v) : OJson(nullptr); }

// The async callback's (err, stdout, stderr).
OJson async_record(const ExecArgs& a, const ExecResult& r) {
  OJson out;
  if (!r.error) {
    out["error"] = nullptr;
  } else {
    const ExecError& e = *r.error;
    OJson err;
    if (e.exit) {
      err["code"] = optional_code(e.exit->code);
      err["message"] = e.error.message;
      err["killed"] = e.exit->killed;
      err["signal"] = optional_str(e.exit->signal);
    } else {
      err["code"] = e.error.code;
      err["message"] = e.error.message;
    }
    err["cmd"] = e.cmd;
    out["error"] = err;
  }
  out["stdout"] = text(a, r.stdout_data);
  out["stderr"] = text(a, r.stderr_data);
  return out;
}

// execFileSync/execSync: the thrown error (which carries the whole spawnSync result) or stdout.
OJson sync_record(const ExecArgs& a, const Result<std::string, ExecSyncError>& r) {
  OJson out;
  if (r.ok()) {
    out["error"] = nullptr;
    out["stdout"] = text(a, r.value());
    out["stderr"] = text(a, "");
    return out;
  }
  const ExecSyncError& e = r.error();
  OJson err;
  if (!e.error.code.empty()) err["code"] = e.error.code;
  err["message"] = e.error.message;
  err["signal"] = optional_str(e.result.signal);
  err["status"] = optional_code(e.result.status);
  out["error"] = err;
  out["stdout"] = text(a, e.result.stdout_data);
  out["stderr"] = text(a, e.result.stderr_data);
  return out;
}

}  // namespace

void help_exec() {
  std::fputs(
      "usage: uvcluster exec [--shell] [--max-buffer BYTES] [--timeout MS] [--kill-signal NAME]\n"
      "                      [--encoding utf8|buffer] [--sync] [--cwd DIR] [--env K=V]...\n"
      "                      -- FILE [ARGS...]\n"
      "\n"
      "Runs FILE through exec_file (Node's execFile); --shell joins the words and runs them\n"
      "through exec (/bin/sh -c); --sync uses exec_file_sync/exec_sync. Prints one JSON object:\n"
      "  {\"error\": null | {\"code\", \"message\", \"killed\", \"signal\", \"cmd\"}, \"stdout\", \"stderr\"}\n"
      "with the fields and values Node would give (fields Node leaves undefined are omitted;\n"
      "--sync errors carry Node's \"signal\" and \"status\" instead of \"killed\"/\"cmd\").\n"
      "stdout/stderr are strings for utf8 and base64 for buffer.\n"
      "  --max-buffer BYTES  per stream (async) or summed (sync); default 1048576; Infinity\n"
      "  --timeout MS        kill with --kill-signal (default SIGTERM) after MS\n"
      "  --env K=V           repeatable; when given, these are the child's whole environment\n"
      "Exit status: 0 whenever the command could be run (its failure is in the JSON),\n"
      "2 on bad usage, 70 on an internal failure (e.g. no fd left for the event loop).\n",
      stdout);
}

int run_exec(int argc, char** argv) {
  for (int i = 1; i < argc && std::strcmp(argv[i], "--"); ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      help_exec();
      return 0;
    }
  ExecArgs a;
  if (std::string msg = parse(argc, argv, a); !msg.empty()) return usage_error(msg);

  std::string file = a.command.front();
  std::vector<std::string> args(a.command.begin() + 1, a.command.end());
  std::string line = file;
  for (const auto& w : args) line += " " + w;

  OJson record;
  if (a.sync) {
    SpawnSyncOptions so;
    so.process = a.options.process;
    so.encoding = a.options.encoding;
    // Sync: 0 means unlimited, as in Node.
    so.max_buffer = a.options.max_buffer == kUnlimited ? 0 : a.options.max_buffer;
    // Default stdio, so the captured stderr is also echoed to our stderr, as Node's is.
    auto r = a.shell ? exec_sync(line, so) : exec_file_sync(file, args, so);
    if (!r.ok() && r.error().result.pid == 0 && r.error().error.code.rfind("ERR_", 0) == 0)
      return usage_error(r.error().error.message);
    record = sync_record(a, r);
  } else {
    uv_loop_t loop;
    if (int rc = uv_loop_init(&loop); rc < 0)
      return internal_error(std::string("uv_loop_init: ") + uv_err_name(rc));
    std::optional<ExecResult> result;
    auto cb = [&](ExecResult r) { result = std::move(r); };
    auto started = a.shell ? exec(&loop, line, a.options, cb) : exec_file(&loop, file, args, a.options, cb);
    if (!started) {
      uv_loop_close(&loop);
      return usage_error(started.error().message);
    }
    started = Result<std::shared_ptr<ChildProcess>>(Error{});  // drop our reference
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (!result) return internal_error("the loop ended without a result");
    record = async_record(a, *result);
  }
  std::string outs = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::fwrite(outs.data(), 1, outs.size(), stdout);
  return 0;
}

}  // namespace uvcluster::cli
