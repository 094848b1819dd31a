// SPDX-License-Identifier: Apache-2.0
#include "decode.h"

#include <algorithm>
#include <numeric>
#include <string>
#include <utility>

namespace asynctrace {
namespace {

std::string bytes(const char* p, size_t cap, uint64_t len) {
  return std::string(p, std::min<uint64_t>(cap, len));
}

}  // namespace

TaskRecord decode_task(uint64_t task_id, const at_task& t) {
  TaskRecord r;
  r.id = task_id;
  r.parent_id = t.parent_id;
  r.loop_id = t.loop_id;
  r.coro_code_id = t.coro_code_id;
  r.create_ns = t.create_ns;
  r.seq = t.create_ns;
  r.tid = t.tid;
  r.state = static_cast<TaskState>(t.state);
  r.name = bytes(t.name, AT_NAME_LEN, t.name_len);
  r.name_truncated = t.name_len > AT_NAME_LEN;
  r.nameless = (t.flags & AT_TASK_NAMELESS) != 0;
  r.awaiting_id = t.awaiting_id;
  r.awaiting_kind = static_cast<AwaitKind>(t.awaiting_kind);
  for (int i = 0; i < AT_MAX_AWAITERS; i++) {
    if (!t.awaited_by[i]) continue;
    r.awaited_by.push_back({t.awaited_by[i], static_cast<EdgeKind>(t.awaited_by_kind[i])});
  }
  r.frames_truncated = (t.flags & AT_TASK_FRAMES_TRUNC) != 0;
  r.awaiters_truncated = (t.flags & AT_TASK_AWAITERS_FULL) != 0;
  return r;
}

CodeInfo decode_code(const at_code& c) {
  CodeInfo info;
  info.qualname = bytes(c.qualname, AT_QUALNAME_LEN, c.qualname_len);
  info.filename = bytes(c.filename, AT_FILENAME_LEN, c.filename_len);
  info.firstlineno = c.firstlineno;
  info.truncated = c.qualname_len > AT_QUALNAME_LEN || c.filename_len > AT_FILENAME_LEN;
  return info;
}

ProcCounters decode_proc(const at_proc& p) {
  ProcCounters c;
  c.replay_gen = p.replay_gen;
  c.replay_tasks = p.replay_tasks;
  c.events = p.events;
  c.drop_tasks_full = p.drop_tasks_full;
  c.drop_codes_full = p.drop_codes_full;
  c.drop_edges_full = p.drop_edges_full;
  c.unknown_task = p.unknown_task;
  c.drop_runtime = p.drop_runtime;
  c.bad_records = p.bad_records;
  c.drop_stacks_full = p.drop_stacks_full;
  return c;
}

void SnapshotDecoder::add_task(const at_task_key& k, const at_task& t) {
  if (k.pid != snap_.pid) return;
  if (dedupe_ && !seen_.insert(k.task_id).second) return;
  snap_.tasks.push_back(decode_task(k.task_id, t));
  stack_ids_.push_back(t.stack_id);
}

void SnapshotDecoder::add_stack(const at_stack_key& k, const at_stack& s) {
  if (k.pid == snap_.pid) stacks_.emplace(k.stack_id, s);
}

void SnapshotDecoder::add_code(const at_code_key& k, const at_code& c) {
  if (k.pid != snap_.pid) return;
  snap_.code.emplace(k.code_id, decode_code(c));
}

void SnapshotDecoder::set_proc(const at_proc& p) { snap_.counters = decode_proc(p); }

Snapshot SnapshotDecoder::finish() && {
  for (size_t i = 0; i < snap_.tasks.size(); ++i) {
    const auto it = stack_ids_[i] ? stacks_.find(stack_ids_[i]) : stacks_.end();
    if (it == stacks_.end()) continue;
    const at_stack& s = it->second;
    TaskRecord& r = snap_.tasks[i];
    const uint32_t n = std::min<uint32_t>(s.nframes, AT_MAX_FRAMES);
    r.frames.reserve(n);
    for (uint32_t f = 0; f < n; f++) {
      r.frames.push_back({s.frames[f].code_id, s.frames[f].line});
      // ASYNCTRACE_FRAME_TRUNCATED: the runtime itself cut the stack here.
      if (s.frames[f].flags & 1u) r.frames_truncated = true;
    }
  }
  std::sort(snap_.tasks.begin(), snap_.tasks.end(), [](const TaskRecord& a, const TaskRecord& b) {
    return a.seq != b.seq ? a.seq < b.seq : a.id < b.id;
  });
  return std::move(snap_);
}

}  // namespace asynctrace
