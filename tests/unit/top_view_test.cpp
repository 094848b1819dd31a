// SPDX-License-Identifier: Apache-2.0
// top's rows, header and warnings from recorded task graphs.
#include "render/top_view.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/escape.h"
#include "core/model.h"

using namespace asynctrace;

namespace {

constexpr uint64_t kSec = 1'000'000'000ull;

TaskRecord rec(uint64_t id, const std::string& name, uint64_t create_ns) {
  TaskRecord t;
  t.id = id;
  t.name = name;
  t.seq = create_ns;
  t.create_ns = create_ns;
  t.tid = 7;
  t.state = TaskState::Suspended;
  t.awaiting_kind = AwaitKind::Future;
  return t;
}

Timing timing(uint64_t steps, uint64_t busy, uint64_t max, uint64_t last_end) {
  Timing t;
  t.steps = steps;
  t.busy_ns = busy;
  t.max_ns = max;
  t.last_end_ns = last_end;
  return t;
}

Snapshot snap_at(uint64_t busy_a, uint64_t busy_b, uint64_t loop_busy, uint64_t created, uint64_t loop_at = 0) {
  Snapshot s;
  s.pid = 42;
  s.counters.timing_since_ns = 100 * kSec;
  s.counters.busy_ns = loop_busy;
  s.counters.loop_at_ns = loop_at;
  s.counters.tasks_created = created;
  s.counters.tasks_completed = created / 2;
  s.counters.steps = created * 3;
  s.counters.step_max[0] = {101, 200'000'000};
  auto a = rec(0xa0, "alpha", 100 * kSec);
  a.timing = std::make_shared<const Timing>(timing(10, busy_a, 200'000'000, 100 * kSec + busy_a));
  auto b = rec(0xb0, "beta\x1b[31m", 100 * kSec);
  b.timing = std::make_shared<const Timing>(timing(50, busy_b, 1'000'000, 101 * kSec));
  auto c = rec(0xc0, "gamma", 100 * kSec);  // never stepped since timing began
  s.tasks = {a, b, c};
  return s;
}

}  // namespace

TEST(Top, RowsHeaderAndBusyShareOfTheInterval) {
  TopModel m;
  TopOptions o;
  o.stuck_ns = 1000 * kSec;
  (void)m.update(build_graph(snap_at(100'000'000, 10'000'000, 110'000'000, 10, 101 * kSec)), 101 * kSec, o);
  // One second later: alpha was busy 500 ms more, beta 10 ms.
  const TopFrame f =
      m.update(build_graph(snap_at(600'000'000, 20'000'000, 620'000'000, 30, 102 * kSec)), 102 * kSec, o);
  EXPECT_TRUE(f.header.timing);
  EXPECT_EQ(f.header.alive, 3u);
  EXPECT_NEAR(f.header.loop_busy_pct, 51.0, 0.01);
  EXPECT_NEAR(f.header.created_per_s, 20.0, 0.01);
  EXPECT_NEAR(f.header.completed_per_s, 10.0, 0.01);
  EXPECT_EQ(f.header.worst_step_ns, 200'000'000u);
  ASSERT_EQ(f.rows.size(), 3u);
  EXPECT_EQ(f.rows[0].name, "alpha");  // sorted by busy, descending
  EXPECT_NEAR(f.rows[0].busy_pct, 50.0, 0.01);
  EXPECT_NEAR(f.rows[1].busy_pct, 1.0, 0.01);
  EXPECT_FALSE(f.rows[2].timed);
  EXPECT_EQ(f.rows[2].idle_ns, 2 * kSec);  // waiting since timing began
  // idle = traced time - busy - scheduled
  EXPECT_EQ(f.rows[0].idle_ns, 2 * kSec - 600'000'000);
}

// Loop busy is taken between the runtime's LOOP records (busy up to their
// time, steps in progress included), not over top's own interval: a frame
// that saw no new record keeps the last share, and records' timestamps, not
// the reads', divide.
TEST(Top, LoopBusyBetweenLoopRecords) {
  TopModel m;
  TopOptions o;
  o.stuck_ns = 1000 * kSec;
  // 600 ms busy in the first 1.5 s of timing, read 0.2 s after the record.
  auto f = m.update(build_graph(snap_at(0, 0, 600'000'000, 1, 101 * kSec + 500'000'000)), 101 * kSec + 700'000'000, o);
  EXPECT_NEAR(f.header.loop_busy_pct, 40.0, 0.01);
  // No new record: the same share, not 0 and not a share of the wall interval.
  f = m.update(build_graph(snap_at(0, 0, 600'000'000, 1, 101 * kSec + 500'000'000)), 101 * kSec + 900'000'000, o);
  EXPECT_NEAR(f.header.loop_busy_pct, 40.0, 0.01);
  // 300 ms busy over the 400 ms between the records.
  f = m.update(build_graph(snap_at(0, 0, 900'000'000, 1, 101 * kSec + 900'000'000)), 102 * kSec, o);
  EXPECT_NEAR(f.header.loop_busy_pct, 75.0, 0.01);
}

TEST(Top, SortFilterAndEscapedText) {
  TopModel m;
  TopOptions o;
  o.sort = "steps";
  o.stuck_ns = 1000 * kSec;
  TopFrame f = m.update(build_graph(snap_at(1, 2, 3, 4)), 101 * kSec, o);
  EXPECT_EQ(f.rows[0].name, "beta\x1b[31m");
  const std::string text = render_top(f);
  EXPECT_EQ(text.find('\x1b'), std::string::npos) << text;  // the name's ESC is escaped
  EXPECT_NE(text.find("beta\\x1b[31m"), std::string::npos) << text;
  EXPECT_NE(text.find("TASK ID"), std::string::npos);
  o.name_filter = "alp";
  TopModel m2;
  f = m2.update(build_graph(snap_at(1, 2, 3, 4)), 101 * kSec, o);
  ASSERT_EQ(f.rows.size(), 1u);
  EXPECT_EQ(f.rows[0].name, "alpha");
  const auto j = top_json(f);
  EXPECT_EQ(j["tasks"][0]["name"], "alpha");
  EXPECT_EQ(j["header"]["pid"], 42);
  // Rows cut to the terminal: max_rows and width.
  TopModel m3;
  o.name_filter.clear();
  f = m3.update(build_graph(snap_at(1, 2, 3, 4)), 101 * kSec, o);
  const std::string cut = render_top(f, 1, 40);
  EXPECT_NE(cut.find("... 2 more"), std::string::npos) << cut;
  for (size_t p = 0, q; (q = cut.find('\n', p)) != std::string::npos; p = q + 1)
    EXPECT_LE(display_width(cut.substr(p, q - p)), 40u) << cut;  // an elided name ends in a 3-byte ellipsis
}

TEST(Top, WarnsAboutStuckTasksAndGrowingCounts) {
  TopModel m;
  TopOptions o;
  o.stuck_ns = 5 * kSec;
  // At t=110 s: gamma has not run for the 10 s timing has been on.
  TopFrame f = m.update(build_graph(snap_at(1, 2, 3, 4)), 110 * kSec, o);
  bool gamma = false;
  for (const auto& w : f.warnings) gamma |= w.find("gamma") != std::string::npos;
  EXPECT_TRUE(gamma);
  // Six looks with a growing task count: a leak warning.
  TopModel grow;
  o.stuck_ns = 1000 * kSec;
  for (int i = 0; i < 6; ++i) {
    Snapshot s = snap_at(1, 2, 3, 4);
    for (int k = 0; k < 100 * (i + 1); ++k) s.tasks.push_back(rec(0x1000 + k, "leak", 100 * kSec));
    f = grow.update(build_graph(s), (101 + i) * kSec, o);
  }
  bool leak = false;
  for (const auto& w : f.warnings) leak |= w.find("growing") != std::string::npos;
  EXPECT_TRUE(leak);
}

namespace {

// gamma (never stepped) waits in `func` of `file`; delta awaits gamma.
Snapshot waiting_in(const std::string& func, const std::string& file) {
  Snapshot s = snap_at(1, 2, 3, 4);
  s.code[9] = {func, file, 1, false};
  s.tasks[2].frames = {{9, 10}};
  return s;
}

bool warns_about(const TopFrame& f, const std::string& name) {
  for (const auto& w : f.warnings)
    if (w.find("task " + name + " ") == 0) return true;
  return false;
}

}  // namespace

// A wait the task chose (asyncio.sleep, asyncio.wait_for's timeout) is not
// "stuck"; a future with no timer is, named with where it waits.
TEST(Top, NoStuckWarningForAChosenWait) {
  TopOptions o;
  o.stuck_ns = 5 * kSec;
  for (const char* func : {"sleep", "wait_for"}) {
    TopModel m;
    const TopFrame f = m.update(build_graph(waiting_in(func, "/usr/lib/python3.11/asyncio/tasks.py")), 110 * kSec, o);
    EXPECT_FALSE(warns_about(f, "gamma")) << func;
    const TopRow* g = nullptr;
    for (const TopRow& r : f.rows) g = r.name == "gamma" ? &r : g;
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(g->awaiting, "future");
    EXPECT_EQ(g->where.rfind(func, 0), 0u) << g->where;
  }
  TopModel m;
  const Snapshot event = waiting_in("Event.wait", "/usr/lib/python3.11/asyncio/locks.py");
  const TopFrame f = m.update(build_graph(event), 110 * kSec, o);
  ASSERT_TRUE(warns_about(f, "gamma"));
  bool at = false;
  for (const auto& w : f.warnings) at |= w.find("future at Event.wait") != std::string::npos;
  EXPECT_TRUE(at);
  // Under an awaiter in wait_for: a timeout bounds it.
  Snapshot s = waiting_in("Event.wait", "/usr/lib/python3.11/asyncio/locks.py");
  s.code[10] = {"wait_for", "/usr/lib/python3.11/asyncio/tasks.py", 1, false};
  s.tasks[0].frames = {{10, 5}};
  s.tasks[0].awaiting_kind = AwaitKind::Task;
  s.tasks[0].awaiting_id = 0xc0;
  TopModel m2;
  EXPECT_FALSE(warns_about(m2.update(build_graph(s), 110 * kSec, o), "gamma"));
  // 3.12+'s wait_for awaits the coroutine in the task itself: wait_for is an
  // outer frame of the waiting task (seen on 3.13 and 3.14).
  Snapshot inner = waiting_in("Event.wait", "/usr/lib/python3.13/asyncio/locks.py");
  inner.code[12] = {"wait_for", "/usr/lib/python3.13/asyncio/tasks.py", 1, false};
  inner.code[13] = {"main", "/srv/app.py", 1, false};
  inner.tasks[2].frames = {{9, 213}, {12, 520}, {13, 30}};
  TopModel m4;
  EXPECT_FALSE(warns_about(m4.update(build_graph(inner), 110 * kSec, o), "gamma"));
  // Python 3.11's wait_for awaits a future, not the task it made of its
  // coroutine: a task only in asyncio's code, while a task is in wait_for.
  s.tasks[0].awaiting_kind = AwaitKind::Future;
  s.tasks[0].awaiting_id = 0;
  s.code[11] = {"waiter", "/srv/app.py", 1, false};
  s.tasks[1].frames = {{9, 10}, {11, 3}};  // beta: the program's coroutine awaiting the event
  TopModel m3;
  const TopFrame f3 = m3.update(build_graph(s), 110 * kSec, o);
  EXPECT_FALSE(warns_about(f3, "gamma"));
  EXPECT_TRUE(warns_about(f3, "beta\x1b[31m")) << (f3.warnings.empty() ? "" : f3.warnings[0]);
}

// Every line fits the width; the header wraps between its fields rather
// than losing them; names are elided with an ellipsis; numbers are whole.
TEST(Top, LayoutFitsTheWidth) {
  TopModel m;
  TopOptions o;
  Snapshot s = snap_at(1, 2, 3, 4);
  s.tasks[0].name = std::string(60, 'n');
  TopFrame f = m.update(build_graph(s), 101 * kSec, o);
  f.header.completed_per_s = 174.3;
  std::unordered_map<uint64_t, Timing> codes = {{5, timing(12345678, 987'654'321, 300'000'000, 0)}};
  std::unordered_map<uint64_t, CodeInfo> names = {{5, {"serve.<locals>.handle_report", "/srv/app.py", 1, false}}};
  m.add_codes(f, codes, names, o);
  for (const TopBy by : {TopBy::Task, TopBy::Coroutine}) {
    const std::string text = render_top(f, 0, 80, by);
    for (size_t p = 0, q; (q = text.find('\n', p)) != std::string::npos; p = q + 1)
      EXPECT_LE(display_width(text.substr(p, q - p)), 80u) << text;
    for (const char* field : {"alive", "174.3/s completed", "loop busy", "steps/s", "worst step"})
      EXPECT_NE(text.find(field), std::string::npos) << field << "\n" << text;
    if (by == TopBy::Task) EXPECT_NE(text.find("nnn\xE2\x80\xA6"), std::string::npos) << text;
    else EXPECT_NE(text.find("12345678"), std::string::npos) << text;
  }
  // No width: one header line, every column.
  const std::string wide = render_top(f);
  EXPECT_NE(wide.find("asynctrace top - pid 42 - tasks:"), std::string::npos) << wide;
  EXPECT_NE(wide.find(std::string(60, 'n')), std::string::npos);
  EXPECT_NE(wide.find("SCHED"), std::string::npos);
}

// Coroutine rows: busy share of the interval from the previous look.
TEST(Top, CoroutineRowsBusyOfTheInterval) {
  TopModel m;
  TopOptions o;
  TopFrame f = m.update(build_graph(snap_at(1, 2, 3, 4)), 101 * kSec, o);
  std::unordered_map<uint64_t, CodeInfo> names = {{5, {"handler", "app.py", 1, false}}};
  m.add_codes(f, {{5, timing(4, 200'000'000, 0, 0)}}, names, o);
  TopFrame g = m.update(build_graph(snap_at(1, 2, 3, 4)), 102 * kSec, o);
  m.add_codes(g, {{5, timing(8, 700'000'000, 0, 0)}, {6, timing(1, 1000, 1000, 0)}}, names, o);
  ASSERT_EQ(g.codes.size(), 2u);
  EXPECT_EQ(g.codes[0].name, "handler");
  EXPECT_NEAR(g.codes[0].busy_pct, 50.0, 0.01);
  EXPECT_EQ(g.codes[1].name, "<code 0x6>");
  const nlohmann::json j = top_json(g);
  EXPECT_EQ(j["coroutines"][0]["coroutine"], "handler");
}
