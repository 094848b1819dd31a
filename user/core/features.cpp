// SPDX-License-Identifier: Apache-2.0
// The feature table and what is said about it; the probes are in kernel/kernel_features.cpp.
#include "core/features.h"

namespace asynctrace {

std::vector<KernelFeature> feature_table() {
  return {
      {"ringbuf", "the BPF ring buffer map", "5.8", true,
       "exit 7 before loading: the object's 'events' map is one (step and sample events)", false, {}},
      {"bpf_loop", "the bpf_loop helper", "5.17", true,
       "exit 7 before loading: batch_flush applies a runtime's buffered records with it", false, {}},
      {"atomics", "BPF atomic exchange and fetch-and-add", "5.12", true,
       "exit 7 before loading: counters and the per-CPU busy flags use them", false, {}},
      {"global_funcs", "global BPF functions with pointer arguments", "5.12", true,
       "exit 7 before loading: the batch record handlers are global functions", false, {}},
      {"probe_read_user", "the bpf_probe_read_user helper", "5.5", true,
       "exit 7 before loading: names, stacks and records are read from the traced process with it", false, {}},
      {"usdt_semaphores", "USDT semaphores (uprobe ref_ctr_offset)", "4.20", true,
       "exit 7 before loading: the runtime's probes stay dormant until a tracer raises their semaphores", false,
       {}},
      {"uprobe_multi", "uprobe_multi links", "6.6", false,
       "one perf-event uprobe per probe site instead: attach costs the same, detach takes longer (the kernel "
       "releases the sites one after another)",
       false, {}},
  };
}

const KernelFeature* KernelFeatures::find(std::string_view name) const {
  for (const KernelFeature& k : list)
    if (k.name == name) return &k;
  return nullptr;
}

bool names_feature(std::string_view names, std::string_view name) {
  while (!names.empty()) {
    const size_t comma = names.find(',');
    if (names.substr(0, comma) == name) return true;
    names = comma == std::string_view::npos ? std::string_view{} : names.substr(comma + 1);
  }
  return false;
}

void hide_features(KernelFeatures& f, std::string_view names) {
  for (KernelFeature& k : f.list) {
    if (!names_feature(names, k.name)) continue;
    k.present = false;
    k.note = "hidden by ASYNCTRACE_TEST_HIDE_FEATURE";
  }
}

Status check_kernel_features(const KernelFeatures& f) {
  std::string missing;
  for (const KernelFeature& k : f.list) {
    if (!k.required || k.present) continue;
    if (!missing.empty()) missing += ", ";
    missing += std::string(k.what) + " (Linux " + std::string(k.since) + "+)";
  }
  if (missing.empty()) return ok_status();
  return Error{kExitTracing,
               "failed to load BPF object 'asynctrace': this kernel (" + f.release + ") lacks " + missing};
}

std::string features_summary(const KernelFeatures& f) {
  std::string s;
  for (const KernelFeature& k : f.list) {
    if (!s.empty()) s += ", ";
    s += std::string(k.name) + (k.present ? " yes" : " no");
  }
  return s;
}

}  // namespace asynctrace
