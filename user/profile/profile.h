// SPDX-License-Identifier: Apache-2.0
// A task-aware profile: what `asynctrace record` collected, independent of
// how it was collected. The recorder (user/record.cpp) builds it from the
// kernel's data; the exporters (user/export_*.cpp) write it in the formats
// other tools read. Strings are raw bytes from the traced process: every
// exporter escapes them for its own format.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <unordered_map>
#include <vector>

namespace asynctrace {

enum class ProfMode { Cpu, Wall };

// How the recorder names task frames, so that tasks doing the same thing
// merge into one tower (docs/profiles.md):
//  Name:      the task's name with every run of digits folded to "N"
//             ("Task-14533" -> "Task-N", "part-3" -> "part-N"), record's default
//  Coroutine: the qualname of the task's coroutine ("handle_fanout")
//  Task:      the name as is, one frame per distinctly named task
enum class TaskGrouping { Name, Coroutine, Task };

// `name` with every maximal run of ASCII digits replaced by one 'N'.
std::string fold_digits(const std::string& name);

struct ProfFrame {
  enum class Kind : uint8_t {
    Task,       // a task in the await chain: name = the task's name
    Coroutine,  // a coroutine frame of a task's stack
    Function,   // a plain (non-async) function sampled inside a step
    Await,      // wall mode: the time a task spent suspended (name = "awaiting <what>")
  };
  Kind kind = Kind::Coroutine;
  std::string name;  // raw bytes: task name or function qualname
  std::string file;  // raw bytes, "" if unknown (and for tasks)
  uint32_t line = 0; // 0 if unknown
};

// Weight attributed to one stack, root first: the root task's frame, its
// coroutine frames outermost first, the frame of the task it awaits, ...,
// down to the running frame. Equal stacks may repeat: exporters merge them.
struct ProfSample {
  std::vector<uint32_t> stack;  // indices into Profile::frames, root first, never empty
  uint64_t weight_ns = 0;
  std::string task_name;        // raw: the task whose step (or wait) this is (pprof label task_name)
  std::string coroutine;        // raw: that task's coroutine qualname (pprof label coroutine)
};

// One task's steps on a timeline (speedscope's evented profile): each event
// opens or closes a frame; events are in time order and balanced (the
// recorder closes everything still open at the end).
struct ProfEvent {
  uint64_t at_ns = 0;  // since Profile::start_ns
  uint32_t frame = 0;  // index into Profile::frames
  bool open = true;
};

struct ProfTimeline {
  uint64_t task_id = 0;
  std::string task_name;  // raw
  std::vector<ProfEvent> events;
};

struct Profile {
  ProfMode mode = ProfMode::Cpu;
  uint32_t pid = 0;
  std::string comm;            // raw: the process's comm
  uint64_t start_ns = 0;       // CLOCK_MONOTONIC at the recording's start
  uint64_t duration_ns = 0;
  // How the frames were made (the recorder reads them; a Profile built by hand
  // keeps every detail it was given). lines: frames carry line numbers and the
  // name-only formats (folded, svg, html) show "qualname (file:line)"; without,
  // they show the qualname alone and speedscope/pprof keep the file in their
  // file fields. `asynctrace record` defaults to Name and no lines.
  TaskGrouping grouping = TaskGrouping::Task;
  bool lines = true;
  std::vector<ProfFrame> frames;  // each distinct (kind, name, file, line) once
  std::vector<ProfSample> samples;
  std::vector<ProfTimeline> timelines;  // ordered by the task's first event

  // Interns a frame; returns its index.
  uint32_t frame(ProfFrame::Kind kind, const std::string& name, const std::string& file = {},
                 uint32_t line = 0);

  // frame()'s lookup table, so interning stays O(1) for profiles of many
  // frames. Rebuilt from `frames` whenever their counts differ (a copy edited
  // by hand, a cleared profile): never the source of truth.
  std::unordered_map<std::string, uint32_t> frame_index_;
};

enum class ProfFormat { Folded, Speedscope, Svg, Html, Pprof };

// Writers. Each produces one complete, valid file even for an empty profile
// (a recording stopped before anything ran).
//  folded: Brendan Gregg's collapsed stacks, "frame;frame;...;frame <weight>\n" per distinct
//          stack, weight in microseconds (rounded, lines of weight 0 dropped), lines sorted
//          bytewise: byte-exact for a given Profile.
//  speedscope: https://www.speedscope.app/file-format-schema.json, one evented profile per
//          timeline (unit nanoseconds) plus one sampled profile of all samples.
//  svg / html: a self-contained interactive flame graph (no network): click to zoom, search,
//          tooltips.
//  pprof: profile.proto, gzipped; sample types ("cpu" or "wall", "nanoseconds"); labels
//          task_name and coroutine on every sample.
void write_profile(const Profile& p, ProfFormat f, std::ostream& out);

}  // namespace asynctrace
