// SPDX-License-Identifier: Apache-2.0
// The replay handshake (docs/probes.md "Replay"): after a tracer attaches,
// the runtime replays its live tasks and their stacks into the maps, and
// says so by bumping procs[pid].replay_gen at replay__end. Every wait for a
// replay goes through await_replay().
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "core/result.h"
#include "kernel/loader.h"
#include "kernel/procinfo.h"

namespace asynctrace {

// What one waiter watches: the replay generation the runtime bumps, and an
// optional nudge (raise one more replay request) called every `retry` while
// no replay has begun since the wait started.
struct ReplayWatch {
  pid_t pid = 0;
  // procs[pid]: (replay_gen, replay_active), or nullopt-like {0, 0} if unread.
  std::function<std::pair<uint64_t, uint64_t>()> read;
  uint64_t after_gen = 0;    // done once replay_gen > after_gen
  uint64_t active0 = 0;      // replay_active when the request was made
  std::function<void()> nudge;  // may be empty
  std::chrono::microseconds poll{500};
  std::chrono::milliseconds retry{25};
};

// Waits until the runtime finished a replay newer than `after_gen`. Errors:
// kExitProcessExited (the process went), kExitReplayTimeout (no answer in
// `timeout`; the message is the caller's to phrase, see the overloads).
Status await_replay(const ReplayWatch& w, std::chrono::milliseconds timeout);

// Attach (attach_tracer) and wait for the runtime's replay. The runtime
// replays when its replay__end semaphore or a request semaphore rises. The
// kernel counts probes installed in the process (0 or 1 per site), not
// tracers, so attach_tracer also raises a free request semaphore
// (replay__req0..3) for the case where another tracer holds replay__end. If
// every request slot is taken too, the first attach waits three quarters of
// the budget (opts.replay_timeout); without an answer it detaches and
// attaches once more. `phase` (may be empty) is told "load and attach" and
// "replay" as they end.
Result<std::unique_ptr<Tracer>> attach_with_replay(const TraceOptions& opts, const ProcInfo& proc,
                                                   const std::function<void(const char*)>& phase = {});

}  // namespace asynctrace
