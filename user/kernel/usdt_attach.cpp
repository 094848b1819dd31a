// SPDX-License-Identifier: Apache-2.0
// See usdt_attach.h. The address arithmetic follows libbpf 1.1's usdt.c so a
// site resolves to the same file offset on both attach paths.
#include "kernel/usdt_attach.h"
#include "kernel/elf_notes.h"
#include "kernel/kernel_features.h"

#include <bpf/bpf.h>
#include <errno.h>
#include <fcntl.h>
#include <elf.h>
#include <linux/perf_event.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <asm/ptrace.h>  // struct pt_regs as the BPF program sees it
#endif

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <cstring>
#include <mutex>

namespace asynctrace::usdt {
namespace {

constexpr const char* kNoteSection = ".note.stapsdt";

Error elf_error(const std::string& path, const std::string& why) {
  return Error{kExitTracing, "failed to read USDT notes of '" + path + "': " + why};
}

const elf::Segment* find_segment(const std::vector<elf::Segment>& segs, uint64_t vaddr) {
  for (const elf::Segment& s : segs)
    if (s.vaddr <= vaddr && vaddr < s.vaddr + s.memsz) return &s;
  return nullptr;
}

#if defined(__x86_64__)
// Register names of an operand -> offsetof(struct pt_regs, ...), the table of
// libbpf 1.1 (every width of a register reads the full 64-bit slot; the
// arg_bitshift of the spec cuts it to size).
int pt_regs_offset(std::string_view reg) {
  struct Row {
    const char* names[4];
    size_t off;
  };
  static const Row rows[] = {
      {{"rip", "eip", "", ""}, offsetof(pt_regs, rip)},
      {{"rax", "eax", "ax", "al"}, offsetof(pt_regs, rax)},
      {{"rbx", "ebx", "bx", "bl"}, offsetof(pt_regs, rbx)},
      {{"rcx", "ecx", "cx", "cl"}, offsetof(pt_regs, rcx)},
      {{"rdx", "edx", "dx", "dl"}, offsetof(pt_regs, rdx)},
      {{"rsi", "esi", "si", "sil"}, offsetof(pt_regs, rsi)},
      {{"rdi", "edi", "di", "dil"}, offsetof(pt_regs, rdi)},
      {{"rbp", "ebp", "bp", "bpl"}, offsetof(pt_regs, rbp)},
      {{"rsp", "esp", "sp", "spl"}, offsetof(pt_regs, rsp)},
      {{"r8", "r8d", "r8w", "r8b"}, offsetof(pt_regs, r8)},
      {{"r9", "r9d", "r9w", "r9b"}, offsetof(pt_regs, r9)},
      {{"r10", "r10d", "r10w", "r10b"}, offsetof(pt_regs, r10)},
      {{"r11", "r11d", "r11w", "r11b"}, offsetof(pt_regs, r11)},
      {{"r12", "r12d", "r12w", "r12b"}, offsetof(pt_regs, r12)},
      {{"r13", "r13d", "r13w", "r13b"}, offsetof(pt_regs, r13)},
      {{"r14", "r14d", "r14w", "r14b"}, offsetof(pt_regs, r14)},
      {{"r15", "r15d", "r15w", "r15b"}, offsetof(pt_regs, r15)},
  };
  for (const Row& r : rows)
    for (const char* n : r.names)
      if (*n && reg == n) return static_cast<int>(r.off);
  return -1;
}
#else
int pt_regs_offset(std::string_view) { return -1; }
#endif

template <class T>
bool parse_int(std::string_view s, T* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, 10);
  return ec == std::errc() && p == s.data() + s.size();
}

// One operand "N@location" into `arg`; returns the reason on failure.
std::string parse_operand(std::string_view op, ArgSpec* arg) {
  const size_t at = op.find('@');
  if (at == std::string_view::npos) return "no '@'";
  int size = 0;
  if (!parse_int(op.substr(0, at), &size)) return "bad size";
  arg->arg_signed = size < 0;
  const int bytes = size < 0 ? -size : size;
  if (bytes != 1 && bytes != 2 && bytes != 4 && bytes != 8) return "unsupported size";
  arg->arg_bitshift = static_cast<int8_t>(64 - bytes * 8);

  std::string_view loc = op.substr(at + 1);
  if (loc.empty()) return "empty location";
  if (loc[0] == '$') {  // immediate: "4@$71"
    int64_t imm = 0;
    if (!parse_int(loc.substr(1), &imm)) return "unsupported immediate";
    arg->arg_type = kArgConst;
    arg->val_off = static_cast<uint64_t>(imm);
    arg->reg_off = 0;
    return {};
  }
  if (loc[0] == '%') {  // register: "-4@%eax"
    const int off = pt_regs_offset(loc.substr(1));
    if (off < 0) return "unknown register";
    arg->arg_type = kArgReg;
    arg->val_off = 0;
    arg->reg_off = static_cast<int16_t>(off);
    return {};
  }
  // Memory: "-4@-1204(%rbp)" or "8@(%rbx)". Symbols ("sym(%rip)") and
  // indexed forms ("(%rax,%rdx,8)") are beyond libbpf 1.1, so beyond us.
  constexpr const char* kForms = " (libbpf 1.1 reads only N@%reg, N@off(%reg), N@(%reg), N@$imm)";
  const size_t open = loc.find('(');
  if (open == std::string_view::npos || loc.back() != ')')
    return std::string("unsupported location") + kForms;
  int64_t disp = 0;
  if (open > 0 && !parse_int(loc.substr(0, open), &disp))
    return std::string("unsupported displacement") + kForms;
  std::string_view inner = loc.substr(open + 1, loc.size() - open - 2);
  if (inner.empty() || inner[0] != '%' || inner.find(',') != std::string_view::npos)
    return std::string("unsupported base") + kForms;
  const int off = pt_regs_offset(inner.substr(1));
  if (off < 0) return "unknown register";
  arg->arg_type = kArgRegDeref;
  arg->val_off = static_cast<uint64_t>(disp);
  arg->reg_off = static_cast<int16_t>(off);
  return {};
}

struct LinkCreateUprobeMulti {  // union bpf_attr, link_create, uprobe_multi (uapi >= 6.6)
  uint32_t prog_fd;
  uint32_t target_fd;
  uint32_t attach_type;
  uint32_t flags;
  uint64_t path;
  uint64_t offsets;
  uint64_t ref_ctr_offsets;
  uint64_t cookies;
  uint32_t cnt;
  uint32_t multi_flags;  // BPF_F_UPROBE_MULTI_RETURN (1) for uretprobes; never here
  uint32_t pid;
  uint32_t pad;
};
static_assert(offsetof(LinkCreateUprobeMulti, path) == 16 &&
                  offsetof(LinkCreateUprobeMulti, cnt) == 48 &&
                  offsetof(LinkCreateUprobeMulti, pid) == 56 && sizeof(LinkCreateUprobeMulti) == 64,
              "layout of bpf_attr.link_create.uprobe_multi (include/uapi/linux/bpf.h)");

int link_create_raw(const LinkCreateUprobeMulti& in) {
  LinkCreateUprobeMulti attr = in;
  const long fd = syscall(__NR_bpf, BPF_LINK_CREATE, &attr, sizeof attr);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

}  // namespace

Result<Spec> parse_args(std::string_view args) {
  Spec spec;
  size_t i = 0;
  while (i < args.size()) {
    while (i < args.size() && (args[i] == ' ' || args[i] == '\t')) i++;
    if (i == args.size()) break;
    size_t end = i;
    while (end < args.size() && args[end] != ' ' && args[end] != '\t') end++;
    const std::string_view op = args.substr(i, end - i);
    if (spec.arg_cnt >= kMaxArgs)
      return Error{kExitTracing, "failed to parse USDT arguments '" + std::string(args) +
                                     "': more than " + std::to_string(kMaxArgs) + " arguments"};
    std::string why = parse_operand(op, &spec.args[spec.arg_cnt]);
    if (!why.empty())
      return Error{kExitTracing, "failed to parse USDT argument #" + std::to_string(spec.arg_cnt) +
                                     " '" + std::string(op) + "': " + why};
    spec.arg_cnt++;
    i = end;
  }
  return spec;
}

Result<std::vector<Site>> read_sites(const std::string& path, std::string_view provider) {
  auto parsed = elf::read_stapsdt(path);  // the one note reader (elf_notes.h)
  if (!parsed.ok()) return elf_error(path, parsed.error().message);
  const elf::StapsdtNotes& f = parsed.value();
  if (f.type != ET_EXEC && f.type != ET_DYN) return elf_error(path, "neither an executable nor a shared object");
  // Probe and semaphore addresses are link-time virtual addresses; uprobes
  // take file offsets, which the PT_LOAD segments translate to.
  if (f.segments.empty()) return elf_error(path, "no PT_LOAD segments");
  if (!f.has_section) return elf_error(path, std::string("no ") + kNoteSection + " section");
  std::vector<Site> sites;
  for (const elf::Note& n : f.notes) {
    if (!n.error.empty()) return elf_error(path, n.error);
    if (n.provider != provider) continue;
    Site site;
    site.name = n.name;
    if (n.args.empty() || n.args[0] != ':') site.args = n.args;  // ":..." is libbpf's "no arguments"
    // Prelink moves code but not the (unallocated) notes; .stapsdt.base's
    // address versus the base recorded in each note gives the shift.
    uint64_t ip = n.pc;
    if (f.base_addr && n.base) ip += f.base_addr - n.base;
    const elf::Segment* seg = find_segment(f.segments, ip);
    if (!seg || !seg->exec)
      return elf_error(path, "probe '" + site.name + "' is not in an executable segment");
    site.offset = ip - seg->vaddr + seg->offset;
    if (n.semaphore) {
      seg = find_segment(f.segments, n.semaphore);
      if (!seg || seg->exec)
        return elf_error(path, "semaphore of probe '" + site.name + "' is not in a data segment");
      site.sema_offset = n.semaphore - seg->vaddr + seg->offset;
    }
    sites.push_back(std::move(site));
  }
  return sites;
}

namespace {

// A do-nothing kprobe-type program; `multi`: with the multi-uprobe attach type.
int load_noop(bool multi) {
  const bpf_insn insns[] = {
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},
      {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
  };
  LIBBPF_OPTS(bpf_prog_load_opts, opts);
  if (multi) opts.expected_attach_type = static_cast<bpf_attach_type>(kAttachUprobeMulti);
  return bpf_prog_load(BPF_PROG_TYPE_KPROBE, "at_noop", "GPL", insns, 2, &opts);
}

// The kernel's answer, without the environment's say.
bool probe_uprobe_multi(std::string* why) {
#if !defined(__x86_64__)
  *why = "USDT operands of this architecture are parsed by libbpf only";
  return false;
#else
  const int prog = load_noop(true);
  if (prog < 0) {
    *why = std::string("probe program did not load: ") + std::strerror(errno);
    return false;
  }
  // A directory as the binary: kernels with uprobe_multi links fail the
  // path with EBADF; older ones reject the attach type with EINVAL.
  unsigned long offset = 0;
  LinkCreateUprobeMulti attr{};
  attr.prog_fd = static_cast<uint32_t>(prog);
  attr.attach_type = kAttachUprobeMulti;
  attr.path = reinterpret_cast<uint64_t>("/");
  attr.offsets = reinterpret_cast<uint64_t>(&offset);
  attr.cnt = 1;
  int fd = link_create_raw(attr);
  bool ok = fd == -EBADF;
  if (!ok) *why = "kernel has no uprobe_multi links (needs >= 6.6)";
  if (ok) {
    // The first uprobe_multi kernels filtered by thread, not process; those
    // that filter by process reject a negative pid before anything else.
    attr.pid = static_cast<uint32_t>(-1);
    const int fd2 = link_create_raw(attr);
    ok = fd2 == -EINVAL;
    if (!ok) *why = "kernel's uprobe_multi links filter by thread, not process";
    if (fd2 >= 0) close(fd2);
  }
  if (fd >= 0) close(fd);
  close(prog);
  return ok;
#endif
}

// The uprobe PMU (Linux 4.17+) and where ref_ctr_offset goes in its config
// (Linux 4.20+; "config:32-63", PERF_UPROBE_REF_CTR_OFFSET_SHIFT).
struct UprobePmu {
  int type = -1;           // perf_event_attr.type; -1: no PMU
  int ref_ctr_shift = -1;  // -1: no semaphores
};

const UprobePmu& uprobe_pmu() {
  static const UprobePmu pmu = [] {
    UprobePmu p;
    std::ifstream type("/sys/bus/event_source/devices/uprobe/type");
    if (!(type >> p.type)) p.type = -1;
    std::ifstream fmt("/sys/bus/event_source/devices/uprobe/format/ref_ctr_offset");
    std::string f;
    if (fmt >> f && f.rfind("config:", 0) == 0) {
      int shift = -1;
      const char* b = f.c_str() + 7;
      auto [end, ec] = std::from_chars(b, f.c_str() + f.size(), shift);
      if (ec == std::errc() && (*end == '-' || *end == '\0') && shift > 0 && shift < 64) p.ref_ctr_shift = shift;
    }
    return p;
  }();
  return pmu;
}

// One perf-event uprobe on `offset` of `path`; the event fd or -errno.
int open_uprobe_event(const std::string& path, pid_t pid, unsigned long offset, unsigned long ref_ctr_offset) {
  const UprobePmu& pmu = uprobe_pmu();
  if (pmu.type < 0) return -EOPNOTSUPP;
  perf_event_attr attr{};
  attr.size = sizeof attr;
  attr.type = static_cast<uint32_t>(pmu.type);
  if (ref_ctr_offset) {
    if (pmu.ref_ctr_shift < 0) return -EOPNOTSUPP;
    if (pmu.ref_ctr_shift + (64 - __builtin_clzl(ref_ctr_offset)) > 64) return -ERANGE;  // does not fit
    attr.config = static_cast<uint64_t>(ref_ctr_offset) << pmu.ref_ctr_shift;
  }
  attr.config1 = reinterpret_cast<uint64_t>(path.c_str());  // uprobe_path
  attr.config2 = offset;                                     // probe_offset
  // A process: its threads (the kernel filters uprobes by mm). Everyone:
  // a CPU-wide event on CPU 0, whose BPF program runs on every CPU.
  const long fd = syscall(__NR_perf_event_open, &attr, pid > 0 ? pid : -1, pid > 0 ? -1 : 0, -1,
                          PERF_FLAG_FD_CLOEXEC);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

// Attaches `prog_fd` to the event `pfd` with `cookie`: the link fd (which
// holds the event: pfd can be closed), or pfd itself when only the old
// ioctl worked (cookie 0), or -errno.
int attach_to_event(int prog_fd, int pfd, uint64_t cookie) {
  LIBBPF_OPTS(bpf_link_create_opts, opts);
  opts.perf_event.bpf_cookie = cookie;
  const int link = bpf_link_create(prog_fd, pfd, BPF_PERF_EVENT, &opts);
  if (link >= 0) return link;
  const int err = errno;
  if (cookie != 0) return -err;  // only links carry cookies (Linux 5.15+)
  if (ioctl(pfd, PERF_EVENT_IOC_SET_BPF, prog_fd) != 0 || ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0) != 0)
    return -errno;
  return pfd;
}

}  // namespace

int load_noop_program() { return load_noop(uprobe_multi_supported()); }

bool uprobe_multi_supported(std::string* why) {
  static std::once_flag once;
  static bool ok = false;
  static std::string reason;
  std::call_once(once, [] {
    const char* env = std::getenv("ASYNCTRACE_UPROBE_MULTI");
    if (env && std::string_view(env) == "0")
      reason = "disabled by ASYNCTRACE_UPROBE_MULTI=0";
    else if (const char* hide = std::getenv("ASYNCTRACE_TEST_HIDE_FEATURE"); hide && names_feature(hide, "uprobe_multi"))
      reason = "hidden by ASYNCTRACE_TEST_HIDE_FEATURE";
    else
      ok = probe_uprobe_multi(&reason);
  });
  if (why) *why = reason;
  return ok;
}

int create_perf_uprobe_links(int prog_fd, const std::string& path, pid_t pid,
                             const std::vector<unsigned long>& offsets,
                             const std::vector<unsigned long>& ref_ctr_offsets,
                             const std::vector<uint64_t>& cookies, std::vector<int>* fds) {
  if (offsets.empty() || ref_ctr_offsets.size() != offsets.size() || cookies.size() != offsets.size())
    return -EINVAL;
  const size_t first = fds->size();
  for (size_t i = 0; i < offsets.size(); ++i) {
    int fd = open_uprobe_event(path, pid, offsets[i], ref_ctr_offsets[i]);
    if (fd >= 0) {
      const int pfd = fd;
      fd = attach_to_event(prog_fd, pfd, cookies[i]);
      if (fd != pfd) close(pfd);  // a link holds the event (or attaching failed)
    }
    if (fd < 0) {
      for (size_t k = first; k < fds->size(); ++k) close((*fds)[k]);
      fds->resize(first);
      return fd;
    }
    fds->push_back(fd);
  }
  return 0;
}

int attach_uprobes(int prog_fd, const std::string& path, pid_t pid, const std::vector<unsigned long>& offsets,
                   const std::vector<unsigned long>& ref_ctr_offsets, const std::vector<uint64_t>& cookies,
                   std::vector<int>* fds) {
  if (!uprobe_multi_supported())
    return create_perf_uprobe_links(prog_fd, path, pid, offsets, ref_ctr_offsets, cookies, fds);
  const int fd = create_uprobe_multi_link(prog_fd, path, pid, offsets, ref_ctr_offsets, cookies);
  if (fd < 0) return fd;
  fds->push_back(fd);
  return 0;
}

int create_uprobe_multi_link(int prog_fd, const std::string& path, pid_t pid,
                             const std::vector<unsigned long>& offsets,
                             const std::vector<unsigned long>& ref_ctr_offsets,
                             const std::vector<uint64_t>& cookies) {
  if (offsets.empty() || ref_ctr_offsets.size() != offsets.size() || cookies.size() != offsets.size())
    return -EINVAL;
  LinkCreateUprobeMulti attr{};
  attr.prog_fd = static_cast<uint32_t>(prog_fd);
  attr.attach_type = kAttachUprobeMulti;
  attr.path = reinterpret_cast<uint64_t>(path.c_str());
  attr.offsets = reinterpret_cast<uint64_t>(offsets.data());
  attr.ref_ctr_offsets = reinterpret_cast<uint64_t>(ref_ctr_offsets.data());
  attr.cookies = reinterpret_cast<uint64_t>(cookies.data());
  attr.cnt = static_cast<uint32_t>(offsets.size());
  attr.pid = static_cast<uint32_t>(pid);
  return link_create_raw(attr);
}

Result<uint16_t> read_semaphore(pid_t pid, const std::string& mapped_path, uint64_t sema_offset) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    // start-end perms offset dev inode path
    unsigned long long start = 0, end = 0, off = 0;
    char perms[8] = {};
    int path_at = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx %7s %llx %*s %*s %n", &start, &end, perms, &off, &path_at) < 4 ||
        path_at <= 0)
      continue;
    if (line.compare(static_cast<size_t>(path_at), std::string::npos, mapped_path) != 0) continue;
    if (sema_offset < off || sema_offset + 2 > off + (end - start)) continue;
    const int fd = open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Error{kExitTracing, std::string("open /proc/PID/mem: ") + std::strerror(errno)};
    uint16_t v = 0;
    const ssize_t n = pread(fd, &v, sizeof v, static_cast<off_t>(start + (sema_offset - off)));
    close(fd);
    if (n != sizeof v) return Error{kExitTracing, "short read of a USDT semaphore"};
    return v;
  }
  return Error{kExitTracing, "semaphore not mapped in process " + std::to_string(pid)};
}

namespace {

// A no-op program on one request site: its one fd, or -errno.
int attach_one(int prog_fd, const std::string& path, pid_t pid, const Site& s) {
  std::vector<int> fds;
  const int err = attach_uprobes(prog_fd, path, pid, {s.offset}, {s.sema_offset}, {0}, &fds);
  return err < 0 ? err : fds.front();
}

}  // namespace

int request_replay(pid_t pid, const std::string& path, const std::string& mapped_path,
                   const std::vector<Site>& sites, int prog_fd, bool full) {
  const Site* fallback = nullptr;
  for (int i = full ? 0 : 4; i < (full ? 4 : 8); ++i) {
    const std::string name = "replay__req" + std::to_string(i);
    for (const Site& s : sites) {
      if (s.name != name || !s.sema_offset) continue;
      auto v = read_semaphore(pid, mapped_path, s.sema_offset);
      if (!v.ok()) {
        if (!fallback) fallback = &s;  // cannot tell: try it if nothing better
        continue;
      }
      if (v.value() != 0) continue;  // another tracer's request
      return attach_one(prog_fd, path, pid, s);
    }
  }
  if (fallback) return attach_one(prog_fd, path, pid, *fallback);
  for (const Site& s : sites)
    if (s.name == (full ? "replay__req0" : "replay__req4")) return -EBUSY;
  return -ENOENT;
}

}  // namespace asynctrace::usdt
