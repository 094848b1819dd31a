// SPDX-License-Identifier: Apache-2.0
// The agent's periodic profiles (agent_profiler.h). A recording is the
// `record` command in a child of its own: its BPF object, its steps__on hold
// and its memory come and go with it, and a crash of it costs one profile.
#include "cmd/agent_profiler.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "core/escape.h"
#include "profile/profile_schedule.h"

namespace asynctrace {
namespace {

namespace fs = std::filesystem;

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A directory only root reads: profiles name processes and functions.
bool make_private_dir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return false;
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  return chmod(path.c_str(), 0700) == 0;
}

}  // namespace

Profiler::Profiler(const Options& o) : o_(o) {
  if (!o_.profile_dir.empty()) {
    std::error_code ec;
    const auto abs = fs::absolute(o_.profile_dir, ec);
    if (!ec) o_.profile_dir = abs.lexically_normal().string();
    while (o_.profile_dir.size() > 1 && o_.profile_dir.back() == '/') o_.profile_dir.pop_back();
  }
}

Profiler::~Profiler() { stop(); }

Status Profiler::start() {
  if (!o_.profile_dir.empty()) {
    std::error_code ec;
    fs::create_directories(o_.profile_dir, ec);
    if (ec || !make_private_dir(o_.profile_dir))
      return Error{kExitUsage, "failed to create profile directory '" + escape_untrusted(o_.profile_dir) +
                                   "': " + (ec ? ec.message() : std::string(std::strerror(errno)))};
  }
  if (!o_.profile_push.empty()) {
    // Only the pushed pprof goes here when there is no profile directory.
    std::string tmpl = (fs::temp_directory_path() / "asynctrace-profiles-XXXXXX").string();
    if (!mkdtemp(tmpl.data()))
      return Error{kExitInternal, std::string("failed to create a temporary directory: ") + std::strerror(errno)};
    tmp_dir_ = tmpl;
    pusher_ = std::thread([this] { push_loop(); });
  }
  return ok_status();
}

void Profiler::error(const std::string& reason, const std::string& detail) {
  {
    std::lock_guard lock(mu_);
    ++errors_[reason];
  }
  if (o_.verbose) std::cerr << "asynctrace: profile: " << detail << "\n";
}

void Profiler::tick(const std::vector<std::pair<uint32_t, std::string>>& procs) {
  if (stopped_) return;
  for (auto it = running_.begin(); it != running_.end();) {
    int status = 0;
    const pid_t r = waitpid(it->child, &status, WNOHANG);
    if (r == 0) {
      ++it;
      continue;
    }
    if (r == it->child) finish(*it, status);
    else discard(*it);  // not ours any more (cannot happen): forget it
    it = running_.erase(it);
  }
  const auto now = Clock::now();
  std::set<uint32_t> alive;
  for (const auto& [pid, comm] : procs) {
    alive.insert(pid);
    // The first profile of a process one period after the agent saw it.
    next_.try_emplace(pid, now + o_.profile_every);
  }
  for (auto it = next_.begin(); it != next_.end();)
    it = alive.count(it->first) ? std::next(it) : next_.erase(it);
  for (const auto& [pid, comm] : procs) {
    if (running_.size() >= kMaxRunning) break;
    auto& due = next_[pid];
    if (now < due) continue;
    bool busy = false;
    for (const Job& j : running_) busy = busy || j.pid == pid;
    if (busy) continue;
    due = now + o_.profile_every;
    spawn(pid, comm);
  }
}

void Profiler::spawn(uint32_t pid, const std::string& comm) {
  Job job;
  job.pid = pid;
  job.comm = comm;
  job.from_ms = unix_ms();
  const std::string stamp = utc_stamp(job.from_ms);
  const bool push = !o_.profile_push.empty();
  std::vector<std::string> args = {"asynctrace", "record", "-p", std::to_string(pid), "-d",
                                   std::to_string(o_.profile_duration.count()) + "ms", "-m", o_.profile_mode};
  if (!o_.profile_dir.empty()) {
    job.proc_dir = o_.profile_dir + "/" + std::to_string(pid) + "-" + sanitize_file_name(comm);
    if (!make_private_dir(job.proc_dir)) {
      error("write_failed", "failed to create directory '" + escape_untrusted(job.proc_dir) +
                                "': " + std::strerror(errno));
      return;
    }
    const std::string name = stamp + "." + profile_extension(o_.profile_format);
    // Written under a dot name and renamed when complete: a reader of the
    // directory never sees half a profile.
    job.tmp_path = job.proc_dir + "/." + name + ".part";
    job.final_path = job.proc_dir + "/" + name;
    args.insert(args.end(), {"-f", o_.profile_format, "-o", job.tmp_path});
    if (push && o_.profile_format != "pprof") {
      job.pprof_path = tmp_dir_ + "/" + std::to_string(pid) + "-" + stamp + ".pb.gz";
      args.insert(args.end(), {"--also-pprof", job.pprof_path});
    }
  } else {
    job.pprof_path = tmp_dir_ + "/" + std::to_string(pid) + "-" + stamp + ".pb.gz";
    args.insert(args.end(), {"-f", "pprof", "-o", job.pprof_path});
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const bool quiet = !o_.verbose;
  const pid_t child = fork();
  if (child == 0) {
    // Only async-signal-safe calls between fork and exec (the agent has threads).
    const int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);  // the agent's stdout is its data (the metrics URL line)
      if (quiet) dup2(null, 2);
    }
    // None of the agent's descriptors (BPF objects, sockets) in the child.
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
#endif
      for (int fd = 3; fd < 4096; ++fd) close(fd);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  if (child < 0) {
    error("spawn_failed", std::string("failed to start a recording: ") + std::strerror(errno));
    return;
  }
  job.child = child;
  if (o_.verbose)
    std::cerr << "asynctrace: profile: recording pid " << pid << " for "
              << o_.profile_duration.count() << " ms (child " << child << ")\n";
  running_.push_back(std::move(job));
}

void Profiler::discard(const Job& job) {
  for (const std::string& p : {job.tmp_path, job.pprof_path})
    if (!p.empty()) unlink(p.c_str());
}

void Profiler::finish(Job& job, int status) {
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code != 0) {
    discard(job);
    const std::string how = WIFSIGNALED(status) ? std::string("killed by ") + strsignal(WTERMSIG(status))
                                                : "exit code " + std::to_string(code);
    if (code == kExitProcessExited || code == kExitNoProcess)
      error("process_exited", "pid " + std::to_string(job.pid) + " exited during its recording");
    else
      error("record_failed", "recording of pid " + std::to_string(job.pid) + " failed (" + how +
                                 "; run asynctrace record -p " + std::to_string(job.pid) + " to see why)");
    return;
  }
  const int64_t until_ms = unix_ms();
  if (!job.final_path.empty()) {
    if (rename(job.tmp_path.c_str(), job.final_path.c_str()) != 0) {
      error("write_failed", "failed to rename '" + escape_untrusted(job.tmp_path) + "': " + std::strerror(errno));
      discard(job);
      return;
    }
    {
      std::lock_guard lock(mu_);
      ++written_;
    }
    if (o_.verbose) std::cerr << "asynctrace: profile: wrote '" << escape_untrusted(job.final_path) << "'\n";
    // Retention: the oldest beyond --profile-keep go.
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(job.proc_dir, ec)) names.push_back(e.path().filename().string());
    for (const std::string& n : profiles_to_remove(names, o_.profile_keep)) unlink((job.proc_dir + "/" + n).c_str());
  }
  if (o_.profile_push.empty()) return;
  const std::string& src = job.pprof_path.empty() ? job.final_path : job.pprof_path;
  Push p{job.pid, job.comm, read_all(src), job.from_ms / 1000, (until_ms + 999) / 1000};
  if (!job.pprof_path.empty()) unlink(job.pprof_path.c_str());
  if (p.body.empty()) {
    error("record_failed", "recording of pid " + std::to_string(job.pid) + " left no pprof");
    return;
  }
  bool full = false;
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= kMaxQueued) {
      queue_.pop_front();
      full = true;
    }
    queue_.push_back(std::move(p));
  }
  cv_.notify_one();
  if (full) error("push_queue_full", "the ingest URL is behind: the oldest waiting profile dropped");
}

void Profiler::push_loop() {
  const std::string config = sample_type_config(o_.profile_mode);
  for (;;) {
    Push p;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return quit_ || !queue_.empty(); });
      if (quit_) return;
      p = std::move(queue_.front());
      queue_.pop_front();
    }
    httplib::Client cli(o_.push_host, o_.push_port);
    cli.set_connection_timeout(3);
    cli.set_read_timeout(10);
    cli.set_write_timeout(10);
    cli.set_url_encode(false);  // ingest_target encodes the query itself
    const httplib::MultipartFormDataItems items = {
        {"profile", p.body, "profile.pb.gz", "application/octet-stream"},
        {"sample_type_config", config, "sample_type_config.json", "application/json"},
    };
    const std::string target = ingest_target(o_.push_path, p.pid, p.comm, p.from_s, p.until_s);
    auto res = cli.Post(target, items);
    if (!res) {
      error("push_failed", "failed to push the profile of pid " + std::to_string(p.pid) + " to '" +
                               escape_untrusted(o_.profile_push) + "': " + httplib::to_string(res.error()));
    } else if (res->status / 100 != 2) {
      error("push_rejected", "'" + escape_untrusted(o_.profile_push) + "' answered " + std::to_string(res->status) +
                                 " to the profile of pid " + std::to_string(p.pid) + ": " +
                                 escape_untrusted(res->body.substr(0, 200)));
    } else {
      std::lock_guard lock(mu_);
      ++pushed_;
    }
  }
}

void Profiler::stop() {
  if (stopped_) return;
  stopped_ = true;
  // The recordings write what they have and detach on SIGTERM; the files
  // are not kept (incomplete periods would skew a series).
  for (const Job& j : running_) kill(j.child, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::seconds(3);
  while (!running_.empty()) {
    for (auto it = running_.begin(); it != running_.end();) {
      int status = 0;
      if (waitpid(it->child, &status, WNOHANG) != 0) {
        discard(*it);
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
    if (running_.empty()) break;
    if (Clock::now() >= deadline) {
      for (const Job& j : running_) {
        kill(j.child, SIGKILL);
        waitpid(j.child, nullptr, 0);
        discard(j);
      }
      running_.clear();
      break;
    }
    usleep(50 * 1000);
  }
  {
    std::lock_guard lock(mu_);
    quit_ = true;
  }
  cv_.notify_all();
  if (pusher_.joinable()) pusher_.join();
  if (!tmp_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(tmp_dir_, ec);
  }
}

void Profiler::fill(AgentSample& s) {
  std::lock_guard lock(mu_);
  s.profiling = true;
  s.profiles_written = written_;
  s.profiles_pushed = pushed_;
  s.profile_errors.clear();
  // Every reason, 0 until it happens: rate() needs the series to exist.
  for (const char* r : {"spawn_failed", "record_failed", "process_exited", "write_failed", "push_failed",
                        "push_rejected", "push_queue_full"}) {
    auto it = errors_.find(r);
    s.profile_errors.emplace_back(r, it == errors_.end() ? 0 : it->second);
  }
}

}  // namespace asynctrace
