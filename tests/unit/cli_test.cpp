// SPDX-License-Identifier: Apache-2.0
#include "core/cli.h"

#include <gtest/gtest.h>

#include <sstream>

#include "core/result.h"

using namespace asynctrace;
using namespace std::chrono_literals;

namespace {
ParseResult parse(std::vector<std::string> a) {
  a.insert(a.begin(), "asynctrace");
  return parse_cli(a);
}
}  // namespace

TEST(Cli, PstreeWithPid) {
  auto r = parse({"pstree", "-p", "1234"});
  ASSERT_TRUE(r.options);
  EXPECT_EQ(r.options->command, Command::Pstree);
  EXPECT_EQ(r.options->pid, 1234);
  EXPECT_EQ(r.options->format, Format::Text);
  EXPECT_EQ(r.options->timeout, 2000ms);
}

TEST(Cli, PsJsonAndTimeout) {
  auto r = parse({"ps", "--pid", "7", "--format", "json", "--timeout", "250ms"});
  ASSERT_TRUE(r.options);
  EXPECT_EQ(r.options->command, Command::Ps);
  EXPECT_EQ(r.options->format, Format::Json);
  EXPECT_EQ(r.options->timeout, 250ms);
}

TEST(Cli, StatsAndAttach) {
  auto r = parse({"stats", "-p", "9", "-f", "json"});
  ASSERT_TRUE(r.options);
  EXPECT_EQ(r.options->command, Command::Stats);
  EXPECT_EQ(r.options->format, Format::Json);
  auto a = parse({"attach", "-p", "9", "--duration", "10m", "--max-tasks", "5000"});
  ASSERT_TRUE(a.options);
  EXPECT_EQ(a.options->command, Command::Attach);
  EXPECT_EQ(a.options->duration, 600000ms);
  EXPECT_EQ(a.options->max_tasks, 5000u);
  EXPECT_FALSE(parse({"attach", "-p", "9", "--duration", "-3s"}).options);
  auto forever = parse({"attach", "-p", "9"});
  ASSERT_TRUE(forever.options);
  EXPECT_EQ(forever.options->duration, 0ms);  // until a signal or the process ends
  EXPECT_FALSE(parse({"ps", "-p", "9", "--max-tasks", "0"}).options);
}

TEST(Cli, RunTakesTheRestAfterDashDash) {
  auto r = parse({"run", "--", "python3", "app.py", "--port", "8080"});
  ASSERT_TRUE(r.options);
  EXPECT_EQ(r.options->command, Command::Run);
  EXPECT_EQ(r.options->run_argv, (std::vector<std::string>{"python3", "app.py", "--port", "8080"}));
}

TEST(Cli, BadInputIsAUsageErrorWithOneLine) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"pstree"},                                   // missing pid
           {"pstree", "-p", "0"},                        // out of range
           {"pstree", "-p", "-5"},                       // negative
           {"pstree", "-p", "abc"},                      // not a number
           {"ps", "-p", "1", "--format", "xml"},         // unknown format
           {"ps", "-p", "1", "--timeout", "-1s"},        // negative duration
           {"ps", "-p", "1", "--timeout", "soon"},       // garbage duration
           {"ps", "-p", "1", "--timeout", "0"},          // zero timeout
           {"attach", "-p", "1", "--duration", "0"},     // zero duration (omit it instead)
           {"attach", "-p", "1", "--duration", "abc"},   // garbage duration
           {"pstree", "-p", "99999999999"},              // beyond pid_max
           {"stats", "-p", "1", "--max-tasks", "0"},     // empty map
           {"top", "-p", "1", "-i", "5ms"},              // refresh faster than 10 ms
           {"top", "-p", "1", "-s", "colour"},           // unknown sort key
           {"top", "-p", "1", "--stuck", "0"},           // zero stuck threshold
           {"slow", "-p", "1", "-t", "0"},               // zero threshold
           {"slow", "-p", "1", "-d", "never"},           // garbage duration
           {"record", "-p", "1"},                        // no output
           {"record", "-p", "1", "-o", "x", "-f", "png"},  // unknown profile format
           {"record", "-p", "1", "-o", "x", "-m", "gpu"},  // unknown mode
           {"record", "-p", "1", "-o", "x", "--group-tasks", "thread"},  // unknown grouping
           {"record", "-p", "1", "-o", "x", "-d", "0"},    // zero duration
           {"frobnicate"},                               // unknown command
           {},                                           // no command
       }) {
    auto r = parse(args);
    EXPECT_FALSE(r.options) << args.size();
    EXPECT_EQ(r.exit_code, kExitUsage);
    EXPECT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), std::string::npos) << r.err;
  }
}

TEST(Cli, HelpEndsWithExamplesAndExitsZero) {
  auto r = parse({"--help"});
  EXPECT_FALSE(r.options);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("EXAMPLES:"), std::string::npos);
  EXPECT_NE(r.out.find("EXIT CODES:"), std::string::npos);
  auto s = parse({"pstree", "--help"});
  EXPECT_EQ(s.exit_code, 0);
  EXPECT_NE(s.out.find("sudo asynctrace pstree -p 1234"), std::string::npos);
}

TEST(Cli, Durations) {
  EXPECT_EQ(parse_duration("500ms"), 500ms);
  EXPECT_FALSE(parse_duration("2"));  // seconds or milliseconds? a unit is required
  EXPECT_EQ(parse_duration("1.5s"), 1500ms);
  EXPECT_EQ(parse_duration("3m"), 180000ms);
  EXPECT_FALSE(parse_duration(""));
  EXPECT_FALSE(parse_duration("-1"));
  EXPECT_FALSE(parse_duration("1.2.3s"));
  EXPECT_FALSE(parse_duration("10parsecs"));
  EXPECT_FALSE(parse_duration("1e400"));
}

TEST(Cli, TimingCommands) {
  auto t = parse({"top", "-p", "7", "-i", "250ms", "-s", "longest", "--name", "worker", "-n", "3", "--format", "json"});
  ASSERT_TRUE(t.options);
  EXPECT_EQ(t.options->command, Command::Top);
  EXPECT_EQ(t.options->interval, 250ms);
  EXPECT_EQ(t.options->sort, "longest");
  EXPECT_EQ(t.options->name_filter, "worker");
  EXPECT_EQ(t.options->iterations, 3u);
  EXPECT_EQ(t.options->format, Format::Json);
  auto s = parse({"slow", "-p", "7", "--threshold", "200ms", "-d", "1m"});
  ASSERT_TRUE(s.options);
  EXPECT_EQ(s.options->command, Command::Slow);
  EXPECT_EQ(s.options->threshold, 200ms);
  EXPECT_EQ(s.options->duration, 60000ms);
  auto r = parse({"record", "-p", "7", "-d", "30s", "-o", "out.svg", "-f", "svg", "--mode", "wall"});
  ASSERT_TRUE(r.options);
  EXPECT_EQ(r.options->command, Command::Record);
  EXPECT_EQ(r.options->output, "out.svg");
  EXPECT_EQ(r.options->prof_format, "svg");
  EXPECT_EQ(r.options->mode, "wall");
  EXPECT_EQ(r.options->duration, 30000ms);
  EXPECT_EQ(r.options->group_tasks, "name");  // merged by default
  EXPECT_FALSE(r.options->lines);
  auto detail = parse({"record", "-p", "7", "-o", "x", "--group-tasks", "coroutine", "--lines"});
  ASSERT_TRUE(detail.options);
  EXPECT_EQ(detail.options->group_tasks, "coroutine");
  EXPECT_TRUE(detail.options->lines);
  auto p = parse({"ps", "-p", "7", "--long"});
  ASSERT_TRUE(p.options);
  EXPECT_TRUE(p.options->long_format);
  auto a = parse({"attach", "-p", "7", "--timing"});
  ASSERT_TRUE(a.options);
  EXPECT_TRUE(a.options->timing);
  for (const char* cmd : {"top", "slow", "record"}) {
    auto h = parse({cmd, "--help"});
    EXPECT_EQ(h.exit_code, 0);
    EXPECT_NE(h.out.find("EXAMPLES:"), std::string::npos) << cmd;
  }
}

namespace asynctrace {
namespace {

TEST(CliAgent, DefaultsAndFlags) {
  auto r = parse_cli({"asynctrace", "agent"});
  ASSERT_TRUE(r.options) << r.err;
  EXPECT_EQ(r.options->command, Command::Agent);
  EXPECT_EQ(r.options->listen_host, "127.0.0.1");
  EXPECT_EQ(r.options->listen_port, 9464);
  EXPECT_EQ(r.options->scan, std::chrono::milliseconds(2000));
  auto c = parse_cli({"asynctrace", "agent", "--cleanup"});
  ASSERT_TRUE(c.options);
  EXPECT_TRUE(c.options->cleanup);
  auto l = parse_cli({"asynctrace", "agent", "--listen", "[::1]:0", "--library-prefix", "/opt/a",
                      "--library-prefix", "/opt/b", "--scan-interval", "500ms"});
  ASSERT_TRUE(l.options) << l.err;
  EXPECT_EQ(l.options->listen_host, "::1");
  EXPECT_EQ(l.options->listen_port, 0);
  EXPECT_EQ(l.options->library_prefixes, (std::vector<std::string>{"/opt/a", "/opt/b"}));
  EXPECT_EQ(l.options->scan, std::chrono::milliseconds(500));
  auto n = parse_cli({"asynctrace", "agent", "--listen", "none"});
  ASSERT_TRUE(n.options);
  EXPECT_TRUE(n.options->no_listen);
}

TEST(CliAgent, NonLoopbackNeedsListenAny) {
  auto r = parse_cli({"asynctrace", "agent", "--listen", "0.0.0.0:9464"});
  EXPECT_FALSE(r.options);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("not a loopback address"), std::string::npos);
  EXPECT_EQ(r.err.find('\n'), std::string::npos);
  auto ok = parse_cli({"asynctrace", "agent", "--listen", "0.0.0.0:9464", "--listen-any"});
  ASSERT_TRUE(ok.options) << ok.err;
  EXPECT_EQ(ok.options->listen_host, "0.0.0.0");
  for (const char* bad : {"9464", "127.0.0.1:", "127.0.0.1:70000", "1.2.3:80", "256.0.0.1:80", "[]:80",
                          "127.0.0.1:-1", "host name:80"}) {
    auto b = parse_cli({"asynctrace", "agent", "--listen", bad});
    EXPECT_FALSE(b.options) << bad;
    EXPECT_EQ(b.exit_code, 2) << bad;
  }
  EXPECT_FALSE(parse_cli({"asynctrace", "agent", "--scan-interval", "10ms"}).options);
}

TEST(CliAgent, ParseListen) {
  EXPECT_TRUE(parse_listen("127.1.2.3:1")->loopback);
  EXPECT_TRUE(parse_listen("localhost:9464")->loopback);
  EXPECT_FALSE(parse_listen("10.0.0.1:9464")->loopback);
  EXPECT_FALSE(parse_listen("[::]:9464")->loopback);
  EXPECT_EQ(parse_listen("127.0.0.1:65535")->port, 65535);
}

TEST(CliAgent, PeriodicProfiles) {
  auto off = parse_cli({"asynctrace", "agent"});
  ASSERT_TRUE(off.options);
  EXPECT_EQ(off.options->profile_dir, "");
  EXPECT_EQ(off.options->profile_push, "");
  auto d = parse_cli({"asynctrace", "agent", "--profile-dir", "/var/lib/p"});
  ASSERT_TRUE(d.options) << d.err;
  EXPECT_EQ(d.options->profile_dir, "/var/lib/p");
  EXPECT_EQ(d.options->profile_every, std::chrono::milliseconds(60000));
  EXPECT_EQ(d.options->profile_duration, std::chrono::milliseconds(10000));
  EXPECT_EQ(d.options->profile_format, "pprof");
  EXPECT_EQ(d.options->profile_mode, "cpu");
  EXPECT_EQ(d.options->profile_keep, 10u);
  auto all = parse_cli({"asynctrace", "agent", "--profile-dir", "p", "--profile-every", "3s", "--profile-duration",
                        "1s", "--profile-format", "folded", "--profile-mode", "wall", "--profile-keep", "3",
                        "--profile-push", "http://127.0.0.1:4040/ingest"});
  ASSERT_TRUE(all.options) << all.err;
  EXPECT_EQ(all.options->profile_every, std::chrono::milliseconds(3000));
  EXPECT_EQ(all.options->profile_duration, std::chrono::milliseconds(1000));
  EXPECT_EQ(all.options->profile_format, "folded");
  EXPECT_EQ(all.options->profile_mode, "wall");
  EXPECT_EQ(all.options->profile_keep, 3u);
  EXPECT_EQ(all.options->push_host, "127.0.0.1");
  EXPECT_EQ(all.options->push_port, 4040);
  EXPECT_EQ(all.options->push_path, "/ingest");
  auto push = parse_cli({"asynctrace", "agent", "--profile-push", "http://[::1]/", "--profile-every", "5m"});
  ASSERT_TRUE(push.options) << push.err;
  EXPECT_EQ(push.options->push_host, "::1");
  EXPECT_EQ(push.options->push_port, 80);
  EXPECT_EQ(push.options->profile_every, std::chrono::milliseconds(300000));
  auto any = parse_cli({"asynctrace", "agent", "--profile-push", "http://10.1.2.3:4040/ingest", "--push-any"});
  ASSERT_TRUE(any.options) << any.err;
  EXPECT_EQ(any.options->push_host, "10.1.2.3");
}

TEST(CliAgent, PeriodicProfileErrorsAreOneLine) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--profile-every", "30s"}, "--profile-every: periodic profiles need --profile-dir or --profile-push"},
      {{"--profile-duration", "1s"}, "--profile-duration: periodic profiles need"},
      {{"--profile-mode", "wall"}, "--profile-mode: periodic profiles need"},
      {{"--push-any"}, "--push-any: periodic profiles need"},
      {{"--profile-push", "http://127.0.0.1/i", "--profile-format", "svg"}, "--profile-format: applies to --profile-dir"},
      {{"--profile-push", "http://127.0.0.1/i", "--profile-keep", "3"}, "--profile-keep: applies to --profile-dir"},
      {{"--profile-dir", ""}, "--profile-dir: a directory is required"},
      {{"--profile-dir", "d", "--profile-every", "500ms"}, "--profile-every: invalid duration '500ms'"},
      {{"--profile-dir", "d", "--profile-every", "soon"}, "--profile-every: invalid duration 'soon'"},
      {{"--profile-dir", "d", "--profile-duration", "10ms"}, "--profile-duration: invalid duration '10ms'"},
      {{"--profile-dir", "d", "--profile-duration", "0"}, "--profile-duration: invalid duration"},
      {{"--profile-dir", "d", "--profile-every", "10s", "--profile-duration", "10s"},
       "--profile-duration: 10s is not shorter than --profile-every 10s"},
      {{"--profile-dir", "d", "--profile-format", "png"}, "--profile-format"},
      {{"--profile-dir", "d", "--profile-mode", "io"}, "--profile-mode"},
      {{"--profile-dir", "d", "--profile-keep", "0"}, "--profile-keep"},
      {{"--profile-push", "https://127.0.0.1/ingest"}, "--profile-push: invalid URL"},
      {{"--profile-push", "127.0.0.1:4040"}, "--profile-push: invalid URL"},
      {{"--profile-push", "http://127.0.0.1:4040/ingest?x=1"}, "--profile-push: invalid URL"},
      {{"--profile-push", "http://u@127.0.0.1/ingest"}, "--profile-push: invalid URL"},
      {{"--profile-push", "http://127.0.0.1:0/ingest"}, "--profile-push: invalid URL"},
      {{"--profile-push", "http://127.0.0.1:99999/ingest"}, "--profile-push: invalid URL"},
      {{"--profile-push", "http://pyroscope:4040/ingest"}, "--profile-push: invalid URL"},
      {{"--profile-push", "http://10.1.2.3:4040/ingest"}, "is not a loopback address"},
  };
  for (const auto& [extra, expect] : cases) {
    std::vector<std::string> args = {"asynctrace", "agent"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = parse_cli(args);
    EXPECT_FALSE(r.options) << expect;
    EXPECT_EQ(r.exit_code, 2) << expect;
    EXPECT_NE(r.err.find(expect), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find('\n'), std::string::npos) << r.err;
  }
}

TEST(CliAgent, ParsePushUrl) {
  auto u = parse_push_url("http://localhost:4040/ingest");
  ASSERT_TRUE(u);
  EXPECT_TRUE(u->loopback);
  EXPECT_EQ(u->path, "/ingest");
  auto bare = parse_push_url("http://127.0.0.1");
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare->port, 80);
  EXPECT_EQ(bare->path, "/");
  auto v6 = parse_push_url("http://[::1]:4040/a/b");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 4040);
  EXPECT_EQ(v6->path, "/a/b");
  EXPECT_FALSE(parse_push_url("http://[::1/x"));
  EXPECT_FALSE(parse_push_url("http:///ingest"));
  EXPECT_FALSE(parse_push_url("http://127.0.0.1/in gest"));
}

TEST(CliRecord, AlsoPprofIsHidden) {
  auto r = parse_cli({"asynctrace", "record", "-p", "1", "-o", "a.folded", "--also-pprof", "a.pb.gz"});
  ASSERT_TRUE(r.options) << r.err;
  EXPECT_EQ(r.options->also_pprof, "a.pb.gz");
  auto h = parse_cli({"asynctrace", "record", "--help"});
  EXPECT_EQ(h.out.find("also-pprof"), std::string::npos);
}

TEST(CliAgent, HelpEndsWithExamples) {
  auto r = parse_cli({"asynctrace", "agent", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("EXAMPLES:"), std::string::npos);
  EXPECT_NE(r.out.find("--cleanup"), std::string::npos);
}

}  // namespace
}  // namespace asynctrace

TEST(Cli, FeaturesTakesNoPidAndAFormat) {
  auto r = parse({"features"});
  ASSERT_TRUE(r.options);
  EXPECT_EQ(r.options->command, Command::Features);
  EXPECT_EQ(r.options->format, Format::Text);
  auto j = parse({"features", "--format", "json"});
  ASSERT_TRUE(j.options);
  EXPECT_EQ(j.options->format, Format::Json);
  auto bad = parse({"features", "-f", "xml"});
  EXPECT_FALSE(bad.options);
  EXPECT_EQ(bad.exit_code, kExitUsage);
}

namespace {

// The one-line error of a usage error (exit 2), "" if the words parsed.
std::string usage_error(std::vector<std::string> a) {
  auto r = parse(std::move(a));
  if (r.options) return "";
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_EQ(r.err.find('\n'), std::string::npos) << r.err;
  return r.err;
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

// Every parse error names the word that was wrong and the nearest real
// command or flag; an unknown flag is named before a missing --pid.
TEST(CliErrors, NameTheWordAndTheNearestRealOne) {
  const std::string pdi = usage_error({"pstree", "--pdi", "3053"});
  EXPECT_TRUE(has(pdi, "unknown flag '--pdi'")) << pdi;
  EXPECT_TRUE(has(pdi, "did you mean '--pid'?")) << pdi;
  EXPECT_FALSE(has(pdi, "required")) << pdi;
  const std::string pstre = usage_error({"pstre", "-p", "3053"});
  EXPECT_TRUE(has(pstre, "unknown command 'pstre'")) << pstre;
  EXPECT_TRUE(has(pstre, "did you mean 'pstree'?")) << pstre;
  const std::string stray = usage_error({"pstree", "3053"});
  EXPECT_TRUE(has(stray, "unexpected argument '3053'")) << stray;
  EXPECT_TRUE(has(stray, "-p 3053")) << stray;
  const std::string sort = usage_error({"top", "-p", "1", "--srot", "steps"});
  EXPECT_TRUE(has(sort, "top: unknown flag '--srot'") && has(sort, "'--sort'")) << sort;
  const std::string dash = usage_error({"ps", "-pid", "1"});
  EXPECT_TRUE(has(dash, "'-pid'") && has(dash, "'--pid'")) << dash;
  const std::string far = usage_error({"ps", "-p", "1", "--zzzzzz"});
  EXPECT_TRUE(has(far, "unknown flag '--zzzzzz'") && !has(far, "did you mean")) << far;
  EXPECT_TRUE(has(usage_error({"frobnicate"}), "unknown command 'frobnicate'"));
  // Still fine: flags in any order, values attached, -v after the command.
  for (const auto& ok : std::vector<std::vector<std::string>>{{"ps", "--long", "-p", "7"},
                                                             {"ps", "--pid=7", "-l"},
                                                             {"ps", "-p7"},
                                                             {"top", "-p", "7", "-v"},
                                                             {"-v", "stats", "-p", "7"},
                                                             {"agent", "--library-prefix", "/a", "/b"}})
    EXPECT_TRUE(parse(ok).options) << ok.front() << " " << parse(ok).err;
  // A missing --pid is still named.
  EXPECT_TRUE(has(usage_error({"pstree"}), "--pid is required"));
}

TEST(CliErrors, RunWithoutDashDashHints) {
  const std::string e = usage_error({"run", "python3", "-c", "print(1)"});
  EXPECT_TRUE(has(e, "'-c'") && has(e, "after '--'") && has(e, "asynctrace run -- python3 -c")) << e;
  auto plain = parse({"run", "python3", "app.py"});
  ASSERT_TRUE(plain.options) << plain.err;
  EXPECT_EQ(plain.options->run_argv, (std::vector<std::string>{"python3", "app.py"}));
  EXPECT_TRUE(parse({"run", "--", "python3", "-c", "print(1)"}).options);
}

// A bare number is refused with the accepted units named, for every
// duration flag.
TEST(CliErrors, DurationsNeedUnits) {
  for (const auto& [args, flag] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"slow", "-p", "1", "-t", "50"}, "--threshold"},
           {{"slow", "-p", "1", "-d", "5"}, "--duration"},
           {{"ps", "-p", "1", "--timeout", "2"}, "--timeout"},
           {{"attach", "-p", "1", "-d", "30"}, "--duration"},
           {{"top", "-p", "1", "-i", "1"}, "--interval"},
           {{"top", "-p", "1", "--stuck", "10"}, "--stuck"},
           {{"record", "-p", "1", "-o", "x", "-d", "10"}, "--duration"},
           {{"agent", "--scan-interval", "2"}, "--scan-interval"},
           {{"agent", "--profile-dir", "d", "--profile-every", "60"}, "--profile-every"},
           {{"agent", "--profile-dir", "d", "--profile-duration", "10"}, "--profile-duration"}}) {
    const std::string e = usage_error(args);
    EXPECT_TRUE(has(e, flag) && has(e, "unit") && has(e, "ms, s, m or h")) << e;
  }
  EXPECT_EQ(parse({"slow", "-p", "1", "-t", "50ms"}).options->threshold, 50ms);
}

// --help of every command: types named for people (PID, DURATION, N), no
// CLI11 "INT:INT in [...]", the 3.14 layout claimed by pstree and ps only,
// no --format on attach, --max-tasks only where a task map is sized.
TEST(CliHelp, TypesAndFormatsPerCommand) {
  for (const std::string cmd : {"pstree", "ps", "stats", "attach", "top", "slow", "record", "agent", "run"}) {
    SCOPED_TRACE(cmd);
    auto h = parse({cmd, "--help"});
    ASSERT_EQ(h.exit_code, 0);
    EXPECT_FALSE(has(h.out, "INT:")) << h.out;
    EXPECT_FALSE(has(h.out, "UINT")) << h.out;
    std::istringstream in(h.out);
    for (std::string line; std::getline(in, line);) {
      // An option's line: its names and type, two spaces, its description.
      const auto indent = line.find_first_not_of(' ');
      const std::string opt = indent == std::string::npos ? "" : line.substr(indent);
      if (opt.empty() || opt[0] != '-') continue;
      const std::string names = opt.substr(0, opt.find("  "));
      for (const char* d : {"--timeout", "--duration", "--interval", "--stuck", "--threshold", "--scan-interval",
                            "--profile-every", "--profile-duration"})
        if (has(names, d)) EXPECT_TRUE(has(names, "DURATION")) << line;
      if (has(names, "--pid")) EXPECT_TRUE(has(names, "PID")) << line;
      if (has(names, "--format")) EXPECT_EQ(has(line, "3.14"), cmd == "pstree" || cmd == "ps") << line;
    }
    if (cmd == "attach") EXPECT_FALSE(has(h.out, "--format")) << h.out;
  }
}

TEST(CliInject, NoInjectAndTheInjectTimeout) {
  auto r = parse({"pstree", "-p", "5"});
  ASSERT_TRUE(r.options);
  EXPECT_FALSE(r.options->no_inject);
  EXPECT_EQ(r.options->inject_timeout, 5000ms);  // loading takes a wake-up of the target: longer than a replay
  EXPECT_EQ(r.options->timeout, 2000ms);
  // --timeout given: both waits.
  r = parse({"ps", "-p", "5", "--timeout", "1s"});
  ASSERT_TRUE(r.options);
  EXPECT_EQ(r.options->inject_timeout, 1000ms);
  EXPECT_EQ(r.options->timeout, 1000ms);
  for (const char* cmd : {"pstree", "ps", "stats", "attach", "top", "slow"}) {
    r = parse({cmd, "-p", "5", "--no-inject"});
    ASSERT_TRUE(r.options) << cmd << ": " << r.err;
    EXPECT_TRUE(r.options->no_inject) << cmd;
  }
  r = parse({"record", "-p", "5", "-o", "-", "--no-inject", "--timeout", "3s"});
  ASSERT_TRUE(r.options) << r.err;
  EXPECT_TRUE(r.options->no_inject);
  EXPECT_EQ(r.options->inject_timeout, 3000ms);
  // The pre-parse word check knows the flag, and names it on a typo.
  r = parse({"pstree", "-p", "5", "--no-injct"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("did you mean '--no-inject'?"), std::string::npos) << r.err;
  r = parse({"pstree", "--help"});
  EXPECT_NE(r.out.find("--no-inject"), std::string::npos);
  EXPECT_NE(r.out.find("sys.remote_exec"), std::string::npos);
}
