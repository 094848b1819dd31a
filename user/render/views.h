// SPDX-License-Identifier: Apache-2.0
// Views of a TaskGraph: the pstree forest and the ps table, as text in Python
// 3.14's exact format, or as JSON (schema in docs/json.md).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/escape.h"
#include "core/model.h"

namespace asynctrace {

struct TreeNode {
  bool is_task = false;
  uint64_t task_id = 0;       // tasks only
  const FrameInfo* frame = nullptr;  // coroutine frames only; points into the TaskGraph
  bool cycle = false;         // task already on the path above: back edge, not expanded
  bool depth_limit = false;   // task at ForestLimits::max_depth: not expanded here, drawn elsewhere
  bool drawn_above = false;   // task drawn above, forest past ForestLimits' size: not expanded again
  std::vector<TreeNode> children;
};

// Bounds that keep the forest finite and drawable for any graph the traced
// process can produce. Python 3.14 recurses (RecursionError past ~1000
// levels) and redraws a shared subtree under every awaiter (exponential in
// layers of shared tasks, e.g. memoised task DAGs); within these bounds the
// forest is exactly Python's.
struct ForestLimits {
  size_t max_depth = 1000;  // nodes (tasks and frames) from a root down to a task
  // Past either, a task drawn above is not expanded again: nodes bound the
  // JSON, cells (the sum of the nodes' depths: indentation) the text.
  size_t max_nodes = 1000000;
  size_t max_cells = 20000000;
};

// Python 3.14's asyncio.tools._build_tree: each task under the innermost frame
// of every task awaiting it; frames shared by siblings drawn once; roots are
// tasks nobody awaits. Tasks reachable only through an await cycle are drawn
// too, the back edge marked instead of refusing to draw. A task cut by the
// depth limit that is drawn nowhere else becomes a root of its own, so every
// task is expanded somewhere.
std::vector<TreeNode> build_forest(const TaskGraph& g, const ForestLimits& limits = {});

// Text views, streamed (100,000 tasks make tens of MB of text).
void render_pstree(const TaskGraph& g, std::ostream& out, const ForestLimits& limits = {});
void render_ps(const TaskGraph& g, std::ostream& out);
std::string render_pstree(const TaskGraph& g, const ForestLimits& limits = {});  // lines, each ending in '\n'
std::string render_ps(const TaskGraph& g);

struct PsRow {
  uint32_t tid = 0;
  uint64_t task_id = 0;
  std::string task_name;        // raw
  std::string coroutine_stack;  // raw
  std::string awaiter_chain;    // raw
  std::string awaiter_name;     // raw
  uint64_t awaiter_id = 0;
};
std::vector<PsRow> build_ps_rows(const TaskGraph& g);

nlohmann::json graph_json(const TaskGraph& g, bool with_tree, const ForestLimits& limits = {});

// `stats`: counters of the tracer for one process.
nlohmann::json stats_json(const TaskGraph& g);
std::string render_stats(const TaskGraph& g);

}  // namespace asynctrace
