// SPDX-License-Identifier: Apache-2.0
// End-to-end checks of `asynctrace agent` (issue 6): discovery of processes
// started before and after it, pstree/ps answered from its pinned maps,
// removal of exited processes, SIGTERM/SIGKILL/restart/--cleanup and what
// they leave in the kernel, and a real Prometheus scraping it while traced
// programs with known counts run (tests/programs/agent_work.py).
//
// The agents here attach only this build's probe libraries
// (--library-prefix), so tests of other builds on the machine are untouched.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "harness.h"

using nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const char* const kPins = e2e::kAgentPins;
const char* const kLock = e2e::kAgentLock;
const std::vector<std::string>& kPinnedMaps = e2e::kAgentPinnedMaps;

using e2e::Agent;
using e2e::python;
using e2e::tasks_in_state;
using e2e::tool;
using e2e::Work;

// Value of the first sample line starting with `prefix` (name{labels), -1 if none.
double sample_value(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (l.rfind(prefix, 0) == 0) return std::stod(l.substr(l.rfind(' ') + 1));
  return -1;
}

bool has_pid(const std::string& text, const std::string& pid) {
  return text.find("pid=\"" + pid + "\"") != std::string::npos;
}

// Map ids of the agent's pins (bpftool map show pinned PATH).
std::set<int> pinned_map_ids() {
  std::set<int> ids;
  for (const std::string& m : kPinnedMaps) {
    auto r = e2e::run({"bpftool", "-j", "map", "show", "pinned", std::string(kPins) + "/" + m});
    if (r.exit_code != 0) continue;
    ids.insert(json::parse(r.out).at("id").get<int>());
  }
  return ids;
}

std::set<int> all_map_ids() {
  std::set<int> ids;
  auto r = e2e::run({"bpftool", "-j", "map", "show"});
  if (r.exit_code != 0) return ids;
  for (const auto& m : json::parse(r.out)) ids.insert(m.at("id").get<int>());
  return ids;
}

// Entries of the pinned tasks map that belong to `pid`.
int pinned_tasks_of(const std::string& pid) {
  auto r = e2e::run({"bpftool", "-j", "map", "dump", "pinned", std::string(kPins) + "/tasks"});
  if (r.exit_code != 0) return -1;
  int n = 0;
  for (const auto& e : json::parse(r.out)) {
    const auto& k = e.contains("formatted") ? e["formatted"]["key"] : e["key"];
    if (k.is_object() && std::to_string(k.value("pid", 0)) == pid) ++n;
  }
  return n;
}

class AgentE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "the e2e tier runs as root";
    e2e::cleanup_agent_leftovers();
  }
  void TearDown() override { e2e::cleanup_agent_leftovers(); }
};

TEST_F(AgentE2E, DiscoversProcessesAndViewsReadItsMaps) {
  Work before(0, 0, 3, 120);
  ASSERT_TRUE(before.ready()) << before.app.stderr_text();
  Agent agent;
  ASSERT_NE(agent.started(), "") << agent.app.stderr_text();
  Work after(0, 0, 2, 120);
  ASSERT_TRUE(after.ready()) << after.app.stderr_text();

  // Both processes, their live tasks by state (idle tasks + main, suspended).
  std::string m;
  ASSERT_TRUE(e2e::poll_until(
      [&] {
        m = agent.scrape();
        return tasks_in_state(m, before.pid(), "suspended") == 4 && tasks_in_state(m, after.pid(), "suspended") == 3;
      },
      20s))
      << m << agent.app.stderr_text();

  // pstree from the agent's maps: no object of its own loaded for the pid.
  auto r = e2e::run({tool(), "-v", "pstree", "-p", after.pid()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("reading the agent's maps"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("idle-0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("idle-1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("idler"), std::string::npos) << r.out;  // stacks came with the refresh replay
  EXPECT_EQ(e2e::kernel_hold(after.app.pid()).progs, 0) << e2e::kernel_hold(after.app.pid()).detail;
  auto ps = e2e::run({tool(), "ps", "-p", before.pid()});
  ASSERT_EQ(ps.exit_code, 0) << ps.err;
  for (const char* name : {"idle-0", "idle-1", "idle-2"}) EXPECT_NE(ps.out.find(name), std::string::npos) << ps.out;
  EXPECT_EQ(e2e::kernel_hold(before.app.pid()).progs, 0);
  // top: timing already on (the agent holds timing__on), nothing loaded.
  auto top = e2e::run({tool(), "-v", "top", "-p", after.pid(), "-n", "1", "-i", "300ms", "--format", "json"});
  ASSERT_EQ(top.exit_code, 0) << top.err;
  EXPECT_NE(top.err.find("reading the agent's maps"), std::string::npos) << top.err;
  EXPECT_NE(top.out.find("idle-1"), std::string::npos) << top.out;
  EXPECT_EQ(e2e::kernel_hold(after.app.pid()).progs, 0);

  // An exited process: its entries leave the maps and the metrics.
  ASSERT_GT(pinned_tasks_of(before.pid()), 0);
  before.app.signal(SIGKILL);
  before.app.wait_exit(10s, nullptr);
  EXPECT_TRUE(e2e::poll_until([&] { return pinned_tasks_of(before.pid()) == 0 && !has_pid(agent.scrape(), before.pid()); },
                              10s))
      << agent.scrape();
  EXPECT_TRUE(has_pid(agent.scrape(), after.pid()));

  agent.app.signal(SIGTERM);
  EXPECT_EQ(agent.app.wait_exit(20s, nullptr), 0) << agent.app.stderr_text();
}

// A runtime outside the agent's install (a copy of the build's, another
// inode) is found by the /proc scan, attached once, and then covers a
// process started later from its first task.
TEST_F(AgentE2E, ScanFindsOtherProbeLibraries) {
  const std::string copy = "/tmp/asynctrace-agent-scan-" + std::to_string(getpid());
  fs::remove_all(copy);
  const std::string tag = e2e::built_pythons().front().first;
  fs::create_directories(copy);
  fs::copy(e2e::binary_dir() + "/python/" + tag, copy + "/" + tag, fs::copy_options::recursive);
  Work before(0, 0, 2, 120, copy);
  ASSERT_TRUE(before.ready()) << before.app.stderr_text();
  Agent agent({"--library-prefix", copy});
  ASSERT_NE(agent.started(), "") << agent.app.stderr_text();
  std::string m;
  EXPECT_TRUE(e2e::poll_until(
      [&] {
        m = agent.scrape();
        return tasks_in_state(m, before.pid(), "suspended") == 3;
      },
      20s))
      << m;
  EXPECT_NE(agent.app.stderr_text().find("agent attached '" + copy + "/" + tag + "/asynctrace/_asynctrace"),
            std::string::npos)
      << agent.app.stderr_text();
  Work after(0, 0, 2, 120, copy);
  ASSERT_TRUE(after.ready()) << after.app.stderr_text();
  const json truth = after.truth();
  ASSERT_FALSE(truth.empty());
  EXPECT_TRUE(e2e::poll_until(
      [&] {
        m = agent.scrape();
        return sample_value(m, "asynctrace_tasks_created_total{pid=\"" + after.pid() + "\"") ==
                   truth["created"].get<double>() &&
               tasks_in_state(m, after.pid(), "suspended") == truth["alive"].get<double>();
      },
      20s))
      << truth << m;
  agent.app.signal(SIGTERM);
  EXPECT_EQ(agent.app.wait_exit(20s, nullptr), 0);
  before.app.signal(SIGKILL);
  after.app.signal(SIGKILL);
  before.app.wait_exit(10s, nullptr);
  after.app.wait_exit(10s, nullptr);
  fs::remove_all(copy);
}

// A pid that comes back as another process: the first one's tasks go, the
// second one's are all there. (Had the agent never seen the first alive, the
// second's start time, later than the first's tasks, tells too, unless both
// fall in one 10 ms clock tick.) The pid is reused on purpose through
// /proc/sys/kernel/ns_last_pid (a busy machine may take it first: retried).
TEST_F(AgentE2E, ReusedPidGetsFreshState) {
  Agent agent({"-v"});
  ASSERT_NE(agent.started(), "") << agent.app.stderr_text();
  std::unique_ptr<Work> first, second;
  pid_t pid = 0;
  for (int attempt = 0; attempt < 5 && !second; ++attempt) {
    first = std::make_unique<Work>(0, 0, 3, 120);
    ASSERT_TRUE(first->ready()) << first->app.stderr_text();
    // Seen alive by the agent (in its metrics): it knows the first start time.
    ASSERT_TRUE(e2e::poll_until(
        [&] { return pinned_tasks_of(first->pid()) == 4 && tasks_in_state(agent.scrape(), first->pid(), "suspended") == 4; },
        10s));
    pid = first->app.pid();
    first->app.signal(SIGKILL);
    first->app.wait_exit(10s, nullptr);
    {
      std::ofstream last("/proc/sys/kernel/ns_last_pid");
      last << pid - 1;
    }
    auto w = std::make_unique<Work>(0, 0, 1, 120);
    if (w->app.pid() == pid) second = std::move(w);
  }
  ASSERT_TRUE(second) << "could not get pid " << pid << " again";
  ASSERT_TRUE(second->ready()) << second->app.stderr_text();
  std::string m;
  EXPECT_TRUE(e2e::poll_until(
      [&] {
        m = agent.scrape();
        return pinned_tasks_of(second->pid()) == 2 && tasks_in_state(m, second->pid(), "suspended") == 2;
      },
      15s))
      << pinned_tasks_of(second->pid()) << "\n" << m << agent.app.stderr_text()
      << e2e::run({"bpftool", "map", "dump", "pinned", std::string(kPins) + "/tasks"}).out.substr(0, 3000)
      << "\nstat: " << e2e::read_file("/proc/" + second->pid() + "/stat");
  auto r = e2e::run({tool(), "ps", "-p", second->pid()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("idle-0"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("idle-2"), std::string::npos) << r.out;
  agent.app.signal(SIGTERM);
  EXPECT_EQ(agent.app.wait_exit(20s, nullptr), 0);
}

// A process that exec()s a new asyncio program: the old program's tasks go,
// the new one's come (its runtime is asked for a replay).
TEST_F(AgentE2E, ExecReplacesTheProgramsState) {
  Agent agent;
  ASSERT_NE(agent.started(), "") << agent.app.stderr_text();
  e2e::Program app({tool(), "run", "--", python(), e2e::source_dir() + "/tests/programs/execer.py"});
  ASSERT_TRUE(app.wait_line("READY", 30s)) << app.stderr_text();
  const std::string pid = std::to_string(app.pid());
  ASSERT_TRUE(e2e::poll_until([&] { return tasks_in_state(agent.scrape(), pid, "suspended") == 4; }, 10s))
      << agent.scrape();
  app.signal(SIGUSR2);
  ASSERT_TRUE(app.wait_line("AFTER READY", 30s)) << app.stderr_text();
  std::string m;
  EXPECT_TRUE(e2e::poll_until(
      [&] {
        m = agent.scrape();
        return tasks_in_state(m, pid, "suspended") == 3 && pinned_tasks_of(pid) == 3;
      },
      15s))
      << m << pinned_tasks_of(pid);
  auto r = e2e::run({tool(), "ps", "-p", pid});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("after-1"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("before-"), std::string::npos) << r.out;
  agent.app.signal(SIGTERM);
  EXPECT_EQ(agent.app.wait_exit(20s, nullptr), 0);
}

TEST_F(AgentE2E, SigtermSigkillRestartAndCleanup) {
  Work work(0, 0, 2, 300);
  ASSERT_TRUE(work.ready()) << work.app.stderr_text();
  std::set<int> ids;
  {
    Agent agent;
    const std::string line = agent.started();
    ASSERT_NE(line, "") << agent.app.stderr_text();
    EXPECT_EQ(line.find("(reused)"), std::string::npos) << line;
    EXPECT_TRUE(e2e::poll_until([&] { return pinned_tasks_of(work.pid()) == 3; }, 10s));
    EXPECT_GT(e2e::kernel_hold(0).progs, 0) << "the agent's programs are those with target_tgid 0";
    // A second agent, or a cleanup, while one runs: refused.
    auto second = e2e::run({tool(), "agent", "--listen", "none"});
    EXPECT_EQ(second.exit_code, 7) << second.err;
    EXPECT_NE(second.err.find("another agent"), std::string::npos) << second.err;
    auto cl = e2e::run({tool(), "agent", "--cleanup"});
    EXPECT_EQ(cl.exit_code, 7) << cl.err;
    ids = pinned_map_ids();
    EXPECT_EQ(ids.size(), kPinnedMaps.size());

    // SIGTERM: exit 0, probes detached, only the documented pins stay.
    agent.app.signal(SIGTERM);
    EXPECT_EQ(agent.app.wait_exit(20s, nullptr), 0) << agent.app.stderr_text();
  }
  auto held = e2e::wait_kernel_released(0, 20s);
  EXPECT_TRUE(held.empty()) << held.detail;
  EXPECT_EQ(e2e::agent_pin_files(), kPinnedMaps);
  EXPECT_NE(access(kLock, F_OK), 0) << "lock file left after SIGTERM";
  EXPECT_EQ(pinned_map_ids(), ids);

  // Restart: the same maps, the process's tasks current again; then SIGKILL:
  // the kernel drops links and programs, pins and lock file stay.
  auto restart_then_kill = [&](const char* view, const char* want) {
    {
      Agent agent;
      const std::string line = agent.started();
      EXPECT_NE(line.find("(reused)"), std::string::npos) << line << agent.app.stderr_text();
      EXPECT_EQ(pinned_map_ids(), ids);
      EXPECT_TRUE(e2e::poll_until([&] { return pinned_tasks_of(work.pid()) == 3; }, 10s));
      auto r = e2e::run({tool(), view, "-p", work.pid()});
      EXPECT_EQ(r.exit_code, 0) << r.err;
      EXPECT_NE(r.out.find(want), std::string::npos) << r.out;
      agent.app.signal(SIGKILL);
      agent.app.wait_exit(10s, nullptr);
    }
    const auto h = e2e::wait_kernel_released(0, 20s);
    EXPECT_TRUE(h.empty()) << h.detail;
    EXPECT_EQ(e2e::agent_pin_files(), kPinnedMaps);
  };
  restart_then_kill("pstree", "idle-1");
  restart_then_kill("ps", "idle-0");

  // --cleanup: no pins, no lock, and the maps are gone from the kernel.
  auto cl = e2e::run({tool(), "agent", "--cleanup"});
  EXPECT_EQ(cl.exit_code, 0) << cl.err;
  EXPECT_NE(access(kPins, F_OK), 0);
  EXPECT_NE(access(kLock, F_OK), 0);
  EXPECT_TRUE(e2e::poll_until(
      [&] {
        const auto live = all_map_ids();
        for (int id : ids)
          if (live.count(id)) return false;
        return true;
      },
      10s))
      << "the agent's maps outlived --cleanup";
  // Without an agent, pstree attaches by itself again.
  auto r = e2e::run({tool(), "-v", "pstree", "-p", work.pid()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("reading the agent's maps"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("idle-1"), std::string::npos) << r.out;
}

TEST_F(AgentE2E, NonLoopbackListenIsRefused) {
  auto r = e2e::run({tool(), "agent", "--listen", "0.0.0.0:9464"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("not a loopback address"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

// ---- Prometheus --------------------------------------------------------------

int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  return ntohs(a.sin_port);
}

// Instant query; the result vector (empty on error).
json prom_query(int port, const std::string& q) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(5);
  auto res = c.Get(("/api/v1/query?query=" + httplib::detail::encode_query_param(q)).c_str());
  if (!res || res->status != 200) return json::array();
  const json j = json::parse(res->body);
  return j.value("status", "") == "success" ? j["data"]["result"] : json::array();
}

// The single value of a query, -1 if none.
double prom_value(int port, const std::string& q) {
  const json r = prom_query(port, q);
  if (r.size() != 1) return -1;
  return std::stod(r[0]["value"][1].get<std::string>());
}

TEST_F(AgentE2E, PrometheusScrapesWhatTheProgramsDid) {
  Agent agent;
  ASSERT_NE(agent.started(), "") << agent.app.stderr_text();
  const std::string dir = "/tmp/asynctrace-prom-" + std::to_string(getpid());
  fs::remove_all(dir);
  fs::create_directories(dir + "/data");
  const int prom_port = free_port();
  {
    std::ofstream cfg(dir + "/prometheus.yml");
    cfg << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        << "scrape_configs:\n  - job_name: asynctrace\n    static_configs:\n"
        << "      - targets: ['127.0.0.1:" << agent.port << "']\n";
  }
  e2e::Program prom({"prometheus", "--config.file=" + dir + "/prometheus.yml", "--storage.tsdb.path=" + dir + "/data",
                     "--web.listen-address=127.0.0.1:" + std::to_string(prom_port), "--log.level=warn"});
  ASSERT_TRUE(e2e::poll_until(
      [&] {
        httplib::Client c("127.0.0.1", prom_port);
        auto res = c.Get("/-/ready");
        return res && res->status == 200;
      },
      60s))
      << prom.stderr_text();

  // Two programs at once, different amounts of work; both linger (tasks
  // suspended) until Prometheus has scraped their final values, then exit on
  // SIGUSR1. (Prometheus's first scrape can come seconds after /-/ready: its
  // target discovery sends updates at most every 5 s.)
  Work a(300, 20, 4, 120), b(120, 50, 1, 120);
  ASSERT_TRUE(a.ready()) << a.app.stderr_text();
  ASSERT_TRUE(b.ready()) << b.app.stderr_text();
  const json ta = a.truth(), tb = b.truth();
  ASSERT_FALSE(ta.empty()) << a.app.stderr_text();
  ASSERT_FALSE(tb.empty()) << b.app.stderr_text();

  // While they linger: tasks alive, by the scraped gauge.
  for (auto* w : {&a, &b}) {
    const json& t = w == &a ? ta : tb;
    const std::string sel = "{job=\"asynctrace\",pid=\"" + w->pid() + "\"}";
    EXPECT_TRUE(e2e::poll_until(
        [&] {
          return prom_value(prom_port, "sum(asynctrace_tasks" + sel + ")") == t["alive"].get<double>() &&
                 prom_value(prom_port, "asynctrace_tasks_created_total" + sel) == t["created"].get<double>();
        },
        30s))
        << "alive " << prom_value(prom_port, "sum(asynctrace_tasks" + sel + ")") << " vs " << t << "\n"
        << agent.scrape(false);
  }
  // promtool lints the text exposition; Prometheus itself parsed the
  // OpenMetrics one (up == 1, samples scraped).
  const std::string text = agent.scrape(false);
  ASSERT_NE(text, "");
  {
    std::ofstream(dir + "/scrape.txt") << text;
  }
  auto lint = e2e::run({"sh", "-c", "promtool check metrics < " + dir + "/scrape.txt"});
  EXPECT_EQ(lint.exit_code, 0) << lint.out << lint.err;
  const std::string om = agent.scrape(true);
  EXPECT_EQ(om.substr(om.size() - 6), "# EOF\n");
  EXPECT_EQ(prom_value(prom_port, "up{job=\"asynctrace\"}"), 1);
  // Prometheus asked for OpenMetrics and parsed it (it stores what it parsed).
  EXPECT_GT(prom_value(prom_port, "asynctrace_agent_scrapes_total{job=\"asynctrace\",format=\"openmetrics\"}"), 0);
  EXPECT_EQ(prom_query(prom_port, "scrape_samples_scraped{job=\"asynctrace\"}").size(), 1u);

  a.app.signal(SIGUSR1);
  b.app.signal(SIGUSR1);
  a.app.wait_exit(30s, nullptr);
  b.app.wait_exit(30s, nullptr);
  // After the exits: the scraped series, over their lifetime, match each
  // program's own counts.
  std::this_thread::sleep_for(2s);
  for (auto* w : {&a, &b}) {
    const json& t = w == &a ? ta : tb;
    const std::string sel = "{job=\"asynctrace\",pid=\"" + w->pid() + "\"}";
    EXPECT_EQ(prom_value(prom_port, "max_over_time(asynctrace_tasks_created_total" + sel + "[5m])"),
              t["created"].get<double>())
        << t;
    // Exactly the program's own: the runtime's discovery task (asynctrace/
    // _discover.py) is not counted (enable() restarts the timing session).
    EXPECT_EQ(prom_value(prom_port, "max_over_time(asynctrace_tasks_completed_total" + sel + "[5m])"),
              t["completed"].get<double>())
        << t;
    const std::string wsel = "{job=\"asynctrace\",pid=\"" + w->pid() + "\",coroutine=\"worker\"}";
    EXPECT_EQ(prom_value(prom_port, "max_over_time(asynctrace_step_duration_seconds_count" + wsel + "[5m])"),
              t["worker_steps"].get<double>())
        << t;
    EXPECT_EQ(prom_value(prom_port, "max_over_time(asynctrace_step_duration_seconds_bucket{job=\"asynctrace\",pid=\"" +
                                        w->pid() + "\",coroutine=\"worker\",le=\"+Inf\"}[5m])"),
              t["worker_steps"].get<double>());
    // Gone from the agent once exited (stale in Prometheus).
    EXPECT_TRUE(e2e::poll_until([&] { return !has_pid(agent.scrape(), w->pid()); }, 10s));
  }
  EXPECT_GT(prom_value(prom_port, "max_over_time(process_resident_memory_bytes{job=\"asynctrace\"}[5m])"), 0);
  EXPECT_GE(prom_value(prom_port, "max_over_time(process_cpu_seconds_total{job=\"asynctrace\"}[5m])"), 0);

  prom.signal(SIGTERM);
  prom.wait_exit(30s, nullptr);
  agent.app.signal(SIGTERM);
  EXPECT_EQ(agent.app.wait_exit(20s, nullptr), 0);
  fs::remove_all(dir);
}

}  // namespace

namespace {

// Regular files in `dir` whose names end with `suffix` and do not start with '.'.
std::vector<std::string> files_ending(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename();
    if (n[0] != '.' && n.size() > suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Processes whose command line is `... record -p PID ...`.
int recorders_of(const std::string& pid) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string cmd = e2e::read_file(e.path().string() + "/cmdline");
    if (cmd.find(std::string("record\0-p\0", 10) + pid + std::string("\0", 1)) != std::string::npos) ++n;
  }
  return n;
}

}  // namespace

// Periodic profiles (issue 6): a folded file per period in DIR/<pid>-<comm>/
// with the busy task's stacks, at most --profile-keep of them, and the same
// recording pushed as pprof to a fake Pyroscope ingest endpoint the way its
// HTTP API asks; SIGTERM ends it all, nothing of the recordings left.
TEST_F(AgentE2E, PeriodicProfilesWrittenAndPushed) {
  const std::string dir = "/tmp/asynctrace-agent-profiles-" + std::to_string(getpid());
  const std::string got = dir + "-ingest";
  fs::remove_all(dir);
  fs::remove_all(got);
  fs::create_directories(got);
  e2e::Program ingest({python(), e2e::source_dir() + "/tests/e2e/fake_ingest.py", got});
  auto port = ingest.wait_prefix("PORT ", 10s);
  ASSERT_TRUE(port) << ingest.stderr_text();
  e2e::Program traced({tool(), "run", "--", python(), e2e::source_dir() + "/tests/programs/time_shapes.py", "120"});
  ASSERT_TRUE(traced.wait_prefix("{\"ready\"", 30s)) << traced.stderr_text();
  const std::string pid = std::to_string(traced.pid());
  Agent agent({"--profile-dir", dir, "--profile-every", "3s", "--profile-duration", "1s", "--profile-format",
               "folded", "--profile-keep", "2", "--profile-push",
               "http://127.0.0.1:" + port->substr(5) + "/ingest"});
  ASSERT_NE(agent.started(), "") << agent.app.stderr_text();

  // A folded profile of the traced process, with the busy task's stacks.
  std::string proc_dir;
  std::vector<std::string> folded;
  ASSERT_TRUE(e2e::poll_until(
      [&] {
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(dir, ec))
          if (e.path().filename().string().rfind(pid + "-", 0) == 0) proc_dir = e.path();
        folded = proc_dir.empty() ? folded : files_ending(proc_dir, ".folded");
        return !folded.empty();
      },
      15s))
      << agent.app.stderr_text();
  EXPECT_EQ(fs::status(dir).permissions() & fs::perms::all, fs::perms::owner_all);
  EXPECT_EQ(fs::status(proc_dir).permissions() & fs::perms::all, fs::perms::owner_all);
  EXPECT_TRUE(std::regex_match(fs::path(folded[0]).filename().string(),
                               std::regex(R"(\d{8}T\d{6}\.\d{3}Z\.folded)")))
      << folded[0];
  const std::string text = e2e::read_file(folded[0]);
  bool burner_stack = false;  // one stack with the task and the function it burns CPU in
  std::istringstream lines(text);
  for (std::string l; std::getline(lines, l);)
    burner_stack = burner_stack || (l.find("burner") != std::string::npos && l.find("burn_cpu") != std::string::npos);
  EXPECT_TRUE(burner_stack) << text.substr(0, 2000);
  auto check = e2e::run({python(), e2e::source_dir() + "/tests/profile/validate_one.py", "folded", folded[0],
                         e2e::source_dir() + "/tests/third_party", "burner", "burn_cpu"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;

  // The push: Pyroscope's ingest API with a gzipped pprof in the `profile` field.
  ASSERT_TRUE(e2e::poll_until([&] { return fs::exists(got + "/1.target"); }, 10s)) << agent.app.stderr_text();
  const std::string target = e2e::read_file(got + "/1.target");
  EXPECT_EQ(target.rfind("/ingest?", 0), 0u) << target;
  EXPECT_NE(target.find("name=asynctrace."), std::string::npos) << target;
  EXPECT_NE(target.find("%7Bpid%3D" + pid + "%2Ccomm%3D"), std::string::npos) << target;
  EXPECT_NE(target.find("&format=pprof"), std::string::npos) << target;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(target, m, std::regex(R"(&from=(\d+)&until=(\d+))"))) << target;
  const long long from = std::stoll(m[1].str()), until = std::stoll(m[2].str()), now = std::time(nullptr);
  EXPECT_LE(from, until);
  EXPECT_LE(until - from, 5);
  EXPECT_LE(now - from, 60);
  EXPECT_EQ(e2e::read_file(got + "/1.ctype").rfind("multipart/form-data", 0), 0u);
  const std::string pprof = e2e::read_file(got + "/1.part.profile");
  ASSERT_GE(pprof.size(), 2u);
  EXPECT_EQ(pprof.substr(0, 2), "\x1f\x8b");  // gzip
  auto valid = e2e::run({python(), e2e::source_dir() + "/tests/profile/validate_one.py", "pprof",
                         got + "/1.part.profile", e2e::source_dir() + "/tests/third_party", "burner", "burn_cpu"});
  EXPECT_EQ(valid.exit_code, 0) << valid.out << valid.err;
  EXPECT_NE(e2e::read_file(got + "/1.part.sample_type_config").find("\"cpu\""), std::string::npos);

  // Retention: after a third profile, two files stay; the counters say so.
  std::string metrics;
  ASSERT_TRUE(e2e::poll_until(
      [&] {
        metrics = agent.scrape();
        return sample_value(metrics, "asynctrace_agent_profiles_written_total ") >= 3;
      },
      15s))
      << metrics << agent.app.stderr_text();
  EXPECT_EQ(files_ending(proc_dir, ".folded").size(), 2u);
  EXPECT_GE(sample_value(metrics, "asynctrace_agent_profiles_pushed_total "), 1);
  EXPECT_EQ(sample_value(metrics, "asynctrace_agent_profile_errors_total{reason=\"record_failed\"} "), 0) << metrics;

  // SIGTERM: exit 0, no recorder left, nothing of theirs in the kernel.
  agent.app.signal(SIGTERM);
  EXPECT_EQ(agent.app.wait_exit(20s, nullptr), 0) << agent.app.stderr_text();
  EXPECT_TRUE(e2e::poll_until([&] { return recorders_of(pid) == 0; }, 5s));
  auto held = e2e::wait_kernel_released(traced.pid(), 20s);
  EXPECT_TRUE(held.empty()) << held.detail;
  EXPECT_TRUE(files_ending(proc_dir, ".part").empty());
  fs::remove_all(dir);
  fs::remove_all(got);
}
