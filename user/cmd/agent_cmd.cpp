// SPDX-License-Identifier: Apache-2.0
// `asynctrace agent`: finds the probe libraries processes map, attaches each
// once for every process (kernel/loader.h's Agent), forgets processes that exited,
// and serves the maps as OpenMetrics (metrics.cpp) over cpp-httplib.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cmd/agent_profiler.h"
#include "cmd/commands.h"
#include "cmd/session.h"
#include "core/escape.h"
#include "kernel/loader.h"
#include "render/metrics.h"
#include "kernel/procinfo.h"

namespace asynctrace {
namespace {

// Start time of a process (clock ticks after boot, /proc/PID/stat field 22):
// with the pid, it names one process; 0 if unreadable.
uint64_t start_ticks(uint32_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto rp = s.rfind(')');
  if (rp == std::string::npos || rp + 2 >= s.size()) return 0;
  std::istringstream ls(s.substr(rp + 2));
  std::string f;
  for (int i = 3; i < 22 && ls >> f; ++i) {
  }
  uint64_t t = 0;
  ls >> t;
  return t;
}

// CLOCK_BOOTTIME (process start times) minus CLOCK_MONOTONIC (BPF times).
uint64_t boot_minus_mono_ns() {
  timespec b{}, m{};
  clock_gettime(CLOCK_BOOTTIME, &b);
  clock_gettime(CLOCK_MONOTONIC, &m);
  const auto ns = [](const timespec& t) {
    return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(t.tv_nsec);
  };
  return ns(b) > ns(m) ? ns(b) - ns(m) : 0;  // equal without a suspend, but read one after the other
}

// /proc start times are truncated to clock ticks: a task of the process is
// never created before the truncated start. The slack covers reading the two
// clocks one after the other.
constexpr uint64_t kStartSlackNs = 1'000'000;

std::string read_comm(uint32_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
  std::string line;
  std::getline(in, line);
  return line;
}

// Probe libraries among the files processes map. What each mapped file is
// (asynctrace notes or not) is remembered by device and inode, so a scan
// reads /proc/PID/maps of every process but parses each ELF file once.
class LibraryScan {
 public:
  explicit LibraryScan(std::vector<std::string> prefixes) : prefixes_(std::move(prefixes)) {}

  // Paths (reachable from here) of the probe libraries mapped now, one per file.
  std::vector<std::string> scan() {
    std::vector<std::string> out;
    std::set<std::pair<std::string, uint64_t>> found;
    DIR* d = opendir("/proc");
    if (!d) return out;
    while (const dirent* e = readdir(d)) {
      char* end = nullptr;
      const long pid = std::strtol(e->d_name, &end, 10);
      if (pid <= 0 || *end != '\0') continue;
      scan_process(static_cast<pid_t>(pid), found, out);
    }
    closedir(d);
    return out;
  }
  size_t known_files() const { return probed_.size(); }

 private:
  void scan_process(pid_t pid, std::set<std::pair<std::string, uint64_t>>& found, std::vector<std::string>& out) {
    const std::string proc = "/proc/" + std::to_string(pid);
    std::ifstream in(proc + "/maps");
    std::string line;
    while (std::getline(in, line)) {
      // addr perms offset dev inode path
      std::istringstream ls(line);
      std::string addr, perms, offset, dev, path;
      uint64_t inode = 0;
      if (!(ls >> addr >> perms >> offset >> dev >> inode) || inode == 0) continue;
      std::getline(ls >> std::ws, path);
      if (path.empty() || path[0] != '/') continue;
      if (path.size() > 10 && path.compare(path.size() - 10, 10, " (deleted)") == 0) continue;
      const auto key = std::make_pair(dev, inode);
      if (found.count(key)) continue;
      auto it = probed_.find(key);
      if (it == probed_.end()) {
        bool probed = false;
        const std::string host = host_path(proc, path, inode);
        if (under_prefixes(path, prefixes_) && elf_has_asynctrace_probes(host)) probed = true;
        it = probed_.emplace(key, probed ? host : std::string()).first;
      }
      if (it->second.empty()) continue;
      found.insert(key);
      out.push_back(it->second);
    }
  }

  // The file as reachable from here: the plain path if it is the same inode,
  // else through the process's root (containers).
  static std::string host_path(const std::string& proc, const std::string& path, uint64_t inode) {
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && st.st_ino == inode) return path;
    return proc + "/root" + path;
  }

  std::vector<std::string> prefixes_;
  std::map<std::pair<std::string, uint64_t>, std::string> probed_;  // (dev, inode) -> host path, "" = none
};

// The runtimes installed beside this binary (<dir>/python/<tag>/asynctrace/
// _asynctrace*.so, what `asynctrace run` loads): attached at start, so that
// a process started later is traced from its first task.
std::vector<std::string> bundled_runtimes() {
  std::vector<std::string> out;
  const std::string dir = self_dir() + "/python";
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (const dirent* tag = readdir(d)) {
    if (tag->d_name[0] == '.') continue;
    const std::string pkg = dir + "/" + tag->d_name + "/asynctrace";
    DIR* p = opendir(pkg.c_str());
    if (!p) continue;
    while (const dirent* f = readdir(p)) {
      const std::string name = f->d_name;
      if (name.rfind("_asynctrace", 0) == 0 && name.size() > 3 && name.compare(name.size() - 3, 3, ".so") == 0)
        out.push_back(pkg + "/" + name);
    }
    closedir(p);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// The agent's own CPU and memory, from /proc/self.
AgentSample self_sample(double start_time) {
  AgentSample a;
  a.start_time_seconds = start_time;
  std::ifstream stat("/proc/self/stat");
  std::string s((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto rp = s.rfind(')');
  if (rp != std::string::npos) {
    std::istringstream ls(s.substr(rp + 2));
    std::string f;
    unsigned long long utime = 0, stime = 0;
    // fields 3..13, then utime (14) and stime (15)
    for (int i = 3; i <= 13 && ls >> f; ++i) {
    }
    ls >> utime >> stime;
    a.cpu_seconds = static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) a.rss_bytes = std::stoull(line.substr(6)) * 1024;
  return a;
}

// What the endpoint serves: the samples of the last interval.
struct Published {
  std::mutex mu;
  std::vector<ProcessSample> procs;
  size_t libraries = 0;
  double start_time = 0;
  uint64_t scrapes_openmetrics = 0, scrapes_text = 0;
  AgentSample profiles;  // the periodic profiles' counters, when on
};

// Serves `pub` at /metrics: OpenMetrics or Prometheus text by the Accept header.
void serve_metrics(httplib::Server& svr, Published& pub) {
  // Two threads and no keep-alive: Prometheus and a curl never wait on each other.
  svr.new_task_queue = [] { return new httplib::ThreadPool(2); };
  svr.set_keep_alive_max_count(1);
  svr.Get("/metrics", [&pub](const httplib::Request& req, httplib::Response& res) {
    const auto accept = req.get_header_value("Accept");
    const ExpositionFormat f = accept.find("application/openmetrics-text") != std::string::npos
                                   ? ExpositionFormat::OpenMetrics
                                   : ExpositionFormat::Text;
    std::string body;
    {
      std::lock_guard lock(pub.mu);
      ++(f == ExpositionFormat::OpenMetrics ? pub.scrapes_openmetrics : pub.scrapes_text);
      AgentSample self = self_sample(pub.start_time);
      self.libraries = pub.libraries;
      self.scrapes_openmetrics = pub.scrapes_openmetrics;
      self.scrapes_text = pub.scrapes_text;
      self.profiling = pub.profiles.profiling;
      self.profiles_written = pub.profiles.profiles_written;
      self.profiles_pushed = pub.profiles.profiles_pushed;
      self.profile_errors = pub.profiles.profile_errors;
      body = render_metrics(pub.procs, self, f);
    }
    res.set_content(body, content_type(f));
  });
  svr.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("asynctrace agent: metrics at /metrics\n", "text/plain");
  });
}

// The port bound (--listen; 0 picks one), before anything is attached.
Result<int> bind_listener(const Options& o, httplib::Server& svr) {
  int port = o.listen_port;
  if (port == 0) port = svr.bind_to_any_port(o.listen_host);
  else if (!svr.bind_to_port(o.listen_host, port)) port = -1;
  if (port <= 0)
    return Error{kExitUsage, "failed to listen on '" + o.listen_host + ":" + std::to_string(o.listen_port) +
                                 "': " + std::strerror(errno) + " (another exporter on that port? see --listen)"};
  return port;
}

// Paths compare with the absolute paths in /proc/PID/maps.
std::vector<std::string> absolute_paths(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const std::string& p : paths) {
    std::error_code ec;
    const auto abs = std::filesystem::absolute(p, ec);
    out.push_back(ec ? p : abs.lexically_normal().string());
  }
  return out;
}

// --library files, then the runtimes installed beside us (under the
// prefixes). An explicit --library that cannot be attached is an error.
Status attach_initial(const Options& o, Agent& agent, const std::vector<std::string>& prefixes) {
  std::vector<std::string> initial = absolute_paths(o.libraries);
  const size_t explicit_count = initial.size();
  for (const std::string& lib : bundled_runtimes())
    if (under_prefixes(lib, prefixes)) initial.push_back(lib);
  for (size_t i = 0; i < initial.size(); ++i) {
    const std::string& lib = initial[i];
    if (Status st = agent.attach_library(lib); !st.ok()) {
      const auto first = std::find(initial.begin(), initial.end(), lib) - initial.begin();
      if (static_cast<size_t>(first) < explicit_count) return st;
      std::cerr << "asynctrace: warning: " << escape_untrusted(st.error().message) << "\n";
    } else if (o.verbose) {
      std::cerr << "asynctrace: agent attached '" << escape_untrusted(lib) << "'\n";
    }
  }
  return ok_status();
}

// Libraries that processes started to map since the last scan.
void attach_new_libraries(Agent& agent, LibraryScan& libs) {
  for (const std::string& lib : libs.scan()) {
    const size_t before = agent.libraries();
    if (Status st = agent.attach_library(lib); !st.ok())
      std::cerr << "asynctrace: warning: " << escape_untrusted(st.error().message) << "\n";
    else if (agent.libraries() > before)
      std::cerr << "asynctrace: agent attached '" << escape_untrusted(lib) << "'\n";
  }
}

// What the agent remembers of each process between passes: its start time,
// its program (exec detection), its last loop mark.
class ProcessBook {
 public:
  struct Pass {
    std::vector<ProcessSample> samples;
    std::vector<uint32_t> dead;    // exited: their entries go
    std::vector<uint32_t> reused;  // a new program under the pid: entries go, it replays
  };

  // One pass over the snapshots of every process.
  Pass sample(const std::vector<Snapshot>& snaps) {
    Pass out;
    const uint64_t now_ns = monotonic_ns();
    std::unordered_map<uint32_t, LoopMark> next_marks;
    for (const Snapshot& s : snaps) {
      if (!process_alive(static_cast<pid_t>(s.pid))) {
        out.dead.push_back(s.pid);
        continue;
      }
      if (stale(s)) {
        images_.erase(s.pid);
        out.reused.push_back(s.pid);
        continue;
      }
      auto m = marks_.find(s.pid);
      out.samples.push_back(sample_process(s, read_comm(s.pid), m == marks_.end() ? nullptr : &m->second, now_ns,
                                           last_sample_ns_));
      next_marks[s.pid] = LoopMark{s.counters.busy_ns, s.counters.loop_at_ns};
    }
    // Keep the old mark while the runtime sent no newer LOOP record.
    for (auto& [pid, mark] : next_marks) {
      auto m = marks_.find(pid);
      if (m != marks_.end() && mark.loop_at_ns == m->second.loop_at_ns) mark = m->second;
    }
    marks_ = std::move(next_marks);
    last_sample_ns_ = now_ns;
    return out;
  }

  // Forgets what it knew of the processes whose entries went.
  void forget(const Pass& p) {
    for (uint32_t pid : p.dead) {
      starts_.erase(pid);
      images_.erase(pid);
      marks_.erase(pid);
    }
    for (uint32_t pid : p.reused) marks_.erase(pid);
  }

 private:
  // A pid that exited and came back as another process between two passes,
  // or that exec'd: the old entries go, and the new process replays its
  // own. Seen by its start time changing, or, if we never saw the old one
  // alive, by tasks created before the process started, or by the program
  // we first saw being gone.
  bool stale(const Snapshot& s) {
    const uint64_t start = start_ticks(s.pid);
    auto [st, fresh] = starts_.try_emplace(s.pid, start);
    bool stale = !fresh && start && st->second != start;
    st->second = start;
    if (!stale && fresh && start) {
      const uint64_t start_ns = start * (1'000'000'000ull / static_cast<uint64_t>(sysconf(_SC_CLK_TCK)));
      const uint64_t offset = boot_minus_mono_ns();
      const uint64_t start_mono = start_ns > offset ? start_ns - offset : 0;
      for (const TaskRecord& t : s.tasks)
        if (t.create_ns && t.create_ns + kStartSlackNs < start_mono) stale = true;
    }
    auto img = images_.find(s.pid);
    if (img == images_.end()) {
      ImageWatch w(static_cast<pid_t>(s.pid));
      if (w.valid()) images_.emplace(s.pid, std::move(w));
    } else if (img->second.image_gone() && process_alive(static_cast<pid_t>(s.pid))) {
      stale = true;  // exec(), or another process with this pid
    }
    return stale;
  }

  std::unordered_map<uint32_t, LoopMark> marks_;
  uint64_t last_sample_ns_ = monotonic_ns();
  std::unordered_map<uint32_t, uint64_t> starts_;     // pid -> start time of the process we hold state of
  std::unordered_map<uint32_t, ImageWatch> images_;  // pid -> the program we hold state of
};

// Removes the entries of exited and reused pids; asks the new programs
// under reused pids for a replay.
void forget_processes(const Options& o, Agent& agent, ProcessBook& book, const ProcessBook::Pass& pass) {
  agent.withdraw_requests();
  std::vector<uint32_t> gone = pass.dead;
  gone.insert(gone.end(), pass.reused.begin(), pass.reused.end());
  if (Status st = agent.forget(gone); !st.ok())
    std::cerr << "asynctrace: warning: " << st.error().message << "\n";
  book.forget(pass);
  for (uint32_t pid : pass.reused) {
    if (o.verbose) std::cerr << "asynctrace: pid " << pid << " runs a new program: entries of the old one removed\n";
    const ProcInfo info = inspect_process(static_cast<pid_t>(pid));
    if (info.kind != ProcKind::Probed) continue;
    if (Status st = agent.request_replay(info); !st.ok() && o.verbose)
      std::cerr << "asynctrace: " << st.error().message << "\n";
  }
}

// The main loop: scan, sample, forget, profile, collect, publish; once a
// second until a stop signal. Returns the exit code.
int agent_loop(const Options& o, Agent& agent, Profiler* profiler, Published& pub,
               const std::vector<std::string>& prefixes) {
  LibraryScan libs(prefixes);
  ProcessBook book;
  using Clock = std::chrono::steady_clock;
  auto next_scan = Clock::now();
  auto next_gc = Clock::now() + std::chrono::seconds(10);
  while (!g_stop) {
    const auto now = Clock::now();
    if (now >= next_scan) {
      next_scan = now + o.scan;
      attach_new_libraries(agent, libs);
    }
    auto snaps = agent.snapshots();
    if (!snaps.ok()) return fail(snaps.error());
    ProcessBook::Pass pass = book.sample(snaps.value());
    forget_processes(o, agent, book, pass);
    if (profiler) {
      std::vector<std::pair<uint32_t, std::string>> procs;
      for (const ProcessSample& p : pass.samples) procs.emplace_back(p.pid, p.comm);
      profiler->tick(procs);
    }
    if (now >= next_gc) {
      next_gc = now + std::chrono::seconds(10);
      for (const ProcessSample& p : pass.samples) (void)agent.gc(p.pid);  // best effort: costs memory only
    }
    {
      std::lock_guard lock(pub.mu);
      pub.procs = std::move(pass.samples);
      pub.libraries = agent.libraries();
      if (profiler) profiler->fill(pub.profiles);
    }
    for (int i = 0; i < 10 && !g_stop; ++i) usleep(100 * 1000);
  }
  return kExitOk;
}

int cleanup(const Options&) {
  if (Status st = cleanup_agent(); !st.ok()) return fail(st.error());
  std::cout << "removed " << agent_pin_dir() << " and " << agent_lock_path() << "\n";
  return kExitOk;
}

}  // namespace

int run_agent(const Options& o) {
  if (o.cleanup) return cleanup(o);
  // Refusals first, so that a second agent or a busy port pins nothing.
  if (Status st = check_privileges(); !st.ok()) return fail(st.error());
  if (agent_running())
    return fail(Error{kExitTracing, "failed to start the agent: another agent holds '" + agent_lock_path() + "'"});
  Published pub;
  pub.start_time = static_cast<double>(std::time(nullptr));
  httplib::Server svr;
  serve_metrics(svr, pub);
  int port = 0;
  if (!o.no_listen) {
    auto bound = bind_listener(o, svr);
    if (!bound.ok()) return fail(bound.error());
    port = bound.value();
  }
  std::unique_ptr<Profiler> profiler;
  if (!o.profile_dir.empty() || !o.profile_push.empty()) {
    profiler = std::make_unique<Profiler>(o);
    if (Status st = profiler->start(); !st.ok()) return fail(st.error());
  }
  auto started = start_agent(o.verbose);
  if (!started.ok()) return fail(started.error());
  std::unique_ptr<Agent> agent = std::move(started.value());
  install_stop_handlers();
  std::thread server;
  if (!o.no_listen) server = std::thread([&svr] { svr.listen_after_bind(); });

  const std::vector<std::string> prefixes = absolute_paths(o.library_prefixes);
  if (Status st = attach_initial(o, *agent, prefixes); !st.ok()) {
    svr.stop();
    if (server.joinable()) server.join();
    return fail(st.error());
  }
  std::cout << "agent maps=" << agent_pin_dir() << (agent->reused_pins() ? " (reused)" : "");
  if (!o.no_listen) {
    const bool v6 = o.listen_host.find(':') != std::string::npos;
    std::cout << " metrics=http://" << (v6 ? "[" : "") << o.listen_host << (v6 ? "]" : "") << ":" << port << "/metrics";
  }
  std::cout << std::endl;

  const int code = agent_loop(o, *agent, profiler.get(), pub, prefixes);
  if (o.verbose && g_stop) std::cerr << "asynctrace: agent stopping on " << strsignal(g_stop) << "\n";
  if (server.joinable()) {
    svr.stop();
    server.join();
  }
  if (profiler) profiler->stop();  // recordings end before the probes detach
  agent.reset();  // probes detach; the pinned maps stay
  return code;
}

}  // namespace asynctrace
