// SPDX-License-Identifier: Apache-2.0
#include "render/top_view.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/escape.h"
#include "render/views.h"

namespace asynctrace {
namespace {

const char* state_name(TaskState s) {
  switch (s) {
    case TaskState::Running: return "running";
    case TaskState::Suspended: return "waiting";
    case TaskState::Created: break;
  }
  return "created";
}

// What the task waits for, in a few words.
std::string awaiting_text(const TaskGraph& g, const TaskNode& t) {
  if (t.state != TaskState::Suspended) return "";
  std::string where;
  if (!t.stack.empty()) where = " at " + frame_label(*t.stack.front());
  switch (t.awaiting_kind) {
    case AwaitKind::Task: {
      const TaskNode* other = g.find(t.awaiting_id);
      return "task " + (other ? other->name : hex_id(t.awaiting_id)) + where;
    }
    case AwaitKind::Gather: return "gather" + where;
    case AwaitKind::Future: return "future" + where;
    case AwaitKind::None: return "yield" + where;
    case AwaitKind::Running: return "";
  }
  return where;
}

uint64_t sub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

}  // namespace

std::string short_duration(uint64_t ns) {
  char buf[32];
  if (ns >= 3600'000'000'000ull) std::snprintf(buf, sizeof buf, "%.1fh", ns / 3.6e12);
  else if (ns >= 60'000'000'000ull) std::snprintf(buf, sizeof buf, "%.1fm", ns / 6e10);
  else if (ns >= 1'000'000'000ull) std::snprintf(buf, sizeof buf, "%.2fs", ns / 1e9);
  else if (ns >= 1'000'000ull) std::snprintf(buf, sizeof buf, "%.1fms", ns / 1e6);
  else std::snprintf(buf, sizeof buf, "%.0fus", ns / 1e3);
  return buf;
}

// The runtime's busy_ns counts steps up to its record's loop_at_ns, the part
// of steps in progress included (records.h, LOOP): busy between two records
// over their distance is at most 100% a loop thread, however long the steps
// (a whole step counted into the interval it ends in went past 100%). A
// frame that saw no new record keeps the share of the last two it saw.
double TopModel::loop_busy_pct(const ProcCounters& c) {
  const uint64_t from = prev_loop_at_ ? prev_loop_at_ : c.timing_since_ns;
  if (c.loop_at_ns > from) {
    loop_busy_pct_ = 100.0 * sub(c.busy_ns, prev_loop_at_ ? prev_busy_total_ : 0) /
                     static_cast<double>(c.loop_at_ns - from);
    prev_loop_at_ = c.loop_at_ns;
    prev_busy_total_ = c.busy_ns;
  }
  return loop_busy_pct_;
}

TopFrame TopModel::update(const TaskGraph& g, uint64_t now_ns, const TopOptions& opts) {
  TopFrame f;
  const ProcCounters& c = g.counters;
  TopHeader& h = f.header;
  h.pid = g.pid;
  h.alive = g.tasks.size();
  h.timing = c.timing_since_ns != 0;
  h.created = c.tasks_created;
  h.completed = c.tasks_completed;
  h.steps = c.steps;
  h.drops = c.drop_tasks_full + c.drop_edges_full + c.drop_codes_full + c.drop_runtime + c.bad_records +
            c.drop_stacks_full + c.drop_events + c.drop_timing_full;
  const uint64_t dt = prev_now_ ? sub(now_ns, prev_now_) : sub(now_ns, c.timing_since_ns);
  h.interval_ns = dt;
  const double secs = dt ? dt / 1e9 : 0;
  const bool first = prev_now_ == 0;
  if (secs > 0 && h.timing) {
    h.created_per_s = sub(c.tasks_created, first ? 0 : prev_created_) / secs;
    h.completed_per_s = sub(c.tasks_completed, first ? 0 : prev_completed_) / secs;
    h.steps_per_s = sub(c.steps, first ? 0 : prev_steps_) / secs;
  }
  if (h.timing) h.loop_busy_pct = loop_busy_pct(c);
  // Longest step of the seconds this interval covered.
  const uint64_t from_sec = sub(now_ns, std::max<uint64_t>(dt, 1'000'000'000ull)) / 1'000'000'000ull;
  for (const auto& [sec, ns] : c.step_max)
    if (sec && sec >= from_sec) h.worst_step_ns = std::max(h.worst_step_ns, ns);

  std::unordered_map<uint64_t, uint64_t> busy_now;
  for (const TaskNode& t : g.tasks) {
    if (!opts.name_filter.empty() && t.name.find(opts.name_filter) == std::string::npos) continue;
    TopRow r;
    r.id = t.id;
    r.tid = t.tid;
    r.name = t.name;
    r.state = state_name(t.state);
    r.age_ns = sub(now_ns, t.create_ns);
    r.parent_id = t.parent_id;
    r.awaiting = awaiting_text(g, t);
    // Idle and "waiting for" count from when the task was both alive and timed.
    const uint64_t seen_from = std::max(t.create_ns, c.timing_since_ns);
    if (t.timing) {
      const Timing& tm = *t.timing;
      r.timed = true;
      r.steps = tm.steps;
      r.busy_ns = tm.busy_ns;
      r.sched_ns = tm.sched_ns;
      r.longest_ns = tm.max_ns;
      r.idle_ns = sub(sub(now_ns, seen_from), tm.busy_ns + tm.sched_ns);
      r.waiting_ns = t.state == TaskState::Suspended && tm.last_end_ns ? sub(now_ns, tm.last_end_ns) : 0;
      busy_now[t.id] = tm.busy_ns;
      const auto it = prev_busy_.find(t.id);
      const uint64_t before = it == prev_busy_.end() ? (first ? 0 : 0) : it->second;
      if (dt) r.busy_pct = 100.0 * sub(tm.busy_ns, before) / static_cast<double>(first ? sub(now_ns, seen_from) : dt);
    } else if (h.timing && t.state == TaskState::Suspended) {
      r.idle_ns = sub(now_ns, seen_from);
      r.waiting_ns = r.idle_ns;  // no step since timing began
    }
    if (h.timing && t.state == TaskState::Suspended && r.waiting_ns >= opts.stuck_ns)
      f.warnings.push_back("task " + t.name + " (" + hex_id(t.id) + ") has awaited " +
                           (r.awaiting.empty() ? std::string("the same thing") : r.awaiting) + " for " +
                           short_duration(r.waiting_ns) + (t.timing ? "" : " or more"));
    f.rows.push_back(std::move(r));
  }
  auto key = [&](const TopRow& r) -> double {
    const std::string& s = opts.sort;
    if (s == "busy%") return r.busy_pct;
    if (s == "steps") return static_cast<double>(r.steps);
    if (s == "longest") return static_cast<double>(r.longest_ns);
    if (s == "sched") return static_cast<double>(r.sched_ns);
    if (s == "idle") return static_cast<double>(r.idle_ns);
    if (s == "age") return static_cast<double>(r.age_ns);
    return static_cast<double>(r.busy_ns);
  };
  if (opts.sort == "name")
    std::stable_sort(f.rows.begin(), f.rows.end(), [](const TopRow& a, const TopRow& b) { return a.name < b.name; });
  else
    std::stable_sort(f.rows.begin(), f.rows.end(), [&](const TopRow& a, const TopRow& b) { return key(a) > key(b); });

  // A leak looks like a task count that grows at every look.
  alive_history_.push_back(g.tasks.size());
  if (alive_history_.size() > 6) alive_history_.pop_front();
  if (alive_history_.size() == 6) {
    bool growing = true;
    for (size_t i = 1; i < alive_history_.size(); ++i) growing &= alive_history_[i] > alive_history_[i - 1];
    const size_t from = alive_history_.front(), to = alive_history_.back();
    if (growing && to >= from + 50 && to * 10 >= from * 11)
      f.warnings.push_back("task count growing at every refresh: " + std::to_string(from) + " -> " +
                           std::to_string(to) + " in the last 5 refreshes (a task leak?)");
  }
  prev_busy_ = std::move(busy_now);
  prev_now_ = now_ns;
  prev_created_ = c.tasks_created;
  prev_completed_ = c.tasks_completed;
  prev_steps_ = c.steps;
  return f;
}

std::string render_top(const TopFrame& f, size_t max_rows, size_t width) {
  std::ostringstream out;
  const TopHeader& h = f.header;
  char line[512];
  auto emit = [&](std::string s) {
    if (width && display_width(s) > width) {
      // Cut by code points: escaped text is ASCII except valid UTF-8.
      std::string cut;
      size_t n = 0;
      for (size_t i = 0; i < s.size() && n < width; ++i) {
        cut += s[i];
        if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80 &&
            (i + 1 >= s.size() || (static_cast<unsigned char>(s[i + 1]) & 0xC0) != 0x80))
          ++n;
      }
      s = cut;
    }
    out << s << "\n";
  };
  if (!h.timing) {
    emit("asynctrace top - pid " + std::to_string(h.pid) + " - " + std::to_string(h.alive) +
         " tasks alive - waiting for the runtime's first timing report");
  } else {
    std::snprintf(line, sizeof line,
                  "asynctrace top - pid %u - tasks: %zu alive, %.1f/s created, %.1f/s completed - "
                  "loop busy %.1f%% - %.0f steps/s - worst step %s",
                  h.pid, h.alive, h.created_per_s, h.completed_per_s, h.loop_busy_pct, h.steps_per_s,
                  h.worst_step_ns ? short_duration(h.worst_step_ns).c_str() : "-");
    emit(line);
  }
  if (h.drops) emit("dropped events: " + std::to_string(h.drops) + " (see asynctrace stats)");
  std::snprintf(line, sizeof line, "%-16s %-24s %-8s %8s %8s %8s %6s %8s %8s %8s  %s", "TASK ID", "NAME", "STATE",
                "AGE", "STEPS", "BUSY", "BUSY%", "SCHED", "IDLE", "LONGEST", "AWAITING");
  emit(line);
  size_t shown = 0;
  for (const TopRow& r : f.rows) {
    if (max_rows && shown >= max_rows) break;
    ++shown;
    const std::string dash = "-";
    std::snprintf(line, sizeof line, "%-16s %s %-8s %8s %8s %8s %6s %8s %8s %8s  ", hex_id(r.id).c_str(),
                  ljust(escape_untrusted(r.name), 24).c_str(), r.state.c_str(), short_duration(r.age_ns).c_str(),
                  r.timed ? std::to_string(r.steps).c_str() : "-",
                  r.timed ? short_duration(r.busy_ns).c_str() : "-",
                  r.timed ? (std::to_string(static_cast<int>(r.busy_pct + 0.5))).c_str() : "-",
                  r.timed ? short_duration(r.sched_ns).c_str() : "-",
                  r.timed || r.idle_ns ? short_duration(r.idle_ns).c_str() : "-",
                  r.timed ? short_duration(r.longest_ns).c_str() : "-");
    emit(line + escape_untrusted(r.awaiting));
  }
  if (f.rows.size() > shown) emit("... " + std::to_string(f.rows.size() - shown) + " more");
  for (const std::string& w : f.warnings) emit("warning: " + escape_untrusted(w));
  return out.str();
}

nlohmann::json top_json(const TopFrame& f) {
  const TopHeader& h = f.header;
  nlohmann::json j;
  j["header"] = {{"pid", h.pid},
                 {"alive", h.alive},
                 {"timing", h.timing},
                 {"tasks_created", h.created},
                 {"tasks_completed", h.completed},
                 {"steps", h.steps},
                 {"created_per_s", h.created_per_s},
                 {"completed_per_s", h.completed_per_s},
                 {"steps_per_s", h.steps_per_s},
                 {"loop_busy_pct", h.loop_busy_pct},
                 {"worst_step_ns", h.worst_step_ns},
                 {"interval_ns", h.interval_ns},
                 {"dropped", h.drops}};
  nlohmann::json rows = nlohmann::json::array();
  for (const TopRow& r : f.rows) {
    nlohmann::json o = {{"id", hex_id(r.id)},
                        {"tid", r.tid},
                        {"name", sanitize_utf8(r.name)},
                        {"state", r.state},
                        {"age_ns", r.age_ns},
                        {"awaiting", sanitize_utf8(r.awaiting)},
                        {"waiting_ns", r.waiting_ns},
                        {"parent_id", r.parent_id ? hex_id(r.parent_id) : ""},
                        {"idle_ns", r.idle_ns}};
    if (r.timed) {
      o["steps"] = r.steps;
      o["busy_ns"] = r.busy_ns;
      o["busy_pct"] = r.busy_pct;
      o["sched_ns"] = r.sched_ns;
      o["longest_ns"] = r.longest_ns;
    } else {
      o["steps"] = nullptr;
    }
    rows.push_back(std::move(o));
  }
  j["tasks"] = std::move(rows);
  nlohmann::json w = nlohmann::json::array();
  for (const std::string& s : f.warnings) w.push_back(sanitize_utf8(s));
  j["warnings"] = std::move(w);
  return j;
}

}  // namespace asynctrace
