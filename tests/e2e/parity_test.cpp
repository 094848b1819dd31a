// SPDX-License-Identifier: Apache-2.0
// Parity with CPython 3.14's own `python -m asyncio pstree` / `ps`
// (Lib/asyncio/tools.py, the anchor): on the same paused program both must
// draw the same tree and table, and both must agree with what the program
// reports about itself. Then the cases where the anchor fails: asynctrace's
// answer is checked against the program's truth, the anchor's is recorded.
// Registered only for the cp314 interpreters the build found (never skipped);
// the allowed differences are in docs/testing.md ("Parity with python -m asyncio").
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "harness.h"

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::string programs() { return e2e::source_dir() + "/tests/programs"; }

std::string truth_path(const std::string& stem) {
  return "/tmp/asynctrace-parity-" + std::to_string(getpid()) + "-" + stem + ".json";
}

// A tests/programs script under `asynctrace run`, paused with its truth written.
struct Target {
  Target(const std::string& py, const std::string& program, const std::vector<std::string>& extra = {},
         std::chrono::seconds ready_timeout = 60s)
      : truth(truth_path(program)), app(argv(py, program, truth, extra), programs()) {
    ready = app.wait_line("READY", ready_timeout);
  }
  ~Target() { unlink(truth.c_str()); }
  static std::vector<std::string> argv(const std::string& py, const std::string& program, const std::string& truth,
                                       const std::vector<std::string>& extra) {
    unlink(truth.c_str());
    std::vector<std::string> a = {e2e::tool(), "run", "--", py, programs() + "/" + program + ".py", truth};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  std::string pid() { return std::to_string(app.pid()); }
  json truth_json() { return json::parse(e2e::read_file(truth)); }
  // SIGUSR1: the program finishes its tasks and exits 0, as without us.
  void finish() {
    app.signal(SIGUSR1);
    EXPECT_EQ(app.wait_exit(120s, nullptr), 0) << app.stderr_text();
  }
  std::string truth;
  e2e::Program app;
  bool ready = false;
};

// `python3.14 -m asyncio pstree|ps PID`: the anchor.
e2e::Output anchor(const std::string& py, const char* view, const std::string& pid,
                   std::chrono::seconds timeout = 120s) {
  return e2e::run({py, "-m", "asyncio", view, pid}, timeout);
}

// What the anchor said when it failed: its last line (the error, or the
// exception ending a traceback).
std::string anchor_said(const e2e::Output& o) {
  if (o.exit_code == 0) return "";
  std::istringstream in(o.err.empty() ? o.out : o.err);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t") != std::string::npos) last = line;
  }
  return last.substr(0, 200);
}

// One line saying what the anchor did, for the test log.
std::string anchor_summary(const e2e::Output& o) {
  std::ostringstream s;
  s << "anchor: " << (o.exit_code == -1 ? "killed (timeout)" : "exit " + std::to_string(o.exit_code)) << " after "
    << o.seconds << " s" << (o.exit_code == 0 ? "" : ": " + anchor_said(o));
  return s.str();
}

void record(const std::string& line) {
  std::cerr << "[ " << line << " ]\n";
  ::testing::Test::RecordProperty("anchor", line);
}

// (tid, task id, awaiter id) rows of a `ps` table, header skipped. The ids
// are the tasks' addresses (id() in Python) on both sides.
using Row = std::tuple<std::string, std::string, std::string>;
std::set<Row> table_edges(const std::string& text) {
  std::set<Row> out;
  std::istringstream in(text);
  std::string line;
  for (int n = 0; std::getline(in, line); ++n) {
    if (n < 2) continue;
    std::istringstream words(line);
    std::string tid, id, w, last;
    words >> tid >> id;
    while (words >> w) last = w;
    out.insert({tid, id, last});
  }
  return out;
}

std::set<Row> json_edges(const json& doc) {
  std::set<Row> out;
  for (const auto& t : doc["tasks"]) {
    const std::string tid = std::to_string(t["tid"].get<long long>()), id = t["id"];
    if (t["awaited_by"].empty()) out.insert({tid, id, "0x0"});
    for (const auto& a : t["awaited_by"]) out.insert({tid, id, a["id"].get<std::string>()});
  }
  return out;
}

std::string head(const std::string& s) { return s.substr(0, 4000); }

// The same paused program through both tools; both against its truth.
void same_views(const std::string& py, const std::string& program) {
  ASSERT_EQ(geteuid(), 0u) << "the parity tests load BPF and ptrace the target: run them as root";
  Target t(py, program);
  ASSERT_TRUE(t.ready) << "program never got ready: " << t.app.stderr_text();
  const std::string pid = t.pid();

  const e2e::Output py_tree = anchor(py, "pstree", pid), py_ps = anchor(py, "ps", pid);
  ASSERT_EQ(py_tree.exit_code, 0) << anchor_summary(py_tree);
  ASSERT_EQ(py_ps.exit_code, 0) << anchor_summary(py_ps);
  const e2e::Output tree = e2e::run({e2e::tool(), "pstree", "-p", pid});
  const e2e::Output js = e2e::run({e2e::tool(), "pstree", "-p", pid, "--format", "json"});
  const e2e::Output ps = e2e::run({e2e::tool(), "ps", "-p", pid});
  ASSERT_EQ(tree.exit_code, 0) << tree.err;
  ASSERT_EQ(js.exit_code, 0) << js.err;
  ASSERT_EQ(ps.exit_code, 0) << ps.err;
  std::cerr << "[ pstree: anchor " << py_tree.seconds << " s, asynctrace " << tree.seconds << " s ]\n";

  // The tree: the same nodes under the same parents (siblings in any order).
  const auto want_tree = e2e::tree_paths(e2e::expected_view(t.truth, "pstree"));
  EXPECT_EQ(e2e::tree_paths(tree.out), e2e::tree_paths(py_tree.out))
      << "asynctrace:\n" << head(tree.out) << "\npython -m asyncio:\n" << head(py_tree.out);
  EXPECT_EQ(e2e::tree_paths(py_tree.out), want_tree) << "the anchor disagrees with the program's truth";
  EXPECT_EQ(e2e::tree_paths(tree.out), want_tree) << "asynctrace disagrees with the program's truth";

  // The table: the same header and the same rows (in any order).
  const std::string want_ps = e2e::expected_view(t.truth, "ps");
  EXPECT_EQ(e2e::sorted_lines(ps.out, 2), e2e::sorted_lines(py_ps.out, 2))
      << "asynctrace:\n" << head(ps.out) << "\npython -m asyncio:\n" << head(py_ps.out);
  EXPECT_EQ(e2e::sorted_lines(py_ps.out, 2), e2e::sorted_lines(want_ps, 2));
  EXPECT_EQ(ps.out.substr(0, ps.out.find('\n', ps.out.find('\n') + 1)),
            py_ps.out.substr(0, py_ps.out.find('\n', py_ps.out.find('\n') + 1)));

  // The JSON: the anchor's threads, task ids and await edges, and the truth.
  const json doc = json::parse(js.out);
  EXPECT_EQ(json_edges(doc), table_edges(py_ps.out));
  e2e::compare_json(t.truth_json(), doc);
  t.finish();
}

// 100,000 pending tasks in one thread: the anchor stops at 2^16 tasks per
// thread ("Task list appears corrupted"); asynctrace must see all of them.
void many_tasks_in_one_thread(const std::string& py) {
  ASSERT_EQ(geteuid(), 0u);
  Target t(py, "many_tasks", {"100000"}, 180s);
  ASSERT_TRUE(t.ready) << t.app.stderr_text();
  const std::string pid = t.pid();
  const e2e::Output js = e2e::run({e2e::tool(), "pstree", "-p", pid, "--format", "json"}, 300s);
  ASSERT_EQ(js.exit_code, 0) << js.err;
  std::cerr << "[ asynctrace pstree --format json: " << js.seconds << " s ]\n";
  const json truth = t.truth_json();
  ASSERT_EQ(truth["tasks"].size(), 100001u);
  e2e::compare_json(truth, json::parse(js.out));
  const e2e::Output tree = e2e::run({e2e::tool(), "pstree", "-p", pid}, 300s);
  ASSERT_EQ(tree.exit_code, 0) << tree.err;
  EXPECT_EQ(e2e::tree_paths(tree.out), e2e::tree_paths(e2e::expected_view(t.truth, "pstree")));

  const e2e::Output py_tree = anchor(py, "pstree", pid, 600s);
  record(anchor_summary(py_tree));
  EXPECT_NE(py_tree.exit_code, 0) << "CPython's tool read 100,001 tasks of one thread: its 65,536 limit is gone?";
  t.finish();
}

// Under heavy task turnover (tests/programs/turnover.py) every one-shot view
// of asynctrace is a consistent snapshot: the fixed part exactly as the truth
// says, at most one batch of churn tasks, each awaited by the churner only.
// The anchor reads memory the process is changing; its failures are counted.
constexpr size_t kTurnoverBatch = 1000;  // churn tasks per gather: the anchor fails most runs

void check_turnover(const json& truth, const json& doc) {
  std::map<std::string, const json*> got;
  for (const auto& t : doc["tasks"]) got[t["id"]] = &t;
  std::string churner;
  for (const auto& want : truth["tasks"]) {
    const std::string name = want["name"];
    if (name.rfind("churn-", 0) == 0) continue;
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(want["id"])) << "missing";
    const json& t = *got[want["id"]];
    EXPECT_EQ(t["name"], want["name"]);
    got.erase(want["id"]);
    if (name == "churner") {  // its frames depend on the moment
      churner = want["id"];
      continue;
    }
    EXPECT_EQ(t["stack"].size(), want["stack"].size()) << t["stack"].dump();
    for (size_t i = 0; i < std::min(t["stack"].size(), want["stack"].size()); ++i) {
      EXPECT_EQ(t["stack"][i]["function"], want["stack"][i]["function"]);
      EXPECT_EQ(t["stack"][i]["line"], want["stack"][i]["line"]);
    }
    std::set<std::string> want_by(want["awaited_by"].begin(), want["awaited_by"].end()), got_by;
    for (const auto& a : t["awaited_by"]) got_by.insert(a["id"].get<std::string>());
    EXPECT_EQ(got_by, want_by);
  }
  ASSERT_FALSE(churner.empty()) << "no churner in the truth";
  EXPECT_LE(got.size(), kTurnoverBatch) << "more churn tasks than one batch";
  for (const auto& [id, t] : got) {
    EXPECT_EQ((*t)["name"].get<std::string>().rfind("churn-", 0), 0u) << (*t)["name"];
    for (const auto& a : (*t)["awaited_by"]) EXPECT_EQ(a["id"], churner) << (*t)["name"];
  }
  EXPECT_TRUE(doc["complete"].get<bool>());
}

void high_turnover(const std::string& py) {
  ASSERT_EQ(geteuid(), 0u);
  Target t(py, "turnover", {std::to_string(kTurnoverBatch)});
  ASSERT_TRUE(t.ready) << t.app.stderr_text();
  const json truth = t.truth_json();
  size_t truth_churn = 0;  // churn tasks in the truth (none if taken between two batches)
  for (const auto& task : truth["tasks"]) truth_churn += task["name"].get<std::string>().rfind("churn-", 0) == 0;
  const std::string pid = t.pid();
  constexpr int kRuns = 20;
  int py_ok = 0, py_wrong = 0;
  std::map<std::string, int> py_errors;
  size_t churn_min = SIZE_MAX, churn_max = 0;
  for (int i = 0; i < kRuns; ++i) {
    SCOPED_TRACE("run " + std::to_string(i));
    const e2e::Output js = e2e::run({e2e::tool(), "pstree", "-p", pid, "--format", "json"});
    ASSERT_EQ(js.exit_code, 0) << js.err;
    const json doc = json::parse(js.out);
    check_turnover(truth, doc);
    const size_t churn = doc["tasks"].size() - (truth["tasks"].size() - truth_churn);
    churn_min = std::min(churn_min, churn);
    churn_max = std::max(churn_max, churn);
    const e2e::Output py_tree = anchor(py, "pstree", pid);
    if (py_tree.exit_code != 0) {
      ++py_errors[(py_tree.exit_code == -1 ? "timeout" : "exit " + std::to_string(py_tree.exit_code)) + ": " +
                  anchor_said(py_tree).substr(0, 160)];
      continue;
    }
    // A tree it printed: are the 8 keepers and their group in it?
    size_t keepers = 0, pos = 0;
    while ((pos = py_tree.out.find("(T) keeper-", pos)) != std::string::npos) ++keepers, ++pos;
    (keepers == 8 && py_tree.out.find("(T) keepers\n") != std::string::npos ? py_ok : py_wrong)++;
  }
  std::ostringstream line;
  line << "anchor on high turnover, " << kRuns << " runs: " << py_ok << " complete trees, " << py_wrong
       << " trees without every keeper, " << (kRuns - py_ok - py_wrong) << " failures";
  record(line.str());
  for (const auto& [what, n] : py_errors) record(std::to_string(n) + "x " + what);
  std::cerr << "[ asynctrace: " << kRuns << " consistent views, " << churn_min << "-" << churn_max
            << " churn tasks in each ]\n";
  t.finish();
}

// A loop blocked in Python code (tests/programs/cpu_bound.py): asynctrace
// sees the running task as running, with the frames of every task.
void blocked_loop(const std::string& py) {
  ASSERT_EQ(geteuid(), 0u);
  Target t(py, "cpu_bound");
  ASSERT_TRUE(t.ready) << t.app.stderr_text();
  const json truth = t.truth_json();
  const e2e::Output js = e2e::run({e2e::tool(), "pstree", "-p", t.pid(), "--format", "json"});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  const json doc = json::parse(js.out);
  e2e::compare_json(truth, doc);
  std::map<std::string, bool> running;
  for (const auto& w : truth["tasks"]) running[w["id"]] = w["running"].get<bool>();
  int n_running = 0;
  for (const auto& g : doc["tasks"]) {
    EXPECT_EQ(g["state"] == "running", running[g["id"]]) << g.dump();
    n_running += g["state"] == "running";
  }
  EXPECT_EQ(n_running, 1);
  // The anchor draws the same tree, with nothing saying that Task-1 runs.
  const e2e::Output py_tree = anchor(py, "pstree", t.pid());
  record(anchor_summary(py_tree) + "; its tree:\n" + head(py_tree.out));
  EXPECT_EQ(e2e::tree_paths(py_tree.out), e2e::tree_paths(e2e::expected_view(t.truth, "pstree")));
  t.finish();
}

// Event loops in three threads (tests/programs/threads_loops.py): asynctrace
// shows all of them. CPython 3.14.7's tool walks the thread list from the
// main thread's state, which is its last entry: it shows the main thread's
// tasks only, and those must be the truth's.
void loops_in_other_threads(const std::string& py) {
  ASSERT_EQ(geteuid(), 0u);
  Target t(py, "threads_loops");
  ASSERT_TRUE(t.ready) << t.app.stderr_text();
  const std::string pid = t.pid();
  const json truth = t.truth_json();
  const e2e::Output js = e2e::run({e2e::tool(), "pstree", "-p", pid, "--format", "json"});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  e2e::compare_json(truth, json::parse(js.out));
  const e2e::Output tree = e2e::run({e2e::tool(), "pstree", "-p", pid});
  ASSERT_EQ(tree.exit_code, 0) << tree.err;
  EXPECT_EQ(e2e::tree_paths(tree.out), e2e::tree_paths(e2e::expected_view(t.truth, "pstree")));

  const e2e::Output py_tree = anchor(py, "pstree", pid), py_ps = anchor(py, "ps", pid);
  ASSERT_EQ(py_tree.exit_code, 0) << anchor_summary(py_tree);
  ASSERT_EQ(py_ps.exit_code, 0) << anchor_summary(py_ps);
  json main_only = truth;
  main_only["tasks"] = json::array();
  for (const auto& task : truth["tasks"]) {
    if (task["tid"] == truth["pid"]) main_only["tasks"].push_back(task);
  }
  ASSERT_LT(main_only["tasks"].size(), truth["tasks"].size());
  const std::string main_path = t.truth + ".main";
  std::ofstream(main_path) << main_only.dump();
  EXPECT_EQ(e2e::tree_paths(py_tree.out), e2e::tree_paths(e2e::expected_view(main_path, "pstree")))
      << "CPython's tool sees loops of other threads now? threads_loops then belongs in SameViews.\n"
      << py_tree.out;
  unlink(main_path.c_str());
  const size_t rows = table_edges(py_ps.out).size(), all = json_edges(json::parse(js.out)).size();
  record("anchor on 3 loops in 3 threads: " + std::to_string(rows) + " of " + std::to_string(all) + " ps rows");
  t.finish();
}

// Every test here is registered at start-up, per cp314 interpreter.
class ParityCase : public ::testing::Test {
 public:
  explicit ParityCase(std::function<void()> body) : body_(std::move(body)) {}
  void TestBody() override { body_(); }

 private:
  std::function<void()> body_;
};

void add(const std::string& name, std::function<void()> body) {
  ::testing::RegisterTest("Parity", name.c_str(), nullptr, nullptr, __FILE__, __LINE__,
                          [body]() -> ParityCase* { return new ParityCase(body); });
}

// Not here: threads_loops (LoopsInOtherThreads below).
const std::vector<std::string> kPrograms = {"taskgroup_nested", "gather_nested", "await_tasks",
                                            "semaphore",        "shield_cancel", "eager_tasks",
                                            "many_tasks",       "idle_sleep"};

const bool kRegistered = [] {
  for (const auto& [tag, py] : e2e::built_pythons()) {
    if (tag != "cp314") continue;
    for (const auto& program : kPrograms) {
      add("SameViews_" + program + "_" + tag, [py = py, program] { same_views(py, program); });
    }
    add("HundredThousandTasksInOneThread_" + tag, [py = py] { many_tasks_in_one_thread(py); });
    add("HighTurnover_" + tag, [py = py] { high_turnover(py); });
    add("BlockedLoop_" + tag, [py = py] { blocked_loop(py); });
    add("LoopsInOtherThreads_" + tag, [py = py] { loops_in_other_threads(py); });
  }
  return true;
}();

}  // namespace
