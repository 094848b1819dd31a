// temporary stub until the exporters land
#include "profile.h"
#include <ostream>
namespace asynctrace {
uint32_t Profile::frame(ProfFrame::Kind kind, const std::string& name, const std::string& file, uint32_t line) {
  for (uint32_t i = 0; i < frames.size(); ++i)
    if (frames[i].kind == kind && frames[i].name == name && frames[i].file == file && frames[i].line == line) return i;
  frames.push_back({kind, name, file, line});
  return static_cast<uint32_t>(frames.size() - 1);
}
void write_profile(const Profile& p, ProfFormat, std::ostream& out) {
  for (const auto& s : p.samples) {
    std::string line;
    for (size_t i = 0; i < s.stack.size(); ++i) { if (i) line += ";"; const auto& f = p.frames[s.stack[i]]; line += (f.kind==ProfFrame::Kind::Task? "[task] ":"") + f.name + (f.file.empty()?"":" " + f.file + ":" + std::to_string(f.line)); }
    out << line << " " << s.weight_ns / 1000 << "\n";
  }
}
}
