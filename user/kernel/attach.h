// SPDX-License-Identifier: Apache-2.0
// Internal to kernel/: attaching the programs of the BPF object to the USDT
// sites of a probe library, in the order the ABI requires, by uprobe_multi
// links or perf-event uprobes; closing links.
#pragma once

#include <sys/types.h>

#include <array>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "asynctrace.skel.h"
#include "core/features.h"
#include "core/result.h"
#include "kernel/usdt_attach.h"

namespace asynctrace {

// Attach order required by the ABI: replay__end last, because raising its
// semaphore is what starts the runtime's replay, and every probe the replay
// emits must already be live. task__complete first so no task can finish
// unseen between its creation and our attach.
// A runtime need not emit every probe (a runtime without gather has no
// edge__add site); only task__create and replay__end are required.
//
// Two ways to receive the task events: a runtime with a batch__flush site
// buffers them and fires one probe per batch (the fast path: no trap per
// event); otherwise each event is its own probe. code__register and the replay
// probes are used in both.
enum EventPath : unsigned { kPerEvent = 1, kBatch = 2, kBoth = 3 };
struct ProbeSlot {
  const char* probe;
  bpf_program* (*prog)(asynctrace_bpf*);
  unsigned paths = kBoth;
  bool required = false;
};
inline constexpr std::array<ProbeSlot, 10> kAttachOrder{{
    {"batch__flush", [](asynctrace_bpf* s) { return s->progs.batch_flush; }, kBatch, true},
    {"task__complete", [](asynctrace_bpf* s) { return s->progs.task_complete; }, kPerEvent},
    {"code__register", [](asynctrace_bpf* s) { return s->progs.code_register; }},
    {"task__create", [](asynctrace_bpf* s) { return s->progs.task_create; }, kPerEvent, true},
    {"edge__add", [](asynctrace_bpf* s) { return s->progs.edge_add; }, kPerEvent},
    {"edge__remove", [](asynctrace_bpf* s) { return s->progs.edge_remove; }, kPerEvent},
    {"task__await", [](asynctrace_bpf* s) { return s->progs.task_await; }, kPerEvent},
    {"task__resume", [](asynctrace_bpf* s) { return s->progs.task_resume; }, kPerEvent},
    {"replay__begin", [](asynctrace_bpf* s) { return s->progs.replay_begin; }},
    {"replay__end", [](asynctrace_bpf* s) { return s->progs.replay_end; }, kBoth, true},
}};

using Sites = Result<std::vector<usdt::Site>>;

// How the programs reach the probe sites; decided once, before load, because
// a program loaded for one kind of link cannot be used with the other (and
// bpf_get_attach_cookie() is resolved per kind at verification).
enum class AttachMode {
  // One BPF_TRACE_UPROBE_MULTI link per program covering all of its sites:
  // attach is one syscall per probe, detach one RCU grace period per link.
  UprobeMulti,
  // libbpf 1.1's bpf_program__attach_usdt(): one perf-event uprobe per site,
  // each waiting for its own grace periods on close (~100 ms per site).
  PerfPerSite,
};

bool has_probe(const Sites& sites, std::string_view name);

// The batch path when the runtime offers it, unless ASYNCTRACE_EVENTS=per-event
// asks for one probe per event (for comparison; bpftrace-like cost).
EventPath choose_event_path(const Sites& sites);

const char* mode_name(AttachMode m);

// With --verbose, one line: the kernel features found and the attach path.
void print_features(const KernelFeatures& kf, AttachMode mode, const std::string& why);

// ASYNCTRACE_UPROBE_MULTI=0 forces the libbpf path (tests of the fallback).
// Read at every attach, not from usdt::uprobe_multi_supported()'s cached
// decision: loader_check flips it between rounds in one process.
AttachMode choose_attach_mode(bool verbose);

Error attach_error(int err, const std::string& probe, const std::string& binary, pid_t pid,
                   const std::string& why);

// Closes BPF link fds. Each close of a uprobe_multi link blocks in the kernel
// for an RCU grace period (uprobe unregister sync); closing them from
// separate threads lets those grace periods overlap instead of adding up.
void close_links_concurrently(const std::vector<int>& fds);

// The kernel accepts a uprobe_multi link only for programs loaded with this
// attach type (SEC("usdt") leaves it 0). Before load; nothing to do without
// uprobe_multi (usdt::uprobe_multi_supported(), the one decision).
Status expect_uprobe_multi(asynctrace_bpf* skel);

// Why usdt::attach_uprobes() failed (-errno), naming the kind of attachment.
std::string uprobe_error(int err);

// Attaches the programs of `skel` to every site of `binary` (pid 0: every
// process mapping it, now and later), one link per probe in kAttachOrder, or
// where the kernel has no uprobe_multi links one perf-event uprobe per site.
// Spec ids are shared through `spec_ids` (argument string -> id), so several
// binaries can use one object's __bpf_usdt_specs map.
Status attach_sites_multi(asynctrace_bpf* skel, EventPath path, const std::string& binary,
                          const std::vector<usdt::Site>& sites, pid_t pid,
                          std::unordered_map<std::string, int>& spec_ids, std::vector<int>& link_fds);

}  // namespace asynctrace
