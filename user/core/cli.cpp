// SPDX-License-Identifier: Apache-2.0
#include "core/cli.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/escape.h"
#include "core/result.h"

namespace asynctrace {
namespace {

constexpr const char* kFormat314 =
    "Output format: text (the layout of Python 3.14's python -m asyncio pstree/ps) or json (docs/json.md)";

constexpr const char* kFooter = R"(EXIT CODES:
  0 ok, 1 internal error, 2 usage error, 3 no such process (or a zombie),
  4 not a Python process, 5 Python process without asynctrace probes (and
  the runtime could not be loaded into it), 6 insufficient privilege (needs
  root or CAP_BPF+CAP_PERFMON; root to load the runtime), 7 BPF/tracing
  unavailable, 8 runtime did not answer the attach in time, 9 process exited
  (or exec'd another program) while traced.

EXAMPLES:
  asynctrace run -- python3 app.py          # start app.py with dormant probes
  sudo asynctrace pstree -p 1234            # tree of tasks and who awaits them
                                            # (a CPython 3.14+ process started without
                                            # asynctrace: its runtime is loaded first)
  sudo asynctrace ps -p 1234                # one row per task and awaiter
  sudo asynctrace ps -p 1234 --format json  # the same as JSON (docs/json.md)
  sudo asynctrace top -p 1234               # live per-task busy/idle/steps
  sudo asynctrace slow -p 1234 -t 50ms      # steps that blocked the loop, with stacks
  sudo asynctrace record -p 1234 -d 30s -o app.svg -f svg   # task-aware flame graph
  sudo asynctrace agent                     # every process, metrics on 127.0.0.1:9464
)";

// The --pid every process command takes: a PID in help, not CLI11's
// "INT:INT in [1 - 4194304]".
CLI::Option* add_pid(CLI::App* cmd, Options& o, const char* what) {
  return cmd->add_option("-p,--pid", o.pid, what)
      ->required()
      ->type_name("PID")
      ->check(CLI::Range(1, 4194304).description(""));
}

// One of `names`; help says which in the option's description (CLI11
// would print "TEXT:{a,b}" in the names column, pushing the description
// onto a line of its own).
CLI::Validator one_of(std::vector<std::string> names) { return CLI::IsMember(std::move(names)).description(""); }

CLI::Option* add_duration(CLI::App* cmd, const char* names, std::string& text, const char* what) {
  return cmd->add_option(names, text, what)->type_name("DURATION");
}

// --timeout and --no-inject: every command that opens a session.
void add_timeout_options(CLI::App* cmd, Options& o, std::string& timeout) {
  add_duration(cmd, "--timeout", timeout,
               "How long to wait for the runtime to report its live tasks (default 2s) and, in an unprepared "
               "CPython 3.14+ process, to load (default 5s)");
  cmd->add_flag("--no-inject", o.no_inject,
                "Never load the runtime into a CPython 3.14+ process started without it (sys.remote_exec); "
                "exit 5 instead");
}

// `format_help`: what --format means for this command ("" = no --format:
// the command prints no view). --max-tasks sizes the task map of the tracer
// each of these commands attaches when no holder's maps answer.
void add_target_options(CLI::App* cmd, Options& o, std::string& fmt, std::string& timeout, const char* format_help) {
  add_pid(cmd, o, "Process to inspect");
  if (*format_help)
    cmd->add_option("-f,--format", fmt, format_help)
        ->type_name("FORMAT")
        ->check(one_of({"text", "json"}));
  add_timeout_options(cmd, o, timeout);
  cmd->add_option("--max-tasks", o.max_tasks,
                  "Capacity of the kernel's task map, 1 to 4194304 (default 131072); tasks beyond it are "
                  "counted, not shown")
      ->type_name("N")
      ->check(CLI::Range(1, 1 << 22).description(""));
}

// Optimal string alignment distance: insertions, deletions, substitutions
// and a swap of two neighbours ("pdi" -> "pid") each count one edit.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// " (did you mean 'X'?)" for the candidate nearest `word` when it is near
// enough to be a typo (at most 2 edits, and fewer than half its letters);
// "" otherwise.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  if (word.size() > 64) return "";
  std::string best;
  size_t best_d = 3;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d && d * 2 < c.size()) best = c, best_d = d;
  }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

std::vector<std::string> flag_names(const CLI::App* cmd) {
  std::vector<std::string> names;
  for (const CLI::Option* opt : cmd->get_options()) {
    for (const std::string& n : opt->get_lnames()) names.push_back("--" + n);
    for (const std::string& n : opt->get_snames()) names.push_back("-" + n);
  }
  return names;
}

// Flags take no value; options one, lists (repeatable) several.
bool takes_value(const CLI::Option* o) { return o->get_expected_max() > 0 && o->get_type_size_max() > 0; }

// The option `word` ("--pid", "--pid=7", "-p", "-p7", "-lv") names in
// `cmd`; null if none. *attached: the word carries the option's value.
const CLI::Option* find_flag(const CLI::App* cmd, const std::string& word, bool* attached) {
  const bool is_long = word.rfind("--", 0) == 0;
  const auto eq = word.find('=');
  *attached = eq != std::string::npos || (!is_long && word.size() > 2);
  const std::string name = is_long ? word.substr(2, eq == std::string::npos ? std::string::npos : eq - 2)
                                   : word.substr(1, 1);
  for (const CLI::Option* opt : cmd->get_options()) {
    const auto& names = is_long ? opt->get_lnames() : opt->get_snames();
    if (std::find(names.begin(), names.end(), name) == names.end()) continue;
    if (is_long || takes_value(opt) || word.size() == 2) return opt;
    // "-lv": every letter a flag of its own.
    for (size_t i = 2; i < word.size(); ++i) {
      bool known = false;
      for (const CLI::Option* other : cmd->get_options()) {
        const auto& s = other->get_snames();
        known |= !takes_value(other) && std::find(s.begin(), s.end(), std::string(1, word[i])) != s.end();
      }
      if (!known) return nullptr;
    }
    return opt;
  }
  return nullptr;
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// What CLI11 would misreport, checked word by word before it parses: an
// unknown command or flag (named, with the nearest real one; before any
// "--pid is required"), a stray word, and `run`'s program without "--".
struct WordCheck {
  std::string error;    // "" if the words are fine
  std::string command;  // the command named, if any
};

WordCheck check_words(const CLI::App& app, const std::vector<std::string>& args) {
  WordCheck r;
  const CLI::App* cmd = nullptr;
  std::string program;  // run: the words given before any "--"
  auto fail = [&r, &cmd](const std::string& msg) {
    r.error = (cmd ? cmd->get_name() + ": " : std::string()) + msg;
    return r;
  };
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& w = args[i];
    const std::string shown = escape_untrusted(w.size() > 80 ? w.substr(0, 80) + "..." : w);
    if (w == "--") break;
    if (w.size() < 2 || w[0] != '-') {
      if (!cmd) {
        std::vector<std::string> names;
        for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
          names.push_back(sub->get_name());
          if (sub->get_name() == w) cmd = sub;
        }
        if (!cmd) return fail("unknown command '" + shown + "'" + did_you_mean(w, names));
        r.command = w;
        continue;
      }
      if (cmd->get_name() == "run") {
        program += (program.empty() ? "" : " ") + shown;
        continue;
      }
      const bool takes_pid =
          !cmd->get_options([](const CLI::Option* o) { return o->check_lname("pid"); }).empty();
      return fail("unexpected argument '" + shown + "'" +
                  (all_digits(w) && takes_pid ? " (did you mean '-p " + shown + "'?)" : ""));
    }
    if (!program.empty())
      return fail("'" + shown + "' after the program would be read as asynctrace's flag: put the program after " +
                  "'--' (asynctrace run -- " + program + " " + shown + " ...)");
    // "-pid" would be read as "-p id": say "--pid" was meant.
    if (w.size() > 2 && w[1] != '-') {
      const std::string as_long = "-" + w.substr(0, w.find('='));
      for (const std::string& name : flag_names(cmd ? cmd : &app))
        if (name == as_long) return fail("unknown flag '" + shown + "' (did you mean '" + name + "'?)");
    }
    bool attached = false;
    const CLI::Option* opt = cmd ? find_flag(cmd, w, &attached) : nullptr;
    if (!opt) opt = find_flag(&app, w, &attached);  // the global flags, before or after the command
    if (!opt) {
      std::vector<std::string> names = flag_names(cmd ? cmd : &app);
      const std::string name = w.substr(0, w.find('='));
      // "-pid" for "--pid": also compare with one more dash.
      std::string hint = did_you_mean(name, names);
      if (hint.empty() && name.rfind("--", 0) != 0) hint = did_you_mean("-" + name, names);
      return fail("unknown flag '" + escape_untrusted(name) + "'" + hint);
    }
    if (takes_value(opt) && !attached) {
      // Its value (several for a repeatable list, up to the next flag).
      const bool list = opt->get_expected_max() > 1;
      do ++i;
      while (list && i + 1 < args.size() && !(args[i + 1].size() > 1 && args[i + 1][0] == '-'));
    }
  }
  return r;
}

}  // namespace

std::optional<std::chrono::milliseconds> parse_duration(const std::string& text) {
  if (text.empty() || text.size() > 32) return std::nullopt;
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return std::nullopt;
  const std::string num = text.substr(0, i), unit = text.substr(i);
  if (std::count(num.begin(), num.end(), '.') > 1) return std::nullopt;
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(num, &used);
    if (used != num.size()) return std::nullopt;
  } catch (...) {
    return std::nullopt;
  }
  double ms;
  if (unit == "ms") ms = v;
  else if (unit == "s") ms = v * 1e3;
  else if (unit == "m") ms = v * 60e3;
  else if (unit == "h") ms = v * 3600e3;
  else return std::nullopt;
  if (!std::isfinite(ms) || ms < 0 || ms > 1e12) return std::nullopt;
  return std::chrono::milliseconds(static_cast<long long>(std::llround(ms)));
}

ParseResult parse_cli(const std::vector<std::string>& args) {
  Options o;
  std::string fmt = "text", timeout = "2s";
  CLI::App app{"asynctrace: live task trees, stacks and timings of asyncio programs, from eBPF."};
  app.name(args.empty() ? "asynctrace" : "asynctrace");
  app.footer(kFooter);
  app.require_subcommand(0, 1);
  app.add_flag("-v,--verbose", o.verbose,
               "Print libbpf messages (a refused BPF program's whole verifier log, never cut), the kernel "
               "features found and attach decisions to stderr");
  bool version = false;
  app.add_flag("--version", version, "Print the version and exit");

  auto* pstree = app.add_subcommand("pstree", "Tree of pending tasks: who awaits whom, with coroutine stacks");
  add_target_options(pstree, o, fmt, timeout, kFormat314);
  pstree->footer("A CPython 3.14+ process started without asynctrace gets the runtime loaded first\n"
                 "(sys.remote_exec; docs/python.md); --no-inject refuses instead.\n\nEXAMPLES:\n"
                 "  sudo asynctrace pstree -p 1234\n  sudo asynctrace pstree -p 1234 --format json | jq .tree\n"
                 "  sudo asynctrace pstree -p 1234 --timeout 10s   # an unprepared 3.14 process, slow to answer\n");
  auto* ps = app.add_subcommand("ps", "Table of pending tasks, one row per awaiter (Python 3.14 'ps' columns)");
  add_target_options(ps, o, fmt, timeout, kFormat314);
  ps->footer("EXAMPLES:\n  sudo asynctrace ps -p 1234\n  sudo asynctrace ps -p 1234 --format json\n");
  auto* stats = app.add_subcommand("stats", "Tracer counters for a process: events, replay, drops (full maps)");
  add_target_options(stats, o, fmt, timeout, "Output format: text or json (docs/json.md)");
  stats->footer("EXAMPLES:\n  sudo asynctrace stats -p 1234\n  sudo asynctrace stats -p 1234 --format json\n");
  auto* attach = app.add_subcommand("attach", "Stay attached, maps pinned, so pstree/ps answer at once from them");
  add_target_options(attach, o, fmt, timeout, "");  // prints one line, no view
  std::string duration;  // empty: until a signal or the end of the process
  add_duration(attach, "-d,--duration", duration,
                     "Detach after this long (e.g. 30s, 5m; default: until Ctrl-C or the process exits)");
  attach->add_flag("--timing", o.timing,
                   "Also keep per-task step timing in the pinned maps (top, ps --long); costs the traced "
                   "process two clock reads per step");
  attach->footer("EXAMPLES:\n  sudo asynctrace attach -p 1234 &       # hold the tracer\n  sudo asynctrace pstree -p 1234         # answered from the pinned maps\n  sudo asynctrace attach -p 1234 -d 10m\n");
  auto* run = app.add_subcommand("run", "Run a Python program with asynctrace probes loaded (dormant until traced)");
  run->add_option("--python-dir", o.python_dir, "Directory holding the built runtimes (default: <asynctrace dir>/python)")
      ->type_name("DIR");
  run->add_option("command", o.run_argv, "The program and its arguments, after --")->required()->type_name("ARG");
  run->footer("EXAMPLES:\n  asynctrace run -- python3 app.py --port 8080\n  asynctrace run -- /usr/bin/python3.11 -m myservice\n");
  ps->add_flag("-l,--long", o.long_format,
               "Add timing columns (steps, busy, longest step, waiting for) measured over one second, for the "
               "tasks alive at its end, a per-coroutine table and warnings");

  std::string interval = "1s", stuck = "10s", threshold = "50ms";
  auto* top = app.add_subcommand("top", "Live table of tasks: steps, busy time, scheduled and idle time, longest step");
  add_target_options(top, o, fmt, timeout,
                     "Output format: text (a table, redrawn in place in a terminal) or json (one object per "
                     "refresh, one per line)");
  add_duration(top, "-i,--interval", interval, "Refresh period (default 1s)");
  top->add_option("-s,--sort", o.sort, "Sort by: busy (default), busy%, steps, longest, sched, idle, age, name")
      ->type_name("KEY")
      ->check(one_of({"busy", "busy%", "steps", "longest", "sched", "idle", "age", "name"}));
  top->add_option("--name", o.name_filter,
                  "Show only tasks (or coroutines, --by coroutine) whose name contains this text");
  top->add_option("--by", o.top_by,
                  "Rows: coroutine (default: each coroutine's steps over all its tasks, short-lived ones "
                  "included, as a server's per-request tasks) or task (one row per live task); key c switches")
      ->type_name("ROWS")
      ->check(one_of({"coroutine", "task"}));
  top->add_option("-n,--iterations", o.iterations, "Stop after this many refreshes (default: until q or Ctrl-C)")
      ->type_name("N");
  add_duration(top, "--stuck", stuck, "Warn about tasks awaiting the same thing longer than this (default 10s)");
  top->footer("In a terminal the table redraws in place, fitted to its width; keys: q quits, c\n"
              "switches between coroutine and task rows. Otherwise one snapshot per interval is\n"
              "printed, fitted to $COLUMNS if set (--format json: one JSON object per line, with\n"
              "both the tasks and the coroutines).\n\nEXAMPLES:\n"
              "  sudo asynctrace top -p 1234\n  sudo asynctrace top -p 1234 --by task -s longest --name worker\n"
              "  sudo asynctrace top -p 1234 -n 5 --format json | jq .header\n");

  auto* slow = app.add_subcommand("slow", "Report steps that held the event loop longer than a threshold, with stacks");
  add_target_options(slow, o, fmt, timeout,
                     "Output format: text (one report per slow step) or json (one object per slow step, one "
                     "per line)");
  add_duration(slow, "-t,--threshold", threshold, "Report steps at least this long (default 50ms)");
  std::string slow_duration;
  add_duration(slow, "-d,--duration", slow_duration, "Stop after this long (default: until Ctrl-C or the process exits)");
  slow->footer("Each report names the task, the step's duration, its coroutine stack where it\n"
               "resumed and where it suspended, and the loop thread's Python stack sampled while\n"
               "the step blocked (plain functions included, innermost first).\n\nEXAMPLES:\n"
               "  sudo asynctrace slow -p 1234 --threshold 50ms\n"
               "  sudo asynctrace slow -p 1234 -t 200ms -d 1m --format json\n");

  auto* record = app.add_subcommand("record", "Record a task-aware profile (flame graph, speedscope, pprof, folded)");
  add_pid(record, o, "Process to record");
  std::string rec_duration = "10s";
  add_duration(record, "-d,--duration", rec_duration, "How long to record (default 10s; Ctrl-C ends early)");
  record->add_option("-o,--output", o.output, "File to write ('-' = stdout)")->required()->type_name("FILE");
  record->add_option("-f,--format", o.prof_format, "Profile format: folded (default), speedscope, svg, html, pprof")
      ->type_name("FORMAT")
      ->check(one_of({"folded", "speedscope", "svg", "html", "pprof"}));
  record->add_option("-m,--mode", o.mode, "cpu: time in steps (default); wall: also time awaiting, by await site")
      ->type_name("MODE")
      ->check(one_of({"cpu", "wall"}));
  record->add_option("--group-tasks", o.group_tasks,
                     "Task frames: name (default; digits folded, Task-1234 -> Task-N), coroutine (its "
                     "coroutine's name), task (each task name as is)")
      ->type_name("BY")
      ->check(one_of({"name", "coroutine", "task"}));
  record->add_flag("--lines", o.lines, "One frame per line of code (file:line), not per function");
  add_timeout_options(record, o, timeout);
  // The agent's periodic profiles: one recording, a file in the chosen
  // format and the pprof it pushes. Not for users: hidden from the help.
  record->add_option("--also-pprof", o.also_pprof, "Also write the profile as pprof to this file")->group("");
  record->footer("EXAMPLES:\n  sudo asynctrace record -p 1234 -d 30s -o app.svg -f svg\n"
                 "  sudo asynctrace record -p 1234 -o app.speedscope.json -f speedscope --mode wall\n"
                 "  sudo asynctrace record -p 1234 -o - -f folded | flamegraph.pl > app.svg\n"
                 "  sudo asynctrace record -p 1234 -o app.svg -f svg --group-tasks task --lines  # per task, per line\n");
  auto* agent = app.add_subcommand(
      "agent", "Trace every process with asynctrace probes, keep their state pinned, serve OpenMetrics");
  std::string listen = "127.0.0.1:9464", scan = "2s";
  bool listen_any = false;
  agent->add_option("--listen", listen,
                    "Metrics endpoint HOST:PORT (default 127.0.0.1:9464; port 0: any free port; 'none': no endpoint)")
      ->type_name("HOST:PORT");
  agent->add_flag("--listen-any", listen_any,
                  "Allow a --listen address that is not loopback (the metrics name processes and coroutines)");
  add_duration(agent, "--scan-interval", scan, "How often to look for new probe libraries and exited processes (default 2s)");
  agent->add_option("--library-prefix", o.library_prefixes,
                    "Attach only probe libraries whose path starts with this (repeatable; default: all)")
      ->type_name("PATH");
  agent->add_option("--library", o.libraries,
                    "Also attach this probe library at start, before any process maps it (repeatable; the "
                    "runtimes installed beside asynctrace are attached by default)")
      ->type_name("PATH");
  agent->add_flag("--cleanup", o.cleanup, "Remove the pinned maps a stopped or killed agent left, and exit");
  std::string prof_every = "60s", prof_duration = "10s";
  bool push_any = false;
  auto* p_dir = agent->add_option("--profile-dir", o.profile_dir,
                                  "Write a task-aware profile of every traced process to DIR/<pid>-<comm>/ "
                                  "every --profile-every (docs/agent.md)")
                  ->type_name("DIR");
  auto* p_push = agent->add_option("--profile-push", o.profile_push,
                                   "Push each periodic profile (pprof) to this Pyroscope-compatible ingest URL, "
                                   "e.g. http://127.0.0.1:4040/ingest")
                   ->type_name("URL");
  auto* p_any = agent->add_flag("--push-any", push_any, "Allow a --profile-push host that is not loopback");
  auto* p_every = add_duration(agent, "--profile-every", prof_every, "One profile per process this often (default 60s)");
  auto* p_dur = add_duration(agent, "--profile-duration", prof_duration,
                                  "Each profile records this long (default 10s; less than --profile-every)");
  auto* p_fmt = agent->add_option("--profile-format", o.profile_format,
                                  "Format of the files in --profile-dir: pprof (default), folded, speedscope, svg, html")
                    ->type_name("FORMAT")
                    ->check(one_of({"folded", "speedscope", "svg", "html", "pprof"}));
  auto* p_mode = agent->add_option("--profile-mode", o.profile_mode, "cpu (default) or wall, as record --mode")
                     ->type_name("MODE")
                     ->check(one_of({"cpu", "wall"}));
  auto* p_keep = agent->add_option("--profile-keep", o.profile_keep,
                                   "Files kept per process in --profile-dir, the oldest removed (1 to 100000; "
                                   "default 10)")
                     ->type_name("N")
                     ->check(CLI::Range(1, 100000).description(""));
  agent->footer("While the agent runs, pstree/ps/top -p PID answer from its maps without attaching.\n"
                "SIGTERM detaches the probes and keeps the pinned maps for the next agent.\n\nEXAMPLES:\n"
                "  sudo asynctrace agent\n"
                "  sudo asynctrace agent --listen 127.0.0.1:9500\n"
                "  sudo asynctrace agent --listen 0.0.0.0:9464 --listen-any\n"
                "  sudo asynctrace agent --profile-dir /var/lib/asynctrace/profiles --profile-every 5m\n"
                "  sudo asynctrace agent --profile-push http://127.0.0.1:4040/ingest\n"
                "  curl -s http://127.0.0.1:9464/metrics | grep asynctrace_tasks\n"
                "  sudo asynctrace agent --cleanup          # after a crash: remove the pins\n");
  auto* features = app.add_subcommand("features", "Kernel features asynctrace needs, and which this kernel has");
  features->add_option("-f,--format", fmt, "Output format: text or json")
      ->type_name("FORMAT")
      ->check(one_of({"text", "json"}));
  features->footer("Exit 0 if asynctrace can trace on this kernel, 7 (one line on stderr naming what is\n"
                   "missing) if not. docs/kernels.md has the table.\n\nEXAMPLES:\n"
                   "  sudo asynctrace features\n"
                   "  sudo asynctrace features --format json | jq '.features[] | select(.present | not)'\n");
  // -v after the command too.
  for (auto* c : app.get_subcommands([](const CLI::App*) { return true; })) c->fallthrough();

  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  ParseResult r;
  const WordCheck words = check_words(app, args);
  const std::string see = " (see asynctrace " + (words.command.empty() ? "" : words.command + " ") + "--help)";
  if (!words.error.empty()) {
    r.exit_code = kExitUsage;
    r.err = "asynctrace: error: " + words.error + see;
    return r;
  }
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    std::ostringstream out, err;
    const int code = app.exit(e, out, err);
    if (code == 0) {
      r.out = out.str();
      return r;
    }
    r.exit_code = kExitUsage;
    r.err = "asynctrace: error: " + (words.command.empty() ? "" : words.command + ": ") + e.what() + see;
    return r;
  }
  if (version) {
    o.command = Command::Version;
    r.options = o;
    return r;
  }
  if (pstree->parsed()) o.command = Command::Pstree;
  else if (ps->parsed()) o.command = Command::Ps;
  else if (stats->parsed()) o.command = Command::Stats;
  else if (attach->parsed()) o.command = Command::Attach;
  else if (run->parsed()) o.command = Command::Run;
  else if (top->parsed()) o.command = Command::Top;
  else if (slow->parsed()) o.command = Command::Slow;
  else if (record->parsed()) o.command = Command::Record;
  else if (agent->parsed()) o.command = Command::Agent;
  else if (features->parsed()) o.command = Command::Features;
  else {
    r.out = app.help();
    r.exit_code = kExitUsage;
    r.err = "asynctrace: error: a command is required (see --help)";
    return r;
  }
  o.format = fmt == "json" ? Format::Json : Format::Text;
  // A zero timeout or duration would mean "give up at once": refused like
  // garbage, with the flag named (leave --duration out to stay attached).
  // `duration_flag` parses `text` into *out; false (and r set) if it is not
  // a duration of at least `min_ms` (1 ms when 0 is not allowed).
  auto duration_flag = [&r](const char* flag, const std::string& text, long min_ms, const char* examples,
                            std::chrono::milliseconds* out) {
    auto d = parse_duration(text);
    if (d && d->count() >= min_ms) {
      *out = *d;
      return true;
    }
    r.exit_code = kExitUsage;
    const bool bare = !text.empty() && text.find_first_not_of("0123456789.") == std::string::npos;
    r.err = std::string("asynctrace: error: ") + flag + ": invalid duration '" + escape_untrusted(text) + "' (" +
            (bare ? "a unit is required: ms, s, m or h; " : "a positive time with a unit, ms, s, m or h: ") +
            "e.g. " + examples + ")";
    return false;
  };
  if (!duration_flag("--timeout", timeout, 1, "500ms or 2s", &o.timeout)) return r;
  bool timeout_given = false;
  for (const auto* c : {pstree, ps, stats, attach, top, slow, record})
    if (c->parsed()) timeout_given = c->get_option("--timeout")->count() > 0;
  if (timeout_given) o.inject_timeout = o.timeout;
  if (o.command == Command::Attach && !duration.empty() &&
      !duration_flag("--duration", duration, 1, "30s or 5m", &o.duration))
    return r;
  if (o.command == Command::Top &&
      (!duration_flag("--interval", interval, 10, "500ms or 2s (10ms at least)", &o.interval) ||
       !duration_flag("--stuck", stuck, 1, "10s or 1m", &o.stuck)))
    return r;
  if (o.command == Command::Slow &&
      (!duration_flag("--threshold", threshold, 1, "50ms or 1s", &o.threshold) ||
       (!slow_duration.empty() && !duration_flag("--duration", slow_duration, 1, "30s or 5m", &o.duration))))
    return r;
  if (o.command == Command::Record) {
    if (!duration_flag("--duration", rec_duration, 1, "30s or 5m", &o.duration)) return r;
    if (o.output.empty()) {
      r.exit_code = kExitUsage;
      r.err = "asynctrace: error: --output: a file name is required ('-' for stdout)";
      return r;
    }
  }
  if (o.command == Command::Agent) {
    if (!duration_flag("--scan-interval", scan, 100, "1s or 5s (100ms at least)", &o.scan)) return r;
    if (listen == "none") {
      o.no_listen = true;
    } else {
      auto addr = parse_listen(listen);
      if (!addr) {
        r.exit_code = kExitUsage;
        r.err = "asynctrace: error: --listen: invalid address '" + listen + "' (HOST:PORT, e.g. 127.0.0.1:9464)";
        return r;
      }
      if (!addr->loopback && !listen_any) {
        r.exit_code = kExitUsage;
        r.err = "asynctrace: error: --listen: '" + listen +
                "' is not a loopback address; the metrics name processes and coroutines: add --listen-any to "
                "serve them beyond this host";
        return r;
      }
      o.listen_host = addr->host;
      o.listen_port = addr->port;
    }
    auto usage = [&r](const std::string& msg) {
      r.exit_code = kExitUsage;
      r.err = "asynctrace: error: " + msg;
      return r;
    };
    const bool profiling = p_dir->count() || p_push->count();
    for (const auto* opt : {p_every, p_dur, p_mode, p_any})
      if (opt->count() && !profiling)
        return usage(opt->get_name() + ": periodic profiles need --profile-dir or --profile-push");
    for (const auto* opt : {p_fmt, p_keep})
      if (opt->count() && !p_dir->count())
        return usage(opt->get_name() + ": applies to --profile-dir (pushed profiles are pprof)");
    if (p_dir->count() && o.profile_dir.empty()) return usage("--profile-dir: a directory is required");
    if (profiling) {
      std::chrono::milliseconds de{}, dd{};
      if (!duration_flag("--profile-every", prof_every, 1000, "60s or 5m (1s at least)", &de) ||
          !duration_flag("--profile-duration", prof_duration, 100, "10s (100ms at least)", &dd))
        return r;
      if (dd >= de)
        return usage("--profile-duration: " + prof_duration + " is not shorter than --profile-every " + prof_every +
                     " (one recording per process at a time)");
      o.profile_every = de;
      o.profile_duration = dd;
    }
    if (p_push->count()) {
      auto url = parse_push_url(o.profile_push);
      if (!url)
        return usage("--profile-push: invalid URL '" + o.profile_push +
                     "' (http://HOST[:PORT]/PATH, e.g. http://127.0.0.1:4040/ingest)");
      if (!url->loopback && !push_any)
        return usage("--profile-push: '" + o.profile_push +
                     "' is not a loopback address; profiles name processes and functions: add --push-any to "
                     "send them beyond this host");
      o.push_host = url->host;
      o.push_port = url->port;
      o.push_path = url->path;
    }
  }
  r.options = o;
  return r;
}

std::optional<PushUrl> parse_push_url(const std::string& text) {
  const std::string scheme = "http://";
  if (text.size() > 2000 || text.rfind(scheme, 0) != 0) return std::nullopt;
  const std::string rest = text.substr(scheme.size());
  const auto slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  PushUrl u;
  u.path = slash == std::string::npos ? "/" : rest.substr(slash);
  // No query or fragment (the agent adds its own query), no user info, no
  // bytes a request line cannot carry.
  if (authority.empty() || authority.find('@') != std::string::npos) return std::nullopt;
  for (const char c : u.path)
    if (c == '?' || c == '#' || static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f)
      return std::nullopt;
  // Without a port: the default one, through parse_listen's host checks.
  const bool bracketed = !authority.empty() && authority.front() == '[';
  const auto colon = authority.rfind(':');
  const bool has_port = colon != std::string::npos && (!bracketed || colon > authority.find(']'));
  if (!has_port) authority += ":80";
  auto a = parse_listen(authority);
  if (!a || a->port == 0) return std::nullopt;
  u.host = a->host;
  u.port = a->port;
  u.loopback = a->loopback;
  return u;
}

std::optional<ListenAddress> parse_listen(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 >= text.size() || text.size() > 300) return std::nullopt;
  ListenAddress a;
  std::string host = text.substr(0, colon);
  const std::string port = text.substr(colon + 1);
  if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  const long p = std::stol(port);
  if (p > 65535) return std::nullopt;
  a.port = static_cast<uint16_t>(p);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    if (host.empty() || host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string::npos) return std::nullopt;
    a.loopback = host == "::1";
  } else if (host == "localhost") {
    a.loopback = true;
  } else {
    int parts = 0, first = -1;
    size_t i = 0;
    while (i <= host.size()) {
      size_t j = host.find('.', i);
      if (j == std::string::npos) j = host.size();
      const std::string oct = host.substr(i, j - i);
      if (oct.empty() || oct.size() > 3 ||
          !std::all_of(oct.begin(), oct.end(), [](char c) { return c >= '0' && c <= '9'; }) || std::stoi(oct) > 255)
        return std::nullopt;
      if (parts == 0) first = std::stoi(oct);
      ++parts;
      i = j + 1;
    }
    if (parts != 4) return std::nullopt;
    a.loopback = first == 127;
  }
  a.host = host;
  return a;
}

}  // namespace asynctrace
