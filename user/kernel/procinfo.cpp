// SPDX-License-Identifier: Apache-2.0
// Classifies a pid from /proc alone. The ELF note scan is a few pread()s of
// section headers and one note section per mapped file: no libelf, so a
// garbage or truncated file can at worst make us answer "no probes".
#include "kernel/procinfo.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <vector>

namespace asynctrace {
namespace {

constexpr uint32_t kNtStapsdt = 3;                    // note type of SystemTap SDT probes
constexpr uint64_t kMaxNoteSection = 64ull << 20;     // larger is not a real .note.stapsdt
constexpr uint64_t kMaxSectionHeaders = 1u << 16;     // sanity bound on e_shnum

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

bool read_exact(int fd, void* buf, size_t len, uint64_t off) {
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = pread(fd, p, len, static_cast<off_t>(off));
    if (n <= 0) return false;  // error or the file is shorter than its headers claim
    p += n;
    len -= static_cast<size_t>(n);
    off += static_cast<uint64_t>(n);
  }
  return true;
}

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// True if a note section's bytes hold a stapsdt note of provider "asynctrace".
bool notes_have_asynctrace(const std::vector<char>& sec) {
  size_t off = 0;
  auto align4 = [](uint64_t v) { return (v + 3) & ~uint64_t{3}; };
  while (off + sizeof(Elf64_Nhdr) <= sec.size()) {
    Elf64_Nhdr nh;
    std::memcpy(&nh, sec.data() + off, sizeof nh);
    uint64_t name_off = off + sizeof nh;
    uint64_t desc_off = name_off + align4(nh.n_namesz);
    uint64_t next = desc_off + align4(nh.n_descsz);
    if (next > sec.size() || next <= off) return false;  // malformed: stop, do not guess
    std::string_view name(sec.data() + name_off, nh.n_namesz);
    // Desc layout: pc, base, semaphore (3 x 8 bytes), then "provider\0name\0args\0".
    if (nh.n_type == kNtStapsdt && name == std::string_view("stapsdt\0", 8) && nh.n_descsz > 24) {
      std::string_view rest(sec.data() + desc_off + 24, nh.n_descsz - 24);
      std::string_view provider = rest.substr(0, rest.find('\0'));
      if (provider == "asynctrace") return true;
    }
    off = next;
  }
  return false;
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
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return false;
  struct stat st {};
  if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  const uint64_t size = static_cast<uint64_t>(st.st_size);

  Elf64_Ehdr eh;
  if (!read_exact(fd.get(), &eh, sizeof eh, 0)) return false;
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
      eh.e_ident[EI_DATA] != ELFDATA2LSB)
    return false;
  if (eh.e_shoff == 0 || eh.e_shentsize != sizeof(Elf64_Shdr)) return false;

  // e_shnum / e_shstrndx overflow into section 0 for files with many sections.
  Elf64_Shdr sh0;
  if (!read_exact(fd.get(), &sh0, sizeof sh0, eh.e_shoff)) return false;
  uint64_t shnum = eh.e_shnum ? eh.e_shnum : sh0.sh_size;
  uint64_t shstrndx = eh.e_shstrndx == SHN_XINDEX ? sh0.sh_link : eh.e_shstrndx;
  if (shnum == 0 || shnum > kMaxSectionHeaders || shstrndx >= shnum) return false;
  if (eh.e_shoff > size || shnum * sizeof(Elf64_Shdr) > size - eh.e_shoff) return false;

  std::vector<Elf64_Shdr> shdrs(shnum);
  if (!read_exact(fd.get(), shdrs.data(), shnum * sizeof(Elf64_Shdr), eh.e_shoff)) return false;
  const Elf64_Shdr& strtab = shdrs[shstrndx];
  if (strtab.sh_offset > size || strtab.sh_size > size - strtab.sh_offset ||
      strtab.sh_size > kMaxNoteSection)
    return false;
  std::vector<char> names(strtab.sh_size + 1, '\0');  // +1: always NUL-terminated
  if (!read_exact(fd.get(), names.data(), strtab.sh_size, strtab.sh_offset)) return false;

  static constexpr std::string_view kSection = ".note.stapsdt";
  for (const Elf64_Shdr& sh : shdrs) {
    if (sh.sh_type != SHT_NOTE || sh.sh_name >= strtab.sh_size) continue;
    if (std::string_view(names.data() + sh.sh_name) != kSection) continue;
    if (sh.sh_offset > size || sh.sh_size > size - sh.sh_offset || sh.sh_size > kMaxNoteSection)
      return false;
    std::vector<char> sec(sh.sh_size);
    if (!read_exact(fd.get(), sec.data(), sec.size(), sh.sh_offset)) return false;
    if (notes_have_asynctrace(sec)) return true;
  }
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

  char buf[4096];
  ssize_t n = readlink((dir + "/exe").c_str(), buf, sizeof buf - 1);
  if (n > 0) info.exe.assign(buf, static_cast<size_t>(n));

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

}  // namespace asynctrace
