// SPDX-License-Identifier: Apache-2.0
// BPF map records (bpf/abi.h) -> Snapshot. Pure: no libbpf, no kernel, so the
// decoding of what the kernel and the traced process wrote is unit-testable
// and fuzzable (tests/fuzz/). loader.cpp feeds it the entries it reads.
#pragma once

#include <cstdint>
#include <unordered_set>

#include "abi.h"
#include "snapshot.h"

namespace asynctrace {

TaskRecord decode_task(const at_task& t);
CodeInfo decode_code(const at_code& c);
ProcCounters decode_proc(const at_proc& p);

// Accumulates the entries of one process's maps, in any order, possibly with
// repeated keys (the key walk may repeat keys under churn).
class SnapshotDecoder {
 public:
  explicit SnapshotDecoder(uint32_t pid) { snap_.pid = pid; }
  void add_task(const at_task_key& k, const at_task& t);  // entries of other pids ignored
  void add_code(const at_code_key& k, const at_code& c);  // ditto; first entry of a code id wins
  void set_proc(const at_proc& p);                        // procs[pid], when present
  // Tasks ordered by seq.
  Snapshot finish() &&;

 private:
  Snapshot snap_;
  std::unordered_set<uint64_t> seen_;
};

}  // namespace asynctrace
