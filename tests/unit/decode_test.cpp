// SPDX-License-Identifier: Apache-2.0
// BPF map records -> Snapshot (user/decode.cpp), as loader.cpp's read_maps
// feeds them: what the kernel and the traced process wrote, taken at face value
// only within the ABI's bounds.
#include "decode.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>

using namespace asynctrace;

namespace {

at_task make_task(uint64_t id, uint64_t seq, const char* name) {
  at_task t{};
  t.task_id = id;
  t.seq = seq;
  t.name_len = static_cast<uint32_t>(std::strlen(name));
  std::memcpy(t.name, name, std::min<size_t>(t.name_len, AT_NAME_LEN));
  return t;
}

}  // namespace

TEST(Decode, TaskFieldsWithinAbiBounds) {
  at_task t = make_task(0x10, 7, "");
  t.name_len = std::numeric_limits<uint32_t>::max();  // the runtime's full length
  std::memset(t.name, 'n', AT_NAME_LEN);
  t.nframes = 1000;  // more than the kernel ever keeps
  for (uint32_t i = 0; i < AT_MAX_FRAMES; ++i) t.frames[i] = {i + 1, i, 0};
  t.awaited_by[1] = 0x20;
  t.awaited_by_kind[1] = 2;
  t.awaited_by_kind[2] = 3;  // empty slot: id 0
  t.state = 99;
  const TaskRecord r = decode_task(t);
  EXPECT_EQ(r.name, std::string(AT_NAME_LEN, 'n'));
  EXPECT_TRUE(r.name_truncated);
  EXPECT_EQ(r.frames.size(), size_t{AT_MAX_FRAMES});
  EXPECT_FALSE(r.frames_truncated);
  ASSERT_EQ(r.awaited_by.size(), 1u);
  EXPECT_EQ(r.awaited_by[0].task_id, 0x20u);
  EXPECT_EQ(r.awaited_by[0].kind, EdgeKind::TaskGroup);
  EXPECT_EQ(static_cast<uint32_t>(r.state), 99u);
}

TEST(Decode, TruncationFlags) {
  at_task t = make_task(1, 1, "x");
  t.nframes = 2;
  t.frames[1].flags = 1;  // ASYNCTRACE_FRAME_TRUNCATED
  EXPECT_TRUE(decode_task(t).frames_truncated);
  t.frames[1].flags = 0;
  t.flags = AT_TASK_FRAMES_TRUNC | AT_TASK_AWAITERS_FULL | AT_TASK_NAMELESS;
  const TaskRecord r = decode_task(t);
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
  dec.add_task({42, 0, 3}, make_task(3, 30, "c"));
  dec.add_task({42, 0, 1}, make_task(1, 10, "a"));
  dec.add_task({43, 0, 2}, make_task(2, 20, "other process"));
  dec.add_task({42, 0, 3}, make_task(3, 5, "repeated key"));  // key walk under churn
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
