// SPDX-License-Identifier: Apache-2.0
// Rendering from recorded snapshots, against Python 3.14's output for the same
// program shape.
#include "render/views.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "core/model.h"

using namespace asynctrace;

namespace {

enum : uint64_t { kMain = 1, kAexit, kAexitInner, kWorker, kSleep, kGather };

void code(Snapshot& s, uint64_t id, const char* qn, const char* file) {
  s.code[id] = CodeInfo{qn, file, 1, false};
}

TaskRecord task(uint64_t id, const char* name, uint64_t seq, std::vector<Frame> frames) {
  TaskRecord t;
  t.id = id;
  t.name = name;
  t.seq = seq;
  t.tid = 4242;
  t.state = TaskState::Suspended;
  t.frames = std::move(frames);
  return t;
}

// The TaskGroup program of the issue: main -> TaskGroup -> two sleeping workers.
Snapshot taskgroup_snapshot() {
  Snapshot s;
  s.pid = 99;
  code(s, kMain, "main", "/srv/app/demo.py");
  code(s, kAexit, "TaskGroup.__aexit__", "/usr/lib/python3.14/asyncio/taskgroups.py");
  code(s, kAexitInner, "TaskGroup._aexit", "/usr/lib/python3.14/asyncio/taskgroups.py");
  code(s, kWorker, "worker", "/srv/app/demo.py");
  code(s, kSleep, "sleep", "/usr/lib/python3.14/asyncio/tasks.py");
  // Deliberately out of creation order: the model orders by seq.
  auto w1 = task(0x7f0000000300, "worker-1", 3, {{kSleep, 705}, {kWorker, 30}});
  auto w0 = task(0x7f0000000200, "worker-0", 2, {{kSleep, 705}, {kWorker, 30}});
  auto t1 = task(0x7f0000000100, "Task-1", 1, {{kAexitInner, 121}, {kAexit, 72}, {kMain, 55}});
  t1.awaiting_kind = AwaitKind::Future;
  w0.awaited_by.push_back({t1.id, EdgeKind::TaskGroup});
  w1.awaited_by.push_back({t1.id, EdgeKind::TaskGroup});
  s.tasks = {w1, t1, w0};
  return s;
}

}  // namespace

TEST(Pstree, MatchesPython314ForTaskGroup) {
  const auto g = build_graph(taskgroup_snapshot());
  const std::string expected =
      "└── (T) Task-1\n"
      "    └──  main /srv/app/demo.py:55\n"
      "        └──  TaskGroup.__aexit__ /usr/lib/python3.14/asyncio/taskgroups.py:72\n"
      "            └──  TaskGroup._aexit /usr/lib/python3.14/asyncio/taskgroups.py:121\n"
      "                ├── (T) worker-0\n"
      "                │   └──  worker /srv/app/demo.py:30\n"
      "                │       └──  sleep /usr/lib/python3.14/asyncio/tasks.py:705\n"
      "                └── (T) worker-1\n"
      "                    └──  worker /srv/app/demo.py:30\n"
      "                        └──  sleep /usr/lib/python3.14/asyncio/tasks.py:705\n";
  EXPECT_EQ(render_pstree(g), expected);
}

TEST(Ps, MatchesPython314Columns) {
  const auto g = build_graph(taskgroup_snapshot());
  const std::string out = render_ps(g);
  auto pad = [](std::string s, size_t w) { return s.size() < w ? s + std::string(w - s.size(), ' ') : s; };
  std::string expected = pad("tid", 10) + " " + pad("task id", 20) + " " + pad("task name", 20) + " " +
                         pad("coroutine stack", 50) + " " + pad("awaiter chain", 50) + " " +
                         pad("awaiter name", 15) + " " + pad("awaiter id", 15) + "\n" +
                         std::string(180, '-') + "\n";
  expected += pad("4242", 10) + " " + pad("0x7f0000000100", 20) + " " + pad("Task-1", 20) + " " +
              pad("TaskGroup._aexit -> TaskGroup.__aexit__ -> main", 50) + " " + pad("", 50) + " " +
              pad("", 15) + " " + pad("0x0", 15) + "\n";
  for (const char* w : {"worker-0", "worker-1"}) {
    const char* id = std::string(w) == "worker-0" ? "0x7f0000000200" : "0x7f0000000300";
    expected += pad("4242", 10) + " " + pad(id, 20) + " " + pad(w, 20) + " " + pad("sleep -> worker", 50) +
                " " + pad("TaskGroup._aexit -> TaskGroup.__aexit__ -> main", 50) + " " +
                pad("Task-1", 15) + " " + pad("0x7f0000000100", 15) + "\n";
  }
  EXPECT_EQ(out, expected);
}

TEST(Pstree, TaskAwaitedByTwoTasksAppearsUnderBoth) {
  Snapshot s;
  code(s, kMain, "waiter", "/a.py");
  code(s, kWorker, "shared", "/a.py");
  auto a = task(10, "A", 1, {{kMain, 5}});
  auto b = task(20, "B", 2, {{kMain, 5}});
  auto c = task(30, "C", 3, {{kWorker, 9}});
  a.awaiting_kind = b.awaiting_kind = AwaitKind::Task;
  a.awaiting_id = b.awaiting_id = 30;
  s.tasks = {a, b, c};
  const std::string expected =
      "└── (T) A\n"
      "    └──  waiter /a.py:5\n"
      "        └── (T) C\n"
      "            └──  shared /a.py:9\n"
      "└── (T) B\n"
      "    └──  waiter /a.py:5\n"
      "        └── (T) C\n"
      "            └──  shared /a.py:9\n";
  EXPECT_EQ(render_pstree(build_graph(s)), expected);
  const auto rows = build_ps_rows(build_graph(s));
  ASSERT_EQ(rows.size(), 4u);  // A, B, and C once per awaiter
  EXPECT_EQ(rows[2].awaiter_name, "A");
  EXPECT_EQ(rows[3].awaiter_name, "B");
}

TEST(Pstree, AwaitCycleIsDrawnWithTheBackEdgeMarked) {
  Snapshot s;
  code(s, kMain, "f", "/c.py");
  auto a = task(10, "A", 1, {{kMain, 1}});
  auto b = task(20, "B", 2, {{kMain, 2}});
  a.awaiting_kind = b.awaiting_kind = AwaitKind::Task;
  a.awaiting_id = 20;
  b.awaiting_id = 10;
  s.tasks = {a, b};
  const std::string expected =
      "└── (T) A\n"
      "    └──  f /c.py:1\n"
      "        └── (T) B\n"
      "            └──  f /c.py:2\n"
      "                └── (T) A [await cycle: back edge]\n";
  EXPECT_EQ(render_pstree(build_graph(s)), expected);
}

TEST(Pstree, UntrustedNamesAreEscaped) {
  Snapshot s;
  code(s, kMain, "evil\x1b[2Jfn", "/tmp/new\nline.py");
  s.tasks = {task(10, "name\nwith\x1b[31m escapes", 1, {{kMain, 3}})};
  EXPECT_EQ(render_pstree(build_graph(s)),
            "└── (T) name\\nwith\\x1b[31m escapes\n"
            "    └──  evil\\x1b[2Jfn /tmp/new\\nline.py:3\n");
}

TEST(Pstree, UnnamedCodeIsShownById) {
  Snapshot s;
  s.tasks = {task(10, "T", 1, {{0xabc, 0}})};
  EXPECT_EQ(render_pstree(build_graph(s)), "└── (T) T\n    └──  <code 0xabc>\n");
}

TEST(Ps, UnnamedCodeKeepsItsWholePlaceholder) {
  // Was "<code" (the label cut at its first space), seen in a fuzz_stacks seed.
  Snapshot s;
  code(s, kMain, "waiter", "/a.py");
  auto a = task(10, "A", 1, {{kMain, 5}, {0xdef, 7}});
  a.awaiting_kind = AwaitKind::Task;
  a.awaiting_id = 20;
  s.tasks = {a, task(20, "B", 2, {{0xabc, 9}})};
  const auto rows = build_ps_rows(build_graph(s));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].coroutine_stack, "waiter -> <code 0xdef>");
  EXPECT_EQ(rows[1].coroutine_stack, "<code 0xabc>");
  EXPECT_EQ(rows[1].awaiter_chain, "waiter -> <code 0xdef>");
}

TEST(Json, SchemaFields) {
  const auto j = graph_json(build_graph(taskgroup_snapshot()), true);
  EXPECT_EQ(j["schema"], "asynctrace/tasks/v1");
  EXPECT_EQ(j["pid"], 99);
  ASSERT_EQ(j["tasks"].size(), 3u);
  const auto& t1 = j["tasks"][0];
  EXPECT_EQ(t1["name"], "Task-1");
  EXPECT_EQ(t1["id"], "0x7f0000000100");
  EXPECT_EQ(t1["stack"][0]["function"], "TaskGroup._aexit");
  EXPECT_EQ(t1["stack"][0]["line"], 121);
  EXPECT_EQ(j["tasks"][1]["awaited_by"][0]["id"], "0x7f0000000100");
  EXPECT_EQ(j["tasks"][1]["awaited_by"][0]["kind"], "taskgroup");
  EXPECT_EQ(j["tree"][0]["type"], "task");
  EXPECT_EQ(j["tree"][0]["children"][0]["function"], "main");
  EXPECT_TRUE(j["complete"].get<bool>());
  EXPECT_EQ(j["threads"][0]["tid"], 4242);
}

TEST(Json, InvalidUtf8IsReplacedNotThrown) {
  Snapshot s;
  s.tasks = {task(10, "bad\xff", 1, {})};
  const auto j = graph_json(build_graph(s), false);
  EXPECT_EQ(j["tasks"][0]["name"], "bad\xEF\xBF\xBD");
  EXPECT_NO_THROW((void)j.dump());
}

TEST(Pstree, TruncatedNamesEndInAnEllipsisNotInABrokenCharacter) {
  Snapshot s;
  auto t = task(10, "", 1, {});
  t.name = std::string(62, 'x') + "\xc3\xa9\xc3";  // cut inside the second 'é'
  t.name_truncated = true;
  s.tasks = {t};
  EXPECT_EQ(render_pstree(build_graph(s)), "└── (T) " + std::string(62, 'x') + "é…\n");
  const auto j = graph_json(build_graph(s), false);
  EXPECT_EQ(j["tasks"][0]["name"], std::string(62, 'x') + "é");
  EXPECT_TRUE(j["tasks"][0]["name_truncated"].get<bool>());
}

TEST(Stats, CountersAndCompleteness) {
  Snapshot s = taskgroup_snapshot();
  s.counters.events = 42;
  s.counters.drop_tasks_full = 3;
  const auto g = build_graph(s);
  const auto j = stats_json(g);
  EXPECT_EQ(j["schema"], "asynctrace/stats/v1");
  EXPECT_EQ(j["tasks"], 3);
  EXPECT_EQ(j["counters"]["events"], 42);
  EXPECT_EQ(j["counters"]["dropped_tasks_map_full"], 3);
  EXPECT_FALSE(j["complete"].get<bool>());
  const std::string text = render_stats(g);
  auto row = [](std::string label, const std::string& value) {
    return label.append(48 - label.size(), ' ') + value + "\n";
  };
  EXPECT_NE(text.find(row("dropped: task map full", "3")), std::string::npos) << text;
  EXPECT_NE(text.find(row("view", "partial")), std::string::npos) << text;
}

// Regressions found by tests/fuzz/fuzz_stacks: graphs a traced process can
// produce that used to crash or never finish.
namespace {

// n tasks, tasks[i] awaits tasks[i + 1], each suspended in `frames` frames.
Snapshot await_chain(uint32_t n, uint32_t frames) {
  Snapshot s;
  code(s, kMain, "step", "/chain.py");
  for (uint32_t i = 0; i < n; ++i) {
    std::vector<Frame> stack;
    for (uint32_t f = 0; f < frames; ++f) stack.push_back({kMain, f + 1});
    auto t = task(1000 + i, ("t" + std::to_string(i)).c_str(), i, std::move(stack));
    if (i + 1 < n) {
      t.awaiting_kind = AwaitKind::Task;
      t.awaiting_id = 1000 + i + 1;
    }
    s.tasks.push_back(std::move(t));
  }
  return s;
}

// Memoised-task DAG: tasks[i] awaited by tasks[i - 1] and tasks[i - 2] (async
// fib over shared tasks). Drawn Python's way the tree has ~fib(n) nodes.
Snapshot ladder(uint32_t n) {
  Snapshot s;
  code(s, kMain, "fib", "/fib.py");
  for (uint32_t i = 0; i < n; ++i) {
    auto t = task(1000 + i, ("fib" + std::to_string(i)).c_str(), i, {{kMain, 7}});
    if (i >= 1) t.awaited_by.push_back({1000 + i - 1, EdgeKind::Gather});
    if (i >= 2) t.awaited_by.push_back({1000 + i - 2, EdgeKind::Gather});
    s.tasks.push_back(std::move(t));
  }
  return s;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

size_t tree_nodes(const TreeNode& n) {
  size_t k = 1;
  for (const auto& c : n.children) k += tree_nodes(c);
  return k;
}

}  // namespace

TEST(Pstree, DeepAwaitChainIsCutAtTheDepthLimitNotTheStack) {
  // Was a stack overflow (SIGSEGV): expand/render/tree_json recurse per level.
  const auto g = build_graph(await_chain(1500, 0));
  const auto forest = build_forest(g);
  ASSERT_EQ(forest.size(), 2u);  // cut at 1000 levels, the rest drawn as a root of its own
  const std::string text = render_pstree(g);
  EXPECT_EQ(count(text, " [tree depth limit: subtree drawn separately]\n"), 1u);
  EXPECT_EQ(count(text, "\n"), 1500u + 1u);  // every task once, plus the cut stub
  EXPECT_EQ(text.rfind("└── (T) t999\n"), text.find("└── (T) t999\n"));
  EXPECT_NE(text.find("└── (T) t1000 [tree depth limit"), std::string::npos);
  EXPECT_NE(text.find("\n└── (T) t1000\n    └── (T) t1001\n"), std::string::npos);  // a root
  const auto j = graph_json(g, true);
  EXPECT_NO_THROW((void)j.dump());

  // 1000 tasks of 32 frames: 33,000 levels Python's way; JSON crashed here.
  const auto deep = build_graph(await_chain(1000, 32));
  EXPECT_NO_THROW((void)graph_json(deep, true).dump());
  for (const auto& root : build_forest(deep)) EXPECT_TRUE(root.is_task);
}

TEST(Pstree, SharedSubtreesStopBeingRedrawnPastTheNodeLimit) {
  // Was exponential (never finished): a shared task is redrawn under each awaiter.
  const ForestLimits small{1000, 40, 1000};
  const auto g = build_graph(ladder(30));
  const auto forest = build_forest(g, small);
  ASSERT_EQ(forest.size(), 1u);
  EXPECT_LT(tree_nodes(forest[0]), 200u);
  const std::string text = render_pstree(g, small);
  EXPECT_GT(count(text, " [subtree drawn above]\n"), 0u);
  for (int i = 0; i < 30; ++i) EXPECT_NE(text.find("(T) fib" + std::to_string(i) + "\n"), std::string::npos) << i;
  const auto j = graph_json(g, true, small);
  EXPECT_NE(j.dump().find("\"drawn_above\":true"), std::string::npos);
  // Within the limit the forest is Python's: fib(i) redrawn under both awaiters.
  const auto full = build_forest(build_graph(ladder(12)));
  EXPECT_EQ(render_pstree(build_graph(ladder(12))).find("drawn above"), std::string::npos);
  EXPECT_EQ(tree_nodes(full[0]), 752u);  // N(i) = 2 + N(i+1) + N(i+2): task, its frame, two subtrees

  // Default limits: 60 layers (~10^12 nodes Python's way) in bounded size.
  const auto big = build_forest(build_graph(ladder(60)));
  ASSERT_EQ(big.size(), 1u);
  EXPECT_LT(tree_nodes(big[0]), ForestLimits{}.max_nodes + 1000u);
  // Deep and shared: the text is bounded by the cells (indentation), not just
  // the nodes (a million nodes ~500 levels deep would be GBs of text).
  Snapshot deep = ladder(60);
  for (auto& t : deep.tasks) t.frames.assign(32, Frame{kMain, 7});
  std::ostringstream deep_text;
  render_pstree(build_graph(deep), deep_text, ForestLimits{1000, 1000000, 100000});
  EXPECT_LT(deep_text.str().size(), 10u * 1000 * 1000);
  EXPECT_NE(deep_text.str().find(" [subtree drawn above]\n"), std::string::npos);
}

TEST(Json, ThreadsCountedInOnePass) {
  // Was quadratic in the number of threads (every task claiming its own tid).
  Snapshot s;
  for (uint32_t i = 0; i < 6000; ++i) {
    auto t = task(1000 + i, "t", i, {});
    t.tid = i / 2;
    s.tasks.push_back(std::move(t));
  }
  const auto j = graph_json(build_graph(s), false);
  ASSERT_EQ(j["threads"].size(), 3000u);
  EXPECT_EQ(j["threads"][0]["tid"], 0);
  EXPECT_EQ(j["threads"][0]["tasks"], 2);
  EXPECT_EQ(j["threads"][2999]["tid"], 2999);
}

// Task ids are object addresses: 16-byte aligned, dense or far apart.
TEST(TaskIndex, FindsEveryIdFirstPositionWins) {
  TaskIndex ix;
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 3000; ++i) ids.push_back(0x7f0000000000ull + i * 16);
  for (uint64_t i = 0; i < 3000; ++i) ids.push_back(0x7f1000000000ull + i * 65536);
  for (uint32_t i = 0; i < ids.size(); ++i) EXPECT_TRUE(ix.emplace(ids[i], i));
  EXPECT_FALSE(ix.emplace(ids[5], 99));
  EXPECT_EQ(ix.size(), ids.size());
  for (uint32_t i = 0; i < ids.size(); ++i) {
    const uint32_t* pos = ix.find(ids[i]);
    ASSERT_NE(pos, nullptr) << i;
    EXPECT_EQ(*pos, i);
  }
  EXPECT_EQ(ix.find(0x7f0000000008ull), nullptr);
  EXPECT_FALSE(ix.contains(12345));
  EXPECT_THROW(ix.at(12345), std::out_of_range);
  EXPECT_EQ(TaskIndex{}.find(1), nullptr);
}

// One edge per (awaiter, child): a direct await wins over the same pair's
// explicit edges; edges to tasks not in the graph are dropped; a child's
// awaiters come in task order.
TEST(Graph, OneEdgePerPairFirstKindWins) {
  Snapshot s;
  code(s, kMain, "waiter", "/a.py");
  auto a = task(10, "A", 1, {{kMain, 5}});
  auto b = task(20, "B", 2, {{kMain, 5}});
  auto c = task(30, "C", 3, {});
  a.awaiting_kind = AwaitKind::Task;
  a.awaiting_id = 30;
  c.awaited_by = {{20, EdgeKind::Gather}, {10, EdgeKind::Gather}, {20, EdgeKind::Shield}, {99, EdgeKind::Gather}};
  s.tasks = {a, b, c};
  const TaskGraph g = build_graph(s);
  const auto in = g.awaiters_of(30);
  ASSERT_EQ(in.size(), 2u);
  EXPECT_EQ(in[0]->awaiter, 10u);
  EXPECT_EQ(in[0]->kind, EdgeKind::Await);
  EXPECT_EQ(in[1]->awaiter, 20u);
  EXPECT_EQ(in[1]->kind, EdgeKind::Gather);
  EXPECT_EQ(g.edges.size(), 2u);
  EXPECT_TRUE(g.awaiters_of(10).empty());
}
