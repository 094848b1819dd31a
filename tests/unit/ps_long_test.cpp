// SPDX-License-Identifier: Apache-2.0
// ps --long (render/ps_long.h): the rows with timing, the busiest
// coroutines, warnings; as a table and as JSON.
#include "render/ps_long.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

using namespace asynctrace;

namespace {

constexpr uint64_t kSec = 1'000'000'000ull;

TaskRecord rec(uint64_t id, const std::string& name) {
  TaskRecord t;
  t.id = id;
  t.name = name;
  t.seq = id;
  t.create_ns = 100 * kSec;
  t.tid = 7;
  t.state = TaskState::Suspended;
  t.awaiting_kind = AwaitKind::Future;
  return t;
}

Timing timing(uint64_t steps, uint64_t busy, uint64_t max) {
  Timing t;
  t.steps = steps;
  t.busy_ns = busy;
  t.max_ns = max;
  t.last_end_ns = 101 * kSec;
  return t;
}

struct Looks {
  Snapshot first, later;
};

// The first look has no timing; the second (the same tasks) has it for alpha, and the
// coroutine timing of two codes (one never registered).
Looks looks() {
  Looks l;
  l.first.pid = l.later.pid = 42;
  l.first.tasks = {rec(0xa0, "alpha"), rec(0xb0, "beta\x1b[31m")};
  l.first.code[5] = {"handler", "app.py", 1, false};
  l.later.tasks = l.first.tasks;
  l.later.tasks[0].timing = std::make_shared<const Timing>(timing(10, 300'000'000, 200'000'000));
  l.later.counters.timing_since_ns = 100 * kSec;
  l.later.counters.busy_ns = 300'000'000;
  Timing h = timing(3, 300'000'000, 200'000'000);
  h.hist[0] = 1;
  h.hist[2] = 2;
  l.later.code_timing[5] = h;
  l.later.code_timing[0x77] = timing(1, 1'000, 1'000);
  return l;
}

PsLong build(Looks l) {
  TopModel model;
  TopOptions opts;
  (void)model.update(build_graph(l.first), 100 * kSec, opts);
  return build_ps_long(std::move(l.first), l.later, model, opts, 101 * kSec);
}

}  // namespace

TEST(PsLong, TasksAndTimingOfTheSecondLook) {
  const PsLong p = build(looks());
  ASSERT_EQ(p.graph.tasks.size(), 2u);
  const TaskNode* a = p.graph.find(0xa0);
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->timing);
  EXPECT_EQ(a->timing->steps, 10u);
  EXPECT_FALSE(p.graph.find(0xb0)->timing);
  EXPECT_EQ(p.graph.counters.busy_ns, 300'000'000u);
}

TEST(PsLong, CoroutinesBusiestFirstUnknownCodesById) {
  const PsLong p = build(looks());
  ASSERT_EQ(p.codes.size(), 2u);
  EXPECT_EQ(p.codes[0].name, "handler");
  EXPECT_EQ(p.codes[0].file, "app.py");
  EXPECT_EQ(p.codes[1].name, "<code 0x77>");
  EXPECT_EQ(p.codes[1].file, "");
}

TEST(PsLong, Json) {
  const nlohmann::json j = ps_long_json(build(looks()));
  ASSERT_EQ(j["tasks"].size(), 2u);
  size_t timed = 0;
  for (const auto& t : j["tasks"]) {
    if (t["timing"].is_null()) continue;
    ++timed;
    EXPECT_EQ(t["timing"]["steps"], 10);
    EXPECT_EQ(t["timing"]["busy_ns"], 300'000'000);
  }
  EXPECT_EQ(timed, 1u);
  ASSERT_EQ(j["coroutines"].size(), 2u);
  EXPECT_EQ(j["coroutines"][0]["coroutine"], "handler");
  // Trailing empty histogram buckets are cut.
  EXPECT_EQ(j["coroutines"][0]["hist_log2_us"], nlohmann::json::array({1, 0, 2}));
  EXPECT_TRUE(j["warnings"].is_array());
  EXPECT_TRUE(j["header"].is_object());
}

TEST(PsLong, TableEscapesNamesAndShowsTheCoroutines) {
  const std::string t = render_ps_long(build(looks()));
  EXPECT_EQ(t.rfind("tid", 0), 0u);
  EXPECT_NE(t.find("task name"), std::string::npos);
  EXPECT_NE(t.find("alpha"), std::string::npos);
  EXPECT_EQ(t.find('\x1b'), std::string::npos);  // beta's escape sequence is escaped
  EXPECT_NE(t.find("beta\\x1b[31m"), std::string::npos);
  EXPECT_NE(t.find("steps by duration"), std::string::npos);
  EXPECT_NE(t.find("handler"), std::string::npos);
  EXPECT_NE(t.find("<2us 1, >=4us 2"), std::string::npos);  // log2 buckets of microseconds
}

TEST(PsLong, ManyTasksCreatedFasterThanTheyCompleteWarn) {
  Looks l = looks();
  for (uint64_t i = 0; i < 60; ++i) l.first.tasks.push_back(rec(0x1000 + i, "leaky"));
  l.later.tasks = l.first.tasks;
  l.later.counters.tasks_created = 1000;
  l.later.counters.tasks_completed = 10;
  TopModel model;
  TopOptions opts;
  Snapshot before = l.first;
  before.counters.timing_since_ns = 100 * kSec;
  before.counters.tasks_created = 0;
  (void)model.update(build_graph(before), 100 * kSec, opts);
  const PsLong p = build_ps_long(std::move(l.first), l.later, model, opts, 101 * kSec);
  bool leak = false;
  for (const std::string& w : p.warnings) leak |= w.find("a task leak?") != std::string::npos;
  EXPECT_TRUE(leak);
}

// The rows are the tasks of the second look: one that ended in the window
// is gone, one born in it is there, with its age to the window's end.
TEST(PsLong, RowsAreTheTasksAliveAtTheWindowsEnd) {
  Looks l = looks();
  l.later.tasks = {l.first.tasks[0], rec(0xd0, "newborn")};
  l.later.tasks[1].create_ns = 100 * kSec + 900'000'000;
  const PsLong p = build(l);
  ASSERT_EQ(p.graph.tasks.size(), 2u);
  EXPECT_EQ(p.graph.find(0xb0), nullptr);  // ended during the window
  ASSERT_NE(p.graph.find(0xd0), nullptr);
  const nlohmann::json j = ps_long_json(p);
  bool newborn = false;
  for (const auto& t : j["tasks"])
    if (t["name"] == "newborn") {
      newborn = true;
      EXPECT_EQ(t["age_ns"], 100'000'000u);  // to 101 s, the second look
    }
  EXPECT_TRUE(newborn);
  EXPECT_EQ(render_ps_long(p).find("beta"), std::string::npos);
  EXPECT_EQ(p.codes[0].name, "handler");  // names from the first look
}
