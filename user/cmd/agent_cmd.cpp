// SPDX-License-Identifier: Apache-2.0
// `asynctrace agent`: finds the probe libraries processes map, attaches each
// once for every process (loader.cpp's Agent), forgets processes that exited,
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
#include "cmd/command_util.h"
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
        if (allowed(path) && elf_has_asynctrace_probes(host)) probed = true;
        it = probed_.emplace(key, probed ? host : std::string()).first;
      }
      if (it->second.empty()) continue;
      found.insert(key);
      out.push_back(it->second);
    }
  }

  bool allowed(const std::string& path) const {
    if (prefixes_.empty()) return true;
    for (const std::string& p : prefixes_)
      if (path.rfind(p, 0) == 0) return true;
    return false;
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
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return out;
  std::string dir(buf, static_cast<size_t>(n));
  dir = dir.substr(0, dir.rfind('/')) + "/python";
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

bool under_prefixes(const std::string& path, const std::vector<std::string>& prefixes) {
  if (prefixes.empty()) return true;
  for (const std::string& p : prefixes)
    if (path.rfind(p, 0) == 0) return true;
  return false;
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

}  // namespace

int run_agent(const Options& o) {
  if (o.cleanup) {
    if (Status st = cleanup_agent(); !st.ok()) return fail(st.error());
    std::cout << "removed " << agent_pin_dir() << " and " << agent_lock_path() << "\n";
    return kExitOk;
  }
  // Refusals first, so that a second agent or a busy port pins nothing.
  if (Status st = check_privileges(); !st.ok()) return fail(st.error());
  if (agent_running())
    return fail(Error{kExitTracing, "failed to start the agent: another agent holds '" + agent_lock_path() + "'"});

  Published pub;
  pub.start_time = static_cast<double>(std::time(nullptr));
  httplib::Server svr;
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
  std::thread server;
  int port = o.listen_port;
  if (!o.no_listen) {
    if (port == 0) port = svr.bind_to_any_port(o.listen_host);
    else if (!svr.bind_to_port(o.listen_host, port)) port = -1;
    if (port <= 0)
      return fail(Error{kExitUsage, "failed to listen on '" + o.listen_host + ":" + std::to_string(o.listen_port) +
                                        "': " + std::strerror(errno) + " (another exporter on that port? see --listen)"});
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
  if (!o.no_listen) server = std::thread([&svr] { svr.listen_after_bind(); });

  // Prefixes compare with the absolute paths in /proc/PID/maps.
  std::vector<std::string> prefixes;
  for (const std::string& p : o.library_prefixes) {
    std::error_code ec;
    const auto abs = std::filesystem::absolute(p, ec);
    prefixes.push_back(ec ? p : abs.lexically_normal().string());
  }
  std::vector<std::string> initial;
  for (const std::string& lib : o.libraries) {
    std::error_code ec;
    const auto abs = std::filesystem::absolute(lib, ec);
    initial.push_back(ec ? lib : abs.lexically_normal().string());
  }
  for (const std::string& lib : bundled_runtimes())
    if (under_prefixes(lib, prefixes)) initial.push_back(lib);
  for (const std::string& lib : initial) {
    if (Status st = agent->attach_library(lib); !st.ok()) {
      // An explicit --library that cannot be attached is an error.
      if (std::find(initial.begin(), initial.begin() + static_cast<std::ptrdiff_t>(o.libraries.size()), lib) !=
          initial.begin() + static_cast<std::ptrdiff_t>(o.libraries.size()))
        return fail(st.error());
      std::cerr << "asynctrace: warning: " << escape_untrusted(st.error().message) << "\n";
    } else if (o.verbose) {
      std::cerr << "asynctrace: agent attached '" << escape_untrusted(lib) << "'\n";
    }
  }
  LibraryScan libs(prefixes);
  std::cout << "agent maps=" << agent_pin_dir() << (agent->reused_pins() ? " (reused)" : "");
  if (!o.no_listen) {
    const bool v6 = o.listen_host.find(':') != std::string::npos;
    std::cout << " metrics=http://" << (v6 ? "[" : "") << o.listen_host << (v6 ? "]" : "") << ":" << port << "/metrics";
  }
  std::cout << std::endl;

  using Clock = std::chrono::steady_clock;
  auto next_scan = Clock::now();
  auto next_gc = Clock::now() + std::chrono::seconds(10);
  std::unordered_map<uint32_t, LoopMark> marks;
  uint64_t last_sample_ns = monotonic_ns();
  std::unordered_map<uint32_t, uint64_t> starts;  // pid -> start time of the process we hold state of
  // pid -> fd on /proc/PID/maps, opened on the program we hold state of: it
  // reads nothing once exec() replaced that program (or the pid is reused).
  std::unordered_map<uint32_t, int> images;
  auto drop_image = [&images](uint32_t pid) {
    auto it = images.find(pid);
    if (it == images.end()) return;
    close(it->second);
    images.erase(it);
  };
  int code = kExitOk;
  while (!g_stop) {
    const auto now = Clock::now();
    if (now >= next_scan) {
      next_scan = now + o.scan;
      for (const std::string& lib : libs.scan()) {
        const size_t before = agent->libraries();
        if (Status st = agent->attach_library(lib); !st.ok())
          std::cerr << "asynctrace: warning: " << escape_untrusted(st.error().message) << "\n";
        else if (agent->libraries() > before)
          std::cerr << "asynctrace: agent attached '" << escape_untrusted(lib) << "'\n";
      }
    }
    auto snaps = agent->snapshots();
    if (!snaps.ok()) {
      code = fail(snaps.error());
      break;
    }
    // Exited processes: their entries go (a pid reused by then is a new
    // process whose runtime replays into fresh entries).
    std::vector<uint32_t> dead;
    std::vector<ProcessSample> samples;
    const uint64_t now_ns = monotonic_ns();
    std::unordered_map<uint32_t, LoopMark> next_marks;
    std::vector<uint32_t> reused;
    for (const Snapshot& s : snaps.value()) {
      if (!process_alive(static_cast<pid_t>(s.pid))) {
        dead.push_back(s.pid);
        continue;
      }
      // A pid that exited and came back as another process between two
      // passes: the old entries go, and the new process replays its own.
      // Seen by its start time changing, or, if we never saw the old one
      // alive, by tasks created before the process started.
      const uint64_t start = start_ticks(s.pid);
      auto [st, fresh] = starts.try_emplace(s.pid, start);
      bool stale = !fresh && start && st->second != start;
      st->second = start;
      if (!stale && fresh && start) {
        const uint64_t start_ns = start * (1'000'000'000ull / static_cast<uint64_t>(sysconf(_SC_CLK_TCK)));
        const uint64_t offset = boot_minus_mono_ns();
        const uint64_t start_mono = start_ns > offset ? start_ns - offset : 0;
        for (const TaskRecord& t : s.tasks)
          if (t.create_ns && t.create_ns + kStartSlackNs < start_mono) stale = true;
      }
      auto img = images.find(s.pid);
      if (img == images.end()) {
        const int fd = open(("/proc/" + std::to_string(s.pid) + "/maps").c_str(), O_RDONLY | O_CLOEXEC);
        if (fd >= 0) images.emplace(s.pid, fd);
      } else if (char c; pread(img->second, &c, 1, 0) == 0 && process_alive(static_cast<pid_t>(s.pid))) {
        stale = true;  // exec(), or another process with this pid
      }
      if (stale) {
        drop_image(s.pid);
        reused.push_back(s.pid);
        continue;
      }
      auto m = marks.find(s.pid);
      samples.push_back(sample_process(s, read_comm(s.pid), m == marks.end() ? nullptr : &m->second, now_ns,
                                       last_sample_ns));
      next_marks[s.pid] = LoopMark{s.counters.busy_ns, s.counters.loop_at_ns};
    }
    // Keep the old mark while the runtime sent no newer LOOP record.
    for (auto& [pid, mark] : next_marks) {
      auto m = marks.find(pid);
      if (m != marks.end() && mark.loop_at_ns == m->second.loop_at_ns) mark = m->second;
    }
    marks = std::move(next_marks);
    last_sample_ns = now_ns;
    agent->withdraw_requests();
    dead.insert(dead.end(), reused.begin(), reused.end());
    if (Status st = agent->forget(dead); !st.ok())
      std::cerr << "asynctrace: warning: " << st.error().message << "\n";
    for (uint32_t pid : dead) {
      if (std::find(reused.begin(), reused.end(), pid) == reused.end()) {
        starts.erase(pid);
        drop_image(pid);
      }
      marks.erase(pid);
    }
    for (uint32_t pid : reused) {
      if (o.verbose) std::cerr << "asynctrace: pid " << pid << " runs a new program: entries of the old one removed\n";
      const ProcInfo info = inspect_process(static_cast<pid_t>(pid));
      if (info.kind != ProcKind::Probed) continue;
      if (Status st = agent->request_replay(info); !st.ok() && o.verbose)
        std::cerr << "asynctrace: " << st.error().message << "\n";
    }
    if (profiler) {
      std::vector<std::pair<uint32_t, std::string>> procs;
      for (const ProcessSample& p : samples) procs.emplace_back(p.pid, p.comm);
      profiler->tick(procs);
    }
    if (now >= next_gc) {
      next_gc = now + std::chrono::seconds(10);
      for (const ProcessSample& p : samples) (void)agent->gc(p.pid);  // best effort: costs memory only
    }
    {
      std::lock_guard lock(pub.mu);
      pub.procs = std::move(samples);
      pub.libraries = agent->libraries();
      if (profiler) profiler->fill(pub.profiles);
    }
    for (int i = 0; i < 10 && !g_stop; ++i) usleep(100 * 1000);
  }
  if (o.verbose && g_stop) std::cerr << "asynctrace: agent stopping on " << strsignal(g_stop) << "\n";
  if (server.joinable()) {
    svr.stop();
    server.join();
  }
  for (const auto& [pid, fd] : images) close(fd);
  if (profiler) profiler->stop();  // recordings end before the probes detach
  agent.reset();  // probes detach; the pinned maps stay
  return code;
}

}  // namespace asynctrace
