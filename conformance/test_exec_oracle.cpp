// `uvcluster exec` against its Node twin (fixtures/exec_cli.js): the same flags must print the
// same JSON — error code/message/killed/signal/cmd, stdout and stderr — as Node's execFile/exec
// and execFileSync/execSync give.
#include <gtest/gtest.h>

#include "support.hpp"

using uvc_test::cli;
using uvc_test::fixture;
using uvc_test::node;
using uvc_test::run_capture;

namespace {

struct Case {
  const char* name;
  std::vector<std::string> args;  // flags, "--", FILE, ARGS...
};

nlohmann::json run_json(std::vector<std::string> argv) {
  auto c = run_capture(argv);
  EXPECT_EQ(c.status, 0) << c.err;
  auto j = nlohmann::json::parse(c.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "not JSON: " << c.out;
  return j;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ExecOracle : public testing::TestWithParam<Case> {};

TEST_P(ExecOracle, SameJsonAsNode) {
  const Case& c = GetParam();
  std::vector<std::string> ours = {cli(), "exec"};
  std::vector<std::string> theirs = {node(), fixture("exec_cli.js")};
  ours.insert(ours.end(), c.args.begin(), c.args.end());
  theirs.insert(theirs.end(), c.args.begin(), c.args.end());
  auto expected = run_json(theirs);
  auto actual = run_json(ours);
  EXPECT_EQ(actual, expected) << "node:  " << expected.dump() << "\nours:  " << actual.dump();
}

// A child printing exactly these bytes (printf interprets \x escapes only via octal in dash,
// so the bytes are given as octal escapes).
std::vector<std::string> print(const std::string& octal_escaped) {
  return {"--", "/usr/bin/printf", octal_escaped};
}
std::vector<std::string> with(std::vector<std::string> flags, std::vector<std::string> rest) {
  flags.insert(flags.end(), rest.begin(), rest.end());
  return flags;
}

const std::string k10 = "0123456789";  // 10 bytes, no newline

INSTANTIATE_TEST_SUITE_P(
    Exec, ExecOracle,
    testing::Values(
        Case{"ok", {"--", "/bin/echo", "hello"}},
        Case{"exit_code", {"--shell", "--", "echo out; echo err >&2; exit 3"}},
        Case{"signal", {"--shell", "--", "kill -USR1 $$"}},
        Case{"exec_127", {"--shell", "--", "no_such_command_uvc"}},
        Case{"execfile_enoent", {"--", "/no/such/file", "a", "b"}},
        Case{"shell_quoting", {"--shell", "--", "printf '%s|' \"a b\" 'c\"d' $((1+2))"}},
        Case{"args_not_split", {"--", "/usr/bin/printf", "%s|", "a b", "c'd"}},
        Case{"env", {"--env", "UVC_A=x y", "--env", "PATH=/usr/bin:/bin", "--shell", "--", "echo \"$UVC_A\"; env | sort"}},
        Case{"cwd", {"--cwd", "/tmp", "--", "/bin/pwd"}},
        Case{"timeout", {"--timeout", "100", "--", "/bin/sleep", "10"}},
        Case{"timeout_kill_signal", {"--timeout", "100", "--kill-signal", "SIGKILL", "--", "/bin/sleep", "10"}},
        // Grandchildren holding stdout/stderr (issue 11 item 6): on timeout Node destroys the
        // pipes and kills the child, so the answer comes at the child's death with what was
        // read by then; a grandchild's later output ("late") is never read. When the child has
        // already exited, the timer still fires (Node clears it only at 'close'): the pipes are
        // destroyed, `killed` is true, and a 0 exit is a success.
        Case{"timeout_grandchild_holds_stdout",
             {"--shell", "--timeout", "1500", "--", "(sleep 10; echo late) & (sleep 10; echo late >&2) & sleep 10"}},
        Case{"timeout_after_child_exit_0", {"--shell", "--timeout", "1500", "--", "(sleep 10; echo late) & echo early"}},
        Case{"timeout_after_child_exit_3",
             {"--shell", "--timeout", "1500", "--", "(sleep 10; echo late >&2) & echo early; exit 3"}},
        Case{"maxbuf_grandchild_holds_stdout",
             {"--shell", "--max-buffer", "4", "--", "(sleep 10; echo late) & printf 0123456789; sleep 10"}},
        Case{"maxbuf_cap_minus_1", with({"--max-buffer", "9"}, print(k10))},
        Case{"maxbuf_cap", with({"--max-buffer", "10"}, print(k10))},
        Case{"maxbuf_cap_plus_1", with({"--max-buffer", "11"}, print(k10))},
        Case{"maxbuf_zero", with({"--max-buffer", "0"}, print(k10))},
        Case{"maxbuf_zero_no_output", {"--max-buffer", "0", "--", "/bin/true"}},
        Case{"maxbuf_stderr", {"--max-buffer", "4", "--shell", "--", "printf 0123456789 >&2"}},
        Case{"maxbuf_infinity", {"--max-buffer", "Infinity", "--", "/bin/echo", "x"}},
        // Bytes at the cap: 'ab' + U+4E2D (3 bytes). In buffer mode Node cuts at exact bytes.
        Case{"maxbuf_multibyte_buffer_3", with({"--encoding", "buffer", "--max-buffer", "3"}, print("ab\\344\\270\\255"))},
        Case{"maxbuf_multibyte_buffer_4", with({"--encoding", "buffer", "--max-buffer", "4"}, print("ab\\344\\270\\255"))},
        // utf8 where both rules agree: only ASCII precedes the cap.
        Case{"maxbuf_multibyte_utf8_cap_before_char", with({"--max-buffer", "2"}, print("ab\\344\\270\\255cd"))},
        Case{"buffer_encoding", with({"--encoding", "buffer"}, print("\\000\\377\\001"))},
        Case{"invalid_utf8_replaced", print("a\\377b\\344\\270")},
        Case{"sync_ok", {"--sync", "--", "/bin/echo", "hi"}},
        Case{"sync_exit", {"--sync", "--shell", "--", "echo e >&2; exit 4"}},
        Case{"sync_enoent", {"--sync", "--", "/no/such/file"}},
        Case{"sync_timeout", {"--sync", "--timeout", "100", "--", "/bin/sleep", "10"}},
        Case{"sync_timeout_grandchild_holds_stdout",
             {"--sync", "--shell", "--timeout", "1500", "--", "(sleep 10; echo late) & sleep 10"}},
        Case{"sync_timeout_after_child_exit",
             {"--sync", "--shell", "--timeout", "1500", "--", "(sleep 10; echo late >&2) & echo early"}},
        Case{"sync_buffer", {"--sync", "--encoding", "buffer", "--", "/bin/echo", "hi"}}),
    [](const testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// Divergence, on purpose: with utf8 output Node cuts maxBuffer in UTF-16 code units (so with a
// 4-byte cap it keeps all of "ab中", 5 bytes). uvcluster keeps at most max_buffer bytes and never
// splits a character: "ab". The error is the same.
TEST(ExecMaxBuffer, Utf8CutAtLastWholeCharacterWithinCap) {
  auto ours = run_json({cli(), "exec", "--max-buffer", "4", "--", "/usr/bin/printf", "ab\\344\\270\\255"});
  auto node_json = run_json({node(), fixture("exec_cli.js"), "--max-buffer", "4", "--", "/usr/bin/printf",
                             "ab\\344\\270\\255"});
  EXPECT_EQ(ours["error"], node_json["error"]);
  EXPECT_EQ(ours["stdout"], "ab");
  EXPECT_EQ(node_json["stdout"], "ab\xe4\xb8\xad");  // the documented Node quirk
}

// Sync maxBuffer is summed over stdout+stderr and keeps whole chunks: each stream alone is under
// the cap, together they exceed it. Both sides kill the writer (it never stops on its own).
TEST(ExecSync, MaxBufferSummedOverStreams) {
  std::vector<std::string> args = {"--sync", "--max-buffer", "1000", "--shell", "--",
                                   "head -c 600 /dev/zero; head -c 600 /dev/zero >&2; exec sleep 10"};
  std::vector<std::string> ours = {cli(), "exec"}, theirs = {node(), fixture("exec_cli.js")};
  ours.insert(ours.end(), args.begin(), args.end());
  theirs.insert(theirs.end(), args.begin(), args.end());
  auto a = run_json(ours), e = run_json(theirs);
  EXPECT_EQ(a, e);
  EXPECT_EQ(a["error"]["code"], "ENOBUFS");
  EXPECT_EQ(a["error"]["signal"], "SIGTERM");
  EXPECT_EQ(a["stdout"].get<std::string>().size(), 600u);
}

TEST(ExecCli, BadUsageExitsTwoWithOneLine) {
  for (std::vector<std::string> argv : {std::vector<std::string>{cli(), "exec"},
                                        {cli(), "exec", "--timeout", "-1", "--", "/bin/true"},
                                        {cli(), "exec", "--kill-signal", "SIGNOPE", "--", "/bin/true"},
                                        {cli(), "exec", "--encoding", "latin1", "--", "/bin/true"},
                                        {cli(), "exec", "--bogus", "--", "/bin/true"},
                                        {cli(), "exec", "--", ""}}) {
    auto c = run_capture(argv);
    EXPECT_EQ(c.status, 2) << argv.back();
    EXPECT_EQ(c.out.find("{"), std::string::npos);
    EXPECT_EQ(c.err.rfind("uvcluster exec: ", 0), 0u) << c.err;
  }
  auto help = run_capture({cli(), "exec", "--help"});
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out.find("usage: uvcluster exec"), std::string::npos);
}

}  // namespace
