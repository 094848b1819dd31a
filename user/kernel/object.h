// SPDX-License-Identifier: Apache-2.0
// Internal to kernel/: the BPF object (bpf/asynctrace.bpf.c through its
// skeleton, owned by SkelPtr), libbpf's log and the errors made of it, the
// privilege check, the tracefs and bpffs mounts.
#pragma once

#include <memory>
#include <string>

#include "core/result.h"

struct asynctrace_bpf;

namespace asynctrace {

constexpr int kEnotsupp = 524;  // kernel-internal ENOTSUPP, leaks out of old bpf() commands

struct SkelDeleter {
  void operator()(asynctrace_bpf* skel) const;
};
// The skeleton, destroyed with whoever owns it (error returns included).
using SkelPtr = std::unique_ptr<asynctrace_bpf, SkelDeleter>;

// Opens the object (not loaded yet); an error naming libbpf's reason.
Result<SkelPtr> open_object();

// Routes libbpf's log through our callback, echoing it only when verbose.
void init_libbpf_log(bool verbose);

// "<strerror(err)>[ (libbpf: <last warning>)]"
std::string reason(int err);

// Why asynctrace_bpf__load() failed (`err`: its -errno), as the one line to
// report; every load of the skeleton goes through here. A program the
// verifier refused (libbpf printed its log) is exit 7 with the program and
// the verifier's reason: with the capabilities, an EACCES or EPERM from
// BPF_PROG_LOAD is the verifier's, not a privilege problem. EACCES/EPERM
// without them is exit 6; anything else exit 7, with `remedy` if given.
Error load_error(int err, bool verbose, const std::string& remedy = {});

// ASYNCTRACE_TEST_VERIFIER_REJECT=1 (tests only): replay_end makes an access
// the verifier refuses, to test how a rejected load is reported.
void apply_test_knobs(asynctrace_bpf* skel);

// libbpf creates uprobes through the perf "uprobe" PMU when the kernel has it
// and falls back to tracefs uprobe_events otherwise; only the fallback needs
// tracefs mounted.
Status ensure_uprobe_interface();

// /sys/fs/bpf mounted (pins).
Status ensure_bpffs();

}  // namespace asynctrace
