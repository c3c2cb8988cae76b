// Issue 8: a frame that nests too deep is refused on its bytes, before its levels are built.
// Building 1,000 nested arrays and then refusing them touched ~64 KB of the primary's heap per
// hostile frame. This binary counts every operator new, which is how nlohmann allocates.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <optional>
#include <new>
#include <string>

#include "ipc/json_fast.hpp"
#include "uvcluster/ipc/framing.hpp"

namespace {
std::atomic<size_t> allocations{0};
}  // namespace

// The replaced pair allocates with malloc and frees with free; GCC sees std::allocator's inlined
// new/delete around it and cannot tell they match.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t n) {
  ++allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

using namespace uvcluster::ipc;

namespace {
std::string nest(size_t levels, const std::string& open, const std::string& close) {
  std::string s;
  for (size_t i = 0; i < levels; ++i) s += open;
  for (size_t i = 0; i < levels; ++i) s += close;
  return s;
}
size_t allocations_of(const std::function<void()>& fn) {
  size_t before = allocations;
  fn();
  return allocations - before;
}
}  // namespace

TEST(IpcDepthPrescan, TooDeepFrameIsRefusedBeforeItsLevelsAreBuilt) {
  // 1,001 levels: the smallest refusal; the fault lab's queryServer with a 10^6-deep address.
  const std::string just_too_deep = nest(kMaxNestingDepth + 1, "[", "]");
  const std::string hostile = "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"queryServer\",\"seq\":999,\"address\":" +
                              nest(1000000, "[", "]") + ",\"port\":0}";
  for (const std::string* text : {&just_too_deep, &hostile}) {
    std::optional<uvcluster::Result<nlohmann::json>> r;
    size_t n = allocations_of([&] { r = parse_frame(*text); });
    ASSERT_FALSE(r->ok());
    EXPECT_EQ(r->error().code, "ERR_IPC_BAD_FRAME");
    EXPECT_NE(r->error().message.find("deeper than 1000 levels"), std::string::npos) << r->error().message;
    // 32 levels (two allocations each) before the scan ahead, a few for the error: not 2,000.
    EXPECT_LT(n, 100u) << text->size() << " bytes";
  }
}

TEST(IpcDepthPrescan, DeepButAllowedFramesStillParse) {
  for (size_t levels : {size_t{31}, size_t{32}, size_t{33}, kMaxNestingDepth}) {
    auto r = parse_frame(nest(levels, "{\"a\":[", "]}"), 2 * levels);
    EXPECT_TRUE(r.ok()) << levels;
  }
  // Exactly at the limit, with wide levels after the scan: parsed, and the scan ran once.
  std::string wide = nest(40, "[", "");
  for (int i = 0; i < 10000; ++i) wide += "[],";
  wide += "[]" + std::string(40, ']');
  EXPECT_TRUE(parse_frame(wide, 41).ok());
  EXPECT_FALSE(parse_frame(wide, 40).ok());
}

TEST(IpcDepthPrescan, ScanCountsBracketsOutsideStringsOnly) {
  using detail_json::nests_deeper_than;
  EXPECT_FALSE(nests_deeper_than("[[]]", 2));
  EXPECT_TRUE(nests_deeper_than("[[[]]]", 2));
  EXPECT_TRUE(nests_deeper_than("[{\"a\":[]}]", 2));
  EXPECT_FALSE(nests_deeper_than("[\"[[[[{{{{\"]", 1));
  EXPECT_FALSE(nests_deeper_than("[\"\\\"[[[[\"]", 1));   // an escaped quote does not end the string
  EXPECT_FALSE(nests_deeper_than("[\"\\\\\"]", 1));       // an escaped backslash does not escape the quote
  EXPECT_TRUE(nests_deeper_than("[\"\\\\\"[[]]]", 2));
  EXPECT_FALSE(nests_deeper_than("[\"é[[[[\"]", 1));      // non-ASCII inside a string
  EXPECT_FALSE(nests_deeper_than("[\"" + std::string(1000, 'x') + "[[[\"]", 1));  // the vector scan
  EXPECT_FALSE(nests_deeper_than("[[]][[]][[]]", 2));     // closing brackets count down
  EXPECT_TRUE(nests_deeper_than("[]", 2, 2));             // levels open before the text
  EXPECT_FALSE(nests_deeper_than("\"\\", 0));             // a truncated escape ends the scan
  EXPECT_EQ(allocations_of([] { (void)nests_deeper_than(std::string(1 << 16, '['), 1000); }), 1u)
      << "only the test's own string";
}
