// SPDX-License-Identifier: Apache-2.0
// `top`: per-task timing from successive task graphs, as rows and a header
// of loop-wide figures. Pure (no kernel): the caller passes graphs and times.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/model.h"
#include "core/snapshot.h"

namespace asynctrace {

struct TopRow {
  uint64_t id = 0;
  uint32_t tid = 0;
  std::string name;        // raw
  std::string state;       // "running", "waiting", "created"
  uint64_t age_ns = 0;     // since the tracer first saw the task
  bool timed = false;      // timing known (it stepped since timing began)
  uint64_t steps = 0;
  uint64_t busy_ns = 0;
  double busy_pct = 0;     // of the last interval's wall time
  uint64_t sched_ns = 0;
  uint64_t idle_ns = 0;    // age under timing, minus busy and scheduled
  uint64_t longest_ns = 0;
  std::string awaiting;    // raw: what it waits for: "future", "task NAME", "gather", "yield"
  std::string where;       // raw: the frame it waits in (innermost coroutine), "" if unknown
  uint64_t waiting_ns = 0; // since its last step ended (or since timing began)
  uint64_t parent_id = 0;  // the task that created it (0: none or unknown)
};

struct TopHeader {
  uint32_t pid = 0;
  size_t alive = 0;
  uint64_t created = 0, completed = 0, steps = 0;  // totals since timing began
  double created_per_s = 0, completed_per_s = 0, steps_per_s = 0;
  double loop_busy_pct = 0;  // time in steps / wall time, last interval
  uint64_t worst_step_ns = 0;  // longest step in the last interval (per-second buckets)
  bool timing = false;         // the runtime reports timing
  uint64_t interval_ns = 0;
  uint64_t drops = 0;          // events lost anywhere (counters)
};

// One coroutine (code object): all its tasks' steps, short-lived tasks
// included (the kernel's per-code timing map).
struct TopCodeRow {
  uint64_t code = 0;
  std::string name, file;  // raw
  uint64_t steps = 0, busy_ns = 0, longest_ns = 0;
  double busy_pct = 0;     // of the last interval's wall time
};

struct TopFrame {
  TopHeader header;
  std::vector<TopRow> rows;  // filtered and sorted
  std::vector<TopCodeRow> codes;  // filtered and sorted; set by TopModel::add_codes
  std::vector<std::string> warnings;  // raw (task names inside)
};

struct TopOptions {
  std::string sort = "busy";
  std::string name_filter;
  uint64_t stuck_ns = 10'000'000'000ull;
};

class TopModel {
 public:
  // now_ns: CLOCK_MONOTONIC at the read (the kernel's clock).
  TopFrame update(const TaskGraph& g, uint64_t now_ns, const TopOptions& opts);
  // The per-coroutine rows of `f` (just updated) from the per-code timing
  // and the code names of the same read.
  void add_codes(TopFrame& f, const std::unordered_map<uint64_t, Timing>& timing,
                 const std::unordered_map<uint64_t, CodeInfo>& names, const TopOptions& opts);

 private:
  std::unordered_map<uint64_t, uint64_t> prev_code_busy_;
  // Loop busy % between the runtime's LOOP records (ProcCounters busy_ns at loop_at_ns).
  double loop_busy_pct(const ProcCounters& c);

  std::unordered_map<uint64_t, uint64_t> prev_busy_;
  uint64_t prev_now_ = 0, prev_busy_total_ = 0, prev_created_ = 0, prev_completed_ = 0, prev_steps_ = 0;
  uint64_t prev_loop_at_ = 0;
  double loop_busy_pct_ = 0;
  std::deque<size_t> alive_history_;
};

enum class TopBy { Task, Coroutine };

// Text: header lines, a column line, one line per row (at most max_rows; 0 =
// all) of tasks or of coroutines, then warnings. Names are escaped. With a
// width (0 = no limit) the layout fits it: the header wraps between fields,
// the least useful columns go first, names are elided with an ellipsis,
// numbers are never cut.
std::string render_top(const TopFrame& f, size_t max_rows = 0, size_t width = 0, TopBy by = TopBy::Task);

// Lines of the header and warnings render_top prints at `width` (to size the
// table under them).
size_t top_fixed_lines(const TopFrame& f, size_t width);
nlohmann::json top_json(const TopFrame& f);

// "1.5s", "230ms", "12us", "-" for unknown: compact durations for columns.
std::string short_duration(uint64_t ns);

}  // namespace asynctrace
