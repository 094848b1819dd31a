// SPDX-License-Identifier: Apache-2.0
// Decoded state of one traced process, as read from the BPF maps. Produced by
// kernel/ (user/kernel/maps.cpp), consumed by the model and views. No libbpf here.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
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

// Step timing since the runtime's timing__on (docs/probes.md "Timing"): of
// one task, or of every task of one coroutine.
struct Timing {
  uint64_t steps = 0;
  uint64_t busy_ns = 0;   // time in steps
  uint64_t sched_ns = 0;  // runnable but not resumed yet (where the runtime can tell)
  uint64_t max_ns = 0;    // longest step
  uint64_t last_end_ns = 0;  // CLOCK_MONOTONIC end of the last step (tasks)
  uint64_t first_ns = 0;     // CLOCK_MONOTONIC when the tracer first counted it
  std::array<uint32_t, 32> hist{};  // steps of [2^i, 2^(i+1)) us; bucket 0 also < 1 us
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
  uint64_t stack_id = 0;            // the kernel's interned stack (equal ids, equal frames); 0: none
  bool frames_truncated = false;
  bool awaiters_truncated = false;
  // While a tracer holds timing__on. Shared, not inline: records are moved
  // around by the 100,000, and most views never look at it.
  std::shared_ptr<const Timing> timing;
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
  // Timing (the runtime's LOOP records): totals since timing_since_ns, 0 = none yet.
  uint64_t timing_since_ns = 0;
  uint64_t loop_at_ns = 0;
  uint64_t tasks_created = 0;
  uint64_t tasks_completed = 0;
  uint64_t steps = 0;
  uint64_t busy_ns = 0;
  uint64_t drop_events = 0;       // STEP_TIMED/SAMPLE events lost (events ring full)
  uint64_t drop_timing_full = 0;  // tasks or coroutines the timing maps had no room for
  std::array<std::pair<uint64_t, uint64_t>, 8> step_max{};  // (CLOCK_MONOTONIC second, longest step ns)
};

struct StackInfo {
  std::vector<Frame> frames;  // innermost first
  bool truncated = false;
};

// A step (the runtime's STEP_TIMED record) or a sample of the loop thread's
// Python stack taken during one (SAMPLE), as the events ring delivers them.
struct StepEvent {
  enum class Type { Step, Sample };
  Type type = Type::Step;
  uint64_t ktime_ns = 0;   // when the kernel saw it (a flush: up to ~50 ms late)
  uint64_t task_id = 0;
  uint64_t code_id = 0;    // the task's coroutine code id, 0 if unknown
  std::string task_name;   // raw (untrusted); empty if unknown
  bool task_known = false; // the tracer knew the task when the record arrived
  // Which task at task_id: its TaskRecord::create_ns (ids are addresses,
  // reused once a task dies); 0 if the tracer did not know the task.
  uint64_t task_gen = 0;
  // The task awaiting it (a plain await of it, else its first TaskGroup or
  // gather awaiter) and that task's create_ns; 0 if none or unknown.
  uint64_t awaiter_id = 0, awaiter_gen = 0;
  // Step
  uint64_t start_ns = 0;   // CLOCK_MONOTONIC
  uint64_t dur_ns = 0;
  uint64_t start_stack = 0;  // stack ids (Snapshot::stacks), 0: unknown / none
  uint64_t end_stack = 0;
  uint32_t tid = 0;
  uint32_t nsamples = 0;
  bool completed = false;
  bool slow = false;       // past the runtime's slow floor
  // Sample
  uint64_t at_ns = 0;
  uint64_t stack_id = 0;
};

struct Snapshot {
  uint32_t pid = 0;
  std::vector<TaskRecord> tasks;
  std::unordered_map<uint64_t, CodeInfo> code;
  ProcCounters counters;
  std::unordered_map<uint64_t, Timing> code_timing;  // by coroutine code id
  std::unordered_map<uint64_t, StackInfo> stacks;    // every interned stack, by id
};

}  // namespace asynctrace
