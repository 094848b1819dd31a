// SPDX-License-Identifier: Apache-2.0
#include "render/ps_long.h"

#include <algorithm>
#include <unordered_map>
#include <utility>

#include "core/escape.h"
#include "render/views.h"

namespace asynctrace {

PsLong build_ps_long(const Snapshot& first, Snapshot later, TopModel& model, const TopOptions& opts,
                     uint64_t now_ns) {
  // The window as it ends: the tasks, states, stacks and timing of the
  // second look (a task that ended in the window is gone from it, so no row
  // and no wait counted on past its end); coroutine names either look knew.
  Snapshot& snap = later;
  for (const auto& [id, code] : first.code) snap.code.emplace(id, code);
  PsLong p;
  p.graph = build_graph(snap);
  p.frame = model.update(p.graph, now_ns, opts);
  const TopFrame& f = p.frame;
  p.warnings = f.warnings;
  if (f.header.created > f.header.completed && p.graph.tasks.size() >= 50 &&
      f.header.created_per_s > f.header.completed_per_s * 1.1)
    p.warnings.push_back("tasks are created faster than they complete (" +
                         std::to_string(static_cast<int>(f.header.created_per_s)) + "/s vs " +
                         std::to_string(static_cast<int>(f.header.completed_per_s)) + "/s): a task leak?");
  // Per coroutine, busiest first (all tasks of it, short-lived ones included).
  for (const auto& [id, t] : snap.code_timing) {
    const auto it = snap.code.find(id);
    p.codes.push_back({it == snap.code.end() ? "<code " + hex_id(id) + ">" : it->second.qualname,
                       it == snap.code.end() ? "" : it->second.filename, t});
  }
  std::sort(p.codes.begin(), p.codes.end(),
            [](const PsLongCode& a, const PsLongCode& b) { return a.t.busy_ns > b.t.busy_ns; });
  return p;
}

namespace {

std::unordered_map<uint64_t, const TopRow*> rows_by_id(const TopFrame& f) {
  std::unordered_map<uint64_t, const TopRow*> by_id;
  for (const TopRow& r : f.rows) by_id[r.id] = &r;
  return by_id;
}

nlohmann::json hist_json(const Timing& t) {
  size_t n = t.hist.size();
  while (n && !t.hist[n - 1]) --n;
  return nlohmann::json(std::vector<uint32_t>(t.hist.begin(), t.hist.begin() + static_cast<long>(n)));
}

std::string line(const std::vector<std::pair<std::string, size_t>>& cols) {
  std::string s;
  for (const auto& [text, width] : cols) s += ljust(text, width) + " ";
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s + "\n";
}

}  // namespace

nlohmann::json ps_long_json(const PsLong& p) {
  const TaskGraph& g = p.graph;
  const auto by_id = rows_by_id(p.frame);
  nlohmann::json j = graph_json(g, false);
  // graph_json lists g.tasks in order.
  for (size_t i = 0; i < g.tasks.size() && i < j["tasks"].size(); ++i) {
    const TaskNode& node = g.tasks[i];
    const auto it = by_id.find(node.id);
    const TopRow* r = it == by_id.end() ? nullptr : it->second;
    j["tasks"][i]["age_ns"] = r ? nlohmann::json(r->age_ns) : nlohmann::json(nullptr);
    j["tasks"][i]["timing"] =
        r && r->timed && node.timing
            ? nlohmann::json{{"steps", r->steps},         {"busy_ns", r->busy_ns},
                             {"sched_ns", r->sched_ns},   {"idle_ns", r->idle_ns},
                             {"longest_ns", r->longest_ns}, {"waiting_ns", r->waiting_ns},
                             {"hist_log2_us", hist_json(*node.timing)}}
            : nlohmann::json(nullptr);
  }
  nlohmann::json cj = nlohmann::json::array();
  for (const PsLongCode& c : p.codes)
    cj.push_back({{"coroutine", sanitize_utf8(c.name)}, {"file", sanitize_utf8(c.file)}, {"steps", c.t.steps},
                  {"busy_ns", c.t.busy_ns}, {"sched_ns", c.t.sched_ns}, {"longest_ns", c.t.max_ns},
                  {"hist_log2_us", hist_json(c.t)}});
  j["coroutines"] = std::move(cj);
  nlohmann::json w = nlohmann::json::array();
  for (const std::string& s : p.warnings) w.push_back(sanitize_utf8(s));
  j["warnings"] = std::move(w);
  j["header"] = top_json(p.frame)["header"];
  return j;
}

std::string render_ps_long(const PsLong& p) {
  const TaskGraph& g = p.graph;
  const auto by_id = rows_by_id(p.frame);
  std::string out;
  out += line({{"tid", 10}, {"task id", 16}, {"task name", 20}, {"state", 8}, {"steps", 7}, {"busy", 9},
               {"longest", 9}, {"waiting", 9}, {"created by", 15}, {"coroutine stack", 50},
               {"awaiter chain", 40}, {"awaiter name", 15}, {"awaiter id", 15}});
  out += std::string(220, '-') + "\n";
  for (const PsRow& r : build_ps_rows(g)) {
    const auto it = by_id.find(r.task_id);
    const TopRow* t = it == by_id.end() ? nullptr : it->second;
    const TaskNode* awaiter = g.find(r.awaiter_id);
    const TaskNode* self = g.find(r.task_id);
    const TaskNode* creator = self && self->parent_id ? g.find(self->parent_id) : nullptr;
    const std::string created_by = creator ? escape_untrusted(creator->name)
                                   : self && self->parent_id ? hex_id(self->parent_id) : "";
    out += line({{std::to_string(r.tid), 10},
                 {hex_id(r.task_id), 16},
                 {escape_untrusted(r.task_name), 20},
                 {t ? t->state : "", 8},
                 {t && t->timed ? std::to_string(t->steps) : "-", 7},
                 {t && t->timed ? short_duration(t->busy_ns) : "-", 9},
                 {t && t->timed ? short_duration(t->longest_ns) : "-", 9},
                 {!t || !t->waiting_ns ? "-" : t->waiting_ns < 500000000ull ? "<0.5s" : short_duration(t->waiting_ns), 9},
                 {created_by, 15},
                 {escape_untrusted(r.coroutine_stack), 50},
                 {escape_untrusted(r.awaiter_chain), 40},
                 {awaiter ? escape_untrusted(awaiter->name) : "", 15},
                 {r.awaiter_id ? hex_id(r.awaiter_id) : "", 15}});
  }
  if (!p.codes.empty()) {
    out += "\n" + line({{"coroutine", 40}, {"steps", 9}, {"busy", 9}, {"longest", 9}, {"steps by duration", 0}});
    size_t shown = 0;
    for (const PsLongCode& c : p.codes) {
      if (++shown > 10) break;
      std::string dist;
      for (size_t b = 0; b < c.t.hist.size(); ++b) {
        if (!c.t.hist[b]) continue;
        // Bucket b holds [2^b, 2^(b+1)) us; bucket 0 also < 1 us.
        dist += (dist.empty() ? "" : ", ") + std::string(b ? ">=" : "<") +
                short_duration(b ? (1ull << b) * 1000ull : 2000ull) + " " + std::to_string(c.t.hist[b]);
      }
      out += line({{escape_untrusted(c.name), 40}, {std::to_string(c.t.steps), 9},
                   {short_duration(c.t.busy_ns), 9}, {short_duration(c.t.max_ns), 9}, {dist, 0}});
    }
  }
  if (!p.warnings.empty()) out += "\n";
  for (const std::string& w : p.warnings) out += "warning: " + escape_untrusted(w) + "\n";
  return out;
}

}  // namespace asynctrace
