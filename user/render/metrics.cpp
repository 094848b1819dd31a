// SPDX-License-Identifier: Apache-2.0
// OpenMetrics exposition of the agent (docs/agent.md lists every family).
// Both formats share samples; they differ in counter family names (OpenMetrics
// names the family without "_total"), UNIT lines and the "# EOF" terminator.
#include "render/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string_view>

namespace asynctrace {
namespace {

constexpr size_t kMaxLabelBytes = 128;
// Histogram boundaries: every other power of two of the runtime's log2
// buckets (bucket i = [2^i, 2^(i+1)) us), 2 us .. 8.4 s: 12 buckets + Inf.
constexpr int kFirstBucket = 0, kLastBucket = 22, kBucketStride = 2;

// Length of the valid UTF-8 sequence at s[i], 0 if invalid.
size_t utf8_len(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) n = 2, cp = c & 0x1f;
  else if ((c & 0xf0) == 0xe0) n = 3, cp = c & 0x0f;
  else if ((c & 0xf8) == 0xf0) n = 4, cp = c & 0x07;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3f);
  }
  // Overlong forms, surrogates and beyond U+10FFFF are invalid too.
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

std::string fmt_double(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

class Writer {
 public:
  explicit Writer(ExpositionFormat f) : om_(f == ExpositionFormat::OpenMetrics) {}

  // `name` without "_total" for counters; `unit` "" or the name's unit suffix.
  void family(const std::string& name, const char* type, const char* help, const char* unit = "") {
    const bool counter = std::string_view(type) == "counter";
    const std::string fam = counter && !om_ ? name + "_total" : name;
    out_ += "# HELP " + fam + " " + help + "\n";
    out_ += "# TYPE " + fam + " " + type + "\n";
    if (om_ && *unit) out_ += "# UNIT " + fam + " " + unit + "\n";
  }
  void sample(const std::string& name, const std::string& labels, const std::string& value) {
    out_ += name;
    if (!labels.empty()) out_ += "{" + labels + "}";
    out_ += " " + value + "\n";
  }
  std::string finish() {
    if (om_) out_ += "# EOF\n";
    return std::move(out_);
  }

 private:
  bool om_;
  std::string out_;
};

std::string proc_labels(const ProcessSample& p) {
  return "pid=\"" + std::to_string(p.pid) + "\",comm=\"" + escape_label_value(p.comm) + "\"";
}

// Per process: the `max` coroutines with most steps by their escaped name
// (two codes of one qualname share a series), the rest as "other".
std::vector<CoroutineSample> bounded_coroutines(const ProcessSample& p, size_t max) {
  std::map<std::string, CoroutineSample> by_name;
  for (const CoroutineSample& c : p.coroutines) {
    CoroutineSample& s = by_name[escape_label_value(c.name)];
    s.steps += c.steps;
    s.busy_ns += c.busy_ns;
    for (size_t i = 0; i < s.hist.size(); ++i) s.hist[i] += c.hist[i];
  }
  std::vector<CoroutineSample> all;
  for (auto& [name, s] : by_name) {
    s.name = name;
    all.push_back(std::move(s));
  }
  std::sort(all.begin(), all.end(), [](const CoroutineSample& a, const CoroutineSample& b) {
    return a.steps != b.steps ? a.steps > b.steps : a.name < b.name;
  });
  if (all.size() <= max) return all;
  CoroutineSample other;
  other.name = "other";
  for (size_t k = max; k < all.size(); ++k) {
    other.steps += all[k].steps;
    other.busy_ns += all[k].busy_ns;
    for (size_t i = 0; i < other.hist.size(); ++i) other.hist[i] += all[k].hist[i];
  }
  all.resize(max);
  // A coroutine really named "other" joins the rest.
  auto same = std::find_if(all.begin(), all.end(), [](const CoroutineSample& c) { return c.name == "other"; });
  if (same != all.end()) {
    other.steps += same->steps;
    other.busy_ns += same->busy_ns;
    for (size_t i = 0; i < other.hist.size(); ++i) other.hist[i] += same->hist[i];
    all.erase(same);
  }
  all.push_back(std::move(other));
  return all;
}

}  // namespace

const char* content_type(ExpositionFormat f) {
  return f == ExpositionFormat::OpenMetrics ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                                            : "text/plain; version=0.0.4; charset=utf-8";
}

std::string escape_label_value(const std::string& raw) {
  const std::string_view s(raw.data(), std::min(raw.size(), kMaxLabelBytes));
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_len(s, i);
    if (n == 0) {
      out += "\xef\xbf\xbd";  // U+FFFD
      ++i;
      continue;
    }
    const char c = s[i];
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else if (n == 1 && (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)) out += "\xef\xbf\xbd";
    else out.append(s.substr(i, n));
    i += n;
  }
  return out;
}

std::string render_metrics(const std::vector<ProcessSample>& procs, const AgentSample& self,
                           ExpositionFormat format, size_t max_coroutines) {
  Writer w(format);
  static constexpr const char* kStates[] = {"created", "running", "suspended"};
  w.family("asynctrace_tasks", "gauge", "Tasks alive, by state (created: no step yet; running: in a step).");
  for (const ProcessSample& p : procs)
    for (size_t s = 0; s < 3; ++s)
      w.sample("asynctrace_tasks", proc_labels(p) + ",state=\"" + kStates[s] + "\"",
               std::to_string(p.tasks_by_state[s]));

  w.family("asynctrace_tasks_created", "counter", "Tasks created since the agent turned timing on.");
  for (const ProcessSample& p : procs)
    if (p.timing) w.sample("asynctrace_tasks_created_total", proc_labels(p), std::to_string(p.tasks_created));
  w.family("asynctrace_tasks_completed", "counter", "Tasks completed since the agent turned timing on.");
  for (const ProcessSample& p : procs)
    if (p.timing) w.sample("asynctrace_tasks_completed_total", proc_labels(p), std::to_string(p.tasks_completed));
  w.family("asynctrace_steps", "counter", "Task steps run by the event loops.");
  for (const ProcessSample& p : procs)
    if (p.timing) w.sample("asynctrace_steps_total", proc_labels(p), std::to_string(p.steps));
  w.family("asynctrace_loop_busy_ratio", "gauge",
           "Share of wall time spent in task steps, steps in progress included, over the runtime's "
           "last interval, summed over the process's loop threads (at most 1 per loop thread).");
  for (const ProcessSample& p : procs)
    if (p.timing) w.sample("asynctrace_loop_busy_ratio", proc_labels(p), fmt_double(p.busy_ratio));
  w.family("asynctrace_step_longest_seconds", "gauge", "Longest task step in the agent's last interval.",
           "seconds");
  for (const ProcessSample& p : procs)
    if (p.timing)
      w.sample("asynctrace_step_longest_seconds", proc_labels(p), fmt_double(p.longest_step_ns / 1e9));

  w.family("asynctrace_step_duration_seconds", "histogram",
           "Task step durations by coroutine (the top coroutines by steps; the rest as \"other\").", "seconds");
  for (const ProcessSample& p : procs) {
    for (const CoroutineSample& c : bounded_coroutines(p, max_coroutines)) {
      const std::string labels = proc_labels(p) + ",coroutine=\"" + c.name + "\"";
      uint64_t cum = 0;
      size_t next = 0;
      for (int b = kFirstBucket; b <= kLastBucket; b += kBucketStride) {
        for (; next <= static_cast<size_t>(b); ++next) cum += c.hist[next];
        w.sample("asynctrace_step_duration_seconds_bucket", labels + ",le=\"" + fmt_double(std::ldexp(1e-6, b + 1)) + "\"",
                 std::to_string(cum));
      }
      // Steps counted in the histogram; hist counters may lag `steps` by a
      // drain: +Inf and _count use the histogram's own total.
      for (; next < c.hist.size(); ++next) cum += c.hist[next];
      w.sample("asynctrace_step_duration_seconds_bucket", labels + ",le=\"+Inf\"", std::to_string(cum));
      w.sample("asynctrace_step_duration_seconds_count", labels, std::to_string(cum));
      w.sample("asynctrace_step_duration_seconds_sum", labels, fmt_double(c.busy_ns / 1e9));
    }
  }

  w.family("asynctrace_dropped_events", "counter",
           "Events or entries lost, by reason (full kernel maps, the runtime's full buffer, malformed records).");
  for (const ProcessSample& p : procs)
    for (const auto& [reason, n] : p.dropped)
      w.sample("asynctrace_dropped_events_total", proc_labels(p) + ",reason=\"" + escape_label_value(reason) + "\"",
               std::to_string(n));

  w.family("asynctrace_agent_processes", "gauge", "Processes the agent holds state of.");
  w.sample("asynctrace_agent_processes", "", std::to_string(procs.size()));
  w.family("asynctrace_agent_libraries", "gauge", "Probe libraries the agent is attached to.");
  w.sample("asynctrace_agent_libraries", "", std::to_string(self.libraries));
  w.family("asynctrace_agent_scrapes", "counter", "Scrapes of /metrics answered, by exposition format.");
  w.sample("asynctrace_agent_scrapes_total", "format=\"openmetrics\"", std::to_string(self.scrapes_openmetrics));
  w.sample("asynctrace_agent_scrapes_total", "format=\"text\"", std::to_string(self.scrapes_text));
  if (self.profiling) {
    w.family("asynctrace_agent_profiles_written", "counter", "Periodic profiles written to the profile directory.");
    w.sample("asynctrace_agent_profiles_written_total", "", std::to_string(self.profiles_written));
    w.family("asynctrace_agent_profiles_pushed", "counter", "Periodic profiles the ingest URL accepted.");
    w.sample("asynctrace_agent_profiles_pushed_total", "", std::to_string(self.profiles_pushed));
    w.family("asynctrace_agent_profile_errors", "counter", "Periodic profiles lost, by reason.");
    for (const auto& [reason, n] : self.profile_errors)
      w.sample("asynctrace_agent_profile_errors_total", "reason=\"" + escape_label_value(reason) + "\"",
               std::to_string(n));
  }
  w.family("process_cpu_seconds", "counter", "CPU time of the agent (user and system).", "seconds");
  w.sample("process_cpu_seconds_total", "", fmt_double(self.cpu_seconds));
  w.family("process_resident_memory_bytes", "gauge", "Resident memory of the agent.", "bytes");
  w.sample("process_resident_memory_bytes", "", std::to_string(self.rss_bytes));
  w.family("process_start_time_seconds", "gauge", "Start time of the agent since the Unix epoch.", "seconds");
  w.sample("process_start_time_seconds", "", fmt_double(self.start_time_seconds));
  return w.finish();
}

ProcessSample sample_process(const Snapshot& snap, const std::string& comm, const LoopMark* prev,
                             uint64_t now_ns, uint64_t since_ns) {
  ProcessSample p;
  p.pid = snap.pid;
  p.comm = comm;
  for (const TaskRecord& t : snap.tasks) {
    const auto s = static_cast<size_t>(t.state);
    if (s < p.tasks_by_state.size()) ++p.tasks_by_state[s];
  }
  const ProcCounters& c = snap.counters;
  p.timing = c.timing_since_ns != 0;
  p.tasks_created = c.tasks_created;
  p.tasks_completed = c.tasks_completed;
  p.steps = c.steps;
  p.busy_ns = c.busy_ns;
  if (prev && c.loop_at_ns > prev->loop_at_ns && c.busy_ns >= prev->busy_ns)
    // No clamp: busy_ns counts steps in progress up to loop_at_ns (records.h
    // LOOP), so this is at most 1 a loop thread by construction.
    p.busy_ratio = static_cast<double>(c.busy_ns - prev->busy_ns) /
                   static_cast<double>(c.loop_at_ns - prev->loop_at_ns);
  const uint64_t first_sec = since_ns / 1'000'000'000ull, last_sec = now_ns / 1'000'000'000ull;
  for (const auto& [sec, ns] : c.step_max)
    if (ns && sec >= first_sec && sec <= last_sec) p.longest_step_ns = std::max(p.longest_step_ns, ns);
  for (const auto& [code_id, t] : snap.code_timing) {
    CoroutineSample cs;
    auto it = snap.code.find(code_id);
    cs.name = it == snap.code.end() ? "?" : it->second.qualname;
    cs.steps = t.steps;
    cs.busy_ns = t.busy_ns;
    for (size_t i = 0; i < cs.hist.size() && i < t.hist.size(); ++i) cs.hist[i] = t.hist[i];
    p.coroutines.push_back(std::move(cs));
  }
  p.dropped = {{"tasks_map_full", c.drop_tasks_full},   {"codes_map_full", c.drop_codes_full},
               {"edges_full", c.drop_edges_full},       {"stacks_map_full", c.drop_stacks_full},
               {"timing_map_full", c.drop_timing_full}, {"runtime_buffer_full", c.drop_runtime},
               {"malformed_records", c.bad_records},    {"events_ring_full", c.drop_events}};
  return p;
}

}  // namespace asynctrace
