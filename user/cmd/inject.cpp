// SPDX-License-Identifier: Apache-2.0
// sys.remote_exec(pid, script) writes the script's path into the target's
// main thread state and sets its eval breaker; the target runs the script at
// its next check, i.e. once it runs Python code. So: the script must stay
// on disk until it has run (a missing file makes CPython print to the
// target's stderr), it runs with the target's uid (it and the runtime must
// be readable by it), and a target idle in epoll_wait runs it only when it
// wakes up. Everything before the write is decided from /proc and the files
// alone.
#include "cmd/inject.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/escape.h"

namespace asynctrace {
namespace {

std::string who(const ProcInfo& info) {
  return "process " + std::to_string(info.pid) + " (" + escape_untrusted(info.comm) + ")";
}

Error cannot(const ProcInfo& info, const std::string& why) {
  return Error{kExitNoProbes, "failed to load the asynctrace runtime into " + who(info) + ": " + why};
}

// The interpreter the build recorded for `tag` (build/python/versions.txt,
// "cpXY PATH" lines): never the target's own executable, whose owner may be
// anyone. It must be root's and writable by root alone.
Result<std::string> trusted_interpreter(const ProcInfo& info, const std::string& python_dir, const std::string& tag) {
  std::ifstream in(python_dir + "/versions.txt");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string t, path;
    if (!(ls >> t >> path) || t != tag) continue;
    struct stat st {};
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (st.st_uid != 0 || (st.st_mode & 022))
      return cannot(info, "the " + tag + " interpreter '" + path +
                              "' is not root's alone (owner or group/other write): not run as root");
    return path;
  }
  return cannot(info, "no asynctrace runtime was built for " + tag + " (in '" + python_dir +
                          "'; the build needs a CPython of that version)");
}

// The package dir and every file of the package readable by the target.
Status check_readable(const ProcInfo& info, const ProcCreds& creds, const std::string& pkg) {
  std::string why;
  if (!readable_by(pkg + "/asynctrace", creds, &why))
    return cannot(info, "the runtime is not readable by its user: " + why);
  DIR* d = opendir((pkg + "/asynctrace").c_str());
  if (!d) return cannot(info, "the runtime is not readable: " + pkg + "/asynctrace: " + std::strerror(errno));
  Status st = ok_status();
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == ".." || name == "__pycache__") continue;
    if (!readable_by(pkg + "/asynctrace/" + name, creds, &why)) {
      st = cannot(info, "the runtime is not readable by its user: " + why);
      break;
    }
  }
  closedir(d);
  return st;
}

// kInjectDir, created root's 0755 if missing; anything else in its place is
// refused (a directory others can write to would let them swap the script).
Result<int> open_inject_dir() {
  if (mkdir(kInjectDir, 0755) != 0 && errno != EEXIST)
    return Error{kExitTracing, std::string("failed to create directory '") + kInjectDir + "': " + std::strerror(errno)};
  const int fd = open(kInjectDir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0 || st.st_uid != geteuid()) {
    if (fd >= 0) close(fd);
    return Error{kExitTracing, std::string("failed to use '") + kInjectDir +
                                   "': not a directory owned by uid " + std::to_string(geteuid()) + "; remove it"};
  }
  if ((st.st_mode & 07777) != 0755 && fchmod(fd, 0755) != 0) {
    close(fd);
    return Error{kExitTracing, std::string("failed to set mode 0755 on '") + kInjectDir + "': " + std::strerror(errno)};
  }
  return fd;
}

// "<pid>-<starttime>.py": one name per process, stable across attempts.
std::string script_name(pid_t pid, uint64_t start) {
  return std::to_string(pid) + "-" + std::to_string(start) + ".py";
}

// Removes the scripts no process will read any more: those of processes gone
// (or whose pid now names another) or already carrying the runtime, and
// temporaries a killed asynctrace left. A script still pending in a live
// process stays: removing it would make that process complain on stderr.
void sweep_scripts(int dir_fd) {
  const int dup_fd = dup(dir_fd);
  DIR* d = dup_fd >= 0 ? fdopendir(dup_fd) : nullptr;
  if (!d) {
    if (dup_fd >= 0) close(dup_fd);
    return;
  }
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    unsigned long pid = 0, start = 0, writer = 0;
    int used = 0;
    bool stale = false;
    if (std::sscanf(name.c_str(), "%lu-%lu.py.tmp%lu%n", &pid, &start, &writer, &used) == 3 &&
        static_cast<size_t>(used) == name.size()) {
      stale = !process_alive(static_cast<pid_t>(writer));
    } else if (std::sscanf(name.c_str(), "%lu-%lu.py%n", &pid, &start, &used) == 2 &&
               static_cast<size_t>(used) == name.size()) {
      stale = proc_start_time(static_cast<pid_t>(pid)) != start ||
              inspect_process(static_cast<pid_t>(pid)).kind == ProcKind::Probed;
    }
    if (stale) unlinkat(dir_fd, name.c_str(), 0);
  }
  closedir(d);
}

// Writes the script beside its final name and renames it over: a target
// reading the path sees a whole script, ours or an earlier attempt's.
Status write_script(const ProcInfo& info, int dir_fd, const std::string& name, const std::string& text) {
  const std::string tmp = name + ".tmp" + std::to_string(getpid());
  const int fd = openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return cannot(info, "failed to create '" + std::string(kInjectDir) + "/" + tmp + "': " + std::strerror(errno));
  bool ok = fchmod(fd, 0644) == 0;  // whatever our umask: the target's user reads it
  size_t done = 0;
  while (ok && done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  const int err = errno;
  close(fd);
  if (!ok || renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) {
    unlinkat(dir_fd, tmp.c_str(), 0);
    return cannot(info, "failed to write '" + std::string(kInjectDir) + "/" + name + "': " + std::strerror(ok ? errno : err));
  }
  return ok_status();
}

// Runs `argv` with an empty environment and stdin closed, stdout and stderr
// captured (8 KiB at most); kills it after `timeout`. nullopt if it could not
// start or did not finish; else (exit status, output).
constexpr const char* kRemoteExec =
    "import sys\n"
    "try:\n"
    "    sys.remote_exec(int(sys.argv[1]), sys.argv[2])\n"
    "except BaseException as e:\n"
    "    print(type(e).__name__ + '\\t' + ' '.join(str(e).split()), file=sys.stderr)\n"
    "    sys.exit(1)\n";

struct Finished {
  int status = -1;
  std::string output;
};

std::optional<Finished> run_injector(const std::vector<std::string>& args, std::chrono::milliseconds timeout) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return std::nullopt;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  char* envp[] = {nullptr};  // the caller's PYTHON_DISABLE_REMOTE_DEBUG would forbid remote_exec
  pid_t child = 0;
  const int rc = posix_spawn(&child, argv[0], &fa, nullptr, argv.data(), envp);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return std::nullopt;
  }
  Finished f;
  const auto end = std::chrono::steady_clock::now() + timeout;
  bool eof = false;
  while (!eof) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fds[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[512];
    const ssize_t n = read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) eof = true;
    else if (f.output.size() < 8192) f.output.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  if (!eof) kill(child, SIGKILL);
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (!eof) return std::nullopt;
  f.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return f;
}

// asyncio's C module, as CPython builds it (a shared module), is mapped.
bool maps_asyncio(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(in, line))
    if (line.find("/_asyncio.") != std::string::npos) return true;
  return false;
}

int yama_ptrace_scope() {
  std::ifstream in("/proc/sys/kernel/yama/ptrace_scope");
  int v = -1;
  in >> v;
  return in ? v : -1;
}

}  // namespace

Result<ProcInfo> inject_runtime(const Options& o, const ProcInfo& info, PhaseClock* clock) {
  // Scripts left by earlier timeouts go once nothing will read them, whatever
  // this command decides (only in a directory of ours).
  if (const int fd = open(kInjectDir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); fd >= 0) {
    struct stat st {};
    if (fstat(fd, &st) == 0 && st.st_uid == geteuid()) sweep_scripts(fd);
    close(fd);
  }
  if (o.no_inject) return proc_error(info);
  // Decided from the files alone: the target runs nothing of ours until
  // every check has passed.
  const auto build = python_build(info.pid);
  if (auto refused = refuse_build(info.pid, info.comm, build)) return *refused;
  if (!same_mount_namespace(info.pid))
    return cannot(info, "it runs in another mount namespace or root (a container?), where the paths of the "
                        "script and the runtime do not lead to them; start it with 'asynctrace run' inside");
  // asyncio's C module is a shared module in CPython's builds: a program
  // that maps none has no tasks to show (and enable() would import asyncio).
  if (!maps_asyncio(info.pid))
    return cannot(info, "it has not imported asyncio (no _asyncio module mapped): nothing to trace");
  // The script goes to root's /run, and the interpreter that writes into the
  // target gets no capabilities of ours across exec: only root can load.
  if (geteuid() != 0)
    return Error{kExitPrivilege, "failed to load the asynctrace runtime into " + who(info) +
                                     ": loading needs root (it writes " + kInjectDir +
                                     "/ and the target's memory); or start it with 'asynctrace run'"};
  const std::string python_dir = self_dir() + "/python";
  const std::string tag = build->tag();
  auto interpreter = trusted_interpreter(info, python_dir, tag);
  if (!interpreter.ok()) return interpreter.error();
  const std::string pkg = python_dir + "/" + tag;
  const auto creds = proc_creds(info.pid);
  if (!creds) return proc_error(inspect_process(info.pid));  // gone
  if (Status st = check_readable(info, *creds, pkg); !st.ok()) return st.error();

  const uint64_t start = proc_start_time(info.pid);
  auto dir = open_inject_dir();
  if (!dir.ok()) return dir.error();
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{dir.value()};
  const std::string name = script_name(info.pid, start);
  const std::string path = std::string(kInjectDir) + "/" + name;
  // An earlier attempt's script may still be pending in the target: then it
  // must stay whatever happens now.
  const bool pending = faccessat(dir.value(), name.c_str(), F_OK, AT_SYMLINK_NOFOLLOW) == 0;
  if (Status st = write_script(info, dir.value(), name, inject_script(pkg)); !st.ok()) return st.error();
  std::string why;
  if (!readable_by(path, *creds, &why)) {
    if (!pending) unlinkat(dir.value(), name.c_str(), 0);
    return cannot(info, "its script is not readable by its user: " + why);
  }

  const auto done = run_injector({interpreter.value(), "-I", "-S", "-c", kRemoteExec, std::to_string(info.pid), path},
                                 std::max(o.inject_timeout, std::chrono::milliseconds(5000)));
  if (!done || done->status != 0) {
    // The write did not happen (or we cannot tell): nothing will read the
    // script, unless an earlier attempt's write did.
    if (!pending) unlinkat(dir.value(), name.c_str(), 0);
    if (!done) return cannot(info, "the injecting interpreter '" + interpreter.value() + "' did not run or finish");
    if (!process_alive(info.pid)) return proc_error(inspect_process(info.pid));
    std::string report = done->output.substr(0, done->output.find('\n'));
    return injector_error(info.pid, info.comm, report, yama_ptrace_scope());
  }
  if (clock) clock->mark("remote_exec");

  // The script runs at the target's next eval-breaker check: wait for the
  // runtime's probes to appear in its maps.
  const auto end = std::chrono::steady_clock::now() + o.inject_timeout;
  for (;;) {
    ProcInfo now = inspect_process(info.pid);
    if (now.kind == ProcKind::Probed) {
      unlinkat(dir.value(), name.c_str(), 0);  // read and run: the runtime is mapped
      if (clock) clock->mark("runtime loaded");
      return now;
    }
    if (now.kind != ProcKind::PythonNoProbes || proc_start_time(info.pid) != start) return proc_error(now);
    if (std::chrono::steady_clock::now() >= end || g_stop) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const double secs = std::chrono::duration<double>(o.inject_timeout).count();
  std::ostringstream s;
  s << secs;
  return cannot(info, "it ran no Python code within " + s.str() +
                          "s (an event loop waiting with nothing scheduled, or a long call in C): the runtime "
                          "loads, dormant, when it next runs Python code; run the command again then "
                          "(--timeout waits longer)");
}

}  // namespace asynctrace
