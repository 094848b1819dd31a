// SPDX-License-Identifier: Apache-2.0
// `asynctrace run -- python3 app.py`: the program with the runtime installed
// beside this binary on its PYTHONPATH.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cmd/commands.h"
#include "cmd/session.h"

extern char** environ;

namespace asynctrace {
namespace {

// Asks the interpreter for its version tag ("cp311", "cp314t" for a
// free-threaded build: sys.abiflags has a 't') without running the program.
Result<std::string> python_tag(const std::string& program) {
  int fds[2];
  if (pipe(fds) != 0) return Error{kExitInternal, "failed to create pipe: " + std::string(std::strerror(errno))};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);  // a non-Python program's complaints
  const char* argv[] = {program.c_str(), "-S", "-c",
                        "import sys; print('cp%d%d%s' % (*sys.version_info[:2], 't' * ('t' in getattr(sys, 'abiflags', ''))))", nullptr};
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

}  // namespace

int run_run(const Options& o) {
  const std::string base = o.python_dir.empty() ? self_dir() + "/python" : o.python_dir;
  auto tag = python_tag(o.run_argv[0]);
  if (!tag.ok()) return fail(tag.error());
  if (tag.value().back() == 't') {
    // The runtime's event ring is ordered by the GIL; the package refuses to
    // enable itself there, so the program would run untraced: say so instead.
    return fail(Error{kExitNoProbes, "'" + o.run_argv[0] + "' is a free-threaded CPython build (" + tag.value() +
                                         "): not supported yet; use a build with the GIL"});
  }
  const std::string dir = base + "/" + tag.value();
  struct stat st {};
  if (stat((dir + "/asynctrace").c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return fail(Error{kExitNotPython, "failed to find the asynctrace runtime for " + tag.value() +
                                          " in '" + base + "'; supported: CPython 3.10-3.14 built by cmake"});
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

}  // namespace asynctrace
