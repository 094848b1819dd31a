// SPDX-License-Identifier: Apache-2.0
// `asynctrace features`: the table and its JSON.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/features.h"

namespace asynctrace {

// {"kernel": release, "ok": bool, "features": [{name, description, since,
// required, present, without[, note]}]}: `asynctrace features --format json`.
nlohmann::json features_json(const KernelFeatures& f);

// The table `asynctrace features` prints.
std::string render_features(const KernelFeatures& f);

}  // namespace asynctrace
