// SPDX-License-Identifier: Apache-2.0
// The only file that speaks libbpf: loads bpf/asynctrace.bpf.c through its
// skeleton, attaches the USDT programs to one process and decodes the maps
// into a Snapshot. Everything else in user/ sees loader.h only.
#include "kernel/loader.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <mutex>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "abi.h"
#include "asynctrace.skel.h"
#include "core/decode.h"
#include "kernel/kernel_features.h"
#include "kernel/usdt_attach.h"
#include "core/verifier_log.h"

namespace asynctrace {
namespace {

constexpr int kCapPerfmon = 38;
constexpr int kCapBpf = 39;
constexpr int kCapSysAdmin = 21;
constexpr unsigned long kTracefsMagic = 0x74726163;  // TRACEFS_MAGIC
constexpr int kEnotsupp = 524;  // kernel-internal ENOTSUPP, leaks out of old bpf() commands

// libbpf logs through one process-wide callback. Keep its last one-line
// warning so an error message can say why, and the last program the kernel
// refused with its verifier log (load_error()), and echo everything, whole,
// only when asked to.
std::mutex g_log_mu;
std::string g_last_libbpf_warning;
ProgLoadFailure g_prog_failure;
bool g_verbose = false;

// One libbpf message, however long: a refused program's whole verifier log
// comes as one message.
std::string format_message(const char* fmt, va_list args) {
  va_list copy;
  va_copy(copy, args);
  const int n = vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0) return {};
  std::string msg(static_cast<size_t>(n) + 1, '\0');
  va_copy(copy, args);
  vsnprintf(msg.data(), msg.size(), fmt, copy);
  va_end(copy);
  msg.resize(static_cast<size_t>(n));
  return msg;
}

int libbpf_log(enum libbpf_print_level level, const char* fmt, va_list args) {
  const std::string msg = format_message(fmt, args);
  std::lock_guard lock(g_log_mu);
  if (level == LIBBPF_WARN && !parse_prog_load_warning(msg, &g_prog_failure)) {
    std::string_view s(msg);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
    if (s.find('\n') == std::string_view::npos) g_last_libbpf_warning.assign(s);
  }
  if (!g_verbose) return 0;
  return fputs(msg.c_str(), stderr);
}

// Routes libbpf's log through libbpf_log, echoing it only when verbose.
void init_libbpf_log(bool verbose) {
  {
    std::lock_guard lock(g_log_mu);
    g_verbose = verbose;
    g_last_libbpf_warning.clear();
    g_prog_failure = {};
  }
  libbpf_set_print(libbpf_log);
}

ProgLoadFailure take_prog_failure() {
  std::lock_guard lock(g_log_mu);
  ProgLoadFailure f;
  std::swap(f, g_prog_failure);
  return f;
}

std::string take_libbpf_warning() {
  std::lock_guard lock(g_log_mu);
  std::string w;
  w.swap(g_last_libbpf_warning);
  return w;
}

// "<strerror(err)>[ (libbpf: <last warning>)]"
std::string reason(int err) {
  std::string r = std::strerror(err < 0 ? -err : err);
  std::string w = take_libbpf_warning();
  if (!w.empty()) r += " (" + w + ")";
  return r;
}

// Effective capabilities from /proc/self/status: what the kernel will check,
// unlike euid (root in a container may lack CAP_BPF).
uint64_t effective_caps() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    return std::stoull(line.substr(7), nullptr, 16);
  }
  return 0;
}

// The one line for a program the verifier refused: its name, the verifier's
// reason (the end of its log) and the kernel release.
Error verifier_error(const ProgLoadFailure& f, const std::string& hint) {
  std::string why = verifier_reason(f.log);
  if (why.empty()) why = "its log gives no reason";
  return Error{kExitTracing, "failed to load BPF program '" + f.prog + "': the kernel's verifier rejected it: " +
                                 why + " (Linux " + kernel_release() + ")" + hint};
}

// Why asynctrace_bpf__load() failed (`err`: its -errno), as the one line to
// report; every load of the skeleton goes through here. A program the
// verifier refused (libbpf printed its log) is exit 7 with the program and
// the verifier's reason: with the capabilities, an EACCES or EPERM from
// BPF_PROG_LOAD is the verifier's, not a privilege problem. EACCES/EPERM
// without them is exit 6; anything else exit 7, with `remedy` if given.
Error load_error(int err, bool verbose, const std::string& remedy = {}) {
  const ProgLoadFailure f = take_prog_failure();
  if (f.has_log) return verifier_error(f, verbose ? "" : "; rerun with --verbose for the verifier log");
  const int e = err < 0 ? -err : err;
  if ((e == EPERM || e == EACCES) && !check_privileges().ok())
    return Error{kExitPrivilege, "failed to load BPF object 'asynctrace': " + reason(err) +
                                     "; run as root or grant CAP_BPF and CAP_PERFMON"};
  const std::string what = f.prog.empty() ? "BPF object 'asynctrace'" : "BPF program '" + f.prog + "'";
  const std::string hint = !remedy.empty() ? "; " + remedy : verbose ? "" : "; rerun with --verbose for libbpf's log";
  return Error{kExitTracing, "failed to load " + what + ": " + reason(err) + hint};
}

// ASYNCTRACE_TEST_VERIFIER_REJECT=1 (tests only): replay_end makes an access
// the verifier refuses, to test how a rejected load is reported.
void apply_test_knobs(asynctrace_bpf* skel) {
  const char* env = std::getenv("ASYNCTRACE_TEST_VERIFIER_REJECT");
  skel->rodata->test_reject = env && std::string_view(env) == "1";
}

// libbpf creates uprobes through the perf "uprobe" PMU when the kernel has it
// and falls back to tracefs uprobe_events otherwise; only the fallback needs
// tracefs mounted.
Status ensure_uprobe_interface() {
  struct stat st {};
  if (stat("/sys/bus/event_source/devices/uprobe/type", &st) == 0) return ok_status();
  struct statfs fs {};
  if (statfs("/sys/kernel/tracing", &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kTracefsMagic)
    return ok_status();
  if (statfs("/sys/kernel/debug/tracing", &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kTracefsMagic)
    return ok_status();
  if (mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nullptr) == 0) return ok_status();
  return Error{kExitTracing, std::string("failed to mount tracefs '/sys/kernel/tracing': ") +
                                 std::strerror(errno) +
                                 "; the kernel has no uprobe PMU, so uprobes need tracefs"};
}


// Attach order required by the ABI: replay__end last, because raising its
// semaphore is what starts the runtime's replay, and every probe the replay
// emits must already be live. task__complete first so no task can finish
// unseen between its creation and our attach.
// A runtime need not emit every probe (a runtime without gather has no
// edge__add site); only task__create and replay__end are required.
//
// Two ways to receive the task events: a runtime with a batch__flush site
// buffers them and fires one probe per batch (the fast path: no trap per
// event); otherwise each event is its own probe. code__register and the replay
// probes are used in both.
enum EventPath : unsigned { kPerEvent = 1, kBatch = 2, kBoth = 3 };
struct ProbeSlot {
  const char* probe;
  bpf_program* (*prog)(asynctrace_bpf*);
  unsigned paths = kBoth;
  bool required = false;
};
constexpr std::array<ProbeSlot, 10> kAttachOrder{{
    {"batch__flush", [](asynctrace_bpf* s) { return s->progs.batch_flush; }, kBatch, true},
    {"task__complete", [](asynctrace_bpf* s) { return s->progs.task_complete; }, kPerEvent},
    {"code__register", [](asynctrace_bpf* s) { return s->progs.code_register; }},
    {"task__create", [](asynctrace_bpf* s) { return s->progs.task_create; }, kPerEvent, true},
    {"edge__add", [](asynctrace_bpf* s) { return s->progs.edge_add; }, kPerEvent},
    {"edge__remove", [](asynctrace_bpf* s) { return s->progs.edge_remove; }, kPerEvent},
    {"task__await", [](asynctrace_bpf* s) { return s->progs.task_await; }, kPerEvent},
    {"task__resume", [](asynctrace_bpf* s) { return s->progs.task_resume; }, kPerEvent},
    {"replay__begin", [](asynctrace_bpf* s) { return s->progs.replay_begin; }},
    {"replay__end", [](asynctrace_bpf* s) { return s->progs.replay_end; }, kBoth, true},
}};

using Sites = Result<std::vector<usdt::Site>>;

bool has_probe(const Sites& sites, std::string_view name) {
  return sites.ok() && std::any_of(sites.value().begin(), sites.value().end(),
                                   [&](const usdt::Site& s) { return s.name == name; });
}

// The batch path when the runtime offers it, unless ASYNCTRACE_EVENTS=per-event
// asks for one probe per event (for comparison; bpftrace-like cost).
EventPath choose_event_path(const Sites& sites) {
  const char* env = std::getenv("ASYNCTRACE_EVENTS");
  if (env && std::string_view(env) == "per-event") return kPerEvent;
  return has_probe(sites, "batch__flush") ? kBatch : kPerEvent;
}


// Calls fn(key, value) for every entry of a hash map. Batch lookups read a
// consistent bucket at a time; kernels without them get the key walk, which
// may repeat keys under churn (then *may_repeat is set: callers dedupe).
template <class K, class V, class Fn>
Status for_each_entry(int fd, const char* map_name, Fn&& fn, bool* may_repeat = nullptr) {
  // Entries per batch. Larger batches did not read 100,000 tasks faster, and a
  // chunk of stacks is 528 bytes an entry: the holder keeps its peak RSS.
  constexpr uint32_t kChunk = 1024;
  std::vector<K> keys(kChunk);
  std::vector<V> values(kChunk);
  uint32_t batch = 0;
  bool first = true;
  for (;;) {
    uint32_t count = kChunk;
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    int err = bpf_map_lookup_batch(fd, first ? nullptr : &batch, &batch, keys.data(),
                                   values.data(), &count, &opts);
    if (err < 0 && errno != ENOENT) {
      if (!first || (errno != EINVAL && errno != ENOTSUP && errno != kEnotsupp))
        return Error{kExitTracing, std::string("failed to read BPF map '") + map_name +
                                       "': " + std::strerror(errno)};
      break;  // no batch support: walk keys below
    }
    for (uint32_t i = 0; i < count; i++) fn(keys[i], values[i]);
    if (err < 0) return ok_status();  // ENOENT: all buckets read
    first = false;
  }
  if (may_repeat) *may_repeat = true;
  K key{}, next{};
  V value{};
  const K* cur = nullptr;
  size_t guard = 0;
  while (bpf_map_get_next_key(fd, cur, &next) == 0 && guard++ < 4u * AT_MAX_TASKS) {
    if (bpf_map_lookup_elem(fd, &next, &value) == 0) fn(next, value);
    key = next;
    cur = &key;
  }
  return ok_status();
}

// Decodes the maps (of a live tracer or pinned by `attach`) for one pid.
// The four maps of one BPF object (live or pinned), by fd.
struct MapFds {
  int tasks = -1, codes = -1, procs = -1, stacks = -1, timing = -1, code_timing = -1;
};

Result<Snapshot> read_maps(uint32_t pid, const MapFds& m) {
  SnapshotDecoder dec(pid);  // decode.cpp: the pure part, fuzzed in tests/fuzz/
  at_proc proc{};
  const __u32 key = pid;
  if (bpf_map_lookup_elem(m.procs, &key, &proc) == 0) dec.set_proc(proc);  // first: a size hint
  Status st = for_each_entry<at_stack_key, at_stack>(
      m.stacks, "stacks", [&](const at_stack_key& k, const at_stack& s) { dec.add_stack(k, s); });
  if (!st.ok()) return st.error();
  bool may_repeat = false;
  st = for_each_entry<at_task_key, at_task>(
      m.tasks, "tasks",
      [&](const at_task_key& k, const at_task& t) {
        if (may_repeat) dec.allow_repeats();
        dec.add_task(k, t);
      },
      &may_repeat);
  if (!st.ok()) return st.error();
  st = for_each_entry<at_code_key, at_code>(
      m.codes, "codes", [&](const at_code_key& k, const at_code& c) { dec.add_code(k, c); });
  if (!st.ok()) return st.error();
  if (m.timing >= 0) {
    st = for_each_entry<at_task_key, at_timing>(
        m.timing, "timing", [&](const at_task_key& k, const at_timing& t) { dec.add_timing(k, t); });
    if (!st.ok()) return st.error();
  }
  if (m.code_timing >= 0) {
    st = for_each_entry<at_code_key, at_timing>(
        m.code_timing, "code_timing",
        [&](const at_code_key& k, const at_timing& t) { dec.add_code_timing(k, t); });
    if (!st.ok()) return st.error();
  }
  return std::move(dec).finish();
}

// Removes the interned stacks of `pid` that no task refers to, except those
// tagged with the replay in progress (its tasks may not point at them yet).
Status gc_stacks(uint32_t pid, const MapFds& m) {
  at_proc proc{};
  const __u32 pkey = pid;
  if (bpf_map_lookup_elem(m.procs, &pkey, &proc) != 0) return ok_status();
  std::unordered_set<uint64_t> used;
  Status st = for_each_entry<at_task_key, at_task>(m.tasks, "tasks", [&](const at_task_key& k, const at_task& t) {
    if (k.pid == pid && t.stack_id) used.insert(t.stack_id);
  });
  if (!st.ok()) return st;
  std::vector<at_stack_key> dead;
  st = for_each_entry<at_stack_key, at_stack>(m.stacks, "stacks", [&](const at_stack_key& k, const at_stack& s) {
    if (k.pid == pid && !used.count(k.stack_id) && s.gen < proc.replay_active) dead.push_back(k);
  });
  if (!st.ok()) return st;
  for (const at_stack_key& k : dead) bpf_map_delete_elem(m.stacks, &k);
  return ok_status();
}

// Pinned maps of one process plus the lock that says their holder is alive.
// The lock is a flock on /run/asynctrace/<pid>.lock: the kernel drops it when
// the holder dies, however it dies, so readers can tell stale pins.
constexpr const char* kPinnedMaps[] = {"tasks", "codes", "procs", "stacks", "timing", "code_timing"};
constexpr size_t kNumPinned = std::size(kPinnedMaps);
constexpr unsigned long kBpfFsMagic = 0xcafe4a11;

std::string lock_path(pid_t pid) { return "/run/asynctrace/" + std::to_string(pid) + ".lock"; }

void remove_pins(pid_t pid) {
  const std::string dir = pin_dir(pid);
  for (const char* m : kPinnedMaps) unlink((dir + "/" + m).c_str());
  rmdir(dir.c_str());
}

struct Pins {
  pid_t pid = 0;
  int lock_fd = -1;
  bool pinned = false;
  ~Pins() {
    if (pinned) remove_pins(pid);
    if (lock_fd >= 0) {
      unlink(lock_path(pid).c_str());
      close(lock_fd);
    }
  }
};

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

Status ensure_bpffs() {
  struct statfs fs {};
  if (statfs("/sys/fs/bpf", &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kBpfFsMagic)
    return ok_status();
  if (mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") == 0) return ok_status();
  return Error{kExitTracing, std::string("failed to mount bpffs '/sys/fs/bpf': ") + std::strerror(errno)};
}

// How the programs reach the probe sites; decided once, before load, because
// a program loaded for one kind of link cannot be used with the other (and
// bpf_get_attach_cookie() is resolved per kind at verification).
enum class AttachMode {
  // One BPF_TRACE_UPROBE_MULTI link per program covering all of its sites:
  // attach is one syscall per probe, detach one RCU grace period per link.
  UprobeMulti,
  // libbpf 1.1's bpf_program__attach_usdt(): one perf-event uprobe per site,
  // each waiting for its own grace periods on close (~100 ms per site).
  PerfPerSite,
};

const char* mode_name(AttachMode m) {
  return m == AttachMode::UprobeMulti ? "uprobe_multi links" : "perf-event uprobes, one per site";
}

// With --verbose, one line: the kernel features found and the attach path.
void print_features(const KernelFeatures& kf, AttachMode mode, const std::string& why) {
  std::fprintf(stderr, "asynctrace: kernel %s: %s; attaching USDT probes with %s", kf.release.c_str(),
               features_summary(kf).c_str(), mode_name(mode));
  if (!why.empty()) std::fprintf(stderr, " (%s)", why.c_str());
  std::fputc('\n', stderr);
}

// ASYNCTRACE_UPROBE_MULTI=0 forces the libbpf path (tests of the fallback).
// Read at every attach, not from usdt::uprobe_multi_supported()'s cached
// decision: loader_check flips it between rounds in one process.
AttachMode choose_attach_mode(bool verbose) {
  const KernelFeatures& kf = kernel_features();
  const KernelFeature* multi = kf.find("uprobe_multi");
  std::string why;
  const char* env = std::getenv("ASYNCTRACE_UPROBE_MULTI");
  AttachMode mode = AttachMode::PerfPerSite;
  if (env && std::string_view(env) == "0")
    why = "disabled by ASYNCTRACE_UPROBE_MULTI=0";
  else if (multi && multi->present)
    mode = AttachMode::UprobeMulti;
  else if (multi)
    why = multi->note;
  if (verbose) print_features(kf, mode, why);
  return mode;
}

Error attach_error(int err, const std::string& probe, const std::string& binary, pid_t pid,
                   const std::string& why) {
  int code = (err == EPERM || err == EACCES) ? kExitPrivilege : kExitTracing;
  std::string msg = "failed to attach USDT probe 'asynctrace:" + probe + "' of '" + binary +
                    "' to pid " + std::to_string(pid) + ": " + why;
  if (code == kExitPrivilege) msg += "; a process in another mount namespace also needs CAP_SYS_PTRACE";
  return Error{code, msg};
}

// Closes BPF link fds. Each close of a uprobe_multi link blocks in the kernel
// for an RCU grace period (uprobe unregister sync); closing them from
// separate threads lets those grace periods overlap instead of adding up.
void close_links_concurrently(const std::vector<int>& fds) {
  if (fds.size() <= 1) {
    for (int fd : fds) close(fd);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(fds.size());
  for (int fd : fds) {
    try {
      threads.emplace_back([fd] { close(fd); });
    } catch (const std::system_error&) {
      close(fd);  // no thread to spare: close here, just slower
    }
  }
  for (std::thread& t : threads) t.join();
}

// The kernel accepts a uprobe_multi link only for programs loaded with this
// attach type (SEC("usdt") leaves it 0), and wires bpf_get_attach_cookie() to
// the multi link's per-site cookies for them. Before load. Without uprobe_multi
// (usdt::uprobe_multi_supported(), the one decision) the programs keep the
// plain kprobe type that perf-event uprobes take, and the cookie of each
// site's perf link: nothing to do.
Status expect_uprobe_multi(asynctrace_bpf* skel) {
  if (!usdt::uprobe_multi_supported()) return ok_status();
  for (const ProbeSlot& slot : kAttachOrder) {
    if (int err = bpf_program__set_expected_attach_type(slot.prog(skel),
                                                        static_cast<bpf_attach_type>(usdt::kAttachUprobeMulti));
        err)
      return Error{kExitInternal, std::string("failed to set attach type of BPF program '") +
                                      bpf_program__name(slot.prog(skel)) + "': " + reason(err)};
  }
  return ok_status();
}

// Why usdt::attach_uprobes() failed (-errno), naming the kind of attachment.
std::string uprobe_error(int err) {
  return std::string(usdt::uprobe_multi_supported() ? "uprobe_multi link: " : "perf-event uprobe: ") +
         std::strerror(err < 0 ? -err : err);
}

// Attaches the programs of `path` to every site of `binary` (pid 0: every
// process mapping it, now and later), one link per probe in kAttachOrder, or
// where the kernel has no uprobe_multi links one perf-event uprobe per site
// (usdt::attach_uprobes), probe after probe in the same order.
// Spec ids are shared through `spec_ids` (argument string -> id), so several
// binaries can use one object's __bpf_usdt_specs map.
Status attach_sites_multi(asynctrace_bpf* skel, EventPath path, const std::string& binary,
                          const std::vector<usdt::Site>& sites, pid_t pid,
                          std::unordered_map<std::string, int>& spec_ids, std::vector<int>& link_fds) {
  bpf_map* specs = bpf_object__find_map_by_name(skel->obj, "__bpf_usdt_specs");
  if (!specs || bpf_map__value_size(specs) != sizeof(usdt::Spec))
    return Error{kExitInternal,
                 "failed to find BPF map '__bpf_usdt_specs': missing or not the layout of "
                 "libbpf 1.1's usdt.bpf.h"};
  const int specs_fd = bpf_map__fd(specs);

  struct ProbeSites {
    std::vector<unsigned long> offsets, sema_offsets;
    std::vector<uint64_t> cookies;
  };
  std::array<ProbeSites, kAttachOrder.size()> per_slot;
  for (size_t i = 0; i < kAttachOrder.size(); ++i) {
    const ProbeSlot& slot = kAttachOrder[i];
    if (!(slot.paths & path)) continue;
    for (const usdt::Site& site : sites) {
      if (site.name != slot.probe) continue;
      auto [it, fresh] = spec_ids.try_emplace(site.args, static_cast<int>(spec_ids.size()));
      if (fresh) {
        auto spec = usdt::parse_args(site.args);
        if (!spec.ok()) {
          spec_ids.erase(it);
          return attach_error(EINVAL, slot.probe, binary, pid, spec.error().message);
        }
        if (static_cast<uint32_t>(it->second) >= bpf_map__max_entries(specs))
          return attach_error(E2BIG, slot.probe, binary, pid, "more distinct USDT argument specs than "
                                                              "BPF map '__bpf_usdt_specs' holds");
        const __u32 key = static_cast<__u32>(it->second);
        if (bpf_map_update_elem(specs_fd, &key, &spec.value(), BPF_ANY) != 0)
          return Error{kExitTracing, "failed to update BPF map '__bpf_usdt_specs': " + reason(errno)};
      }
      per_slot[i].offsets.push_back(site.offset);
      per_slot[i].sema_offsets.push_back(site.sema_offset);
      per_slot[i].cookies.push_back(static_cast<uint64_t>(it->second));
    }
    if (per_slot[i].offsets.empty() && slot.required)
      return attach_error(ENOENT, slot.probe, binary, pid, "no such USDT probe in the binary");
  }

  for (size_t i = 0; i < kAttachOrder.size(); ++i) {
    const ProbeSites& ps = per_slot[i];
    if (ps.offsets.empty()) continue;  // the runtime has no such site
    const int err = usdt::attach_uprobes(bpf_program__fd(kAttachOrder[i].prog(skel)), binary, pid, ps.offsets,
                                         ps.sema_offsets, ps.cookies, &link_fds);
    if (err < 0) return attach_error(-err, kAttachOrder[i].probe, binary, pid, uprobe_error(err));
  }
  return ok_status();
}

class BpfTracer final : public Tracer {
 public:
  BpfTracer(pid_t pid, asynctrace_bpf* skel, AttachMode mode, EventPath path, std::string mapped_path)
      : pid_(pid), skel_(skel), mode_(mode), path_(path), mapped_path_(std::move(mapped_path)) {}
  ~BpfTracer() override {
    // libbpf links in reverse order: replay__end goes first so the runtime
    // sees its semaphore drop before anything else disappears.
    for (auto it = links_.rbegin(); it != links_.rend(); ++it) bpf_link__destroy(*it);
    // All links at once, replay__end's first: the runtime reacts to the
    // replay__end semaphore rising, never to it falling, so the order of
    // the drops does not matter on detach, and an ordered close would cost
    // one more grace period.
    std::reverse(link_fds_.begin(), link_fds_.end());
    close_links_concurrently(link_fds_);
    if (noop_fd_ >= 0) close(noop_fd_);
    modes_.reset();
    if (ring_) ring_buffer__free(ring_);
    asynctrace_bpf__destroy(skel_);
  }

  void keep_modes(std::unique_ptr<ModeHold> m) { modes_ = std::move(m); }

  Status poll_events(const std::function<void(const StepEvent&)>& fn, int timeout_ms) override {
    if (!ring_) {
      ring_ = ring_buffer__new(bpf_map__fd(skel_->maps.events), on_event, this, nullptr);
      if (!ring_) return Error{kExitTracing, "failed to open BPF ring buffer 'events': " + reason(errno)};
    }
    sink_ = &fn;
    const int n = ring_buffer__poll(ring_, timeout_ms);
    sink_ = nullptr;
    if (n < 0 && n != -EINTR)
      return Error{kExitTracing, "failed to read BPF ring buffer 'events': " + reason(n)};
    return ok_status();
  }

  Status attach(const std::string& binary, const Sites& sites) {
    Status st = mode_ == AttachMode::UprobeMulti ? attach_multi(binary, sites) : attach_per_site(binary);
    if (st.ok() && sites.ok()) request_full_replay(binary, sites.value());
    return st;
  }

  Status wait_replay(std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    const int fd = bpf_map__fd(skel_->maps.procs);
    const __u32 key = static_cast<__u32>(pid_);
    for (;;) {
      at_proc proc{};
      if (bpf_map_lookup_elem(fd, &key, &proc) == 0 && proc.replay_gen != 0) return ok_status();
      if (!process_alive(pid_))
        return Error{kExitProcessExited,
                     "failed to wait for replay of process " + std::to_string(pid_) +
                         ": the process exited"};
      if (std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return Error{kExitReplayTimeout,
                 "failed to wait for replay of process " + std::to_string(pid_) + ": no answer in " +
                     std::to_string(timeout.count()) +
                     " ms; the event loop thread may be blocked or holding the GIL in C code "
                     "(retry, or raise --timeout)"};
  }

  Result<Snapshot> snapshot() const override {
    return read_maps(static_cast<uint32_t>(pid_), fds());
  }

  Status pin() override;
  Status gc() override { return gc_stacks(static_cast<uint32_t>(pid_), fds()); }

  MapFds fds() const {
    return MapFds{bpf_map__fd(skel_->maps.tasks),  bpf_map__fd(skel_->maps.codes),
                  bpf_map__fd(skel_->maps.procs),  bpf_map__fd(skel_->maps.stacks),
                  bpf_map__fd(skel_->maps.timing), bpf_map__fd(skel_->maps.code_timing)};
  }

 private:
  Status attach_per_site(const std::string& binary);
  Status attach_multi(const std::string& binary, const Sites& sites);
  void request_full_replay(const std::string& binary, const std::vector<usdt::Site>& sites);

  pid_t pid_;
  asynctrace_bpf* skel_;
  AttachMode mode_;
  EventPath path_;
  std::string mapped_path_;  // the probe library as the process maps it
  int noop_fd_ = -1;         // program of the replay request link
  std::unique_ptr<ModeHold> modes_;
  ring_buffer* ring_ = nullptr;
  const std::function<void(const StepEvent&)>* sink_ = nullptr;

  static int on_event(void* ctx, void* data, size_t size) {
    auto* self = static_cast<BpfTracer*>(ctx);
    if (size < sizeof(at_event) || !self->sink_) return 0;
    at_event raw;
    std::memcpy(&raw, data, sizeof raw);
    StepEvent ev;
    if (decode_event(raw, &ev)) (*self->sink_)(ev);
    return 0;
  }
  std::vector<bpf_link*> links_;  // PerfPerSite, in attach order
  std::vector<int> link_fds_;     // UprobeMulti, in attach order; the replay request (both modes)
  Pins pins_;
};

Status BpfTracer::attach_per_site(const std::string& binary) {
  for (const ProbeSlot& slot : kAttachOrder) {
    if (!(slot.paths & path_)) continue;
    bpf_link* link = bpf_program__attach_usdt(slot.prog(skel_), pid_, binary.c_str(),
                                              "asynctrace", slot.probe, nullptr);
    if (!link) {
      int err = errno;
      if (err == ENOENT && !slot.required) continue;  // the runtime has no such site
      return attach_error(err, slot.probe, binary, pid_, reason(err));
    }
    links_.push_back(link);
  }
  return ok_status();
}

// Does by hand what libbpf 1.1's USDT support would: sites from the notes,
// one spec per distinct argument string in __bpf_usdt_specs, the spec id as
// each site's BPF cookie (usdt.bpf.h reads it with bpf_get_attach_cookie()).
// Everything that can fail for a reason of the binary fails before the first
// link, so nothing is attached half-way for those.
Status BpfTracer::attach_multi(const std::string& binary, const Sites& sites) {
  if (!sites.ok()) return sites.error();
  std::unordered_map<std::string, int> spec_ids;
  return attach_sites_multi(skel_, path_, binary, sites.value(), pid_, spec_ids, link_fds_);
}

// replay__end rising starts the replay, unless another tracer already
// holds it (its semaphore counts processes, not tracers): a request probe
// covers that case, on either attach path. Both rising at once still make
// one replay. Best effort: without it the replay may time out (exit 8).
void BpfTracer::request_full_replay(const std::string& binary, const std::vector<usdt::Site>& sites) {
  if (std::none_of(sites.begin(), sites.end(), [](const usdt::Site& s) { return s.name == "replay__req0"; }))
    return;
  noop_fd_ = usdt::load_noop_program();
  if (noop_fd_ < 0) return;
  const int fd = usdt::request_replay(pid_, binary, mapped_path_, sites, noop_fd_, true);
  if (fd >= 0) link_fds_.push_back(fd);
}

Status BpfTracer::pin() {
  if (Status st = make_private_dir("/run/asynctrace"); !st.ok()) return st;
  pins_.pid = pid_;
  pins_.lock_fd = open(lock_path(pid_).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (pins_.lock_fd < 0)
    return Error{kExitTracing, "failed to open lock '" + lock_path(pid_) + "': " + std::strerror(errno)};
  if (Status st = make_private(lock_path(pid_), false); !st.ok()) return st;
  if (flock(pins_.lock_fd, LOCK_EX | LOCK_NB) != 0) {
    close(pins_.lock_fd);
    pins_.lock_fd = -1;
    return Error{kExitTracing, "failed to pin maps of process " + std::to_string(pid_) +
                                   ": another 'asynctrace attach' holds them (pstree/ps read those)"};
  }
  remove_pins(pid_);  // stale pins of a holder that was killed
  if (Status st = ensure_bpffs(); !st.ok()) return st;
  if (Status st = make_private_dir("/sys/fs/bpf/asynctrace"); !st.ok()) return st;
  if (Status st = make_private_dir(pin_dir(pid_)); !st.ok()) return st;
  pins_.pinned = true;
  bpf_map* maps[] = {skel_->maps.tasks,  skel_->maps.codes,  skel_->maps.procs,
                     skel_->maps.stacks, skel_->maps.timing, skel_->maps.code_timing};
  static_assert(std::size(maps) == kNumPinned);
  for (size_t i = 0; i < std::size(maps); ++i) {
    const std::string path = pin_dir(pid_) + "/" + kPinnedMaps[i];
    if (bpf_map__pin(maps[i], path.c_str()) != 0)
      return Error{kExitTracing, "failed to pin BPF map '" + path + "': " + reason(errno)};
    if (Status st = make_private(path, false); !st.ok()) return st;
  }
  return ok_status();
}

}  // namespace

Status check_privileges() {
  uint64_t caps = effective_caps();
  auto has = [caps](int cap) { return (caps >> cap) & 1; };
  // CAP_SYS_ADMIN covers BPF and perf events on every kernel; CAP_BPF +
  // CAP_PERFMON is the least privilege on >= 5.8.
  if (has(kCapSysAdmin) || (has(kCapBpf) && has(kCapPerfmon))) return ok_status();
  return Error{kExitPrivilege,
               "failed to attach tracer: missing privileges; run as root or grant CAP_BPF and "
               "CAP_PERFMON (plus CAP_SYS_PTRACE for a process in another mount namespace, e.g. a container)"};
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

namespace {

void remove_stale(pid_t pid) {
  remove_pins(pid);
  unlink(lock_path(pid).c_str());
}

}  // namespace

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

namespace {

// The maps an `asynctrace attach` holds for a process, plus (while it lives)
// one extra link on the runtime's replay__end site: a do-nothing program
// whose only effect is raising the semaphore, which makes the runtime replay
// its live tasks with their current stacks into the holder's maps. Between
// replays the batch path keeps states and edges current but not stacks.
class PinnedTracer final : public Tracer {
 public:
  PinnedTracer(pid_t pid, std::array<int, kNumPinned> fds) : pid_(pid), fds_(fds) {}
  ~PinnedTracer() override {
    close_links_concurrently(link_fds_);  // a grace period each: run_view forks for it
    if (prog_fd_ >= 0) close(prog_fd_);
    for (int fd : fds_) close(fd);
  }

  // Raises a replay request semaphore (a uprobe_multi link, or a perf-event
  // uprobe on kernels without them); why not if it cannot (then the view
  // shows the maps as they are).
  std::string request_replay(const ProcInfo& proc) {
    binary_ = proc.probe_lib_host.empty() ? proc.probe_lib : proc.probe_lib_host;
    mapped_ = proc.probe_lib;
    auto sites = usdt::read_sites(binary_, "asynctrace");
    if (!sites.ok()) return sites.error().message;
    sites_ = std::move(sites.value());
    // A replay that began before our request may show older stacks: wait
    // for one that begins after it (generation > the active one now).
    active0_ = proc_counters().replay_active;
    prog_fd_ = usdt::load_noop_program();
    if (prog_fd_ < 0) return std::string("no-op program: ") + std::strerror(errno);
    return add_request();
  }

  Status wait_replay(std::chrono::milliseconds timeout) override {
    if (link_fds_.empty()) return ok_status();
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + timeout;
    auto retry = start + kRetry;
    for (;;) {
      const at_proc p = proc_counters();
      if (p.replay_gen > active0_) break;
      // The runtime polls the semaphores every few ms: a request slot that
      // another reader released and we raised again in between looks
      // unchanged to it. Unless a replay has begun since, raise one more.
      if (p.replay_active <= active0_ && std::chrono::steady_clock::now() >= retry) {
        (void)add_request();
        retry = std::chrono::steady_clock::now() + kRetry;
      }
      if (!process_alive(pid_))
        return Error{kExitProcessExited, "failed to wait for replay of process " +
                                             std::to_string(pid_) + ": the process exited"};
      if (std::chrono::steady_clock::now() >= deadline)
        return Error{kExitReplayTimeout,
                     "no replay from process " + std::to_string(pid_) + " in " +
                         std::to_string(timeout.count()) +
                         " ms; showing the held maps, whose stacks may be missing or stale"};
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    return ok_status();
  }

  Result<Snapshot> snapshot() const override {
    return read_maps(static_cast<uint32_t>(pid_), MapFds{fds_[0], fds_[1], fds_[2], fds_[3], fds_[4], fds_[5]});
  }

  Status pin() override {
    return Error{kExitTracing, "failed to pin maps of process " + std::to_string(pid_) +
                                   ": another 'asynctrace attach' holds them"};
  }

 private:
  static constexpr std::chrono::milliseconds kRetry{25};

  // Raises one more free request slot.
  std::string add_request() {
    // A refresh: the holder followed every event since its own full replay.
    const int fd = usdt::request_replay(pid_, binary_, mapped_, sites_, prog_fd_, false);
    if (fd < 0)
      return -fd == ENOENT ? "the runtime has no replay request probes"
             : -fd == EBUSY ? "every replay request probe is held by other tracers"
                            : uprobe_error(fd);
    link_fds_.push_back(fd);
    return {};
  }

  at_proc proc_counters() const {
    at_proc proc{};
    const __u32 key = static_cast<__u32>(pid_);
    if (bpf_map_lookup_elem(fds_[2], &key, &proc) != 0) proc = at_proc{};
    return proc;
  }

  pid_t pid_;
  std::array<int, kNumPinned> fds_;
  int prog_fd_ = -1;
  std::vector<int> link_fds_;
  std::string binary_, mapped_;
  std::vector<usdt::Site> sites_;
  uint64_t active0_ = 0;
};

}  // namespace

namespace {

// The pinned maps of `dir`, in kPinnedMaps order.
Result<std::array<int, kNumPinned>> open_pinned_fds(const std::string& dir) {
  std::array<int, kNumPinned> fds;
  fds.fill(-1);
  for (size_t i = 0; i < kNumPinned; ++i) {
    const std::string path = dir + "/" + kPinnedMaps[i];
    fds[i] = bpf_obj_get(path.c_str());
    if (fds[i] < 0) {
      const int err = errno;
      for (size_t k = 0; k < i; ++k) close(fds[k]);
      return Error{err == EPERM || err == EACCES ? kExitPrivilege : kExitTracing,
                   "failed to open pinned BPF map '" + path + "': " + std::strerror(err)};
    }
  }
  return fds;
}

}  // namespace

Result<std::unique_ptr<Tracer>> open_pinned(pid_t pid, const ProcInfo* proc, bool verbose) {
  std::array<int, kNumPinned> fds;
  if (!pin_holder_alive(pid)) {
    remove_stale(pid);
    // The agent's maps, if it knows this process (it has a procs entry once
    // the process's probes fired, at the latest at its replay).
    if (!agent_running()) return std::unique_ptr<Tracer>{};
    auto agent_fds = open_pinned_fds(agent_pin_dir());
    if (!agent_fds.ok()) return agent_fds.error();
    fds = agent_fds.value();
    at_proc p{};
    const __u32 key = static_cast<__u32>(pid);
    if (bpf_map_lookup_elem(fds[2], &key, &p) != 0 || !agent_running()) {
      for (int fd : fds) close(fd);
      return std::unique_ptr<Tracer>{};
    }
    if (verbose) std::fprintf(stderr, "asynctrace: reading the agent's maps in '%s'\n", agent_pin_dir().c_str());
  } else {
    auto pid_fds = open_pinned_fds(pin_dir(pid));
    if (!pid_fds.ok()) return pid_fds.error();
    fds = pid_fds.value();
  }
  auto tracer = std::make_unique<PinnedTracer>(pid, fds);
  if (proc && proc->kind == ProcKind::Probed) {
    if (std::string why = tracer->request_replay(*proc); !why.empty() && verbose)
      std::fprintf(stderr, "asynctrace: no replay requested: %s\n", why.c_str());
  }
  return std::unique_ptr<Tracer>(std::move(tracer));
}

namespace {

class LinkHold final : public ModeHold {
 public:
  ~LinkHold() override {
    close_links_concurrently(fds);
    if (prog_fd >= 0) close(prog_fd);
  }
  int prog_fd = -1;
  std::vector<int> fds;
};

}  // namespace

Result<std::unique_ptr<ModeHold>> hold_modes(const ProcInfo& proc, bool timing, bool steps) {
  auto hold = std::make_unique<LinkHold>();
  if (!timing && !steps) return std::unique_ptr<ModeHold>(std::move(hold));
  const std::string what = "timing probes of process " + std::to_string(proc.pid);
  const std::string& binary = proc.probe_lib_host.empty() ? proc.probe_lib : proc.probe_lib_host;
  auto sites = usdt::read_sites(binary, "asynctrace");
  if (!sites.ok()) return sites.error();
  hold->prog_fd = usdt::load_noop_program();
  if (hold->prog_fd < 0)
    return Error{kExitTracing, "failed to load the no-op BPF program: " + reason(errno)};
  for (const char* name : {"timing__on", "steps__on"}) {
    if (std::string_view(name) == "steps__on" && !steps) continue;
    bool found = false;
    for (const usdt::Site& s : sites.value()) {
      if (s.name != name || !s.sema_offset) continue;
      // A uprobe_multi link, or a perf-event uprobe on older kernels: either
      // raises the semaphore while it lives.
      const int err = usdt::attach_uprobes(hold->prog_fd, binary, proc.pid, {s.offset}, {s.sema_offset}, {0},
                                           &hold->fds);
      if (err < 0)
        return Error{kExitTracing, "failed to attach probe '" + std::string(name) + "' of '" + binary +
                                       "': " + uprobe_error(err)};
      found = true;
      break;
    }
    if (!found)
      return Error{kExitNoProbes, "failed to hold " + what + ": its asynctrace runtime has no probe '" +
                                      name + "' (an older runtime: upgrade the asynctrace package)"};
  }
  return std::unique_ptr<ModeHold>(std::move(hold));
}

Result<std::unique_ptr<Tracer>> attach_tracer(const TraceOptions& opts, const ProcInfo& proc) {
  if (Status st = check_privileges(); !st.ok()) return st.error();
  if (proc.kind != ProcKind::Probed) return proc_error(proc);
  init_libbpf_log(opts.verbose);
  // RLIMIT_MEMLOCK: libbpf >= 1.0 raises it by itself, and only on kernels
  // that still charge BPF memory to it (< 5.11, no memcg accounting).
  const AttachMode mode = choose_attach_mode(opts.verbose);
  if (mode == AttachMode::PerfPerSite)
    if (Status st = ensure_uprobe_interface(); !st.ok()) return st.error();
  if (Status st = check_kernel_features(kernel_features()); !st.ok()) return st.error();

  // The object has no CO-RE relocations (bpf/asynctrace.bpf.c): no kernel
  // BTF is needed or read.
  asynctrace_bpf* skel = asynctrace_bpf__open();
  if (!skel)
    return Error{kExitTracing, "failed to open BPF object 'asynctrace': " + reason(errno)};
  skel->rodata->target_tgid = static_cast<__u32>(opts.pid ? opts.pid : proc.pid);
  if (opts.max_tasks && bpf_map__set_max_entries(skel->maps.tasks, opts.max_tasks) != 0)
    return Error{kExitTracing, "failed to size BPF map 'tasks': " + reason(errno)};
  const std::string& binary = proc.probe_lib_host.empty() ? proc.probe_lib : proc.probe_lib_host;
  const Sites sites = usdt::read_sites(binary, "asynctrace");
  skel->rodata->require_begin = has_probe(sites, "replay__begin");
  skel->rodata->forward_events = opts.events;
  // The events ring costs its size in kernel memory: a page when unused,
  // 16 MiB (~110,000 events, a third of a second of a 300,000 steps/s loop)
  // for readers.
  if (bpf_map__set_max_entries(skel->maps.events, opts.events ? (1u << 24) : static_cast<__u32>(getpagesize())) != 0)
    return Error{kExitTracing, "failed to size BPF map 'events': " + reason(errno)};
  const EventPath path = choose_event_path(sites);
  if (opts.verbose)
    std::fprintf(stderr, "asynctrace: events by %s\n",
                 path == kBatch ? "batch__flush (buffered in the runtime)" : "per-event probes");
  auto tracer =
      std::make_unique<BpfTracer>(static_cast<pid_t>(skel->rodata->target_tgid), skel, mode, path,
                                  proc.probe_lib);
  // Programs of the other path are not loaded (less verifier time).
  for (const ProbeSlot& slot : kAttachOrder) {
    if (!(slot.paths & path)) bpf_program__set_autoload(slot.prog(skel), false);
    // -v with ASYNCTRACE_VERIFIER_STATS=1: the verifier's work per program.
    if (opts.verbose && std::getenv("ASYNCTRACE_VERIFIER_STATS"))
      bpf_program__set_log_level(slot.prog(skel), 4);
  }
  if (mode == AttachMode::UprobeMulti)
    if (Status st = expect_uprobe_multi(skel); !st.ok()) return st.error();
  apply_test_knobs(skel);

  if (int err = asynctrace_bpf__load(skel); err) return load_error(err, opts.verbose);
  // Pre-create procs[pid] so a full procs map shows up here, not as silence.
  const __u32 key = skel->rodata->target_tgid;
  const at_proc zero{};
  if (bpf_map_update_elem(bpf_map__fd(skel->maps.procs), &key, &zero, BPF_NOEXIST) != 0 &&
      errno != EEXIST)
    return Error{kExitTracing, "failed to update BPF map 'procs': " + reason(errno)};

  if (Status st = tracer->attach(binary, sites); !st.ok()) return st.error();
  if (opts.timing || opts.steps) {
    auto modes = hold_modes(proc, opts.timing || opts.steps, opts.steps);
    if (!modes.ok()) return modes.error();
    tracer->keep_modes(std::move(modes.value()));
  }
  return std::unique_ptr<Tracer>(std::move(tracer));
}

// ---- the agent -------------------------------------------------------------

std::string agent_pin_dir() { return "/sys/fs/bpf/asynctrace/agent"; }
std::string agent_lock_path() { return "/run/asynctrace/agent.lock"; }

bool agent_running() {
  const int lock = open(agent_lock_path().c_str(), O_RDONLY | O_CLOEXEC);
  if (lock < 0) return false;
  const bool held = flock(lock, LOCK_SH | LOCK_NB) != 0;
  close(lock);
  return held;
}

namespace {

// Every process's snapshot from one pass over the maps, stacks and per-task
// timing left out.
Result<std::vector<Snapshot>> read_all(const MapFds& m) {
  std::map<uint32_t, SnapshotDecoder> decs;
  auto dec = [&decs](uint32_t pid) -> SnapshotDecoder& { return decs.try_emplace(pid, pid).first->second; };
  Status st = for_each_entry<__u32, at_proc>(m.procs, "procs",
                                             [&](const __u32& pid, const at_proc& p) { dec(pid).set_proc(p); });
  if (!st.ok()) return st.error();
    bool may_repeat = false;
  st = for_each_entry<at_task_key, at_task>(
      m.tasks, "tasks",
      [&](const at_task_key& k, const at_task& t) {
        SnapshotDecoder& d = dec(k.pid);
        if (may_repeat) d.allow_repeats();
        d.add_task(k, t);
      },
      &may_repeat);
  if (!st.ok()) return st.error();
  st = for_each_entry<at_code_key, at_code>(m.codes, "codes",
                                            [&](const at_code_key& k, const at_code& c) { dec(k.pid).add_code(k, c); });
  if (!st.ok()) return st.error();
  st = for_each_entry<at_code_key, at_timing>(
      m.code_timing, "code_timing", [&](const at_code_key& k, const at_timing& t) { dec(k.pid).add_code_timing(k, t); });
  if (!st.ok()) return st.error();
  std::vector<Snapshot> out;
  out.reserve(decs.size());
  for (auto& [pid, d] : decs) out.push_back(std::move(d).finish());
  return out;
}

// Deletes the entries of a map whose key's pid is in `pids` (all if null).
template <class K, class V>
Status delete_pids(int fd, const char* name, const std::unordered_set<uint32_t>* pids) {
  std::vector<K> dead;
  Status st = for_each_entry<K, V>(fd, name, [&](const K& k, const V&) {
    uint32_t pid;
    std::memcpy(&pid, &k, sizeof pid);  // every key starts with the pid
    if (!pids || pids->count(pid)) dead.push_back(k);
  });
  if (!st.ok()) return st;
  for (const K& k : dead) bpf_map_delete_elem(fd, &k);
  return ok_status();
}

class AgentImpl final : public Agent {
 public:
  AgentImpl(asynctrace_bpf* skel, int lock_fd, bool reused) : skel_(skel), lock_fd_(lock_fd), reused_(reused) {}
  ~AgentImpl() override {
    // Links go (the probes detach); the pinned maps stay for the next agent.
    for (const auto& r : requests_) link_fds_.push_back(r.first);
    std::reverse(link_fds_.begin(), link_fds_.end());
    close_links_concurrently(link_fds_);
    if (noop_fd_ >= 0) close(noop_fd_);
    asynctrace_bpf__destroy(skel_);
    unlink(agent_lock_path().c_str());
    close(lock_fd_);
  }

  Status init() {
    noop_fd_ = usdt::load_noop_program();
    if (noop_fd_ < 0) return Error{kExitTracing, "failed to load the no-op BPF program: " + reason(errno)};
    if (reused_) {
      // Tasks that ended while no agent ran would stay forever: the live
      // tasks come back whole with the replay every process makes when the
      // new links raise its replay__end semaphore. Codes, coroutine timing
      // and counters are kept.
      const MapFds m = fds();
      if (Status st = delete_pids<at_task_key, at_task>(m.tasks, "tasks", nullptr); !st.ok()) return st;
      if (Status st = delete_pids<at_task_key, at_timing>(m.timing, "timing", nullptr); !st.ok()) return st;
      if (Status st = delete_pids<at_stack_key, at_stack>(m.stacks, "stacks", nullptr); !st.ok()) return st;
    }
    return ok_status();
  }

  Status attach_library(const std::string& path) override {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0)
      return Error{kExitTracing, "failed to stat probe library '" + path + "': " + std::strerror(errno)};
    const auto id = std::make_pair(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
    if (libs_.count(id)) return ok_status();
    auto sites = usdt::read_sites(path, "asynctrace");
    if (!sites.ok()) return sites.error();
    // Marked first: a library that fails half-way is not retried every scan.
    libs_.insert(id);
    const EventPath ep = choose_event_path(sites);
    if (Status s = attach_sites_multi(skel_, ep, path, sites.value(), 0, spec_ids_, link_fds_); !s.ok()) return s;
    for (const usdt::Site& site : sites.value()) {
      if (site.name != "timing__on" || !site.sema_offset) continue;
      const int err = usdt::attach_uprobes(noop_fd_, path, 0, {site.offset}, {site.sema_offset}, {0}, &link_fds_);
      if (err < 0) return attach_error(-err, "timing__on", path, 0, uprobe_error(err));
      break;
    }
    return ok_status();
  }

  size_t libraries() const override { return libs_.size(); }
  bool reused_pins() const override { return reused_; }

  Result<std::vector<Snapshot>> snapshots() const override { return read_all(fds()); }

  Status forget(const std::vector<uint32_t>& pids) override {
    if (pids.empty()) return ok_status();
    const std::unordered_set<uint32_t> set(pids.begin(), pids.end());
    const MapFds m = fds();
    Status st = delete_pids<at_task_key, at_task>(m.tasks, "tasks", &set);
    if (st.ok()) st = delete_pids<at_task_key, at_timing>(m.timing, "timing", &set);
    if (st.ok()) st = delete_pids<at_code_key, at_code>(m.codes, "codes", &set);
    if (st.ok()) st = delete_pids<at_code_key, at_timing>(m.code_timing, "code_timing", &set);
    if (st.ok()) st = delete_pids<at_stack_key, at_stack>(m.stacks, "stacks", &set);
    if (!st.ok()) return st;
    // procs last: a reader that finds no procs entry does not use our maps.
    for (uint32_t pid : pids) {
      const __u32 key = pid;
      bpf_map_delete_elem(m.procs, &key);
    }
    return ok_status();
  }

  Status gc(uint32_t pid) override { return gc_stacks(pid, fds()); }

  Status request_replay(const ProcInfo& proc) override {
    if (proc.kind != ProcKind::Probed) return proc_error(proc);
    const std::string& binary = proc.probe_lib_host.empty() ? proc.probe_lib : proc.probe_lib_host;
    auto sites = usdt::read_sites(binary, "asynctrace");
    if (!sites.ok()) return sites.error();
    const int fd = usdt::request_replay(proc.pid, binary, proc.probe_lib, sites.value(), noop_fd_, true);
    if (fd < 0)
      return Error{kExitTracing, "failed to request a replay from process " + std::to_string(proc.pid) + ": " +
                                     std::strerror(-fd)};
    requests_.emplace_back(fd, std::chrono::steady_clock::now());
    return ok_status();
  }

  void withdraw_requests() override {
    // The runtime polls its semaphores every few ms: a second is plenty.
    const auto old = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    std::vector<int> done;
    std::erase_if(requests_, [&](const auto& r) {
      if (r.second > old) return false;
      done.push_back(r.first);
      return true;
    });
    close_links_concurrently(done);
  }

 private:
  MapFds fds() const {
    return MapFds{bpf_map__fd(skel_->maps.tasks),  bpf_map__fd(skel_->maps.codes),
                  bpf_map__fd(skel_->maps.procs),  bpf_map__fd(skel_->maps.stacks),
                  bpf_map__fd(skel_->maps.timing), bpf_map__fd(skel_->maps.code_timing)};
  }

  asynctrace_bpf* skel_;
  int lock_fd_;
  bool reused_;
  int noop_fd_ = -1;
  std::vector<int> link_fds_;
  std::unordered_map<std::string, int> spec_ids_;
  std::set<std::pair<uint64_t, uint64_t>> libs_;  // (st_dev, st_ino) attached
  std::vector<std::pair<int, std::chrono::steady_clock::time_point>> requests_;  // replay request links
};

}  // namespace

Result<std::unique_ptr<Agent>> start_agent(bool verbose) {
  if (Status st = check_privileges(); !st.ok()) return st.error();
  init_libbpf_log(verbose);
  const KernelFeatures& kf = kernel_features();
  // By library, for every process: uprobe_multi links with pid 0, or on
  // kernels without them one perf-event uprobe per site with pid -1
  // (usdt::attach_uprobes decides, as expect_uprobe_multi does).
  std::string why;
  const bool multi = usdt::uprobe_multi_supported(&why);
  if (verbose) print_features(kf, multi ? AttachMode::UprobeMulti : AttachMode::PerfPerSite, why);
  if (Status st = check_kernel_features(kf); !st.ok()) return st.error();
  if (Status st = make_private_dir("/run/asynctrace"); !st.ok()) return st.error();
  const std::string lock_path = agent_lock_path();
  const int lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0)
    return Error{kExitTracing, "failed to open lock '" + lock_path + "': " + std::strerror(errno)};
  if (Status st = make_private(lock_path, false); !st.ok()) {
    close(lock_fd);
    return st.error();
  }
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    close(lock_fd);
    return Error{kExitTracing, "failed to start the agent: another agent holds '" + lock_path + "'"};
  }
  auto fail_unlocked = [&](Error e) {
    close(lock_fd);
    return e;
  };
  if (Status st = ensure_bpffs(); !st.ok()) return fail_unlocked(st.error());
  if (Status st = make_private_dir("/sys/fs/bpf/asynctrace"); !st.ok()) return fail_unlocked(st.error());
  const std::string dir = agent_pin_dir();
  if (Status st = make_private_dir(dir); !st.ok()) return fail_unlocked(st.error());
  struct stat pst {};
  const bool reused = stat((dir + "/tasks").c_str(), &pst) == 0;

  asynctrace_bpf* skel = asynctrace_bpf__open();
  if (!skel) return fail_unlocked(Error{kExitTracing, "failed to open BPF object 'asynctrace': " + reason(errno)});
  auto destroy = [&](Error e) {
    asynctrace_bpf__destroy(skel);
    return fail_unlocked(std::move(e));
  };
  skel->rodata->target_tgid = 0;       // every process the uprobes fire in
  skel->rodata->require_begin = true;  // our runtimes have replay__begin
  skel->rodata->forward_events = false;
  if (bpf_map__set_max_entries(skel->maps.events, static_cast<__u32>(getpagesize())) != 0)
    return destroy(Error{kExitTracing, "failed to size BPF map 'events': " + reason(errno)});
  bpf_map* maps[] = {skel->maps.tasks,  skel->maps.codes,  skel->maps.procs,
                     skel->maps.stacks, skel->maps.timing, skel->maps.code_timing};
  static_assert(std::size(maps) == kNumPinned);
  // libbpf reuses a compatible map pinned at the path, or creates and pins it.
  for (size_t i = 0; i < kNumPinned; ++i) {
    const std::string path = dir + "/" + kPinnedMaps[i];
    if (bpf_map__set_pin_path(maps[i], path.c_str()) != 0)
      return destroy(Error{kExitTracing, "failed to set pin path of BPF map '" + path + "': " + reason(errno)});
  }
  if (Status st = expect_uprobe_multi(skel); !st.ok()) return destroy(st.error());
  apply_test_knobs(skel);
  if (int err = asynctrace_bpf__load(skel); err) {
    const std::string remedy = reused ? "the pinned maps in '" + dir +
                                            "' may be of another version: 'asynctrace agent --cleanup' removes them"
                                      : std::string();
    return destroy(load_error(err, verbose, remedy));
  }
  for (const char* m : kPinnedMaps)
    if (Status st = make_private(dir + "/" + m, false); !st.ok()) return destroy(st.error());
  auto agent = std::make_unique<AgentImpl>(skel, lock_fd, reused);
  if (Status st = agent->init(); !st.ok()) return st.error();
  if (verbose)
    std::fprintf(stderr, "asynctrace: agent maps %s '%s'\n", reused ? "reused from" : "pinned in", dir.c_str());
  return std::unique_ptr<Agent>(std::move(agent));
}

Status cleanup_agent() {
  if (Status st = check_privileges(); !st.ok()) return st;
  if (agent_running())
    return Error{kExitTracing, "failed to clean up the agent's pins: an agent is running (stop it first: "
                               "systemctl stop asynctrace-agent, or kill -TERM its pid)"};
  const std::string dir = agent_pin_dir();
  for (const char* m : kPinnedMaps) {
    const std::string path = dir + "/" + m;
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
