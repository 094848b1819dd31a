// SPDX-License-Identifier: Apache-2.0
// The agent's periodic profiles (--profile-dir, --profile-push): every
// --profile-every, one `asynctrace record` child per traced process (at most
// kMaxRunning at once), its file kept in DIR/<pid>-<comm>/ and/or pushed to a
// Pyroscope-compatible ingest URL by one background thread. The agent's main
// loop calls tick() once a pass; nothing here blocks it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/cli.h"
#include "render/metrics.h"
#include "core/result.h"

namespace asynctrace {

class Profiler {
 public:
  static constexpr size_t kMaxRunning = 2;   // recordings at once, all processes together
  static constexpr size_t kMaxQueued = 16;   // profiles waiting to be pushed

  explicit Profiler(const Options& o);
  ~Profiler();
  Profiler(const Profiler&) = delete;
  Profiler& operator=(const Profiler&) = delete;

  // Creates the directory (0700) and the push thread.
  [[nodiscard]] Status start();
  // The processes traced now (pid, comm): starts the recordings due, reaps
  // the finished ones.
  void tick(const std::vector<std::pair<uint32_t, std::string>>& procs);
  // Ends the recordings still running (SIGTERM, then SIGKILL after 3 s),
  // pushes nothing more, removes temporaries.
  void stop();
  // Counters for the metrics.
  void fill(AgentSample& s);

 private:
  using Clock = std::chrono::steady_clock;
  struct Job {
    pid_t child = -1;
    uint32_t pid = 0;
    std::string comm, proc_dir, tmp_path, final_path, pprof_path;
    int64_t from_ms = 0;
  };
  struct Push {
    uint32_t pid = 0;
    std::string comm, body;
    int64_t from_s = 0, until_s = 0;
  };

  void spawn(uint32_t pid, const std::string& comm);
  void finish(Job& job, int status);
  void discard(const Job& job);
  void error(const std::string& reason, const std::string& detail);
  void push_loop();

  Options o_;
  std::string tmp_dir_;  // push-only temporaries
  std::map<uint32_t, Clock::time_point> next_;  // pid -> when its next recording is due
  std::vector<Job> running_;
  bool stopped_ = false;

  std::mutex mu_;  // what follows, shared with the push thread
  std::condition_variable cv_;
  std::deque<Push> queue_;
  bool quit_ = false;
  uint64_t written_ = 0, pushed_ = 0;
  std::map<std::string, uint64_t> errors_;
  std::thread pusher_;
};

}  // namespace asynctrace
