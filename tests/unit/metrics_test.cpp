// SPDX-License-Identifier: Apache-2.0
// The agent's exposition (user/metrics.cpp) for hand-built samples: names,
// labels, escaping of hostile names, cumulative histogram buckets, the
// coroutine bound, both formats' framing.
#include "render/metrics.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

namespace asynctrace {
namespace {

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

bool has_line(const std::string& text, const std::string& line) {
  for (const std::string& l : lines(text))
    if (l == line) return true;
  return false;
}

size_t count_prefix(const std::string& text, const std::string& prefix) {
  size_t n = 0;
  for (const std::string& l : lines(text))
    if (l.rfind(prefix, 0) == 0) ++n;
  return n;
}

ProcessSample sample() {
  ProcessSample p;
  p.pid = 42;
  p.comm = "svc";
  p.tasks_by_state = {1, 0, 7};
  p.timing = true;
  p.tasks_created = 120;
  p.tasks_completed = 112;
  p.steps = 5000;
  p.busy_ratio = 0.25;
  p.longest_step_ns = 3'000'000;
  CoroutineSample c;
  c.name = "worker";
  c.steps = 10;
  c.busy_ns = 1'500'000'000;
  c.hist[0] = 1;   // < 2 us
  c.hist[1] = 2;   // [2, 4) us
  c.hist[2] = 3;   // [4, 8) us
  c.hist[10] = 4;  // [1.024, 2.048) ms
  p.coroutines.push_back(c);
  p.dropped = {{"tasks_map_full", 3}};
  return p;
}

TEST(Metrics, OpenMetricsFamiliesAndSamples) {
  AgentSample self;
  self.cpu_seconds = 1.5;
  self.rss_bytes = 1 << 20;
  self.libraries = 2;
  self.scrapes_openmetrics = 5;
  const std::string t = render_metrics({sample()}, self, ExpositionFormat::OpenMetrics);
  EXPECT_TRUE(has_line(t, "# TYPE asynctrace_tasks_created counter"));
  EXPECT_TRUE(has_line(t, "asynctrace_tasks_created_total{pid=\"42\",comm=\"svc\"} 120"));
  EXPECT_TRUE(has_line(t, "asynctrace_tasks_completed_total{pid=\"42\",comm=\"svc\"} 112"));
  EXPECT_TRUE(has_line(t, "asynctrace_tasks{pid=\"42\",comm=\"svc\",state=\"suspended\"} 7"));
  EXPECT_TRUE(has_line(t, "asynctrace_tasks{pid=\"42\",comm=\"svc\",state=\"created\"} 1"));
  EXPECT_TRUE(has_line(t, "asynctrace_loop_busy_ratio{pid=\"42\",comm=\"svc\"} 0.25"));
  EXPECT_TRUE(has_line(t, "asynctrace_step_longest_seconds{pid=\"42\",comm=\"svc\"} 0.003"));
  EXPECT_TRUE(has_line(t, "# UNIT asynctrace_step_duration_seconds seconds"));
  EXPECT_TRUE(has_line(t, "asynctrace_dropped_events_total{pid=\"42\",comm=\"svc\",reason=\"tasks_map_full\"} 3"));
  EXPECT_TRUE(has_line(t, "process_cpu_seconds_total 1.5"));
  EXPECT_TRUE(has_line(t, "process_resident_memory_bytes 1048576"));
  EXPECT_TRUE(has_line(t, "asynctrace_agent_libraries 2"));
  EXPECT_TRUE(has_line(t, "asynctrace_agent_scrapes_total{format=\"openmetrics\"} 5"));
  EXPECT_TRUE(has_line(t, "asynctrace_agent_scrapes_total{format=\"text\"} 0"));
  // No task ids anywhere: only pid, comm, state, coroutine, reason, le labels.
  EXPECT_EQ(t.find("task_id"), std::string::npos);
  ASSERT_GE(t.size(), 6u);
  EXPECT_EQ(t.substr(t.size() - 6), "# EOF\n");
  EXPECT_STREQ(content_type(ExpositionFormat::OpenMetrics),
               "application/openmetrics-text; version=1.0.0; charset=utf-8");
}

TEST(Metrics, HistogramBucketsAreCumulative) {
  const std::string t = render_metrics({sample()}, {}, ExpositionFormat::OpenMetrics);
  const std::string b = "asynctrace_step_duration_seconds_bucket{pid=\"42\",comm=\"svc\",coroutine=\"worker\",le=";
  EXPECT_TRUE(has_line(t, b + "\"2e-06\"} 1"));       // bucket 0
  EXPECT_TRUE(has_line(t, b + "\"8e-06\"} 6"));       // buckets 0..2
  EXPECT_TRUE(has_line(t, b + "\"0.000512\"} 6"));    // up to 2^9 us
  EXPECT_TRUE(has_line(t, b + "\"0.002048\"} 10"));   // bucket 10 included
  EXPECT_TRUE(has_line(t, b + "\"+Inf\"} 10"));
  EXPECT_TRUE(has_line(t, "asynctrace_step_duration_seconds_count{pid=\"42\",comm=\"svc\",coroutine=\"worker\"} 10"));
  EXPECT_TRUE(has_line(t, "asynctrace_step_duration_seconds_sum{pid=\"42\",comm=\"svc\",coroutine=\"worker\"} 1.5"));
  EXPECT_EQ(count_prefix(t, b), 13u);  // 12 boundaries and +Inf
}

TEST(Metrics, TextFormatNamesCountersWithTotalAndHasNoEof) {
  const std::string t = render_metrics({sample()}, {}, ExpositionFormat::Text);
  EXPECT_TRUE(has_line(t, "# TYPE asynctrace_tasks_created_total counter"));
  EXPECT_TRUE(has_line(t, "# TYPE process_cpu_seconds_total counter"));
  EXPECT_EQ(t.find("# EOF"), std::string::npos);
  EXPECT_EQ(t.find("# UNIT"), std::string::npos);
  EXPECT_STREQ(content_type(ExpositionFormat::Text), "text/plain; version=0.0.4; charset=utf-8");
}

TEST(Metrics, HostileNamesAreEscaped) {
  ProcessSample p = sample();
  p.comm = "a\"b\\c\nd\x01";
  p.coroutines[0].name = std::string("evil\"} 1\n# EOF\n\xff\xfe", 17);
  const std::string t = render_metrics({p}, {}, ExpositionFormat::OpenMetrics);
  EXPECT_TRUE(has_line(t, "asynctrace_tasks_created_total{pid=\"42\",comm=\"a\\\"b\\\\c\\nd\xef\xbf\xbd\"} 120"));
  EXPECT_NE(t.find("coroutine=\"evil\\\"} 1\\n# EOF\\n\xef\xbf\xbd\xef\xbf\xbd\""), std::string::npos);
  // The only "# EOF" is the terminator.
  EXPECT_EQ(count_prefix(t, "# EOF"), 1u);
  EXPECT_EQ(escape_label_value(std::string(300, 'x')).size(), 128u);
  EXPECT_EQ(escape_label_value("\xc3\xa9t\xc3\xa9"), "\xc3\xa9t\xc3\xa9");  // valid UTF-8 kept
  EXPECT_EQ(escape_label_value("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");    // overlong '/'
}

TEST(Metrics, CoroutinesBeyondTheBoundAreOther) {
  ProcessSample p = sample();
  p.coroutines.clear();
  for (int i = 0; i < 30; ++i) {
    CoroutineSample c;
    c.name = "coro" + std::to_string(i);
    c.steps = 100 + static_cast<uint64_t>(i);
    c.hist[0] = static_cast<uint32_t>(c.steps);
    p.coroutines.push_back(c);
  }
  // Two codes of one qualname share a series.
  CoroutineSample dup = p.coroutines[29];
  p.coroutines.push_back(dup);
  const std::string t = render_metrics({p}, {}, ExpositionFormat::OpenMetrics, 20);
  const std::string count = "asynctrace_step_duration_seconds_count{";
  EXPECT_EQ(count_prefix(t, count), 21u);
  EXPECT_TRUE(has_line(t, count + "pid=\"42\",comm=\"svc\",coroutine=\"coro29\"} 258"));
  // coro0..coro9 (100..109 steps) are the rest.
  EXPECT_TRUE(has_line(t, count + "pid=\"42\",comm=\"svc\",coroutine=\"other\"} 1045"));
  EXPECT_EQ(t.find("coroutine=\"coro9\""), std::string::npos);
}

TEST(Metrics, ProcessWithoutTimingHasNoCounters) {
  ProcessSample p = sample();
  p.timing = false;
  const std::string t = render_metrics({p}, {}, ExpositionFormat::OpenMetrics);
  EXPECT_EQ(count_prefix(t, "asynctrace_tasks_created_total"), 0u);
  EXPECT_EQ(count_prefix(t, "asynctrace_tasks{"), 3u);
}

TEST(Metrics, SampleFromSnapshot) {
  Snapshot s;
  s.pid = 7;
  TaskRecord a, b;
  a.state = TaskState::Suspended;
  b.state = TaskState::Running;
  s.tasks = {a, b, a};
  s.counters.timing_since_ns = 1;
  s.counters.tasks_created = 9;
  s.counters.busy_ns = 3'000'000'000;
  s.counters.loop_at_ns = 20'000'000'000;
  s.counters.step_max[3] = {19, 5'000'000};  // second 19
  s.counters.step_max[2] = {10, 9'000'000};  // too old
  s.code[5] = CodeInfo{"handler", "app.py", 1, false};
  Timing t;
  t.steps = 4;
  t.hist[3] = 4;
  s.code_timing[5] = t;
  const LoopMark prev{1'000'000'000, 16'000'000'000};
  const ProcessSample p = sample_process(s, "py", &prev, 20'500'000'000, 18'000'000'000);
  EXPECT_EQ(p.pid, 7u);
  EXPECT_EQ(p.tasks_by_state[2], 2u);
  EXPECT_EQ(p.tasks_by_state[1], 1u);
  EXPECT_TRUE(p.timing);
  EXPECT_EQ(p.tasks_created, 9u);
  EXPECT_DOUBLE_EQ(p.busy_ratio, 0.5);  // 2 s busy in 4 s
  EXPECT_EQ(p.longest_step_ns, 5'000'000u);
  ASSERT_EQ(p.coroutines.size(), 1u);
  EXPECT_EQ(p.coroutines[0].name, "handler");
  EXPECT_EQ(p.coroutines[0].hist[3], 4u);
}

}  // namespace
}  // namespace asynctrace

namespace asynctrace {
namespace {

TEST(Metrics, ProfileFamiliesOnlyWhenProfiling) {
  AgentSample self;
  const std::string off = render_metrics({}, self, ExpositionFormat::OpenMetrics);
  EXPECT_EQ(off.find("asynctrace_agent_profile"), std::string::npos);
  self.profiling = true;
  self.profiles_written = 3;
  self.profiles_pushed = 2;
  self.profile_errors = {{"push_failed", 1}, {"record_failed", 0}};
  for (const auto f : {ExpositionFormat::OpenMetrics, ExpositionFormat::Text}) {
    const std::string t = render_metrics({}, self, f);
    EXPECT_TRUE(has_line(t, "asynctrace_agent_profiles_written_total 3")) << t;
    EXPECT_TRUE(has_line(t, "asynctrace_agent_profiles_pushed_total 2")) << t;
    EXPECT_TRUE(has_line(t, "asynctrace_agent_profile_errors_total{reason=\"push_failed\"} 1")) << t;
    EXPECT_TRUE(has_line(t, "asynctrace_agent_profile_errors_total{reason=\"record_failed\"} 0")) << t;
  }
}

}  // namespace
}  // namespace asynctrace
