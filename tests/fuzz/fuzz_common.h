// SPDX-License-Identifier: Apache-2.0
// Shared by the fuzz targets: the whole user-side pipeline (Snapshot -> model
// -> every view) and the invariants its output must keep whatever the kernel
// or the traced process wrote. A broken invariant aborts (libFuzzer: crash).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "abi.h"
#include "core/model.h"
#include "core/snapshot.h"
#include "render/views.h"

namespace fuzzcheck {

[[noreturn]] inline void fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
  if (!detail.empty()) {
    std::fprintf(stderr, "  detail (%zu bytes): ", detail.size());
    for (size_t i = 0; i < detail.size() && i < 512; ++i) {
      const unsigned char c = static_cast<unsigned char>(detail[i]);
      if (c >= 0x20 && c < 0x7f) std::fputc(c, stderr);
      else std::fprintf(stderr, "\\x%02x", c);
    }
    std::fputc('\n', stderr);
  }
  std::abort();
}

#define FUZZ_CHECK(cond, detail) \
  do {                           \
    if (!(cond)) ::fuzzcheck::fail(#cond, (detail)); \
  } while (0)

// Strict UTF-8 decoder written independently of user/escape.cpp: calls
// on(cp) per code point, false on any invalid sequence (overlong, surrogate,
// > U+10FFFF, truncated).
template <class F>
bool for_each_utf8(std::string_view s, F&& on) {
  for (size_t i = 0; i < s.size();) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    size_t n;
    if (b0 < 0x80) { cp = b0; n = 1; }
    else if (b0 >= 0xC2 && b0 <= 0xDF) { cp = b0 & 0x1F; n = 2; }
    else if (b0 >= 0xE0 && b0 <= 0xEF) { cp = b0 & 0x0F; n = 3; }
    else if (b0 >= 0xF0 && b0 <= 0xF4) { cp = b0 & 0x07; n = 4; }
    else return false;
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    on(cp);
    i += n;
  }
  return true;
}

inline bool decode_utf8(std::string_view s, std::vector<uint32_t>* cps) {
  return for_each_utf8(s, [cps](uint32_t cp) {
    if (cps) cps->push_back(cp);
  });
}

// Terminal-safe text: valid UTF-8, no C0 control but '\n', no DEL, no C1
// (ESC and NUL are C0; C1 U+009B is a CSI on some terminals).
inline void check_terminal_text(std::string_view text, const char* what) {
  bool safe = true;
  if (!for_each_utf8(text, [&safe](uint32_t cp) {
        safe &= !((cp < 0x20 && cp != '\n') || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F));
      }) || !safe)
    fail(what, text);
  if (!text.empty() && text.back() != '\n') fail(what, text);
}

inline size_t count_lines(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// Task ids of the task nodes expanded in the forest (stubs not counted).
inline void collect_task_ids(const asynctrace::TreeNode& n, std::unordered_set<uint64_t>& ids,
                             size_t depth, size_t max_depth) {
  const bool stub = n.cycle || n.depth_limit || n.drawn_above;
  FUZZ_CHECK(!stub || (n.is_task && n.children.empty()), "stub with children");
  FUZZ_CHECK(int(n.cycle) + int(n.depth_limit) + int(n.drawn_above) <= 1, "");
  // Expanded tasks above the limit; stubs and frames at most one stack (<=
  // AT_MAX_FRAMES frames, from the decoder) below it.
  FUZZ_CHECK(depth <= max_depth + AT_MAX_FRAMES + 1, "node below the depth limit");
  if (n.is_task) {
    FUZZ_CHECK(stub || depth < max_depth, "expanded task below the depth limit");
    if (!stub) ids.insert(n.task_id);
  } else {
    FUZZ_CHECK(n.frame != nullptr, "frame node without frame");
  }
  for (const auto& c : n.children) collect_task_ids(c, ids, depth + 1, max_depth);
}

// dump() throws on invalid UTF-8 in any string; parse(dump) == j for
// documents small enough to keep the fuzzer fast (parsing dominates).
inline void check_json_roundtrip(const nlohmann::json& j, const char* what) {
  std::string text;
  try {
    text = j.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(what, e.what());
  }
  if (text.size() > 64 * 1024) return;
  nlohmann::json back;
  try {
    back = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(what, e.what());
  }
  if (back != j) fail(what, text);
}

// The forest's bounds, scaled down from the defaults (same code paths) so that
// an input hitting them costs milliseconds, not seconds, under ASan.
inline const asynctrace::ForestLimits kLimits{32, 2000, 40000};

// Snapshot -> TaskGraph -> pstree, ps, JSON (tasks and tree), stats.
inline void check_pipeline(const asynctrace::Snapshot& snap) {
  using namespace asynctrace;
  const TaskGraph g = build_graph(snap);

  // Model: one node per record, edges between distinct live tasks, CSR index sane.
  FUZZ_CHECK(g.tasks.size() == snap.tasks.size(), "");
  FUZZ_CHECK(g.edge_begin.size() == g.tasks.size() + 1, "");
  for (size_t i = 0; i + 1 < g.edge_begin.size(); ++i) FUZZ_CHECK(g.edge_begin[i] <= g.edge_begin[i + 1], "");
  FUZZ_CHECK(g.edge_begin.back() == g.edges.size(), "");
  std::set<std::pair<uint64_t, uint64_t>> edge_set;
  for (const auto& e : g.edges) {
    FUZZ_CHECK(e.awaiter != e.child, "self edge");
    FUZZ_CHECK(g.find(e.awaiter) && g.find(e.child), "edge to a missing task");
  }
  for (const auto& t : g.tasks) {
    FUZZ_CHECK(g.find(t.id) != nullptr, "");
    for (const FrameInfo* f : t.stack) FUZZ_CHECK(f != nullptr, "");
    // Edges listed for a task (first node of its id) are unique per awaiter.
    std::set<uint64_t> awaiters;
    for (const AwaitEdge* e : g.awaiters_of(t.id)) {
      FUZZ_CHECK(e->child == t.id, "");
      FUZZ_CHECK(awaiters.insert(e->awaiter).second, "duplicate awaiter");
    }
  }

  // Forest: every task expanded somewhere, no task deeper than the limit.
  const ForestLimits& limits = kLimits;
  const auto forest = build_forest(g, limits);
  std::unordered_set<uint64_t> drawn;
  for (const auto& root : forest) {
    FUZZ_CHECK(root.is_task, "root is not a task");
    collect_task_ids(root, drawn, 0, limits.max_depth);
  }
  for (const auto& t : g.tasks) FUZZ_CHECK(drawn.count(t.id), "task never expanded in the tree");

  const std::string tree = render_pstree(g, limits);  // the streamed variant underneath
  check_terminal_text(tree, "pstree text");

  const auto rows = build_ps_rows(g);
  size_t expect_rows = 0;
  for (const auto& t : g.tasks) {
    const size_t a = g.awaiters_of(t.id).size();
    expect_rows += a ? a : 1;
  }
  FUZZ_CHECK(rows.size() == expect_rows, "");
  const std::string table = render_ps(g);
  check_terminal_text(table, "ps text");
  FUZZ_CHECK(count_lines(table) == rows.size() + 2, table);

  const nlohmann::json j = graph_json(g, true, limits);
  check_json_roundtrip(j, "tasks json");
  FUZZ_CHECK(j.at("tasks").size() == g.tasks.size(), "");
  FUZZ_CHECK(j.at("tree").size() == forest.size(), "");

  check_json_roundtrip(stats_json(g), "stats json");
  const std::string stats = render_stats(g);
  check_terminal_text(stats, "stats text");

  if (std::getenv("FUZZ_PRINT")) {  // FUZZ_PRINT=1 ./fuzz_stacks FILE: what an input decodes to
    std::fputs((tree + table + stats).c_str(), stdout);
  }
}

}  // namespace fuzzcheck
