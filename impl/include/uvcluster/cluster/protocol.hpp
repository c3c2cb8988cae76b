#pragma once
// Node's cluster wire protocol (lib/internal/cluster/utils.js): the NODE_CLUSTER envelope, the
// per-process seq counter and ack correlation, and the server key the primary derives from a
// queryServer. Reference: docs/protocol.md §3.2–§3.3.
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "uvcluster/ipc/channel.hpp"

namespace uvcluster::cluster {

using Json = nlohmann::json;

inline constexpr const char* kClusterCmd = "NODE_CLUSTER";

// True for {"cmd":"NODE_CLUSTER", ...}; other internal messages are not ours.
bool is_cluster_message(const Json& m);
// A NODE_HANDLE wrapper's inner `msg` (if the channel handed us the wrapper), else `m` itself.
const Json& unwrap_handle_message(const Json& m);

// JavaScript's String(v) for the values a key is built from: a missing field is "undefined",
// null is "null", numbers print as JS does for integers, strings verbatim, booleans as words.
std::string js_string(const Json* v);
// The primary's key: `${address}:${port}:${addressType}:${fd}:${index}` (values as received).
std::string server_key(const Json& query);

// "EADDRINUSE" for -98; "" for 0.
std::string errno_name(int negative_errno);

// seq/ack bookkeeping for one process. Node keeps one counter per process (the primary shares it
// across workers); replies are matched on `ack`. Callbacks carry an owner (worker id) so a reply
// is only taken from the process it was asked of, and so a dead worker's callbacks can be dropped.
class Messenger {
 public:
  using Reply = std::function<void(const Json& reply, ipc::ReceivedHandle* handle)>;

  // {"cmd":"NODE_CLUSTER", ...payload, "seq":n}; `cb` runs when a message with ack == n arrives.
  Json wrap(Json payload, Reply cb = {}, int owner = 0);
  // Runs and removes the callback for msg.ack (if owned by `owner`). False when the message is
  // not a reply we wait for — then it goes to the act handler (Node: bogus acks fall through).
  bool take_reply(const Json& msg, ipc::ReceivedHandle* handle, int owner = 0);
  // The seq of a message encoded by hand: a newconn (its answer is matched by the primary's
  // HandOffTable) or a worker's newconn answer (which waits for no reply).
  int64_t next_seq() { return seq_++; }
  void drop_owner(int owner);
  size_t pending() const { return callbacks_.size(); }

 private:
  struct Pending {
    int owner;
    Reply cb;
  };
  int64_t seq_ = 0;
  std::unordered_map<int64_t, Pending> callbacks_;
};

// The hand-off's fast path, both ways, without JSON values. The newconn message of one server
// key, encoded once: byte for byte what encode_frame(wrap({act: "newconn", key})) gives (no
// newline), with the seq appended per hand-off.
class NewconnMessage {
 public:
  explicit NewconnMessage(const std::string& key);
  std::string with_seq(int64_t seq) const;
  // The message with `seq`, in a buffer of this object that keeps the head: a hand-off writes
  // only its digits. Valid until the next call.
  std::string_view encode(int64_t seq);

 private:
  static constexpr size_t kSeqRoom = 24;  // an int64's digits, its sign and the closing brace
  size_t head_size_ = 0;
  std::string bytes_;  // the head, then the last seq encoded
};

struct NewconnAnswer {
  int64_t ack = 0;
  bool accepted = false;
};
// A worker's answer to a newconn as our workers ({"accepted":b,"ack":n,"cmd":"NODE_CLUSTER",
// "seq":m}) or Node's ({"cmd":"NODE_CLUSTER","ack":n,"accepted":b,"seq":m}) write it; nullopt
// for any other line (which then takes the general parse).
std::optional<NewconnAnswer> parse_newconn_answer(std::string_view line);
// The general way to the same answer, from a parsed NODE_CLUSTER message: an integer `ack`, and
// `accepted` true only when it is the boolean true (Node's test); nullopt without an integer ack.
std::optional<NewconnAnswer> newconn_answer_of(const Json& msg);

// The worker's side of the same fast path: the newconn messages (a NODE_HANDLE frame's `msg`)
// for one server key, as our primary ({"act":"newconn","cmd":"NODE_CLUSTER","key":K,"seq":n})
// or Node's ({"cmd":"NODE_CLUSTER","act":"newconn","key":K,"seq":n}) writes them, K the key's
// JSON text as encode_frame writes it, n a non-negative integer of at most 15 digits. Each
// form's bytes up to the seq are made once and compared whole: the key is never scanned, and
// bytes equal to a string's JSON text can only decode to that string. Anything else, another
// key included, gives nullopt (and takes the general parse).
class NewconnMatcher {
 public:
  explicit NewconnMatcher(const std::string& key);
  // The seq's digits, in `message` (checked, never converted: the answer copies them).
  std::optional<std::string_view> match(std::string_view message) const;

 private:
  std::string ours_;   // {"act":"newconn","cmd":"NODE_CLUSTER","key":K,"seq":
  std::string nodes_;  // {"cmd":"NODE_CLUSTER","act":"newconn","key":K,"seq":
};
// A worker's answer, byte for byte what encode_frame(wrap({ack, accepted})) gives with
// Messenger seq `seq` (no newline): {"accepted":b,"ack":n,"cmd":"NODE_CLUSTER","seq":m}, with
// n's digits given as they are (NewconnMatcher::match's: a JSON integer's, at most 20).
// Written into `out`; the view is of `out`.
inline constexpr size_t kNewconnAnswerMax = 96;
std::string_view encode_newconn_answer(std::span<char, kNewconnAnswerMax> out, std::string_view ack_digits,
                                       bool accepted, int64_t seq);

}  // namespace uvcluster::cluster
