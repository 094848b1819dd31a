// SPDX-License-Identifier: Apache-2.0
// Recoverable errors are values: Result<T> holds a T or an Error carrying the
// documented process exit code (docs/exit-codes in README) and one message line.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace asynctrace {

// Stable exit codes; documented in README.md and docs/cli.md.
enum ExitCode : int {
  kExitOk = 0,
  kExitInternal = 1,       // unexpected failure (a bug, or the kernel said no in an unforeseen way)
  kExitUsage = 2,          // bad flags or flag values
  kExitNoProcess = 3,      // no such process (or a zombie)
  kExitNotPython = 4,      // not a Python process
  kExitNoProbes = 5,       // Python process without asynctrace probes
  kExitPrivilege = 6,      // missing root / CAP_BPF+CAP_PERFMON
  kExitTracing = 7,        // BPF/tracefs unavailable, attach or load failed
  kExitReplayTimeout = 8,  // runtime did not answer the attach (replay) in time
  kExitProcessExited = 9,  // the traced process exited while being traced
};

struct Error {
  int code = kExitInternal;
  std::string message;  // one line, "failed to <verb> <object>: <reason>[; remedy]"
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT(google-explicit-constructor)
  Result(Error err) : v_(std::move(err)) {}          // NOLINT(google-explicit-constructor)
  bool ok() const { return v_.index() == 0; }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

struct Unit {};
using Status = Result<Unit>;
inline Status ok_status() { return Unit{}; }

}  // namespace asynctrace
