// SPDX-License-Identifier: Apache-2.0
// Process plumbing for the e2e tier: spawn traced programs and the tool.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace e2e {

struct Output {
  int exit_code = -1;  // -1: killed by a signal
  std::string out, err;
  double seconds = 0;
};

// Runs argv to completion, capturing stdout and stderr.
Output run(const std::vector<std::string>& argv, std::chrono::seconds timeout = std::chrono::seconds(60));

// A background program whose stdout is read line by line.
class Program {
 public:
  explicit Program(const std::vector<std::string>& argv, const std::string& cwd = "");
  ~Program();
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;

  pid_t pid() const { return pid_; }
  // Waits for a stdout line equal to `line`; false on timeout or exit.
  bool wait_line(const std::string& line, std::chrono::milliseconds timeout);
  // Waits for a stdout line starting with `prefix`; returns the whole line.
  std::optional<std::string> wait_prefix(const std::string& prefix, std::chrono::milliseconds timeout);
  void signal(int sig);
  // Waits for exit; returns the exit status (or -signal) and all stdout.
  int wait_exit(std::chrono::seconds timeout, std::string* all_out);
  const std::string& stderr_text();

 private:
  void pump(int timeout_ms);
  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  std::string out_, err_;
  size_t scanned_ = 0;
  bool exited_ = false;
  int status_ = 0;
};

std::string read_file(const std::string& path);
std::string source_dir();
std::string binary_dir();

// Python interpreters the runtime was built for: (tag, interpreter path).
std::vector<std::pair<std::string, std::string>> built_pythons();

// Order-insensitive form of a pstree: each line as the path of labels from its
// root, sorted. Children order depends on task enumeration, not structure.
std::vector<std::string> tree_paths(const std::string& text);
std::vector<std::string> sorted_lines(const std::string& text, size_t skip_header);

// Polls `done` every 20 ms until it is true or `timeout` passes; returns its last value.
bool poll_until(const std::function<bool()>& done, std::chrono::milliseconds timeout);

// Process state letter from /proc/PID/stat ('R', 'S', 'Z', ...; 0 if gone).
char proc_state(pid_t pid);

// What the kernel holds of asynctrace for one traced process, from bpftool:
// our BPF programs whose .rodata target_tgid is `pid` (any asynctrace build on
// the machine, so other test runs do not count), links of those programs, and
// pins (/sys/fs/bpf/asynctrace/PID and its maps, /run/asynctrace/PID.lock).
struct KernelHold {
  int progs = 0, links = 0, pins = 0;
  std::vector<int> prog_ids;
  std::string detail;  // what was found, for failure messages
  bool empty() const { return progs == 0 && links == 0 && pins == 0; }
};
KernelHold kernel_hold(pid_t pid);
// Polls kernel_hold until it is empty: a one-shot view leaves its detach to
// a child that finishes one kernel grace period after the command exits.
KernelHold wait_kernel_released(pid_t pid, std::chrono::seconds timeout = std::chrono::seconds(30));

}  // namespace e2e
