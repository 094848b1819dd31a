// SPDX-License-Identifier: Apache-2.0
// BPF map records (bpf/abi.h) -> Snapshot. Pure: no libbpf, no kernel, so the
// decoding of what the kernel and the traced process wrote is unit-testable
// and fuzzable (tests/fuzz/). kernel/maps.cpp feeds it the entries it reads.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "abi.h"
#include "core/snapshot.h"

namespace asynctrace {

// A task entry without its frames (those live in the interned stacks map),
// into a default-constructed record (decoded in place: no copy of it).
void decode_task_into(uint64_t task_id, const at_task& t, TaskRecord& r);
CodeInfo decode_code(const at_code& c);
Timing decode_timing(const at_timing& t);
// An events-ring entry; false if it is no event this version knows.
bool decode_event(const at_event& e, StepEvent* out);
ProcCounters decode_proc(const at_proc& p);

// Accumulates the entries of one process's maps, in any order. Batch reads
// see each key once; the key walk may repeat keys under churn: then call
// allow_repeats() and later copies of a task are dropped.
class SnapshotDecoder {
 public:
  explicit SnapshotDecoder(uint32_t pid) { snap_.pid = pid; }
  void allow_repeats() { dedupe_ = true; }
  void add_task(const at_task_key& k, const at_task& t);     // entries of other pids ignored
  void add_stack(const at_stack_key& k, const at_stack& s);  // ditto
  void add_code(const at_code_key& k, const at_code& c);     // ditto; first entry of a code id wins
  void set_proc(const at_proc& p);                           // procs[pid], when present
  void add_timing(const at_task_key& k, const at_timing& t); // per task; joined in finish()
  void add_code_timing(const at_code_key& k, const at_timing& t);
  // Tasks ordered by creation (create_ns, then id), with their frames.
  Snapshot finish() &&;

 private:
  Snapshot snap_;
  std::vector<uint64_t> stack_ids_;  // parallel to snap_.tasks
  std::unordered_map<uint64_t, Timing> timing_;
  std::unordered_set<uint64_t> seen_;
  bool dedupe_ = false;
};

}  // namespace asynctrace
