// SPDX-License-Identifier: Apache-2.0
// End-to-end checks of the batch path (issue 3): what the runtime leaves out
// (tasks created and completed between two flushes, repeated states) must not
// change what the tool shows, and a tracer arriving while another one holds
// replay__end still gets its replay. Root, real BPF, real processes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "abi.h"
#include "asynctrace/stack_hash.h"
#include "harness.h"

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::string tool() { return e2e::binary_dir() + "/asynctrace"; }

std::set<std::string> names_in(const json& view) {
  std::set<std::string> out;
  for (const auto& t : view.at("tasks")) out.insert(t.at("name").get<std::string>());
  return out;
}

// The held maps after heavy churn hold exactly the program's pending tasks:
// none of the 20,000 erased or completed tasks stays behind, none is missing.
void churn_case(const std::string& tag, const std::string& py, const std::string& events) {
  const std::string truth_file = "/tmp/asynctrace-e2e-" + std::to_string(getpid()) + "-churn-" + tag + ".json";
  e2e::Program app({tool(), "run", "--", py, e2e::source_dir() + "/tests/programs/churn_keep.py", truth_file});
  ASSERT_TRUE(app.wait_line("WAITING", 30s)) << app.stderr_text();
  e2e::Program holder({"env", "ASYNCTRACE_EVENTS=" + events, tool(), "attach", "-p", std::to_string(app.pid())});
  ASSERT_TRUE(holder.wait_line("attached pid=" + std::to_string(app.pid()) + " maps=/sys/fs/bpf/asynctrace/" +
                                   std::to_string(app.pid()),
                               30s))
      << holder.stderr_text();
  app.signal(SIGUSR2);
  ASSERT_TRUE(app.wait_line("READY", 120s)) << app.stderr_text();
  const json truth = json::parse(e2e::read_file(truth_file));
  unlink(truth_file.c_str());

  auto ps = e2e::run({tool(), "ps", "-p", std::to_string(app.pid()), "--format", "json"});
  ASSERT_EQ(ps.exit_code, 0) << ps.err;
  const json view = json::parse(ps.out);
  std::set<std::string> want;
  for (const auto& n : truth.at("tasks")) want.insert(n.get<std::string>());
  EXPECT_EQ(names_in(view), want);
  EXPECT_TRUE(view.at("complete").get<bool>()) << ps.out.substr(0, 2000);

  auto stats = e2e::run({tool(), "stats", "-p", std::to_string(app.pid()), "--format", "json"});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  const json st = json::parse(stats.out);
  EXPECT_EQ(st.at("tasks").get<size_t>(), want.size()) << stats.out;
  EXPECT_EQ(st.at("counters").at("dropped_in_runtime").get<uint64_t>(), 0u) << stats.out;
  EXPECT_EQ(st.at("counters").at("bad_records").get<uint64_t>(), 0u) << stats.out;

  const json& ring = truth.at("ring");
  if (events == "batch") {
    // The fast path was taken and left work out (else this test proves nothing).
    EXPECT_GT(ring.at("create").get<uint64_t>(), 0u) << ring.dump();
    EXPECT_GT(ring.at("erased").get<uint64_t>(), 0u) << ring.dump();
    EXPECT_GT(ring.at("same_state").get<uint64_t>(), 0u) << ring.dump();
  } else {
    EXPECT_EQ(ring.at("create").get<uint64_t>(), 0u) << ring.dump();
  }
  EXPECT_EQ(ring.at("dropped").get<uint64_t>(), 0u) << ring.dump();

  app.signal(SIGUSR1);
  std::string out;
  EXPECT_EQ(app.wait_exit(60s, &out), 0) << app.stderr_text();
  holder.signal(SIGINT);
  EXPECT_EQ(holder.wait_exit(30s, &out), 0) << holder.stderr_text();
}

TEST(BatchPath, ChurnLeavesExactlyThePendingTasksInTheMaps) {
  for (const auto& [tag, py] : e2e::built_pythons()) {
    SCOPED_TRACE(py);
    churn_case(tag, py, "batch");
  }
}

TEST(BatchPath, PerEventPathGivesTheSameTasks) {
  const auto pys = e2e::built_pythons();
  ASSERT_FALSE(pys.empty());
  churn_case(pys.front().first, pys.front().second, "per-event");
}

// bpftrace holds replay__end: its semaphore stays at 1 when asynctrace
// attaches too, so only a replay request (replay__req0..3) makes the runtime
// replay for asynctrace. Before those existed this one-shot timed out.
TEST(BatchPath, OneShotGetsItsReplayWhileAnotherTracerHoldsReplayEnd) {
  const auto pys = e2e::built_pythons();
  ASSERT_FALSE(pys.empty());
  const std::string py = pys.front().second;
  e2e::Program app({tool(), "run", "--", py, "-c",
                    "import asyncio\n"
                    "async def waiter(ev):\n    await ev.wait()\n"
                    "async def main():\n    ev = asyncio.Event()\n"
                    "    t = asyncio.create_task(waiter(ev), name='held-by-bpftrace')\n"
                    "    await asyncio.sleep(0)\n    print('READY', flush=True)\n    await asyncio.sleep(120)\n"
                    "asyncio.run(main())"});
  ASSERT_TRUE(app.wait_line("READY", 30s)) << app.stderr_text();
  std::string so;
  {
    std::istringstream maps(e2e::read_file("/proc/" + std::to_string(app.pid()) + "/maps"));
    std::string line;
    while (std::getline(maps, line))
      if (line.find("_asynctrace") != std::string::npos) so = line.substr(line.find('/'));
  }
  ASSERT_FALSE(so.empty());
  e2e::Program bt({"bpftrace", "-p", std::to_string(app.pid()), "-e",
                   "usdt:" + so + ":asynctrace:replay__end { } BEGIN { printf(\"bpftrace-ready\\n\"); }"});
  ASSERT_TRUE(bt.wait_line("bpftrace-ready", 60s)) << bt.stderr_text();
  auto r = e2e::run({tool(), "pstree", "-p", std::to_string(app.pid()), "--timeout", "5s"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("held-by-bpftrace"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("waiter"), std::string::npos) << r.out;  // its frames came with the replay
  bt.signal(SIGINT);
  std::string out;
  bt.wait_exit(30s, &out);
  app.signal(SIGTERM);
  app.wait_exit(30s, &out);
}

// The stack ids of the batch path are the runtime's (STACK records carry
// them); the per-event programs compute theirs with
// include/asynctrace/stack_hash.h. Interning is only right if both are one
// function: every stack the runtime sent, read back from the maps `attach`
// pins, has as its key the header's hash of its frames (flags included), for
// stacks of 1 to more than ASYNCTRACE_MAX_FRAMES frames (truncated).
struct PinnedStack {
  at_stack_key key;
  at_stack value;
};

std::vector<PinnedStack> pinned_stacks(const std::string& path, uint32_t pid) {
  std::vector<PinnedStack> out;
  union bpf_attr a = {};
  a.pathname = reinterpret_cast<uint64_t>(path.c_str());
  const int fd = static_cast<int>(syscall(__NR_bpf, BPF_OBJ_GET, &a, sizeof a));
  if (fd < 0) return out;
  at_stack_key key{}, next{};
  bool first = true;
  for (;;) {
    a = {};
    a.map_fd = static_cast<uint32_t>(fd);
    a.key = first ? 0 : reinterpret_cast<uint64_t>(&key);
    a.next_key = reinterpret_cast<uint64_t>(&next);
    if (syscall(__NR_bpf, BPF_MAP_GET_NEXT_KEY, &a, sizeof a) != 0) break;
    first = false;
    key = next;
    PinnedStack e{key, {}};
    a = {};
    a.map_fd = static_cast<uint32_t>(fd);
    a.key = reinterpret_cast<uint64_t>(&e.key);
    a.value = reinterpret_cast<uint64_t>(&e.value);
    if (syscall(__NR_bpf, BPF_MAP_LOOKUP_ELEM, &a, sizeof a) == 0 && e.key.pid == pid) out.push_back(e);
  }
  close(fd);
  return out;
}

TEST(BatchPath, RuntimeStackIdsAreTheStackHashHeaders) {
  const auto pys = e2e::built_pythons();
  ASSERT_FALSE(pys.empty());
  e2e::Program app({tool(), "run", "--", pys.front().second, "-c",
                    "import asyncio\n"
                    "async def deep(n, ev):\n"
                    "    if n == 0:\n        await ev.wait()\n"
                    "    else:\n        await deep(n - 1, ev)\n"
                    "async def main():\n    ev = asyncio.Event()\n"
                    "    ts = [asyncio.create_task(deep(n, ev), name=f'deep-{n}') for n in (0, 1, 5, 31, 45)]\n"
                    "    await asyncio.sleep(0)\n    print('READY', flush=True)\n    await asyncio.sleep(120)\n"
                    "asyncio.run(main())"});
  ASSERT_TRUE(app.wait_line("READY", 30s)) << app.stderr_text();
  const std::string pid = std::to_string(app.pid());
  e2e::Program holder({tool(), "attach", "-p", pid});
  ASSERT_TRUE(holder.wait_line("attached pid=" + pid + " maps=/sys/fs/bpf/asynctrace/" + pid, 30s))
      << holder.stderr_text();
  std::vector<PinnedStack> stacks;
  // Sent by the replay: main's, and deep-0/1/5's (2, 3 and 7 frames); deep-31
  // and deep-45 share their first 32 frames, one truncated stack.
  e2e::poll_until(
      [&] {
        stacks = pinned_stacks("/sys/fs/bpf/asynctrace/" + pid + "/stacks", static_cast<uint32_t>(app.pid()));
        return stacks.size() >= 5;
      },
      10000ms);
  EXPECT_GE(stacks.size(), 5u);
  size_t truncated = 0;
  for (const PinnedStack& s : stacks) {
    ASSERT_GE(s.value.nframes, 1u);
    ASSERT_LE(s.value.nframes, static_cast<uint32_t>(ASYNCTRACE_MAX_FRAMES));
    EXPECT_EQ(s.key.stack_id, asynctrace_stack_hash(s.value.frames, s.value.nframes))
        << "stack of " << s.value.nframes << " frames";
    if (s.value.frames[s.value.nframes - 1].flags & ASYNCTRACE_FRAME_TRUNCATED) truncated++;
  }
  EXPECT_GE(truncated, 1u) << "the 45-deep task's stack is cut at ASYNCTRACE_MAX_FRAMES";
  holder.signal(SIGINT);
  std::string out;
  holder.wait_exit(30s, &out);
  app.signal(SIGTERM);
  app.wait_exit(30s, &out);
}

}  // namespace
