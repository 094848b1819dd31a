// SPDX-License-Identifier: Apache-2.0
// BPF map records -> Snapshot (user/core/decode.cpp), as kernel/maps.cpp's read_maps
// feeds them: what the kernel and the traced process wrote, taken at face value
// only within the ABI's bounds.
#include "core/decode.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace asynctrace;

namespace {

at_task make_task(uint64_t seq, const char* name) {
  at_task t{};
  t.create_ns = seq;
  t.name_len = static_cast<uint32_t>(std::strlen(name));
  std::memcpy(t.name, name, std::min<size_t>(t.name_len, AT_NAME_LEN));
  return t;
}

}  // namespace

at_stack make_stack(uint32_t nframes) {
  at_stack s{};
  s.nframes = nframes;
  for (uint32_t i = 0; i < AT_MAX_FRAMES; ++i) s.frames[i] = {i + 1, i, 0};
  return s;
}

TEST(Decode, TaskFieldsWithinAbiBounds) {
  at_task t = make_task(7, "");
  t.name_len = std::numeric_limits<uint32_t>::max();  // the runtime's full length
  std::memset(t.name, 'n', AT_NAME_LEN);
  t.stack_id = 5;
  t.awaited_by[1] = 0x20;
  t.awaited_by_kind[1] = 2;
  t.awaited_by_kind[2] = 3;  // empty slot: id 0
  t.state = 99;
  TaskRecord r;
  decode_task_into(0x10, t, r);
  EXPECT_EQ(r.id, 0x10u);
  EXPECT_EQ(r.name, std::string(AT_NAME_LEN, 'n'));
  EXPECT_TRUE(r.name_truncated);
  EXPECT_TRUE(r.frames.empty());  // frames come from the stacks map
  EXPECT_FALSE(r.frames_truncated);
  ASSERT_EQ(r.awaited_by.size(), 1u);
  EXPECT_EQ(r.awaited_by[0].task_id, 0x20u);
  EXPECT_EQ(r.awaited_by[0].kind, EdgeKind::TaskGroup);
  EXPECT_EQ(static_cast<uint32_t>(r.state), 99u);
}

TEST(Decode, StacksResolveByIdWithinAbiBounds) {
  SnapshotDecoder dec(42);
  at_task t = make_task(1, "x");
  t.stack_id = 77;
  dec.add_task({42, 0, 1}, t);
  at_task u = make_task(2, "y");
  u.stack_id = 78;  // no such stack: no frames
  dec.add_task({42, 0, 2}, u);
  at_stack s = make_stack(1000);  // more than the kernel ever keeps
  s.frames[1].flags = 1;          // ASYNCTRACE_FRAME_TRUNCATED
  dec.add_stack({42, 0, 77}, s);
  dec.add_stack({43, 0, 78}, make_stack(2));  // another process's
  const Snapshot snap = std::move(dec).finish();
  ASSERT_EQ(snap.tasks.size(), 2u);
  EXPECT_EQ(snap.tasks[0].frames.size(), size_t{AT_MAX_FRAMES});
  EXPECT_EQ(snap.tasks[0].frames[3].code_id, 4u);
  EXPECT_TRUE(snap.tasks[0].frames_truncated);
  EXPECT_TRUE(snap.tasks[1].frames.empty());
}

TEST(Decode, TruncationFlags) {
  at_task t = make_task(1, "x");
  t.flags = AT_TASK_FRAMES_TRUNC | AT_TASK_AWAITERS_FULL | AT_TASK_NAMELESS;
  TaskRecord r;
  decode_task_into(1, t, r);
  EXPECT_TRUE(r.frames_truncated);
  EXPECT_TRUE(r.awaiters_truncated);
  EXPECT_TRUE(r.nameless);
  EXPECT_EQ(r.name, "x");
  EXPECT_FALSE(r.name_truncated);
}

TEST(Decode, CodeStringsCutAtTheKernelBuffers) {
  at_code c{};
  c.qualname_len = 3;
  std::memcpy(c.qualname, "fooXXX", 6);
  c.filename_len = AT_FILENAME_LEN + 5;
  std::memset(c.filename, 'f', AT_FILENAME_LEN);
  c.firstlineno = 12;
  const CodeInfo info = decode_code(c);
  EXPECT_EQ(info.qualname, "foo");
  EXPECT_EQ(info.filename, std::string(AT_FILENAME_LEN, 'f'));
  EXPECT_EQ(info.firstlineno, 12u);
  EXPECT_TRUE(info.truncated);
}

TEST(Decode, SnapshotKeepsOnePidDedupesAndOrdersBySeq) {
  SnapshotDecoder dec(42);
  dec.allow_repeats();  // as read_maps does when it had to walk keys
  dec.add_task({42, 0, 3}, make_task(30, "c"));
  dec.add_task({42, 0, 1}, make_task(10, "a"));
  dec.add_task({43, 0, 2}, make_task(20, "other process"));
  dec.add_task({42, 0, 3}, make_task(5, "repeated key"));  // key walk under churn
  at_code c1{}, c2{};
  c1.qualname_len = 1;
  c1.qualname[0] = 'f';
  c2.qualname_len = 1;
  c2.qualname[0] = 'g';
  dec.add_code({42, 0, 9}, c1);
  dec.add_code({42, 0, 9}, c2);  // first entry wins
  dec.add_code({43, 0, 8}, c2);
  at_proc p{};
  p.events = 5;
  p.drop_tasks_full = std::numeric_limits<uint64_t>::max();
  dec.set_proc(p);
  const Snapshot s = std::move(dec).finish();
  EXPECT_EQ(s.pid, 42u);
  ASSERT_EQ(s.tasks.size(), 2u);
  EXPECT_EQ(s.tasks[0].name, "a");
  EXPECT_EQ(s.tasks[1].name, "c");
  ASSERT_EQ(s.code.size(), 1u);
  EXPECT_EQ(s.code.at(9).qualname, "f");
  EXPECT_EQ(s.counters.events, 5u);
  EXPECT_EQ(s.counters.drop_tasks_full, std::numeric_limits<uint64_t>::max());
}

// Map order is hash order: records come out in creation order (ties by id),
// each with its own fields, however the cycles of the in-place sort run; more
// tasks than the last replay counted (the decoder's size hint) is fine.
TEST(Decode, ManyTasksComeOutInCreationOrder) {
  SnapshotDecoder dec(7);
  at_proc p{};
  p.replay_tasks = 100;
  dec.set_proc(p);
  constexpr uint64_t kN = 5000;
  std::vector<uint64_t> order(kN);
  for (uint64_t i = 0; i < kN; ++i) order[i] = i;
  std::mt19937_64 rng(1);
  std::shuffle(order.begin(), order.end(), rng);
  for (uint64_t i : order) {
    const std::string name = "t" + std::to_string(i);
    dec.add_task({7, 0, 0x1000 + i}, make_task(i / 2, name.c_str()));  // pairs share a seq
  }
  const Snapshot s = std::move(dec).finish();
  ASSERT_EQ(s.tasks.size(), kN);
  for (uint64_t i = 0; i < kN; ++i) {
    EXPECT_EQ(s.tasks[i].id, 0x1000 + i);
    EXPECT_EQ(s.tasks[i].seq, i / 2);
    EXPECT_EQ(s.tasks[i].name, "t" + std::to_string(i));
  }
}
