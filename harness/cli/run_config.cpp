#include "run_config.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "uvcluster/sync.hpp"

namespace uvcluster::cli {

namespace {

using Json = nlohmann::json;

// PM2's process-file fields we support, by the key of our own format they become.
const std::map<std::string, std::string>& pm2_fields() {
  static const std::map<std::string, std::string> fields = {
      {"name", "name"},
      {"script", "script"},
      {"args", "args"},
      {"instances", "instances"},
      {"env", "env"},
      {"kill_timeout", "kill_timeout"},
      {"wait_ready", "wait_ready"},
      {"listen_timeout", "listen_timeout"},
      {"min_uptime", "min_uptime"},
      {"max_restarts", "max_restarts"},
      {"max_memory_restart", "max_memory_restart"},
      {"instance_var", "instance_var"},
      {"time", "time"},
      {"out_file", "log"},
      {"error_file", "error_log"},
  };
  return fields;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// PM2 accepts "10s"-style durations where we take milliseconds.
std::optional<Json> pm2_duration(const Json& v) {
  if (!v.is_string()) return v;
  const std::string s = v.get<std::string>();
  size_t digits = 0;
  while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits]))) ++digits;
  if (digits == 0 || digits > 12) return std::nullopt;
  int64_t n = std::stoll(s.substr(0, digits));
  std::string unit = s.substr(digits);
  const std::map<std::string, int64_t> scale = {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
  auto it = scale.find(unit);
  if (it == scale.end()) return std::nullopt;
  return Json(n * it->second);
}

// One app of a PM2 process file into our format; unsupported fields go to `unsupported`.
Result<Json, std::string> from_pm2(const Json& app, std::vector<std::string>& unsupported) {
  Json ours = Json::object();
  for (auto& [key, value] : app.items()) {
    if (key.rfind("env_", 0) == 0) {
      ours[key] = value;
    } else if (key == "exec_mode") {
      std::string mode = value.is_string() ? value.get<std::string>() : "";
      if (mode != "cluster" && mode != "cluster_mode") unsupported.push_back("exec_mode=" + value.dump());
    } else if (key == "autorestart") {
      if (value == false) ours["restart"] = "never";
    } else if (auto it = pm2_fields().find(key); it != pm2_fields().end()) {
      bool duration = key == "kill_timeout" || key == "listen_timeout" || key == "min_uptime";
      auto v = duration ? pm2_duration(value) : std::optional<Json>(value);
      if (!v) return std::string("field \"") + key + "\": not a duration (" + value.dump() + ")";
      ours[it->second] = *v;
    } else {
      unsupported.push_back(key);
    }
  }
  return ours;
}

std::string scalar_text(const Json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// Our format into command-line arguments.
Result<RunConfig, std::string> to_arguments(const Json& conf, const std::string& env_set) {
  RunConfig rc;
  auto add = [&rc](const std::string& key, std::vector<std::string> args) {
    for (auto& a : args) {
      rc.options.push_back(std::move(a));
      rc.option_keys.push_back(key);
    }
  };
  auto add_env = [&](const std::string& key) -> std::optional<std::string> {
    const Json& env = conf.at(key);
    if (!env.is_object()) return "\"" + key + "\" must be an object";
    for (auto& [k, v] : env.items()) {
      if (v.is_object() || v.is_array()) return "\"" + key + "." + k + "\" must be a string, number or boolean";
      add(key, {"--env", k + "=" + scalar_text(v)});
    }
    return std::nullopt;
  };
  for (auto& [key, value] : conf.items()) {
    if (key == "env" || key.rfind("env_", 0) == 0) {
      continue;  // below, in order: env, then the selected set
    } else if (key == "script") {
      if (!value.is_string() || value.get<std::string>().empty()) return std::string("\"script\" must be a path");
      rc.command.insert(rc.command.begin(), value.get<std::string>());
    } else if (key == "args") {
      std::vector<std::string> args;
      if (value.is_string()) {  // PM2 allows one string, split on spaces
        std::istringstream words(value.get<std::string>());
        for (std::string w; words >> w;) args.push_back(w);
      } else if (value.is_array()) {
        for (auto& a : value) {
          if (a.is_object() || a.is_array() || a.is_null()) return std::string("\"args\" must hold strings");
          args.push_back(scalar_text(a));
        }
      } else {
        return std::string("\"args\" must be an array or a string");
      }
      rc.command.insert(rc.command.end(), args.begin(), args.end());
    } else if (key == "instances" && (value == "max" || value == 0 || value == -1)) {
      // PM2: "max"/0 = one per core (our default), -1 = one fewer.
      if (value == -1) add(key, {"--instances", std::to_string(std::max(1u, std::thread::hardware_concurrency() - 1))});
    } else if (value.is_boolean() || value.is_string() || value.is_number()) {
      std::string flag = "--" + key;
      std::replace(flag.begin(), flag.end(), '_', '-');
      if (!value.is_boolean()) add(key, {flag, scalar_text(value)});
      else if (value.get<bool>()) add(key, {flag});
    } else {
      return "\"" + key + "\" must be a string, number or boolean";
    }
  }
  if (conf.contains("env"))
    if (auto bad = add_env("env")) return *bad;
  if (!env_set.empty()) {
    if (!conf.contains("env_" + env_set)) return "no \"env_" + env_set + "\" for --env-set " + env_set;
    if (auto bad = add_env("env_" + env_set)) return *bad;
  }
  return rc;
}

Result<Json, std::string> load(const std::string& path) {
  if (ends_with(path, ".js") || ends_with(path, ".cjs")) {
    // module.exports = {apps: [...]}: node evaluates it, we read the JSON it prints.
    SpawnSyncOptions o;
    o.process.timeout_ms = 20000;
    auto r = spawn_sync("/usr/bin/node", {"-e",
        "const c = require(require('path').resolve(process.argv[1]));"
        "process.stdout.write(JSON.stringify(c === undefined ? null : c))", path}, o);
    if (!r.ok()) return "cannot run /usr/bin/node: " + r.error().message;
    if (r->error) return "cannot run /usr/bin/node: " + r->error->message;
    if (r->status != 0) {
      std::string why = r->stderr_data;
      // node's first lines are the location and source line; the error itself follows.
      size_t at = why.find("Error");
      if (at != std::string::npos) why = why.substr(why.rfind('\n', at) == std::string::npos ? 0 : why.rfind('\n', at) + 1);
      why = why.substr(0, why.find('\n'));
      return "node could not load it: " + (why.empty() ? std::string("exit ") + std::to_string(r->status.value_or(-1)) : why);
    }
    Json j = Json::parse(r->stdout_data, nullptr, false);
    if (j.is_discarded()) return std::string("node printed something that is not JSON");
    return j;
  }
  std::ifstream in(path);
  if (!in) return std::string("cannot read it");
  std::stringstream text;
  text << in.rdbuf();
  Json j = Json::parse(text.str(), nullptr, false);
  if (j.is_discarded()) return std::string("not valid JSON");
  return j;
}

}  // namespace

Result<RunConfig, std::string> read_run_config(const std::string& path, const std::string& env_set) {
  auto fail = [&path](const std::string& why) { return path + ": " + why; };
  auto loaded = load(path);
  if (!loaded.ok()) return fail(loaded.error());
  Json conf = std::move(loaded.value());
  std::vector<std::string> unsupported;
  bool pm2 = conf.is_array() || (conf.is_object() && conf.contains("apps"));
  if (pm2) {
    const Json& apps = conf.is_array() ? conf : conf["apps"];
    if (!apps.is_array() || apps.empty() || !apps[0].is_object()) return fail("\"apps\" must be a list of apps");
    if (apps.size() > 1)
      return fail("defines " + std::to_string(apps.size()) + " apps; uvcluster run runs one (one file per app)");
    auto ours = from_pm2(apps[0], unsupported);
    if (!ours.ok()) return fail(ours.error());
    conf = std::move(ours.value());
  } else if (!conf.is_object()) {
    return fail("expected a JSON object");
  }
  auto rc = to_arguments(conf, env_set);
  if (!rc.ok()) return fail(rc.error());
  // As PM2 does, a relative script is found beside the file (the shell's directory may differ).
  if (conf.contains("script") && !rc->command.empty() && rc->command[0][0] != '/') {
    auto beside = std::filesystem::path(path).parent_path() / rc->command[0];
    if (std::filesystem::exists(beside)) rc->command[0] = beside.string();
  }
  rc->unsupported = std::move(unsupported);
  return rc;
}

}  // namespace uvcluster::cli
