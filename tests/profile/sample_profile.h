// SPDX-License-Identifier: Apache-2.0
// The deterministic profile the exporter tests write: what a short recording
// of main -> worker tasks would give, plus a task named by a hostile program.
// Shared by tests/unit/profile_test.cpp and tests/profile/write_samples.cpp, so
// the golden text and the external checks (schema, protoc, browser) see one input.
#pragma once

#include "profile/profile.h"

namespace asynctrace::testing {

// A task and coroutine name no output format may pass through raw: a folded
// separator, a newline, a terminal escape, quotes, markup, U+FFFF (not allowed in XML).
inline const char kHostileTask[] = "evil;task\nname\x1b[31m \"q\" <b>&amp;'\xEF\xBF\xBF";
inline const char kHostileCoro[] = "co;ro<x>\x01";

inline Profile sample_profile(ProfMode mode = ProfMode::Cpu) {
  using K = ProfFrame::Kind;
  Profile p;
  p.mode = mode;
  p.pid = 4242;
  p.comm = "python3";
  p.start_ns = 0;  // 0: pprof leaves time_nanos out, so the bytes are stable
  p.duration_ns = 10'000'000;
  const uint32_t t_main = p.frame(K::Task, "main");
  const uint32_t c_main = p.frame(K::Coroutine, "main", "/srv/app.py", 10);
  const uint32_t t_w1 = p.frame(K::Task, "worker-1");
  const uint32_t t_w2 = p.frame(K::Task, "worker-2");
  const uint32_t c_work = p.frame(K::Coroutine, "worker", "/srv/app.py", 20);
  const uint32_t f_crunch = p.frame(K::Function, "crunch", "/srv/lib.py", 5);
  const uint32_t a_sleep = p.frame(K::Await, "awaiting asyncio.sleep");
  const uint32_t t_evil = p.frame(K::Task, kHostileTask);
  const uint32_t c_evil = p.frame(K::Coroutine, kHostileCoro, "/tmp/a;b.py", 7);

  auto sample = [&](std::vector<uint32_t> stack, uint64_t ns, const char* task, const char* coro) {
    p.samples.push_back(ProfSample{std::move(stack), ns, task, coro});
  };
  sample({t_main, c_main}, 1'500, "main", "main");
  sample({t_main, c_main, t_w1, c_work, f_crunch}, 2'000'400, "worker-1", "worker");
  sample({t_main, c_main, t_w2, c_work}, 499, "worker-2", "worker");
  sample({t_main, c_main, t_w1, c_work, f_crunch}, 1'000'200, "worker-1", "worker");
  sample({t_main, c_main, t_w2, c_work, a_sleep}, 4'000'000, "worker-2", "worker");
  sample({t_evil, c_evil}, 250'000, kHostileTask, kHostileCoro);

  auto ev = [](uint64_t at, uint32_t frame, bool open) { return ProfEvent{at, frame, open}; };
  p.timelines.push_back(ProfTimeline{
      0x1000, "main",
      {ev(0, t_main, true), ev(0, c_main, true), ev(1'500, c_main, false), ev(1'500, t_main, false),
       ev(9'000'000, t_main, true), ev(9'000'000, c_main, true), ev(9'500'000, c_main, false),
       ev(9'500'000, t_main, false)}});
  p.timelines.push_back(ProfTimeline{
      0x2000, "worker-1",
      {ev(2'000, t_w1, true), ev(2'000, c_work, true), ev(2'000, f_crunch, true),
       ev(3'002'600, f_crunch, false), ev(3'002'600, c_work, false), ev(3'002'600, t_w1, false)}});
  p.timelines.push_back(ProfTimeline{
      0x3000, kHostileTask,
      {ev(3'100'000, t_evil, true), ev(3'100'000, c_evil, true), ev(3'350'000, c_evil, false),
       ev(3'350'000, t_evil, false)}});
  return p;
}

}  // namespace asynctrace::testing
