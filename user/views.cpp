// SPDX-License-Identifier: Apache-2.0
#include "views.h"

#include <cstdio>
#include <algorithm>
#include <unordered_map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_set>

#include "escape.h"

namespace asynctrace {
namespace {

// Node keys of the intermediate graph: tasks by id, coroutine frames by serial.
struct Key {
  bool task;
  uint64_t v;
  bool operator==(const Key& o) const { return task == o.task && v == o.v; }
};
struct KeyHash {
  size_t operator()(const Key& k) const { return std::hash<uint64_t>()(k.v * 2 + k.task); }
};

struct Builder {
  const TaskGraph& g;
  std::unordered_map<Key, std::vector<Key>, KeyHash> children;
  // Frame nodes under a parent, by interned label: siblings share a frame.
  std::unordered_map<Key, std::unordered_map<uint32_t, Key>, KeyHash> cor_nodes;
  std::vector<const FrameInfo*> cor_frame{nullptr};  // by frame node serial
  struct Placed {
    Key parent;
    uint64_t child;
    bool operator==(const Placed& o) const { return parent == o.parent && child == o.child; }
  };
  struct PlacedHash {
    size_t operator()(const Placed& p) const { return KeyHash()(p.parent) * 31 + std::hash<uint64_t>()(p.child); }
  };
  std::unordered_set<Placed, PlacedHash> placed;  // a task appears once under a frame

  Key cor_node(Key parent, const FrameInfo& f) {
    auto& m = cor_nodes[parent];
    if (auto it = m.find(f.label); it != m.end()) return it->second;
    Key k{false, cor_frame.size()};
    cor_frame.push_back(&f);
    children[parent].push_back(k);
    m.emplace(f.label, k);
    return k;
  }

  Key descend(uint64_t task, const std::vector<FrameInfo>& stack) {
    Key cur{true, task};
    for (auto it = stack.rbegin(); it != stack.rend(); ++it) cur = cor_node(cur, *it);
    return cur;
  }

  void expand(Key k, std::vector<uint64_t>& path, std::unordered_set<uint64_t>& drawn,
              TreeNode& out) {
    out.is_task = k.task;
    if (k.task) {
      out.task_id = k.v;
      drawn.insert(k.v);
      for (uint64_t p : path) {
        if (p == k.v) {
          out.cycle = true;
          return;
        }
      }
      path.push_back(k.v);
    } else {
      out.frame = cor_frame[k.v];
    }
    if (auto it = children.find(k); it != children.end()) {
      out.children.resize(it->second.size());
      for (size_t i = 0; i < it->second.size(); ++i) expand(it->second[i], path, drawn, out.children[i]);
    }
    if (k.task) path.pop_back();
  }
};

// Shown name: a name the kernel cut ends in "…" (JSON says name_truncated).
std::string shown_name(const TaskNode& t) {
  return escape_untrusted(t.name) + (t.name_truncated ? "…" : "");
}

void render_node(const TaskGraph& g, const TreeNode& n, const std::string& prefix, bool last,
                 std::string& out) {
  out += prefix;
  out += last ? "└── " : "├── ";
  if (n.is_task) {
    const TaskNode* t = g.find(n.task_id);
    out += "(T) ";
    out += t ? shown_name(*t) : hex_id(n.task_id);
    if (n.cycle) out += " [await cycle: back edge]";
  } else {
    out += " ";
    out += escape_untrusted(frame_label(*n.frame));
  }
  out += '\n';
  const std::string next = prefix + (last ? "    " : "│   ");
  for (size_t i = 0; i < n.children.size(); ++i) {
    render_node(g, n.children[i], next, i + 1 == n.children.size(), out);
  }
}

std::string first_word(const FrameInfo& f) {
  const std::string s = frame_label(f);
  const auto sp = s.find(' ');
  return sp == std::string::npos ? s : s.substr(0, sp);
}

std::string chain(const std::vector<FrameInfo>& stack) {
  std::string out;
  for (size_t i = 0; i < stack.size(); ++i) {
    if (i) out += " -> ";
    out += first_word(stack[i]);
  }
  return out;
}

const char* kind_name(EdgeKind k) {
  switch (k) {
    case EdgeKind::Await: return "await";
    case EdgeKind::Gather: return "gather";
    case EdgeKind::TaskGroup: return "taskgroup";
    case EdgeKind::Shield: return "shield";
  }
  return "unknown";
}

const char* await_kind_name(AwaitKind k) {
  switch (k) {
    case AwaitKind::None: return "none";
    case AwaitKind::Task: return "task";
    case AwaitKind::Future: return "future";
    case AwaitKind::Gather: return "gather";
    case AwaitKind::Running: return "running";
  }
  return "unknown";
}

const char* state_name(TaskState s) {
  switch (s) {
    case TaskState::Created: return "created";
    case TaskState::Running: return "running";
    case TaskState::Suspended: return "suspended";
  }
  return "unknown";
}

nlohmann::json stack_json(const std::vector<FrameInfo>& stack) {
  auto arr = nlohmann::json::array();
  for (const auto& f : stack) {
    arr.push_back({{"function", sanitize_utf8(f.funcname)},
                   {"file", sanitize_utf8(f.filename)},
                   {"line", f.line}});
  }
  return arr;
}

nlohmann::json tree_json(const TaskGraph& g, const TreeNode& n) {
  nlohmann::json j;
  if (n.is_task) {
    const TaskNode* t = g.find(n.task_id);
    j = {{"type", "task"}, {"id", hex_id(n.task_id)}, {"name", sanitize_utf8(t ? t->name : "")}};
    if (n.cycle) j["cycle"] = true;
  } else {
    j = {{"type", "frame"},
         {"function", sanitize_utf8(n.frame->funcname)},
         {"file", sanitize_utf8(n.frame->filename)},
         {"line", n.frame->line}};
  }
  auto kids = nlohmann::json::array();
  for (const auto& c : n.children) kids.push_back(tree_json(g, c));
  j["children"] = std::move(kids);
  return j;
}

bool complete(const ProcCounters& c) { return c.drop_tasks_full == 0 && c.drop_edges_full == 0; }

nlohmann::json counters_json(const ProcCounters& c) {
  return {{"events", c.events},
          {"replay_tasks", c.replay_tasks},
          {"dropped_tasks_map_full", c.drop_tasks_full},
          {"dropped_codes_map_full", c.drop_codes_full},
          {"dropped_edges_full", c.drop_edges_full},
          {"events_for_unknown_tasks", c.unknown_task}};
}

}  // namespace

nlohmann::json stats_json(const TaskGraph& g) {
  return {{"schema", "asynctrace/stats/v1"},
          {"pid", g.pid},
          {"tasks", g.tasks.size()},
          {"unnamed_frames", g.unnamed_frames},
          {"counters", counters_json(g.counters)},
          {"complete", complete(g.counters)}};
}

std::string render_stats(const TaskGraph& g) {
  const auto& c = g.counters;
  std::string out;
  auto row = [&](const char* k, uint64_t v) { out += ljust(k, 28) + std::to_string(v) + "\n"; };
  row("pid", g.pid);
  row("tasks pending", g.tasks.size());
  row("events", c.events);
  row("tasks in last replay", c.replay_tasks);
  row("dropped: task map full", c.drop_tasks_full);
  row("dropped: code map full", c.drop_codes_full);
  row("dropped: awaiters full", c.drop_edges_full);
  row("events for unknown tasks", c.unknown_task);
  out += ljust("view", 28) + (complete(c) ? "complete" : "partial") + "\n";
  return out;
}

std::string hex_id(uint64_t id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(id));
  return buf;
}

std::vector<TreeNode> build_forest(const TaskGraph& g) {
  Builder b{g, {}, {}, {nullptr}, {}};
  std::unordered_set<uint64_t> awaiting;
  std::unordered_map<uint64_t, Key> innermost;  // awaiter -> its innermost frame node
  for (const auto& e : g.edges) {
    auto [it, fresh] = innermost.try_emplace(e.awaiter, Key{true, 0});
    if (fresh) it->second = b.descend(e.awaiter, g.find(e.awaiter)->stack);
    const Key cur = it->second;
    if (b.placed.insert({cur, e.child}).second) b.children[cur].push_back(Key{true, e.child});
    awaiting.insert(e.awaiter);
  }
  for (const auto& t : g.tasks) {
    if (!awaiting.count(t.id)) b.descend(t.id, t.stack);
  }

  std::unordered_set<uint64_t> is_child;
  for (const auto& [k, kids] : b.children) {
    for (const Key& c : kids) {
      if (c.task) is_child.insert(c.v);
    }
  }
  std::vector<TreeNode> forest;
  std::unordered_set<uint64_t> drawn;
  std::vector<uint64_t> path;
  for (const auto& t : g.tasks) {
    if (is_child.count(t.id)) continue;
    forest.emplace_back();
    b.expand(Key{true, t.id}, path, drawn, forest.back());
  }
  // Tasks only reachable through a cycle have no root: start from the first.
  for (const auto& t : g.tasks) {
    if (drawn.count(t.id)) continue;
    forest.emplace_back();
    b.expand(Key{true, t.id}, path, drawn, forest.back());
  }
  return forest;
}

std::string render_pstree(const TaskGraph& g) {
  std::string out;
  for (const auto& root : build_forest(g)) render_node(g, root, "", true, out);
  return out;
}

std::vector<PsRow> build_ps_rows(const TaskGraph& g) {
  std::vector<PsRow> rows;
  for (const auto& t : g.tasks) {
    PsRow base{t.tid, t.id, t.name, chain(t.stack), "", "", 0};
    auto awaiters = g.awaiters_of(t.id);
    if (awaiters.empty()) {
      rows.push_back(base);
      continue;
    }
    for (const AwaitEdge* e : awaiters) {
      const TaskNode* a = g.find(e->awaiter);
      PsRow r = base;
      r.awaiter_chain = chain(a->stack);
      r.awaiter_name = a->name;
      r.awaiter_id = a->id;
      rows.push_back(std::move(r));
    }
  }
  return rows;
}

std::string render_ps(const TaskGraph& g) {
  auto line = [](const std::string& a, const std::string& b, const std::string& c,
                 const std::string& d, const std::string& e, const std::string& f,
                 const std::string& h) {
    return ljust(a, 10) + " " + ljust(b, 20) + " " + ljust(c, 20) + " " + ljust(d, 50) + " " +
           ljust(e, 50) + " " + ljust(f, 15) + " " + ljust(h, 15) + "\n";
  };
  std::string out = line("tid", "task id", "task name", "coroutine stack", "awaiter chain",
                         "awaiter name", "awaiter id");
  out += std::string(180, '-') + "\n";
  for (const auto& r : build_ps_rows(g)) {
    const TaskNode* awaiter = g.find(r.awaiter_id);
    out += line(std::to_string(r.tid), hex_id(r.task_id), shown_name(*g.find(r.task_id)),
                escape_untrusted(r.coroutine_stack), escape_untrusted(r.awaiter_chain),
                awaiter ? shown_name(*awaiter) : "", hex_id(r.awaiter_id));
  }
  return out;
}

nlohmann::json graph_json(const TaskGraph& g, bool with_tree) {
  nlohmann::json tasks = nlohmann::json::array();
  for (const auto& t : g.tasks) {
    nlohmann::json awaited_by = nlohmann::json::array();
    for (const AwaitEdge* e : g.awaiters_of(t.id)) {
      awaited_by.push_back({{"id", hex_id(e->awaiter)}, {"kind", kind_name(e->kind)}});
    }
    tasks.push_back({
        {"id", hex_id(t.id)},
        {"name", sanitize_utf8(t.name)},
        {"name_truncated", t.name_truncated},
        {"tid", t.tid},
        {"loop_id", hex_id(t.loop_id)},
        {"parent_id", hex_id(t.parent_id)},
        {"state", state_name(t.state)},
        {"awaiting", {{"kind", await_kind_name(t.awaiting_kind)}, {"id", hex_id(t.awaiting_id)}}},
        {"stack", stack_json(t.stack)},
        {"stack_truncated", t.stack_truncated},
        {"awaited_by", std::move(awaited_by)},
    });
  }
  nlohmann::json threads = nlohmann::json::array();
  {
    std::vector<uint32_t> order;
    for (const auto& t : g.tasks) {
      if (order.empty() || order.back() != t.tid) order.push_back(t.tid);
    }
    for (uint32_t tid : order) {
      size_t n = 0;
      for (const auto& t : g.tasks) n += t.tid == tid;
      threads.push_back({{"tid", tid}, {"tasks", n}});
    }
  }
  nlohmann::json j = {
      {"schema", "asynctrace/tasks/v1"},
      {"pid", g.pid},
      {"threads", std::move(threads)},
      {"tasks", std::move(tasks)},
      {"counters", counters_json(g.counters)},
      {"complete", complete(g.counters)},
  };
  if (with_tree) {
    nlohmann::json forest = nlohmann::json::array();
    for (const auto& root : build_forest(g)) forest.push_back(tree_json(g, root));
    j["tree"] = std::move(forest);
  }
  return j;
}

}  // namespace asynctrace
