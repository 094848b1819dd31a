// SPDX-License-Identifier: Apache-2.0
// `asynctrace top`: the tasks by step time, redrawn every interval.
#include <sys/ioctl.h>
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <utility>

#include "cmd/commands.h"
#include "cmd/session.h"
#include "core/model.h"
#include "render/top_view.h"

namespace asynctrace {
namespace {

std::pair<size_t, size_t> terminal_size() {
  winsize ws{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) return {ws.ws_row, ws.ws_col};
  return {24, 80};
}

}  // namespace

int run_top(const Options& o) {
  auto src = open_session(o, TraceModes{true, false, false}, Held::Use);
  if (!src.ok()) return fail(src.error());
  install_stop_handlers();
  const bool tty = isatty(STDOUT_FILENO);
  TopModel model;
  TopOptions topts;
  topts.sort = o.sort;
  topts.name_filter = o.name_filter;
  topts.stuck_ns = static_cast<uint64_t>(o.stuck.count()) * 1'000'000ull;
  int code = kExitOk;
  for (uint32_t i = 0; !g_stop && (o.iterations == 0 || i < o.iterations); ++i) {
    nap(o.interval);
    if (g_stop) break;
    if (!process_alive(o.pid)) {
      code = fail(exited(o.pid));
      break;
    }
    auto snap = src.value().view->snapshot();
    if (!snap.ok()) return fail(snap.error());
    const uint64_t now = monotonic_ns();
    const TaskGraph g = build_graph(snap.value());
    const TopFrame f = model.update(g, now, topts);
    if (o.format == Format::Json) {
      std::cout << top_json(f).dump() << "\n";
    } else if (tty) {
      const auto [rows, cols] = terminal_size();
      const size_t fixed = 3 + f.warnings.size();
      // Home and clear, then the frame: a redraw in place.
      std::cout << "\x1b[H\x1b[2J" << render_top(f, rows > fixed + 1 ? rows - fixed - 1 : 1, cols);
    } else {
      std::cout << render_top(f) << "\n";
    }
    std::cout.flush();
    if (!std::cout.good()) return fail(Error{kExitInternal, "failed to write output"});
  }
  detach_in_background(src.value().view);
  return code;
}

}  // namespace asynctrace
