// SPDX-License-Identifier: Apache-2.0
// The agent's metrics as text: OpenMetrics 1.0 (what Prometheus asks for) or
// the Prometheus text format 0.0.4 (what `promtool check metrics` lints).
// Pure: a list of per-process samples in, one exposition out. No libbpf here.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/snapshot.h"

namespace asynctrace {

// One coroutine's step timing, summed over its tasks, since timing__on.
struct CoroutineSample {
  std::string name;  // qualname as the traced process sent it (untrusted)
  uint64_t steps = 0;
  uint64_t busy_ns = 0;
  std::array<uint64_t, 32> hist{};  // steps of [2^i, 2^(i+1)) us
};

struct ProcessSample {
  uint32_t pid = 0;
  std::string comm;  // /proc/PID/comm (untrusted)
  std::array<uint64_t, 3> tasks_by_state{};  // created, running, suspended (TaskState order)
  bool timing = false;  // the runtime sent its totals (LOOP records)
  uint64_t tasks_created = 0, tasks_completed = 0, steps = 0, busy_ns = 0;
  double busy_ratio = 0;      // of the loop, over the agent's last interval
  uint64_t longest_step_ns = 0;  // in the agent's last interval
  std::vector<CoroutineSample> coroutines;
  std::vector<std::pair<std::string, uint64_t>> dropped;  // reason -> count
};

struct AgentSample {
  double cpu_seconds = 0;  // user + system, since start
  uint64_t rss_bytes = 0;
  double start_time_seconds = 0;  // since the Unix epoch
  uint64_t libraries = 0;         // probe libraries attached
  uint64_t scrapes_openmetrics = 0, scrapes_text = 0;  // answered so far, this one included
  // Periodic profiles (--profile-dir/--profile-push): families shown only when on.
  bool profiling = false;
  uint64_t profiles_written = 0, profiles_pushed = 0;
  std::vector<std::pair<std::string, uint64_t>> profile_errors;  // reason -> count
};

enum class ExpositionFormat { OpenMetrics, Text };

// Content-Type header of each format.
const char* content_type(ExpositionFormat f);

// Coroutines beyond the `max_coroutines` with most steps of a process are
// summed into one series labelled coroutine="other": label cardinality is
// bounded whatever the traced program does.
std::string render_metrics(const std::vector<ProcessSample>& procs, const AgentSample& self,
                           ExpositionFormat format, size_t max_coroutines = 20);

// A label value as both formats need it: valid UTF-8 (bad bytes become
// U+FFFD), control characters replaced, backslash, quote and newline
// escaped, at most 128 bytes of the original.
std::string escape_label_value(const std::string& raw);

// Where the previous interval left a process: for busy ratio and longest step.
struct LoopMark {
  uint64_t busy_ns = 0;
  uint64_t loop_at_ns = 0;  // CLOCK_MONOTONIC of the runtime's last LOOP record
};

// Builds the sample of one process from its snapshot. `prev` is the mark of
// the previous interval (nullptr: none yet, ratio 0); `now_ns` is
// CLOCK_MONOTONIC; the longest step is over the seconds since `since_ns`.
ProcessSample sample_process(const Snapshot& snap, const std::string& comm, const LoopMark* prev,
                             uint64_t now_ns, uint64_t since_ns);

}  // namespace asynctrace
