// SPDX-License-Identifier: Apache-2.0
// Writes tests/profile/sample_profile.h's profile, and an empty one, in every
// format into a directory, for check_exports.py's external checks.
#include <cstdio>
#include <fstream>

#include "sample_profile.h"

using namespace asynctrace;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  struct Out {
    const char* ext;
    ProfFormat format;
  };
  const Out outs[] = {{"folded", ProfFormat::Folded},
                      {"speedscope.json", ProfFormat::Speedscope},
                      {"svg", ProfFormat::Svg},
                      {"html", ProfFormat::Html},
                      {"pb.gz", ProfFormat::Pprof}};
  const std::pair<const char*, Profile> profiles[] = {
      {"cpu", testing::sample_profile(ProfMode::Cpu)},
      {"wall", testing::sample_profile(ProfMode::Wall)},
      {"empty", Profile{}}};
  for (const auto& [stem, profile] : profiles) {
    for (const Out& o : outs) {
      const std::string path = dir + "/" + stem + "." + o.ext;
      std::ofstream f(path, std::ios::binary);
      write_profile(profile, o.format, f);
      f.close();
      if (!f) {
        std::fprintf(stderr, "failed to write '%s'\n", path.c_str());
        return 1;
      }
    }
  }
  return 0;
}
