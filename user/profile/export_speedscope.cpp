// SPDX-License-Identifier: Apache-2.0
// speedscope's file format (https://www.speedscope.app/file-format-schema.json):
// frames shared by all profiles, one sampled profile of every sample (first,
// so it is what speedscope opens on) and one evented profile per task.
#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>

#include "core/escape.h"
#include "profile/export.h"

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
// Written as it goes: a timeline may have millions of events, too many for
// a JSON document in memory.
void write_evented_profile(const Profile& p, const ProfTimeline& t, std::ostream& out) {
  uint64_t end = p.duration_ns;
  for (const ProfEvent& e : t.events) end = std::max(end, e.at_ns);
  char id[32];
  std::snprintf(id, sizeof id, "0x%llx", static_cast<unsigned long long>(t.task_id));
  out << "{\"type\":\"evented\",\"name\":" << json("[task] " + escape_untrusted(t.task_name) + " (" + id + ")").dump()
      << ",\"unit\":\"nanoseconds\",\"startValue\":0,\"endValue\":" << end << ",\"events\":[";
  std::vector<uint32_t> open;
  uint64_t now = 0;
  bool first = true;
  auto emit = [&](char type, uint64_t at, uint32_t frame) {
    out << (first ? "" : ",") << "{\"type\":\"" << type << "\",\"at\":" << at << ",\"frame\":" << frame << "}";
    first = false;
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
  out << "]}";
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
  const std::string name = "asynctrace " + std::string(mode_name(p.mode)) + " profile of " +
                           escape_untrusted(p.comm) + " (pid " + std::to_string(p.pid) + ")";
  out << "{\"$schema\":\"https://www.speedscope.app/file-format-schema.json\",\"activeProfileIndex\":0,"
      << "\"exporter\":\"asynctrace\",\"name\":" << json(name).dump() << ",\"shared\":{\"frames\":" << frames.dump()
      << "},\"profiles\":[" << sampled_profile(p).dump();
  for (const ProfTimeline& t : p.timelines) {
    out << ",";
    write_evented_profile(p, t, out);
  }
  out << "]}\n";
}

}  // namespace asynctrace
