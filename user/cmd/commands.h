// SPDX-License-Identifier: Apache-2.0
// Each command: Options in, exit code out. Data to stdout, diagnostics to
// stderr. One file a command or command group defines its entry points;
// main.cpp dispatches (run_command). No command file calls another.
#pragma once

#include "core/cli.h"

namespace asynctrace {

int run_command(const Options& opts);  // main.cpp

int run_view(const Options& o);      // view_cmds.cpp: pstree, ps, stats
int run_ps_long(const Options& o);   // view_cmds.cpp: ps --long
int run_attach(const Options& o);    // attach_cmd.cpp
int run_run(const Options& o);       // run_cmd.cpp
int run_features(const Options& o);  // features_cmd.cpp
int run_top(const Options& o);       // top_cmd.cpp
int run_slow(const Options& o);      // slow_cmd.cpp
int run_record(const Options& o);    // record_cmd.cpp
int run_agent(const Options& o);     // agent_cmd.cpp

}  // namespace asynctrace
