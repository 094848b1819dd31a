// SPDX-License-Identifier: Apache-2.0
// What every command shares, written once: errors to stderr, the privilege
// check, the target process, "the maps a holder keeps, or a tracer of our
// own" (open_session), the runtime's replay after attach, detaching without
// waiting, stop signals. Command files include this and commands.h; this
// includes no command.
#pragma once

#include <signal.h>

#include <chrono>
#include <memory>
#include <optional>

#include "core/cli.h"
#include "core/result.h"
#include "core/snapshot.h"
#include "kernel/loader.h"
#include "kernel/procinfo.h"

namespace asynctrace {

// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns() and of the runtime's
// timing records.
uint64_t monotonic_ns();

// One line on stderr; returns the error's exit code.
int fail(const Error& e);

// kExitOk if stdout took everything, else the error's code after one line.
int output_status();

// The kernel maps or the runtime lost something: say so on stderr, with counts.
void warn_partial(const ProcCounters& c);

// "process N exited while traced" (kExitProcessExited).
Error exited(pid_t pid);

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

// Whose maps a command reads.
enum class Held {
  Use,     // those of an `asynctrace attach` or the agent if one holds the process, else our own
  Ignore,  // always our own (the events ring is per tracer)
  Refuse,  // our own, and a holder is an error (`attach`: a second could not pin)
};

// A traced process, by either kind of tracer.
struct Session {
  ProcInfo target;
  std::unique_ptr<MapView> view;   // the maps read
  Tracer* tracer = nullptr;        // view, when it is a tracer of our own (null over held maps)
  std::unique_ptr<ModeHold> hold;  // our timing__on/steps__on over held maps
  bool held = false;               // view reads a holder's maps
  std::optional<Error> stale;      // held maps whose replay did not come in time
};

// The privilege check (once), stale pins swept, the process inspected, then
// the held maps (with our mode holds and a fresh replay) or a tracer of our
// own attached with its replay waited for.
Result<Session> open_session(const Options& o, const TraceModes& modes, Held held, PhaseClock* clock = nullptr);

// Detaches in a forked child so the caller need not wait for the kernel's
// grace periods.
void detach_in_background(std::unique_ptr<MapView>& view);

// SIGINT/SIGTERM/SIGHUP set g_stop (and g_stop_sender).
extern volatile sig_atomic_t g_stop;
extern volatile sig_atomic_t g_stop_sender;
void install_stop_handlers();

// Sleeps up to `d`, waking early on a stop signal.
void nap(std::chrono::milliseconds d);

}  // namespace asynctrace
