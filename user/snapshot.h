// SPDX-License-Identifier: Apache-2.0
// Decoded state of one traced process, as read from the BPF maps. Produced by
// the loader (user/loader.cpp), consumed by the model and views. No libbpf here.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace asynctrace {

enum class AwaitKind : uint32_t { None = 0, Task = 1, Future = 2, Gather = 3, Running = 4 };
enum class EdgeKind : uint32_t { Await = 0, Gather = 1, TaskGroup = 2, Shield = 3 };
enum class TaskState : uint32_t { Created = 0, Running = 1, Suspended = 2 };

struct Frame {
  uint64_t code_id = 0;
  uint32_t line = 0;
};

struct CodeInfo {
  std::string qualname;  // raw bytes from the traced process (untrusted)
  std::string filename;  // raw bytes from the traced process (untrusted)
  uint32_t firstlineno = 0;
  bool truncated = false;
};

struct Awaiter {
  uint64_t task_id = 0;
  EdgeKind kind = EdgeKind::Await;
};

struct TaskRecord {
  uint64_t id = 0;
  uint64_t parent_id = 0;
  uint64_t loop_id = 0;
  uint64_t coro_code_id = 0;
  uint64_t create_ns = 0;
  uint64_t seq = 0;
  uint32_t tid = 0;
  TaskState state = TaskState::Created;
  std::string name;  // raw bytes (untrusted), possibly truncated
  bool name_truncated = false;
  bool nameless = false;  // seen only through events, never created
  uint64_t awaiting_id = 0;
  AwaitKind awaiting_kind = AwaitKind::None;
  std::vector<Awaiter> awaited_by;  // explicit edges (gather, TaskGroup, shield)
  std::vector<Frame> frames;        // innermost first
  bool frames_truncated = false;
  bool awaiters_truncated = false;
};

struct ProcCounters {
  uint64_t replay_gen = 0;
  uint64_t replay_tasks = 0;
  uint64_t events = 0;
  uint64_t drop_tasks_full = 0;
  uint64_t drop_codes_full = 0;
  uint64_t drop_edges_full = 0;
  uint64_t unknown_task = 0;
  uint64_t drop_runtime = 0;  // records the runtime could not buffer (batch path)
  uint64_t bad_records = 0;   // malformed batch records (rest of that batch skipped)
  uint64_t drop_stacks_full = 0;  // stacks the kernel's stack map had no room for
};

struct Snapshot {
  uint32_t pid = 0;
  std::vector<TaskRecord> tasks;
  std::unordered_map<uint64_t, CodeInfo> code;
  ProcCounters counters;
};

}  // namespace asynctrace
