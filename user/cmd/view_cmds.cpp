// SPDX-License-Identifier: Apache-2.0
// pstree, ps, stats: one look at the maps; ps --long: two looks one
// interval apart, with timing.
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "cmd/commands.h"
#include "cmd/session.h"
#include "core/model.h"
#include "render/ps_long.h"
#include "render/top_view.h"
#include "render/views.h"

namespace asynctrace {
namespace {

// Takes the snapshot by value and drops it once the graph is built: at
// 100,000 tasks the two together are most of the tool's memory.
void print_view(const Options& o, Snapshot snap) {
  const TaskGraph g = build_graph(snap);
  snap = Snapshot{};
  warn_partial(g.counters);
  if (o.command == Command::Stats) {
    std::cout << (o.format == Format::Json ? stats_json(g).dump(2) + "\n" : render_stats(g));
  } else if (o.format == Format::Json) {
    std::cout << graph_json(g, o.command == Command::Pstree).dump(2) << "\n";
  } else if (o.command == Command::Pstree) {
    render_pstree(g, std::cout);
  } else {
    render_ps(g, std::cout);
  }
  std::cout.flush();
}

}  // namespace

int run_view(const Options& o) {
  PhaseClock clock(o.verbose);
  auto opened = open_session(o, TraceModes{}, Held::Use, &clock);
  if (!opened.ok()) return fail(opened.error());
  Session& s = opened.value();
  // Held maps whose replay did not come are still a valid, if stackless, view.
  if (s.stale) std::cerr << "asynctrace: warning: " << s.stale->message << "\n";
  auto snap = s.view->snapshot();
  if (!snap.ok()) return fail(snap.error());
  clock.mark(s.held ? "read pinned maps" : "read maps");
  // Print first, detach after: closing the uprobe links waits for a kernel
  // grace period (tens of ms), which the user need not wait for.
  print_view(o, std::move(snap.value()));
  clock.mark("render");
  const int status = output_status();
  detach_in_background(s.view);
  if (!s.held) clock.mark("detach");
  return status;
}

// ps --long: the ps rows of the tasks alive at the end of one interval of
// tracing, with their timing (plus whatever a holder with timing on counted
// before), and the warnings top gives.
int run_ps_long(const Options& o) {
  auto opened = open_session(o, TraceModes{true, false, false}, Held::Use);
  if (!opened.ok()) return fail(opened.error());
  Session& s = opened.value();
  install_stop_handlers();
  TopModel model;
  TopOptions topts;
  topts.stuck_ns = static_cast<uint64_t>(o.stuck.count()) * 1'000'000ull;
  auto first = s.view->snapshot();
  if (!first.ok()) return fail(first.error());
  (void)model.update(build_graph(first.value()), monotonic_ns(), topts);
  nap(o.interval);
  if (!process_alive(o.pid)) return fail(exited(o.pid));
  auto later = s.view->snapshot();
  if (!later.ok()) return fail(later.error());
  // Ages and waits end when the second look was taken, not at printing.
  const uint64_t now = monotonic_ns();
  const PsLong p = build_ps_long(first.value(), std::move(later.value()), model, topts, now);
  warn_partial(p.graph.counters);
  if (o.format == Format::Json) std::cout << ps_long_json(p).dump(2) << "\n";
  else std::cout << render_ps_long(p);
  std::cout.flush();
  detach_in_background(s.view);
  return std::cout.good() ? kExitOk : fail(Error{kExitInternal, "failed to write output"});
}

}  // namespace asynctrace
