// SPDX-License-Identifier: Apache-2.0
// Bad input, faults and security, end to end: real BPF, real processes, as
// root. Each bad input gets one line on stderr and a documented exit code, and
// afterwards the kernel holds nothing of ours for the target (bpftool: no
// programs or links whose .rodata targets it, no pins, no lock).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "harness.h"

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kPy = "/usr/bin/python3.11";  // the Debian interpreter: always built (scripts/deps)

std::string tool() { return e2e::binary_dir() + "/asynctrace"; }
std::string program(const std::string& name) { return e2e::source_dir() + "/tests/programs/" + name; }
std::string tmp_path(const std::string& stem) {
  return "/tmp/asynctrace-faults-" + std::to_string(getpid()) + "-" + stem;
}

size_t lines(const std::string& s) { return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')); }
bool has(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

// The kernel holds nothing of ours for `pid` (after a short grace: one-shot
// views detach from a background child).
void expect_released(pid_t pid) {
  const e2e::KernelHold h = e2e::wait_kernel_released(pid);
  EXPECT_TRUE(h.empty()) << "kernel still holds for pid " << pid << ": " << h.progs << " program(s), " << h.links
                         << " link(s), " << h.pins << " pin(s): " << h.detail;
}

std::string attached_line(pid_t pid) {
  return "attached pid=" + std::to_string(pid) + " maps=/sys/fs/bpf/asynctrace/" + std::to_string(pid);
}

// ticker.py's transcript, untraced (no asynctrace at all): what every traced run must print.
std::string untraced_ticker_transcript() {
  e2e::Program plain({kPy, program("ticker.py")});
  EXPECT_TRUE(plain.wait_line("READY", 60s)) << plain.stderr_text();
  plain.signal(SIGUSR1);
  std::string out;
  EXPECT_EQ(plain.wait_exit(60s, &out), 0) << plain.stderr_text();
  return out;
}

bool ends_cleanly(e2e::Program& prog, std::string* out) {
  prog.signal(SIGUSR1);
  return prog.wait_exit(120s, out) == 0;
}

// ---- bad input --------------------------------------------------------------

// A zombie (exited, not yet reaped by its parent, here this test) is no
// process to trace: exit 3, and the line says it is a zombie.
TEST(BadInput, ZombieIsNoSuchProcessAndSaysZombie) {
  e2e::Program py({tool(), "run", "--", kPy, "-c", "print('READY', flush=True)"});
  ASSERT_TRUE(py.wait_line("READY", 60s)) << py.stderr_text();
  const pid_t pid = py.pid();
  ASSERT_TRUE(e2e::poll_until([&] { return e2e::proc_state(pid) == 'Z'; }, 60s)) << "never became a zombie";
  for (const char* cmd : {"pstree", "ps", "stats", "attach"}) {
    SCOPED_TRACE(cmd);
    auto r = e2e::run({tool(), cmd, "-p", std::to_string(pid)});
    EXPECT_EQ(r.exit_code, 3) << r.err;
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    EXPECT_TRUE(has(r.err, "zombie")) << r.err;
    EXPECT_EQ(r.out, "");
  }
  expect_released(pid);
}

// The traced process ends (normally, or killed) while `attach` holds it: the
// holder says so in one line, exits 9 and leaves nothing behind.
TEST(BadInput, ProcessExitsWhileAttachHoldsIt) {
  for (int sig : {SIGUSR1, SIGKILL}) {
    SCOPED_TRACE(sig == SIGKILL ? "SIGKILL" : "normal exit");
    e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
    ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
    const pid_t pid = prog.pid();
    e2e::Program holder({tool(), "attach", "-p", std::to_string(pid)});
    ASSERT_TRUE(holder.wait_line(attached_line(pid), 60s)) << holder.stderr_text();
    prog.signal(sig);
    EXPECT_EQ(holder.wait_exit(60s, nullptr), 9) << holder.stderr_text();
    const std::string err = holder.stderr_text();
    EXPECT_EQ(lines(err), 1u) << err;
    EXPECT_TRUE(has(err, "process " + std::to_string(pid) + " exited while attached")) << err;
    EXPECT_NE(access(("/sys/fs/bpf/asynctrace/" + std::to_string(pid)).c_str(), F_OK), 0) << "pins left";
    expect_released(pid);
    prog.wait_exit(60s, nullptr);
  }
}

// Bad flag values, for every command that takes them: exit 2, one line naming
// the flag, nothing on stdout, nothing attached, and the target unharmed.
TEST(BadInput, BadFlagValuesAreUsageErrorsNamingTheFlag) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  const std::string pid = std::to_string(prog.pid());
  struct Bad {
    std::vector<std::string> args;  // after the command
    std::string flag;               // the line must name it
  };
  const std::vector<Bad> common = {
      {{"-p", pid, "--timeout", "abc"}, "--timeout"},   {{"-p", pid, "--timeout", "-1"}, "--timeout"},
      {{"-p", pid, "--timeout", "0"}, "--timeout"},     {{"-p", pid, "--timeout", "1e3"}, "--timeout"},
      {{"-p", pid, "--format", "xml"}, "--format"},     {{"-p", "0"}, "--pid"},
      {{"-p", "-5"}, "--pid"},                          {{"-p", "99999999999"}, "--pid"},
      {{"-p", "12abc"}, "--pid"},                       {{"-p"}, "--pid"},
      {{}, "--pid"},                                    {{"-p", pid, "--max-tasks", "0"}, "--max-tasks"},
      {{"-p", pid, "--max-tasks", "-1"}, "--max-tasks"}, {{"-p", pid, "--max-tasks", "99999999"}, "--max-tasks"},
  };
  const std::vector<Bad> attach_only = {
      {{"-p", pid, "--duration", "-1"}, "--duration"},
      {{"-p", pid, "--duration", "0"}, "--duration"},
      {{"-p", pid, "--duration", "abc"}, "--duration"},
      {{"-p", pid, "-d", "10parsecs"}, "--duration"},
  };
  for (const char* cmd : {"pstree", "ps", "stats", "attach"}) {
    std::vector<Bad> cases = common;
    if (std::string(cmd) == "attach") cases.insert(cases.end(), attach_only.begin(), attach_only.end());
    for (const Bad& b : cases) {
      std::vector<std::string> argv = {tool(), cmd};
      argv.insert(argv.end(), b.args.begin(), b.args.end());
      std::string shown;
      for (size_t i = 1; i < argv.size(); ++i) shown += argv[i] + " ";
      SCOPED_TRACE(shown);
      auto r = e2e::run(argv, 30s);
      EXPECT_EQ(r.exit_code, 2) << r.err;
      EXPECT_EQ(lines(r.err), 1u) << r.err;
      EXPECT_TRUE(has(r.err, b.flag)) << r.err;
      EXPECT_EQ(r.out, "");
      std::cerr << "[ asynctrace " << shown << "-> " << r.exit_code << ": " << r.err.substr(0, r.err.size() - 1)
                << " ]\n";
    }
  }
  // `run`: no command, a command that does not exist, no runtime for it.
  for (const auto& [args, code, words] : std::vector<std::tuple<std::vector<std::string>, int, std::string>>{
           {{"run"}, 2, "command"},
           {{"run", "--", "/nonexistent/python3"}, 2, "/nonexistent/python3"},
           {{"run", "--python-dir", "/nonexistent", "--", kPy, "-c", "pass"}, 4, "/nonexistent"},
       }) {
    std::vector<std::string> argv = {tool()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = e2e::run(argv, 60s);
    EXPECT_EQ(r.exit_code, code) << r.err;
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    EXPECT_TRUE(has(r.err, words)) << r.err;
    std::cerr << "[ asynctrace " << args[0] << " ... -> " << r.exit_code << ": " << r.err.substr(0, r.err.size() - 1)
              << " ]\n";
  }
  EXPECT_TRUE(e2e::kernel_hold(prog.pid()).empty()) << "a usage error attached something";
  std::string out;
  ASSERT_TRUE(ends_cleanly(prog, &out)) << prog.stderr_text();
  EXPECT_EQ(out, untraced_ticker_transcript());
}

// tracefs missing: the perf-event attach path (ASYNCTRACE_UPROBE_MULTI=0) on
// a machine without the uprobe PMU needs tracefs. Simulated in a private mount
// namespace: empty tmpfs over tracefs, debugfs and the uprobe PMU, and no
// CAP_SYS_ADMIN to mount tracefs back.
TEST(BadInput, TracefsMissingIsTracingUnavailable) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({"unshare", "-m", "--propagation", "private", "sh", "-c",
                     "for d in /sys/kernel/tracing /sys/kernel/debug /sys/bus/event_source/devices/uprobe; do"
                     "  [ ! -e $d ] || mount -t tmpfs none $d || exit 99; done; exec \"$@\"",
                     "sh", "setpriv", "--inh-caps=-all", "--bounding-set=-all,+bpf,+perfmon", "env",
                     "ASYNCTRACE_UPROBE_MULTI=0", tool(), "pstree", "-p", std::to_string(prog.pid())});
  EXPECT_EQ(r.exit_code, 7) << r.err;
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_TRUE(has(r.err, "tracefs")) << r.err;
  EXPECT_EQ(r.out, "");
  std::cerr << "[ tracefs missing -> " << r.exit_code << ": " << r.err << " ]\n";
  expect_released(prog.pid());
  EXPECT_TRUE(ends_cleanly(prog, nullptr)) << prog.stderr_text();
}

// Kernel BTF is not needed: the BPF object has no CO-RE relocations (its one
// kernel type, struct pt_regs, has the x86-64 user ABI's layout), so libbpf
// never reads /sys/kernel/btf/vmlinux. Hidden under an empty tmpfs in a
// private mount namespace, pstree still attaches and shows the program.
TEST(BadInput, KernelBtfIsNotNeeded) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({"unshare", "-m", "--propagation", "private", "sh", "-c",
                     "mount -t tmpfs none /sys/kernel/btf || exit 99; [ ! -e /sys/kernel/btf/vmlinux ] || exit 98; "
                     "exec \"$@\"",
                     "sh", tool(), "pstree", "-p", std::to_string(prog.pid())});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_TRUE(has(r.out, "(T) sleeper-2")) << r.out;
  expect_released(prog.pid());
  EXPECT_TRUE(ends_cleanly(prog, nullptr)) << prog.stderr_text();
}

std::string uname_release() {
  auto r = e2e::run({"uname", "-r"});
  return r.out.substr(0, r.out.find('\n'));
}

// The verifier refusing a program (ASYNCTRACE_TEST_VERIFIER_REJECT=1 makes
// replay_end index a map value with a random number) is no privilege
// problem: exit 7, one line naming the program and the verifier's reason,
// on either attach path; the target runs on, nothing is left attached.
TEST(BadInput, VerifierRejectionIsOneLineNamingProgramAndReason) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  const std::string pid = std::to_string(prog.pid());
  for (const char* multi : {"1", "0"}) {
    SCOPED_TRACE(std::string("ASYNCTRACE_UPROBE_MULTI=") + multi);
    auto r = e2e::run({"env", "ASYNCTRACE_TEST_VERIFIER_REJECT=1", std::string("ASYNCTRACE_UPROBE_MULTI=") + multi,
                       tool(), "pstree", "-p", pid});
    EXPECT_EQ(r.exit_code, 7) << r.err;
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    EXPECT_TRUE(has(r.err, "asynctrace: failed to load BPF program 'replay_end': the kernel's verifier rejected it: "))
        << r.err;
    // 6.1 to 6.18 say "R2 unbounded memory access, make sure to bounds check any such access".
    EXPECT_TRUE(has(r.err, "unbounded memory access") || has(r.err, "invalid access to map value") ||
                has(r.err, "outside of the allowed memory range"))
        << r.err;
    EXPECT_TRUE(has(r.err, "(Linux " + uname_release() + "); rerun with --verbose for the verifier log")) << r.err;
    EXPECT_FALSE(has(r.err, "privilege")) << r.err;
    EXPECT_EQ(r.out, "");
    std::cerr << "[ verifier rejection -> " << r.exit_code << ": " << r.err << " ]\n";
    const char state = e2e::proc_state(prog.pid());
    EXPECT_TRUE(state != 0 && state != 'Z') << "the target died: state " << state;
    expect_released(prog.pid());
    EXPECT_EQ(e2e::asynctrace_uprobes(), "");
  }
  EXPECT_TRUE(ends_cleanly(prog, nullptr)) << prog.stderr_text();
}

// With --verbose the whole verifier log reaches stderr, never cut (it used to
// stop at 1 KB, before the reason): its reason line, the statistics after it
// and libbpf's end marker, then the one-line failure last.
TEST(BadInput, VerifierRejectionWithVerboseShowsTheWholeLog) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({"env", "ASYNCTRACE_TEST_VERIFIER_REJECT=1", tool(), "pstree", "-p", std::to_string(prog.pid()),
                     "--verbose"});
  EXPECT_EQ(r.exit_code, 7) << r.err;
  const size_t begin = r.err.find("libbpf: prog 'replay_end': -- BEGIN PROG LOAD LOG --\n");
  const size_t end = r.err.find("\n-- END PROG LOAD LOG --\n");
  ASSERT_NE(begin, std::string::npos) << r.err;
  ASSERT_NE(end, std::string::npos) << r.err;
  const std::string log = r.err.substr(begin, end - begin);
  EXPECT_GT(log.size(), 1024u) << "a log this short does not show that nothing is cut";
  EXPECT_TRUE(has(log, "\nR2 unbounded memory access") || has(log, "\ninvalid access to map value") ||
              has(log, "outside of the allowed memory range"))
      << log;
  EXPECT_TRUE(has(log, "\nprocessed ")) << log;  // the statistics follow the reason: the log is whole
  const std::string last = r.err.substr(r.err.rfind('\n', r.err.size() - 2) + 1);
  EXPECT_TRUE(has(last, "asynctrace: failed to load BPF program 'replay_end': the kernel's verifier rejected it: "))
      << last;
  EXPECT_FALSE(has(last, "rerun with --verbose")) << last;
  EXPECT_TRUE(has(r.err, "asynctrace: kernel " + uname_release() + ": ringbuf yes, bpf_loop yes")) << r.err;
  EXPECT_EQ(r.out, "");
  expect_released(prog.pid());
  EXPECT_TRUE(ends_cleanly(prog, nullptr)) << prog.stderr_text();
}

// A required kernel feature missing (ASYNCTRACE_TEST_HIDE_FEATURE=bpf_loop
// pretends so) is found before loading: exit 7, one line naming the feature
// and the kernel that added it, for pstree and for `features`; the target
// runs on untouched. On this kernel `features` finds every required feature.
TEST(BadInput, MissingKernelFeatureIsNamedBeforeLoading) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  const std::string want = "asynctrace: failed to load BPF object 'asynctrace': this kernel (" + uname_release() +
                           ") lacks the bpf_loop helper (Linux 5.17+)\n";
  auto r = e2e::run({"env", "ASYNCTRACE_TEST_HIDE_FEATURE=bpf_loop", tool(), "pstree", "-p",
                     std::to_string(prog.pid())});
  EXPECT_EQ(r.exit_code, 7) << r.err;
  EXPECT_EQ(r.err, want);
  EXPECT_EQ(r.out, "");
  std::cerr << "[ missing feature -> " << r.exit_code << ": " << r.err << " ]\n";
  EXPECT_TRUE(e2e::kernel_hold(prog.pid()).empty()) << "loaded despite a missing feature";

  auto f = e2e::run({"env", "ASYNCTRACE_TEST_HIDE_FEATURE=bpf_loop", tool(), "features", "--format", "json"});
  EXPECT_EQ(f.exit_code, 7) << f.err;
  EXPECT_EQ(f.err, want);
  const json j = json::parse(f.out);
  EXPECT_EQ(j["ok"], false);
  for (const auto& k : j["features"])  // optional ones (uprobe_multi: 6.6) depend on the kernel
    if (k["required"] == true) EXPECT_EQ(k["present"], k["name"] != "bpf_loop") << k.dump();

  auto all = e2e::run({tool(), "features"});
  EXPECT_EQ(all.exit_code, 0) << all.err;
  EXPECT_EQ(all.err, "");
  EXPECT_TRUE(has(all.out, "kernel " + uname_release() + "\n")) << all.out;
  EXPECT_FALSE(has(all.out, "required  no ")) << all.out;

  expect_released(prog.pid());
  std::string out;
  ASSERT_TRUE(ends_cleanly(prog, &out)) << prog.stderr_text();
  EXPECT_EQ(out, untraced_ticker_transcript());
}

// A coroutine from a module imported out of a file whose path holds a
// newline, ESC and BEL: pstree shows the path escaped, ps shows the task named
// after it escaped, never a raw control byte; JSON keeps it exact.
TEST(BadInput, ModuleFileNameWithControlCharactersIsEscaped) {
  const std::string truth_path = tmp_path("evil-module.json");
  struct Unlink {
    std::string path;
    ~Unlink() { unlink(path.c_str()); }
  } cleanup{truth_path};
  e2e::Program prog({tool(), "run", "--", kPy, program("evil_module.py"), truth_path}, e2e::source_dir() + "/tests/programs");
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  const json truth = json::parse(e2e::read_file(truth_path));
  std::string evil_path;
  for (const auto& t : truth["tasks"]) {
    for (const auto& f : t["stack"]) {
      if (f["function"] == "evil_coro") evil_path = f["file"];
    }
  }
  ASSERT_TRUE(has(evil_path, "\n") && has(evil_path, "\x1b")) << evil_path;
  const std::string pid = std::to_string(prog.pid());

  auto tree = e2e::run({tool(), "pstree", "-p", pid});
  ASSERT_EQ(tree.exit_code, 0) << tree.err;
  auto ps = e2e::run({tool(), "ps", "-p", pid});
  ASSERT_EQ(ps.exit_code, 0) << ps.err;
  for (const std::string* text : {&tree.out, &ps.out}) {
    for (char c : std::string("\x1b\x07\r")) EXPECT_FALSE(has(*text, std::string(1, c))) << *text;
  }
  EXPECT_TRUE(has(tree.out, "dir\\nwith\\x1b[31mred/mod\\x1b]0;title\\x07\\n.py:2")) << tree.out;
  EXPECT_TRUE(has(ps.out, "dir\\nwith\\x1b[31mred/mod\\x1b]0;tit")) << ps.out;
  // Line by line what Python 3.14 would print (escaped), from the program's own truth.
  auto want_tree = e2e::run({"python3", e2e::source_dir() + "/tests/e2e/expect.py", truth_path, "pstree"});
  EXPECT_EQ(e2e::tree_paths(tree.out), e2e::tree_paths(want_tree.out)) << tree.out;
  auto want_ps = e2e::run({"python3", e2e::source_dir() + "/tests/e2e/expect.py", truth_path, "ps"});
  EXPECT_EQ(e2e::sorted_lines(ps.out, 2), e2e::sorted_lines(want_ps.out, 2)) << ps.out;

  auto j = e2e::run({tool(), "pstree", "-p", pid, "--format", "json"});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  bool found = false;
  const json got = json::parse(j.out);
  for (const auto& t : got["tasks"]) {
    for (const auto& f : t["stack"]) found |= f["file"] == evil_path;
  }
  EXPECT_TRUE(found) << "JSON lost the exact file name";
  std::string out;
  EXPECT_TRUE(ends_cleanly(prog, &out)) << prog.stderr_text();
  EXPECT_TRUE(has(out, "file: True 14")) << out;
  expect_released(prog.pid());
}

// ---- faults -----------------------------------------------------------------

// The runtime's module file replaced under a running program (a package
// upgrade): the process still maps the old, deleted file; it is traced
// through /proc/PID/map_files, with the same tree as before.
TEST(Faults, RuntimeFileReplacedWhileRunning) {
  const std::string dir = tmp_path("pydir");
  ASSERT_EQ(e2e::run({"cp", "-r", e2e::binary_dir() + "/python", dir}).exit_code, 0);
  e2e::Program prog({tool(), "run", "--python-dir", dir, "--", kPy, e2e::source_dir() + "/examples/demo.py"});
  ASSERT_TRUE(prog.wait_line("serving", 60s)) << prog.stderr_text();
  const std::string pid = std::to_string(prog.pid());
  auto before = e2e::run({tool(), "pstree", "-p", pid});
  ASSERT_EQ(before.exit_code, 0) << before.err;
  // Replace the module the way package managers do: a new file renamed over it.
  auto mv = e2e::run({"sh", "-c", "for f in " + dir + "/cp311/asynctrace/_asynctrace*.so; do cp \"$f\" \"$f.new\" && mv \"$f.new\" \"$f\"; done"});
  ASSERT_EQ(mv.exit_code, 0) << mv.err;
  ASSERT_TRUE(has(e2e::read_file("/proc/" + pid + "/maps"), "_asynctrace.cpython-311-x86_64-linux-gnu.so (deleted)"));
  auto after = e2e::run({tool(), "pstree", "-p", pid});
  EXPECT_EQ(after.exit_code, 0) << after.err;
  EXPECT_EQ(e2e::tree_paths(after.out), e2e::tree_paths(before.out)) << after.out;
  prog.signal(SIGTERM);
  std::string out;
  prog.wait_exit(30s, &out);
  expect_released(prog.pid());
  e2e::run({"rm", "-rf", dir});
}

// Several tracers on one process at once: three one-shot views started
// together (each attaches; one replay serves all), then a holder, a second
// `attach` (refused at once: one line, exit 7) and views from the pins
// meanwhile. All detach; the process never notices.
TEST(Faults, SeveralTracersAtOnceThenAllDetach) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  const pid_t pid = prog.pid();
  const std::string spid = std::to_string(pid);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("one-shot round " + std::to_string(round));
    e2e::Program a({tool(), "pstree", "-p", spid});
    e2e::Program b({tool(), "ps", "-p", spid, "--format", "json"});
    e2e::Program c({tool(), "stats", "-p", spid});
    std::string ta, tb, tc;
    EXPECT_EQ(a.wait_exit(60s, &ta), 0) << a.stderr_text();
    EXPECT_EQ(b.wait_exit(60s, &tb), 0) << b.stderr_text();
    EXPECT_EQ(c.wait_exit(60s, &tc), 0) << c.stderr_text();
    for (const char* name : {"(T) sleeper-0", "(T) sleeper-1", "(T) sleeper-2"}) EXPECT_TRUE(has(ta, name)) << ta;
    std::set<std::string> names;
    const json jb = json::parse(tb);
    for (const auto& t : jb["tasks"]) names.insert(t["name"].get<std::string>());
    for (const char* name : {"sleeper-0", "sleeper-1", "sleeper-2"}) EXPECT_TRUE(names.count(name)) << tb;
    EXPECT_TRUE(has(tc, "complete")) << tc;
  }
  {
    e2e::Program holder({tool(), "attach", "-p", spid});
    ASSERT_TRUE(holder.wait_line(attached_line(pid), 60s)) << holder.stderr_text();
    auto second = e2e::run({tool(), "attach", "-p", spid});
    EXPECT_EQ(second.exit_code, 7) << second.err;
    EXPECT_EQ(lines(second.err), 1u) << second.err;
    EXPECT_TRUE(has(second.err, "another 'asynctrace attach' holds it")) << second.err;
    EXPECT_LT(second.seconds, 1.0) << "the second attach should refuse at once, not wait for a replay";
    std::cerr << "[ second attach -> " << second.exit_code << ": " << second.err << " ]\n";
    e2e::Program tree({tool(), "pstree", "-p", spid});
    e2e::Program stats({tool(), "stats", "-p", spid, "--format", "json"});
    std::string tt, ts;
    EXPECT_EQ(tree.wait_exit(60s, &tt), 0) << tree.stderr_text();
    EXPECT_EQ(stats.wait_exit(60s, &ts), 0) << stats.stderr_text();
    EXPECT_TRUE(has(tt, "(T) sleeper-2")) << tt;
    EXPECT_TRUE(json::parse(ts)["complete"].get<bool>()) << ts;
    holder.signal(SIGINT);
    EXPECT_EQ(holder.wait_exit(60s, nullptr), 0) << holder.stderr_text();
    EXPECT_EQ(holder.stderr_text(), "");
  }
  expect_released(pid);
  std::string out;
  ASSERT_TRUE(ends_cleanly(prog, &out)) << prog.stderr_text();
  EXPECT_EQ(out, untraced_ticker_transcript());
}

// Tracers arriving while another one's replay is in flight (10,000 tasks,
// staggered starts). Two races: a tracer that attaches during a replay must
// not count that replay's end as its own (it would show a part of the tasks
// with "complete": true; the BPF side now requires the replay's begin), and a
// tracer arriving while another holds replay__end must still be answered
// (replay request semaphores).
TEST(Faults, StaggeredOneShotTracersEachSeeTheWholeReplay) {
  const std::string truth_path = tmp_path("staggered.json");
  e2e::Program prog({tool(), "run", "--", kPy, program("many_tasks.py"), truth_path},
                    e2e::source_dir() + "/tests/programs");
  ASSERT_TRUE(prog.wait_line("READY", 120s)) << prog.stderr_text();
  const size_t want = json::parse(e2e::read_file(truth_path))["tasks"].size();
  const std::string spid = std::to_string(prog.pid());
  for (int round = 0; round < 10; ++round) {
    std::vector<std::unique_ptr<e2e::Program>> views;
    for (int k = 0; k < 3; ++k) {
      views.push_back(std::make_unique<e2e::Program>(
          std::vector<std::string>{"sh", "-c", "sleep 0.0" + std::to_string((round * 3 + k) * 7 % 10) + "$0; exec \"$@\"",
                                   std::to_string(k * 3), tool(), "stats", "-p", spid, "--format", "json"}));
    }
    for (auto& v : views) {
      std::string out;
      ASSERT_EQ(v->wait_exit(120s, &out), 0) << v->stderr_text();
      EXPECT_EQ(json::parse(out)["tasks"].get<size_t>(), want) << "round " << round;
    }
  }
  EXPECT_TRUE(ends_cleanly(prog, nullptr));
  expect_released(prog.pid());
  unlink(truth_path.c_str());
}

// Drives forker.py: fork, `while_forked(child)` with both alive, the child's
// end, the parent's end. Returns the parent's transcript (the child's lines too).
std::string drive_forker(e2e::Program& prog, const std::function<void(pid_t)>& while_forked) {
  prog.signal(SIGUSR2);
  auto line = prog.wait_prefix("CHILD READY ", 60s);
  if (!line) {
    ADD_FAILURE() << "no child: " << prog.stderr_text();
    return "";
  }
  const pid_t child = std::stoi(line->substr(12));
  while_forked(child);
  kill(child, SIGUSR1);
  EXPECT_TRUE(prog.wait_prefix("child result:", 60s)) << prog.stderr_text();
  std::string out;
  EXPECT_TRUE(ends_cleanly(prog, &out)) << prog.stderr_text();
  const auto at = out.find("CHILD READY ");
  if (at != std::string::npos) out.replace(at, out.find('\n', at) - at, "CHILD READY <pid>");
  return out;
}

// fork() while traced: the child runs its own loop and is not traced (its
// tasks never reach the parent's maps); its probes' semaphores, copied from
// the parent, fall back to zero when the parent's tracer detaches; a one-shot
// view of the child works on its own. The parent stays traced correctly.
TEST(Faults, ForkWhileTraced) {
  std::string traced_out;
  {
    e2e::Program prog({tool(), "run", "--", kPy, program("forker.py"), "--semaphores"});
    ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
    const pid_t parent = prog.pid();
    e2e::Program holder({tool(), "attach", "-p", std::to_string(parent)});
    ASSERT_TRUE(holder.wait_line(attached_line(parent), 60s)) << holder.stderr_text();
    traced_out = drive_forker(prog, [&](pid_t child) {
      auto tree = e2e::run({tool(), "pstree", "-p", std::to_string(parent)});  // from the pins
      EXPECT_EQ(tree.exit_code, 0) << tree.err;
      for (const char* name : {"(T) parent-0", "(T) parent-1", "(T) parent-2"})
        EXPECT_TRUE(has(tree.out, name)) << tree.out;
      EXPECT_FALSE(has(tree.out, "child-")) << "the child's tasks reached the parent's maps:\n" << tree.out;
      auto st = e2e::run({tool(), "stats", "-p", std::to_string(parent), "--format", "json"});
      EXPECT_EQ(st.exit_code, 0) << st.err;
      if (st.exit_code == 0) {
        EXPECT_EQ(json::parse(st.out)["pid"], parent);
        EXPECT_TRUE(json::parse(st.out)["complete"].get<bool>());
      }
      auto ctree = e2e::run({tool(), "pstree", "-p", std::to_string(child)});  // the child on its own
      EXPECT_EQ(ctree.exit_code, 0) << ctree.err;
      EXPECT_TRUE(has(ctree.out, "(T) child-0") && has(ctree.out, "(T) child-1")) << ctree.out;
      holder.signal(SIGINT);
      EXPECT_EQ(holder.wait_exit(60s, nullptr), 0) << holder.stderr_text();
      expect_released(parent);
      expect_released(child);
    });
    // The child ended after every tracer had gone: no probe of it was left armed.
    EXPECT_TRUE(has(prog.stderr_text(), "child semaphores raised: 0\n")) << prog.stderr_text();
  }
  e2e::Program plain({kPy, program("forker.py")});
  ASSERT_TRUE(plain.wait_line("READY", 60s)) << plain.stderr_text();
  EXPECT_EQ(traced_out, drive_forker(plain, [](pid_t) {}));
  EXPECT_TRUE(has(traced_out, "child result: (59700, ['CancelledError', 'CancelledError'])")) << traced_out;
}

// After fork the child still holds the parent's Task objects (their loop
// never runs in the child). Python's all_tasks() in the child does not list
// them, and neither does the runtime's replay: only loops that created or
// stepped a task since the fork count (docs/python-runtime.md).
TEST(Faults, ForkedChildShowsOnlyItsOwnTasks) {
  e2e::Program prog({tool(), "run", "--", kPy, program("forker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  drive_forker(prog, [&](pid_t child) {
    auto ctree = e2e::run({tool(), "pstree", "-p", std::to_string(child)});
    EXPECT_EQ(ctree.exit_code, 0) << ctree.err;
    EXPECT_TRUE(has(ctree.out, "(T) child-0")) << ctree.out;
    EXPECT_FALSE(has(ctree.out, "parent-")) << "the parent's tasks shown as the child's:\n" << ctree.out;
    expect_released(child);
  });
}

// exec() while `attach` holds the process: the traced program is gone though
// the pid lives on. The holder says so in one line, exits 9 and unpins; the
// new program (asyncio again, with the runtime) is then traced afresh, with
// none of the old program's tasks.
TEST(Faults, ExecWhileAttachHoldsIt) {
  std::string traced_out;
  {
    e2e::Program prog({tool(), "run", "--", kPy, program("execer.py"), "--semaphores"});
    ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
    const pid_t pid = prog.pid();
    e2e::Program holder({tool(), "attach", "-p", std::to_string(pid)});
    ASSERT_TRUE(holder.wait_line(attached_line(pid), 60s)) << holder.stderr_text();
    prog.signal(SIGUSR2);
    ASSERT_TRUE(prog.wait_line("AFTER READY", 60s)) << prog.stderr_text();
    EXPECT_EQ(holder.wait_exit(60s, nullptr), 9) << holder.stderr_text();
    const std::string err = holder.stderr_text();
    EXPECT_EQ(lines(err), 1u) << err;
    EXPECT_TRUE(has(err, "process " + std::to_string(pid) + " replaced its program (exec of '" + kPy + "')")) << err;
    expect_released(pid);

    auto tree = e2e::run({tool(), "pstree", "-p", std::to_string(pid)});
    EXPECT_EQ(tree.exit_code, 0) << tree.err;
    EXPECT_TRUE(has(tree.out, "(T) after-0") && has(tree.out, "(T) after-1")) << tree.out;
    EXPECT_FALSE(has(tree.out, "before-")) << "tasks of the replaced program:\n" << tree.out;
    expect_released(pid);  // the one-shot's detach, too
    EXPECT_TRUE(ends_cleanly(prog, &traced_out)) << prog.stderr_text();
    EXPECT_TRUE(has(prog.stderr_text(), "semaphores raised at exit: 0\n")) << prog.stderr_text();
  }
  e2e::Program plain({kPy, program("execer.py")});
  ASSERT_TRUE(plain.wait_line("READY", 60s)) << plain.stderr_text();
  plain.signal(SIGUSR2);
  ASSERT_TRUE(plain.wait_line("AFTER READY", 60s)) << plain.stderr_text();
  std::string plain_out;
  EXPECT_TRUE(ends_cleanly(plain, &plain_out));
  EXPECT_EQ(traced_out, plain_out);
}

// tid of every task named `prefix`* in a pstree JSON (empty if none).
std::map<std::string, int> tids_of(const std::string& json_text, const std::string& prefix) {
  std::map<std::string, int> out;
  const json got = json::parse(json_text);
  for (const auto& t : got["tasks"]) {
    const std::string name = t["name"];
    if (name.rfind(prefix, 0) == 0) out[name] = t["tid"].get<int>();
  }
  return out;
}

// Event loops started in new threads while traced show up, with their thread,
// as soon as they run: from the events (holder attached before they start)
// and from a replay (one-shot view after the holder left).
TEST(Faults, NewLoopsInNewThreadsWhileTraced) {
  std::string traced_out;
  {
    e2e::Program prog({tool(), "run", "--", kPy, program("late_loops.py")});
    ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
    const std::string pid = std::to_string(prog.pid());
    e2e::Program holder({tool(), "attach", "-p", pid});
    ASSERT_TRUE(holder.wait_line(attached_line(prog.pid()), 60s)) << holder.stderr_text();

    prog.signal(SIGUSR2);
    auto l0 = prog.wait_prefix("LOOP 0 READY ", 60s);
    ASSERT_TRUE(l0) << prog.stderr_text();
    const int tid0 = std::stoi(l0->substr(13));
    auto j = e2e::run({tool(), "pstree", "-p", pid, "--format", "json"});  // pinned maps: events only
    ASSERT_EQ(j.exit_code, 0) << j.err;
    EXPECT_EQ(tids_of(j.out, "late-"), (std::map<std::string, int>{{"late-0-0", tid0}, {"late-0-1", tid0}})) << j.out;
    EXPECT_EQ(tids_of(j.out, "main-sleeper"), (std::map<std::string, int>{{"main-sleeper", prog.pid()}}));
    holder.signal(SIGINT);
    EXPECT_EQ(holder.wait_exit(60s, nullptr), 0) << holder.stderr_text();

    prog.signal(SIGUSR2);
    auto l1 = prog.wait_prefix("LOOP 1 READY ", 60s);
    ASSERT_TRUE(l1) << prog.stderr_text();
    const int tid1 = std::stoi(l1->substr(13));
    auto r = e2e::run({tool(), "pstree", "-p", pid, "--format", "json"});  // one-shot: the replay
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(tids_of(r.out, "late-"), (std::map<std::string, int>{{"late-0-0", tid0},
                                                                   {"late-0-1", tid0},
                                                                   {"late-1-0", tid1},
                                                                   {"late-1-1", tid1}}))
        << r.out;
    auto text = e2e::run({tool(), "pstree", "-p", pid});
    EXPECT_TRUE(has(text.out, "(T) late-1-1")) << text.out;
    EXPECT_TRUE(ends_cleanly(prog, &traced_out)) << prog.stderr_text();
    expect_released(prog.pid());
  }
  EXPECT_TRUE(has(traced_out, "results: [[0, 1], [10, 11]]")) << traced_out;
  e2e::Program plain({kPy, program("late_loops.py")});
  ASSERT_TRUE(plain.wait_line("READY", 60s));
  for (int k = 0; k < 2; ++k) {
    plain.signal(SIGUSR2);
    ASSERT_TRUE(plain.wait_prefix("LOOP " + std::to_string(k) + " READY ", 60s));
  }
  std::string plain_out;
  EXPECT_TRUE(ends_cleanly(plain, &plain_out));
  // Thread ids differ from run to run; everything else is the same.
  auto no_tids = [](std::string s) {
    std::string out;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);) out += (l.rfind("LOOP ", 0) == 0 ? l.substr(0, 12) : l) + "\n";
    return out;
  };
  EXPECT_EQ(no_tids(traced_out), no_tids(plain_out));
}

// Both cores busy with nice-0 spinners while the tool (and the traced program)
// run at the test's niceness: the one-shot view still gets its replay within
// the default --timeout (2 s), and `attach` plus a pinned view work too.
TEST(Faults, AnswersUnderFullCpuLoad) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  const std::string pid = std::to_string(prog.pid());
  std::vector<std::unique_ptr<e2e::Program>> burners;
  for (long i = 0; i < std::max(2L, sysconf(_SC_NPROCESSORS_ONLN)); ++i) {
    burners.push_back(std::make_unique<e2e::Program>(std::vector<std::string>{"sh", "-c", "while :; do :; done"}));
    ASSERT_EQ(setpriority(PRIO_PROCESS, static_cast<id_t>(burners.back()->pid()), 0), 0);
  }
  usleep(300 * 1000);  // let them take the cores
  for (int i = 0; i < 3; ++i) {
    auto r = e2e::run({tool(), "pstree", "-p", pid}, 120s);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(has(r.out, "(T) sleeper-0")) << r.out;
    std::cerr << "[ pstree under load: " << r.seconds << " s, exit " << r.exit_code << " ]\n";
  }
  {
    e2e::Program holder({tool(), "attach", "-p", pid});
    ASSERT_TRUE(holder.wait_line(attached_line(prog.pid()), 120s)) << holder.stderr_text();
    auto r = e2e::run({tool(), "ps", "-p", pid}, 120s);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(has(r.out, "sleeper-2")) << r.out;
    std::cerr << "[ ps from pins under load: " << r.seconds << " s ]\n";
    holder.signal(SIGINT);
    EXPECT_EQ(holder.wait_exit(120s, nullptr), 0) << holder.stderr_text();
  }
  burners.clear();
  expect_released(prog.pid());
  std::string out;
  ASSERT_TRUE(ends_cleanly(prog, &out)) << prog.stderr_text();
  EXPECT_EQ(out, untraced_ticker_transcript());
}

// ---- security -----------------------------------------------------------------

mode_t mode_of(const std::string& path, uid_t* owner) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return 0;
  *owner = st.st_uid;
  return st.st_mode & 07777;
}

// What `attach` leaves on disk is root's alone: directories 0700, files 0600,
// even with umask 000 and directories an older version left world-readable.
TEST(Security, PinsAndLockArePrivate) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  const std::string pid = std::to_string(prog.pid());
  for (const char* dir : {"/run/asynctrace", "/sys/fs/bpf/asynctrace"}) chmod(dir, 0755);  // if they exist
  e2e::Program holder({"sh", "-c", "umask 000; exec \"$@\"", "sh", tool(), "attach", "-p", pid});
  ASSERT_TRUE(holder.wait_line(attached_line(prog.pid()), 60s)) << holder.stderr_text();
  const std::string pins = "/sys/fs/bpf/asynctrace/" + pid;
  for (const auto& [path, want] : std::vector<std::pair<std::string, mode_t>>{
           {"/run/asynctrace", 0700},
           {"/run/asynctrace/" + pid + ".lock", 0600},
           {"/sys/fs/bpf/asynctrace", 0700},
           {pins, 0700},
           {pins + "/tasks", 0600},
           {pins + "/codes", 0600},
           {pins + "/procs", 0600},
       }) {
    uid_t owner = 99;
    EXPECT_EQ(mode_of(path, &owner), want) << path;
    EXPECT_EQ(owner, 0u) << path;
  }
  holder.signal(SIGINT);
  EXPECT_EQ(holder.wait_exit(60s, nullptr), 0) << holder.stderr_text();
  expect_released(prog.pid());
  EXPECT_TRUE(ends_cleanly(prog, nullptr));
}

// The least privilege docs/security.md states, checked: CAP_BPF + CAP_PERFMON
// alone (no CAP_SYS_ADMIN, no CAP_SYS_PTRACE) suffice for a one-shot view,
// even for an unprivileged user viewing root's process, and for `attach` as
// uid 0 (the pins and the lock live in root's directories).
TEST(Security, CapBpfAndCapPerfmonSuffice) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  const std::string pid = std::to_string(prog.pid());
  auto root_caps = e2e::run({"setpriv", "--inh-caps=-all", "--bounding-set=-all,+bpf,+perfmon", tool(), "pstree",
                             "-p", pid});
  EXPECT_EQ(root_caps.exit_code, 0) << root_caps.err;
  EXPECT_TRUE(has(root_caps.out, "(T) sleeper-0")) << root_caps.out;
  auto nobody = e2e::run({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all,+bpf,+perfmon",
                          "--ambient-caps=-all,+bpf,+perfmon", "--bounding-set=-all,+bpf,+perfmon", tool(), "ps", "-p",
                          pid});
  EXPECT_EQ(nobody.exit_code, 0) << nobody.err;
  EXPECT_TRUE(has(nobody.out, "sleeper-1")) << nobody.out;
  {
    e2e::Program holder({"setpriv", "--inh-caps=-all", "--bounding-set=-all,+bpf,+perfmon", tool(), "attach", "-p", pid});
    ASSERT_TRUE(holder.wait_line(attached_line(prog.pid()), 60s)) << holder.stderr_text();
    auto r = e2e::run({tool(), "ps", "-p", pid});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    holder.signal(SIGINT);
    EXPECT_EQ(holder.wait_exit(60s, nullptr), 0) << holder.stderr_text();
  }
  // Without CAP_PERFMON: refused up front, and the line names both capabilities.
  auto bpf_only = e2e::run({"setpriv", "--inh-caps=-all", "--bounding-set=-all,+bpf", tool(), "pstree", "-p", pid});
  EXPECT_EQ(bpf_only.exit_code, 6) << bpf_only.err;
  EXPECT_EQ(lines(bpf_only.err), 1u) << bpf_only.err;
  EXPECT_TRUE(has(bpf_only.err, "CAP_BPF") && has(bpf_only.err, "CAP_PERFMON")) << bpf_only.err;
  expect_released(prog.pid());
  EXPECT_TRUE(ends_cleanly(prog, nullptr));
}

// The tool only reads: its BPF programs call no helper that writes user
// memory or acts on the process, and the binary imports nothing that writes
// another process's memory.
TEST(Security, ProgramsOnlyReadTheTracedProcess) {
  e2e::Program prog({tool(), "run", "--", kPy, program("ticker.py")});
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  {
    e2e::Program holder({tool(), "attach", "-p", std::to_string(prog.pid())});
    ASSERT_TRUE(holder.wait_line(attached_line(prog.pid()), 60s)) << holder.stderr_text();
    const e2e::KernelHold h = e2e::kernel_hold(prog.pid());
    EXPECT_GE(h.progs, 2) << h.detail;
    for (int id : h.prog_ids) {
      auto x = e2e::run({"bpftool", "prog", "dump", "xlated", "id", std::to_string(id)});
      ASSERT_EQ(x.exit_code, 0) << x.err;
      EXPECT_TRUE(has(x.out, "probe_read_user")) << "prog " << id << " reads user memory with bpf_probe_read_user";
      for (const char* bad : {"probe_write_user", "send_signal", "override_return", "copy_from_user_task"})
        EXPECT_FALSE(has(x.out, bad)) << "prog " << id << " calls " << bad;
    }
    holder.signal(SIGINT);
    EXPECT_EQ(holder.wait_exit(60s, nullptr), 0);
  }
  auto nm = e2e::run({"nm", "-D", "--undefined-only", tool()});
  ASSERT_EQ(nm.exit_code, 0) << nm.err;
  for (const char* bad : {"ptrace", "process_vm_writev", "process_vm_readv", "pidfd_getfd"})
    EXPECT_FALSE(has(nm.out, std::string(" ") + bad + "\n")) << bad;
  expect_released(prog.pid());
  EXPECT_TRUE(ends_cleanly(prog, nullptr));
}

}  // namespace
