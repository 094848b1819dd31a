// SPDX-License-Identifier: Apache-2.0
// What a pid is, from /proc alone: exists? Python? carrying asynctrace probes?
#pragma once

#include <sys/types.h>

#include <string>

#include "core/result.h"

namespace asynctrace {

enum class ProcKind { NoSuchProcess, Zombie, NotPython, PythonNoProbes, Probed };

struct ProcInfo {
  pid_t pid = 0;
  ProcKind kind = ProcKind::NoSuchProcess;
  std::string comm;        // /proc/PID/comm
  std::string exe;         // readlink /proc/PID/exe ("" if unreadable)
  std::string probe_lib;   // ELF file with asynctrace USDT notes, as mapped (path in the target's mount ns)
  std::string probe_lib_host;  // same file reachable from here (/proc/PID/root/... if needed)
};

// Classifies `pid`. `proc_root` is "/proc" except in tests.
ProcInfo inspect_process(pid_t pid, const std::string& proc_root = "/proc");

// True while /proc/PID exists and is not a zombie (cheap: one small read).
bool process_alive(pid_t pid, const std::string& proc_root = "/proc");

// Maps a non-Probed ProcInfo to the Error the CLI prints (message names the remedy).
Error proc_error(const ProcInfo& info);

// True if the ELF file at `path` carries a .note.stapsdt note of provider "asynctrace".
bool elf_has_asynctrace_probes(const std::string& path);

}  // namespace asynctrace
