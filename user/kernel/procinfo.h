// SPDX-License-Identifier: Apache-2.0
// What a pid is, from /proc alone: exists? Python? carrying asynctrace probes?
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "core/inject.h"
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

// The target's CPython build, from the _Py_DebugOffsets at the start of the
// .PyRuntime section of its libpython or executable (as mapped): read from
// the files, nothing of the process runs. nullopt: none found (before 3.13).
std::optional<PythonBuild> python_build(pid_t pid, const std::string& proc_root = "/proc");

// Who the process is when it opens files: fsuid, fsgid and supplementary
// groups from /proc/PID/status. nullopt if unreadable.
struct ProcCreds {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};
std::optional<ProcCreds> proc_creds(pid_t pid);

// True if `path` (every directory on the way, and the file itself) can be
// read by `creds` according to its mode bits; uid 0 reads everything.
// *why names the first component that cannot be.
bool readable_by(const std::string& path, const ProcCreds& creds, std::string* why);

// True if `pid` sees the files we see: same mount namespace and root.
bool same_mount_namespace(pid_t pid);

// /proc/PID/stat's starttime (clock ticks since boot; 0 if gone): with the
// pid, names one process across pid reuse.
uint64_t proc_start_time(pid_t pid);

// True if the ELF file at `path` carries a .note.stapsdt note of provider "asynctrace".
bool elf_has_asynctrace_probes(const std::string& path);

// The program of a /proc directory ("/proc/self", "/proc/1234"): readlink of
// its exe, "" if unreadable.
std::string proc_exe(const std::string& proc_dir);

// The directory of this binary ("." if unknown): where `run` and the agent
// find the runtimes installed beside it.
std::string self_dir();

// True if `path` starts with one of `prefixes` (every path if there are none):
// the agent's --library-prefix.
bool under_prefixes(const std::string& path, const std::vector<std::string>& prefixes);

// Notices a traced program going away while its pid stays: an fd on
// /proc/PID/maps refers to the address space of the program it was opened
// on, and reads nothing once exec() replaced (or exit() dropped) it.
class ImageWatch {
 public:
  explicit ImageWatch(pid_t pid);
  ~ImageWatch();
  ImageWatch(ImageWatch&& o) noexcept : pid_(o.pid_), fd_(o.fd_) { o.fd_ = -1; }
  ImageWatch(const ImageWatch&) = delete;
  ImageWatch& operator=(const ImageWatch&) = delete;
  ImageWatch& operator=(ImageWatch&&) = delete;

  bool valid() const { return fd_ >= 0; }
  // The address space it was opened on is gone (exec, exit, or the pid reused).
  bool image_gone() const;
  // Gone, and the pid lives on with a new address space: the program exec'd.
  bool replaced() const;

 private:
  pid_t pid_;
  int fd_;
};

}  // namespace asynctrace
