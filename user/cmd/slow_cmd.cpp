// SPDX-License-Identifier: Apache-2.0
// `asynctrace slow`: every step longer than a threshold, with the stacks it
// resumed and suspended at and the loop thread's samples during it.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cmd/commands.h"
#include "cmd/session.h"
#include "cmd/stack_book.h"
#include "core/escape.h"
#include "profile/recorder.h"
#include "render/top_view.h"

namespace asynctrace {
namespace {

std::string frame_text(const NamedFrame& f) {
  std::string s = escape_untrusted(f.func);
  if (!f.file.empty()) s += " " + escape_untrusted(f.file) + ":" + std::to_string(f.line);
  return s;
}

nlohmann::json frames_json(const std::vector<NamedFrame>& fs) {
  nlohmann::json a = nlohmann::json::array();
  for (const NamedFrame& f : fs)
    a.push_back({{"function", sanitize_utf8(f.func)}, {"file", sanitize_utf8(f.file)}, {"line", f.line}});
  return a;
}

std::string wall_time() {
  timespec t{};
  clock_gettime(CLOCK_REALTIME, &t);
  tm parts{};
  localtime_r(&t.tv_sec, &parts);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03ld", parts.tm_hour, parts.tm_min, parts.tm_sec,
                t.tv_nsec / 1'000'000);
  return buf;
}

}  // namespace

int run_slow(const Options& o) {
  // The runtime reports steps past its slow floor (10 ms) by itself; a lower
  // threshold needs every step's record (steps__on), which costs more.
  const bool all_steps = o.threshold < std::chrono::milliseconds(10);
  auto src = open_session(o, TraceModes{true, all_steps, true}, Held::Ignore);
  if (!src.ok()) return fail(src.error());
  Tracer* tracer = src.value().tracer;  // ours: Held::Ignore
  install_stop_handlers();
  if (o.format != Format::Json)
    std::cerr << "asynctrace: reporting steps of process " << o.pid << " longer than "
              << short_duration(static_cast<uint64_t>(o.threshold.count()) * 1'000'000ull)
              << " (Ctrl-C to stop)\n";
  StackBook book(tracer);
  SampleBook samples;
  const uint64_t threshold_ns = static_cast<uint64_t>(o.threshold.count()) * 1'000'000ull;
  const auto end = std::chrono::steady_clock::now() + o.duration;
  size_t reported = 0;
  int code = kExitOk;

  auto report = [&](const StepEvent& ev) {
    const std::vector<StepEvent> during = samples.take(ev);
    if (ev.dur_ns < threshold_ns) return;
    ++reported;
    const auto resumed = name_frames(book, book.stack(ev.start_stack));
    const auto suspended = name_frames(book, book.stack(ev.end_stack));
    // Distinct sampled stacks, most frequent first.
    std::map<uint64_t, size_t> counts;
    for (const StepEvent& s : during) counts[s.stack_id]++;
    std::vector<std::pair<size_t, uint64_t>> order;
    for (auto [id, n] : counts) order.push_back({n, id});
    std::sort(order.rbegin(), order.rend());
    const std::string name = ev.task_known ? ev.task_name : "";
    if (o.format == Format::Json) {
      nlohmann::json j = {{"task_id", hex_id(ev.task_id)},
                          {"task_name", sanitize_utf8(name)},
                          {"duration_ns", ev.dur_ns},
                          {"start_ns", ev.start_ns},
                          {"tid", ev.tid},
                          {"completed", ev.completed},
                          {"resumed_stack_id", hex_id(ev.start_stack)},
                          {"suspended_stack_id", hex_id(ev.end_stack)},
                          {"resumed_at", frames_json(resumed)},
                          {"suspended_at", frames_json(suspended)}};
      nlohmann::json smp = nlohmann::json::array();
      for (auto [n, id] : order) smp.push_back({{"count", n}, {"stack", frames_json(name_frames(book, book.stack(id)))}});
      j["samples"] = std::move(smp);
      std::cout << j.dump() << "\n";
    } else {
      std::cout << wall_time() << " slow step: " << short_duration(ev.dur_ns) << " in task "
                << (ev.task_known ? "'" + escape_untrusted(name) + "'" : std::string("<unknown>")) << " ("
                << hex_id(ev.task_id) << ") on thread " << ev.tid << "\n";
      std::cout << "  resumed at:\n";
      if (resumed.empty()) std::cout << "    (its first step, or not known)\n";
      for (const NamedFrame& f : resumed) std::cout << "    " << frame_text(f) << "\n";
      std::cout << "  " << (ev.completed ? "then completed" : "suspended at:") << "\n";
      for (const NamedFrame& f : suspended) std::cout << "    " << frame_text(f) << "\n";
      if (order.empty()) {
        std::cout << "  no sample of the loop thread during the step\n";
      } else {
        std::cout << "  the loop thread while the step ran (" << during.size()
                  << " sample(s), innermost first):\n";
        size_t shown = 0;
        for (auto [n, id] : order) {
          if (++shown > 3) break;
          const auto fs = name_frames(book, book.stack(id));
          for (size_t i = 0; i < fs.size(); ++i)
            std::cout << (i == 0 ? "    " + std::to_string(n) + "x " : std::string(5 + std::to_string(n).size(), ' '))
                      << frame_text(fs[i]) << "\n";
        }
      }
      std::cout << "\n";
    }
    std::cout.flush();
  };

  while (!g_stop) {
    auto st = tracer->poll_events(
        [&](const StepEvent& ev) {
          if (ev.type == StepEvent::Type::Sample) samples.add(ev);
          else report(ev);
        },
        100);
    if (!st.ok()) return fail(st.error());
    if (o.duration.count() > 0 && std::chrono::steady_clock::now() >= end) break;
    if (!process_alive(o.pid)) {
      code = fail(exited(o.pid));
      break;
    }
  }
  warn_partial(book.last_snapshot().counters);
  if (o.format != Format::Json) std::cerr << "asynctrace: " << reported << " slow step(s) reported\n";
  detach_in_background(src.value().view);
  return code;
}

}  // namespace asynctrace
