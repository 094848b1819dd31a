// SPDX-License-Identifier: Apache-2.0
// What the commands share (commands.cpp defines these): errors to stderr,
// attaching with the replay handshake, detaching without waiting, signals.
#pragma once

#include <signal.h>

#include <chrono>
#include <memory>

#include "core/cli.h"
#include "kernel/loader.h"
#include "core/result.h"
#include "core/snapshot.h"

namespace asynctrace {

// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns() and of the runtime's
// timing records.
uint64_t monotonic_ns();

// One line on stderr; returns the error's exit code.
int fail(const Error& e);

// The kernel maps or the runtime lost something: say so on stderr, with counts.
void warn_partial(const ProcCounters& c);

// -v: how long each phase took, on stderr.
class PhaseClock {
 public:
  explicit PhaseClock(bool on) : on_(on), t_(std::chrono::steady_clock::now()) {}
  void mark(const char* phase);

 private:
  bool on_;
  std::chrono::steady_clock::time_point t_;
};

struct TraceModes {
  bool timing = false;  // hold timing__on
  bool steps = false;   // hold steps__on
  bool events = false;  // read the events ring
};

// Privileges, target check, attach, and the runtime's replay.
Result<std::unique_ptr<Tracer>> start_tracing(const Options& o, PhaseClock* clock = nullptr,
                                              const TraceModes& modes = {});

// Detaches in a forked child so the caller need not wait for the kernel's
// grace periods.
void detach_in_background(std::unique_ptr<Tracer>& tracer);

// SIGINT/SIGTERM/SIGHUP set g_stop (and g_stop_sender).
extern volatile sig_atomic_t g_stop;
extern volatile sig_atomic_t g_stop_sender;
void install_stop_handlers();

// The timing commands (timing_cmds.cpp).
int run_top(const Options& o);
int run_slow(const Options& o);
int run_record(const Options& o);
int run_ps_long(const Options& o);

// The agent (agent_cmd.cpp).
int run_agent(const Options& o);

}  // namespace asynctrace
