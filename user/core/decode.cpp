// SPDX-License-Identifier: Apache-2.0
#include "core/decode.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <utility>

namespace asynctrace {
namespace {

std::string bytes(const char* p, size_t cap, uint64_t len) {
  return std::string(p, std::min<uint64_t>(cap, len));
}

}  // namespace

void decode_task_into(uint64_t task_id, const at_task& t, TaskRecord& r) {
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
}

CodeInfo decode_code(const at_code& c) {
  CodeInfo info;
  info.qualname = bytes(c.qualname, AT_QUALNAME_LEN, c.qualname_len);
  info.filename = bytes(c.filename, AT_FILENAME_LEN, c.filename_len);
  info.firstlineno = c.firstlineno;
  info.truncated = c.qualname_len > AT_QUALNAME_LEN || c.filename_len > AT_FILENAME_LEN;
  return info;
}

Timing decode_timing(const at_timing& t) {
  Timing r{.steps = t.steps, .busy_ns = t.busy_ns, .sched_ns = t.sched_ns, .max_ns = t.max_ns,
           .last_end_ns = t.last_end_ns, .first_ns = t.first_ns};
  for (int i = 0; i < AT_HIST_BUCKETS && i < static_cast<int>(r.hist.size()); i++) r.hist[i] = t.hist[i];
  return r;
}

bool decode_event(const at_event& e, StepEvent* out) {
  const asynctrace_rec& hdr = e.rec;
  StepEvent ev;
  ev.ktime_ns = e.ktime;
  ev.task_id = hdr.a;
  ev.code_id = e.task_code;
  ev.task_known = e.name_len != 0;
  ev.task_gen = e.task_gen;
  ev.awaiter_id = e.awaiter_id;
  ev.awaiter_gen = e.awaiter_gen;
  if (ev.task_known) ev.task_name = bytes(e.name, AT_NAME_LEN, e.name_len);
  if (hdr.type == ASYNCTRACE_REC_STEP_TIMED) {
    const asynctrace_rec_step_timed& st = e.slot1.step_timed;
    ev.type = StepEvent::Type::Step;
    ev.start_ns = hdr.b;
    ev.dur_ns = hdr.c;
    ev.tid = hdr.len;
    ev.completed = (hdr.kind & 1u) != 0;
    ev.slow = (hdr.kind & 2u) != 0;
    ev.start_stack = st.start_stack;
    ev.end_stack = st.end_stack;
    ev.nsamples = st.nsamples;
  } else if (hdr.type == ASYNCTRACE_REC_SAMPLE) {
    ev.type = StepEvent::Type::Sample;
    ev.at_ns = hdr.b;
    ev.stack_id = hdr.c;
  } else {
    return false;
  }
  *out = std::move(ev);
  return true;
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
  c.timing_since_ns = p.timing_since_ns;
  c.loop_at_ns = p.loop_at_ns;
  c.tasks_created = p.tasks_created;
  c.tasks_completed = p.tasks_completed;
  c.steps = p.steps;
  c.busy_ns = p.busy_ns;
  c.drop_events = p.drop_events;
  c.drop_timing_full = p.drop_timing_full;
  for (int i = 0; i < AT_MAX_SECS && i < static_cast<int>(c.step_max.size()); i++)
    c.step_max[i] = {p.step_max_sec[i], p.step_max_ns[i]};
  return c;
}

void SnapshotDecoder::add_task(const at_task_key& k, const at_task& t) {
  if (k.pid != snap_.pid) return;
  if (dedupe_ && !seen_.insert(k.task_id).second) return;
  decode_task_into(k.task_id, t, snap_.tasks.emplace_back());
  stack_ids_.push_back(t.stack_id);
}

void SnapshotDecoder::add_stack(const at_stack_key& k, const at_stack& s) {
  if (k.pid != snap_.pid || snap_.stacks.count(k.stack_id)) return;
  StackInfo& info = snap_.stacks[k.stack_id];
  const uint32_t n = std::min<uint32_t>(s.nframes, AT_MAX_FRAMES);
  info.frames.reserve(n);
  for (uint32_t f = 0; f < n; f++) {
    info.frames.push_back({s.frames[f].code_id, s.frames[f].line});
    // ASYNCTRACE_FRAME_TRUNCATED: the runtime itself cut the stack here.
    if (s.frames[f].flags & 1u) info.truncated = true;
  }
}

void SnapshotDecoder::add_code(const at_code_key& k, const at_code& c) {
  if (k.pid != snap_.pid) return;
  snap_.code.emplace(k.code_id, decode_code(c));
}

void SnapshotDecoder::set_proc(const at_proc& p) {
  snap_.counters = decode_proc(p);
  // The last replay's task count: room for about as many tasks, read next.
  const size_t hint = std::min<uint64_t>(p.replay_tasks, AT_MAX_TASKS) * 9 / 8 + 64;
  if (snap_.tasks.capacity() < hint) {
    snap_.tasks.reserve(hint);
    stack_ids_.reserve(hint);
  }
}

void SnapshotDecoder::add_timing(const at_task_key& k, const at_timing& t) {
  if (k.pid == snap_.pid) timing_[k.task_id] = decode_timing(t);
}

void SnapshotDecoder::add_code_timing(const at_code_key& k, const at_timing& t) {
  if (k.pid == snap_.pid) snap_.code_timing[k.code_id] = decode_timing(t);
}

Snapshot SnapshotDecoder::finish() && {
  if (!timing_.empty())
    for (TaskRecord& r : snap_.tasks)
      if (auto it = timing_.find(r.id); it != timing_.end()) r.timing = std::make_shared<const Timing>(it->second);
  for (size_t i = 0; i < snap_.tasks.size(); ++i) {
    const auto it = stack_ids_[i] ? snap_.stacks.find(stack_ids_[i]) : snap_.stacks.end();
    if (it == snap_.stacks.end()) continue;
    TaskRecord& r = snap_.tasks[i];
    r.stack_id = stack_ids_[i];
    r.frames = it->second.frames;
    if (it->second.truncated) r.frames_truncated = true;
  }
  // Sort positions, then move each record once: records are large, and
  // std::sort would move them O(n log n) times (100,000 tasks: ~2M moves).
  std::vector<uint32_t> order(snap_.tasks.size());
  std::iota(order.begin(), order.end(), 0u);
  const auto& t = snap_.tasks;
  std::sort(order.begin(), order.end(), [&t](uint32_t a, uint32_t b) {
    return t[a].seq != t[b].seq ? t[a].seq < t[b].seq : t[a].id < t[b].id;
  });
  // Apply the permutation in place, one cycle at a time: every record moves
  // once and no second array of 100,000 records is touched.
  std::vector<TaskRecord>& v = snap_.tasks;
  for (uint32_t start = 0; start < order.size(); ++start) {
    if (order[start] == start) continue;
    TaskRecord held = std::move(v[start]);
    uint32_t to = start;
    for (uint32_t from = order[to]; from != start; from = order[to]) {
      v[to] = std::move(v[from]);
      order[to] = to;
      to = from;
    }
    v[to] = std::move(held);
    order[to] = to;
  }
  return std::move(snap_);
}

}  // namespace asynctrace
