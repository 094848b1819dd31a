// SPDX-License-Identifier: Apache-2.0
// Each command: Options in, exit code out. Data to stdout, diagnostics to stderr.
#pragma once

#include "core/cli.h"

namespace asynctrace {

int run_command(const Options& opts);

}  // namespace asynctrace
