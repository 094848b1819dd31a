// SPDX-License-Identifier: Apache-2.0
// Kernel side access: the only header of user/ that speaks of attaching. The
// implementation (loader.cpp) is the only file that includes the BPF skeleton.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>

#include "procinfo.h"
#include "result.h"
#include "snapshot.h"

namespace asynctrace {

struct TraceOptions {
  pid_t pid = 0;
  std::chrono::milliseconds replay_timeout{2000};
  bool verbose = false;  // libbpf messages and feature choices to stderr
};

// An attached tracer: BPF object loaded, probes of `proc.probe_lib` attached for
// one pid. Destruction detaches everything (no uprobes left behind).
class Tracer {
 public:
  virtual ~Tracer() = default;
  // Waits until the runtime finished replaying its live state (replay__end seen).
  virtual Status wait_replay(std::chrono::milliseconds timeout) = 0;
  // Reads the maps for the traced pid.
  virtual Result<Snapshot> snapshot() const = 0;
};

// Open, configure, load, attach: probes attached in the order the ABI requires
// (replay__end last). Errors carry exit codes kExitPrivilege / kExitTracing / ...
Result<std::unique_ptr<Tracer>> attach_tracer(const TraceOptions& opts, const ProcInfo& proc);

}  // namespace asynctrace
