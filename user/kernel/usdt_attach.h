// SPDX-License-Identifier: Apache-2.0
// USDT attach without libbpf's per-site perf uprobes: reads the .note.stapsdt
// notes of one ELF file, turns each site's argument string into the spec that
// libbpf's <bpf/usdt.bpf.h> reads on the BPF side, and attaches one program to
// all sites of a probe with a single BPF_TRACE_UPROBE_MULTI link (kernel >= 6.6).
// Closing such a link waits for one RCU grace period instead of one per site.
// Older kernels get the same attach from one perf-event uprobe per site
// (attach_uprobes picks). Only kernel/ uses this; tracer.cpp and agent.cpp own the BPF object
// and the spec map.
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"

namespace asynctrace::usdt {

// Mirrors struct __bpf_usdt_arg_spec / __bpf_usdt_spec of libbpf 1.1's
// <bpf/usdt.bpf.h> byte for byte: these are the values of its
// __bpf_usdt_specs map, read by bpf_usdt_arg() in our BPF programs.
enum ArgType : uint32_t { kArgConst = 0, kArgReg = 1, kArgRegDeref = 2 };
constexpr int kMaxArgs = 12;  // BPF_USDT_MAX_ARG_CNT
struct ArgSpec {
  uint64_t val_off = 0;
  ArgType arg_type = kArgConst;
  int16_t reg_off = 0;
  bool arg_signed = false;
  int8_t arg_bitshift = 0;
};
struct Spec {
  ArgSpec args[kMaxArgs] = {};
  uint64_t usdt_cookie = 0;
  int16_t arg_cnt = 0;
};
static_assert(sizeof(ArgSpec) == 16 && sizeof(Spec) == 208, "must match usdt.bpf.h");

// One probe site, with addresses already turned into file offsets the way
// libbpf 1.1 does (prelink .stapsdt.base adjustment, PT_LOAD segment mapping).
struct Site {
  std::string name;          // probe name, e.g. "task__create"
  std::string args;          // argument string as in the note, e.g. "8@%rdi -8@-24(%rbp)"
  uint64_t offset = 0;       // file offset of the probe's nop
  uint64_t sema_offset = 0;  // file offset of the semaphore, 0 if none
};

// All sites of `provider` in the ELF file at `path`, in note order.
Result<std::vector<Site>> read_sites(const std::string& path, std::string_view provider);

// Parses one site's argument string. Accepts the forms libbpf 1.1.2 accepts on
// x86-64: "N@%reg", "N@off(%reg)", "N@(%reg)" and "N@$imm"; anything else
// (e.g. "N@sym(%rip)", "N@(%rax,%rdx,8)") is an error.
Result<Spec> parse_args(std::string_view args);

// Whether BPF_TRACE_UPROBE_MULTI links are usable for USDT here: kernel
// support, process (not thread) pid filtering, and an architecture whose
// operands parse_args understands. `why` says what is missing. Decided once
// per process (the first call probes the kernel); ASYNCTRACE_UPROBE_MULTI=0,
// or ASYNCTRACE_TEST_HIDE_FEATURE naming uprobe_multi, makes it false, so
// that every attach below takes the perf-event fallback. Programs for
// attach_uprobes() are loaded for this answer: with expected_attach_type
// BPF_TRACE_UPROBE_MULTI if true, the plain kprobe type if false.
bool uprobe_multi_supported(std::string* why = nullptr);

// Creates one BPF_TRACE_UPROBE_MULTI link for `prog_fd` (loaded with
// expected_attach_type BPF_TRACE_UPROBE_MULTI) on `path`, filtered to the
// process `pid`. The arrays are parallel; ref_ctr_offsets raise the USDT
// semaphores while the link lives. Returns the link fd or -errno.
int create_uprobe_multi_link(int prog_fd, const std::string& path, pid_t pid,
                             const std::vector<unsigned long>& offsets,
                             const std::vector<unsigned long>& ref_ctr_offsets,
                             const std::vector<uint64_t>& cookies);

// The fallback of create_uprobe_multi_link for kernels without uprobe_multi
// links (Linux < 6.6), same inputs: one perf-event uprobe per site (the
// uprobe PMU; the semaphore as the event's ref_ctr_offset, raised while the
// event lives), `prog_fd` (loaded with the plain kprobe type) linked to each
// with the site's BPF cookie (BPF_LINK_CREATE on the event, Linux 5.15+).
// `pid` > 0 filters to that process; pid <= 0 is every process that maps
// `path`, now and later (pid -1, cpu 0, as libbpf does). Appends one fd per
// site to *fds, in site order: the link (it holds its event), or the event
// itself where the program had to be attached with PERF_EVENT_IOC_SET_BPF
// (cookie 0 only). Closing every fd detaches everything. Returns 0, or -errno
// with nothing of this call left attached.
int create_perf_uprobe_links(int prog_fd, const std::string& path, pid_t pid,
                             const std::vector<unsigned long>& offsets,
                             const std::vector<unsigned long>& ref_ctr_offsets,
                             const std::vector<uint64_t>& cookies, std::vector<int>* fds);

// Attaches `prog_fd` to the sites (parallel arrays as above) of `path` for
// `pid` (0: every process mapping the file): one uprobe_multi link if
// uprobe_multi_supported(), else create_perf_uprobe_links(). Appends the fds
// that hold the attachment to *fds; the caller closes them (in any order, or
// concurrently) to detach. Returns 0 or -errno (nothing left attached).
int attach_uprobes(int prog_fd, const std::string& path, pid_t pid, const std::vector<unsigned long>& offsets,
                   const std::vector<unsigned long>& ref_ctr_offsets, const std::vector<uint64_t>& cookies,
                   std::vector<int>* fds);

// Loads a program that does nothing, for attachments whose only purpose is
// their semaphores (ref_ctr_offsets), of the type attach_uprobes() needs
// (see uprobe_multi_supported). Returns the fd or -1 (errno set).
int load_noop_program();

// Current value of a USDT semaphore in process `pid`: `mapped_path` is the
// ELF file as the process maps it, `sema_offset` the semaphore's file offset
// (Site::sema_offset). Reads /proc/PID/mem; never writes.
Result<uint16_t> read_semaphore(pid_t pid, const std::string& mapped_path, uint64_t sema_offset);

// Asks the runtime of `pid` for a replay of its live state (probes.h,
// replay__req0..7): attaches `prog_fd` (a no-op program) to the first request
// probe whose semaphore is 0, raising it: a full replay (req0..3) or a
// refresh of await states and stacks (req4..7). Returns the link fd (close it
// to withdraw the request; one fd on either attach path of attach_uprobes),
// or -errno; -ENOENT if the runtime has no request probes, -EBUSY if every
// one is held.
int request_replay(pid_t pid, const std::string& path, const std::string& mapped_path,
                   const std::vector<Site>& sites, int prog_fd, bool full);

// The value of enum bpf_attach_type BPF_TRACE_UPROBE_MULTI (uapi >= 6.6;
// the bookworm headers predate it).
constexpr int kAttachUprobeMulti = 48;

}  // namespace asynctrace::usdt
