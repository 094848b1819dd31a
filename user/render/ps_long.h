// SPDX-License-Identifier: Apache-2.0
// ps --long: the ps rows with each task's timing over one interval of
// tracing (plus whatever a holder with timing on counted before), the
// busiest coroutines, and the warnings top gives; as a table or JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/model.h"
#include "core/snapshot.h"
#include "render/top_view.h"

namespace asynctrace {

struct PsLongCode {
  std::string name, file;  // raw
  Timing t;
};

struct PsLong {
  TaskGraph graph;
  TopFrame frame;
  std::vector<std::string> warnings;  // raw
  std::vector<PsLongCode> codes;      // busiest first
};

// `first`: the look at the start of the interval (`model` saw it then);
// `later`: the look at its end, at `now_ns`. The rows are the tasks alive in
// `later` with their state, stack and timing then; tasks that ended during
// the interval are left out (docs/timing.md).
PsLong build_ps_long(const Snapshot& first, Snapshot later, TopModel& model, const TopOptions& opts,
                     uint64_t now_ns);

nlohmann::json ps_long_json(const PsLong& p);
std::string render_ps_long(const PsLong& p);

}  // namespace asynctrace
