// SPDX-License-Identifier: Apache-2.0
#include "cli.h"

#include <CLI/CLI.hpp>
#include <cmath>
#include <sstream>

#include "result.h"

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
  app.add_flag("-v,--verbose", o.verbose, "Print libbpf messages and attach decisions to stderr");
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
  attach->footer("EXAMPLES:\n  sudo asynctrace attach -p 1234 &       # hold the tracer\n  sudo asynctrace pstree -p 1234         # answered from the pinned maps\n  sudo asynctrace attach -p 1234 -d 10m\n");
  auto* run = app.add_subcommand("run", "Run a Python program with asynctrace probes loaded (dormant until traced)");
  run->add_option("--python-dir", o.python_dir, "Directory holding the built runtimes (default: <asynctrace dir>/python)");
  run->add_option("command", o.run_argv, "The program and its arguments, after --")->required();
  run->footer("EXAMPLES:\n  asynctrace run -- python3 app.py --port 8080\n  asynctrace run -- /usr/bin/python3.11 -m myservice\n");
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
  else {
    r.out = app.help();
    r.exit_code = kExitUsage;
    r.err = "asynctrace: error: a command is required (see --help)";
    return r;
  }
  o.format = fmt == "json" ? Format::Json : Format::Text;
  // A zero timeout or duration would mean "give up at once": refused like
  // garbage, with the flag named (leave --duration out to stay attached).
  auto bad_duration = [&r](const char* flag, const std::string& text, const char* examples) {
    r.exit_code = kExitUsage;
    r.err = std::string("asynctrace: error: ") + flag + ": invalid duration '" + text +
            "' (a positive time such as " + examples + ")";
    return r;
  };
  auto d = parse_duration(timeout);
  if (!d || d->count() == 0) return bad_duration("--timeout", timeout, "500ms or 2s");
  o.timeout = *d;
  if (o.command == Command::Attach && !duration.empty()) {
    auto dd = parse_duration(duration);
    if (!dd || dd->count() == 0) return bad_duration("--duration", duration, "30s or 5m");
    o.duration = *dd;
  }
  r.options = o;
  return r;
}

}  // namespace asynctrace
