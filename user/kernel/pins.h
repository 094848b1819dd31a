// SPDX-License-Identifier: Apache-2.0
// Internal to kernel/ (loader.h has the public part): what `attach` and the
// agent leave on disk. Pinned maps of one process plus the lock that says
// their holder is alive: a flock on /run/asynctrace/<pid>.lock, which the
// kernel drops when the holder dies, however it dies, so readers can tell
// stale pins. Everything private: directories 0700, files 0600.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <string>

#include "core/result.h"

struct asynctrace_bpf;

namespace asynctrace {

std::string lock_path(pid_t pid);  // /run/asynctrace/<pid>.lock
void remove_pins(pid_t pid);
// Pins and lock of a holder that is gone.
void remove_stale(pid_t pid);

// The pins and lock of one holder, removed with it.
struct Pins {
  pid_t pid = 0;
  int lock_fd = -1;
  bool pinned = false;
  Pins() = default;
  Pins(const Pins&) = delete;
  Pins& operator=(const Pins&) = delete;
  ~Pins();
};

// Takes the lock of `pid` and pins the maps of `skel` under pin_dir(pid);
// `pins` undoes it.
Status pin_maps(pid_t pid, asynctrace_bpf* skel, Pins& pins);

// `path` (a directory if `dir`) owned by root or by us, with mode 0700/0600.
Status make_private(const std::string& path, bool dir);
Status make_private_dir(const std::string& path);

}  // namespace asynctrace
