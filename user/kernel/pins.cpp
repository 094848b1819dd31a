// SPDX-License-Identifier: Apache-2.0
#include "kernel/pins.h"

#include <bpf/libbpf.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

#include "asynctrace.skel.h"
#include "kernel/loader.h"
#include "kernel/maps.h"
#include "kernel/object.h"

namespace asynctrace {

Pins::~Pins() {
  if (pinned) remove_pins(pid);
  if (lock_fd >= 0) {
    unlink(lock_path(pid).c_str());
    close(lock_fd);
  }
}

// Pinned maps of one process plus the lock that says their holder is alive.
// The lock is a flock on /run/asynctrace/<pid>.lock: the kernel drops it when
// the holder dies, however it dies, so readers can tell stale pins.

std::string lock_path(pid_t pid) { return "/run/asynctrace/" + std::to_string(pid) + ".lock"; }

void remove_pins(pid_t pid) {
  const std::string dir = pin_dir(pid);
  for (const NamedMap& m : kPinnedMaps) unlink((dir + "/" + m.name).c_str());
  rmdir(dir.c_str());
}

// What `attach` leaves on disk is private: directories 0700 and files 0600,
// owned by root or by whoever runs us, whatever the umask or an older
// holder left there. Anything else in their place is refused.
Status make_private(const std::string& path, bool dir) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return ok_status();  // not created (nothing to protect)
  if ((dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) || (st.st_uid != 0 && st.st_uid != geteuid())) {
    return Error{kExitTracing, "failed to pin maps: '" + path + "' is not a " + (dir ? "directory" : "file") +
                                   " owned by root" + (geteuid() ? " or uid " + std::to_string(geteuid()) : "") +
                                   "; remove it"};
  }
  const mode_t want = dir ? 0700 : 0600;
  if ((st.st_mode & 07777) != want && chmod(path.c_str(), want) != 0) {
    return Error{kExitTracing, "failed to restrict '" + path + "' to mode " + (dir ? "0700" : "0600") + ": " +
                                   std::strerror(errno)};
  }
  return ok_status();
}

Status make_private_dir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
    return Error{kExitTracing, "failed to create directory '" + path + "': " + std::strerror(errno)};
  return make_private(path, true);
}

std::string pin_dir(pid_t pid) { return "/sys/fs/bpf/asynctrace/" + std::to_string(pid); }

// True while an `asynctrace attach` holds the lock of `pid` (the kernel drops
// a flock when its holder dies, however it dies).
bool pin_holder_alive(pid_t pid) {
  const int lock = open(lock_path(pid).c_str(), O_RDONLY | O_CLOEXEC);
  if (lock < 0) return false;
  const bool held = flock(lock, LOCK_SH | LOCK_NB) != 0;
  close(lock);
  return held;
}

void remove_stale(pid_t pid) {
  remove_pins(pid);
  unlink(lock_path(pid).c_str());
}

void sweep_stale_pins() {
  DIR* d = opendir("/sys/fs/bpf/asynctrace");
  if (!d) return;
  while (const dirent* e = readdir(d)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    if (!pin_holder_alive(static_cast<pid_t>(pid))) remove_stale(static_cast<pid_t>(pid));
  }
  closedir(d);
}

Status pin_maps(pid_t pid, asynctrace_bpf* skel, Pins& pins) {
  if (Status st = make_private_dir("/run/asynctrace"); !st.ok()) return st;
  pins.pid = pid;
  pins.lock_fd = open(lock_path(pid).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (pins.lock_fd < 0)
    return Error{kExitTracing, "failed to open lock '" + lock_path(pid) + "': " + std::strerror(errno)};
  if (Status st = make_private(lock_path(pid), false); !st.ok()) return st;
  if (flock(pins.lock_fd, LOCK_EX | LOCK_NB) != 0) {
    close(pins.lock_fd);
    pins.lock_fd = -1;
    return Error{kExitTracing, "failed to pin maps of process " + std::to_string(pid) +
                                   ": another 'asynctrace attach' holds them (pstree/ps read those)"};
  }
  remove_pins(pid);  // stale pins of a holder that was killed
  if (Status st = ensure_bpffs(); !st.ok()) return st;
  if (Status st = make_private_dir("/sys/fs/bpf/asynctrace"); !st.ok()) return st;
  if (Status st = make_private_dir(pin_dir(pid)); !st.ok()) return st;
  pins.pinned = true;
  for (const NamedMap& m : kPinnedMaps) {
    const std::string path = pin_dir(pid) + "/" + m.name;
    if (bpf_map__pin(bpf_object__find_map_by_name(skel->obj, m.name), path.c_str()) != 0)
      return Error{kExitTracing, "failed to pin BPF map '" + path + "': " + reason(errno)};
    if (Status st = make_private(path, false); !st.ok()) return st;
  }
  return ok_status();
}

std::string agent_pin_dir() { return "/sys/fs/bpf/asynctrace/agent"; }
std::string agent_lock_path() { return "/run/asynctrace/agent.lock"; }

bool agent_running() {
  const int lock = open(agent_lock_path().c_str(), O_RDONLY | O_CLOEXEC);
  if (lock < 0) return false;
  const bool held = flock(lock, LOCK_SH | LOCK_NB) != 0;
  close(lock);
  return held;
}

Status cleanup_agent() {
  if (Status st = check_privileges(); !st.ok()) return st;
  if (agent_running())
    return Error{kExitTracing, "failed to clean up the agent's pins: an agent is running (stop it first: "
                               "systemctl stop asynctrace-agent, or kill -TERM its pid)"};
  const std::string dir = agent_pin_dir();
  for (const NamedMap& m : kPinnedMaps) {
    const std::string path = dir + "/" + m.name;
    if (unlink(path.c_str()) != 0 && errno != ENOENT)
      return Error{kExitTracing, "failed to remove pin '" + path + "': " + std::strerror(errno)};
  }
  if (rmdir(dir.c_str()) != 0 && errno != ENOENT)
    return Error{kExitTracing, "failed to remove directory '" + dir + "': " + std::strerror(errno)};
  if (unlink(agent_lock_path().c_str()) != 0 && errno != ENOENT)
    return Error{kExitTracing, "failed to remove lock '" + agent_lock_path() + "': " + std::strerror(errno)};
  return ok_status();
}

}  // namespace asynctrace
