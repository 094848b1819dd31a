// SPDX-License-Identifier: Apache-2.0
// Loads the dormant runtime into a running CPython 3.14+ process started
// without asynctrace, through PEP 768's sys.remote_exec (docs/python.md,
// "Unprepared 3.14 processes"; docs/security.md says what it trusts).
#pragma once

#include "cmd/session.h"

namespace asynctrace {

// Where the scripts the targets run are written: root's, mode 0755 (a
// target of another user reads its script), each script 0644.
constexpr const char* kInjectDir = "/run/asynctrace-inject";

// `info` is a Python process without probes (ProcKind::PythonNoProbes).
// Unless o.no_inject: checks its build from outside (3.14+, not
// free-threaded), has the interpreter the build recorded for its version
// ask it to run a script that enables the runtime, and waits up to
// o.inject_timeout for the probes to appear. Returns the process inspected
// again (Probed), or the one-line error (exit 5 for a target we cannot or
// may not load into, 6 if the kernel refuses the write, 3 if it exited).
Result<ProcInfo> inject_runtime(const Options& o, const ProcInfo& info, PhaseClock* clock);

}  // namespace asynctrace
