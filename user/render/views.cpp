// SPDX-License-Identifier: Apache-2.0
#include "render/views.h"

#include <cstdio>
#include <algorithm>
#include <unordered_map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>
#include <set>
#include <unordered_set>

#include "core/escape.h"

namespace asynctrace {
namespace {

// The intermediate graph of 3.14's _build_tree, flat: node i < ntasks is
// g.tasks[i]; node ntasks + k is the k-th frame node. Children are linked
// lists of references (a task awaited by two tasks is referenced twice).
struct Builder {
  const TaskGraph& g;
  const uint32_t ntasks;
  std::vector<const FrameInfo*> frame_of;  // by frame node - ntasks
  struct Ref {
    uint32_t node;
    int32_t next;
  };
  std::vector<Ref> refs;
  std::vector<int32_t> first, last;  // by node: first/last ref of its children, -1 = none
  // (parent node, label) -> frame node: siblings share a frame.
  std::unordered_map<uint64_t, uint32_t> frame_child;
  std::unordered_set<uint64_t> placed;  // (frame node, task node): a task once under a frame

  explicit Builder(const TaskGraph& graph)
      : g(graph), ntasks(static_cast<uint32_t>(graph.tasks.size())), first(ntasks, -1), last(ntasks, -1) {}

  static uint64_t pack(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

  void add_child(uint32_t parent, uint32_t child) {
    const int32_t r = static_cast<int32_t>(refs.size());
    refs.push_back({child, -1});
    if (last[parent] < 0) first[parent] = r;
    else refs[static_cast<size_t>(last[parent])].next = r;
    last[parent] = r;
  }

  uint32_t frame_node(uint32_t parent, const FrameInfo& f) {
    auto [it, fresh] = frame_child.try_emplace(pack(parent, f.label), 0);
    if (!fresh) return it->second;
    const uint32_t n = ntasks + static_cast<uint32_t>(frame_of.size());
    frame_of.push_back(&f);
    first.push_back(-1);
    last.push_back(-1);
    add_child(parent, n);
    it->second = n;
    return n;
  }

  uint32_t descend(uint32_t task, const std::vector<const FrameInfo*>& stack) {
    uint32_t cur = task;
    for (auto it = stack.rbegin(); it != stack.rend(); ++it) cur = frame_node(cur, **it);
    return cur;
  }

  // What expand() carries down the forest.
  struct Walk {
    const ForestLimits& limits;
    std::vector<bool> drawn;     // by task: expanded somewhere above (or on the path)
    std::vector<uint32_t> path;  // tasks from the root down
    size_t depth = 0;            // nodes from the root down, frames included
    size_t nodes = 0;            // nodes drawn so far
    size_t cells = 0;            // sum of their depths
  };

  void expand(uint32_t node, Walk& w, TreeNode& out) const {
    ++w.nodes;
    w.cells += w.depth;
    out.is_task = node < ntasks;
    if (out.is_task) {
      out.task_id = g.tasks[node].id;
      if (std::find(w.path.begin(), w.path.end(), node) != w.path.end()) {
        out.cycle = true;
        return;
      }
      if (w.depth >= w.limits.max_depth) {
        out.depth_limit = true;  // not drawn: build_forest makes it a root if nothing else draws it
        return;
      }
      if (w.drawn[node] && (w.nodes > w.limits.max_nodes || w.cells > w.limits.max_cells)) {
        out.drawn_above = true;
        return;
      }
      w.drawn[node] = true;
      w.path.push_back(node);
    } else {
      out.frame = frame_of[node - ntasks];
    }
    size_t n = 0;
    for (int32_t r = first[node]; r >= 0; r = refs[static_cast<size_t>(r)].next) ++n;
    out.children.resize(n);
    size_t i = 0;
    ++w.depth;
    for (int32_t r = first[node]; r >= 0; r = refs[static_cast<size_t>(r)].next)
      expand(refs[static_cast<size_t>(r)].node, w, out.children[i++]);
    --w.depth;
    if (out.is_task) w.path.pop_back();
  }
};

// Shown name: a name the kernel cut ends in "…" (JSON says name_truncated).
std::string shown_name(const TaskNode& t) {
  return escape_untrusted(t.name) + (t.name_truncated ? "…" : "");
}

// Appends n and its subtree to buf; prefix is the indentation of n's line,
// grown and shrunk in place. The buffer goes to `out` every 64 KiB: 100,000
// tasks are ~300,000 lines, and a stream insertion per piece cost more than
// building the tree.
void render_node(const TaskGraph& g, const TreeNode& n, std::string& prefix, bool last, std::string& buf,
                 std::ostream& out) {
  buf += prefix;
  buf += last ? "└── " : "├── ";
  if (n.is_task) {
    const TaskNode* t = g.find(n.task_id);
    buf += "(T) ";
    buf += t ? shown_name(*t) : hex_id(n.task_id);
    if (n.cycle) buf += " [await cycle: back edge]";
    if (n.depth_limit) buf += " [tree depth limit: subtree drawn separately]";
    if (n.drawn_above) buf += " [subtree drawn above]";
  } else {
    buf += ' ';
    buf += n.frame->shown;
  }
  buf += '\n';
  if (buf.size() >= 64 * 1024) {
    out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
    buf.clear();
  }
  const size_t at = prefix.size();
  prefix += last ? "    " : "│   ";
  for (size_t i = 0; i < n.children.size(); ++i)
    render_node(g, n.children[i], prefix, i + 1 == n.children.size(), buf, out);
  prefix.resize(at);
}

// ps names a frame by its label up to the first space (Python 3.14's
// build_task_table); the placeholder of an unregistered code stays whole.
std::string first_word(const FrameInfo& f) {
  if (f.unnamed) return f.funcname;
  const std::string s = frame_label(f);
  const auto sp = s.find(' ');
  return sp == std::string::npos ? s : s.substr(0, sp);
}

std::string chain(const std::vector<const FrameInfo*>& stack) {
  std::string out;
  for (size_t i = 0; i < stack.size(); ++i) {
    if (i) out += " -> ";
    out += first_word(*stack[i]);
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

nlohmann::json stack_json(const std::vector<const FrameInfo*>& stack) {
  auto arr = nlohmann::json::array();
  for (const FrameInfo* fp : stack) {
    const FrameInfo& f = *fp;
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
    if (n.depth_limit) j["depth_limit"] = true;
    if (n.drawn_above) j["drawn_above"] = true;
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

bool complete(const ProcCounters& c) {
  return c.drop_tasks_full == 0 && c.drop_edges_full == 0 && c.drop_runtime == 0 && c.bad_records == 0 &&
         c.drop_stacks_full == 0;
}

nlohmann::json counters_json(const ProcCounters& c) {
  return {{"events", c.events},
          {"replay_tasks", c.replay_tasks},
          {"dropped_tasks_map_full", c.drop_tasks_full},
          {"dropped_codes_map_full", c.drop_codes_full},
          {"dropped_edges_full", c.drop_edges_full},
          {"events_for_unknown_tasks", c.unknown_task},
          {"dropped_in_runtime", c.drop_runtime},
          {"bad_records", c.bad_records},
          {"dropped_stacks_map_full", c.drop_stacks_full},
          {"dropped_events_ring_full", c.drop_events},
          {"dropped_timing_map_full", c.drop_timing_full},
          {"timing", c.timing_since_ns != 0},
          {"tasks_created", c.tasks_created},
          {"tasks_completed", c.tasks_completed},
          {"steps", c.steps},
          {"busy_ns", c.busy_ns}};
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

// Labels say what each count is without docs; docs/json.md has the long form.
std::string render_stats(const TaskGraph& g) {
  const auto& c = g.counters;
  std::string out;
  auto row = [&](const char* k, uint64_t v) { out += ljust(k, 48) + std::to_string(v) + "\n"; };
  row("pid", g.pid);
  row("tasks pending", g.tasks.size());
  row("events traced", c.events);
  row("tasks reported by the last replay", c.replay_tasks);
  row("dropped: task map full", c.drop_tasks_full);
  row("dropped: code map full", c.drop_codes_full);
  row("dropped: awaiters full", c.drop_edges_full);
  row("events for tasks never seen created (gap)", c.unknown_task);
  row("dropped: runtime buffer", c.drop_runtime);
  row("malformed batch records", c.bad_records);
  row("dropped: stack map full", c.drop_stacks_full);
  row("dropped: events ring full", c.drop_events);
  row("dropped: timing map full", c.drop_timing_full);
  if (c.timing_since_ns) {
    row("tasks created since timing began", c.tasks_created);
    row("tasks completed since (some created before)", c.tasks_completed);
    row("steps since timing began", c.steps);
    row("ns in steps since timing began", c.busy_ns);
  }
  out += ljust("view", 48) + (complete(c) ? "complete" : "partial") + "\n";
  return out;
}

std::vector<TreeNode> build_forest(const TaskGraph& g, const ForestLimits& limits) {
  Builder b(g);
  std::vector<bool> awaiting(b.ntasks, false), is_child(b.ntasks, false);
  std::unordered_map<uint32_t, uint32_t> innermost;  // awaiter -> its innermost frame node
  for (const auto& e : g.edges) {
    const uint32_t awaiter = static_cast<uint32_t>(g.index.at(e.awaiter));
    const uint32_t child = static_cast<uint32_t>(g.index.at(e.child));
    auto [it, fresh] = innermost.try_emplace(awaiter, 0);
    if (fresh) it->second = b.descend(awaiter, g.tasks[awaiter].stack);
    if (b.placed.insert(Builder::pack(it->second, child)).second) b.add_child(it->second, child);
    awaiting[awaiter] = true;
    is_child[child] = true;
  }
  for (uint32_t i = 0; i < b.ntasks; ++i) {
    if (!awaiting[i]) b.descend(i, g.tasks[i].stack);
  }
  std::vector<TreeNode> forest;
  Builder::Walk w{limits, std::vector<bool>(b.ntasks, false), {}, 0, 0, 0};
  for (uint32_t i = 0; i < b.ntasks; ++i) {
    if (is_child[i]) continue;
    forest.emplace_back();
    b.expand(i, w, forest.back());
  }
  // Tasks only reachable through a cycle (or cut by the depth limit) have no
  // root: start from the first.
  for (uint32_t i = 0; i < b.ntasks; ++i) {
    if (w.drawn[i]) continue;
    forest.emplace_back();
    b.expand(i, w, forest.back());
  }
  return forest;
}

void render_pstree(const TaskGraph& g, std::ostream& out, const ForestLimits& limits) {
  std::string prefix, buf;
  buf.reserve(80 * 1024);
  for (const auto& root : build_forest(g, limits)) render_node(g, root, prefix, true, buf, out);
  out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
}

std::string render_pstree(const TaskGraph& g, const ForestLimits& limits) {
  std::ostringstream out;
  render_pstree(g, out, limits);
  return out.str();
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

void render_ps(const TaskGraph& g, std::ostream& out) {
  auto line = [&out](const std::string& a, const std::string& b, const std::string& c,
                     const std::string& d, const std::string& e, const std::string& f,
                     const std::string& h) {
    out << ljust(a, 10) << " " << ljust(b, 20) << " " << ljust(c, 20) << " " << ljust(d, 50) << " "
        << ljust(e, 50) << " " << ljust(f, 15) << " " << ljust(h, 15) << "\n";
  };
  line("tid", "task id", "task name", "coroutine stack", "awaiter chain", "awaiter name", "awaiter id");
  out << std::string(180, '-') << "\n";
  for (const auto& r : build_ps_rows(g)) {
    const TaskNode* awaiter = g.find(r.awaiter_id);
    line(std::to_string(r.tid), hex_id(r.task_id), shown_name(*g.find(r.task_id)),
         escape_untrusted(r.coroutine_stack), escape_untrusted(r.awaiter_chain),
         awaiter ? shown_name(*awaiter) : "", hex_id(r.awaiter_id));
  }
}

std::string render_ps(const TaskGraph& g) {
  std::ostringstream out;
  render_ps(g, out);
  return out.str();
}

nlohmann::json graph_json(const TaskGraph& g, bool with_tree, const ForestLimits& limits) {
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
    // Tasks are grouped by thread: one run per tid. Counted in one pass (a
    // count per thread over all tasks is quadratic when every task claims a
    // thread of its own).
    std::vector<std::pair<uint32_t, size_t>> order;
    std::unordered_map<uint32_t, size_t> pos;
    for (const auto& t : g.tasks) {
      if (order.empty() || order.back().first != t.tid) {
        auto [it, fresh] = pos.try_emplace(t.tid, order.size());
        if (fresh) order.emplace_back(t.tid, 0);
        ++order[it->second].second;
      } else {
        ++order.back().second;
      }
    }
    for (const auto& [tid, n] : order) threads.push_back({{"tid", tid}, {"tasks", n}});
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
    for (const auto& root : build_forest(g, limits)) forest.push_back(tree_json(g, root));
    j["tree"] = std::move(forest);
  }
  return j;
}

}  // namespace asynctrace
