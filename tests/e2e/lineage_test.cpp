// SPDX-License-Identifier: Apache-2.0
// Profiles of the aiohttp service (tests/programs/aiohttp_service.py), whose
// task addresses are reused all the time: `record` must never hang one
// request's task under another request's frames (issue 13, item 1), and its
// default flame graph must read as the program is built: one tower per
// function, tasks merged by name, the blocking call one wide tower holding
// the time the service measured in it (item 5).
#include <gtest/gtest.h>

#include <csignal>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.h"

using namespace std::chrono_literals;
using nlohmann::json;

namespace {

struct Stack {
  std::vector<std::string> frames;  // root first, as printed
  double us = 0;
};

std::vector<Stack> stacks_of(const std::string& folded_text) {
  std::vector<Stack> out;
  for (const auto& [line, us] : e2e::folded(folded_text)) {
    Stack s;
    s.us = us;
    size_t from = 0;
    for (size_t semi; (semi = line.find(';', from)) != std::string::npos; from = semi + 1)
      s.frames.push_back(line.substr(from, semi - from));
    s.frames.push_back(line.substr(from));
    out.push_back(std::move(s));
  }
  return out;
}

// A frame's function: the name without " (file:line)" (--lines, and older
// builds) and without the qualname's enclosing scopes ("serve.<locals>.").
std::string func(const std::string& frame) {
  std::string f = frame.substr(0, frame.find(" ("));
  const auto dot = f.rfind(">.");
  return dot == std::string::npos ? f : f.substr(dot + 2);
}
bool is_task(const std::string& frame) { return frame.rfind("[task] ", 0) == 0; }

// What the program's structure forbids (tests/programs/aiohttp_service.py and
// aiohttp 3.8): a request task (first coroutine _handle_request) is awaited
// by its connection's RequestHandler.start only; a fan-out part only by
// handle_fanout's TaskGroup.__aexit__; and no request runs inside a
// TaskGroup. A task at the root is not nested (its awaiters were not known at
// any graph read of its lifetime), so it is no impossible nesting. Returns why
// the stack is impossible, "" if it is possible.
std::string impossible(const Stack& s) {
  const auto& f = s.frames;
  bool in_taskgroup = false;
  for (size_t i = 0; i < f.size(); ++i) {
    if (func(f[i]) == "_handle_request" && in_taskgroup) return "a request under TaskGroup.__aexit__";
    if (func(f[i]) == "__aexit__" && f[i].find("TaskGroup") != std::string::npos) in_taskgroup = true;
    if (!is_task(f[i]) || i == 0 || i + 1 >= f.size()) continue;
    const std::string first = func(f[i + 1]), above = func(f[i - 1]);
    if (first == "_handle_request" && above != "start") return "a request task under " + above;
    if (first == "fanout_part" &&
        (f[i - 1].rfind("TaskGroup.__aexit__", 0) != 0 || i < 2 || func(f[i - 2]) != "handle_fanout"))
      return "a fan-out part under " + f[i - 1];
  }
  return "";
}

bool chained_part(const Stack& s) {
  for (size_t i = 1; i + 1 < s.frames.size(); ++i)
    if (is_task(s.frames[i]) && func(s.frames[i + 1]) == "fanout_part" &&
        s.frames[i - 1].rfind("TaskGroup.__aexit__", 0) == 0)
      return true;
  return false;
}

std::string joined(const Stack& s) {
  std::string out;
  for (const auto& f : s.frames) out += (out.empty() ? "" : ";") + f;
  return out;
}

// The sampled profile of a speedscope file, as stacks of frame names.
std::vector<Stack> speedscope_stacks(const std::string& text) {
  const json j = json::parse(text);
  const json& frames = j.at("shared").at("frames");
  const json& prof = j.at("profiles").at(0);
  std::vector<Stack> out;
  for (size_t i = 0; i < prof.at("samples").size(); ++i) {
    Stack s;
    for (const auto& f : prof.at("samples")[i]) s.frames.push_back(frames.at(f.get<size_t>()).at("name"));
    s.us = prof.at("weights")[i].get<double>() / 1e3;
    out.push_back(std::move(s));
  }
  return out;
}

e2e::Output record(e2e::Service& svc, const std::string& seconds, const std::string& format,
                   const std::string& path, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {e2e::tool(), "record", "-p", svc.pid(), "-d", seconds + "s",
                                   "-f", format, "-o", path};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return e2e::run(argv, 300s);
}

// The service's SIGUSR2 line: its counters now.
json counters(e2e::Service& svc) {
  svc.app.signal(SIGUSR2);
  const auto line = svc.app.wait_prefix("{\"counters\"", 60s);
  return line ? json::parse(*line).at("counters") : json::object();
}

}  // namespace

TEST(Lineage, NoRequestTaskIsProfiledInsideAnotherRequestsTaskGroup) {
  e2e::Service svc;
  ASSERT_TRUE(svc.ready()) << svc.app.stderr_text();
  const std::string out = "/tmp/asynctrace_lineage_" + svc.pid() + ".folded";
  const auto rec = record(svc, "6", "folded", out);
  ASSERT_EQ(rec.exit_code, 0) << rec.err;
  const std::string scope = "/tmp/asynctrace_lineage_" + svc.pid() + ".speedscope.json";
  const auto rec2 = record(svc, "3", "speedscope", scope);
  ASSERT_EQ(rec2.exit_code, 0) << rec2.err;
  const json truth = svc.truth();
  // The premise: addresses were reused (a part's id was later a request's).
  ASSERT_GT(truth.at("reused_ids").get<int>(), 0) << truth.dump();
  for (const auto& [what, stacks] : {std::pair{std::string("folded"), stacks_of(e2e::read_file(out))},
                                     std::pair{std::string("speedscope"), speedscope_stacks(e2e::read_file(scope))}}) {
    SCOPED_TRACE(what);
    ASSERT_FALSE(stacks.empty());
    int bad = 0, parts = 0;
    std::string first_bad;
    for (const Stack& s : stacks) {
      if (chained_part(s)) ++parts;
      const std::string why = impossible(s);
      if (why.empty()) continue;
      if (!bad++) first_bad = why + ": " + joined(s);
    }
    EXPECT_EQ(bad, 0) << bad << " of " << stacks.size() << " stacks impossible, e.g. " << first_bad;
    // Not vacuous: fan-out parts were seen inside their TaskGroup.
    EXPECT_GT(parts, 0);
  }
  std::remove(scope.c_str());
  std::remove(out.c_str());
}

TEST(Lineage, DefaultProfileMergesRequestsAndShowsTheBlockingCallAsOneTower) {
  e2e::Service svc;
  ASSERT_TRUE(svc.ready()) << svc.app.stderr_text();
  const std::string base = "/tmp/asynctrace_readable_" + svc.pid();
  const json before = counters(svc);
  const auto rec = record(svc, "6", "folded", base + ".folded");
  const json after = counters(svc);
  ASSERT_EQ(rec.exit_code, 0) << rec.err;
  ASSERT_FALSE(before.empty());
  ASSERT_FALSE(after.empty());
  const std::string text = e2e::read_file(base + ".folded");
  const auto stacks = stacks_of(text);

  // Few stacks: requests merge (Task-N), frames are functions, not lines.
  // Counted: the task structure (each stack down to its innermost task
  // frame), and the stacks wide enough to see (0.5% of the total; on a slow
  // machine more steps are sampled, in more places, each a sliver).
  ASSERT_GT(stacks.size(), 0u);
  double total_us = 0;
  for (const Stack& s : stacks) total_us += s.us;
  std::set<std::string> task_shapes;
  size_t visible = 0;
  for (const Stack& s : stacks) {
    size_t last_task = 0;
    for (size_t i = 0; i < s.frames.size(); ++i)
      if (is_task(s.frames[i])) last_task = i;
    task_shapes.insert(joined(Stack{{s.frames.begin(), s.frames.begin() + last_task + 1}, 0}));
    if (s.us >= 0.005 * total_us) ++visible;
  }
  EXPECT_LT(task_shapes.size(), 20u) << text;
  EXPECT_LT(visible, 60u) << text;
  EXPECT_EQ(text.find("Task-1"), std::string::npos) << "task names keep their digits:\n" << text;
  EXPECT_EQ(text.find(".py:"), std::string::npos) << "frames carry lines:\n" << text;

  // block_loop is one tower: every stack through it shares one path from the
  // root down to it, and it holds the time the service measured inside it.
  std::set<std::string> paths;
  double block_us = 0;
  for (const Stack& s : stacks) {
    for (size_t i = 0; i < s.frames.size(); ++i) {
      if (func(s.frames[i]) != "block_loop") continue;
      paths.insert(joined(Stack{{s.frames.begin(), s.frames.begin() + i + 1}, 0}));
      block_us += s.us;
      break;
    }
  }
  ASSERT_EQ(paths.size(), 1u) << "block_loop split into towers:\n" << text;
  // The service's own measure over the window around the recording, scaled to
  // the recording's share of that window (attaching takes a while).
  const double window_s = after.at("at_s").get<double>() - before.at("at_s").get<double>();
  const double measured_s =
      after.at("block").at("total_s").get<double>() - before.at("block").at("total_s").get<double>();
  ASSERT_GT(measured_s, 0) << before.dump() << after.dump();
  const double expected_s = measured_s * std::min(1.0, 6.0 / window_s);
  const double got_s = block_us / 1e6;
  EXPECT_GT(got_s, 0.5 * expected_s) << "measured " << measured_s << " s in " << window_s << " s";
  // Never more than happened (one call may straddle the window's edge; a
  // sampled step's time is shared by its samples, so a little of the code
  // around the call may count too).
  EXPECT_LT(got_s, 1.1 * measured_s + 0.35) << "measured " << measured_s << " s in " << window_s << " s";

  // SVG and HTML titles say what the width is.
  for (const std::string fmt : {"svg", "html"}) {
    const std::string path = base + "." + fmt;
    const auto r = record(svc, "2", fmt, path);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string doc = e2e::read_file(path);
    EXPECT_TRUE(std::regex_search(doc, std::regex("width = time inside task steps: [0-9.]+ m?s of a [0-9.]+ s recording")))
        << doc.substr(0, 2000);
  }
  // Per task: every task keeps its name, digits included.
  const auto per_task = record(svc, "2", "folded", base + ".task.folded", {"--group-tasks", "task", "--lines"});
  ASSERT_EQ(per_task.exit_code, 0) << per_task.err;
  const std::string detail = e2e::read_file(base + ".task.folded");
  EXPECT_TRUE(std::regex_search(detail, std::regex(R"(\[task\] Task-[0-9]+;)"))) << detail;
  EXPECT_TRUE(std::regex_search(detail, std::regex(R"(\.py:[0-9]+\))"))) << detail;
  svc.truth();
  for (const char* ext : {".folded", ".task.folded"}) std::remove((base + ext).c_str());
}
