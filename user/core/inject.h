// SPDX-License-Identifier: Apache-2.0
// The pure half of loading the runtime into an unprepared CPython 3.14+
// process (PEP 768's sys.remote_exec; cmd/inject.h does it): what the
// target's _Py_DebugOffsets say about its build, which builds we refuse,
// the script the target runs, and the one line each failure prints.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/result.h"

namespace asynctrace {

// CPython's build as the first fields of its _Py_DebugOffsets say (the
// .PyRuntime section of the executable or libpython, 3.13+): cookie
// "xdebugpy", u64 PY_VERSION_HEX, u64 free_threaded.
struct PythonBuild {
  uint64_t version_hex = 0;  // 0x030E07F0: 3.14.7 final
  bool free_threaded = false;
  int major() const { return static_cast<int>((version_hex >> 24) & 0xFF); }
  int minor() const { return static_cast<int>((version_hex >> 16) & 0xFF); }
  std::string tag() const;  // "cp314"
};

constexpr size_t kDebugOffsetsPrefix = 24;  // cookie, version, free_threaded

// nullopt unless `bytes` starts with the cookie and holds the two fields.
std::optional<PythonBuild> decode_debug_offsets(std::string_view bytes);

// Why this build cannot be injected (exit 5), or nullopt if it can: before
// 3.14 (no sys.remote_exec), or free-threaded (no runtime for it yet).
// `build` nullopt: no debug offsets found (before 3.13, or stripped).
std::optional<Error> refuse_build(pid_t pid, const std::string& comm, const std::optional<PythonBuild>& build);

// The Python source the target runs: nothing unless the program imported
// asyncio; else puts `package_dir` first on sys.path,
// imports asynctrace and enables it, then leaves sys.path, the path importer
// cache and sys.dont_write_bytecode as they were; swallows every exception
// (the target's output must not change).
std::string inject_script(const std::string& package_dir);

// The injecting interpreter reports a failed sys.remote_exec as one line
// "TYPE\tMESSAGE"; this maps it to the error we print. `ptrace_scope` is
// /proc/sys/kernel/yama/ptrace_scope (-1 if absent).
Error injector_error(pid_t pid, const std::string& comm, const std::string& report, int ptrace_scope);

}  // namespace asynctrace
