// SPDX-License-Identifier: Apache-2.0
// The StackSource of slow and record: stack and code ids resolved from the
// tracer's maps, re-read when an id is new, and from a holder's maps for
// codes registered before we attached.
#pragma once

#include <chrono>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include "core/snapshot.h"
#include "kernel/loader.h"
#include "profile/recorder.h"

namespace asynctrace {

class StackBook final : public StackSource {
 public:
  explicit StackBook(MapView* t) : tracer_(t) {}

  const StackInfo* stack(uint64_t id) override;
  const CodeInfo* code(uint64_t id) override;
  // The maps of a holder of the process (open_pinned), for codes ours lack.
  void set_holder(std::unique_ptr<MapView> t) { holder_ = std::move(t); }
  // Reads the maps once more (at most every 50 ms); false if nothing new.
  bool refresh(bool force = false);
  void take(Snapshot s);
  const Snapshot& last_snapshot() const { return last_snapshot_; }

 private:
  MapView* tracer_;
  std::unordered_map<uint64_t, StackInfo> stacks_;
  std::unordered_map<uint64_t, CodeInfo> code_;
  std::unordered_set<uint64_t> tried_;  // ids a forced refresh looked for
  std::unordered_set<uint64_t> code_tried_;
  std::unique_ptr<MapView> holder_;
  Snapshot last_snapshot_;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace asynctrace
