// SPDX-License-Identifier: Apache-2.0
// parse -> run -> exit code.
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "core/cli.h"
#include "cmd/commands.h"
#include "core/result.h"

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
