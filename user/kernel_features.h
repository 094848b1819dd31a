// SPDX-License-Identifier: Apache-2.0
// The kernel features bpf/asynctrace.bpf.c and its attach paths need, probed
// once per process before the object is loaded (as bcc and retsnoop do), so
// that a kernel too old for us is named as such instead of failing in the
// verifier. The probes (kernel_features.cpp: kernel_release, kernel_features)
// are part of asynctrace_kernel (libbpf); the table and its reports
// (kernel_features_report.cpp) are pure, in asynctrace_core. docs/kernels.md
// has the table.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "result.h"

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

// `uname -r`.
std::string kernel_release();

// Probes every feature the first time (needs root, or CAP_BPF + CAP_PERFMON:
// the probes load tiny programs), then answers from memory. libbpf's log
// stays silent during the probes. ASYNCTRACE_TEST_HIDE_FEATURE=NAME[,NAME]
// (tests only) reports those features missing.
const KernelFeatures& kernel_features();

// ok if every required feature is here; otherwise exit 7 naming each one
// missing, e.g. "failed to load BPF object 'asynctrace': this kernel
// (6.1.0-13-amd64) lacks the bpf_loop helper (Linux 5.17+)".
Status check_kernel_features(const KernelFeatures& f);

// "ringbuf yes, bpf_loop yes, ..., uprobe_multi no": one line for --verbose.
std::string features_summary(const KernelFeatures& f);

// {"kernel": release, "ok": bool, "features": [{name, description, since,
// required, present, without[, note]}]}: `asynctrace features --format json`.
nlohmann::json features_json(const KernelFeatures& f);

// The table `asynctrace features` prints.
std::string render_features(const KernelFeatures& f);

}  // namespace asynctrace
