// SPDX-License-Identifier: Apache-2.0
#include "cmd/commands.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>

#include "cmd/command_util.h"
#include "core/escape.h"
#include "kernel/kernel_features.h"
#include "render/features_view.h"
#include "kernel/loader.h"
#include "core/model.h"
#include "kernel/procinfo.h"
#include "core/result.h"
#include "render/views.h"

extern char** environ;

namespace asynctrace {

uint64_t monotonic_ns() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(t.tv_nsec);
}

int fail(const Error& e) {
  std::cerr << "asynctrace: " << e.message << "\n";
  return e.code;
}

// The tasks map may have dropped entries or edges: say so, with counts.
void warn_partial(const ProcCounters& c) {
  if (c.drop_tasks_full || c.drop_edges_full || c.drop_codes_full) {
    std::cerr << "asynctrace: warning: partial view: the kernel maps were full; lost "
              << c.drop_tasks_full << " task update(s), " << c.drop_edges_full
              << " await edge(s), " << c.drop_codes_full
              << " code name(s) (raise --max-tasks)\n";
  }
  if (c.drop_stacks_full)
    std::cerr << "asynctrace: warning: partial view: " << c.drop_stacks_full
              << " stack(s) did not fit the kernel's stack map\n";
  if (c.drop_events || c.drop_timing_full)
    std::cerr << "asynctrace: warning: partial timing: " << c.drop_events
              << " step/sample event(s) lost (events ring full), " << c.drop_timing_full
              << " task(s) or coroutine(s) without room in the timing maps\n";
  if (c.drop_runtime || c.bad_records)
    std::cerr << "asynctrace: warning: partial view: " << c.drop_runtime
              << " event(s) lost in the runtime's buffer, " << c.bad_records
              << " malformed batch record(s)\n";
}

namespace {

// Takes the snapshot by value and drops it once the graph is built: at
// 100,000 tasks the two together are most of the tool's memory.
void print_view(const Options& o, Snapshot snap) {
  const TaskGraph g = build_graph(snap);
  snap = Snapshot{};
  warn_partial(g.counters);
  if (o.command == Command::Stats) {
    std::cout << (o.format == Format::Json ? stats_json(g).dump(2) + "\n" : render_stats(g));
  } else if (o.format == Format::Json) {
    std::cout << graph_json(g, o.command == Command::Pstree).dump(2) << "\n";
  } else if (o.command == Command::Pstree) {
    render_pstree(g, std::cout);
  } else {
    render_ps(g, std::cout);
  }
  std::cout.flush();
}

int output_status() {
  return std::cout.good() ? kExitOk
                          : fail(Error{kExitInternal, "failed to write output: " + std::string(std::strerror(errno))});
}

}  // namespace

void PhaseClock::mark(const char* phase) {
  const auto now = std::chrono::steady_clock::now();
  if (on_) {
    std::cerr << "asynctrace: " << phase << ": "
              << std::chrono::duration<double, std::milli>(now - t_).count() << " ms\n";
  }
  t_ = now;
}

// Privileges, target check, attach, and the runtime's replay: what every
// command that traces a process does first.
//
// The runtime replays when its replay__end semaphore or a request semaphore
// rises. The kernel counts probes installed in the process (0 or 1 per site),
// not tracers, so attach_tracer also raises a free request semaphore
// (replay__req0..3) for the case where another tracer holds replay__end. If
// every request slot is taken too, the first attach waits three quarters of
// the budget; without an answer it detaches and attaches once more.
Result<std::unique_ptr<Tracer>> start_tracing(const Options& o, PhaseClock* clock, const TraceModes& modes) {
  if (auto st = check_privileges(); !st.ok()) return st.error();
  sweep_stale_pins();
  const ProcInfo info = inspect_process(o.pid);
  if (info.kind != ProcKind::Probed) return proc_error(info);
  TraceOptions topts;
  topts.pid = o.pid;
  topts.replay_timeout = o.timeout;
  topts.verbose = o.verbose;
  topts.max_tasks = o.max_tasks;
  topts.timing = modes.timing;
  topts.steps = modes.steps;
  topts.events = modes.events;
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + o.timeout;
  for (int attempt = 1;; ++attempt) {
    auto tracer = attach_tracer(topts, info);
    if (!tracer.ok()) return tracer.error();
    if (clock) clock->mark("load and attach");
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    const auto wait = std::max(std::chrono::milliseconds(1), attempt == 1 ? left * 3 / 4 : left);
    auto st = tracer.value()->wait_replay(wait);
    if (st.ok()) {
      if (clock) clock->mark("replay");
      return tracer;
    }
    if (st.error().code != kExitReplayTimeout) return st.error();
    if (attempt == 2 || Clock::now() >= deadline) {
      return Error{kExitReplayTimeout,
                   "failed to wait for replay of process " + std::to_string(o.pid) + ": no answer in " +
                       std::to_string(o.timeout.count()) +
                       " ms; its event loop thread may be blocked or hold the GIL in C code, or another "
                       "tracer (bpftrace, another asynctrace) may hold its probes (retry, or raise --timeout)"};
    }
    if (o.verbose) std::cerr << "asynctrace: no replay after " << wait.count() << " ms; attaching again\n";
    tracer.value().reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the runtime's watcher see the fall
  }
}


// Closing uprobe links waits for a kernel grace period (tens of ms) that the
// user need not wait for: a forked child holds the last references and
// closes them once we have exited (it waits for EOF on a pipe whose write end
// only we hold), so the kernel finishes unregistering just after we exit and
// our own closes are cheap. If fork or pipe fails, detach here.
void detach_in_background(std::unique_ptr<Tracer>& tracer) {
  std::cout.flush();
  std::cerr.flush();
  int gate[2];
  if (pipe2(gate, O_CLOEXEC) != 0) {
    tracer.reset();
    return;
  }
  const pid_t child = fork();
  if (child == 0) {
    close(gate[1]);
    const int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      for (int fd = 0; fd <= 2; ++fd) dup2(null, fd);  // release the caller's pipes
    }
    setsid();
    char c;
    while (read(gate[0], &c, 1) < 0 && errno == EINTR) {
    }
    tracer.reset();
    _exit(0);
  }
  close(gate[0]);
  if (child < 0) {
    close(gate[1]);
    tracer.reset();
    return;
  }
  // Our copies of the link and map fds are not the last ones: closing is
  // cheap. gate[1] stays open until we exit.
  tracer.reset();
}

namespace {

int run_view(const Options& o) {
  PhaseClock clock(o.verbose);
  if (auto st = check_privileges(); !st.ok()) return fail(st.error());
  sweep_stale_pins();
  if (!process_alive(o.pid)) return fail(proc_error(inspect_process(o.pid)));
  // An `asynctrace attach` holding this process: answer from its maps, after
  // the runtime replayed its current stacks into them.
  const ProcInfo info = inspect_process(o.pid);
  auto pinned = open_pinned(o.pid, &info, o.verbose);
  if (!pinned.ok()) return fail(pinned.error());
  if (auto& held = pinned.value()) {
    if (auto st = held->wait_replay(o.timeout); !st.ok()) {
      if (st.error().code != kExitReplayTimeout) return fail(st.error());
      std::cerr << "asynctrace: warning: " << st.error().message << "\n";
    }
    clock.mark("replay into pinned maps");
    auto snap = held->snapshot();
    if (!snap.ok()) return fail(snap.error());
    clock.mark("read pinned maps");
    print_view(o, std::move(snap.value()));
    clock.mark("render");
    const int status = output_status();
    detach_in_background(held);
    return status;
  }
  auto tracer = start_tracing(o, &clock);
  if (!tracer.ok()) return fail(tracer.error());
  auto snap = tracer.value()->snapshot();
  if (!snap.ok()) return fail(snap.error());
  clock.mark("read maps");
  // Print first, detach after: closing the uprobe links waits for a kernel
  // grace period (tens of ms), which the user need not wait for.
  print_view(o, std::move(snap.value()));
  clock.mark("render");
  const int status = output_status();
  detach_in_background(tracer.value());
  clock.mark("detach");
  return status;
}

}  // namespace

volatile sig_atomic_t g_stop = 0;       // the signal that asked `attach` to stop
volatile sig_atomic_t g_stop_sender = 0;  // and the pid that sent it (0: the kernel, a terminal)
namespace {
void on_stop(int sig, siginfo_t* info, void*) {
  g_stop_sender = info && info->si_code == SI_USER ? info->si_pid : 0;
  g_stop = sig;
}
}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_sigaction = on_stop;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
}

namespace {

// Notices the traced program going away while its pid stays: an fd on
// /proc/PID/maps refers to the address space of the program it was opened
// on, and reads nothing once exec() replaced (or exit() dropped) it.
class ImageWatch {
 public:
  explicit ImageWatch(pid_t pid)
      : pid_(pid), fd_(open(("/proc/" + std::to_string(pid) + "/maps").c_str(), O_RDONLY | O_CLOEXEC)) {}
  ~ImageWatch() {
    if (fd_ >= 0) close(fd_);
  }
  ImageWatch(const ImageWatch&) = delete;
  ImageWatch& operator=(const ImageWatch&) = delete;

  // True once the program we attached to is gone though the pid lives on.
  bool replaced() const {
    char c;
    if (fd_ < 0 || pread(fd_, &c, 1, 0) != 0) return false;
    // An exiting process also has no address space: only a live one with a
    // new address space has exec'd.
    const int fresh = open(("/proc/" + std::to_string(pid_) + "/maps").c_str(), O_RDONLY | O_CLOEXEC);
    if (fresh < 0) return false;
    const bool mapped = pread(fresh, &c, 1, 0) == 1;
    close(fresh);
    return mapped;
  }

 private:
  pid_t pid_;
  int fd_;
};

std::string proc_exe(pid_t pid) {
  char buf[4096];
  const ssize_t n = readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("?");
}

// Holds the tracer attached with its maps pinned until a signal, the duration
// or the end of the traced program. Prints one "attached" line on stdout when
// live. A program that exits or exec()s while held ends the command with
// kExitProcessExited, after one line on stderr; the pins go with the tracer.
int run_attach(const Options& o) {
  const ImageWatch image(o.pid);
  // A second holder could not pin, and would wait in vain for a replay: the
  // runtime counts probes attached, not tracers, so it never sees a second.
  if (check_privileges().ok() && pin_holder_alive(o.pid)) {
    return fail(Error{kExitTracing, "failed to attach to process " + std::to_string(o.pid) +
                                        ": another 'asynctrace attach' holds it (pstree/ps read its maps)"});
  }
  auto tracer = start_tracing(o, nullptr, TraceModes{o.timing, false, false});
  if (!tracer.ok()) return fail(tracer.error());
  if (auto st = tracer.value()->pin(); !st.ok()) return fail(st.error());
  install_stop_handlers();
  std::cout << "attached pid=" << o.pid << " maps=" << pin_dir(o.pid) << std::endl;
  const auto end = std::chrono::steady_clock::now() + o.duration;
  auto next_gc = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int code = kExitOk;
  while (!g_stop) {
    if (std::chrono::steady_clock::now() >= next_gc) {
      (void)tracer.value()->gc();  // best effort: a failure only costs memory
      next_gc += std::chrono::seconds(10);
    }
    if (o.duration.count() > 0 && std::chrono::steady_clock::now() >= end) break;
    if (!process_alive(o.pid)) {
      std::cerr << "asynctrace: process " << o.pid << " exited while attached; detached\n";
      code = kExitProcessExited;
      break;
    }
    if (image.replaced()) {
      std::cerr << "asynctrace: process " << o.pid << " replaced its program (exec of '"
                << escape_untrusted(proc_exe(o.pid))
                << "') while attached; detached (attach again to trace the new program)\n";
      code = kExitProcessExited;
      break;
    }
    usleep(100 * 1000);
  }
  if (g_stop && o.verbose) {
    std::cerr << "asynctrace: detaching on " << strsignal(g_stop);
    if (g_stop_sender) std::cerr << " from pid " << g_stop_sender;
    std::cerr << "\n";
  }
  tracer.value().reset();
  return code;
}

std::string self_dir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  const auto slash = p.rfind('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

// Asks the interpreter for its version tag ("cp311") without running the program.
Result<std::string> python_tag(const std::string& program) {
  int fds[2];
  if (pipe(fds) != 0) return Error{kExitInternal, "failed to create pipe: " + std::string(std::strerror(errno))};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);  // a non-Python program's complaints
  const char* argv[] = {program.c_str(), "-S", "-c",
                        "import sys; print('cp%d%d' % sys.version_info[:2])", nullptr};
  pid_t child = 0;
  const int rc = posix_spawnp(&child, program.c_str(), &fa, nullptr, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return Error{kExitUsage, "failed to start '" + program + "': " + std::strerror(rc)};
  }
  std::string out;
  char buf[64];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0 && out.size() < 256) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || out.rfind("cp", 0) != 0) {
    return Error{kExitNotPython, "failed to identify '" + program +
                                     "' as a Python interpreter; run expects 'asynctrace run -- python3 app.py'"};
  }
  return out;
}

// What this kernel offers asynctrace (docs/kernels.md): the table on stdout;
// exit 7 with one line on stderr if a required feature is missing.
int run_features(const Options& o) {
  if (auto st = check_privileges(); !st.ok()) return fail(st.error());
  const KernelFeatures& kf = kernel_features();
  std::cout << (o.format == Format::Json ? features_json(kf).dump(2) + "\n" : render_features(kf));
  std::cout.flush();
  const int status = output_status();
  const Status st = check_kernel_features(kf);
  return st.ok() ? status : fail(st.error());
}

int run_run(const Options& o) {
  const std::string base = o.python_dir.empty() ? self_dir() + "/python" : o.python_dir;
  auto tag = python_tag(o.run_argv[0]);
  if (!tag.ok()) return fail(tag.error());
  const std::string dir = base + "/" + tag.value();
  struct stat st {};
  if (stat((dir + "/asynctrace").c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return fail(Error{kExitNotPython, "failed to find the asynctrace runtime for " + tag.value() +
                                          " in '" + base + "'; supported: CPython 3.10-3.13 built by cmake"});
  }
  const char* old = std::getenv("PYTHONPATH");
  const std::string pp = old && *old ? dir + ":" + old : dir;
  setenv("PYTHONPATH", pp.c_str(), 1);
  std::vector<char*> argv;
  for (const auto& a : o.run_argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::cerr << "asynctrace: failed to execute '" << o.run_argv[0] << "': " << std::strerror(errno) << "\n";
  return 127;
}

}  // namespace

int run_command(const Options& o) {
  switch (o.command) {
    case Command::Version:
      std::cout << "asynctrace 0.1.0 (probe ABI 1)\n";
      return kExitOk;
    case Command::Ps:
      return o.long_format ? run_ps_long(o) : run_view(o);
    case Command::Pstree:
    case Command::Stats:
      return run_view(o);
    case Command::Attach:
      return run_attach(o);
    case Command::Run:
      return run_run(o);
    case Command::Top:
      return run_top(o);
    case Command::Slow:
      return run_slow(o);
    case Command::Record:
      return run_record(o);
    case Command::Agent:
      return run_agent(o);
    case Command::Features:
      return run_features(o);
  }
  return kExitInternal;
}

}  // namespace asynctrace
