// SPDX-License-Identifier: Apache-2.0
// `asynctrace record`: a profile of the steps and samples of one process
// (profile/recorder.h builds it) written in one of the export formats.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <utility>

#include "cmd/commands.h"
#include "cmd/session.h"
#include "cmd/stack_book.h"
#include "core/escape.h"
#include "core/model.h"
#include "profile/export.h"
#include "profile/recorder.h"
#include "render/top_view.h"

namespace asynctrace {

int run_record(const Options& o) {
  ProfFormat pf = ProfFormat::Folded;
  if (o.prof_format == "speedscope") pf = ProfFormat::Speedscope;
  else if (o.prof_format == "svg") pf = ProfFormat::Svg;
  else if (o.prof_format == "html") pf = ProfFormat::Html;
  else if (o.prof_format == "pprof") pf = ProfFormat::Pprof;
  // The output must be writable before anything is attached.
  std::ofstream file;
  if (o.output != "-") {
    file.open(o.output, std::ios::binary | std::ios::trunc);
    if (!file)
      return fail(Error{kExitUsage, "failed to open output '" + escape_untrusted(o.output) +
                                        "': " + std::strerror(errno)});
  }
  std::ofstream also;
  if (!o.also_pprof.empty()) {
    also.open(o.also_pprof, std::ios::binary | std::ios::trunc);
    if (!also)
      return fail(Error{kExitUsage, "failed to open output '" + escape_untrusted(o.also_pprof) +
                                        "': " + std::strerror(errno)});
  }
  auto src = open_session(o, TraceModes{true, true, true}, Held::Ignore);
  if (!src.ok()) {
    if (o.output != "-") {
      file.close();
      unlink(o.output.c_str());
    }
    if (also.is_open()) {
      also.close();
      unlink(o.also_pprof.c_str());
    }
    return fail(src.error());
  }
  Tracer* tracer = src.value().tracer;  // ours: Held::Ignore
  install_stop_handlers();
  const bool progress = isatty(STDERR_FILENO);
  StackBook book(tracer);
  // Nothing loaded, no replay asked: only read when a code is missing.
  if (auto held = open_pinned(o.pid, nullptr, o.verbose); held.ok() && held.value())
    book.set_holder(std::move(held.value()));
  Profile p;
  p.mode = o.mode == "wall" ? ProfMode::Wall : ProfMode::Cpu;
  p.grouping = o.group_tasks == "task"        ? TaskGrouping::Task
               : o.group_tasks == "coroutine" ? TaskGrouping::Coroutine
                                              : TaskGrouping::Name;
  p.lines = o.lines;
  p.pid = static_cast<uint32_t>(o.pid);
  p.comm = inspect_process(o.pid).comm;
  const uint64_t start_ns = monotonic_ns();
  p.start_ns = start_ns;
  Recorder rec(p, book, start_ns);
  const auto t0 = std::chrono::steady_clock::now();
  const auto end = t0 + o.duration;
  auto next_look = t0;
  int code = kExitOk;
  // The task graph, every second: await chains and names for the stacks.
  auto look = [&] {
    auto snap = tracer->snapshot();
    if (!snap.ok()) return;
    const TaskGraph g = build_graph(snap.value());
    rec.set_graph(graph_tasks(g));
    book.take(std::move(snap.value()));
  };
  while (!g_stop) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_look) {
      look();
      next_look = now + std::chrono::seconds(1);
    }
    auto st = tracer->poll_events(
        [&](const StepEvent& ev) {
          if (ev.type == StepEvent::Type::Sample) rec.sample(ev);
          else rec.step(ev);
        },
        100);
    if (!st.ok()) return fail(st.error());
    if (progress) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "\rrecording pid %d: %.1f / %.1f s, %zu steps, %zu samples  ", o.pid, el,
                   o.duration.count() / 1e3, rec.steps(), rec.samples());
    }
    if (std::chrono::steady_clock::now() >= end) break;
    if (!process_alive(o.pid)) {
      std::cerr << (progress ? "\n" : "") << "asynctrace: process " << o.pid
                << " exited during the recording; writing what was recorded\n";
      code = kExitProcessExited;
      break;
    }
  }
  if (progress) std::fprintf(stderr, "\n");
  const uint64_t end_ns = monotonic_ns();
  p.duration_ns = end_ns - start_ns;
  rec.finish(end_ns);
  std::ostream& out = o.output == "-" ? std::cout : static_cast<std::ostream&>(file);
  write_profile(p, pf, out);
  out.flush();
  if (!out.good()) return fail(Error{kExitInternal, "failed to write output '" + escape_untrusted(o.output) + "'"});
  if (also.is_open()) {
    write_profile(p, ProfFormat::Pprof, also);
    also.flush();
    if (!also.good())
      return fail(Error{kExitInternal, "failed to write output '" + escape_untrusted(o.also_pprof) + "'"});
  }
  if (code == kExitOk) book.refresh(true);
  warn_partial(book.last_snapshot().counters);
  if (rec.timelines_cut())
    std::cerr << "asynctrace: warning: timelines cut at " << Recorder::kMaxEvents
              << " events (speedscope's evented profiles); the sampled profile has every step\n";
  std::cerr << "asynctrace: recorded " << rec.steps() << " step(s), " << rec.samples() << " sample(s) of process "
            << o.pid << " in " << short_duration(p.duration_ns) << " to " << escape_untrusted(o.output) << "\n";
  detach_in_background(src.value().view);
  return code;
}

}  // namespace asynctrace
