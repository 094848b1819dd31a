// SPDX-License-Identifier: Apache-2.0
// The kernel feature probes, run once per process before the object is
// loaded (as bcc and retsnoop do), so that a kernel too old for us is named
// as such instead of failing in the verifier. The table they fill in is
// core/features.h.
#pragma once

#include <string>

#include "core/features.h"

namespace asynctrace {

// `uname -r`.
std::string kernel_release();

// Probes every feature the first time (needs root, or CAP_BPF + CAP_PERFMON:
// the probes load tiny programs), then answers from memory. libbpf's log
// stays silent during the probes. ASYNCTRACE_TEST_HIDE_FEATURE=NAME[,NAME]
// (tests only) reports those features missing.
const KernelFeatures& kernel_features();

}  // namespace asynctrace
