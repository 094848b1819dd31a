// SPDX-License-Identifier: Apache-2.0
// `asynctrace top`: the tasks (or coroutines) by step time, redrawn every
// interval.
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <utility>

#include "cmd/commands.h"
#include "cmd/session.h"
#include "core/model.h"
#include "render/top_view.h"

namespace asynctrace {
namespace {

volatile sig_atomic_t g_resized = 0;
void on_resize(int) { g_resized = 1; }

// Rows and columns of the terminal; {0, COLUMNS or 0} when stdout is not one.
std::pair<size_t, size_t> terminal_size(bool tty) {
  winsize ws{};
  if (tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) return {ws.ws_row, ws.ws_col};
  if (tty) return {24, 80};
  const char* env = std::getenv("COLUMNS");
  const long cols = env ? std::strtol(env, nullptr, 10) : 0;
  return {0, cols > 0 && cols < 10000 ? static_cast<size_t>(cols) : 0};
}

// Keys without Enter and without echo while top runs; the terminal as it
// was on every way out (the destructor runs on q, Ctrl-C, errors and
// exceptions alike). Ctrl-C still signals (ISIG kept).
class KeyReader {
 public:
  explicit KeyReader(bool enable) {
    // Not from the background (`top &`): changing the terminal would stop us (SIGTTOU).
    if (!enable || !isatty(STDIN_FILENO) || tcgetpgrp(STDIN_FILENO) != getpgrp() ||
        tcgetattr(STDIN_FILENO, &saved_) != 0)
      return;
    termios raw = saved_;
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    on_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~KeyReader() {
    if (on_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  KeyReader(const KeyReader&) = delete;
  KeyReader& operator=(const KeyReader&) = delete;

  // Waits up to `d` for a key; 0 if none came (or a signal or a resize
  // ended the wait).
  char wait(std::chrono::milliseconds d) {
    if (!on_) {
      nap(d);
      return 0;
    }
    const auto end = std::chrono::steady_clock::now() + d;
    while (!g_stop && !g_resized) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return 0;
      pollfd p{STDIN_FILENO, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 100))) == 1) {
        char c = 0;
        if (read(STDIN_FILENO, &c, 1) == 1) return c;
        return 0;  // end of input: no more keys
      }
    }
    return 0;
  }

 private:
  termios saved_{};
  bool on_ = false;
};

}  // namespace

int run_top(const Options& o) {
  auto src = open_session(o, TraceModes{true, false, false}, Held::Use);
  if (!src.ok()) return fail(src.error());
  install_stop_handlers();
  const bool tty = isatty(STDOUT_FILENO);
  struct sigaction sa {};
  sa.sa_handler = on_resize;
  if (tty) sigaction(SIGWINCH, &sa, nullptr);
  // In a terminal only (never steal a pager's keys): q quits, c switches tasks/coroutines.
  KeyReader keys(tty && o.format == Format::Text);
  TopBy by = o.top_by == "task" ? TopBy::Task : TopBy::Coroutine;
  TopModel model;
  TopOptions topts;
  topts.sort = o.sort;
  topts.name_filter = o.name_filter;
  topts.stuck_ns = static_cast<uint64_t>(o.stuck.count()) * 1'000'000ull;
  TopFrame f;
  auto draw = [&] {
    if (o.format == Format::Json) {
      std::cout << top_json(f).dump() << "\n";
    } else if (tty) {
      const auto [rows, cols] = terminal_size(true);
      const size_t fixed = top_fixed_lines(f, cols);
      // Home and clear, then the frame: a redraw in place. One line spare:
      // the last newline must not scroll the header off.
      std::cout << "\x1b[H\x1b[2J" << render_top(f, rows > fixed + 1 ? rows - fixed - 1 : 1, cols, by);
    } else {
      std::cout << render_top(f, 0, terminal_size(false).second, by) << "\n";
    }
    std::cout.flush();
  };
  bool drawn = false;
  int code = kExitOk;
  for (uint32_t i = 0; !g_stop && (o.iterations == 0 || i < o.iterations);) {
    const char key = keys.wait(o.interval);
    if (g_stop || key == 'q' || key == 'Q') break;
    if (key == 'c' || key == 'C' || g_resized) {
      if (key == 'c' || key == 'C') by = by == TopBy::Task ? TopBy::Coroutine : TopBy::Task;
      g_resized = 0;
      if (drawn && o.format != Format::Json) draw();
      continue;  // the interval starts again
    }
    if (!process_alive(o.pid)) {
      code = fail(exited(o.pid));
      break;
    }
    auto snap = src.value().view->snapshot();
    if (!snap.ok()) return fail(snap.error());
    const uint64_t now = monotonic_ns();
    const TaskGraph g = build_graph(snap.value());
    f = model.update(g, now, topts);
    model.add_codes(f, snap.value().code_timing, snap.value().code, topts);
    draw();
    drawn = true;
    ++i;
    if (!std::cout.good()) return fail(Error{kExitInternal, "failed to write output"});
  }
  detach_in_background(src.value().view);
  return code;
}

}  // namespace asynctrace
