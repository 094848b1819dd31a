// SPDX-License-Identifier: Apache-2.0
#include "profile/recorder.h"

#include <algorithm>

#include "core/escape.h"

namespace asynctrace {

std::vector<NamedFrame> name_frames(StackSource& book, const StackInfo* st) {
  std::vector<NamedFrame> out;
  if (!st) return out;
  for (const Frame& f : st->frames) {
    NamedFrame n;
    n.code_id = f.code_id;
    n.line = f.line;
    if (const CodeInfo* c = book.code(f.code_id)) {
      n.func = c->qualname;
      n.file = c->filename;
    } else {
      n.func = "<code " + hex_id(f.code_id) + ">";
    }
    out.push_back(std::move(n));
  }
  return out;
}

GraphTasks graph_tasks(const TaskGraph& g) {
  GraphTasks out;
  auto link_of = [&](const TaskNode& t) {
    ChainLink l;
    l.name = t.name;
    for (const FrameInfo* f : t.stack) l.frames.push_back({f->funcname, f->filename, f->line, 0});
    // The outermost frame is the task's coroutine.
    if (!t.stack.empty()) l.coroutine = t.stack.back()->funcname;
    return l;
  };
  for (const TaskNode& t : g.tasks) {
    std::vector<ChainLink> chain;
    std::unordered_set<uint64_t> seen{t.id};
    uint64_t cur = t.id;
    for (int depth = 0; depth < 64; ++depth) {
      const auto aw = g.awaiters_of(cur);
      if (aw.empty() || !seen.insert(aw.front()->awaiter).second) break;
      const TaskNode* a = g.find(aw.front()->awaiter);
      if (!a) break;
      chain.push_back(link_of(*a));
      cur = a->id;
    }
    std::reverse(chain.begin(), chain.end());
    out[TaskKey{t.id, t.create_ns}] = GraphTask{link_of(t), std::move(chain)};
  }
  return out;
}

}  // namespace asynctrace
