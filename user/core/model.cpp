// SPDX-License-Identifier: Apache-2.0
#include "core/model.h"

#include "core/escape.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <tuple>
#include <utility>

namespace asynctrace {
namespace {

FrameInfo name_frame_uncached(const Snapshot& snap, const Frame& f, size_t* unnamed) {
  auto it = snap.code.find(f.code_id);
  if (it == snap.code.end()) {
    ++*unnamed;
    char buf[40];
    std::snprintf(buf, sizeof buf, "<code 0x%llx>", static_cast<unsigned long long>(f.code_id));
    return FrameInfo{buf, "", f.line, 0, true};
  }
  return FrameInfo{it->second.qualname, it->second.filename, f.line};
}

// The kernel keeps a byte prefix of long strings; drop a UTF-8 sequence the
// cut split, so a truncated name does not end in garbage.
void trim_partial_utf8(std::string& s) {
  size_t i = s.size(), back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i, ++back;
  if (i == 0) return;
  const unsigned char lead = static_cast<unsigned char>(s[i - 1]);
  const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  if (lead >= 0xC0 && need > back + 1) s.resize(i - 1);
}

// Frames repeat across tasks (10,000 tasks share a handful of await sites):
// name each (code, line) once and intern its label.
struct FrameNamer {
  const Snapshot& snap;
  TaskGraph& g;
  std::unordered_map<uint64_t, std::unordered_map<uint32_t, const FrameInfo*>> cache;
  std::unordered_map<std::string, uint32_t> labels;

  const FrameInfo* operator()(const Frame& f) {
    auto& by_line = cache[f.code_id];
    auto it = by_line.find(f.line);
    if (it != by_line.end()) return it->second;
    FrameInfo info = name_frame_uncached(snap, f, &g.unnamed_frames);
    const std::string label = frame_label(info);
    info.shown = escape_untrusted(label);
    info.label = labels.emplace(label, static_cast<uint32_t>(labels.size())).first->second;
    g.frames.push_back(std::move(info));
    return by_line.emplace(f.line, &g.frames.back()).first->second;
  }
};

}  // namespace

std::string frame_label(const FrameInfo& f) {
  if (f.line == 0 && f.filename.empty()) return f.funcname;
  return f.funcname + " " + f.filename + ":" + std::to_string(f.line);
}

void TaskIndex::reserve(size_t n) {
  size_t want = 16;
  while (want < n * 2) want *= 2;  // at most half full
  if (want <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(want, Slot{0, 0, false});
  size_ = 0;
  for (const Slot& s : old)
    if (s.used) emplace(s.id, s.pos);
}

void TaskIndex::grow() { reserve(slots_.empty() ? 8 : slots_.size()); }

size_t TaskIndex::slot_of(uint64_t id) const {
  // Fibonacci hashing: ids are addresses, their low bits mostly zero.
  return static_cast<size_t>((id * 0x9E3779B97F4A7C15ull) >> 32) & (slots_.size() - 1);
}

bool TaskIndex::emplace(uint64_t id, uint32_t pos) {
  if ((size_ + 1) * 2 > slots_.size()) grow();
  for (size_t i = slot_of(id);; i = (i + 1) & (slots_.size() - 1)) {
    Slot& s = slots_[i];
    if (!s.used) {
      s = Slot{id, pos, true};
      ++size_;
      return true;
    }
    if (s.id == id) return false;
  }
}

const uint32_t* TaskIndex::find(uint64_t id) const {
  if (slots_.empty()) return nullptr;
  for (size_t i = slot_of(id);; i = (i + 1) & (slots_.size() - 1)) {
    const Slot& s = slots_[i];
    if (!s.used) return nullptr;
    if (s.id == id) return &s.pos;
  }
}

uint32_t TaskIndex::at(uint64_t id) const {
  const uint32_t* p = find(id);
  if (!p) throw std::out_of_range("task id not in graph");
  return *p;
}

const TaskNode* TaskGraph::find(uint64_t id) const {
  const uint32_t* pos = index.find(id);
  return pos ? &tasks[*pos] : nullptr;
}

std::vector<const AwaitEdge*> TaskGraph::awaiters_of(uint64_t child) const {
  std::vector<const AwaitEdge*> out;
  const uint32_t* pos = index.find(child);
  if (!pos || edge_begin.size() <= *pos + 1) return out;
  for (uint32_t i = edge_begin[*pos]; i < edge_begin[*pos + 1]; ++i) out.push_back(&edges[i]);
  return out;
}

TaskGraph build_graph(const Snapshot& snap) {
  TaskGraph g;
  g.pid = snap.pid;
  g.counters = snap.counters;

  // Threads in the order their first task was created; tasks by creation order.
  std::map<uint32_t, uint64_t> first_seq;
  for (const auto& r : snap.tasks) {
    auto [it, fresh] = first_seq.emplace(r.tid, r.seq);
    if (!fresh) it->second = std::min(it->second, r.seq);
  }
  // The sort key of each task computed once (not a map lookup per comparison).
  struct Keyed {
    uint64_t thread_seq, seq, id;
    uint32_t tid;
    const TaskRecord* r;
  };
  std::vector<Keyed> keyed;
  keyed.reserve(snap.tasks.size());
  for (const auto& r : snap.tasks) keyed.push_back({first_seq[r.tid], r.seq, r.id, r.tid, &r});
  const auto by_key = [](const Keyed& a, const Keyed& b) {
    return std::tie(a.thread_seq, a.tid, a.seq, a.id) < std::tie(b.thread_seq, b.tid, b.seq, b.id);
  };
  // Snapshots come in creation order: with one loop thread, already sorted.
  if (!std::is_sorted(keyed.begin(), keyed.end(), by_key)) std::sort(keyed.begin(), keyed.end(), by_key);
  std::vector<const TaskRecord*> recs;
  recs.reserve(keyed.size());
  for (const Keyed& k : keyed) recs.push_back(k.r);

  g.tasks.reserve(recs.size());
  g.index.reserve(recs.size());
  FrameNamer name_frame{snap, g, {}, {}};
  // Tasks created together wait at the same place: the previous task's
  // named stack serves the next one with the same frames.
  const TaskRecord* last = nullptr;
  const std::vector<const FrameInfo*>* last_stack = nullptr;
  auto same = [](const TaskRecord& x, const TaskRecord& y) {
    // Interned stacks: equal ids, equal frames (without touching them).
    if (x.stack_id && y.stack_id) return x.stack_id == y.stack_id;
    const std::vector<Frame>& a = x.frames;
    const std::vector<Frame>& b = y.frames;
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].code_id != b[i].code_id || a[i].line != b[i].line) return false;
    return true;
  };
  for (const auto* r : recs) {
    TaskNode n;
    n.id = r->id;
    n.name = r->name;
    n.tid = r->tid;
    n.parent_id = r->parent_id;
    n.loop_id = r->loop_id;
    n.state = r->state;
    n.awaiting_kind = r->awaiting_kind;
    n.awaiting_id = r->awaiting_id;
    n.name_truncated = r->name_truncated;
    if (n.name_truncated) trim_partial_utf8(n.name);
    n.stack_truncated = r->frames_truncated;
    n.nameless = r->nameless;
    n.create_ns = r->create_ns;
    n.coro_code_id = r->coro_code_id;
    n.timing = r->timing;
    if (last && same(*last, *r)) {
      n.stack = *last_stack;
    } else {
      n.stack.reserve(r->frames.size());
      for (const auto& f : r->frames) n.stack.push_back(name_frame(f));
    }
    g.index.emplace(n.id, static_cast<uint32_t>(g.tasks.size()));
    g.tasks.push_back(std::move(n));
    last = r;
    last_stack = &g.tasks.back().stack;  // stable: g.tasks was reserved
  }

  // Edges: direct awaits (from the awaiter's state) and explicit edges
  // (gather, TaskGroup, shield, kept on the child). Only between live tasks;
  // a pair once, the first kind found. By position: one sort instead of a
  // tree node per edge (a gather of 100,000 tasks is 100,000 edges).
  struct Pending {
    uint32_t child, awaiter;
    EdgeKind kind;
  };
  std::vector<Pending> pending;
  auto add = [&](uint64_t awaiter, uint64_t child, EdgeKind kind) {
    if (awaiter == child) return;
    const uint32_t* a = g.index.find(awaiter);
    const uint32_t* c = g.index.find(child);
    if (a && c) pending.push_back({*c, *a, kind});
  };
  for (const auto& t : g.tasks) {
    if (t.awaiting_kind == AwaitKind::Task) add(t.id, t.awaiting_id, EdgeKind::Await);
  }
  for (const auto* r : recs) {
    for (const auto& a : r->awaited_by) add(a.task_id, r->id, a.kind);
  }
  std::stable_sort(pending.begin(), pending.end(), [](const Pending& x, const Pending& y) {
    return std::tie(x.child, x.awaiter) < std::tie(y.child, y.awaiter);
  });
  pending.erase(std::unique(pending.begin(), pending.end(),
                            [](const Pending& x, const Pending& y) {
                              return x.child == y.child && x.awaiter == y.awaiter;
                            }),
                pending.end());
  g.edges.reserve(pending.size());
  g.edge_begin.reserve(g.tasks.size() + 1);
  size_t next = 0;
  for (uint32_t i = 0; i < g.tasks.size(); ++i) {
    g.edge_begin.push_back(static_cast<uint32_t>(g.edges.size()));
    for (; next < pending.size() && pending[next].child == i; ++next)
      g.edges.push_back(AwaitEdge{g.tasks[pending[next].awaiter].id, g.tasks[i].id, pending[next].kind});
  }
  g.edge_begin.push_back(static_cast<uint32_t>(g.edges.size()));
  return g;
}

}  // namespace asynctrace
