// SPDX-License-Identifier: Apache-2.0
#include "kernel/attach.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <thread>

#include "kernel/kernel_features.h"
#include "kernel/object.h"

namespace asynctrace {

bool has_probe(const Sites& sites, std::string_view name) {
  return sites.ok() && std::any_of(sites.value().begin(), sites.value().end(),
                                   [&](const usdt::Site& s) { return s.name == name; });
}

// The batch path when the runtime offers it, unless ASYNCTRACE_EVENTS=per-event
// asks for one probe per event (for comparison; bpftrace-like cost).
EventPath choose_event_path(const Sites& sites) {
  const char* env = std::getenv("ASYNCTRACE_EVENTS");
  if (env && std::string_view(env) == "per-event") return kPerEvent;
  return has_probe(sites, "batch__flush") ? kBatch : kPerEvent;
}


const char* mode_name(AttachMode m) {
  return m == AttachMode::UprobeMulti ? "uprobe_multi links" : "perf-event uprobes, one per site";
}

// With --verbose, one line: the kernel features found and the attach path.
void print_features(const KernelFeatures& kf, AttachMode mode, const std::string& why) {
  std::fprintf(stderr, "asynctrace: kernel %s: %s; attaching USDT probes with %s", kf.release.c_str(),
               features_summary(kf).c_str(), mode_name(mode));
  if (!why.empty()) std::fprintf(stderr, " (%s)", why.c_str());
  std::fputc('\n', stderr);
}

// ASYNCTRACE_UPROBE_MULTI=0 forces the libbpf path (tests of the fallback).
// Read at every attach, not from usdt::uprobe_multi_supported()'s cached
// decision: loader_check flips it between rounds in one process.
AttachMode choose_attach_mode(bool verbose) {
  const KernelFeatures& kf = kernel_features();
  const KernelFeature* multi = kf.find("uprobe_multi");
  std::string why;
  const char* env = std::getenv("ASYNCTRACE_UPROBE_MULTI");
  AttachMode mode = AttachMode::PerfPerSite;
  if (env && std::string_view(env) == "0")
    why = "disabled by ASYNCTRACE_UPROBE_MULTI=0";
  else if (multi && multi->present)
    mode = AttachMode::UprobeMulti;
  else if (multi)
    why = multi->note;
  if (verbose) print_features(kf, mode, why);
  return mode;
}

Error attach_error(int err, const std::string& probe, const std::string& binary, pid_t pid,
                   const std::string& why) {
  int code = (err == EPERM || err == EACCES) ? kExitPrivilege : kExitTracing;
  std::string msg = "failed to attach USDT probe 'asynctrace:" + probe + "' of '" + binary +
                    "' to pid " + std::to_string(pid) + ": " + why;
  if (code == kExitPrivilege) msg += "; a process in another mount namespace also needs CAP_SYS_PTRACE";
  return Error{code, msg};
}

// Closes BPF link fds. Each close of a uprobe_multi link blocks in the kernel
// for an RCU grace period (uprobe unregister sync); closing them from
// separate threads lets those grace periods overlap instead of adding up.
void close_links_concurrently(const std::vector<int>& fds) {
  if (fds.size() <= 1) {
    for (int fd : fds) close(fd);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(fds.size());
  for (int fd : fds) {
    try {
      threads.emplace_back([fd] { close(fd); });
    } catch (const std::system_error&) {
      close(fd);  // no thread to spare: close here, just slower
    }
  }
  for (std::thread& t : threads) t.join();
}

// The kernel accepts a uprobe_multi link only for programs loaded with this
// attach type (SEC("usdt") leaves it 0), and wires bpf_get_attach_cookie() to
// the multi link's per-site cookies for them. Before load. Without uprobe_multi
// (usdt::uprobe_multi_supported(), the one decision) the programs keep the
// plain kprobe type that perf-event uprobes take, and the cookie of each
// site's perf link: nothing to do.
Status expect_uprobe_multi(asynctrace_bpf* skel) {
  if (!usdt::uprobe_multi_supported()) return ok_status();
  for (const ProbeSlot& slot : kAttachOrder) {
    if (int err = bpf_program__set_expected_attach_type(slot.prog(skel),
                                                        static_cast<bpf_attach_type>(usdt::kAttachUprobeMulti));
        err)
      return Error{kExitInternal, std::string("failed to set attach type of BPF program '") +
                                      bpf_program__name(slot.prog(skel)) + "': " + reason(err)};
  }
  return ok_status();
}

// Why usdt::attach_uprobes() failed (-errno), naming the kind of attachment.
std::string uprobe_error(int err) {
  return std::string(usdt::uprobe_multi_supported() ? "uprobe_multi link: " : "perf-event uprobe: ") +
         std::strerror(err < 0 ? -err : err);
}

// Attaches the programs of `path` to every site of `binary` (pid 0: every
// process mapping it, now and later), one link per probe in kAttachOrder, or
// where the kernel has no uprobe_multi links one perf-event uprobe per site
// (usdt::attach_uprobes), probe after probe in the same order.
// Spec ids are shared through `spec_ids` (argument string -> id), so several
// binaries can use one object's __bpf_usdt_specs map.
Status attach_sites_multi(asynctrace_bpf* skel, EventPath path, const std::string& binary,
                          const std::vector<usdt::Site>& sites, pid_t pid,
                          std::unordered_map<std::string, int>& spec_ids, std::vector<int>& link_fds) {
  bpf_map* specs = bpf_object__find_map_by_name(skel->obj, "__bpf_usdt_specs");
  if (!specs || bpf_map__value_size(specs) != sizeof(usdt::Spec))
    return Error{kExitInternal,
                 "failed to find BPF map '__bpf_usdt_specs': missing or not the layout of "
                 "libbpf 1.1's usdt.bpf.h"};
  const int specs_fd = bpf_map__fd(specs);

  struct ProbeSites {
    std::vector<unsigned long> offsets, sema_offsets;
    std::vector<uint64_t> cookies;
  };
  std::array<ProbeSites, kAttachOrder.size()> per_slot;
  for (size_t i = 0; i < kAttachOrder.size(); ++i) {
    const ProbeSlot& slot = kAttachOrder[i];
    if (!(slot.paths & path)) continue;
    for (const usdt::Site& site : sites) {
      if (site.name != slot.probe) continue;
      auto [it, fresh] = spec_ids.try_emplace(site.args, static_cast<int>(spec_ids.size()));
      if (fresh) {
        auto spec = usdt::parse_args(site.args);
        if (!spec.ok()) {
          spec_ids.erase(it);
          return attach_error(EINVAL, slot.probe, binary, pid, spec.error().message);
        }
        if (static_cast<uint32_t>(it->second) >= bpf_map__max_entries(specs))
          return attach_error(E2BIG, slot.probe, binary, pid, "more distinct USDT argument specs than "
                                                              "BPF map '__bpf_usdt_specs' holds");
        const __u32 key = static_cast<__u32>(it->second);
        if (bpf_map_update_elem(specs_fd, &key, &spec.value(), BPF_ANY) != 0)
          return Error{kExitTracing, "failed to update BPF map '__bpf_usdt_specs': " + reason(errno)};
      }
      per_slot[i].offsets.push_back(site.offset);
      per_slot[i].sema_offsets.push_back(site.sema_offset);
      per_slot[i].cookies.push_back(static_cast<uint64_t>(it->second));
    }
    if (per_slot[i].offsets.empty() && slot.required)
      return attach_error(ENOENT, slot.probe, binary, pid, "no such USDT probe in the binary");
  }

  for (size_t i = 0; i < kAttachOrder.size(); ++i) {
    const ProbeSites& ps = per_slot[i];
    if (ps.offsets.empty()) continue;  // the runtime has no such site
    const int err = usdt::attach_uprobes(bpf_program__fd(kAttachOrder[i].prog(skel)), binary, pid, ps.offsets,
                                         ps.sema_offsets, ps.cookies, &link_fds);
    if (err < 0) return attach_error(-err, kAttachOrder[i].probe, binary, pid, uprobe_error(err));
  }
  return ok_status();
}

}  // namespace asynctrace
