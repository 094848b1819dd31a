// SPDX-License-Identifier: Apache-2.0
// The binary's usage errors: one line on stderr naming the wrong word and
// the nearest real one, exit 2 (the documented usage exit code), nothing on
// stdout, nothing attached (no process is even looked up).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "harness.h"

TEST(Cli, UsageErrorsNameTheWordAndExitTwo) {
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> said;
  };
  for (const Case& c : std::vector<Case>{
           {{"pstree", "--pdi", "3053"}, {"'--pdi'", "'--pid'"}},
           {{"pstre", "-p", "3053"}, {"'pstre'", "'pstree'"}},
           {{"slow", "-p", "3053", "-t", "50"}, {"--threshold", "'50'", "ms, s, m or h"}},
           {{"run", "python3", "-c", "print(1)"}, {"'-c'", "--"}},
       }) {
    auto argv = c.args;
    argv.insert(argv.begin(), e2e::tool());
    const auto r = e2e::run(argv);
    SCOPED_TRACE(r.err);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_TRUE(r.out.empty()) << r.out;
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1);  // one line
    for (const std::string& s : c.said) EXPECT_NE(r.err.find(s), std::string::npos) << s;
  }
}

// runtimes/python/install.sh: --help prints the usage (exit 0) instead of
// running "--help" as the interpreter; a word that is no executable is one
// line, exit 2, nothing installed.
TEST(Cli, InstallScriptHelpAndBadInterpreter) {
  const std::string script = e2e::source_dir() + "/runtimes/python/install.sh";
  for (const char* help : {"--help", "-h"}) {
    const auto r = e2e::run({script, help});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out.rfind("usage: install.sh", 0), 0u) << r.out;
  }
  for (const char* bad : {"/etc/passwd", "/nonexistent/python3", "--frobnicate"}) {
    const auto r = e2e::run({script, bad});
    SCOPED_TRACE(bad);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
    EXPECT_NE(r.err.find(bad), std::string::npos) << r.err;
  }
}
