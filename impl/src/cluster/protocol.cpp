#include "uvcluster/cluster/protocol.hpp"

#include <uv.h>

#include <cmath>
#include <vector>

namespace uvcluster::cluster {

bool is_cluster_message(const Json& m) {
  if (!m.is_object()) return false;
  auto it = m.find("cmd");
  return it != m.end() && it->is_string() && it->get_ref<const std::string&>() == kClusterCmd;
}

const Json& unwrap_handle_message(const Json& m) {
  if (m.is_object()) {
    auto cmd = m.find("cmd");
    auto inner = m.find("msg");
    if (cmd != m.end() && cmd->is_string() && *cmd == "NODE_HANDLE" && inner != m.end())
      return *inner;
  }
  return m;
}

std::string js_string(const Json* v) {
  if (!v) return "undefined";
  if (v->is_null()) return "null";
  if (v->is_string()) return v->get<std::string>();
  if (v->is_boolean()) return v->get<bool>() ? "true" : "false";
  if (v->is_number_integer()) return std::to_string(v->get<int64_t>());
  if (v->is_number_unsigned()) return std::to_string(v->get<uint64_t>());
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15)
      return std::to_string(static_cast<int64_t>(d));
    return v->dump();
  }
  // Objects/arrays never appear in a valid query; any stable text keeps keys distinct.
  return v->dump();
}

std::string server_key(const Json& q) {
  auto field = [&](const char* name) -> const Json* {
    auto it = q.find(name);
    return it == q.end() ? nullptr : &*it;
  };
  return js_string(field("address")) + ":" + js_string(field("port")) + ":" +
         js_string(field("addressType")) + ":" + js_string(field("fd")) + ":" +
         js_string(field("index"));
}

std::string errno_name(int negative_errno) {
  if (negative_errno == 0) return "";
  return uv_err_name(negative_errno);
}

Json Messenger::wrap(Json payload, Reply cb, int owner) {
  Json m = Json::object();
  m["cmd"] = kClusterCmd;
  for (auto& [k, v] : payload.items()) m[k] = v;
  int64_t seq = seq_++;
  m["seq"] = seq;
  if (cb) callbacks_[seq] = Pending{owner, std::move(cb)};
  return m;
}

bool Messenger::take_reply(const Json& msg, ipc::ReceivedHandle* handle, int owner) {
  auto it = msg.find("ack");
  if (it == msg.end() || !it->is_number_integer()) return false;
  auto found = callbacks_.find(it->get<int64_t>());
  if (found == callbacks_.end() || found->second.owner != owner) return false;
  Reply cb = std::move(found->second.cb);
  callbacks_.erase(found);
  cb(msg, handle);
  return true;
}

void Messenger::drop(int64_t seq, int owner) {
  if (auto it = callbacks_.find(seq); it != callbacks_.end() && it->second.owner == owner) callbacks_.erase(it);
}

void Messenger::drop_owner(int owner) {
  std::erase_if(callbacks_, [owner](const auto& kv) { return kv.second.owner == owner; });
}

}  // namespace uvcluster::cluster
