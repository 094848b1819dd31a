// SPDX-License-Identifier: Apache-2.0
// The task graph of one process: tasks in a stable order, each with its
// coroutine stack, and the await edges between them. Built from a Snapshot;
// all views render from this.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/snapshot.h"

namespace asynctrace {

struct FrameInfo {
  std::string funcname;  // raw bytes (escape before printing)
  std::string filename;  // raw bytes; "" if the code id was never named
  uint32_t line = 0;
  uint32_t label = 0;    // interned frame_label(): equal labels, equal ids (per graph)
  bool unnamed = false;  // code id never registered: funcname is "<code 0x...>"
  std::string shown{};   // escape_untrusted(frame_label()): what text views print, escaped once
};

// "funcname file:line" (or "funcname" alone for an unnamed frame), raw bytes:
// Python 3.14's frame label, which also decides which frames are "the same".
std::string frame_label(const FrameInfo& f);

struct TaskNode {
  uint64_t id = 0;
  std::string name;  // raw bytes
  uint32_t tid = 0;
  uint64_t parent_id = 0;
  uint64_t loop_id = 0;
  TaskState state = TaskState::Created;
  AwaitKind awaiting_kind = AwaitKind::None;
  uint64_t awaiting_id = 0;
  std::vector<const FrameInfo*> stack;  // innermost first; into TaskGraph::frames
  bool name_truncated = false;
  bool stack_truncated = false;
  bool nameless = false;
  uint64_t create_ns = 0;      // CLOCK_MONOTONIC when the tracer first saw it
  uint64_t coro_code_id = 0;
  std::shared_ptr<const Timing> timing;  // while a tracer holds timing__on
};

struct AwaitEdge {
  uint64_t awaiter = 0;
  uint64_t child = 0;
  EdgeKind kind = EdgeKind::Await;
};

// Task id -> position in TaskGraph::tasks: open addressing over ids (task
// object addresses), which std::unordered_map made a cache miss and a node
// allocation per task at 100,000 tasks.
class TaskIndex {
 public:
  void reserve(size_t n);
  // Adds id -> pos unless id is there already; false then.
  bool emplace(uint64_t id, uint32_t pos);
  // Position of id, or nullptr.
  const uint32_t* find(uint64_t id) const;
  bool contains(uint64_t id) const { return find(id) != nullptr; }
  // Position of id; std::out_of_range if absent.
  uint32_t at(uint64_t id) const;
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t id;
    uint32_t pos;
    bool used;
  };
  size_t slot_of(uint64_t id) const;
  void grow();
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

struct TaskGraph {
  TaskGraph() = default;
  TaskGraph(TaskGraph&&) = default;
  TaskGraph& operator=(TaskGraph&&) = default;
  TaskGraph(const TaskGraph&) = delete;  // stacks point into `frames`
  TaskGraph& operator=(const TaskGraph&) = delete;

  uint32_t pid = 0;
  std::deque<FrameInfo> frames; // each distinct (code, line) once; stable addresses
  std::vector<TaskNode> tasks;  // grouped by thread, then creation order
  std::vector<AwaitEdge> edges; // in child order, then awaiter order
  std::vector<uint32_t> edge_begin;  // edges of tasks[i]: [edge_begin[i], edge_begin[i+1])
  ProcCounters counters;
  size_t unnamed_frames = 0;    // frames whose code id was never registered

  const TaskNode* find(uint64_t id) const;
  std::vector<const AwaitEdge*> awaiters_of(uint64_t child) const;  // O(awaiters)

  TaskIndex index;  // task id -> position in tasks
};

TaskGraph build_graph(const Snapshot& snap);

}  // namespace asynctrace
