// SPDX-License-Identifier: Apache-2.0
// Kernel side access: the only header outside kernel/ that speaks of
// attaching. Implemented in kernel/ (tracer.cpp, pins.cpp, agent.cpp over
// object, attach, maps, replay); only kernel/ includes libbpf and the skeleton.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "kernel/procinfo.h"
#include "core/result.h"
#include "core/snapshot.h"

namespace asynctrace {

struct TraceOptions {
  pid_t pid = 0;
  std::chrono::milliseconds replay_timeout{2000};
  bool verbose = false;  // libbpf messages and feature choices to stderr
  uint32_t max_tasks = 0;  // capacity of the tasks map; 0 = AT_MAX_TASKS
  bool timing = false;     // hold timing__on: per-task and per-coroutine step timing
  bool steps = false;      // hold steps__on: a STEP_TIMED event for every step (profilers)
  bool events = false;     // forward STEP_TIMED/SAMPLE events to poll_events()
};

// A view of one process's maps: a tracer of our own or the pinned maps of a
// holder (`asynctrace attach`, the agent). Reads only.
class MapView {
 public:
  virtual ~MapView() = default;
  // Waits until the runtime finished replaying its live state into these
  // maps (kernel/replay.h).
  virtual Status wait_replay(std::chrono::milliseconds timeout) = 0;
  // Reads the maps for the traced pid.
  virtual Result<Snapshot> snapshot() const = 0;
  // Frees kernel memory nothing refers to any more (interned stacks of tasks
  // that moved on). Holders call it now and then.
  virtual Status gc() { return ok_status(); }
};

// An attached tracer: BPF object loaded, probes of `proc.probe_lib` attached for
// one pid; it owns them. Destruction detaches everything (no uprobes left behind).
class Tracer : public MapView {
 public:
  // Pins the maps under pin_dir(pid) (0700) so that other asynctrace commands
  // read them without attaching; the pins go when the Tracer goes.
  virtual Status pin() = 0;
  // Delivers the events forwarded since the last call (TraceOptions::events),
  // waiting up to timeout_ms for the first.
  virtual Status poll_events(const std::function<void(const StepEvent&)>& fn, int timeout_ms) = 0;
};

// Keeps the runtime's timing__on (and steps__on) semaphores raised while it
// lives: one no-op program attached to those probe sites.
class ModeHold {
 public:
  virtual ~ModeHold() = default;
};
Result<std::unique_ptr<ModeHold>> hold_modes(const ProcInfo& proc, bool timing, bool steps);

// Root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN on old kernels), effective now.
// Checked first: without them /proc of other users' processes is unreadable too.
Status check_privileges();

// Where `attach` pins the maps of one process: /sys/fs/bpf/asynctrace/<pid>.
std::string pin_dir(pid_t pid);

// True while an `asynctrace attach` holds the maps of `pid` (its flock on
// /run/asynctrace/<pid>.lock, which the kernel drops however it dies).
bool pin_holder_alive(pid_t pid);

// If a live `asynctrace attach` holds the maps of `pid` pinned: a Tracer over
// those maps (nothing loaded). With `proc`, it also asks the runtime for a
// replay (fresh stacks), which wait_replay() waits for; a timeout there is a
// warning: the held maps are still a valid, if stackless, view. Null when
// nobody holds the maps; stale pins of a killed holder are removed. Without
// a per-process holder, a running agent's maps serve (filtered to `pid`), if
// the agent knows the process.
Result<std::unique_ptr<MapView>> open_pinned(pid_t pid, const ProcInfo* proc, bool verbose = false);

// Removes every pin whose `asynctrace attach` is gone (killed with SIGKILL):
// run at the start of each tracing command, so a killed holder leaves nothing
// in the kernel beyond the next asynctrace invocation.
void sweep_stale_pins();

// ---- the agent (asynctrace agent, docs/agent.md) ------------------------------
// One BPF object for the whole host: its programs attached to every process
// that maps an asynctrace probe library (by library file, not by pid), its
// maps pinned under agent_pin_dir(), held by a flock on agent_lock_path().
// The pins outlive the agent (a restarted one reuses them); the links do not.
std::string agent_pin_dir();    // /sys/fs/bpf/asynctrace/agent
std::string agent_lock_path();  // /run/asynctrace/agent.lock

// True while an agent runs (its lock is held).
bool agent_running();

class Agent {
 public:
  virtual ~Agent() = default;
  // Attaches the probes of one library file for every process mapping it,
  // now and later (existing processes replay their live tasks at once). A
  // file already attached (same device and inode) is skipped.
  virtual Status attach_library(const std::string& path) = 0;
  virtual size_t libraries() const = 0;
  // One pass over the maps: every process's snapshot. Stacks and per-task
  // timing are left out (the metrics need neither).
  virtual Result<std::vector<Snapshot>> snapshots() const = 0;
  // Removes every map entry of these pids (processes that exited).
  virtual Status forget(const std::vector<uint32_t>& pids) = 0;
  // Frees interned stacks no task refers to any more.
  virtual Status gc(uint32_t pid) = 0;
  // True if the maps were pinned by an earlier agent and reused.
  virtual bool reused_pins() const = 0;
  // Asks the runtime of `proc` for a full replay (a pid reused by a new
  // process whose entries were just forgotten). The request is withdrawn at
  // the next call to withdraw_requests() made a second or more later.
  virtual Status request_replay(const ProcInfo& proc) = 0;
  virtual void withdraw_requests() = 0;
};

// Takes the lock (refusing with kExitTracing if another agent holds it),
// loads the object reusing pinned maps if present, pins them, holds timing.
Result<std::unique_ptr<Agent>> start_agent(bool verbose);

// Removes the agent's pins and lock file; kExitTracing if an agent runs.
Status cleanup_agent();

// Open, configure, load, attach: probes attached in the order the ABI requires
// (replay__end last). Errors carry exit codes kExitPrivilege / kExitTracing / ...
Result<std::unique_ptr<Tracer>> attach_tracer(const TraceOptions& opts, const ProcInfo& proc);

}  // namespace asynctrace
