// SPDX-License-Identifier: Apache-2.0
// Brendan Gregg's collapsed stacks. The format has no escaping of its own: a
// ';' splits frames and a newline ends the record, so both must never reach
// the output from a traced process's strings. Names are already printable
// (escape_untrusted turns '\n' and every control character into "\n" / "\xNN");
// a ';' becomes "\x3b", the same notation.
#include <algorithm>
#include <map>
#include <ostream>

#include "profile/export.h"

namespace asynctrace {
namespace {

std::string folded_frame(const ProfFrame& f, bool lines) {
  std::string s = frame_display_name(f, lines);
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == ';')
      out += "\\x3b";
    else
      out += c;
  }
  return out;
}

}  // namespace

void write_folded(const Profile& p, std::ostream& out) {
  std::vector<std::string> names;
  names.reserve(p.frames.size());
  for (const ProfFrame& f : p.frames) names.push_back(folded_frame(f, p.lines));

  // Merged by rendered text, not by frame indices: two frames that display the
  // same would otherwise print two lines with one key, which consumers sum
  // anyway. Rounded after the sum so many short samples are not lost to rounding.
  std::map<std::string, uint64_t> by_stack;
  for (const ProfSample& s : p.samples) {
    if (!valid_stack(p, s.stack)) continue;
    std::string key;
    for (size_t i = 0; i < s.stack.size(); ++i) {
      if (i) key += ';';
      key += names[s.stack[i]];
    }
    by_stack[key] += s.weight_ns;
  }
  std::vector<std::string> lines;
  lines.reserve(by_stack.size());
  for (const auto& [stack, ns] : by_stack) {
    const uint64_t us = ns_to_us_rounded(ns);
    if (us == 0) continue;
    lines.push_back(stack + " " + std::to_string(us) + "\n");
  }
  // Sorted as whole lines (the contract), which differs from the order of the
  // stacks alone when one stack is a prefix of another.
  std::sort(lines.begin(), lines.end());
  for (const std::string& l : lines) out << l;
}

}  // namespace asynctrace
