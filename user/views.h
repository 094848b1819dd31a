// SPDX-License-Identifier: Apache-2.0
// Views of a TaskGraph: the pstree forest and the ps table, as text in Python
// 3.14's exact format, or as JSON (schema in docs/json.md).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model.h"

namespace asynctrace {

struct TreeNode {
  bool is_task = false;
  uint64_t task_id = 0;       // tasks only
  const FrameInfo* frame = nullptr;  // coroutine frames only; points into the TaskGraph
  bool cycle = false;         // task already on the path above: back edge, not expanded
  std::vector<TreeNode> children;
};

// Python 3.14's asyncio.tools._build_tree: each task under the innermost frame
// of every task awaiting it; frames shared by siblings drawn once; roots are
// tasks nobody awaits. Tasks reachable only through an await cycle are drawn
// too, the back edge marked instead of refusing to draw.
std::vector<TreeNode> build_forest(const TaskGraph& g);

// Text views, streamed (100,000 tasks make tens of MB of text).
void render_pstree(const TaskGraph& g, std::ostream& out);
void render_ps(const TaskGraph& g, std::ostream& out);
std::string render_pstree(const TaskGraph& g);  // lines, each ending in '\n'
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

nlohmann::json graph_json(const TaskGraph& g, bool with_tree);

// `stats`: counters of the tracer for one process.
nlohmann::json stats_json(const TaskGraph& g);
std::string render_stats(const TaskGraph& g);

std::string hex_id(uint64_t id);  // Python's hex(): "0x7f..."

}  // namespace asynctrace
