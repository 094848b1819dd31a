// SPDX-License-Identifier: Apache-2.0
// Kernels without uprobe_multi links (Linux < 6.6, e.g. Debian 12's 6.1):
// every feature that holds a USDT semaphore or attaches by library takes one
// perf-event uprobe per site instead (usdt::attach_uprobes). Here the tool
// runs with ASYNCTRACE_UPROBE_MULTI=0, which forces that path on any kernel;
// on a 6.1 kernel it is the only one. Checked: top, slow and record (timing
// holds), attach + a view from the held maps (replay request) + detach, and
// the agent (by library, every process) - each against what the program
// measured or knows of itself, and that nothing stays in the kernel after.
//
// Timeouts are generous and waits are polls: these also run in QEMU on 6.1,
// where Python is 20-40 times slower.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "harness.h"

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

using e2e::tool;

// What -v prints on the fallback path (the reason follows in parentheses).
const std::string kFallback = "attaching USDT probes with perf-event uprobes, one per site";

bool has(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

std::string dump(const std::map<std::string, int>& m) {
  std::string s;
  for (const auto& [k, v] : m) s += k + "=" + std::to_string(v) + " ";
  return s;
}

class NoUprobeMulti : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "the e2e tier runs as root";
    // Inherited by every process the tests start (e2e::run, e2e::Program).
    setenv("ASYNCTRACE_UPROBE_MULTI", "0", 1);
    noop_before_ = e2e::prog_ids_named("at_noop");
  }
  void TearDown() override { unsetenv("ASYNCTRACE_UPROBE_MULTI"); }

  // Nothing of a tracer of `pid` (0: the agent) left in the kernel: its
  // programs and their links (e2e::kernel_hold), the no-op programs of its
  // holds and requests, no uprobe on a runtime listed anywhere, and the
  // semaphores of the traced process `target` back to zero.
  void expect_nothing_left(pid_t pid, pid_t target) {
    const e2e::KernelHold h = e2e::wait_kernel_released(pid, 60s);
    EXPECT_TRUE(h.empty()) << h.detail;
    std::set<int> noop;
    EXPECT_TRUE(e2e::poll_until(
        [&] {
          noop = new_noop_ids();
          return noop.empty();
        },
        60s))
        << noop.size() << " no-op program(s) left, " << e2e::links_of(noop).size() << " link(s) of them";
    EXPECT_EQ(e2e::asynctrace_uprobes(), "");
    std::map<std::string, int> sems;
    EXPECT_TRUE(e2e::poll_until(
        [&] {
          sems = e2e::usdt_semaphores(target);
          for (const auto& [name, v] : sems)
            if (v != 0) return false;
          return !sems.empty();
        },
        30s))
        << dump(sems);
  }

  // at_noop programs loaded since SetUp (ours: holds and replay requests).
  std::set<int> new_noop_ids() const {
    std::set<int> ids;
    for (int id : e2e::prog_ids_named("at_noop"))
      if (!noop_before_.count(id)) ids.insert(id);
    return ids;
  }

  // Runs the tool like e2e::run, noting meanwhile, once it has attached to
  // `pid` (links of its programs and of its no-op holds), the types of all
  // those links: on this path only "perf_event", never "uprobe_multi".
  e2e::Output run_watching_links(const std::vector<std::string>& argv, pid_t pid,
                                 std::map<std::string, int>* types) {
    e2e::Program p(argv);
    e2e::poll_until(
        [&] {
          (void)p.stderr_text();  // drains both pipes: a full one would stall the tool
          const char st = e2e::proc_state(p.pid());
          if (st == 0 || st == 'Z') return true;  // exited (the check below fails)
          const e2e::KernelHold h = e2e::kernel_hold(pid);
          const auto noop_links = e2e::links_of(new_noop_ids());
          if (h.links == 0 || noop_links.empty()) return false;
          *types = h.link_types;
          for (const auto& [id, type] : noop_links) (*types)[type]++;
          return true;
        },
        120s);
    e2e::Output o;
    o.exit_code = p.wait_exit(180s, &o.out);
    o.err = p.stderr_text();
    return o;
  }

  static void expect_perf_links_only(const std::map<std::string, int>& types) {
    EXPECT_GT(types.count("perf_event") ? types.at("perf_event") : 0, 0) << dump(types);
    EXPECT_EQ(types.size(), 1u) << dump(types);
  }

  std::set<int> noop_before_;  // at_noop programs of others (other test runs on the machine)
};

// (1) top: one JSON frame, timing on, the burner's and blocker's longest
// steps as long as the program measured them.
TEST_F(NoUprobeMulti, TopMatchesWhatTheTasksMeasured) {
  e2e::Shapes s(e2e::python());
  ASSERT_TRUE(s.ready(120s)) << s.app.stderr_text();
  std::map<std::string, int> links;
  auto top = run_watching_links({tool(), "-v", "top", "-p", s.pid(), "-n", "1", "-i", "4s", "--format", "json", "--timeout", "60s"},
                                s.app.pid(), &links);
  ASSERT_EQ(top.exit_code, 0) << top.err;
  expect_perf_links_only(links);
  EXPECT_TRUE(has(top.err, kFallback)) << top.err.substr(0, 2000);
  expect_nothing_left(s.app.pid(), s.app.pid());
  const json f = e2e::last_ndjson(top.out);
  const json truth = s.truth();
  ASSERT_TRUE(f.at("header").at("timing").get<bool>()) << top.out;
  const json* burner = e2e::row(f, "burner");
  const json* blocker = e2e::row(f, "blocker");
  const json* spinner = e2e::row(f, "spinner");
  ASSERT_TRUE(burner && blocker && spinner) << top.out;
  ASSERT_GE(burner->at("steps").get<uint64_t>(), 1u) << burner->dump();
  ASSERT_GE(blocker->at("steps").get<uint64_t>(), 1u) << blocker->dump();
  EXPECT_GT(spinner->at("steps").get<uint64_t>(), 0u) << spinner->dump();
  // A step is the work the task measured around itself plus the rest of the
  // step (more Python on a slow machine): at least the shortest work it
  // measured, at most the longest plus 5% and 50 ms.
  for (const auto& [name, r] : {std::pair{"burner", burner}, std::pair{"blocker", blocker}}) {
    const json& t = truth.at(name);
    const double longest = r->at("longest_ns").get<double>() / 1e9;
    EXPECT_GE(longest, 0.999 * t.at("min_s").get<double>()) << name << " " << r->dump() << " truth " << t.dump();
    EXPECT_LE(longest, 1.05 * t.at("max_s").get<double>() + 0.05) << name << " " << r->dump() << " truth " << t.dump();
  }
  EXPECT_EQ(f.at("header").at("dropped").get<uint64_t>(), 0u) << f.at("header").dump();
}

// (2) slow: the burner's and blocker's long steps, each with the plain
// function it spent them in on top of its sampled stack.
TEST_F(NoUprobeMulti, SlowNamesTheBlockingFunction) {
  e2e::Shapes s(e2e::python());
  ASSERT_TRUE(s.ready(120s)) << s.app.stderr_text();
  std::map<std::string, int> links;
  auto slow = run_watching_links({tool(), "slow", "-p", s.pid(), "-t", "100ms", "-d", "3s", "--format", "json", "--timeout", "60s"},
                                 s.app.pid(), &links);
  ASSERT_EQ(slow.exit_code, 0) << slow.err;
  expect_perf_links_only(links);
  std::map<std::string, std::string> top_function;  // task -> innermost frame of its first slow step
  std::istringstream in(slow.out);
  for (std::string line; std::getline(in, line);) {
    const json r = json::parse(line);
    // A step already running when the tracer attached is reported before
    // the replay names its task (seen once on 6.1 under QEMU). And a 214 ms
    // burner step got no sample once, on 6.1 under TCG with the host at load
    // 10: the vCPU barely ran. So not every step must be sampled, but each
    // task's first sampled step must name its function.
    if (r.at("task_name").get<std::string>().empty() || r.at("samples").empty()) continue;
    top_function.emplace(r.at("task_name").get<std::string>(),
                         r.at("samples").at(0).at("stack").at(0).at("function").get<std::string>());
  }
  EXPECT_EQ(top_function["burner"], "burn_cpu") << slow.out;
  EXPECT_EQ(top_function["blocker"], "blocking_io") << slow.out;
  expect_nothing_left(s.app.pid(), s.app.pid());
  s.truth();
}

// (3) record -f folded: the burner's stacks, with the function it burns in.
TEST_F(NoUprobeMulti, RecordWritesTheProgramsFunctions) {
  e2e::Shapes s(e2e::python());
  ASSERT_TRUE(s.ready(120s)) << s.app.stderr_text();
  const std::string out = "/tmp/asynctrace-nomulti-" + std::to_string(getpid()) + ".folded";
  std::map<std::string, int> links;
  auto rec = run_watching_links({tool(), "record", "-p", s.pid(), "-d", "3s", "-f", "folded", "-o", out, "--timeout", "60s"},
                                s.app.pid(), &links);
  ASSERT_EQ(rec.exit_code, 0) << rec.err;
  expect_perf_links_only(links);
  const std::string text = e2e::read_file(out);
  unlink(out.c_str());
  double burn_cpu = 0, total = 0;
  for (const auto& [stack, w] : e2e::folded(text)) {
    total += w;
    if (has(stack, "burner") && has(stack, "burn_cpu")) burn_cpu += w;
  }
  EXPECT_GT(burn_cpu, 0) << text.substr(0, 3000);
  EXPECT_GT(burn_cpu, 0.1 * total) << text.substr(0, 3000);  // ~35% of the loop's time
  expect_nothing_left(s.app.pid(), s.app.pid());
  s.truth();
}

// (4) attach --timing holds the maps and the timing semaphore on perf-event
// uprobes; pstree from the held maps gets fresh stacks through a replay
// request (a perf-event uprobe too); detach leaves nothing, semaphores 0.
TEST_F(NoUprobeMulti, AttachHoldsAViewRequestsAReplayDetachLeavesNothing) {
  e2e::Shapes s(e2e::python());
  ASSERT_TRUE(s.ready(120s)) << s.app.stderr_text();
  const pid_t pid = s.app.pid();
  const auto before = e2e::usdt_semaphores(pid);
  ASSERT_FALSE(before.empty()) << "no asynctrace runtime mapped by " << pid;
  for (const auto& [name, v] : before) EXPECT_EQ(v, 0) << name;

  e2e::Program holder({tool(), "-v", "attach", "-p", s.pid(), "--timing", "--timeout", "60s"});
  ASSERT_TRUE(holder.wait_prefix("attached pid=" + s.pid(), 120s).has_value()) << holder.stderr_text();
  EXPECT_TRUE(has(holder.stderr_text(), kFallback)) << holder.stderr_text().substr(0, 2000);
  // Held: replay__end and timing__on raised, only perf-event links.
  const auto held = e2e::usdt_semaphores(pid);
  EXPECT_GE(held.at("replay__end"), 1) << dump(held);
  EXPECT_GE(held.at("timing__on"), 1) << dump(held);
  const e2e::KernelHold h = e2e::kernel_hold(pid);
  EXPECT_GT(h.progs, 0) << h.detail;
  std::map<std::string, int> links = h.link_types;
  for (const auto& [id, type] : e2e::links_of(new_noop_ids())) links[type]++;  // timing hold, replay request
  expect_perf_links_only(links);

  for (int round = 0; round < 2; ++round) {  // the second reuses a released request slot
    SCOPED_TRACE("view " + std::to_string(round));
    auto tree = e2e::run({tool(), "-v", "pstree", "-p", s.pid(), "--timeout", "60s"}, 180s);
    ASSERT_EQ(tree.exit_code, 0) << tree.err;
    EXPECT_FALSE(has(tree.err, "no replay requested")) << tree.err;
    EXPECT_TRUE(has(tree.err, "replay into pinned maps")) << tree.err;
    EXPECT_TRUE(has(tree.out, "(T) burner")) << tree.out;
    EXPECT_TRUE(has(tree.out, " burner " + e2e::Shapes::program())) << tree.out;  // a frame: fresh stacks
    EXPECT_TRUE(has(tree.out, "(T) sleeper-2")) << tree.out;
  }
  // Timing from the held maps: the burner's steps were timed.
  auto ps = e2e::run({tool(), "ps", "-p", s.pid(), "--long", "--format", "json"}, 180s);
  ASSERT_EQ(ps.exit_code, 0) << ps.err;
  json burner;
  const json view = json::parse(ps.out);  // (a temporary's member would dangle in the loop)
  for (const auto& t : view.at("tasks"))
    if (t.at("name") == "burner") burner = t;
  ASSERT_TRUE(burner.is_object()) << ps.out.substr(0, 3000);
  burner.erase("stack");
  ASSERT_TRUE(burner.contains("timing") && burner.at("timing").is_object()) << burner.dump();
  EXPECT_GT(burner.at("timing").at("steps").get<int>(), 0) << burner.dump();

  holder.signal(SIGINT);
  EXPECT_EQ(holder.wait_exit(120s, nullptr), 0) << holder.stderr_text();
  expect_nothing_left(pid, pid);
  const json truth = s.truth();
  EXPECT_FALSE(truth.empty());
}

// (5) The agent attaches by library for every process (pid -1 perf-event
// uprobes): a program started after it is found, pstree reads the agent's
// maps with fresh stacks, SIGTERM leaves only the documented pins.
TEST_F(NoUprobeMulti, AgentFindsALaterProgramAndLeavesOnlyItsPins) {
  e2e::cleanup_agent_leftovers();
  {
    e2e::Agent agent({"-v"});
    ASSERT_NE(agent.started(120s), "") << agent.app.stderr_text();
    EXPECT_TRUE(has(agent.app.stderr_text(), kFallback)) << agent.app.stderr_text().substr(0, 2000);
    e2e::Work work(0, 0, 2, 600);
    ASSERT_TRUE(work.ready(120s)) << work.app.stderr_text();
    std::string m;
    EXPECT_TRUE(e2e::poll_until(
        [&] {
          m = agent.scrape();
          return e2e::tasks_in_state(m, work.pid(), "suspended") == 3;  // idle-0, idle-1, main
        },
        120s))
        << m << agent.app.stderr_text();
    std::map<std::string, int> links = e2e::kernel_hold(0).link_types;  // the agent's programs: target_tgid 0
    for (const auto& [id, type] : e2e::links_of(new_noop_ids())) links[type]++;  // its timing__on holds
    expect_perf_links_only(links);
    EXPECT_GE(e2e::usdt_semaphores(work.app.pid()).at("timing__on"), 1);

    auto r = e2e::run({tool(), "-v", "pstree", "-p", work.pid(), "--timeout", "60s"}, 180s);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(has(r.err, "reading the agent's maps")) << r.err;
    EXPECT_FALSE(has(r.err, "no replay requested")) << r.err;
    EXPECT_TRUE(has(r.out, "idle-0")) << r.out;
    EXPECT_TRUE(has(r.out, "idle-1")) << r.out;
    EXPECT_TRUE(has(r.out, "idler")) << r.out;  // stacks came with the refresh replay
    EXPECT_EQ(e2e::kernel_hold(work.app.pid()).progs, 0) << "pstree loaded an object of its own";

    agent.app.signal(SIGTERM);
    EXPECT_EQ(agent.app.wait_exit(120s, nullptr), 0) << agent.app.stderr_text();
    expect_nothing_left(0, work.app.pid());
  }
  EXPECT_EQ(e2e::agent_pin_files(), e2e::kAgentPinnedMaps);
  EXPECT_NE(access(e2e::kAgentLock, F_OK), 0) << "lock file left after SIGTERM";
  e2e::cleanup_agent_leftovers();
}

}  // namespace
