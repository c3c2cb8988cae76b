#include "uvcluster/cluster/protocol.hpp"

#include <uv.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <vector>

#include "uvcluster/ipc/framing.hpp"

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
  Pending pending = std::move(found->second);
  callbacks_.erase(found);
  if (pending.cb) pending.cb(msg, handle);
  return true;
}

NewconnMessage::NewconnMessage(const std::string& key) {
  // wrap()'s object has sorted keys: act, cmd, key, seq.
  bytes_ = "{\"act\":\"newconn\",\"cmd\":\"";
  bytes_ += kClusterCmd;
  bytes_ += "\",\"key\":";
  std::string k = ipc::encode_frame(Json(key));
  k.pop_back();  // its newline
  bytes_ += k;
  bytes_ += ",\"seq\":";
  head_size_ = bytes_.size();
  bytes_.resize(head_size_ + kSeqRoom);  // the digits are written in place, no resize per seq
}

std::string NewconnMessage::with_seq(int64_t seq) const {
  NewconnMessage copy = *this;
  return std::string(copy.encode(seq));
}

std::string_view NewconnMessage::encode(int64_t seq) {
  char* digits = bytes_.data() + head_size_;
  char* end = std::to_chars(digits, digits + kSeqRoom - 1, seq).ptr;
  *end++ = '}';
  return std::string_view(bytes_.data(), static_cast<size_t>(end - bytes_.data()));
}

namespace {
// A cursor over one line that matches the answer templates exactly.
struct Scan {
  std::string_view rest;
  bool lit(std::string_view s) {
    if (!rest.starts_with(s)) return false;
    rest.remove_prefix(s.size());
    return true;
  }
  bool boolean(bool& out) {
    if (lit("true")) return out = true, true;
    if (lit("false")) return out = false, true;
    return false;
  }
  // A JSON integer (no leading zeros) of at most 15 digits: exact in a double, as Node sent it.
  bool integer(int64_t& out) {
    const char* p = rest.data();
    const char* end = p + rest.size();
    bool negative = p < end && *p == '-';
    const char* first = p + negative;
    const char* stop = first + std::min<size_t>(static_cast<size_t>(end - first), 16);
    int64_t v = 0;
    for (p = first; p < stop; ++p) {
      unsigned digit = static_cast<unsigned char>(*p) - unsigned{'0'};
      if (digit > 9) break;
      v = v * 10 + digit;
    }
    size_t n = static_cast<size_t>(p - first);
    if (n == 0 || n > 15 || (n > 1 && *first == '0')) return false;
    rest = std::string_view(p, static_cast<size_t>(end - p));
    out = negative ? -v : v;
    return true;
  }
};
}  // namespace

std::optional<NewconnAnswer> parse_newconn_answer(std::string_view line) {
  Scan s{line};
  NewconnAnswer a;
  int64_t seq = 0;
  bool ok = s.lit("{\"accepted\":")
                ? s.boolean(a.accepted) && s.lit(",\"ack\":") && s.integer(a.ack) &&
                      s.lit(",\"cmd\":\"NODE_CLUSTER\",\"seq\":")
                : s.lit("{\"cmd\":\"NODE_CLUSTER\",\"ack\":") && s.integer(a.ack) && s.lit(",\"accepted\":") &&
                      s.boolean(a.accepted) && s.lit(",\"seq\":");
  if (!ok || !s.integer(seq) || !s.lit("}") || !s.rest.empty()) return std::nullopt;
  return a;
}

std::optional<NewconnAnswer> newconn_answer_of(const Json& msg) {
  auto ack = msg.find("ack");
  if (ack == msg.end() || !ack->is_number_integer()) return std::nullopt;
  auto accepted = msg.find("accepted");
  return NewconnAnswer{ack->get<int64_t>(), accepted != msg.end() && accepted->is_boolean() && accepted->get<bool>()};
}

NewconnMatcher::NewconnMatcher(const std::string& key) {
  std::string key_json = ipc::encode_frame(Json(key));
  key_json.pop_back();  // its newline
  ours_ = R"({"act":"newconn","cmd":"NODE_CLUSTER","key":)" + key_json + R"(,"seq":)";
  nodes_ = R"({"cmd":"NODE_CLUSTER","act":"newconn","key":)" + key_json + R"(,"seq":)";
}

std::optional<std::string_view> NewconnMatcher::match(std::string_view message) const {
  std::string_view seq;
  if (message.starts_with(ours_)) seq = message.substr(ours_.size());
  else if (message.starts_with(nodes_)) seq = message.substr(nodes_.size());
  else return std::nullopt;
  // A JSON integer of 1 to 15 digits (exact in a double, as Node sent it), then the brace.
  if (seq.size() < 2 || seq.size() > 16 || seq.back() != '}') return std::nullopt;
  seq.remove_suffix(1);
  if (seq.size() > 1 && seq[0] == '0') return std::nullopt;
  for (char c : seq)
    if (c < '0' || c > '9') return std::nullopt;
  return seq;
}

std::string_view encode_newconn_answer(std::span<char, kNewconnAnswerMax> out, std::string_view ack_digits,
                                       bool accepted, int64_t seq) {
  static constexpr std::string_view kAccepted = R"({"accepted":true,"ack":)";
  static constexpr std::string_view kRefused = R"({"accepted":false,"ack":)";
  static constexpr std::string_view kSeq = R"(,"cmd":"NODE_CLUSTER","seq":)";
  char* p = out.data();
  // Constant lengths: each copy is a few moves, no call.
  if (accepted) p = std::copy_n(kAccepted.data(), kAccepted.size(), p);
  else p = std::copy_n(kRefused.data(), kRefused.size(), p);
  p = std::copy_n(ack_digits.data(), std::min<size_t>(ack_digits.size(), 20), p);
  p = std::copy_n(kSeq.data(), kSeq.size(), p);
  p = std::to_chars(p, out.data() + out.size() - 1, seq).ptr;
  *p++ = '}';
  return std::string_view(out.data(), static_cast<size_t>(p - out.data()));
}

void Messenger::drop_owner(int owner) {
  std::erase_if(callbacks_, [owner](const auto& kv) { return kv.second.owner == owner; });
}

}  // namespace uvcluster::cluster
