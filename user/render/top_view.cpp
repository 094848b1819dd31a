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

// What the task waits for, in one or two words; where it waits is TopRow::where.
std::string awaiting_text(const TaskGraph& g, const TaskNode& t) {
  if (t.state != TaskState::Suspended) return "";
  switch (t.awaiting_kind) {
    case AwaitKind::Task: {
      const TaskNode* other = g.find(t.awaiting_id);
      return "task " + (other ? other->name : hex_id(t.awaiting_id));
    }
    case AwaitKind::Gather: return "gather";
    case AwaitKind::Future: return "future";
    case AwaitKind::None: return "yield";
    case AwaitKind::Running: return "";
  }
  return "";
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

bool asyncio_tasks_frame(const FrameInfo& f, const char* func) {
  return f.funcname == func && ends_with(f.filename, "asyncio/tasks.py");
}

// Suspended under asyncio.wait_for: its innermost frame up to 3.11 (it awaits
// a future of its own), an outer one from 3.12 on (it awaits the coroutine
// itself inside `async with timeout()`: Event.wait, wait_for, main...).
bool in_wait_for(const TaskNode* t) {
  if (!t || t->state != TaskState::Suspended) return false;
  for (const FrameInfo* f : t->stack)
    if (asyncio_tasks_frame(*f, "wait_for")) return true;
  return false;
}

// Suspended in asyncio's own timer: asyncio.sleep, or asyncio.wait_for's
// timeout.
bool in_asyncio_timer(const TaskNode* t) {
  if (!t || t->state != TaskState::Suspended || t->stack.empty()) return false;
  return asyncio_tasks_frame(*t->stack.front(), "sleep") || in_wait_for(t);
}

// Any task suspended in asyncio.wait_for.
bool any_in_wait_for(const TaskGraph& g) {
  for (const TaskNode& t : g.tasks)
    if (in_wait_for(&t)) return true;
  return false;
}

// A task made straight from one of asyncio's own coroutines (every frame
// in asyncio/), as asyncio.wait_for(event.wait(), T) makes one.
bool asyncio_only(const TaskNode& t) {
  if (t.stack.empty()) return false;
  for (const FrameInfo* f : t.stack)
    if (f->filename.find("/asyncio/") == std::string::npos) return false;
  return true;
}

// A long wait the task chose: it sleeps (aiohttp's run_app idles in
// asyncio.sleep(3600)), or it waits under a timeout: a task awaiting it is
// in asyncio.wait_for, or it is the task wait_for made of a bare asyncio
// coroutine (on Python 3.11 and before, wait_for awaits a future of its
// own, not that task: the graph has no edge, so any task of asyncio's own
// code while some task is in wait_for counts). Not worth a "stuck" warning;
// a task of the program's own coroutine awaiting a future with no timer
// still is.
bool chosen_wait(const TaskGraph& g, const TaskNode& t, bool wait_for_somewhere) {
  if (in_asyncio_timer(&t)) return true;
  for (const AwaitEdge* e : g.awaiters_of(t.id))
    if (in_asyncio_timer(g.find(e->awaiter))) return true;
  return wait_for_somewhere && asyncio_only(t);
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
  const bool wait_for_somewhere = any_in_wait_for(g);
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
    if (t.state == TaskState::Suspended && !t.stack.empty()) r.where = frame_label(*t.stack.front());
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
    if (h.timing && t.state == TaskState::Suspended && r.waiting_ns >= opts.stuck_ns && !chosen_wait(g, t, wait_for_somewhere))
      f.warnings.push_back("task " + t.name + " (" + hex_id(t.id) + ") has awaited " +
                           (r.awaiting.empty() ? std::string("the same thing") : r.awaiting) +
                           (r.where.empty() ? "" : " at " + r.where) + " for " + short_duration(r.waiting_ns) +
                           (t.timing ? "" : " or more"));
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

void TopModel::add_codes(TopFrame& f, const std::unordered_map<uint64_t, Timing>& timing,
                         const std::unordered_map<uint64_t, CodeInfo>& names, const TopOptions& opts) {
  const uint64_t dt = f.header.interval_ns;
  std::unordered_map<uint64_t, uint64_t> busy_now;
  for (const auto& [code, t] : timing) {
    const auto it = names.find(code);
    TopCodeRow r;
    r.code = code;
    r.name = it == names.end() ? "<code " + hex_id(code) + ">" : it->second.qualname;
    r.file = it == names.end() ? "" : it->second.filename;
    busy_now[code] = t.busy_ns;
    if (!opts.name_filter.empty() && r.name.find(opts.name_filter) == std::string::npos) continue;
    r.steps = t.steps;
    r.busy_ns = t.busy_ns;
    r.longest_ns = t.max_ns;
    const auto prev = prev_code_busy_.find(code);
    if (dt) r.busy_pct = 100.0 * sub(t.busy_ns, prev == prev_code_busy_.end() ? 0 : prev->second) / dt;
    f.codes.push_back(std::move(r));
  }
  prev_code_busy_ = std::move(busy_now);
  const std::string& k = opts.sort;
  auto key = [&k](const TopCodeRow& r) -> double {
    if (k == "busy%") return r.busy_pct;
    if (k == "steps") return static_cast<double>(r.steps);
    if (k == "longest") return static_cast<double>(r.longest_ns);
    return static_cast<double>(r.busy_ns);
  };
  std::stable_sort(f.codes.begin(), f.codes.end(), [&](const TopCodeRow& a, const TopCodeRow& b) {
    return k == "name" ? a.name < b.name : key(a) > key(b);
  });
}

namespace {

// `s` in at most `width` display columns: cut by code points, the last one
// an ellipsis. Escaped text is ASCII except valid UTF-8.
std::string elide(const std::string& s, size_t width) {
  if (display_width(s) <= width) return s;
  if (width == 0) return "";
  std::string cut;
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool starts = (static_cast<unsigned char>(s[i]) & 0xC0) != 0x80;
    if (starts && n++ == width - 1) break;
    cut += s[i];
  }
  return cut + "\xE2\x80\xA6";  // U+2026
}

// A table that fits a width: numeric columns as wide as their widest cell
// (never cut); the least useful columns dropped first when it does not fit;
// then the text columns shrink to their minimum, names elided.
struct Column {
  std::string title;
  bool text = false;    // left-aligned, may shrink to min_width and be elided
  size_t min_width = 0;
  size_t pref_width = 0;  // text: the widest it needs
  int drop = 0;         // 0: always kept; higher: dropped earlier
  std::vector<std::string> cells;
};

std::vector<std::string> layout(std::vector<Column> cols, size_t width) {
  for (Column& c : cols) {
    size_t w = display_width(c.title);
    for (const std::string& cell : c.cells) w = std::max(w, display_width(cell));
    // No width to fit: every text column as wide as its widest cell.
    if (c.text) c.pref_width = std::max(c.min_width, width && c.pref_width ? std::min(c.pref_width, w) : w);
    else c.min_width = c.pref_width = w;
  }
  auto total = [&cols](bool pref) {
    size_t t = 0;
    for (const Column& c : cols) t += (pref ? c.pref_width : c.min_width) + 1;
    return t ? t - 1 : 0;
  };
  while (width && total(false) > width) {
    auto victim = std::max_element(cols.begin(), cols.end(), [](const Column& a, const Column& b) { return a.drop < b.drop; });
    if (victim == cols.end() || victim->drop == 0) break;
    cols.erase(victim);
  }
  // Share what is left above the minimums among the text columns, in order.
  std::vector<size_t> w;
  size_t spare = width ? (width > total(false) ? width - total(false) : 0) : SIZE_MAX;
  for (const Column& c : cols) {
    const size_t extra = std::min(spare, c.pref_width - c.min_width);
    w.push_back(c.min_width + extra);
    spare -= extra;
  }
  std::vector<std::string> lines(cols.empty() ? 0 : cols.front().cells.size() + 1);
  for (size_t i = 0; i < cols.size(); ++i) {
    const bool last = i + 1 == cols.size();
    for (size_t row = 0; row < lines.size(); ++row) {
      const std::string& cell = row ? cols[i].cells[row - 1] : cols[i].title;
      std::string shown = elide(cell, w[i]);
      const std::string pad(w[i] - display_width(shown), ' ');
      std::string& line = lines[row];
      if (i) line += ' ';
      line += cols[i].text ? (last ? shown : shown + pad) : pad + shown;
    }
  }
  return lines;
}

// The header's fields, joined by " - " on as few lines as `width` allows
// (0: one line); a field wider than a line is elided.
std::vector<std::string> header_lines(const TopHeader& h, size_t width) {
  std::vector<std::string> fields;
  char buf[160];
  fields.push_back("asynctrace top - pid " + std::to_string(h.pid));
  if (!h.timing) {
    fields.push_back(std::to_string(h.alive) + " tasks alive");
    fields.push_back("waiting for the runtime's first timing report");
  } else {
    std::snprintf(buf, sizeof buf, "tasks: %zu alive, %.1f/s created, %.1f/s completed", h.alive, h.created_per_s,
                  h.completed_per_s);
    fields.push_back(buf);
    std::snprintf(buf, sizeof buf, "loop busy %.1f%%", h.loop_busy_pct);
    fields.push_back(buf);
    std::snprintf(buf, sizeof buf, "%.0f steps/s", h.steps_per_s);
    fields.push_back(buf);
    fields.push_back("worst step " + (h.worst_step_ns ? short_duration(h.worst_step_ns) : std::string("-")));
  }
  if (h.drops) fields.push_back("dropped events: " + std::to_string(h.drops) + " (see asynctrace stats)");
  std::vector<std::string> lines{fields.front()};
  for (size_t i = 1; i < fields.size(); ++i) {
    if (!width || display_width(lines.back()) + 3 + display_width(fields[i]) <= width) lines.back() += " - " + fields[i];
    else lines.push_back("  " + fields[i]);
  }
  if (width)
    for (std::string& l : lines) l = elide(l, width);
  return lines;
}

std::string pct(double p) { return std::to_string(static_cast<int>(p + 0.5)); }

std::vector<Column> task_columns(const TopFrame& f, size_t max_rows) {
  std::vector<Column> c = {{"TASK ID", false, 0, 0, 3, {}},  {"NAME", true, 8, 24, 0, {}},
                           {"STATE", true, 7, 0, 5, {}},     {"AGE", false, 0, 0, 4, {}},
                           {"STEPS", false, 0, 0, 0, {}},    {"BUSY", false, 0, 0, 0, {}},
                           {"BUSY%", false, 0, 0, 0, {}},    {"SCHED", false, 0, 0, 1, {}},
                           {"IDLE", false, 0, 0, 2, {}},     {"LONGEST", false, 0, 0, 0, {}},
                           {"AWAITING", true, 8, 24, 0, {}}, {"AT", true, 6, 0, 6, {}}};
  c[0].text = true;  // ids are fixed-width hex: left-aligned, never cut
  size_t shown = 0;
  for (const TopRow& r : f.rows) {
    if (max_rows && shown++ >= max_rows) break;
    const std::vector<std::string> cells = {
        hex_id(r.id), escape_untrusted(r.name), r.state, short_duration(r.age_ns),
        r.timed ? std::to_string(r.steps) : "-", r.timed ? short_duration(r.busy_ns) : "-",
        r.timed ? pct(r.busy_pct) : "-", r.timed ? short_duration(r.sched_ns) : "-",
        r.timed || r.idle_ns ? short_duration(r.idle_ns) : "-", r.timed ? short_duration(r.longest_ns) : "-",
        r.awaiting.empty() ? "-" : escape_untrusted(r.awaiting), r.where.empty() ? "-" : escape_untrusted(r.where)};
    for (size_t i = 0; i < c.size(); ++i) c[i].cells.push_back(cells[i]);
  }
  c[0].min_width = c[0].pref_width = 16;
  return c;
}

std::vector<Column> code_columns(const TopFrame& f, size_t max_rows) {
  std::vector<Column> c = {{"COROUTINE", true, 12, 40, 0, {}}, {"STEPS", false, 0, 0, 0, {}},
                           {"BUSY", false, 0, 0, 0, {}},       {"BUSY%", false, 0, 0, 0, {}},
                           {"LONGEST", false, 0, 0, 0, {}},    {"FILE", true, 8, 0, 1, {}}};
  size_t shown = 0;
  for (const TopCodeRow& r : f.codes) {
    if (max_rows && shown++ >= max_rows) break;
    const std::vector<std::string> cells = {escape_untrusted(r.name), std::to_string(r.steps),
                                            short_duration(r.busy_ns), pct(r.busy_pct),
                                            short_duration(r.longest_ns), escape_untrusted(r.file)};
    for (size_t i = 0; i < c.size(); ++i) c[i].cells.push_back(cells[i]);
  }
  return c;
}

}  // namespace

size_t top_fixed_lines(const TopFrame& f, size_t width) {
  return header_lines(f.header, width).size() + 2 + f.warnings.size();  // + column titles, "... more"
}

std::string render_top(const TopFrame& f, size_t max_rows, size_t width, TopBy by) {
  std::ostringstream out;
  auto emit = [&](const std::string& s) { out << (width ? elide(s, width) : s) << "\n"; };
  for (const std::string& l : header_lines(f.header, width)) emit(l);
  const bool codes = by == TopBy::Coroutine;
  for (const std::string& l : layout(codes ? code_columns(f, max_rows) : task_columns(f, max_rows), width)) emit(l);
  const size_t total = codes ? f.codes.size() : f.rows.size();
  if (max_rows && total > max_rows) emit("... " + std::to_string(total - max_rows) + " more");
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
                        {"where", sanitize_utf8(r.where)},
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
  nlohmann::json codes = nlohmann::json::array();
  for (const TopCodeRow& r : f.codes)
    codes.push_back({{"coroutine", sanitize_utf8(r.name)}, {"file", sanitize_utf8(r.file)}, {"steps", r.steps},
                     {"busy_ns", r.busy_ns}, {"busy_pct", r.busy_pct}, {"longest_ns", r.longest_ns}});
  j["coroutines"] = std::move(codes);
  nlohmann::json w = nlohmann::json::array();
  for (const std::string& s : f.warnings) w.push_back(sanitize_utf8(s));
  j["warnings"] = std::move(w);
  return j;
}

}  // namespace asynctrace
