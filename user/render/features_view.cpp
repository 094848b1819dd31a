// SPDX-License-Identifier: Apache-2.0
#include "render/features_view.h"

#include <cstdio>

namespace asynctrace {

nlohmann::json features_json(const KernelFeatures& f) {
  nlohmann::json list = nlohmann::json::array();
  for (const KernelFeature& k : f.list) {
    nlohmann::json j = {{"name", k.name},         {"description", k.what}, {"since", k.since},
                        {"required", k.required}, {"present", k.present},  {"without", k.without}};
    if (!k.note.empty()) j["note"] = k.note;
    list.push_back(std::move(j));
  }
  return {{"kernel", f.release}, {"ok", check_kernel_features(f).ok()}, {"features", std::move(list)}};
}

std::string render_features(const KernelFeatures& f) {
  std::string out = "kernel " + f.release + "\n";
  char line[256];
  std::snprintf(line, sizeof line, "%-16s %-6s %-9s %-4s %s\n", "FEATURE", "SINCE", "NEEDED", "HERE", "DESCRIPTION");
  out += line;
  for (const KernelFeature& k : f.list) {
    std::snprintf(line, sizeof line, "%-16.*s %-6.*s %-9s %-4s %.*s", static_cast<int>(k.name.size()),
                  k.name.data(), static_cast<int>(k.since.size()), k.since.data(),
                  k.required ? "required" : "optional", k.present ? "yes" : "no", static_cast<int>(k.what.size()),
                  k.what.data());
    out += line;
    if (!k.present && !k.note.empty()) out += " (" + k.note + ")";
    out += "\n";
  }
  for (const KernelFeature& k : f.list)
    if (!k.present) out += "without " + std::string(k.name) + ": " + std::string(k.without) + "\n";
  return out;
}

}  // namespace asynctrace
