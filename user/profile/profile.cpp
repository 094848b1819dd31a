// SPDX-License-Identifier: Apache-2.0
#include "profile/profile.h"

namespace asynctrace {
namespace {

// Length-prefixed so that no raw name or file (which may hold any byte,
// NUL included) can make two different frames share a key.
std::string frame_key(ProfFrame::Kind kind, const std::string& name, const std::string& file,
                      uint32_t line) {
  std::string k;
  k.reserve(name.size() + file.size() + 16);
  k += static_cast<char>(kind);
  k += std::to_string(name.size());
  k += ':';
  k += name;
  k += std::to_string(file.size());
  k += ':';
  k += file;
  k += std::to_string(line);
  return k;
}

}  // namespace

std::string fold_digits(const std::string& name) {
  std::string out;
  out.reserve(name.size());
  for (size_t i = 0; i < name.size(); ++i) {
    const bool digit = name[i] >= '0' && name[i] <= '9';
    if (!digit) {
      out += name[i];
    } else if (i == 0 || name[i - 1] < '0' || name[i - 1] > '9') {
      out += 'N';
    }
  }
  return out;
}

uint32_t Profile::frame(ProfFrame::Kind kind, const std::string& name, const std::string& file,
                        uint32_t line) {
  if (frame_index_.size() != frames.size()) {
    frame_index_.clear();
    for (uint32_t i = 0; i < frames.size(); ++i) {
      const ProfFrame& f = frames[i];
      frame_index_.emplace(frame_key(f.kind, f.name, f.file, f.line), i);
    }
    // Duplicates pushed by hand would leave the table short forever, and
    // rebuild it on every call: fall back to the first occurrence, keep going.
    if (frame_index_.size() != frames.size()) {
      const std::string key = frame_key(kind, name, file, line);
      if (auto it = frame_index_.find(key); it != frame_index_.end()) return it->second;
      frames.push_back(ProfFrame{kind, name, file, line});
      return static_cast<uint32_t>(frames.size() - 1);
    }
  }
  auto [it, inserted] = frame_index_.try_emplace(frame_key(kind, name, file, line),
                                                 static_cast<uint32_t>(frames.size()));
  if (inserted) frames.push_back(ProfFrame{kind, name, file, line});
  return it->second;
}

}  // namespace asynctrace
