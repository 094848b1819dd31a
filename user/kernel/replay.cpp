// SPDX-License-Identifier: Apache-2.0
#include "kernel/replay.h"

#include <algorithm>
#include <iostream>
#include <thread>

namespace asynctrace {

// One algorithm for every waiter: poll procs[pid] every `poll` (500 us) until
// replay_gen passes `after_gen`; check the process is alive on every round;
// while no replay has begun since the request, nudge again every `retry`
// (the runtime polls its semaphores every few ms: a request slot that another
// reader released and we raised again in between looks unchanged to it).
Status await_replay(const ReplayWatch& w, std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  auto retry = start + w.retry;
  for (;;) {
    const auto [gen, active] = w.read();
    if (gen > w.after_gen) return ok_status();
    if (w.nudge && active <= w.active0 && Clock::now() >= retry) {
      w.nudge();
      retry = Clock::now() + w.retry;
    }
    if (!process_alive(w.pid))
      return Error{kExitProcessExited,
                   "failed to wait for replay of process " + std::to_string(w.pid) + ": the process exited"};
    if (Clock::now() >= deadline)
      return Error{kExitReplayTimeout, "failed to wait for replay of process " + std::to_string(w.pid) +
                                           ": no answer in " + std::to_string(timeout.count()) + " ms"};
    std::this_thread::sleep_for(w.poll);
  }
}

Result<std::unique_ptr<Tracer>> attach_with_replay(const TraceOptions& opts, const ProcInfo& proc,
                                                   const std::function<void(const char*)>& phase) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + opts.replay_timeout;
  for (int attempt = 1;; ++attempt) {
    auto tracer = attach_tracer(opts, proc);
    if (!tracer.ok()) return tracer.error();
    if (phase) phase("load and attach");
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    const auto wait = std::max(std::chrono::milliseconds(1), attempt == 1 ? left * 3 / 4 : left);
    auto st = tracer.value()->wait_replay(wait);
    if (st.ok()) {
      if (phase) phase("replay");
      return tracer;
    }
    if (st.error().code != kExitReplayTimeout) return st.error();
    if (attempt == 2 || Clock::now() >= deadline) {
      return Error{kExitReplayTimeout,
                   "failed to wait for replay of process " + std::to_string(opts.pid) + ": no answer in " +
                       std::to_string(opts.replay_timeout.count()) +
                       " ms; its event loop thread may be blocked or hold the GIL in C code, or another "
                       "tracer (bpftrace, another asynctrace) may hold its probes (retry, or raise --timeout)"};
    }
    if (opts.verbose) std::cerr << "asynctrace: no replay after " << wait.count() << " ms; attaching again\n";
    tracer.value().reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the runtime's watcher see the fall
  }
}

}  // namespace asynctrace
