// SPDX-License-Identifier: Apache-2.0
// The command line as a pure function: argv -> Options (or help text, or a
// usage error). Unit-tested without root or kernel.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace asynctrace {

enum class Command { Pstree, Ps, Stats, Attach, Run, Top, Slow, Record, Agent, Features, Version };
enum class Format { Text, Json };

struct Options {
  Command command = Command::Version;
  pid_t pid = 0;
  Format format = Format::Text;
  bool verbose = false;
  std::chrono::milliseconds timeout{2000};  // wait for the runtime's replay
  // Unprepared CPython 3.14+ targets (cmd/inject.h): how long to wait for the
  // injected runtime to load (--timeout if given, else 5s), or never inject.
  std::chrono::milliseconds inject_timeout{5000};
  bool no_inject = false;
  uint32_t max_tasks = 0;                    // tasks map capacity (0 = default)
  std::chrono::milliseconds duration{0};    // attach: 0 = until interrupted or the process exits
  std::vector<std::string> run_argv;       // run: the command to launch
  std::string python_dir;                  // run: override of <exe dir>/python
  // top
  std::chrono::milliseconds interval{1000};  // refresh period
  std::string sort = "busy";                 // column to sort by (descending, name ascending)
  std::string name_filter;                   // only tasks whose name contains this
  uint32_t iterations = 0;                   // snapshots to print, 0 = until interrupted
  std::chrono::milliseconds stuck{10000};    // warn about tasks awaiting one thing longer
  std::string top_by = "coroutine";          // rows: "coroutine" (all tasks of a coroutine summed) or "task"
  // slow
  std::chrono::milliseconds threshold{50};
  // record
  std::string output;                      // -o FILE ("-" = stdout)
  std::string prof_format = "folded";      // folded, speedscope, svg, html, pprof
  std::string mode = "cpu";                // cpu or wall
  std::string group_tasks = "name";        // name (digits folded), coroutine, task (each name as is)
  bool lines = false;                      // frames per line (file:line) instead of per function
  bool long_format = false;                // ps --long: timing columns and warnings
  bool timing = false;                     // attach --timing: hold timing__on too
  // agent
  std::string listen_host = "127.0.0.1";   // --listen HOST:PORT (metrics endpoint)
  uint16_t listen_port = 9464;             // 0: any free port (printed)
  bool no_listen = false;                  // --listen none: no endpoint
  bool cleanup = false;                    // --cleanup: remove the agent's pins and exit
  std::chrono::milliseconds scan{2000};    // how often to look for new probe libraries
  std::vector<std::string> library_prefixes;  // attach only libraries under these paths
  std::vector<std::string> libraries;      // probe libraries to attach at start (before any process maps them)
  // agent: periodic profiles (docs/agent.md); off unless a directory or a push URL is given
  std::string profile_dir;                 // --profile-dir: DIR/<pid>-<comm>/<UTC time>.<ext>
  std::string profile_push;                // --profile-push: Pyroscope-compatible ingest URL, as given
  std::string push_host;                   // parsed from it
  uint16_t push_port = 80;
  std::string push_path = "/ingest";
  std::chrono::milliseconds profile_every{60000};     // one recording per process this often
  std::chrono::milliseconds profile_duration{10000};  // each this long (< profile_every)
  std::string profile_format = "pprof";   // of the files in profile_dir
  std::string profile_mode = "cpu";       // cpu or wall
  uint32_t profile_keep = 10;             // files kept per process directory
  // record: also write the profile as pprof here (the agent pushes it)
  std::string also_pprof;
};

// "127.0.0.1:9464", "[::1]:9464", "localhost:0" -> host and port; `loopback`
// says whether the host is a loopback address. nullopt on garbage.
struct ListenAddress {
  std::string host;
  uint16_t port = 0;
  bool loopback = false;
};
std::optional<ListenAddress> parse_listen(const std::string& text);

// "http://127.0.0.1:4040/ingest" -> host, port (80 if absent), path ("/"
// if absent), loopback as parse_listen says. Plain http only; nullopt on
// garbage (https, user info, a query or fragment).
struct PushUrl {
  std::string host;
  uint16_t port = 80;
  std::string path = "/";
  bool loopback = false;
};
std::optional<PushUrl> parse_push_url(const std::string& text);

struct ParseResult {
  std::optional<Options> options;  // set when a command should run
  int exit_code = 0;               // when options is empty: 0 (help) or 2 (usage error)
  std::string out;                 // help text for stdout
  std::string err;                 // one-line error for stderr
};

ParseResult parse_cli(const std::vector<std::string>& args);  // args[0] is the program name

// "250ms", "2s", "1.5s", "3m", "1h"; the unit is required ("50" could be
// seconds or milliseconds: rejected, as are negatives, garbage and overflow).
std::optional<std::chrono::milliseconds> parse_duration(const std::string& text);

}  // namespace asynctrace
