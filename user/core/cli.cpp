// SPDX-License-Identifier: Apache-2.0
#include "core/cli.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/result.h"

namespace asynctrace {
namespace {

constexpr const char* kFooter = R"(EXIT CODES:
  0 ok, 1 internal error, 2 usage error, 3 no such process (or a zombie),
  4 not a Python process, 5 Python process without asynctrace probes,
  6 insufficient privilege (needs root or CAP_BPF+CAP_PERFMON), 7 BPF/tracing
  unavailable, 8 runtime did not answer the attach in time, 9 process exited
  (or exec'd another program) while traced.

EXAMPLES:
  asynctrace run -- python3 app.py          # start app.py with dormant probes
  sudo asynctrace pstree -p 1234            # tree of tasks and who awaits them
  sudo asynctrace ps -p 1234                # one row per task and awaiter
  sudo asynctrace ps -p 1234 --format json  # the same as JSON (docs/json.md)
  sudo asynctrace top -p 1234               # live per-task busy/idle/steps
  sudo asynctrace slow -p 1234 -t 50ms      # steps that blocked the loop, with stacks
  sudo asynctrace record -p 1234 -d 30s -o app.svg -f svg   # task-aware flame graph
  sudo asynctrace agent                     # every process, metrics on 127.0.0.1:9464
)";

void add_target_options(CLI::App* cmd, Options& o, std::string& fmt, std::string& timeout) {
  cmd->add_option("-p,--pid", o.pid, "Process to inspect")
      ->required()
      ->check(CLI::Range(1, 4194304));
  cmd->add_option("-f,--format", fmt, "Output format: text (Python 3.14 layout) or json")
      ->check(CLI::IsMember({"text", "json"}));
  cmd->add_option("--timeout", timeout,
                  "How long to wait for the runtime to report its live tasks (default 2s)");
  cmd->add_option("--max-tasks", o.max_tasks,
                  "Capacity of the kernel's task map (default 131072); tasks beyond it are counted, not shown")
      ->check(CLI::Range(1, 1 << 22));
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
  else if (unit.empty() || unit == "s") ms = v * 1e3;
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
  add_target_options(pstree, o, fmt, timeout);
  pstree->footer("EXAMPLES:\n  sudo asynctrace pstree -p 1234\n  sudo asynctrace pstree -p 1234 --format json | jq .tree\n");
  auto* ps = app.add_subcommand("ps", "Table of pending tasks, one row per awaiter (Python 3.14 'ps' columns)");
  add_target_options(ps, o, fmt, timeout);
  ps->footer("EXAMPLES:\n  sudo asynctrace ps -p 1234\n  sudo asynctrace ps -p 1234 --format json\n");
  auto* stats = app.add_subcommand("stats", "Tracer counters for a process: events, replay, drops (full maps)");
  add_target_options(stats, o, fmt, timeout);
  stats->footer("EXAMPLES:\n  sudo asynctrace stats -p 1234\n  sudo asynctrace stats -p 1234 --format json\n");
  auto* attach = app.add_subcommand("attach", "Stay attached, maps pinned, so pstree/ps answer at once from them");
  add_target_options(attach, o, fmt, timeout);
  std::string duration;  // empty: until a signal or the end of the process
  attach->add_option("-d,--duration", duration,
                     "Detach after this long (e.g. 30s, 5m; default: until Ctrl-C or the process exits)");
  attach->add_flag("--timing", o.timing,
                   "Also keep per-task step timing in the pinned maps (top, ps --long); costs the traced "
                   "process two clock reads per step");
  attach->footer("EXAMPLES:\n  sudo asynctrace attach -p 1234 &       # hold the tracer\n  sudo asynctrace pstree -p 1234         # answered from the pinned maps\n  sudo asynctrace attach -p 1234 -d 10m\n");
  auto* run = app.add_subcommand("run", "Run a Python program with asynctrace probes loaded (dormant until traced)");
  run->add_option("--python-dir", o.python_dir, "Directory holding the built runtimes (default: <asynctrace dir>/python)");
  run->add_option("command", o.run_argv, "The program and its arguments, after --")->required();
  run->footer("EXAMPLES:\n  asynctrace run -- python3 app.py --port 8080\n  asynctrace run -- /usr/bin/python3.11 -m myservice\n");
  ps->add_flag("-l,--long", o.long_format,
               "Add timing columns (steps, busy, longest step, waiting for), measured over one second, and warnings");

  std::string interval = "1s", stuck = "10s", threshold = "50ms";
  auto* top = app.add_subcommand("top", "Live table of tasks: steps, busy time, scheduled and idle time, longest step");
  add_target_options(top, o, fmt, timeout);
  top->add_option("-i,--interval", interval, "Refresh period (default 1s)");
  top->add_option("-s,--sort", o.sort, "Sort by: busy (default), busy%, steps, longest, sched, idle, age, name")
      ->check(CLI::IsMember({"busy", "busy%", "steps", "longest", "sched", "idle", "age", "name"}));
  top->add_option("--name", o.name_filter, "Show only tasks whose name contains this text");
  top->add_option("-n,--iterations", o.iterations, "Stop after this many refreshes (default: until Ctrl-C)");
  top->add_option("--stuck", stuck, "Warn about tasks awaiting the same thing longer than this (default 10s)");
  top->footer("In a terminal the table redraws in place; otherwise one snapshot per interval is\n"
              "printed (--format json: one JSON object per line).\n\nEXAMPLES:\n"
              "  sudo asynctrace top -p 1234\n  sudo asynctrace top -p 1234 -s longest --name worker\n"
              "  sudo asynctrace top -p 1234 -n 5 --format json | jq .header\n");

  auto* slow = app.add_subcommand("slow", "Report steps that held the event loop longer than a threshold, with stacks");
  add_target_options(slow, o, fmt, timeout);
  slow->add_option("-t,--threshold", threshold, "Report steps at least this long (default 50ms)");
  std::string slow_duration;
  slow->add_option("-d,--duration", slow_duration, "Stop after this long (default: until Ctrl-C or the process exits)");
  slow->footer("Each report names the task, the step's duration, its coroutine stack where it\n"
               "resumed and where it suspended, and the loop thread's Python stack sampled while\n"
               "the step blocked (plain functions included, innermost first).\n\nEXAMPLES:\n"
               "  sudo asynctrace slow -p 1234 --threshold 50ms\n"
               "  sudo asynctrace slow -p 1234 -t 200ms -d 1m --format json\n");

  auto* record = app.add_subcommand("record", "Record a task-aware profile (flame graph, speedscope, pprof, folded)");
  record->add_option("-p,--pid", o.pid, "Process to record")->required()->check(CLI::Range(1, 4194304));
  std::string rec_duration = "10s";
  record->add_option("-d,--duration", rec_duration, "How long to record (default 10s; Ctrl-C ends early)");
  record->add_option("-o,--output", o.output, "File to write ('-' = stdout)")->required();
  record->add_option("-f,--format", o.prof_format, "folded (default), speedscope, svg, html, pprof")
      ->check(CLI::IsMember({"folded", "speedscope", "svg", "html", "pprof"}));
  record->add_option("-m,--mode", o.mode, "cpu: time in steps (default); wall: also time awaiting, by await site")
      ->check(CLI::IsMember({"cpu", "wall"}));
  record->add_option("--group-tasks", o.group_tasks,
                     "Task frames: name (default; digits folded, Task-1234 -> Task-N), coroutine (its "
                     "coroutine's name), task (each task name as is)")
      ->check(CLI::IsMember({"name", "coroutine", "task"}));
  record->add_flag("--lines", o.lines, "One frame per line of code (file:line), not per function");
  record->add_option("--timeout", timeout, "How long to wait for the runtime to report its live tasks (default 2s)");
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
                    "Metrics endpoint HOST:PORT (default 127.0.0.1:9464; port 0: any free port; 'none': no endpoint)");
  agent->add_flag("--listen-any", listen_any,
                  "Allow a --listen address that is not loopback (the metrics name processes and coroutines)");
  agent->add_option("--scan-interval", scan, "How often to look for new probe libraries and exited processes (default 2s)");
  agent->add_option("--library-prefix", o.library_prefixes,
                    "Attach only probe libraries whose path starts with this (repeatable; default: all)");
  agent->add_option("--library", o.libraries,
                    "Also attach this probe library at start, before any process maps it (repeatable; the "
                    "runtimes installed beside asynctrace are attached by default)");
  agent->add_flag("--cleanup", o.cleanup, "Remove the pinned maps a stopped or killed agent left, and exit");
  std::string prof_every = "60s", prof_duration = "10s";
  bool push_any = false;
  auto* p_dir = agent->add_option("--profile-dir", o.profile_dir,
                                  "Write a task-aware profile of every traced process to DIR/<pid>-<comm>/ "
                                  "every --profile-every (docs/agent.md)");
  auto* p_push = agent->add_option("--profile-push", o.profile_push,
                                   "Push each periodic profile (pprof) to this Pyroscope-compatible ingest URL, "
                                   "e.g. http://127.0.0.1:4040/ingest");
  auto* p_any = agent->add_flag("--push-any", push_any, "Allow a --profile-push host that is not loopback");
  auto* p_every = agent->add_option("--profile-every", prof_every, "One profile per process this often (default 60s)");
  auto* p_dur = agent->add_option("--profile-duration", prof_duration,
                                  "Each profile records this long (default 10s; less than --profile-every)");
  auto* p_fmt = agent->add_option("--profile-format", o.profile_format,
                                  "Format of the files in --profile-dir: pprof (default), folded, speedscope, svg, html")
                    ->check(CLI::IsMember({"folded", "speedscope", "svg", "html", "pprof"}));
  auto* p_mode = agent->add_option("--profile-mode", o.profile_mode, "cpu (default) or wall, as record --mode")
                     ->check(CLI::IsMember({"cpu", "wall"}));
  auto* p_keep = agent->add_option("--profile-keep", o.profile_keep,
                                   "Files kept per process in --profile-dir, the oldest removed (default 10)")
                     ->check(CLI::Range(1, 100000));
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
  features->add_option("-f,--format", fmt, "Output format: text or json")->check(CLI::IsMember({"text", "json"}));
  features->footer("Exit 0 if asynctrace can trace on this kernel, 7 (one line on stderr naming what is\n"
                   "missing) if not. docs/kernels.md has the table.\n\nEXAMPLES:\n"
                   "  sudo asynctrace features\n"
                   "  sudo asynctrace features --format json | jq '.features[] | select(.present | not)'\n");
  for (auto* c : {pstree, ps}) c->fallthrough();

  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  ParseResult r;
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
    r.err = std::string("asynctrace: error: ") + e.what() + " (see --help)";
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
    r.err = std::string("asynctrace: error: ") + flag + ": invalid duration '" + text +
            "' (a positive time such as " + examples + ")";
    return false;
  };
  if (!duration_flag("--timeout", timeout, 1, "500ms or 2s", &o.timeout)) return r;
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
