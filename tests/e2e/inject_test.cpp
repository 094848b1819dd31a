// SPDX-License-Identifier: Apache-2.0
// Unprepared CPython 3.14+ processes (docs/python.md, "Unprepared 3.14
// processes"): started with the plain interpreter, no PYTHONPATH, no
// asynctrace; the tool loads the runtime through sys.remote_exec and then
// traces as usual. Registered per interpreter the build found (3.14+ in
// versions.txt, 3.13 for the refusal, free-threaded ones in
// freethreaded.txt): never skipped.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "harness.h"

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Py {
  std::string tag, path;
  std::string name;  // the test's suffix: the tag, numbered from the second interpreter of a tag
};
void PrintTo(const Py& p, std::ostream* os) { *os << p.path; }
std::string py_name(const ::testing::TestParamInfo<Py>& i) { return i.param.name; }

// One entry per interpreter (a symlink and its target are one), named
// uniquely: gtest refuses two tests of one name.
void add_unique(std::vector<Py>* out, const std::string& tag, const std::string& path) {
  std::error_code ec;
  const auto real = std::filesystem::canonical(path, ec);
  int same_tag = 0;
  for (const Py& p : *out) {
    if (!ec && std::filesystem::canonical(p.path, ec) == real) return;
    same_tag += p.tag == tag;
  }
  out->push_back({tag, path, same_tag ? tag + "_" + std::to_string(same_tag + 1) : tag});
}

int minor_of(const std::string& tag) { return std::stoi(tag.substr(3)); }  // "cp314", "cp314t"

std::vector<Py> pythons(int min_minor, int max_minor) {
  std::vector<Py> out;
  for (const auto& [tag, py] : e2e::built_pythons())
    if (minor_of(tag) >= min_minor && minor_of(tag) <= max_minor) add_unique(&out, tag, py);
  return out;
}

// build/python/freethreaded.txt: "cp314t /opt/python3.14t/bin/python3.14t".
std::vector<Py> freethreaded() {
  std::vector<Py> out;
  std::istringstream in(e2e::read_file(e2e::binary_dir() + "/python/freethreaded.txt"));
  std::string tag, path;
  while (in >> tag >> path)
    if (minor_of(tag) >= 14) add_unique(&out, tag, path);
  return out;
}

std::string programs() { return e2e::source_dir() + "/tests/programs"; }
std::string tmp_path(const std::string& stem) {
  return "/tmp/asynctrace-inject-" + std::to_string(getpid()) + "-" + stem;
}

// The program's own mappings name the runtime once it is loaded.
bool runtime_loaded(pid_t pid) {
  return e2e::read_file("/proc/" + std::to_string(pid) + "/maps").find("/_asynctrace") != std::string::npos;
}

// Scripts the tool left for `pid` in /run/asynctrace-inject.
std::string scripts_of(pid_t pid) {
  auto r = e2e::run({"sh", "-c", "ls /run/asynctrace-inject 2>/dev/null | grep '^" + std::to_string(pid) + "-' || true"});
  return r.out;
}

// A truth program run with the plain interpreter; `env` adds variables.
std::vector<std::string> plain(const Py& p, const std::string& program, const std::string& truth,
                               const std::vector<std::string>& env) {
  std::vector<std::string> argv{"env"};
  argv.insert(argv.end(), env.begin(), env.end());
  argv.insert(argv.end(), {p.path, programs() + "/" + program + ".py", truth});
  return argv;
}

const std::vector<std::string> kBeat{"ASYNCTRACE_E2E_HEARTBEAT=0.05"};

// One line on stderr, exit 5, and the target untouched.
void expect_refused(const e2e::Output& r, pid_t pid, const std::string& says) {
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
  EXPECT_TRUE(e2e::kernel_hold(pid).empty()) << e2e::kernel_hold(pid).detail;
}

// The program's stdout and stderr after SIGUSR1, and its exit status.
struct Ending {
  int status = -1;
  std::string out, err;
};
Ending finish(e2e::Program& prog) {
  Ending e;
  prog.signal(SIGUSR1);
  e.status = prog.wait_exit(60s, &e.out);
  e.err = prog.stderr_text();
  return e;
}

// The same program, never traced.
Ending untraced(const Py& p, const std::string& program, const std::vector<std::string>& env) {
  const std::string truth = tmp_path(program + "-plain.json");
  e2e::Program prog(plain(p, program, truth, env), programs());
  EXPECT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  Ending e = finish(prog);
  unlink(truth.c_str());
  return e;
}

class Inject : public ::testing::TestWithParam<Py> {};

TEST_P(Inject, ViewsMatchTheProgramsOwnTruthAndTheProgramIsUnchanged) {
  ASSERT_EQ(geteuid(), 0u) << "the e2e tier loads BPF programs: run it as root";
  const Py& p = GetParam();
  const std::string truth = tmp_path("taskgroup_nested.json");
  unlink(truth.c_str());
  Ending traced;
  {
    e2e::Program prog(plain(p, "taskgroup_nested", truth, kBeat), programs());
    ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
    ASSERT_FALSE(runtime_loaded(prog.pid()));
    // The first pstree loads the runtime, then answers as for a prepared process.
    e2e::check_views(truth, prog.pid());
    EXPECT_TRUE(runtime_loaded(prog.pid()));
    EXPECT_EQ(scripts_of(prog.pid()), "") << "the script stays after it ran";
    // Afterwards only the dormant runtime: nothing attached, semaphores at zero.
    const auto hold = e2e::wait_kernel_released(prog.pid());
    EXPECT_TRUE(hold.empty()) << hold.detail;
    EXPECT_EQ(e2e::asynctrace_uprobes(), "");
    const auto semas = e2e::usdt_semaphores(prog.pid());
    EXPECT_FALSE(semas.empty());
    for (const auto& [name, v] : semas) EXPECT_EQ(v, 0) << name;
    traced = finish(prog);
  }
  const Ending want = untraced(p, "taskgroup_nested", kBeat);
  EXPECT_EQ(traced.status, 0) << traced.err;
  EXPECT_EQ(traced.status, want.status);
  EXPECT_EQ(traced.out, want.out);  // includes sys.path and the importer cache at exit
  EXPECT_EQ(traced.err, want.err);
  unlink(truth.c_str());
}

// ps, top and record on a busy program, with the caller's own
// PYTHON_DISABLE_REMOTE_DEBUG set: the injecting interpreter gets a clean
// environment.
TEST_P(Inject, PsTopAndRecordOnABusyProgram) {
  const Py& p = GetParam();
  const std::string prog_path = programs() + "/ticker.py";
  std::string traced_out;
  {
    e2e::Program prog({p.path, prog_path}, programs());
    ASSERT_TRUE(prog.wait_line("READY", 30s)) << prog.stderr_text();
    const std::string pid = std::to_string(prog.pid());
    auto ps = e2e::run({"env", "PYTHON_DISABLE_REMOTE_DEBUG=1", e2e::tool(), "ps", "-p", pid, "--format", "json"});
    ASSERT_EQ(ps.exit_code, 0) << ps.err;
    std::cerr << "[ injected ps: " << ps.seconds << " s ]\n";
    std::set<std::string> names;
    const json doc = json::parse(ps.out);
    for (const auto& t : doc["tasks"]) names.insert(t["name"].get<std::string>());
    for (const char* n : {"sleeper-0", "sleeper-1", "sleeper-2", "Task-1"}) EXPECT_TRUE(names.count(n)) << ps.out;

    auto top = e2e::run({e2e::tool(), "top", "-p", pid, "-n", "1", "-i", "500ms", "--format", "json"});
    ASSERT_EQ(top.exit_code, 0) << top.err;
    const json frame = e2e::last_ndjson(top.out);
    ASSERT_NE(e2e::row(frame, "sleeper-0"), nullptr) << top.out;

    const std::string folded_path = tmp_path("ticker.folded");
    auto rec = e2e::run({e2e::tool(), "record", "-p", pid, "-d", "2s", "-f", "folded", "-o", folded_path});
    ASSERT_EQ(rec.exit_code, 0) << rec.err;
    const auto stacks = e2e::folded(e2e::read_file(folded_path));
    unlink(folded_path.c_str());
    ASSERT_FALSE(stacks.empty());
    bool saw_tick = false;
    for (const auto& [stack, us] : stacks) {
      EXPECT_GT(us, 0) << stack;
      saw_tick |= stack.find("tick") != std::string::npos;
    }
    EXPECT_TRUE(saw_tick) << "no stack through tick()";
    prog.signal(SIGUSR1);
    EXPECT_EQ(prog.wait_exit(60s, &traced_out), 0) << prog.stderr_text();
    EXPECT_EQ(prog.stderr_text(), "");
  }
  e2e::Program plain_prog({p.path, prog_path}, programs());
  ASSERT_TRUE(plain_prog.wait_line("READY", 30s));
  std::this_thread::sleep_for(300ms);
  plain_prog.signal(SIGUSR1);
  std::string plain_out;
  EXPECT_EQ(plain_prog.wait_exit(60s, &plain_out), 0);
  EXPECT_EQ(traced_out, plain_out);
}

TEST_P(Inject, RemoteDebugDisabledInTheTargetIsRefused) {
  const Py& p = GetParam();
  const std::string truth = tmp_path("disabled.json");
  std::vector<std::string> env = kBeat;
  env.push_back("PYTHON_DISABLE_REMOTE_DEBUG=1");
  e2e::Program prog(plain(p, "gather_nested", truth, env), programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({e2e::tool(), "pstree", "-p", std::to_string(prog.pid())});
  expect_refused(r, prog.pid(), "remote debugging is disabled in it");
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(runtime_loaded(prog.pid()));
  EXPECT_EQ(scripts_of(prog.pid()), "");
  const Ending e = finish(prog);
  EXPECT_EQ(e.status, 0);
  EXPECT_EQ(e.err, "");
  unlink(truth.c_str());
}

TEST_P(Inject, NoInjectLoadsNothing) {
  const Py& p = GetParam();
  const std::string truth = tmp_path("no-inject.json");
  e2e::Program prog(plain(p, "gather_nested", truth, kBeat), programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({e2e::tool(), "ps", "-p", std::to_string(prog.pid()), "--no-inject"});
  expect_refused(r, prog.pid(), "is a Python process without asynctrace probes");
  std::this_thread::sleep_for(500ms);  // a queued script would have run by now (heartbeat 50 ms)
  EXPECT_FALSE(runtime_loaded(prog.pid()));
  EXPECT_EQ(scripts_of(prog.pid()), "");
  finish(prog);
  unlink(truth.c_str());
}

// No timer, no I/O: the loop sleeps in epoll_wait and runs no bytecode, so
// the script waits. The tool says so within its --timeout; the script stays
// queued, and runs (harmlessly) once the program wakes up.
TEST_P(Inject, IdleTargetTimesOutAndStaysUnchanged) {
  const Py& p = GetParam();
  const std::string truth = tmp_path("idle.json");
  Ending traced;
  {
    e2e::Program prog(plain(p, "gather_nested", truth, {}), programs());
    ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
    std::this_thread::sleep_for(200ms);
    auto r = e2e::run({e2e::tool(), "pstree", "-p", std::to_string(prog.pid()), "--timeout", "1s"});
    expect_refused(r, prog.pid(), "ran no Python code within 1s");
    EXPECT_LT(r.seconds, 2.5);
    EXPECT_FALSE(runtime_loaded(prog.pid()));
    EXPECT_NE(scripts_of(prog.pid()), "") << "the queued script must stay until it ran";
    traced = finish(prog);
    // Once the process is gone, the next command that meets an unprepared
    // process removes the script (here one refused at once).
    e2e::Program other({p.path, "-c", "import time\nprint('READY', flush=True)\ntime.sleep(60)"});
    ASSERT_TRUE(other.wait_line("READY", 30s));
    EXPECT_EQ(e2e::run({e2e::tool(), "ps", "-p", std::to_string(other.pid()), "--no-inject"}).exit_code, 5);
    EXPECT_EQ(scripts_of(prog.pid()), "");
    other.signal(SIGTERM);
  }
  const Ending want = untraced(p, "gather_nested", {});
  EXPECT_EQ(traced.status, 0) << traced.err;
  EXPECT_EQ(traced.out, want.out);
  EXPECT_EQ(traced.err, want.err);
  unlink(truth.c_str());
}

// A target of another user runs its script as that user: the script (0644
// in a 0755 directory) and the runtime must be readable by it.
const std::vector<std::string> kNobody{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"};

TEST_P(Inject, TargetOfAnotherUserLoadsTheRuntime) {
  const Py& p = GetParam();
  const std::string truth = "/tmp/asynctrace-inject-nobody-" + std::to_string(getpid()) + ".json";
  std::vector<std::string> argv = kNobody;
  for (const std::string& a : plain(p, "gather_nested", truth, kBeat)) argv.push_back(a);
  e2e::Program prog(argv, programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  e2e::check_views(truth, prog.pid());
  const Ending e = finish(prog);
  EXPECT_EQ(e.status, 0);
  EXPECT_EQ(e.err, "");
  unlink(truth.c_str());
}

// CAP_BPF + CAP_PERFMON trace, but loading needs root: exit 6, one line,
// nothing run in the target (same uid as the tool, so it can see it).
TEST_P(Inject, LoadingNeedsRoot) {
  const Py& p = GetParam();
  const std::string truth = "/tmp/asynctrace-inject-nobody3-" + std::to_string(getpid()) + ".json";
  std::vector<std::string> argv = kNobody;
  for (const std::string& a : plain(p, "gather_nested", truth, kBeat)) argv.push_back(a);
  e2e::Program prog(argv, programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  std::vector<std::string> tool = kNobody;
  for (const char* a : {"--inh-caps", "+bpf,+perfmon", "--ambient-caps", "+bpf,+perfmon"}) tool.push_back(a);
  for (const std::string& a : {e2e::tool(), std::string("pstree"), std::string("-p"), std::to_string(prog.pid())})
    tool.push_back(a);
  auto r = e2e::run(tool);
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("loading needs root"), std::string::npos) << r.err;
  EXPECT_TRUE(e2e::kernel_hold(prog.pid()).empty());
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(runtime_loaded(prog.pid()));
  finish(prog);
  unlink(truth.c_str());
}

// A target of another user, with the runtime in a directory only root may enter: refused
// before anything runs in the target. A copy of the tool whose python/
// holds such a copy of the runtime.
TEST_P(Inject, RuntimeTheTargetCannotReadIsRefused) {
  const Py& p = GetParam();
  const std::string dir = tmp_path("private-tool");
  const std::string py_dir = dir + "/python";
  ASSERT_EQ(e2e::run({"sh", "-c", "rm -rf '" + dir + "' && mkdir -p '" + py_dir + "' && cp '" + e2e::tool() + "' '" +
                                     dir + "/' && cp -r '" + e2e::binary_dir() + "/python/" + p.tag + "' '" + py_dir +
                                     "/' && cp '" + e2e::binary_dir() + "/python/versions.txt' '" + py_dir +
                                     "/' && chmod 0755 '" + dir + "' '" + py_dir + "' && chmod 0700 '" + py_dir + "/" +
                                     p.tag + "'"})
                .exit_code,
            0);
  const std::string truth = "/tmp/asynctrace-inject-nobody2-" + std::to_string(getpid()) + ".json";
  std::vector<std::string> argv = kNobody;
  for (const std::string& a : plain(p, "gather_nested", truth, kBeat)) argv.push_back(a);
  e2e::Program prog(argv, programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({dir + "/asynctrace", "pstree", "-p", std::to_string(prog.pid())});
  expect_refused(r, prog.pid(), "the runtime is not readable by its user: '" + py_dir + "/" + p.tag +
                                    "' is not searchable by uid 65534");
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(runtime_loaded(prog.pid()));
  EXPECT_EQ(scripts_of(prog.pid()), "");
  finish(prog);
  e2e::run({"rm", "-rf", dir});
  unlink(truth.c_str());
}

// A program that never imported asyncio has nothing to show: refused at
// once, and it stays without asyncio.
TEST_P(Inject, ProgramWithoutAsyncioIsRefused) {
  const Py& p = GetParam();
  e2e::Program prog({p.path, "-c", "import time\nprint('READY', flush=True)\nfor _ in range(1200): time.sleep(0.05)"});
  ASSERT_TRUE(prog.wait_line("READY", 30s)) << prog.stderr_text();
  auto r = e2e::run({e2e::tool(), "pstree", "-p", std::to_string(prog.pid())});
  expect_refused(r, prog.pid(), "it has not imported asyncio");
  EXPECT_LT(r.seconds, 2.0);
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(runtime_loaded(prog.pid()));
  EXPECT_EQ(e2e::read_file("/proc/" + std::to_string(prog.pid()) + "/maps").find("/_asyncio."), std::string::npos);
  EXPECT_EQ(scripts_of(prog.pid()), "");
  prog.signal(SIGTERM);
}

// In another mount namespace (a container) our paths need not lead to the
// script and the runtime: refused, nothing runs in the target.
TEST_P(Inject, OtherMountNamespaceIsRefused) {
  const Py& p = GetParam();
  const std::string truth = tmp_path("mntns.json");
  std::vector<std::string> argv{"unshare", "--mount", "--propagation", "private"};
  for (const std::string& a : plain(p, "gather_nested", truth, kBeat)) argv.push_back(a);
  e2e::Program prog(argv, programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({e2e::tool(), "pstree", "-p", std::to_string(prog.pid())});
  expect_refused(r, prog.pid(), "another mount namespace");
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(runtime_loaded(prog.pid()));
  finish(prog);
  unlink(truth.c_str());
}

INSTANTIATE_TEST_SUITE_P(Inject, Inject, ::testing::ValuesIn(pythons(14, 99)), py_name);

// Targets we must not load into: refused before anything runs in them.
class InjectRefused : public ::testing::TestWithParam<Py> {};

TEST_P(InjectRefused, NothingIsLoaded) {
  const Py& p = GetParam();
  const bool ft = p.tag.back() == 't';
  const std::string truth = tmp_path("refused-" + p.tag + ".json");
  e2e::Program prog(plain(p, "gather_nested", truth, kBeat), programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({e2e::tool(), "pstree", "-p", std::to_string(prog.pid())});
  expect_refused(r, prog.pid(), ft ? "free-threaded CPython builds are not supported yet" : "injection needs 3.14+");
  if (!ft) {
    EXPECT_NE(r.err.find("Python 3." + std::to_string(minor_of(p.tag)) + ":"), std::string::npos) << r.err;
  }
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(runtime_loaded(prog.pid()));
  EXPECT_EQ(scripts_of(prog.pid()), "");
  const Ending e = finish(prog);
  EXPECT_EQ(e.status, 0);
  EXPECT_EQ(e.err, "");
  unlink(truth.c_str());
}

std::vector<Py> refused_pythons() {
  std::vector<Py> out = pythons(13, 13);
  for (const Py& p : freethreaded()) add_unique(&out, p.tag, p.path);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Inject, InjectRefused, ::testing::ValuesIn(refused_pythons()), py_name);

}  // namespace
