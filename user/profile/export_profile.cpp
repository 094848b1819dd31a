// SPDX-License-Identifier: Apache-2.0
#include <ostream>

#include "core/escape.h"
#include "profile/export.h"

namespace asynctrace {

std::string frame_label(const ProfFrame& f) {
  const std::string name = escape_untrusted(f.name);
  switch (f.kind) {
    case ProfFrame::Kind::Task:
      return "[task] " + name;
    case ProfFrame::Kind::Await: {
      // The recorder names these "awaiting" or "awaiting <what>"; a bare
      // "<what>" gets the prefix so that every wait reads the same in a flame graph.
      static constexpr std::string_view kPrefix = "awaiting ";
      if (name == "awaiting" || std::string_view(name).substr(0, kPrefix.size()) == kPrefix)
        return "[" + name + "]";
      return "[awaiting " + name + "]";
    }
    case ProfFrame::Kind::Coroutine:
    case ProfFrame::Kind::Function:
      break;
  }
  return name;
}

std::string frame_display_name(const ProfFrame& f, bool lines) {
  std::string s = frame_label(f);
  // Without lines a function is one frame wherever it ran: the file would
  // only lengthen every label (speedscope and pprof keep it in a field).
  if (f.file.empty() || !lines) return s;
  s += " (";
  s += escape_untrusted(f.file);
  if (f.line != 0) {
    s += ':';
    s += std::to_string(f.line);
  }
  s += ')';
  return s;
}

bool valid_stack(const Profile& p, const std::vector<uint32_t>& stack) {
  if (stack.empty()) return false;
  for (uint32_t i : stack) {
    if (i >= p.frames.size()) return false;
  }
  return true;
}

uint64_t ns_to_us_rounded(uint64_t ns) { return ns / 1000 + (ns % 1000 >= 500 ? 1 : 0); }

void write_profile(const Profile& p, ProfFormat f, std::ostream& out) {
  switch (f) {
    case ProfFormat::Folded:
      return write_folded(p, out);
    case ProfFormat::Speedscope:
      return write_speedscope(p, out);
    case ProfFormat::Svg:
      return write_flamegraph(p, false, out);
    case ProfFormat::Html:
      return write_flamegraph(p, true, out);
    case ProfFormat::Pprof:
      return write_pprof(p, out);
  }
}

}  // namespace asynctrace
