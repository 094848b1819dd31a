// SPDX-License-Identifier: Apache-2.0
// parse -> run -> exit code.
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "asynctrace/probes.h"
#include "cmd/commands.h"
#include "core/cli.h"
#include "core/result.h"

namespace asynctrace {

int run_command(const Options& o) {
  switch (o.command) {
    case Command::Version:
      std::cout << "asynctrace 0.1.0 (probe ABI " << ASYNCTRACE_ABI_VERSION << ")\n";
      return kExitOk;
    case Command::Ps:
      return o.long_format ? run_ps_long(o) : run_view(o);
    case Command::Pstree:
    case Command::Stats:
      return run_view(o);
    case Command::Attach:
      return run_attach(o);
    case Command::Run:
      return run_run(o);
    case Command::Top:
      return run_top(o);
    case Command::Slow:
      return run_slow(o);
    case Command::Record:
      return run_record(o);
    case Command::Agent:
      return run_agent(o);
    case Command::Features:
      return run_features(o);
  }
  return kExitInternal;
}

}  // namespace asynctrace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);  // views stream large outputs through std::cout
  std::vector<std::string> args(argv, argv + argc);
  const auto parsed = asynctrace::parse_cli(args);
  if (!parsed.out.empty()) std::cout << parsed.out;
  if (!parsed.err.empty()) std::cerr << parsed.err << "\n";
  if (!parsed.options) return parsed.exit_code;
  try {
    return asynctrace::run_command(*parsed.options);
  } catch (const std::exception& e) {
    std::cerr << "asynctrace: internal error: " << e.what() << "\n";
    return asynctrace::kExitInternal;
  }
}
