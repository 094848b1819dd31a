// SPDX-License-Identifier: Apache-2.0
// End-to-end: real BPF programs attached to real asyncio processes, compared
// with the ground truth each program reports about itself. Needs root; in CI
// these run and never skip: a missing prerequisite is a failure.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "harness.h"

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Case {
  std::string program;
  int min_minor;  // 3.X required
  bool debian_only = false;  // needs a Debian package (uvloop) that only /usr/bin/python3.11 has
};

const std::vector<Case> kCases = {
    {"taskgroup_nested", 11}, {"gather_nested", 10}, {"await_tasks", 10},
    {"semaphore", 10},        {"shield_cancel", 10}, {"many_tasks", 10},
    {"threads_loops", 10},    {"eager_tasks", 12},   {"idle_sleep", 10},
    {"cpu_bound", 10},        {"uvloop_prog", 11, true}, {"evil_names", 10},
};

struct Param {
  std::string tag, python;
  Case c;
};

void PrintTo(const Param& p, std::ostream* os) { *os << p.c.program << " on " << p.python; }

std::string case_name(const ::testing::TestParamInfo<Param>& i) {
  return i.param.c.program + "_" + i.param.tag;
}

std::vector<Param> params() {
  std::vector<Param> out;
  for (const auto& [tag, py] : e2e::built_pythons()) {
    const int minor = std::stoi(tag.substr(3));
    const bool debian = py.rfind("/usr/bin/", 0) == 0;
    for (const auto& c : kCases) {
      if (minor < c.min_minor || (c.debian_only && !debian)) continue;
      out.push_back({debian ? tag + "_debian" : tag, py, c});
    }
  }
  return out;
}

std::string tool() { return e2e::binary_dir() + "/asynctrace"; }
std::string programs() { return e2e::source_dir() + "/tests/programs"; }

std::string tmp_path(const std::string& stem) {
  return "/tmp/asynctrace-e2e-" + std::to_string(getpid()) + "-" + stem;
}

class Traced : public ::testing::TestWithParam<Param> {};

TEST_P(Traced, PstreeAndPsMatchTheProgramsOwnView) {
  ASSERT_EQ(geteuid(), 0u) << "the e2e tier loads BPF programs: run it as root";
  const Param& p = GetParam();
  const std::string truth_path = tmp_path(p.c.program + "-" + p.tag + ".json");
  unlink(truth_path.c_str());
  const std::string script = programs() + "/" + p.c.program + ".py";

  std::string traced_out, plain_out, traced_err, plain_err;
  {
    e2e::Program prog({tool(), "run", "--", p.python, script, truth_path}, programs());
    ASSERT_TRUE(prog.wait_line("READY", 60s)) << "program never got ready: " << prog.stderr_text();
    // First contact: no tracer was ever attached; the runtime must replay.
    e2e::check_views(truth_path, prog.pid());

    prog.signal(SIGUSR1);
    EXPECT_EQ(prog.wait_exit(60s, &traced_out), 0) << prog.stderr_text();
    traced_err = prog.stderr_text();
  }
  // Transparency: the same program without asynctrace behaves identically.
  {
    e2e::Program prog({p.python, script, truth_path + ".plain"}, programs());
    ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
    prog.signal(SIGUSR1);
    EXPECT_EQ(prog.wait_exit(60s, &plain_out), 0);
    plain_err = prog.stderr_text();
  }
  EXPECT_EQ(traced_out, plain_out);
  EXPECT_EQ(traced_err, plain_err);
  unlink(truth_path.c_str());
  unlink((truth_path + ".plain").c_str());
}

INSTANTIATE_TEST_SUITE_P(Programs, Traced, ::testing::ValuesIn(params()),
                         case_name);

// The tracer is attached (and holds the maps pinned) before the program
// builds its tasks: the views come from the event path alone, no replay.
class TracedFromStart : public ::testing::TestWithParam<Param> {};

TEST_P(TracedFromStart, EventsAloneGiveTheSameViews) {
  ASSERT_EQ(geteuid(), 0u) << "the e2e tier loads BPF programs: run it as root";
  const Param& p = GetParam();
  const std::string truth_path = tmp_path(p.c.program + "-" + p.tag + "-events.json");
  unlink(truth_path.c_str());
  e2e::Program prog({"env", "ASYNCTRACE_E2E_GATE=1", tool(), "run", "--", p.python,
                     programs() + "/" + p.c.program + ".py", truth_path},
                    programs());
  ASSERT_TRUE(prog.wait_line("GATED", 60s)) << prog.stderr_text();
  e2e::Program holder({tool(), "attach", "-p", std::to_string(prog.pid())});
  ASSERT_TRUE(holder.wait_line("attached pid=" + std::to_string(prog.pid()) + " maps=/sys/fs/bpf/asynctrace/" +
                                   std::to_string(prog.pid()),
                               30s))
      << holder.stderr_text();
  prog.signal(SIGUSR2);
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  e2e::check_views(truth_path, prog.pid());
  auto st = e2e::run({tool(), "stats", "-p", std::to_string(prog.pid()), "--format", "json"});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  const json stats = json::parse(st.out);
  EXPECT_TRUE(stats["complete"].get<bool>());
  EXPECT_GT(stats["counters"]["events"].get<uint64_t>(), stats["tasks"].get<uint64_t>());
  prog.signal(SIGUSR1);
  EXPECT_EQ(prog.wait_exit(60s, nullptr), 0) << prog.stderr_text();
  // The program ended while held: the holder says so and exits 9 (README).
  EXPECT_EQ(holder.wait_exit(30s, nullptr), 9) << holder.stderr_text();
  EXPECT_NE(access(("/sys/fs/bpf/asynctrace/" + std::to_string(prog.pid())).c_str(), F_OK), 0)
      << "pinned maps left behind";
  unlink(truth_path.c_str());
}

std::vector<Param> event_params() {
  std::vector<Param> out;
  // cpu_bound: its truth is the stack of a task that is running; only a
  // replay (one-shot pstree) can see a running task's frames.
  for (const auto& p : params()) {
    if (p.c.program != "cpu_bound") out.push_back(p);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Programs, TracedFromStart, ::testing::ValuesIn(event_params()),
                         case_name);

// enable() called late from inside a task's step (as an injected enable()
// runs), when loops in two threads and a loop that never ran already have
// pending tasks: the first view's replay shows every one of them. On 3.14
// this needs the thread states' task lists (runtimes/python/src/tasks.c).
class LateEnable : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(LateEnable, ReplayShowsTasksOfEveryLoopCreatedBefore) {
  ASSERT_EQ(geteuid(), 0u) << "the e2e tier loads BPF programs: run it as root";
  const auto& [tag, py] = GetParam();
  const std::string truth_path = tmp_path("late-enable-" + tag + ".json");
  unlink(truth_path.c_str());
  e2e::Program prog({"env", "ASYNCTRACE_E2E_PKG=" + e2e::binary_dir() + "/python/" + tag, py,
                     programs() + "/late_enable.py", truth_path},
                    programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  e2e::check_views(truth_path, prog.pid());
  prog.signal(SIGUSR1);
  std::string out;
  EXPECT_EQ(prog.wait_exit(60s, &out), 0) << prog.stderr_text();
  EXPECT_NE(out.find("result: ('joined', True)"), std::string::npos) << out;
  EXPECT_EQ(prog.stderr_text(), "");
  unlink(truth_path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Builds, LateEnable, ::testing::ValuesIn(e2e::built_pythons()),
                         [](const ::testing::TestParamInfo<std::pair<std::string, std::string>>& i) {
                           return i.param.first + "_" + std::to_string(i.index);
                         });

// An asyncio.wait() in progress when the tracer attaches (the replay sends
// its edges) that returns while the tracer holds the maps: the task left
// pending must stop being awaited (3.14's rule), though no event of the wait
// itself was seen. tests/programs/wait_late.py.
class WaitLate : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(WaitLate, EdgesOfAWaitInProgressAtAttachGoWhenItReturns) {
  ASSERT_EQ(geteuid(), 0u) << "the e2e tier loads BPF programs: run it as root";
  const auto& [tag, py] = GetParam();
  const std::string truth_path = tmp_path("wait-late-" + tag + ".json");
  unlink(truth_path.c_str());
  e2e::Program prog({tool(), "run", "--", py, programs() + "/wait_late.py", truth_path}, programs());
  ASSERT_TRUE(prog.wait_line("WAITING", 60s)) << prog.stderr_text();
  e2e::Program holder({tool(), "attach", "-p", std::to_string(prog.pid())});
  ASSERT_TRUE(holder.wait_line("attached pid=" + std::to_string(prog.pid()) + " maps=/sys/fs/bpf/asynctrace/" +
                                   std::to_string(prog.pid()),
                               30s))
      << holder.stderr_text();
  // While the wait lasts, the replay drew both edges.
  auto during = e2e::run({tool(), "ps", "-p", std::to_string(prog.pid()), "--format", "json"});
  ASSERT_EQ(during.exit_code, 0) << during.err;
  int awaited = 0;
  const json during_json = json::parse(during.out);
  for (const auto& t : during_json["tasks"])
    if (t["name"] == "left-pending" || t["name"] == "quick") awaited += !t["awaited_by"].empty();
  EXPECT_EQ(awaited, 2) << during.out;
  prog.signal(SIGUSR2);
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  e2e::check_views(truth_path, prog.pid());  // left-pending: a root
  prog.signal(SIGUSR1);
  EXPECT_EQ(prog.wait_exit(60s, nullptr), 0) << prog.stderr_text();
  EXPECT_EQ(holder.wait_exit(30s, nullptr), 9) << holder.stderr_text();
  unlink(truth_path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Builds, WaitLate, ::testing::ValuesIn(e2e::built_pythons()),
                         [](const ::testing::TestParamInfo<std::pair<std::string, std::string>>& i) {
                           return i.param.first + "_" + std::to_string(i.index);
                         });

// 3.14+ without the _AsyncioDebug offsets (ASYNCTRACE_NO_ASYNCIO_OFFSETS=1
// forces what an unverifiable layout does): the runtime asks _asyncio for
// current_task(loop)/all_tasks(loop) of the loops that created tasks since
// enable(), which with `asynctrace run` is every loop.
class NoAsyncioOffsets : public ::testing::TestWithParam<Param> {};

TEST_P(NoAsyncioOffsets, ViewsMatchThroughTheAsyncioApi) {
  ASSERT_EQ(geteuid(), 0u) << "the e2e tier loads BPF programs: run it as root";
  const Param& p = GetParam();
  auto off = e2e::run({"env", "ASYNCTRACE_NO_ASYNCIO_OFFSETS=1", "PYTHONPATH=" + e2e::binary_dir() + "/python/" + p.tag,
                       p.python, "-c", "import asyncio, asynctrace._asynctrace as C; print(C.asyncio_offsets())"});
  EXPECT_EQ(off.out, "None\n") << off.err;  // the fallback really is what runs
  const std::string truth_path = tmp_path(p.c.program + "-" + p.tag + "-nooffsets.json");
  unlink(truth_path.c_str());
  e2e::Program prog({"env", "ASYNCTRACE_NO_ASYNCIO_OFFSETS=1", tool(), "run", "--", p.python,
                     programs() + "/" + p.c.program + ".py", truth_path},
                    programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  e2e::check_views(truth_path, prog.pid());
  prog.signal(SIGUSR1);
  EXPECT_EQ(prog.wait_exit(60s, nullptr), 0) << prog.stderr_text();
  unlink(truth_path.c_str());
}

std::vector<Param> no_offsets_params() {
  std::vector<Param> out;
  for (const auto& p : params()) {
    const bool wanted = p.c.program == "threads_loops" || p.c.program == "taskgroup_nested" ||
                        p.c.program == "eager_tasks" || p.c.program == "cpu_bound";
    if (std::stoi(p.tag.substr(3, 2)) >= 14 && wanted) out.push_back(p);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Programs, NoAsyncioOffsets, ::testing::ValuesIn(no_offsets_params()), case_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(NoAsyncioOffsets);

// Detaching leaves nothing raised in the target: the runtime itself reports
// its semaphores after the tracer went away (tests/runtime_smoke/app.py).
TEST(Detach, SemaphoresReturnToZeroInTheTarget) {
  for (const auto& [tag, py] : e2e::built_pythons()) {
    SCOPED_TRACE(py);
    e2e::Program app({"env", "PYTHONPATH=" + e2e::binary_dir() + "/python/" + tag, py,
                      e2e::source_dir() + "/tests/runtime_smoke/app.py", "live"});
    ASSERT_TRUE(app.wait_line(std::to_string(app.pid()), 20s)) << app.stderr_text();
    auto r = e2e::run({tool(), "attach", "-p", std::to_string(app.pid()), "--duration", "2s"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string out;
    EXPECT_EQ(app.wait_exit(60s, &out), 0) << app.stderr_text();
    EXPECT_NE(out.find("SEM_ZERO"), std::string::npos) << out;
  }
}

// Dormant probes cost nothing while the program idles: the watcher thread
// sleeps between polls (a busy-waiting watcher once doubled step times).
TEST(Dormant, IdleProcessUsesNoCpu) {
  for (const auto& [tag, py] : e2e::built_pythons()) {
    SCOPED_TRACE(py);
    e2e::Program prog({tool(), "run", "--", py, "-c",
                       "import asyncio, time\nasync def main():\n print('READY', flush=True)\n"
                       " await asyncio.sleep(30)\nasyncio.run(main())"});
    ASSERT_TRUE(prog.wait_line("READY", 20s)) << prog.stderr_text();
    auto cpu_ticks = [&] {
      std::string stat = e2e::read_file("/proc/" + std::to_string(prog.pid()) + "/stat");
      std::istringstream in(stat.substr(stat.rfind(')') + 2));
      std::string f;
      long ticks = 0;
      for (int i = 3; i <= 15 && in >> f; ++i) {
        if (i == 14 || i == 15) ticks += std::stol(f);  // utime + stime
      }
      return ticks;
    };
    const long before = cpu_ticks();
    sleep(1);
    const long used = cpu_ticks() - before;
    EXPECT_LE(used, 2) << "an idle traced-but-dormant process used " << used << " ticks of CPU in 1 s";
  }
}

// The third way to enable the probes: installed into an interpreter's
// site-packages (here a throw-away venv), every asyncio program carries them.
TEST(Enable, InstalledIntoAnInterpreter) {
  const auto pythons = e2e::built_pythons();
  ASSERT_FALSE(pythons.empty());
  const auto& [tag, py] = pythons.back();
  const std::string venv = tmp_path("venv");
  ASSERT_EQ(e2e::run({py, "-m", "venv", "--without-pip", venv}).exit_code, 0);
  const std::string vpy = venv + "/bin/python";
  auto inst = e2e::run({e2e::source_dir() + "/runtimes/python/install.sh", vpy, e2e::binary_dir()});
  ASSERT_EQ(inst.exit_code, 0) << inst.err;
  {
    e2e::Program prog({vpy, "-c",
                       "import asyncio\nasync def napper():\n await asyncio.sleep(30)\n"
                       "async def main():\n t = asyncio.create_task(napper(), name='napper')\n"
                       " print('READY', flush=True)\n await t\nasyncio.run(main())"});
    ASSERT_TRUE(prog.wait_line("READY", 20s)) << prog.stderr_text();
    usleep(100 * 1000);
    auto r = e2e::run({tool(), "pstree", "-p", std::to_string(prog.pid())});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("(T) napper"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" napper <string>:3"), std::string::npos) << r.out;
  }
  auto un = e2e::run({e2e::source_dir() + "/runtimes/python/install.sh", "--uninstall", vpy});
  EXPECT_EQ(un.exit_code, 0) << un.err;
  e2e::Program plain({vpy, "-c", "import time; print('READY', flush=True); time.sleep(30)"});
  ASSERT_TRUE(plain.wait_line("READY", 20s));
  EXPECT_EQ(e2e::run({tool(), "ps", "-p", std::to_string(plain.pid())}).exit_code, 5);
  e2e::run({"rm", "-rf", venv});
}

// `attach` killed with SIGKILL: the traced process goes on unharmed, and the
// next asynctrace command removes the pins the holder could not. The program
// ticks until the test creates its stop file: under QEMU (6.1's per-site
// attach, TCG) the holder and the sweep took longer than a fixed 3 s of ticks.
TEST(Faults, KilledHolderLeavesNothingBehind) {
  const std::string stop = tmp_path("killed-holder.stop");
  unlink(stop.c_str());
  e2e::Program prog({tool(), "run", "--", "/usr/bin/python3.11", "-c",
                     "import asyncio, os, sys\nasync def tick():\n i = 0\n"
                     " while not os.path.exists(sys.argv[1]):\n  await asyncio.sleep(0.05)\n"
                     "  print('tick', i, flush=True)\n  i += 1\n print('stopped', flush=True)\n"
                     "asyncio.run(tick())",
                     stop});
  ASSERT_TRUE(prog.wait_line("tick 0", 20s)) << prog.stderr_text();
  const std::string pid = std::to_string(prog.pid());
  {
    e2e::Program holder({tool(), "attach", "-p", pid});
    ASSERT_TRUE(holder.wait_line("attached pid=" + pid + " maps=/sys/fs/bpf/asynctrace/" + pid, 30s))
        << holder.stderr_text();
    holder.signal(SIGKILL);
    holder.wait_exit(10s, nullptr);
  }
  EXPECT_EQ(access(("/sys/fs/bpf/asynctrace/" + pid).c_str(), F_OK), 0) << "pins of the killed holder";
  // Any later command sweeps them; the target still answers, from a fresh attach.
  auto r = e2e::run({tool(), "stats", "-p", pid});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(access(("/sys/fs/bpf/asynctrace/" + pid).c_str(), F_OK), 0) << "stale pins not removed";
  // Its loop still runs after the sweep: it sees the stop file created now.
  close(open(stop.c_str(), O_CREAT | O_WRONLY, 0600));
  EXPECT_TRUE(prog.wait_line("stopped", 30s)) << "the traced process did not go on: " << prog.stderr_text();
  EXPECT_EQ(prog.wait_exit(30s, nullptr), 0) << prog.stderr_text();
  unlink(stop.c_str());
}

// Minor versions of the CPython 3.1X GIL builds with headers installed on this
// machine, asked of each interpreter in the places the runtime's CMakeLists.txt
// searches (system, /usr/local, /opt/*/bin, PATH, pyenv), not read from CMake.
std::map<int, std::string> installed_minors() {
  std::vector<std::string> patterns = {"/usr/bin/python3.1[0-9]", "/usr/local/bin/python3.1[0-9]",
                                       "/opt/*/bin/python3.1[0-9]", "/root/.pyenv/versions/3.1[0-9].*/bin/python3"};
  if (const char* home = getenv("HOME")) patterns.push_back(std::string(home) + "/.pyenv/versions/3.1[0-9].*/bin/python3");
  if (const char* path = getenv("PATH")) {
    std::istringstream in(path);
    for (std::string dir; std::getline(in, dir, ':');)
      if (!dir.empty() && dir.find("/shims") == std::string::npos) patterns.push_back(dir + "/python3.1[0-9]");
  }
  std::map<int, std::string> out;
  for (const auto& pat : patterns) {
    glob_t g{};
    if (glob(pat.c_str(), 0, nullptr, &g) == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) {
        auto r = e2e::run({g.gl_pathv[i], "-S", "-c",
                           "import os, sys, sysconfig\n"
                           "h = os.path.join(sysconfig.get_paths()['include'], 'Python.h')\n"
                           "print(sys.version_info[1] if not sysconfig.get_config_var('Py_GIL_DISABLED')"
                           " and os.path.exists(h) else 0)"});
        const int minor = r.exit_code == 0 ? std::atoi(r.out.c_str()) : 0;
        if (minor >= 10) out.emplace(minor, g.gl_pathv[i]);
      }
    }
    globfree(&g);
  }
  return out;
}

// 3.10-3.13 always (CI has them from pyenv); a newer minor version whenever
// one is installed here (CI machines have no 3.14: it is not required there).
TEST(Runtimes, EverySupportedInterpreterWasBuilt) {
  std::set<std::string> tags;
  for (const auto& [tag, _] : e2e::built_pythons()) tags.insert(tag);
  for (const char* want : {"cp310", "cp311", "cp312", "cp313"}) EXPECT_TRUE(tags.count(want)) << want;
  for (const auto& [minor, py] : installed_minors())
    EXPECT_TRUE(tags.count("cp3" + std::to_string(minor))) << "CPython 3." << minor << " at " << py << " has no module";
}

// Free-threaded builds (build/python/freethreaded.txt) get no module. If the
// package is imported there anyway (a GIL build's on PYTHONPATH), enable()
// refuses in one sentence, even with the GIL re-enabled at run time, and the
// program runs as without it (asynctrace._autoload swallows the refusal).
std::vector<std::pair<std::string, std::string>> freethreaded_pythons() {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(e2e::read_file(e2e::binary_dir() + "/python/freethreaded.txt"));
  std::string tag, path;
  while (in >> tag >> path) out.emplace_back(tag, path);
  return out;
}

class FreeThreaded : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(FreeThreaded, EnableRefusesAndChangesNothing) {
  const auto built = e2e::built_pythons();
  ASSERT_FALSE(built.empty());
  // The package of the same minor version (cp314 for cp314t) if built.
  std::string tag = built.back().first;
  for (const auto& [t, _] : built)
    if (t + "t" == GetParam().first) tag = t;
  const std::string pkg = "PYTHONPATH=" + e2e::binary_dir() + "/python/" + tag;
  const std::string prog =
      "import asyncio, asynctrace, sys\n"
      "try:\n asynctrace.enable()\nexcept ImportError as e:\n print(e)\n"
      "print(asynctrace.is_enabled(), 'asynctrace._asynctrace' in sys.modules, asyncio.run(asyncio.sleep(0, 'ran')))";
  for (const char* gil : {"PYTHON_GIL=0", "PYTHON_GIL=1"}) {
    SCOPED_TRACE(gil);
    auto r = e2e::run({"env", pkg, gil, GetParam().second, "-c", prog});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out,
              "asynctrace: free-threaded CPython (no GIL) is not supported; run the program with a GIL build of "
              "CPython\nFalse False ran\n");
    EXPECT_EQ(r.err, "");
  }
}

// `asynctrace run` with a free-threaded interpreter: exit 5, one line, and
// the program is not started (it would have run untraced).
TEST_P(FreeThreaded, RunRefusesWithExitFive) {
  const std::string marker = "/tmp/asynctrace-e2e-ft-ran-" + std::to_string(getpid());
  unlink(marker.c_str());
  auto r = e2e::run({e2e::binary_dir() + "/asynctrace", "run", "--", GetParam().second, "-c",
                     "open('" + marker + "', 'w').close()"});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("free-threaded CPython build"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(access(marker.c_str(), F_OK), 0) << "the program ran";
  unlink(marker.c_str());
}

INSTANTIATE_TEST_SUITE_P(Builds, FreeThreaded, ::testing::ValuesIn(freethreaded_pythons()),
                         [](const ::testing::TestParamInfo<std::pair<std::string, std::string>>& i) {
                           return i.param.first + "_" + std::to_string(i.index);
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(FreeThreaded);

// Bad targets: one line on stderr, documented exit code, nothing attached.
TEST(BadInput, NoSuchProcess) {
  auto r = e2e::run({tool(), "pstree", "-p", "4194303"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("no such process"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST(BadInput, NotAPythonProcess) {
  e2e::Program sleeper({"sleep", "30"});
  usleep(100 * 1000);
  auto r = e2e::run({tool(), "ps", "-p", std::to_string(sleeper.pid())});
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_NE(r.err.find("not a Python process"), std::string::npos) << r.err;
}

TEST(BadInput, PythonWithoutProbesSaysHowToEnable) {
  e2e::Program py({"/usr/bin/python3.11", "-c", "import time; print('READY', flush=True); time.sleep(30)"});
  ASSERT_TRUE(py.wait_line("READY", 10s));
  auto r = e2e::run({tool(), "pstree", "-p", std::to_string(py.pid())});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_NE(r.err.find("asynctrace run"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(BadInput, WithoutPrivilegesSaysWhichCapabilities) {
  e2e::Program py({tool(), "run", "--", "/usr/bin/python3.11", "-c",
                   "import asyncio, time; print('READY', flush=True); time.sleep(30)"});
  ASSERT_TRUE(py.wait_line("READY", 20s));
  // An unprivileged user with no capabilities at all.
  auto r = e2e::run({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                     "--bounding-set=-all", tool(), "pstree", "-p", std::to_string(py.pid())});
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_NE(r.err.find("CAP_BPF"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("CAP_PERFMON"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.out, "");
}

// More live tasks than the map holds: a partial view, clearly marked, with
// the count of what is missing; never a crash.
TEST(BadInput, FullTaskMapGivesAMarkedPartialView) {
  const std::string truth = tmp_path("full-map.json");
  e2e::Program prog({tool(), "run", "--", "/usr/bin/python3.11", programs() + "/many_tasks.py", truth},
                    programs());
  ASSERT_TRUE(prog.wait_line("READY", 60s)) << prog.stderr_text();
  auto r = e2e::run({tool(), "ps", "-p", std::to_string(prog.pid()), "--max-tasks", "1000", "--format", "json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("partial view"), std::string::npos) << r.err;
  const json j = json::parse(r.out);
  EXPECT_FALSE(j["complete"].get<bool>());
  EXPECT_LE(j["tasks"].size(), 1000u);
  EXPECT_GE(j["counters"]["dropped_tasks_map_full"].get<uint64_t>(), 10001u - 1000u);
  auto st = e2e::run({tool(), "stats", "-p", std::to_string(prog.pid()), "--max-tasks", "1000", "--format", "json"});
  EXPECT_EQ(st.exit_code, 0) << st.err;
  EXPECT_FALSE(json::parse(st.out)["complete"].get<bool>());
  // The process is unharmed: it finishes its work as usual.
  prog.signal(SIGUSR1);
  std::string out;
  EXPECT_EQ(prog.wait_exit(60s, &out), 0);
  EXPECT_NE(out.find("sum: 49995000"), std::string::npos) << out;
  unlink(truth.c_str());
}

TEST(BadInput, ExitedProcessIsNoSuchProcess) {
  e2e::Program py({"/usr/bin/python3.11", "-c", "print('READY', flush=True)"});
  ASSERT_TRUE(py.wait_line("READY", 10s));
  const pid_t pid = py.pid();
  py.wait_exit(10s, nullptr);
  auto r = e2e::run({tool(), "ps", "-p", std::to_string(pid)});
  EXPECT_EQ(r.exit_code, 3) << r.err;
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
