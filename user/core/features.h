// SPDX-License-Identifier: Apache-2.0
// The kernel features bpf/asynctrace.bpf.c and its attach paths need: the
// table and what is said about it (pure). The probes that fill it in are in
// kernel/kernel_features.h; the `features` table and JSON in
// render/features_view.h. docs/kernels.md has the table.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"

namespace asynctrace {

struct KernelFeature {
  std::string_view name;     // "bpf_loop": JSON key, ASYNCTRACE_TEST_HIDE_FEATURE
  std::string_view what;     // "the bpf_loop helper", as error messages say it
  std::string_view since;    // first mainline kernel with it: "5.17"
  bool required = true;      // false: a fallback exists (see `without`)
  std::string_view without;  // what asynctrace does on a kernel without it
  bool present = false;
  std::string note;  // why it is missing, when the probe says more than no
};

struct KernelFeatures {
  std::string release;  // uname -r
  std::vector<KernelFeature> list;
  const KernelFeature* find(std::string_view name) const;
};

// Every feature, in report order, none present yet.
std::vector<KernelFeature> feature_table();

// Whether the comma-separated list `names` ("bpf_loop,atomics") holds `name`.
bool names_feature(std::string_view names, std::string_view name);

// Marks the features named in `names` ("bpf_loop,atomics") missing: the
// test hook ASYNCTRACE_TEST_HIDE_FEATURE. Unknown names are ignored.
void hide_features(KernelFeatures& f, std::string_view names);

// ok if every required feature is here; otherwise exit 7 naming each one
// missing, e.g. "failed to load BPF object 'asynctrace': this kernel
// (6.1.0-13-amd64) lacks the bpf_loop helper (Linux 5.17+)".
Status check_kernel_features(const KernelFeatures& f);

// "ringbuf yes, bpf_loop yes, ..., uprobe_multi no": one line for --verbose.
std::string features_summary(const KernelFeatures& f);

}  // namespace asynctrace
