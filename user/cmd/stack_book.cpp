// SPDX-License-Identifier: Apache-2.0
#include "cmd/stack_book.h"

#include <utility>

namespace asynctrace {

const StackInfo* StackBook::stack(uint64_t id) {
  if (!id) return nullptr;
  auto it = stacks_.find(id);
  // A new id: the maps have it now (its record came before the event).
  if (it == stacks_.end() && tried_.insert(id).second && refresh(true)) it = stacks_.find(id);
  return it == stacks_.end() ? nullptr : &it->second;
}

const CodeInfo* StackBook::code(uint64_t id) {
  auto it = code_.find(id);
  if (it != code_.end() || !id || !code_tried_.insert(id).second) return it == code_.end() ? nullptr : &it->second;
  // A code the runtime registered before this tracer attached, while
  // another holder (the agent, an `attach`) kept its session going: the
  // runtime does not send it again, but that holder's maps have it.
  if (refresh(true)) it = code_.find(id);
  if (it == code_.end() && holder_) {
    auto snap = holder_->snapshot();
    if (snap.ok())
      for (auto& [cid, c] : snap.value().code) code_.try_emplace(cid, std::move(c));
    it = code_.find(id);
  }
  return it == code_.end() ? nullptr : &it->second;
}

bool StackBook::refresh(bool force) {
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_ < std::chrono::milliseconds(50)) return false;
  last_ = now;
  auto snap = tracer_->snapshot();
  if (!snap.ok()) return false;
  take(std::move(snap.value()));
  return true;
}

void StackBook::take(Snapshot s) {
  for (auto& [id, st] : s.stacks) stacks_.try_emplace(id, std::move(st));
  for (auto& [id, c] : s.code) code_.try_emplace(id, std::move(c));
  last_snapshot_ = std::move(s);
}

}  // namespace asynctrace
