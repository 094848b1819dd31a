// SPDX-License-Identifier: Apache-2.0
// The profile recorder (profile/recorder.h) on hand-made step and sample
// events: merging, sample shares, await chains, wall time, timelines.
#include "profile/recorder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

using namespace asynctrace;

namespace {

// Stacks and codes from a table, as the tracer's maps would give them.
class FakeStacks final : public StackSource {
 public:
  const StackInfo* stack(uint64_t id) override {
    auto it = stacks.find(id);
    return it == stacks.end() ? nullptr : &it->second;
  }
  const CodeInfo* code(uint64_t id) override {
    auto it = codes.find(id);
    return it == codes.end() ? nullptr : &it->second;
  }
  std::unordered_map<uint64_t, StackInfo> stacks;
  std::unordered_map<uint64_t, CodeInfo> codes;
};

FakeStacks book() {
  FakeStacks b;
  b.codes[1] = {"main", "app.py", 1, false};
  b.codes[2] = {"fetch", "app.py", 10, false};
  b.codes[3] = {"json.loads", "json.py", 100, false};
  b.stacks[100] = {{{2, 12}, {1, 3}}, false};            // fetch <- main, innermost first
  b.stacks[200] = {{{3, 101}, {2, 13}, {1, 3}}, false};  // json.loads inside fetch
  return b;
}

StepEvent step(uint64_t task, uint64_t start, uint64_t dur, uint64_t end_stack, bool completed = false,
               uint64_t gen = 1) {
  StepEvent e;
  e.type = StepEvent::Type::Step;
  e.task_id = task;
  e.task_gen = gen;
  e.task_name = "worker";
  e.task_known = true;
  e.code_id = 2;
  e.start_ns = start;
  e.dur_ns = dur;
  e.end_stack = end_stack;
  e.completed = completed;
  return e;
}

StepEvent sample(uint64_t task, uint64_t at, uint64_t stack, uint64_t gen = 1) {
  StepEvent e;
  e.type = StepEvent::Type::Sample;
  e.task_id = task;
  e.task_gen = gen;
  e.at_ns = at;
  e.stack_id = stack;
  return e;
}

std::vector<std::string> names(const Profile& p, const ProfSample& s) {
  std::vector<std::string> out;
  for (uint32_t f : s.stack) out.push_back(p.frames[f].name);
  return out;
}

uint64_t total(const Profile& p) {
  uint64_t t = 0;
  for (const ProfSample& s : p.samples) t += s.weight_ns;
  return t;
}

}  // namespace

TEST(Recorder, EqualStepsMergeIntoOneSample) {
  FakeStacks b = book();
  Profile p;
  Recorder r(p, b, 1000);
  r.step(step(7, 2000, 50, 100));
  r.step(step(7, 3000, 70, 100));
  r.finish(5000);
  EXPECT_EQ(r.steps(), 2u);
  ASSERT_EQ(p.samples.size(), 1u);
  EXPECT_EQ(p.samples[0].weight_ns, 120u);
  EXPECT_EQ(p.samples[0].task_name, "worker");
  EXPECT_EQ(p.samples[0].coroutine, "fetch");
  // Root first: the task, then its coroutines outermost first.
  EXPECT_EQ(names(p, p.samples[0]), (std::vector<std::string>{"worker", "main", "fetch"}));
}

TEST(Recorder, SamplesShareTheStepAndNameTheirFunctions) {
  FakeStacks b = book();
  Profile p;
  Recorder r(p, b, 0);
  r.sample(sample(7, 1010, 200));
  r.sample(sample(7, 1020, 200));
  r.sample(sample(7, 1030, 100));
  r.step(step(7, 1000, 100, 100));
  r.finish(2000);
  EXPECT_EQ(r.samples(), 3u);
  EXPECT_EQ(total(p), 100u);  // the step's time, split, nothing lost to rounding
  bool function_seen = false;
  for (const ProfSample& s : p.samples)
    for (uint32_t f : s.stack)
      if (p.frames[f].kind == ProfFrame::Kind::Function) {
        EXPECT_EQ(p.frames[f].name, "json.loads");  // not one of the task's coroutines
        function_seen = true;
      }
  EXPECT_TRUE(function_seen);
}

TEST(Recorder, SamplesOutsideTheStepAreNotCounted) {
  FakeStacks b = book();
  Profile p;
  Recorder r(p, b, 0);
  r.sample(sample(7, 500, 200));   // before the step
  r.sample(sample(8, 1050, 200));  // another task
  r.step(step(7, 1000, 100, 100));
  r.finish(2000);
  ASSERT_EQ(p.samples.size(), 1u);
  for (uint32_t f : p.samples[0].stack) EXPECT_NE(p.frames[f].kind, ProfFrame::Kind::Function);
}

TEST(Recorder, WallModeCountsTheWaitsBetweenStepsAndToTheEnd) {
  FakeStacks b = book();
  Profile p;
  p.mode = ProfMode::Wall;
  Recorder r(p, b, 0);
  r.step(step(7, 1000, 100, 100));
  r.step(step(7, 1500, 100, 100));  // waited 400 ns suspended at stack 100
  r.finish(2000);                   // and 400 more until the end
  EXPECT_EQ(total(p), 200u + 400u + 400u);
  uint64_t awaiting = 0;
  for (const ProfSample& s : p.samples)
    if (p.frames[s.stack.back()].kind == ProfFrame::Kind::Await) awaiting += s.weight_ns;
  EXPECT_EQ(awaiting, 800u);
}

TEST(Recorder, CompletedTasksDoNotWaitInWallMode) {
  FakeStacks b = book();
  Profile p;
  p.mode = ProfMode::Wall;
  Recorder r(p, b, 0);
  r.step(step(7, 1000, 100, 100, true));
  r.finish(5000);
  EXPECT_EQ(total(p), 100u);
}

TEST(Recorder, AwaitChainsPrefixTheStack) {
  FakeStacks b = book();
  Profile p;
  Recorder r(p, b, 0);
  GraphTasks g;
  g[{7, 1}] = {{"worker", "", {}}, {ChainLink{"parent", "main", {NamedFrame{"main", "app.py", 3, 1}}}}};
  r.set_graph(std::move(g));
  r.step(step(7, 1000, 100, 100));
  r.finish(2000);
  ASSERT_EQ(p.samples.size(), 1u);
  EXPECT_EQ(names(p, p.samples[0]), (std::vector<std::string>{"parent", "main", "worker", "main", "fetch"}));
}

// Task ids are addresses: a task created at a dead task's address is another
// task, and never inherits the dead one's awaiters, name or samples.
TEST(Recorder, ATaskAtAReusedAddressIsAnotherTask) {
  FakeStacks b = book();
  Profile p;
  Recorder r(p, b, 0);
  GraphTasks g;
  g[{7, 1}] = {{"part-1", "", {}}, {ChainLink{"parent", "main", {NamedFrame{"main", "app.py", 3, 1}}}}};
  r.set_graph(std::move(g));
  r.step(step(7, 1000, 100, 100, true, 1));  // the part completes
  r.sample(sample(7, 1990, 200, 1));         // a late sample of it: not the next task's
  StepEvent next = step(7, 2000, 50, 100, false, 2);
  next.task_name = "Task-9";
  r.step(next);
  r.finish(3000);
  ASSERT_EQ(p.samples.size(), 2u);
  for (const ProfSample& s : p.samples) {
    const auto n = names(p, s);
    if (s.weight_ns == 50u)
      EXPECT_EQ(n, (std::vector<std::string>{"Task-9", "main", "fetch"}));  // no "parent"
    else
      EXPECT_EQ(n.front(), "parent");
  }
}

// The awaiter an event names (the kernel's entry of this task) chains it,
// with the stack the awaiter's last step left it at.
TEST(Recorder, TheAwaiterAnEventNamesChainsTheTask) {
  FakeStacks b = book();
  Profile p;
  Recorder r(p, b, 0);
  StepEvent parent = step(5, 1000, 10, 100, false, 3);
  parent.task_name = "conn";
  r.step(parent);  // suspended at stack 100 (fetch <- main)
  StepEvent child = step(7, 2000, 50, 100, false, 4);
  child.awaiter_id = 5;
  child.awaiter_gen = 3;
  r.step(child);
  StepEvent stale = child;  // another task at the address, its awaiter unknown: not drawn
  stale.awaiter_gen = 9;
  stale.task_gen = 8;
  stale.start_ns = 3000;
  r.step(stale);
  r.finish(4000);
  std::vector<std::vector<std::string>> got;
  for (const ProfSample& s : p.samples) got.push_back(names(p, s));
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<std::vector<std::string>>{
                     {"conn", "main", "fetch"},
                     {"conn", "main", "fetch", "worker", "main", "fetch"},
                     {"worker", "main", "fetch"},
                 }));
}

TEST(Recorder, OnlyTheLastTwoGraphReadsAreKept) {
  FakeStacks b = book();
  Profile p;
  Recorder r(p, b, 0);
  GraphTasks g;
  g[{7, 1}] = {{"worker", "", {}}, {ChainLink{"parent", "main", {}}}};
  r.set_graph(g);
  r.set_graph({});
  r.step(step(7, 1000, 100, 100));  // in the read before the last: still chained
  r.set_graph({});
  r.step(step(7, 2000, 100, 100));  // in neither: the task alone
  r.finish(3000);
  ASSERT_EQ(p.samples.size(), 2u);
  std::vector<size_t> depths;
  for (const ProfSample& s : p.samples) depths.push_back(s.stack.size());
  std::sort(depths.begin(), depths.end());
  EXPECT_EQ(depths, (std::vector<size_t>{3u, 4u}));
}

TEST(Recorder, GroupingMergesTasksByFoldedNameOrCoroutine) {
  FakeStacks b = book();
  for (TaskGrouping grouping : {TaskGrouping::Name, TaskGrouping::Coroutine, TaskGrouping::Task}) {
    Profile p;
    p.grouping = grouping;
    p.lines = false;
    Recorder r(p, b, 0);
    for (uint64_t t = 1; t <= 3; ++t) {
      StepEvent e = step(t, 1000 * t, 100, 100, true);
      e.task_name = "Task-" + std::to_string(100 + t);
      r.step(e);
    }
    r.finish(5000);
    if (grouping == TaskGrouping::Task) {
      EXPECT_EQ(p.samples.size(), 3u);
      continue;
    }
    ASSERT_EQ(p.samples.size(), 1u);
    EXPECT_EQ(p.samples[0].weight_ns, 300u);
    EXPECT_EQ(names(p, p.samples[0]).front(), grouping == TaskGrouping::Name ? "Task-N" : "fetch");
    for (uint32_t f : p.samples[0].stack) EXPECT_EQ(p.frames[f].line, 0u);  // per function
  }
}

TEST(Recorder, FoldDigits) {
  EXPECT_EQ(fold_digits("Task-14533"), "Task-N");
  EXPECT_EQ(fold_digits("part-3"), "part-N");
  EXPECT_EQ(fold_digits("w1-2x33"), "wN-NxN");
  EXPECT_EQ(fold_digits("main"), "main");
  EXPECT_EQ(fold_digits(""), "");
}

TEST(Recorder, UnknownCodesAreNamedByTheirId) {
  FakeStacks b = book();
  b.stacks[300] = {{{0x99, 5}}, false};
  const auto fs = name_frames(b, b.stack(300));
  ASSERT_EQ(fs.size(), 1u);
  EXPECT_EQ(fs[0].func, "<code 0x99>");
  EXPECT_TRUE(name_frames(b, nullptr).empty());
}

TEST(Recorder, TimelinesOpenAndCloseEachStep) {
  FakeStacks b = book();
  Profile p;
  Recorder r(p, b, 1000);
  r.step(step(7, 2000, 50, 100));
  r.finish(5000);
  ASSERT_EQ(p.timelines.size(), 1u);
  const auto& ev = p.timelines[0].events;
  ASSERT_EQ(ev.size(), 6u);  // worker, main, fetch: opened at 1000, closed at 1050
  EXPECT_TRUE(ev.front().open);
  EXPECT_EQ(ev.front().at_ns, 1000u);
  EXPECT_FALSE(ev.back().open);
  EXPECT_EQ(ev.back().at_ns, 1050u);
  EXPECT_FALSE(r.timelines_cut());
}

TEST(SampleBook, TakesTheSamplesOfOneStep) {
  SampleBook s;
  s.add(sample(1, 10, 5));
  s.add(sample(1, 20, 5));
  s.add(sample(1, 40, 5));
  s.add(sample(1, 20, 5, 2));  // another task at the same address
  const auto during = s.take({1, 1}, 15, 10);  // [15, 25]
  ASSERT_EQ(during.size(), 1u);
  EXPECT_EQ(during[0].at_ns, 20u);
  EXPECT_EQ(s.take({1, 1}, 30, 20).size(), 1u);
  EXPECT_TRUE(s.take({1, 1}, 0, 100).empty());
  EXPECT_EQ(s.take({1, 2}, 0, 100).size(), 1u);
}
