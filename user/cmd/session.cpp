// SPDX-License-Identifier: Apache-2.0
#include "cmd/session.h"

#include "cmd/inject.h"
#include "kernel/replay.h"

#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <utility>

namespace asynctrace {

uint64_t monotonic_ns() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(t.tv_nsec);
}

int fail(const Error& e) {
  std::cerr << "asynctrace: " << e.message << "\n";
  return e.code;
}

int output_status() {
  return std::cout.good() ? kExitOk
                          : fail(Error{kExitInternal, "failed to write output: " + std::string(std::strerror(errno))});
}

Error exited(pid_t pid) {
  return Error{kExitProcessExited, "process " + std::to_string(pid) + " exited while traced"};
}

// The tasks map may have dropped entries or edges: say so, with counts.
void warn_partial(const ProcCounters& c) {
  if (c.drop_tasks_full || c.drop_edges_full || c.drop_codes_full) {
    std::cerr << "asynctrace: warning: partial view: the kernel maps were full; lost "
              << c.drop_tasks_full << " task update(s), " << c.drop_edges_full
              << " await edge(s), " << c.drop_codes_full
              << " code name(s) (raise --max-tasks)\n";
  }
  if (c.drop_stacks_full)
    std::cerr << "asynctrace: warning: partial view: " << c.drop_stacks_full
              << " stack(s) did not fit the kernel's stack map\n";
  if (c.drop_events || c.drop_timing_full)
    std::cerr << "asynctrace: warning: partial timing: " << c.drop_events
              << " step/sample event(s) lost (events ring full), " << c.drop_timing_full
              << " task(s) or coroutine(s) without room in the timing maps\n";
  if (c.drop_runtime || c.bad_records)
    std::cerr << "asynctrace: warning: partial view: " << c.drop_runtime
              << " event(s) lost in the runtime's buffer, " << c.bad_records
              << " malformed batch record(s)\n";
}

void PhaseClock::mark(const char* phase) {
  const auto now = std::chrono::steady_clock::now();
  if (on_) {
    std::cerr << "asynctrace: " << phase << ": "
              << std::chrono::duration<double, std::milli>(now - t_).count() << " ms\n";
  }
  t_ = now;
}

namespace {

// Attach and the runtime's replay (kernel/replay.h has the handshake).
Result<std::unique_ptr<Tracer>> start_tracing(const Options& o, const ProcInfo& info, PhaseClock* clock,
                                              const TraceModes& modes) {
  if (info.kind != ProcKind::Probed) return proc_error(info);
  const TraceOptions topts{.pid = o.pid, .replay_timeout = o.timeout, .verbose = o.verbose,
                           .max_tasks = o.max_tasks, .timing = modes.timing, .steps = modes.steps,
                           .events = modes.events};
  auto tracer = attach_with_replay(topts, info, [clock](const char* phase) {
    if (clock) clock->mark(phase);
  });
  return tracer;
}

}  // namespace

Result<Session> open_session(const Options& o, const TraceModes& modes, Held held, PhaseClock* clock) {
  if (auto st = check_privileges(); !st.ok()) return st.error();
  // A second holder could not pin, and would wait in vain for a replay: the
  // runtime counts probes attached, not tracers, so it never sees a second.
  if (held == Held::Refuse && pin_holder_alive(o.pid))
    return Error{kExitTracing, "failed to attach to process " + std::to_string(o.pid) +
                                   ": another 'asynctrace attach' holds it (pstree/ps read its maps)"};
  sweep_stale_pins();
  Session s;
  s.target = inspect_process(o.pid);
  if (s.target.kind == ProcKind::PythonNoProbes) {
    // An unprepared CPython 3.14+: load the runtime into it first (or say why not).
    auto loaded = inject_runtime(o, s.target, clock);
    if (!loaded.ok()) return loaded.error();
    s.target = std::move(loaded.value());
  }
  const ProcInfo& info = s.target;
  if (info.kind == ProcKind::NoSuchProcess || info.kind == ProcKind::Zombie) return proc_error(info);
  const bool timed = modes.timing || modes.steps || modes.events;
  if (timed && info.kind != ProcKind::Probed) return proc_error(info);
  if (held == Held::Use) {
    // An `asynctrace attach` or the agent holding this process: answer from
    // its maps, after the runtime replayed its current stacks into them.
    auto pinned = open_pinned(o.pid, &info, o.verbose);
    if (!pinned.ok()) return pinned.error();
    if (pinned.value()) {
      // The agent holds timing__on for every process already.
      const bool agent_maps = !pin_holder_alive(o.pid) && agent_running();
      if ((modes.timing || modes.steps) && (!agent_maps || modes.steps)) {
        auto hold = hold_modes(info, true, modes.steps);
        if (!hold.ok()) return hold.error();
        s.hold = std::move(hold.value());
      }
      if (auto st = pinned.value()->wait_replay(o.timeout); !st.ok()) {
        if (st.error().code != kExitReplayTimeout) return st.error();
        s.stale = st.error();
      }
      if (clock) clock->mark("replay into pinned maps");
      s.view = std::move(pinned.value());
      s.held = true;
      return s;
    }
  }
  auto tracer = start_tracing(o, info, clock, modes);
  if (!tracer.ok()) return tracer.error();
  s.tracer = tracer.value().get();
  s.view = std::move(tracer.value());
  return s;
}

// Closing uprobe links waits for a kernel grace period (tens of ms) that the
// user need not wait for: a forked child holds the last references and
// closes them once we have exited (it waits for EOF on a pipe whose write end
// only we hold), so the kernel finishes unregistering just after we exit and
// our own closes are cheap. If fork or pipe fails, detach here.
void detach_in_background(std::unique_ptr<MapView>& tracer) {
  std::cout.flush();
  std::cerr.flush();
  int gate[2];
  if (pipe2(gate, O_CLOEXEC) != 0) {
    tracer.reset();
    return;
  }
  const pid_t child = fork();
  if (child == 0) {
    close(gate[1]);
    const int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      for (int fd = 0; fd <= 2; ++fd) dup2(null, fd);  // release the caller's pipes
    }
    setsid();
    char c;
    while (read(gate[0], &c, 1) < 0 && errno == EINTR) {
    }
    tracer.reset();
    _exit(0);
  }
  close(gate[0]);
  if (child < 0) {
    close(gate[1]);
    tracer.reset();
    return;
  }
  // Our copies of the link and map fds are not the last ones: closing is
  // cheap. gate[1] stays open until we exit.
  tracer.reset();
}

volatile sig_atomic_t g_stop = 0;         // the signal that asked a command to stop
volatile sig_atomic_t g_stop_sender = 0;  // and the pid that sent it (0: the kernel, a terminal)
namespace {
void on_stop(int sig, siginfo_t* info, void*) {
  g_stop_sender = info && info->si_code == SI_USER ? info->si_pid : 0;
  g_stop = sig;
}
}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_sigaction = on_stop;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
}

void nap(std::chrono::milliseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (!g_stop && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(std::chrono::milliseconds(20), d));
}

}  // namespace asynctrace
