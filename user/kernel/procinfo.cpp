// SPDX-License-Identifier: Apache-2.0
// Classifies a pid from /proc alone. The ELF note scan (elf_notes.h) is a
// few pread()s of headers and note sections per mapped file: a garbage or
// truncated file can at worst make us answer "no probes".
#include "kernel/procinfo.h"

#include "kernel/elf_notes.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <vector>

namespace asynctrace {
namespace {

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

struct Mapping {
  std::string path;  // as /proc/PID/maps shows it, " (deleted)" included
  uint64_t inode = 0;
  std::string range;  // "start-end" of its first mapping (a /proc/PID/map_files entry)
  bool deleted = false;
};

// Distinct file-backed mappings of /proc/PID/maps, in first-seen order.
std::vector<Mapping> mapped_files(const std::string& maps_path) {
  std::ifstream in(maps_path);
  std::vector<Mapping> out;
  std::set<std::string> seen;
  std::string line;
  while (std::getline(in, line)) {
    // addr perms offset dev inode path (path may contain spaces)
    std::istringstream ls(line);
    std::string addr, perms, offset, dev;
    uint64_t inode = 0;
    if (!(ls >> addr >> perms >> offset >> dev >> inode) || inode == 0) continue;
    std::string path;
    std::getline(ls >> std::ws, path);
    if (path.empty() || path[0] != '/') continue;
    // A file replaced or deleted since it was mapped (a package upgrade
    // under a running service) is still reachable through map_files.
    const bool deleted = path.size() > 10 && path.compare(path.size() - 10, 10, " (deleted)") == 0;
    if (!seen.insert(path).second) continue;
    out.push_back({path, inode, addr, deleted});
  }
  return out;
}

std::string basename_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool is_libpython(const std::string& path) {
  std::string base = basename_of(path);
  return base.rfind("libpython3", 0) == 0 && base.find(".so") != std::string::npos;
}

// The path under which this process reaches the file the target mapped: the
// plain path if it is the same inode here, else through the target's root
// (containers, chroots, mount namespaces).
std::string host_path(const std::string& proc_dir, const Mapping& m) {
  if (m.deleted) return proc_dir + "/map_files/" + m.range;
  struct stat st {};
  if (stat(m.path.c_str(), &st) == 0 && st.st_ino == m.inode) return m.path;
  return proc_dir + "/root" + m.path;
}

}  // namespace

bool elf_has_asynctrace_probes(const std::string& path) {
  const auto notes = elf::read_stapsdt(path);  // a garbage file: no probes
  if (!notes.ok()) return false;
  for (const elf::Note& n : notes.value().notes)
    if (n.provider == "asynctrace") return true;
  return false;
}

ProcInfo inspect_process(pid_t pid, const std::string& proc_root) {
  ProcInfo info;
  info.pid = pid;
  const std::string dir = proc_root + "/" + std::to_string(pid);
  struct stat st {};
  if (pid <= 0 || stat(dir.c_str(), &st) != 0) return info;  // NoSuchProcess

  info.comm = read_first_line(dir + "/comm");
  // State is the first field after the last ')' (comm may contain parentheses).
  std::string stat_line = read_first_line(dir + "/stat");
  auto close_paren = stat_line.rfind(')');
  if (close_paren != std::string::npos && close_paren + 2 < stat_line.size() &&
      stat_line[close_paren + 2] == 'Z') {
    info.kind = ProcKind::Zombie;
    return info;
  }
  if (stat_line.empty()) return info;  // vanished between the two reads

  info.exe = proc_exe(dir);

  bool python = basename_of(info.exe).rfind("python", 0) == 0;
  for (const Mapping& m : mapped_files(dir + "/maps")) {
    if (is_libpython(m.path)) python = true;
    std::string host = host_path(dir, m);
    if (!elf_has_asynctrace_probes(host)) continue;
    info.kind = ProcKind::Probed;
    info.probe_lib = m.path;
    info.probe_lib_host = host;
    return info;
  }
  info.kind = python ? ProcKind::PythonNoProbes : ProcKind::NotPython;
  return info;
}

std::optional<PythonBuild> python_build(pid_t pid, const std::string& proc_root) {
  const std::string dir = proc_root + "/" + std::to_string(pid);
  const std::string exe = proc_exe(dir);
  // libpython first: a --enable-shared build's executable has no .PyRuntime.
  std::vector<Mapping> files = mapped_files(dir + "/maps");
  std::stable_partition(files.begin(), files.end(), [](const Mapping& m) { return is_libpython(m.path); });
  for (const Mapping& m : files) {
    if (!is_libpython(m.path) && m.path != exe) continue;
    auto bytes = elf::read_section_prefix(host_path(dir, m), ".PyRuntime", kDebugOffsetsPrefix);
    if (!bytes.ok()) continue;
    if (auto build = decode_debug_offsets(bytes.value())) return build;
  }
  return std::nullopt;
}

std::optional<ProcCreds> proc_creds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  ProcCreds c;
  bool uid = false, gid = false;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string key;
    ls >> key;
    if (key == "Uid:" || key == "Gid:") {
      uint64_t real = 0, eff = 0, saved = 0, fs = 0;  // files are opened with the fs ids
      if (!(ls >> real >> eff >> saved >> fs)) return std::nullopt;
      if (key == "Uid:") c.uid = static_cast<uid_t>(fs), uid = true;
      else c.gid = static_cast<gid_t>(fs), gid = true;
    } else if (key == "Groups:") {
      uint64_t g = 0;
      while (ls >> g) c.groups.push_back(static_cast<gid_t>(g));
    }
  }
  if (!uid || !gid) return std::nullopt;
  return c;
}

bool readable_by(const std::string& path, const ProcCreds& creds, std::string* why) {
  if (creds.uid == 0) return true;
  // The mode bits that apply to `creds`: owner, else group, else other.
  auto allowed = [&creds](const struct stat& st, mode_t want) {
    mode_t bits = st.st_mode & 07;
    if (st.st_uid == creds.uid) bits = (st.st_mode >> 6) & 07;
    else if (st.st_gid == creds.gid ||
             std::find(creds.groups.begin(), creds.groups.end(), st.st_gid) != creds.groups.end())
      bits = (st.st_mode >> 3) & 07;
    return (bits & want) == want;
  };
  std::string prefix;
  size_t pos = 0;
  while (pos != std::string::npos) {
    const size_t next = path.find('/', pos + 1);
    prefix = path.substr(0, next == std::string::npos ? path.size() : next);
    if (prefix.empty()) prefix = "/";
    const bool last = next == std::string::npos;
    struct stat st {};
    if (stat(prefix.c_str(), &st) != 0) {
      *why = "'" + prefix + "': " + std::strerror(errno);
      return false;
    }
    const mode_t want = S_ISDIR(st.st_mode) ? (last ? 05 : 01) : 04;  // dirs: search, the last one list too
    if (!allowed(st, want)) {
      *why = "'" + prefix + "' is not " + (want == 01 ? "searchable" : "readable") + " by uid " +
             std::to_string(creds.uid);
      return false;
    }
    pos = next;
  }
  return true;
}

bool same_mount_namespace(pid_t pid) {
  struct stat ours {}, theirs {}, our_root {}, their_root {};
  const std::string dir = "/proc/" + std::to_string(pid);
  if (stat("/proc/self/ns/mnt", &ours) != 0 || stat((dir + "/ns/mnt").c_str(), &theirs) != 0) return false;
  if (stat("/", &our_root) != 0 || stat((dir + "/root/").c_str(), &their_root) != 0) return false;
  return ours.st_ino == theirs.st_ino && ours.st_dev == theirs.st_dev && our_root.st_ino == their_root.st_ino &&
         our_root.st_dev == their_root.st_dev;
}

uint64_t proc_start_time(pid_t pid) {
  const std::string line = read_first_line("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = line.rfind(')');
  if (paren == std::string::npos) return 0;
  // Fields after the comm: state is field 3, starttime field 22.
  std::istringstream ls(line.substr(paren + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i)
    if (!(ls >> field)) return 0;
  return std::strtoull(field.c_str(), nullptr, 10);
}

bool process_alive(pid_t pid, const std::string& proc_root) {
  const std::string line = read_first_line(proc_root + "/" + std::to_string(pid) + "/stat");
  if (line.empty()) return false;
  const auto paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'Z';
}

Error proc_error(const ProcInfo& info) {
  const std::string pid = std::to_string(info.pid);
  switch (info.kind) {
    case ProcKind::NoSuchProcess:
      return {kExitNoProcess, "no such process: " + pid};
    case ProcKind::Zombie:
      return {kExitNoProcess, "no such process: " + pid + " (zombie)"};
    case ProcKind::NotPython:
      return {kExitNotPython, "process " + pid + " (" + info.comm + ") is not a Python process"};
    case ProcKind::PythonNoProbes:
      return {kExitNoProbes,
              "process " + pid + " (" + info.comm +
                  ") is a Python process without asynctrace probes; start it with "
                  "'asynctrace run -- python3 app.py', call asynctrace.enable() in it, or "
                  "install the probes into its interpreter (see README)"};
    case ProcKind::Probed:
      break;
  }
  return {kExitInternal, "process " + pid + " (" + info.comm + ") has asynctrace probes; no error"};
}

std::string proc_exe(const std::string& proc_dir) {
  char buf[4096];
  const ssize_t n = readlink((proc_dir + "/exe").c_str(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string self_dir() {
  const std::string p = proc_exe("/proc/self");
  const auto slash = p.rfind('/');
  return p.empty() || slash == std::string::npos ? "." : p.substr(0, slash);
}

bool under_prefixes(const std::string& path, const std::vector<std::string>& prefixes) {
  if (prefixes.empty()) return true;
  for (const std::string& p : prefixes)
    if (path.rfind(p, 0) == 0) return true;
  return false;
}

ImageWatch::ImageWatch(pid_t pid)
    : pid_(pid), fd_(open(("/proc/" + std::to_string(pid) + "/maps").c_str(), O_RDONLY | O_CLOEXEC)) {}

ImageWatch::~ImageWatch() {
  if (fd_ >= 0) close(fd_);
}

bool ImageWatch::image_gone() const {
  char c;
  return fd_ >= 0 && pread(fd_, &c, 1, 0) == 0;
}

bool ImageWatch::replaced() const {
  if (!image_gone()) return false;
  // An exiting process also has no address space: only a live one with a
  // new address space has exec'd.
  const int fresh = open(("/proc/" + std::to_string(pid_) + "/maps").c_str(), O_RDONLY | O_CLOEXEC);
  if (fresh < 0) return false;
  char c;
  const bool mapped = pread(fresh, &c, 1, 0) == 1;
  close(fresh);
  return mapped;
}

}  // namespace asynctrace
