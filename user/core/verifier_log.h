// SPDX-License-Identifier: Apache-2.0
// What libbpf says when the kernel refuses a BPF program, as text: pure
// parsing, no libbpf, so it is unit-tested without a kernel. kernel/object.cpp feeds
// it the messages of libbpf's log callback.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace asynctrace {

// One program's failed load, from libbpf 1.1's warnings:
//   "libbpf: prog 'NAME': BPF program load failed: Permission denied\n"
//   "libbpf: prog 'NAME': -- BEGIN PROG LOAD LOG --\n<log>-- END PROG LOAD LOG --\n"
struct ProgLoadFailure {
  std::string prog;     // program name as libbpf knows it (the C function)
  std::string log;      // the verifier log, whole; empty if none came
  bool has_log = false;
};

// Feeds one libbpf warning (the whole formatted message) into `f`: returns
// true if the message was about a program's failed load (then `f` holds
// what it said), false for every other message.
bool parse_prog_load_warning(std::string_view msg, ProgLoadFailure* f);

// The verifier's reason from its log: the last non-empty line that is not
// a statistics line ("processed N insns ...", "verification time ...",
// "stack depth ..."), trimmed; empty if there is none.
std::string verifier_reason(std::string_view log);

}  // namespace asynctrace
