// SPDX-License-Identifier: Apache-2.0
// speedscope's file format (https://www.speedscope.app/file-format-schema.json):
// frames shared by all profiles, one sampled profile of every sample (first,
// so it is what speedscope opens on) and one evented profile per task.
#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>

#include "escape.h"
#include "export.h"

namespace asynctrace {
namespace {

using nlohmann::json;

const char* mode_name(ProfMode m) { return m == ProfMode::Cpu ? "cpu" : "wall"; }

json sampled_profile(const Profile& p) {
  // Equal stacks merged, in the order of their first sample, so the "time
  // order" view keeps the recorder's order.
  std::map<std::vector<uint32_t>, size_t> slot;
  json samples = json::array();
  std::vector<uint64_t> weights;
  for (const ProfSample& s : p.samples) {
    if (!valid_stack(p, s.stack)) continue;
    auto [it, inserted] = slot.try_emplace(s.stack, weights.size());
    if (inserted) {
      samples.push_back(s.stack);
      weights.push_back(0);
    }
    weights[it->second] += s.weight_ns;
  }
  uint64_t total = 0;
  for (uint64_t w : weights) total += w;
  return {{"type", "sampled"},
          {"name", std::string("all tasks (") + mode_name(p.mode) + ")"},
          {"unit", "nanoseconds"},
          {"startValue", 0},
          {"endValue", total},
          {"samples", std::move(samples)},
          {"weights", weights}};
}

// The recorder promises balanced, time-ordered events; speedscope refuses the
// whole file otherwise, so a broken timeline is repaired rather than trusted:
// times never go back, a close shuts every frame opened above its frame, a
// close of a frame not open is dropped, and what is still open closes at the end.
json evented_profile(const Profile& p, const ProfTimeline& t) {
  uint64_t end = p.duration_ns;
  for (const ProfEvent& e : t.events) end = std::max(end, e.at_ns);
  json events = json::array();
  std::vector<uint32_t> open;
  uint64_t now = 0;
  auto emit = [&](char type, uint64_t at, uint32_t frame) {
    events.push_back({{"type", std::string(1, type)}, {"at", at}, {"frame", frame}});
  };
  for (const ProfEvent& e : t.events) {
    if (e.frame >= p.frames.size()) continue;
    now = std::max(now, e.at_ns);
    if (e.open) {
      open.push_back(e.frame);
      emit('O', now, e.frame);
      continue;
    }
    auto it = std::find(open.rbegin(), open.rend(), e.frame);
    if (it == open.rend()) continue;
    const size_t keep = static_cast<size_t>(open.rend() - it) - 1;
    while (open.size() > keep) {
      emit('C', now, open.back());
      open.pop_back();
    }
  }
  while (!open.empty()) {
    emit('C', end, open.back());
    open.pop_back();
  }
  char id[32];
  std::snprintf(id, sizeof id, "0x%llx", static_cast<unsigned long long>(t.task_id));
  return {{"type", "evented"},
          {"name", "[task] " + escape_untrusted(t.task_name) + " (" + id + ")"},
          {"unit", "nanoseconds"},
          {"startValue", 0},
          {"endValue", end},
          {"events", std::move(events)}};
}

}  // namespace

void write_speedscope(const Profile& p, std::ostream& out) {
  json frames = json::array();
  for (const ProfFrame& f : p.frames) {
    json j = {{"name", frame_label(f)}};
    if (!f.file.empty()) j["file"] = escape_untrusted(f.file);
    if (f.line != 0) j["line"] = f.line;
    frames.push_back(std::move(j));
  }
  json profiles = json::array();
  profiles.push_back(sampled_profile(p));
  for (const ProfTimeline& t : p.timelines) profiles.push_back(evented_profile(p, t));
  json doc = {{"$schema", "https://www.speedscope.app/file-format-schema.json"},
              {"shared", {{"frames", std::move(frames)}}},
              {"profiles", std::move(profiles)},
              {"name", "asynctrace " + std::string(mode_name(p.mode)) + " profile of " +
                           escape_untrusted(p.comm) + " (pid " + std::to_string(p.pid) + ")"},
              {"activeProfileIndex", 0},
              {"exporter", "asynctrace"}};
  out << doc.dump() << "\n";
}

}  // namespace asynctrace
