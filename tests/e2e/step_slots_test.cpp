// SPDX-License-Identifier: Apache-2.0
// Step slots (runtimes/python/src/timing.c): a thread that ran timed steps
// gives its slot back when it exits, so a loop thread started after more
// than 64 others (one after the other) is still sampled while a step runs
// long: `asynctrace slow` names the function it blocks in.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

#include "harness.h"

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

TEST(StepSlots, LoopThreadAfterSixtyFourOthersIsSampled) {
  const auto pythons = e2e::built_pythons();
  ASSERT_FALSE(pythons.empty());
  const std::string program = e2e::source_dir() + "/tests/programs/loop_thread_churn.py";
  e2e::Program app({e2e::tool(), "run", "--", pythons.front().second, program});
  ASSERT_TRUE(app.wait_prefix("{\"ready\"", 30s).has_value()) << app.stderr_text();
  const std::string pid = std::to_string(app.pid());
  // The program waits for timing__on, then runs 70 loop threads and the slow one.
  e2e::Program slow({e2e::tool(), "slow", "-p", pid, "-t", "100ms", "-d", "8s", "--format", "json"});
  ASSERT_TRUE(app.wait_prefix("{\"done\"", 30s).has_value()) << app.stderr_text();
  std::string out;
  const int rc = slow.wait_exit(30s, &out);
  app.signal(SIGTERM);
  ASSERT_EQ(rc, 0) << slow.stderr_text();
  const int burn_from = e2e::line_of(program, "def burn_late");
  int late = 0, sampled = 0;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const json r = json::parse(line);
    if (r.at("task_name") != "late_burner") continue;
    late++;
    EXPECT_GE(r.at("duration_ns").get<double>(), 240e6) << line;  // BURN_MS, and a loaded machine's slack
    EXPECT_LE(r.at("duration_ns").get<double>(), 500e6) << line;
    // Sampled while it ran: the innermost frame is the burning function.
    if (r.at("samples").empty()) continue;
    const json& top = r.at("samples").at(0).at("stack");
    ASSERT_GE(top.size(), 2u) << line;
    EXPECT_EQ(top.at(0).at("function"), "burn_late") << line;
    EXPECT_GT(top.at(0).at("line").get<int>(), burn_from) << line;
    EXPECT_EQ(top.at(1).at("function"), "late_burner") << line;
    sampled++;
  }
  EXPECT_GE(late, 3) << out;
  // Every long step is sampled (one may start before the tracer's first poll).
  EXPECT_GE(sampled, std::max(2, late - 1)) << "steps of the 71st loop thread were not sampled:\n" << out;
}

}  // namespace
