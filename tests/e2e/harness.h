// SPDX-License-Identifier: Apache-2.0
// Process plumbing for the e2e tier: spawn traced programs and the tool.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace e2e {

struct Output {
  int exit_code = -1;  // -1: killed by a signal
  std::string out, err;
  double seconds = 0;
};

// Runs argv to completion, capturing stdout and stderr.
Output run(const std::vector<std::string>& argv, std::chrono::seconds timeout = std::chrono::seconds(60));

// A background program whose stdout is read line by line.
class Program {
 public:
  explicit Program(const std::vector<std::string>& argv, const std::string& cwd = "");
  ~Program();
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;

  pid_t pid() const { return pid_; }
  // Waits for a stdout line equal to `line`; false on timeout or exit.
  bool wait_line(const std::string& line, std::chrono::milliseconds timeout);
  // Waits for a stdout line starting with `prefix`; returns the whole line.
  std::optional<std::string> wait_prefix(const std::string& prefix, std::chrono::milliseconds timeout);
  void signal(int sig);
  // Waits for exit; returns the exit status (or -signal) and all stdout.
  int wait_exit(std::chrono::seconds timeout, std::string* all_out);
  const std::string& stderr_text();

 private:
  void pump(int timeout_ms);
  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  std::string out_, err_;
  size_t scanned_ = 0;
  bool exited_ = false;
  int status_ = 0;
};

std::string read_file(const std::string& path);
std::string source_dir();
std::string binary_dir();

// Python interpreters the runtime was built for: (tag, interpreter path).
std::vector<std::pair<std::string, std::string>> built_pythons();

// Order-insensitive form of a pstree: each line as the path of labels from its
// root, sorted. Children order depends on task enumeration, not structure.
std::vector<std::string> tree_paths(const std::string& text);
std::vector<std::string> sorted_lines(const std::string& text, size_t skip_header);

// Polls `done` every 20 ms until it is true or `timeout` passes; returns its last value.
bool poll_until(const std::function<bool()>& done, std::chrono::milliseconds timeout);

// Process state letter from /proc/PID/stat ('R', 'S', 'Z', ...; 0 if gone).
char proc_state(pid_t pid);

// What the kernel holds of asynctrace for one traced process, from bpftool:
// our BPF programs whose .rodata target_tgid is `pid` (any asynctrace build on
// the machine, so other test runs do not count), links of those programs, and
// pins (/sys/fs/bpf/asynctrace/PID and its maps, /run/asynctrace/PID.lock).
struct KernelHold {
  int progs = 0, links = 0, pins = 0;
  std::vector<int> prog_ids;
  std::map<std::string, int> link_types;  // bpftool's link type ("uprobe_multi", "perf_event") -> count
  std::string detail;  // what was found, for failure messages
  bool empty() const { return progs == 0 && links == 0 && pins == 0; }
};
KernelHold kernel_hold(pid_t pid);
// Polls kernel_hold until it is empty: a one-shot view leaves its detach to
// a child that finishes one kernel grace period after the command exits.
KernelHold wait_kernel_released(pid_t pid, std::chrono::seconds timeout = std::chrono::seconds(30));

// Ids of the loaded BPF programs named `name` (e.g. "at_noop", the no-op
// program of semaphore holds and replay requests).
std::set<int> prog_ids_named(const std::string& name);
// Links of the programs in `prog_ids`: link id -> bpftool's type.
std::map<int, std::string> links_of(const std::set<int>& prog_ids);
// Uprobes on an asynctrace probe library the kernel lists by name: `bpftool
// perf` entries (perf-event uprobes whose event fd a process holds) and
// tracefs uprobe_events lines (libbpf's legacy uprobes). "" if none.
std::string asynctrace_uprobes();

// USDT semaphores of the asynctrace runtime that `pid` maps, by probe name,
// read from /proc/PID/mem at the addresses its .note.stapsdt gives
// (readelf). Empty if the process maps no runtime.
std::map<std::string, int> usdt_semaphores(pid_t pid);

// ---- shared by the suites -------------------------------------------------

// The tool's `pstree --format json` against a program's own truth
// (tests/programs/_truth.py): same tasks, names, threads, stacks, awaiters.
void compare_json(const nlohmann::json& truth, const nlohmann::json& got);
// pstree (JSON and text) and ps of `pid` against the truth file (the text
// views as tests/e2e/expect.py renders them from it).
void check_views(const std::string& truth_path, pid_t pid);
// What Python 3.14's `python -m asyncio pstree`/`ps` print for a truth file,
// rendered by tests/e2e/expect.py (view: "pstree" or "ps").
std::string expected_view(const std::string& truth_path, const char* view);

std::string tool();    // this build's asynctrace
std::string python();  // the first interpreter the runtime was built for

// Line number (1-based) of the first line of `file` containing `text`; -1 if none.
int line_of(const std::string& file, const std::string& text);

// tests/programs/time_shapes.py under `asynctrace run`: tasks with known
// time shapes that measure their own steps.
struct Shapes {
  explicit Shapes(const std::string& py, int seconds = 120);
  static std::string program();  // the script's path
  bool ready(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  std::string pid();
  // SIGUSR1: the program stops and prints what it measured of itself.
  nlohmann::json truth();
  Program app;
};

// tests/programs/aiohttp_service.py (Debian's python3.11 and aiohttp) under
// `asynctrace run`, or untraced with `traced` false: a real aiohttp service
// with its own local load (request tasks, TaskGroup fan-outs, a handler that
// blocks the loop), reporting what it measured of itself.
struct Service {
  explicit Service(bool traced = true, int seconds = 300, const std::map<std::string, std::string>& env = {});
  static std::string program();  // the script's path
  static std::string interpreter();  // /usr/bin/python3.11
  bool ready(std::chrono::milliseconds timeout = std::chrono::seconds(60));
  std::string pid();
  // SIGUSR1: the load stops, the program prints what it measured and exits.
  nlohmann::json truth();
  Program app;
};

// The last non-empty line of NDJSON output, parsed.
nlohmann::json last_ndjson(const std::string& out);
// The row of task `name` in a `top --format json` frame; null if none.
const nlohmann::json* row(const nlohmann::json& frame, const std::string& name);
// Folded stacks: "frame;frame;... weight_us" lines -> weight per stack.
std::map<std::string, double> folded(const std::string& text);

// ---- the agent (agent_test.cpp) --------------------------------------------

extern const char* const kAgentPins;  // /sys/fs/bpf/asynctrace/agent
extern const char* const kAgentLock;  // /run/asynctrace/agent.lock
extern const std::vector<std::string> kAgentPinnedMaps;  // file names, sorted

// A traced tests/programs/agent_work.py.
struct Work {
  // python_dir: where `run` finds the runtime ("" = the build's).
  Work(int workers, int steps, int idle, int linger, const std::string& python_dir = "");
  static std::vector<std::string> argv(int workers, int steps, int idle, int linger, const std::string& dir);
  bool ready(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  nlohmann::json truth();
  std::string pid() const;
  Program app;
};

// `asynctrace agent` on a free loopback port, attaching only this build's
// probe libraries (--library-prefix). `extra`: "-v" goes before the command,
// the rest after it.
struct Agent {
  explicit Agent(const std::vector<std::string>& extra = {});
  static std::vector<std::string> argv(const std::vector<std::string>& extra);
  // Waits for the "agent maps=... metrics=URL" line; returns it ("" if none).
  std::string started(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // GET /metrics ("" on failure).
  std::string scrape(bool openmetrics = true) const;
  Program app;
  int port = 0;
};

// asynctrace_tasks{pid=PID,...,state=STATE} of a scrape, -1 if absent.
double tasks_in_state(const std::string& text, const std::string& pid, const std::string& state);
// Files in kAgentPins, sorted.
std::vector<std::string> agent_pin_files();
// `asynctrace agent --cleanup`: pins a run killed half-way left.
void cleanup_agent_leftovers();

}  // namespace e2e
