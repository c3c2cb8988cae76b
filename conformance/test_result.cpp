// Result<T, E> (error.hpp): the expected-like accessors, and value()/error() on the wrong side
// failing with a message that names the error. Also: the passkeys of the classes that must be
// built through their factories cannot be built from outside.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "uvcluster/cluster/acceptor.hpp"
#include "uvcluster/cluster/exclusive_waiter.hpp"
#include "uvcluster/cluster/primary.hpp"
#include "uvcluster/cluster/supervisor.hpp"
#include "uvcluster/cluster/watchdog.hpp"
#include "uvcluster/error.hpp"
#include "uvcluster/process.hpp"
#include "uvcluster/sync.hpp"

namespace {

using uvcluster::Error;
using uvcluster::Ok;
using uvcluster::Result;
using uvcluster::Status;

Result<int> parse(const std::string& s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
    return Error::make("ERR_INVALID_ARG_VALUE", "not a number: '" + s + "'");
  return std::stoi(s);
}

Result<int> half(int n) {
  if (n % 2) return Error::make("ERR_ODD", "odd");
  return n / 2;
}

TEST(Result, HasValueAndValueOr) {
  auto good = parse("42");
  auto bad = parse("x");
  EXPECT_TRUE(good.has_value());
  EXPECT_FALSE(bad.has_value());
  EXPECT_EQ(good.value_or(-1), 42);
  EXPECT_EQ(bad.value_or(-1), -1);
  EXPECT_EQ(Result<std::string>(Error{}).value_or("fallback"), "fallback");
  auto moved = Result<std::unique_ptr<int>>(std::make_unique<int>(7));
  EXPECT_EQ(*std::move(moved).value_or(nullptr), 7);
}

TEST(Result, AndThenChainsAndPassesTheFirstErrorThrough) {
  EXPECT_EQ(parse("42").and_then(half).value(), 21);
  EXPECT_EQ(parse("21").and_then(half).error().code, "ERR_ODD");
  int calls = 0;
  auto r = parse("x").and_then([&](int n) { ++calls; return half(n); });
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(r.error().code, "ERR_INVALID_ARG_VALUE");
  // rvalue: the value is moved into the step
  auto p = Result<std::unique_ptr<int>>(std::make_unique<int>(5));
  auto q = std::move(p).and_then([](std::unique_ptr<int> v) -> Result<int> { return *v + 1; });
  EXPECT_EQ(q.value(), 6);
}

TEST(Result, TransformMapsTheValueOnly) {
  Result<std::string> s = parse("7").transform([](int n) { return std::to_string(n * 2); });
  EXPECT_EQ(s.value(), "14");
  auto e = parse("").transform([](int n) { return n * 2; });
  EXPECT_EQ(e.error().code, "ERR_INVALID_ARG_VALUE");
  int seen = 0;
  Status st = parse("3").transform([&](int n) { seen = n; });  // void -> Status
  EXPECT_TRUE(st.ok());
  EXPECT_EQ(seen, 3);
}

TEST(ResultDeathTest, ValueOnAnErrorNamesTheError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto bad = parse("x");
  EXPECT_DEATH((void)bad.value(), "Result::value\\(\\) on an error: ERR_INVALID_ARG_VALUE: not a number: 'x'");
  EXPECT_DEATH((void)*bad, "ERR_INVALID_ARG_VALUE");
  auto good = parse("1");
  EXPECT_DEATH((void)good.error(), "Result::error\\(\\) on a value");
  // An error type that wraps an Error (execFileSync's) is described by its inner Error.
  Result<std::string, uvcluster::ExecSyncError> sync_bad(
      uvcluster::ExecSyncError{Error::make("ENOENT", "spawnSync /nope ENOENT"), {}, "/nope"});
  EXPECT_DEATH((void)sync_bad.value(), "ENOENT: spawnSync /nope ENOENT");
}

// A passkey can only be built by its class: `{}` from outside (which an aggregate `struct Key {}`
// allows even though its name is private) must not compile.
template <class T, class... Args>
concept brace_key_constructible = requires(Args... args) { T({}, args...); };

static_assert(!brace_key_constructible<uvcluster::ChildProcess, uv_loop_t*>);
static_assert(!brace_key_constructible<uvcluster::cluster::Primary, uv_loop_t*,
                                       uvcluster::cluster::PrimarySettings>);
static_assert(!brace_key_constructible<uvcluster::cluster::ExclusiveWaiter, uv_loop_t*, int,
                                       std::function<void()>>);
static_assert(!brace_key_constructible<uvcluster::cluster::Acceptor, uv_loop_t*, int,
                                       uvcluster::cluster::AcceptorOptions,
                                       uvcluster::cluster::Acceptor::OnConnection>);
static_assert(!brace_key_constructible<uvcluster::cluster::Supervisor, uv_loop_t*,
                                       uvcluster::cluster::SupervisorOptions>);
static_assert(!brace_key_constructible<uvcluster::cluster::Watchdog, uv_loop_t*, std::string>);
// ...and the concept does see a constructor whose first parameter `{}` can build.
struct OpenKeyed {
  struct Key {};
  OpenKeyed(Key, int) {}
};
static_assert(brace_key_constructible<OpenKeyed, int>);

}  // namespace
