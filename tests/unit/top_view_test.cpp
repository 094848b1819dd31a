// SPDX-License-Identifier: Apache-2.0
// top's rows, header and warnings from recorded task graphs.
#include "render/top_view.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

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
  for (size_t p = 0, q; (q = cut.find('\n', p)) != std::string::npos; p = q + 1) EXPECT_LE(q - p, 40u) << cut;
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
