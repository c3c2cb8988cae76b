// Unit tests of the transport-free cluster parts: the NODE_CLUSTER envelope and seq/ack
// bookkeeping, server keys, the round-robin scheduler (with a fake transport), and sockets.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <climits>
#include <deque>
#include <memory>
#include <map>
#include <set>

#include "http_client.hpp"
#include "support.hpp"
#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/cluster/round_robin_handle.hpp"
#include "uvcluster/cluster/reuseport_handle.hpp"
#include "uvcluster/cluster/reuseport_steering.hpp"
#include "uvcluster/cluster/shared_handle.hpp"
#include "uvcluster/cluster/worker.hpp"
#include "uvcluster/detail/ring.hpp"
#include "uvcluster/ipc/framing.hpp"

using namespace uvcluster;
using namespace uvcluster::cluster;

TEST(ClusterProtocol, EnvelopeHasCmdPayloadAndPerProcessSeq) {
  Messenger m;
  Json a = m.wrap({{"act", "online"}});
  Json b = m.wrap({{"act", "queryServer"}, {"port", 80}});
  EXPECT_EQ(a, Json({{"cmd", "NODE_CLUSTER"}, {"act", "online"}, {"seq", 0}}));
  EXPECT_EQ(b["seq"], 1);
  EXPECT_EQ(b["port"], 80);
}

TEST(ClusterProtocol, RepliesMatchOnAckAndOwnerBogusAcksFallThrough) {
  Messenger m;
  int called = 0;
  Json q = m.wrap({{"act", "newconn"}}, [&](const Json& r, ipc::ReceivedHandle*) {
    called++;
    EXPECT_EQ(r["accepted"], true);
  }, /*owner=*/7);
  EXPECT_FALSE(m.take_reply({{"cmd", "NODE_CLUSTER"}, {"ack", -1}}, nullptr, 7));  // test-cluster-invalid-message
  EXPECT_FALSE(m.take_reply({{"cmd", "NODE_CLUSTER"}, {"ack", "0"}}, nullptr, 7));
  EXPECT_FALSE(m.take_reply({{"cmd", "NODE_CLUSTER"}, {"ack", q["seq"]}}, nullptr, 8));  // other worker
  EXPECT_TRUE(m.take_reply({{"cmd", "NODE_CLUSTER"}, {"ack", q["seq"]}, {"accepted", true}}, nullptr, 7));
  EXPECT_FALSE(m.take_reply({{"cmd", "NODE_CLUSTER"}, {"ack", q["seq"]}}, nullptr, 7));  // once
  EXPECT_EQ(called, 1);
  m.wrap({{"act", "x"}}, [](const Json&, ipc::ReceivedHandle*) {}, 3);
  m.drop_owner(3);
  EXPECT_EQ(m.pending(), 0u);
}

// The hand-off's fast path must put on the wire exactly what the general path does.
TEST(ClusterProtocol, NewconnMessageIsByteIdenticalToTheGeneralEncoding) {
  for (std::string key : {"127.0.0.1:0:4:undefined:0", "null:8000:4:undefined:0", "/tmp/a \"b\"\\c:-1:-1:-1:0",
                          "\xC3\xA9t\xC3\xA9\x01\t:1:4:x:3", ""}) {
    Messenger general;
    Messenger fast;
    NewconnMessage message(key);
    for (int i = 0; i < 12; ++i) {  // seq 0..11: one and two digits
      std::string expected = ipc::encode_frame(general.wrap({{"act", "newconn"}, {"key", key}}));
      expected.pop_back();  // the newline
      int64_t seq = fast.next_seq();
      EXPECT_EQ(message.with_seq(seq), expected) << key;
    }
  }
}

TEST(ClusterProtocol, NewconnAnswersAreRecognisedInOursAndNodesKeyOrderOnly) {
  auto parsed = [](std::string_view line) { return parse_newconn_answer(line); };
  auto a = parsed(R"({"accepted":true,"ack":7,"cmd":"NODE_CLUSTER","seq":3})");  // our worker
  ASSERT_TRUE(a);
  EXPECT_EQ(a->ack, 7);
  EXPECT_TRUE(a->accepted);
  auto b = parsed(R"({"cmd":"NODE_CLUSTER","ack":120,"accepted":false,"seq":0})");  // Node's worker
  ASSERT_TRUE(b);
  EXPECT_EQ(b->ack, 120);
  EXPECT_FALSE(b->accepted);
  // Anything else takes the general parse.
  for (std::string_view other : {
           R"({"accepted":true,"ack":7,"cmd":"NODE_CLUSTER"})",                   // no seq
           R"({"accepted":true,"ack":7,"cmd":"NODE_CLUSTER","seq":3,"x":1})",     // more keys
           R"({"accepted": true,"ack":7,"cmd":"NODE_CLUSTER","seq":3})",          // whitespace
           R"({"accepted":1,"ack":7,"cmd":"NODE_CLUSTER","seq":3})",              // not a boolean
           R"({"accepted":true,"ack":07,"cmd":"NODE_CLUSTER","seq":3})",          // not JSON
           R"({"accepted":true,"ack":7.5,"cmd":"NODE_CLUSTER","seq":3})",         // not an integer
           R"({"accepted":true,"ack":1234567890123456,"cmd":"NODE_CLUSTER","seq":3})",  // 16 digits
           R"({"accepted":true,"ack":7,"cmd":"NODE_CLUSTER","seq":3}x)",
           R"({"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":"3"})",
           R"({"cmd":"NODE_HANDLE_ACK"})",
       })
    EXPECT_FALSE(parsed(other)) << other;
}

// The primary's fast path: an answer recognised on its bytes must mean what the general parse
// of the same bytes means (Primary::on_internal: newconn_answer_of), hostile lines included.
TEST(ClusterProtocol, NewconnAnswersOnTheFastPathMeanWhatTheGeneralParseReads) {
  int recognised = 0;
  for (std::string_view line : {
           R"({"accepted":true,"ack":7,"cmd":"NODE_CLUSTER","seq":3})",
           R"({"accepted":false,"ack":0,"cmd":"NODE_CLUSTER","seq":0})",
           R"({"cmd":"NODE_CLUSTER","ack":120,"accepted":false,"seq":9})",
           R"({"cmd":"NODE_CLUSTER","ack":999999999999999,"accepted":true,"seq":1})",
           R"({"accepted":true,"ack":-4,"cmd":"NODE_CLUSTER","seq":-1})",
           R"({"accepted":true,"ack":1234567890123456,"cmd":"NODE_CLUSTER","seq":3})",
           R"({"accepted":"true","ack":7,"cmd":"NODE_CLUSTER","seq":3})",
           R"({"accepted":true,"ack":7,"cmd":"NODE_CLUSTER","seq":3,"accepted":false})",
           R"({"accepted":true,"ack":7,"ack":8,"cmd":"NODE_CLUSTER","seq":3})",
           R"({"accepted":true,"ack":7,"cmd":"NODE_CLUSTE\u0052","seq":3})",
           R"({"accepted":true,"ack":7e0,"cmd":"NODE_CLUSTER","seq":3})",
           R"({"accepted":true,"ack":-0,"cmd":"NODE_CLUSTER","seq":3})",
           R"({"accepted":null,"ack":7,"cmd":"NODE_CLUSTER","seq":3})",
           R"({"cmd":"NODE_CLUSTER","ack":7})",
       }) {
    auto fast = parse_newconn_answer(line);
    auto parsed = ipc::parse_frame(line, 64);
    auto general = parsed.ok() && is_cluster_message(parsed.value()) ? newconn_answer_of(parsed.value())
                                                                     : std::nullopt;
    if (!fast) continue;  // the general way reads it: nothing to compare
    ++recognised;
    ASSERT_TRUE(general) << line;
    EXPECT_EQ(fast->ack, general->ack) << line;
    EXPECT_EQ(fast->accepted, general->accepted) << line;
  }
  EXPECT_EQ(recognised, 6);
  // A non-boolean `accepted` is a refusal, as Node reads it.
  EXPECT_FALSE(newconn_answer_of({{"cmd", "NODE_CLUSTER"}, {"ack", 7}, {"accepted", 1}})->accepted);
  EXPECT_FALSE(newconn_answer_of({{"cmd", "NODE_CLUSTER"}, {"ack", "7"}, {"accepted", true}}));
}

// A worker's newconns in flight: each answer is taken once, only from its own worker's table,
// and reaches the scheduler through a HandOffReply (a plain value).
TEST(ClusterProtocol, HandOffRecordsAreTakenOnceFromTheirWorkersTable) {
  struct Got {
    int worker;
    uint64_t id;
    bool accepted;
  };
  std::vector<Got> got;
  auto to = [](void* target, int worker, uint64_t id, bool accepted, Fd) {
    static_cast<std::vector<Got>*>(target)->push_back({worker, id, accepted});
  };
  static_assert(std::is_trivially_copyable_v<HandOffReply>);
  HandOffTable seven, eight;
  seven.add({10, HandOffReply(to, &got, 7, 100), 0, 1});
  seven.add({11, HandOffReply(to, &got, 7, 101), 0, 1});
  EXPECT_FALSE(eight.take(10));  // another worker's seq
  auto r = seven.take(11);       // answers may come out of order within the window
  ASSERT_TRUE(r);
  r->reply(true);
  EXPECT_FALSE(seven.take(11));  // once
  EXPECT_EQ(seven.size(), 1u);
  seven.take(10)->reply(false);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].id, 101u);
  EXPECT_TRUE(got[0].accepted);
  EXPECT_EQ(got[1].worker, 7);
  EXPECT_EQ(got[1].id, 100u);
  EXPECT_FALSE(got[1].accepted);
  HandOffReply none;
  EXPECT_FALSE(none);
  none(true);  // no target: nothing happens
}

// The worker's fast path: a newconn message recognised on its bytes (for the key of one of its
// servers, compared whole) must mean what the general parse of the same bytes means (key
// and seq), and every other message, another key's included, must be left to it.
TEST(ClusterProtocol, NewconnMessagesAreRecognisedExactlyAsTheGeneralParseReadsThem) {
  // What the general path (Worker::Impl::on_internal) acts on: a newconn with a string key.
  auto general = [](std::string_view m) -> std::optional<std::pair<std::string, Json>> {
    auto j = ipc::parse_frame(m);
    if (!j.ok() || !j.value().is_object() || j.value().size() != 4 || j.value().value("act", "") != "newconn" ||
        j.value().value("cmd", "") != "NODE_CLUSTER" || !j.value()["key"].is_string() || !j.value().contains("seq"))
      return std::nullopt;
    return std::pair{j.value()["key"].get<std::string>(), j.value()["seq"]};
  };
  std::vector<std::string> recognised = {
      NewconnMessage("127.0.0.1:0:4:undefined:0").with_seq(0),  // ours, as the primary encodes it
      NewconnMessage("null:8000:4:undefined:0").with_seq(123456789012345),
      NewconnMessage("::1:0:6:undefined:3").with_seq(7),
      NewconnMessage("").with_seq(1),
      NewconnMessage("/tmp/a \"b\"\\c:-1:-1:-1:0").with_seq(1),  // escapes in the key
      NewconnMessage("\xC3\xA9t\xC3\xA9:1:4:x:3").with_seq(1),     // non-ASCII key
      NewconnMessage("a\tb").with_seq(1),                          // a control character (escaped)
      R"({"cmd":"NODE_CLUSTER","act":"newconn","key":"127.0.0.1:0:4:undefined:0","seq":42})",  // Node's
  };
  for (const auto& m : recognised) {
    auto slow = general(m);
    ASSERT_TRUE(slow) << m;
    auto fast = NewconnMatcher(slow->first).match(m);
    ASSERT_TRUE(fast) << m;
    EXPECT_EQ(*fast, slow->second.dump()) << m;  // the integer's digits, as they are
    EXPECT_FALSE(NewconnMatcher(slow->first + "x").match(m)) << m;  // another server's key
  }
  std::vector<std::string> left = {  // for the key "k"
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k2","seq":1})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"","seq":1})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"\u006b","seq":1})",  // "k", escaped: the general parse's
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":-1})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1.5})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1e3})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":01})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1234567890123456})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":"1"})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1,"x":2})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1)",  // truncated
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1}})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1},"key":"k2")",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":)",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k)",
      R"({"act":"newconn", "cmd":"NODE_CLUSTER","key":"k","seq":1})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","key":1,"seq":1})",
      R"({"act":"newconn","cmd":"NODE_CLUSTER","seq":1,"key":"k"})",
      R"({"seq":1,"key":"k","cmd":"NODE_CLUSTER","act":"newconn"})",
      R"({"act":"newconnx","cmd":"NODE_CLUSTER","key":"k","seq":1})",
      R"({"act":"disconnect","cmd":"NODE_CLUSTER","seq":1})",
      R"({"cmd":"NODE_HANDLE","type":"net.Native","msg":{"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1}})",
      "",
  };
  NewconnMatcher k("k");
  for (const auto& m : left) EXPECT_FALSE(k.match(m)) << m;
  EXPECT_TRUE(k.match(R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k","seq":1})"));
}

// ... and its answer must be byte for byte the general path's, written in the caller's buffer.
TEST(ClusterProtocol, NewconnAnswerIsByteIdenticalToTheGeneralEncoding) {
  Messenger general;
  Messenger fast;
  std::array<char, kNewconnAnswerMax> out;
  for (int64_t ack : {int64_t{0}, int64_t{9}, int64_t{10}, int64_t{123456789012345}}) {
    for (bool accepted : {true, false}) {
      std::string expected = ipc::encode_frame(general.wrap({{"ack", ack}, {"accepted", accepted}}));
      expected.pop_back();
      std::string_view answer = encode_newconn_answer(out, std::to_string(ack), accepted, fast.next_seq());
      EXPECT_EQ(answer, expected);
      EXPECT_EQ(answer.data(), out.data());
      EXPECT_TRUE(parse_newconn_answer(answer));  // and the primary's fast path reads it back
    }
  }
  // The longest: a 20-character seq.
  std::string_view longest = encode_newconn_answer(out, "123456789012345", false, INT64_MIN);
  EXPECT_EQ(longest, R"({"accepted":false,"ack":123456789012345,"cmd":"NODE_CLUSTER","seq":-9223372036854775808})");
}

TEST(ClusterProtocol, ServerKeyUsesJavaScriptStringsAsNodeDoes) {
  EXPECT_EQ(server_key({{"address", nullptr}, {"port", 8000}, {"addressType", 4}, {"index", 0}}),
            "null:8000:4:undefined:0");
  EXPECT_EQ(server_key({{"address", "127.0.0.1"}, {"port", 0}, {"addressType", 4}, {"index", 2}}),
            "127.0.0.1:0:4:undefined:2");
  EXPECT_EQ(server_key(Json::object()), "undefined:undefined:undefined:undefined:undefined");
  EXPECT_TRUE(is_cluster_message({{"cmd", "NODE_CLUSTER"}}));
  EXPECT_FALSE(is_cluster_message({{"cmd", "NODE_HANDLE_ACK"}}));
  EXPECT_FALSE(is_cluster_message("NODE_CLUSTER"));
  EXPECT_EQ(errno_name(-98), "EADDRINUSE");
}

TEST(ClusterProtocol, PolicyNames) {
  EXPECT_EQ(parse_policy("rr"), Policy::rr);
  EXPECT_EQ(parse_policy("none"), Policy::none);
  EXPECT_EQ(parse_policy("reuseport"), Policy::reuseport);
  EXPECT_EQ(parse_policy("exclusive"), Policy::exclusive);
  EXPECT_EQ(parse_policy("sticky"), Policy::sticky);
  EXPECT_STREQ(policy_name(Policy::sticky), "sticky");
  EXPECT_FALSE(parse_policy("RR"));
}

// The states and listen modes are enums; their spellings are what Node (and the CLI's and the
// lab's JSON) print, so every enumerator is pinned here.
TEST(ClusterProtocol, StateAndModeNamesAreNodes) {
  using PS = WorkerHandle::State;
  EXPECT_STREQ(to_string(PS::none), "none");
  EXPECT_STREQ(to_string(PS::online), "online");
  EXPECT_STREQ(to_string(PS::listening), "listening");
  EXPECT_STREQ(to_string(PS::disconnected), "disconnected");
  EXPECT_STREQ(to_string(PS::dead), "dead");
  using WS = Worker::State;
  EXPECT_STREQ(to_string(WS::online), "online");
  EXPECT_STREQ(to_string(WS::listening), "listening");
  EXPECT_STREQ(to_string(WS::disconnecting), "disconnecting");
  EXPECT_STREQ(to_string(WS::destroying), "destroying");
  EXPECT_STREQ(to_string(ListenMode::rr), "rr");
  EXPECT_STREQ(to_string(ListenMode::shared), "shared");
  EXPECT_STREQ(to_string(ListenMode::exclusive), "exclusive");
}

namespace {

// A fake transport: records each newconn and lets the test answer it later.
struct FakeWorkers {
  struct Sent {
    int worker;
    int conn;
    std::function<void(bool)> reply;
  };
  std::deque<Sent> sent;
  std::set<int> dead;
  std::set<int> no_fds;  // sending to these fails for lack of resources
  RoundRobinScheduler::Sender sender(int id) {
    return [this, id](int conn, std::function<void(bool)> reply) {
      if (dead.count(id)) return RoundRobinScheduler::SendResult::gone;
      if (no_fds.count(id)) return RoundRobinScheduler::SendResult::failed;
      sent.push_back({id, conn, std::move(reply)});
      return RoundRobinScheduler::SendResult::sent;
    };
  }
  // Answers the oldest hand-off.
  Sent answer(bool accepted) {
    Sent x = sent.front();
    sent.pop_front();
    x.reply(accepted);
    return x;
  }
};

Fd conn() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ::close(sv[1]);
  return Fd(sv[0]);
}

}  // namespace

// The scheduler's and the channel's queues (detail::Ring) against std::deque: the same contents
// after every operation, across wrap-around, growth, erase in the middle and a move; and no
// allocation once grown (the capacity stays).
TEST(RoundRobinScheduler, RingQueueBehavesAsADequeAndKeepsItsCapacity) {
  detail::Ring<std::unique_ptr<int>> ring;
  std::deque<int> model;
  auto same = [&] {
    if (ring.size() != model.size()) return false;
    for (size_t i = 0; i < model.size(); ++i)
      if (*ring[i] != model[i]) return false;
    return std::equal(ring.begin(), ring.end(), model.begin(), [](const auto& p, int v) { return *p == v; });
  };
  int next = 0;
  for (int round = 0; round < 200; ++round) {
    int op = (round * 5 + next) % 7;  // 4 of 7 add: it grows through several capacities
    if (op <= 2 || model.empty()) {
      ring.push_back(std::make_unique<int>(next));
      model.push_back(next++);
    } else if (op == 3) {
      ring.push_front(std::make_unique<int>(next));
      model.push_front(next++);
    } else if (op == 4) {
      ring.pop_front();
      model.pop_front();
    } else {
      size_t at = static_cast<size_t>(round) % model.size();
      auto after = ring.erase(ring.begin() + static_cast<std::ptrdiff_t>(at));
      model.erase(model.begin() + static_cast<std::ptrdiff_t>(at));
      EXPECT_EQ(after - ring.begin(), static_cast<std::ptrdiff_t>(at));
    }
    ASSERT_TRUE(same()) << "round " << round;
  }
  EXPECT_GE(model.size(), 16u);
  size_t capacity = ring.capacity();
  for (int i = 0; i < 1000; ++i) {  // a steady stream at the same length: the capacity stays
    ring.push_back(std::make_unique<int>(next));
    model.push_back(next++);
    ring.pop_front();
    model.pop_front();
  }
  EXPECT_EQ(ring.capacity(), capacity);
  ASSERT_TRUE(same());
  detail::Ring<std::unique_ptr<int>> moved = std::move(ring);
  EXPECT_TRUE(ring.empty());
  ASSERT_EQ(moved.size(), model.size());
  ASSERT_FALSE(model.empty());
  EXPECT_EQ(*moved.front(), model.front());
  moved.clear();
  EXPECT_TRUE(moved.empty());
}

// The scheduler takes its queue's front once per hand-off: that erase moves no element (it
// moved every waiting connection up one slot), and push_back moves its argument once.
TEST(RoundRobinScheduler, RingTakesItsFrontWithoutMovingTheRest) {
  struct Counted {
    int* moves;
    explicit Counted(int* m) : moves(m) {}
    Counted(Counted&& o) noexcept : moves(o.moves) { ++*moves; }
    Counted& operator=(Counted&& o) noexcept {
      moves = o.moves;
      ++*moves;
      return *this;
    }
  };
  int moves = 0;
  detail::Ring<Counted> ring(64);
  for (int i = 0; i < 50; ++i) {
    Counted c(&moves);
    ring.push_back(std::move(c));
  }
  EXPECT_EQ(moves, 50);  // one move into its slot each (not into a by-value parameter first)
  moves = 0;
  auto after = ring.erase(ring.begin());
  EXPECT_EQ(moves, 0);
  EXPECT_EQ(after - ring.begin(), 0);
  EXPECT_EQ(ring.size(), 49u);
}

TEST(RoundRobinScheduler, OneInFlightPerWorkerFreeListInOrder) {
  auto before = uvc_test::open_fds();
  {
    FakeWorkers f;
    RoundRobinScheduler s;
    s.add(1, f.sender(1));
    s.add(2, f.sender(2));
    EXPECT_EQ(s.free_count(), 2u);
    for (int i = 0; i < 5; ++i) s.push(conn());
    ASSERT_EQ(f.sent.size(), 2u);  // one per worker; three wait in the primary
    EXPECT_EQ(f.sent[0].worker, 1);
    EXPECT_EQ(f.sent[1].worker, 2);
    EXPECT_EQ(s.queued(), 3u);
    // Worker 2 answers first: it gets the next connection.
    auto r2 = f.sent[1].reply;
    f.sent.erase(f.sent.begin() + 1);
    r2(true);
    ASSERT_EQ(f.sent.size(), 2u);
    EXPECT_EQ(f.sent.back().worker, 2);
    while (!f.sent.empty()) {
      auto r = f.sent.front().reply;
      f.sent.pop_front();
      r(true);
    }
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.free_count(), 2u);
    EXPECT_EQ(s.handed_out().at(1) + s.handed_out().at(2), 5u);
  }
  EXPECT_EQ(uvc_test::open_fds(), before);
}

// --rr-window K: up to K hand-offs in flight per worker, still handed out in rotation; an answer
// frees one slot, which takes the next queued connection.
TEST(RoundRobinScheduler, WindowKeepsUpToKInFlightPerWorkerInRotation) {
  auto before = uvc_test::open_fds();
  {
    FakeWorkers f;
    RoundRobinScheduler s;
    s.set_window(3);
    s.add(1, f.sender(1));
    s.add(2, f.sender(2));
    for (int i = 0; i < 8; ++i) s.push(conn());
    ASSERT_EQ(f.sent.size(), 6u);  // three each; two wait in the primary
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(f.sent[i].worker, i % 2 == 0 ? 1 : 2) << i;
    EXPECT_EQ(s.queued(), 2u);
    EXPECT_EQ(s.in_flight(), 6u);
    EXPECT_EQ(f.answer(true).worker, 1);  // one slot of worker 1 frees: the next goes there
    ASSERT_EQ(f.sent.size(), 6u);
    EXPECT_EQ(f.sent.back().worker, 1);
    while (!f.sent.empty()) f.answer(true);
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.in_flight(), 0u);
    EXPECT_EQ(s.free_count(), 2u);
    EXPECT_EQ(s.handed_out().at(1), 4u);
    EXPECT_EQ(s.handed_out().at(2), 4u);
  }
  EXPECT_EQ(uvc_test::open_fds(), before);
}

// Pick::sticky: a key's connections go to one worker; while it is busy they wait for it even with
// other workers idle; a worker joining takes no pinned key; a leaving worker's keys move.
TEST(RoundRobinScheduler, StickyKeepsAKeyOnItsWorkerWaitsWhileBusyRemapsWhenItLeaves) {
  FakeWorkers f;
  RoundRobinScheduler s(RoundRobinScheduler::kDefaultAttemptsPerWorker, RoundRobinScheduler::Pick::sticky);
  for (int w : {1, 2, 3}) s.add(w, f.sender(w));
  std::map<uint64_t, int> placed;
  std::set<int> used;
  for (uint64_t key = 1; key <= 300; ++key) used.insert(placed[key * 7919] = s.worker_for(key * 7919));
  EXPECT_EQ(used, (std::set<int>{1, 2, 3})) << "the hash spreads keys over every worker";
  const uint64_t key = 7919;
  const int home = placed[key];
  s.push(conn(), key);
  s.push(conn(), key);
  ASSERT_EQ(f.sent.size(), 1u);
  EXPECT_EQ(f.sent[0].worker, home);
  EXPECT_EQ(s.queued(), 1u) << "the second waits for its busy worker";
  EXPECT_EQ(s.free_count(), 2u) << "although two workers are idle";
  f.answer(true);
  ASSERT_EQ(f.sent.size(), 1u);
  EXPECT_EQ(f.sent[0].worker, home);
  f.answer(true);
  s.add(4, f.sender(4));
  for (auto& [k, w] : placed) EXPECT_EQ(s.worker_for(k), w) << "a new worker takes no pinned client";
  s.push(conn(), key);
  ASSERT_EQ(f.sent.size(), 1u);
  s.remove(home, /*gone=*/true);  // in flight to it: requeued, now for another worker
  ASSERT_EQ(f.sent.size(), 2u);
  EXPECT_NE(f.sent[1].worker, home);
  EXPECT_EQ(s.worker_for(key), f.sent[1].worker);
  for (auto& [k, w] : placed) {
    if (w == home) continue;
    EXPECT_EQ(s.worker_for(k), w) << "only the leaver's clients move";
  }
}

TEST(RoundRobinScheduler, RefusedConnectionGoesToAnotherWorker) {
  FakeWorkers f;
  RoundRobinScheduler s;
  s.add(1, f.sender(1));
  s.push(conn());
  ASSERT_EQ(f.sent.size(), 1u);
  s.add(2, f.sender(2));  // idle
  int fd = f.sent[0].conn;
  auto r = f.sent[0].reply;
  f.sent.clear();
  r(false);  // accepted:false
  ASSERT_EQ(f.sent.size(), 1u);
  EXPECT_EQ(f.sent[0].worker, 2);
  EXPECT_EQ(f.sent[0].conn, fd);  // the very same connection, not lost
  // Issue 8 defect 1: a refusal is not a death sentence — the worker stays in the rotation.
  EXPECT_TRUE(s.has(1));
  EXPECT_EQ(s.free_count(), 1u);
  s.push(conn());
  ASSERT_EQ(f.sent.size(), 2u);
  EXPECT_EQ(f.sent[1].worker, 1);
}

// Issue 8 defect 1 (the permanent outage): workers at server.maxConnections each refuse once;
// the cluster keeps serving afterwards instead of queueing every new connection forever.
TEST(RoundRobinScheduler, EveryWorkerRefusingSometimesKeepsServing) {
  FakeWorkers f;
  RoundRobinScheduler s;
  for (int w = 1; w <= 3; ++w) s.add(w, f.sender(w));
  for (int i = 0; i < 3; ++i) s.push(conn());
  ASSERT_EQ(f.sent.size(), 3u);
  for (int i = 0; i < 3; ++i) f.answer(false);  // each worker refuses once
  // Then they have room again: every connection is served, old and new.
  for (int i = 0; i < 30; ++i) s.push(conn());
  while (!f.sent.empty()) f.answer(true);
  uint64_t served = 0;
  for (auto& [w, n] : s.handed_out()) served += n;
  EXPECT_EQ(served, 33u);
  EXPECT_EQ(s.queued(), 0u);
  EXPECT_EQ(s.free_count(), 3u);
  EXPECT_EQ(s.counters().refused, 3u);
  EXPECT_EQ(s.counters().dropped, 0u);
}

// ...and a connection cannot ping-pong forever: after the attempt budget it is closed.
TEST(RoundRobinScheduler, AConnectionEveryoneRefusesIsClosedAfterItsBudget) {
  auto before = uvc_test::open_fds();
  {
    FakeWorkers f;
    RoundRobinScheduler s(/*attempts_per_worker=*/2);  // 2 workers: 4 attempts
    s.add(1, f.sender(1));
    s.add(2, f.sender(2));
    s.push(conn());
    int refusals = 0;
    std::vector<int> to;
    while (!f.sent.empty() && refusals < 100) {
      to.push_back(f.answer(false).worker);
      ++refusals;
    }
    EXPECT_EQ(refusals, 4);
    EXPECT_EQ((std::vector<int>{1, 2, 1, 2}), to);  // requeued to the other worker each time
    EXPECT_EQ(s.counters().dropped, 1u);
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.free_count(), 2u);  // both still serve
    s.push(conn());
    ASSERT_EQ(f.sent.size(), 1u);
    f.answer(true);
  }
  EXPECT_EQ(uvc_test::open_fds(), before);
}

// A refusing worker rests (5 ms, doubling per refusal in a row) instead of being asked again at
// IPC speed; an accept resets it.
TEST(RoundRobinScheduler, RefusingWorkerRestsThenTakesWorkAgain) {
  FakeWorkers f;
  RoundRobinScheduler s;
  uint64_t now = 0;
  std::vector<uint64_t> rests;
  s.set_clock([&] { return now; });
  s.set_on_rest([&](uint64_t ms) { rests.push_back(ms); });
  s.add(1, f.sender(1));
  s.push(conn());
  f.answer(false);
  EXPECT_EQ(rests, std::vector<uint64_t>{5});
  EXPECT_TRUE(f.sent.empty());  // resting: the connection waits
  EXPECT_EQ(s.queued(), 1u);
  now = 4;
  s.wake();
  EXPECT_TRUE(f.sent.empty());
  now = 5;
  s.wake();
  ASSERT_EQ(f.sent.size(), 1u);
  f.answer(false);
  EXPECT_EQ(rests.back(), 10u);  // doubled
  now = 100;
  s.wake();
  f.answer(true);
  EXPECT_EQ(s.handed_out().at(1), 1u);
  s.push(conn());
  f.answer(false);
  EXPECT_EQ(rests.back(), 5u);  // reset by the accept
}

// Issue 8 defect 2: every hand-off ends and frees the worker's slot — here by the timeout (a
// worker that never answers) and by a failed send (the primary had no fd for its copy).
TEST(RoundRobinScheduler, UnansweredHandOffTimesOutAndFreesTheSlot) {
  auto before = uvc_test::open_fds();
  {
    FakeWorkers f;
    RoundRobinScheduler s;
    uint64_t now = 0;
    s.set_clock([&] { return now; });
    s.add(1, f.sender(1));
    s.add(2, f.sender(2));
    s.push(conn());  // to 1, which never answers
    now = 100;
    s.push(conn());  // to 2
    EXPECT_EQ(s.expire(50), 1u);  // only the hand-off sent at 0 is over the limit
    EXPECT_EQ(s.in_flight(), 1u);
    EXPECT_EQ(s.counters().timed_out, 1u);
    // Worker 1 gets nothing while it stays silent; worker 2 serves.
    auto silent = f.sent.front();
    f.sent.pop_front();
    s.push(conn());
    s.push(conn());
    while (!f.sent.empty()) EXPECT_EQ(f.answer(true).worker, 2);
    EXPECT_EQ(s.handed_out().at(2), 3u);
    // Its late answer brings it back into the rotation.
    silent.reply(true);
    EXPECT_EQ(s.handed_out().at(1), 1u);
    EXPECT_EQ(s.free_count(), 2u);
    // No fd for the primary's copy: that connection is shed, the worker stays and serves the next.
    f.no_fds.insert(1);
    f.no_fds.insert(2);
    s.push(conn());
    EXPECT_EQ(s.counters().dropped, 1u);
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.free_count(), 2u);
    f.no_fds.clear();
    s.push(conn());
    EXPECT_EQ(f.sent.size(), 1u);
    f.answer(true);
  }
  EXPECT_EQ(uvc_test::open_fds(), before);
}


TEST(RoundRobinScheduler, DeadWorkerLosesNothingQueuedOrInFlight) {
  FakeWorkers f;
  RoundRobinScheduler s;
  s.add(1, f.sender(1));
  s.add(2, f.sender(2));
  for (int i = 0; i < 4; ++i) s.push(conn());
  ASSERT_EQ(f.sent.size(), 2u);
  int in_flight_to_1 = f.sent[0].conn;
  f.dead.insert(1);
  EXPECT_FALSE(s.remove(1));
  EXPECT_EQ(s.queued(), 3u);  // the in-flight one is back at the front
  // Worker 2 drains everything, starting with worker 1's connection.
  std::vector<int> got;
  while (!f.sent.empty()) {
    auto x = f.sent.front();
    f.sent.pop_front();
    if (x.worker == 2) got.push_back(x.conn);
    x.reply(true);
  }
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[1], in_flight_to_1);
  EXPECT_TRUE(s.remove(2));  // last one: the handle would close
}

TEST(RoundRobinScheduler, FailedSendDropsWorkerKeepsConnection) {
  FakeWorkers f;
  RoundRobinScheduler s;
  f.dead.insert(1);
  s.add(1, f.sender(1));
  s.push(conn());
  EXPECT_EQ(s.queued(), 1u);  // the free worker's channel was gone: it left, the conn waits
  EXPECT_FALSE(s.has(1));
  s.add(2, f.sender(2));
  EXPECT_EQ(f.sent.size(), 1u);
}

TEST(ClusterSockets, BindErrorsAreValuesAndListenZeroSharesAPort) {
  auto a = bind_tcp({.address = "127.0.0.1", .port = 0});
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(listen_fd(a->get(), 0).ok());
  int port = local_address(a->get())->port;
  auto b = bind_tcp({.address = "127.0.0.1", .port = port});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().code, "EADDRINUSE");
  EXPECT_EQ(b.error().syscall, "bind");
  auto bad = bind_tcp({.address = "not-an-ip", .port = 1});
  EXPECT_FALSE(bad.ok());
  auto badport = bind_tcp({.address = "127.0.0.1", .port = 70000});
  EXPECT_EQ(badport.error().code, "EINVAL");

  // reuseport: one socket per worker on one port, each listening.
  auto opened = ReusePortHandle::open({.address = "127.0.0.1", .port = 0});
  ASSERT_TRUE(opened.ok());
  ReusePortHandle& rp = **opened;
  auto r1 = rp.socket_for(1), r2 = rp.socket_for(2);
  ASSERT_TRUE(r1.ok() && r2.ok());
  Fd s1 = std::move(r1.value()), s2 = std::move(r2.value());
  EXPECT_NE(s1.get(), s2.get());
  EXPECT_EQ(local_address(s1.get())->port, local_address(s2.get())->port);
  EXPECT_TRUE(listen_fd(s1.get(), 0).ok());
  EXPECT_TRUE(listen_fd(s2.get(), 0).ok());

  // A SharedHandle on a port someone listens on reports Node's errno.
  auto taken = SharedHandle::open_for({}, {.spec = {.address = "127.0.0.1", .port = port}});
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().errnum, UV_EADDRINUSE);
}

// reuseport steering's fd rule: out below 2 free fds, back at 8 free (hysteresis), an unlimited
// table never short.
TEST(ReusePortSteering, FdHeadroomGoesOutBelowTwoFreeAndComesBackAtEight) {
  EXPECT_TRUE(has_fd_headroom(true, {.open = 62, .soft_limit = 64}));
  EXPECT_FALSE(has_fd_headroom(true, {.open = 63, .soft_limit = 64}));
  EXPECT_FALSE(has_fd_headroom(true, {.open = 64, .soft_limit = 64}));
  EXPECT_FALSE(has_fd_headroom(true, {.open = 70, .soft_limit = 64}));  // limit lowered below use
  EXPECT_FALSE(has_fd_headroom(false, {.open = 62, .soft_limit = 64}));  // 2 free: not back yet
  EXPECT_FALSE(has_fd_headroom(false, {.open = 57, .soft_limit = 64}));
  EXPECT_TRUE(has_fd_headroom(false, {.open = 56, .soft_limit = 64}));
  EXPECT_TRUE(has_fd_headroom(false, {.open = 100000, .soft_limit = RLIM_INFINITY}));
}

TEST(RoundRobinScheduler, GracefulLeaveStillHonoursTheAnswerInFlight) {
  FakeWorkers f;
  RoundRobinScheduler s;
  s.add(1, f.sender(1));
  s.add(2, f.sender(2));
  s.push(conn());
  s.push(conn());
  ASSERT_EQ(f.sent.size(), 2u);
  auto to1 = f.sent[0], to2 = f.sent[1];
  f.sent.clear();
  // Worker 1 is disconnected gracefully: it may still accept what it was sent — no double hand-out.
  EXPECT_FALSE(s.remove(1, /*gone=*/false));
  EXPECT_EQ(s.queued(), 0u);
  to1.reply(true);
  EXPECT_EQ(s.handed_out().at(1), 1u);
  EXPECT_TRUE(f.sent.empty());
  // Worker 2 leaves gracefully too but refuses (its server closed): the connection stays ours.
  s.add(3, f.sender(3));
  EXPECT_FALSE(s.remove(2, /*gone=*/false));
  to2.reply(false);
  ASSERT_EQ(f.sent.size(), 1u);
  EXPECT_EQ(f.sent[0].worker, 3);
  EXPECT_EQ(f.sent[0].conn, to2.conn);
  // A graceful leaver that then dies without answering: its connection is queued again.
  auto to3 = f.sent[0];
  f.sent.clear();
  s.add(4, f.sender(4));
  s.remove(3, /*gone=*/false);
  s.worker_gone(3);
  ASSERT_EQ(f.sent.size(), 1u);
  EXPECT_EQ(f.sent[0].worker, 4);
  EXPECT_EQ(f.sent[0].conn, to3.conn);
  to3.reply(true);  // a late answer from the dead worker changes nothing
  EXPECT_EQ(f.sent.size(), 1u);
}
