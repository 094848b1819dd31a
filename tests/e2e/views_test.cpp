// SPDX-License-Identifier: Apache-2.0
// The windowed and live views (ps --long, top) on the aiohttp service
// (tests/programs/aiohttp_service.py): what they show is what the service
// measured of itself.
#include <gtest/gtest.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

using namespace std::chrono_literals;
using nlohmann::json;

namespace {

std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> w;
  for (std::string s; in >> s;) w.push_back(s);
  return w;
}

// Seconds in a `ps --long` "waiting" cell ("350.0ms", "1.01s", "2.0m"); -1
// for "-" and "<0.5s" (no wait, or one too short to print).
double cell_seconds(const std::string& cell) {
  if (cell.empty() || cell == "-" || cell[0] == '<') return -1;
  const double v = std::stod(cell);
  if (cell.size() > 2 && cell.compare(cell.size() - 2, 2, "ms") == 0) return v / 1e3;
  if (cell.size() > 2 && cell.compare(cell.size() - 2, 2, "us") == 0) return v / 1e6;
  if (cell.back() == 'm') return v * 60;
  if (cell.back() == 'h') return v * 3600;
  return v;
}

}  // namespace

bool is_part(const std::string& name) { return name.rfind("part-", 0) == 0; }

// ps --long shows the tasks alive when its one-second window ends, with
// their ages and waits up to then: a fan-out part (task part-N, it lives
// inside one fan-out, so at most as long as the longest fan-out the service
// measured) is never shown older or waiting longer than that. Before, the
// rows were the tasks of the window's start, parts long ended shown
// "waiting 1.01s". No loop blocking here: fan-outs then last PART_MS and a
// little, far from the window's second.
TEST(Views, PsLongShowsTheTasksOfTheWindowsEndWithRealWaits) {
  e2e::Service svc(true, 300, {{"BLOCK_PCT", "0"}});
  ASSERT_TRUE(svc.ready()) << svc.app.stderr_text();
  struct Look {
    std::string what, text;
  };
  std::vector<Look> looks;
  int parts_seen = 0;
  for (int round = 0; round < 6 && (round < 2 || parts_seen == 0); ++round) {
    const auto text = e2e::run({e2e::tool(), "ps", "-p", svc.pid(), "--long"}, 120s);
    ASSERT_EQ(text.exit_code, 0) << text.err;
    looks.push_back({"text", text.out});
    const auto js = e2e::run({e2e::tool(), "ps", "-p", svc.pid(), "--long", "--format", "json"}, 120s);
    ASSERT_EQ(js.exit_code, 0) << js.err;
    looks.push_back({"json", js.out});
    const json j = json::parse(js.out);
    for (const auto& t : j.at("tasks")) parts_seen += is_part(t.at("name").get<std::string>());
  }
  const json truth = svc.truth();
  const double bound_s = truth.at("fanout_max_s").get<double>() + 0.05;  // + clock granularity
  ASSERT_GT(truth.at("requests").at("/fanout").get<int>(), 0);
  EXPECT_GT(parts_seen, 0) << "no fan-out part alive in any look";
  for (const Look& l : looks) {
    SCOPED_TRACE(l.what + " look:\n" + l.text);
    if (l.what == "json") {
      const json j = json::parse(l.text);
      for (const auto& t : j.at("tasks")) {
        if (!is_part(t.at("name").get<std::string>())) continue;
        ASSERT_TRUE(t.at("age_ns").is_number()) << t.dump();
        EXPECT_LE(t.at("age_ns").get<double>() / 1e9, bound_s) << t.dump();
        if (t.at("timing").is_object())
          EXPECT_LE(t.at("timing").at("waiting_ns").get<double>() / 1e9, bound_s) << t.dump();
      }
      continue;
    }
    // The rows, up to the blank line before the coroutine table: tid, task
    // id, task name, state, steps, busy, longest, waiting, ...
    std::istringstream in(l.text);
    for (std::string line; std::getline(in, line) && !line.empty();) {
      const auto w = words(line);
      if (w.size() >= 8 && is_part(w[2])) EXPECT_LE(cell_seconds(w[7]), bound_s) << line;
    }
  }
}

namespace {

// A shell script in a tmux pane of `cols` x `rows` (a real terminal for
// the tool); the screen on demand; the session killed at the end.
struct Pane {
  Pane(const std::string& script, int cols, int rows)
      : name("asynctrace-e2e-" + std::to_string(getpid()) + "-" + std::to_string(++count)),
        file("/tmp/" + name + ".sh") {
    FILE* f = fopen(file.c_str(), "w");
    if (f) {
      fputs(script.c_str(), f);
      fclose(f);
    }
    // Retried: a tmux server whose last session just ended may refuse one.
    for (int i = 0; i < 5 && !started; ++i) {
      if (i) std::this_thread::sleep_for(200ms);
      started = e2e::run({"tmux", "new-session", "-d", "-s", name, "-x", std::to_string(cols), "-y",
                          std::to_string(rows), "sh " + file})
                    .exit_code == 0;
    }
  }
  ~Pane() {
    e2e::run({"tmux", "kill-session", "-t", name});
    unlink(file.c_str());
  }
  // joined: lines the terminal wrapped joined again (their real length).
  std::string screen(bool joined = false) {
    std::vector<std::string> argv = {"tmux", "capture-pane", "-p", "-t", name};
    if (joined) argv.insert(argv.begin() + 3, "-J");
    return e2e::run(argv).out;
  }
  bool wait_for(const std::string& text, std::chrono::milliseconds timeout) {
    return e2e::poll_until([&] { return screen().find(text) != std::string::npos; }, timeout);
  }
  void keys(const std::string& k) { e2e::run({"tmux", "send-keys", "-t", name, k}); }
  static inline int count = 0;
  std::string name, file;
  bool started = false;
};

// Runs `tool_args` in a pane; after it exits prints its exit code, the
// realtime it exited at and the terminal's icanon/echo flags, then waits.
std::string top_script(const std::string& tool_args) {
  return "trap '' INT\n" + e2e::tool() + " " + tool_args +
         "\necho \"EXIT=$? AT=$(date +%s.%N)\"\n"
         "echo \"STTY $(stty -a | tr -s ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)' | tr '\\n' ' ')END\"\n"
         "sleep 120\n";
}

double realtime_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

// Display columns of UTF-8 text (one per code point: the tool prints no
// wide characters of its own, and escapes the traced program's).
size_t columns(const std::string& line) {
  size_t n = 0;
  for (unsigned char c : line) n += (c & 0xC0) != 0x80;
  return n;
}

// After `key` in a drawn top: it exits 0 within `bound`, the terminal back
// in canonical mode with echo.
void expect_exit_on(Pane& pane, const std::string& key, double bound_s) {
  const double pressed = realtime_now();
  pane.keys(key);
  ASSERT_TRUE(pane.wait_for("END", 20s)) << pane.screen();
  const std::string screen = pane.screen();
  const auto at = screen.find("EXIT=");
  ASSERT_NE(at, std::string::npos) << screen;
  EXPECT_EQ(screen.substr(at, 7), "EXIT=0 ") << screen;
  const double exited = std::stod(screen.substr(screen.find("AT=", at) + 3));
  EXPECT_LT(exited - pressed, bound_s) << screen;
  const std::string stty = screen.substr(screen.find("STTY"), screen.find("END") - screen.find("STTY"));
  EXPECT_NE(stty.find(" icanon"), std::string::npos) << stty;
  EXPECT_NE(stty.find(" echo"), std::string::npos) << stty;
  EXPECT_EQ(stty.find("-icanon"), std::string::npos) << stty;
  EXPECT_EQ(stty.find("-echo "), std::string::npos) << stty;
}

}  // namespace

// In a terminal, q quits at once with exit 0, and so does Ctrl-C; either
// way the terminal is left in the mode it was in (top reads keys in
// non-canonical mode without echo).
TEST(Views, TopQuitsOnQAndRestoresTheTerminal) {
  const auto pythons = e2e::built_pythons();
  ASSERT_FALSE(pythons.empty());
  e2e::Shapes s(pythons.front().second);
  ASSERT_TRUE(s.ready()) << s.app.stderr_text();
  for (const std::string key : {"q", "C-c"}) {
    SCOPED_TRACE(key);
    // A 5 s interval: only the key can end it within the bound.
    Pane pane(top_script("top -p " + s.pid() + " -i 5s"), 120, 30);
    ASSERT_TRUE(pane.started);
    ASSERT_TRUE(pane.wait_for("loop busy", 60s)) << pane.screen();
    // 1 s on a quiet host; a loaded or emulated one gets slack.
    expect_exit_on(pane, key, 3.0);
  }
  s.truth();
  EXPECT_TRUE(e2e::wait_kernel_released(s.app.pid()).empty());
}

// At 80 columns no line is wider than the terminal, the header keeps every
// figure (wrapped), and the coroutine rows show where the busy loop's time
// goes: aiohttp 3.8 runs each request in a task of its own, whose coroutine
// is RequestHandler._handle_request (the handlers, handle_report the one
// that blocks, are awaited inside it). Key c switches to task rows.
TEST(Views, TopFitsEightyColumnsAndShowsTheBusyCoroutine) {
  e2e::Service svc;
  ASSERT_TRUE(svc.ready()) << svc.app.stderr_text();
  Pane pane(top_script("top -p " + svc.pid() + " -i 1s"), 80, 40);
  ASSERT_TRUE(pane.started);
  // The handler's row with a non-zero BUSY% (COROUTINE STEPS BUSY BUSY%
  // LONGEST ...); redrawn every second until one shows it.
  auto handler_busy = [](const std::string& screen) {
    std::istringstream in(screen);
    for (std::string line; std::getline(in, line);) {
      const auto w = words(line);
      if (line.find("_handle_request") != std::string::npos && w.size() >= 4 && w[3] != "0") return true;
    }
    return false;
  };
  std::string coro;
  const bool drawn = e2e::poll_until([&] { return handler_busy(coro = pane.screen(true)); }, 90s);
  pane.keys("c");
  const bool tasks = pane.wait_for("AWAITING", 30s);
  const std::string task_screen = pane.screen(true);
  pane.keys("q");
  EXPECT_TRUE(pane.wait_for("END", 20s)) << pane.screen();
  ASSERT_TRUE(drawn) << coro;
  EXPECT_TRUE(tasks) << task_screen;
  for (const std::string* screen : {static_cast<const std::string*>(&coro), &task_screen}) {
    std::istringstream in(*screen);
    for (std::string line; std::getline(in, line);) EXPECT_LE(columns(line), 80u) << line << "\n" << *screen;
    for (const char* field : {"asynctrace top - pid", "alive", "/s created", "/s completed", "loop busy", "steps/s",
                              "worst step"})
      EXPECT_NE(screen->find(field), std::string::npos) << field << "\n" << *screen;
  }
  const json truth = svc.truth();
  EXPECT_GT(truth.at("block").at("count").get<int>(), 0);
}

// JSON: the coroutine rows count every task of a coroutine, the service's
// short-lived request tasks included: their coroutine (aiohttp's
// RequestHandler._handle_request, which awaits handle_report) holds at
// least one blocking step the service measured (block_loop's shortest) and
// a non-zero share of an interval.
TEST(Views, TopCoroutineRowsCountTheShortLivedHandlers) {
  e2e::Service svc;
  ASSERT_TRUE(svc.ready()) << svc.app.stderr_text();
  // Frames until the handler's steps hold more than one BLOCK_MS (300 ms)
  // blocking step's worth (a slow host serves, so blocks, less often).
  e2e::Program top({e2e::tool(), "top", "-p", svc.pid(), "-i", "1s", "--format", "json"});
  double pct = 0, busy_ns = 0;
  std::string last;
  const auto end = std::chrono::steady_clock::now() + 120s;
  while (std::chrono::steady_clock::now() < end && (pct == 0 || busy_ns < 0.45e9)) {
    const auto line = top.wait_prefix("{", 10s);
    if (!line) continue;
    last = *line;
    const json f = json::parse(*line);
    ASSERT_TRUE(f.contains("coroutines")) << *line;
    for (const auto& c : f.at("coroutines"))
      if (c.at("coroutine").get<std::string>().find("_handle_request") != std::string::npos) {
        pct = std::max(pct, c.at("busy_pct").get<double>());
        busy_ns = std::max(busy_ns, c.at("busy_ns").get<double>());
      }
  }
  top.signal(SIGINT);
  EXPECT_EQ(top.wait_exit(30s, nullptr), 0) << top.stderr_text();
  const json truth = svc.truth();
  ASSERT_GT(truth.at("block").at("count").get<int>(), 0);
  EXPECT_GT(pct, 0) << last;
  // At least one blocking step (block_loop's shortest, as the service timed it).
  EXPECT_GE(busy_ns, 0.9 * truth.at("block").at("min_s").get<double>() * 1e9) << last;
}

// The stuck warning: a task awaiting an Event nobody sets warns; a task in
// asyncio.sleep, and main in asyncio.wait_for(stop.wait()) (and the
// stop.wait() task under it) do not; nor do the service's idle tasks.
TEST(Views, TopWarnsAboutTheStuckTaskNotAboutChosenWaits) {
  const auto pythons = e2e::built_pythons();
  ASSERT_FALSE(pythons.empty());
  e2e::Program app({e2e::tool(), "run", "--", pythons.front().second,
                    e2e::source_dir() + "/tests/programs/stuck_event.py", "300"});
  ASSERT_TRUE(app.wait_prefix("{\"ready\"", 30s)) << app.stderr_text();
  const std::string pid = std::to_string(app.pid());
  const auto top = e2e::run(
      {e2e::tool(), "top", "-p", pid, "-n", "2", "-i", "1s", "--stuck", "500ms", "--by", "task", "--format", "json"},
      120s);
  ASSERT_EQ(top.exit_code, 0) << top.err;
  const json last = e2e::last_ndjson(top.out);
  int stuck = 0;
  for (const auto& w : last.at("warnings")) {
    const std::string s = w.get<std::string>();
    stuck += s.find("task stuck ") == 0;
    EXPECT_EQ(s.find("napper"), std::string::npos) << s;
    EXPECT_EQ(s.find("tasks.py"), std::string::npos) << s;  // sleep, wait_for
    if (s.find("task stuck ") != 0) ADD_FAILURE() << "only 'stuck' is stuck: " << s;
  }
  EXPECT_EQ(stuck, 1) << last.dump();
  app.signal(SIGUSR1);
  EXPECT_EQ(app.wait_exit(30s, nullptr), 0) << app.stderr_text();

  e2e::Service svc;
  ASSERT_TRUE(svc.ready()) << svc.app.stderr_text();
  const auto stop = e2e::run(
      {e2e::tool(), "top", "-p", svc.pid(), "-n", "2", "-i", "1s", "--stuck", "500ms", "--format", "json"}, 120s);
  ASSERT_EQ(stop.exit_code, 0) << stop.err;
  const json frame = e2e::last_ndjson(stop.out);
  for (const auto& w : frame.at("warnings")) {
    const std::string s = w.get<std::string>();
    EXPECT_EQ(s.find("tasks.py"), std::string::npos) << s;
    EXPECT_EQ(s.find("locks.py"), std::string::npos) << s;  // stop.wait() under wait_for
  }
  svc.truth();
}

// docs/json.md names every key the JSON outputs have.
TEST(Views, JsonDocNamesEveryKey) {
  e2e::Service svc;
  ASSERT_TRUE(svc.ready()) << svc.app.stderr_text();
  const std::string doc = e2e::read_file(e2e::source_dir() + "/docs/json.md");
  std::vector<std::pair<std::string, std::string>> outputs;  // command, JSON text
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"pstree"}, {"ps"}, {"stats"}, {"ps", "--long"}, {"top", "-n", "1", "-i", "1s"}}) {
    std::vector<std::string> argv = {e2e::tool()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"-p", svc.pid(), "--format", "json"});
    const auto r = e2e::run(argv, 120s);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    outputs.emplace_back(args.front() + (args.size() > 1 ? " " + args[1] : ""), r.out);
  }
  svc.truth();
  std::set<std::string> missing;
  std::function<void(const json&)> walk = [&](const json& j) {
    if (j.is_object())
      for (const auto& [k, v] : j.items()) {
        if (doc.find("\"" + k + "\"") == std::string::npos && doc.find("`" + k + "`") == std::string::npos)
          missing.insert(k);
        walk(v);
      }
    else if (j.is_array())
      for (const auto& v : j) walk(v);
  };
  for (const auto& [cmd, text] : outputs) walk(cmd == "top" ? e2e::last_ndjson(text) : json::parse(text));
  EXPECT_TRUE(missing.empty()) << [&] {
    std::string s;
    for (const auto& k : missing) s += k + " ";
    return s;
  }();
}
