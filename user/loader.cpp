// SPDX-License-Identifier: Apache-2.0
// The only file that speaks libbpf: loads bpf/asynctrace.bpf.c through its
// skeleton, attaches the USDT programs to one process and decodes the maps
// into a Snapshot. Everything else in user/ sees loader.h only.
#include "loader.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
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
#include <cstring>
#include <fstream>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "../bpf/abi.h"
#include "asynctrace.skel.h"

namespace asynctrace {
namespace {

constexpr int kCapPerfmon = 38;
constexpr int kCapBpf = 39;
constexpr int kCapSysAdmin = 21;
constexpr unsigned long kTracefsMagic = 0x74726163;  // TRACEFS_MAGIC
constexpr int kEnotsupp = 524;  // kernel-internal ENOTSUPP, leaks out of old bpf() commands

// libbpf logs through one process-wide callback. Keep its last warning so an
// error message can say why, and echo everything only when asked to.
std::mutex g_log_mu;
std::string g_last_libbpf_warning;
bool g_verbose = false;

int libbpf_log(enum libbpf_print_level level, const char* fmt, va_list args) {
  char line[1024];
  va_list copy;
  va_copy(copy, args);
  vsnprintf(line, sizeof line, fmt, copy);
  va_end(copy);
  std::lock_guard lock(g_log_mu);
  if (level == LIBBPF_WARN) {
    std::string_view s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
    g_last_libbpf_warning.assign(s);
  }
  if (!g_verbose) return 0;
  return fputs(line, stderr);
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

Status check_privileges() {
  uint64_t caps = effective_caps();
  auto has = [caps](int cap) { return (caps >> cap) & 1; };
  // CAP_SYS_ADMIN covers BPF and perf events on every kernel; CAP_BPF +
  // CAP_PERFMON is the least privilege on >= 5.8.
  if (has(kCapSysAdmin) || (has(kCapBpf) && has(kCapPerfmon))) return ok_status();
  return Error{kExitPrivilege,
               "failed to attach tracer: missing privileges; run as root or grant CAP_BPF and "
               "CAP_PERFMON (plus CAP_SYS_PTRACE to trace another user's process)"};
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
struct ProbeSlot {
  const char* probe;
  bpf_program* (*prog)(asynctrace_bpf*);
  bool required = false;
};
constexpr std::array<ProbeSlot, 9> kAttachOrder{{
    {"task__complete", [](asynctrace_bpf* s) { return s->progs.task_complete; }},
    {"code__register", [](asynctrace_bpf* s) { return s->progs.code_register; }},
    {"task__create", [](asynctrace_bpf* s) { return s->progs.task_create; }, true},
    {"edge__add", [](asynctrace_bpf* s) { return s->progs.edge_add; }},
    {"edge__remove", [](asynctrace_bpf* s) { return s->progs.edge_remove; }},
    {"task__await", [](asynctrace_bpf* s) { return s->progs.task_await; }},
    {"task__resume", [](asynctrace_bpf* s) { return s->progs.task_resume; }},
    {"replay__begin", [](asynctrace_bpf* s) { return s->progs.replay_begin; }},
    {"replay__end", [](asynctrace_bpf* s) { return s->progs.replay_end; }, true},
}};

std::string bytes(const char* p, size_t cap, uint64_t len) {
  return std::string(p, std::min<uint64_t>(cap, len));
}

// Calls fn(key, value) for every entry of a hash map. Batch lookups read a
// consistent bucket at a time; kernels without them get the key walk, which
// may repeat keys under churn (callers dedupe).
template <class K, class V, class Fn>
Status for_each_entry(int fd, const char* map_name, Fn&& fn) {
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

TaskRecord decode_task(const at_task& t) {
  TaskRecord r;
  r.id = t.task_id;
  r.parent_id = t.parent_id;
  r.loop_id = t.loop_id;
  r.coro_code_id = t.coro_code_id;
  r.create_ns = t.create_ns;
  r.seq = t.seq;
  r.tid = t.tid;
  r.state = static_cast<TaskState>(t.state);
  r.name = bytes(t.name, AT_NAME_LEN, t.name_len);
  r.name_truncated = t.name_len > AT_NAME_LEN;
  r.nameless = (t.flags & AT_TASK_NAMELESS) != 0;
  r.awaiting_id = t.awaiting_id;
  r.awaiting_kind = static_cast<AwaitKind>(t.awaiting_kind);
  for (int i = 0; i < AT_MAX_AWAITERS; i++) {
    if (!t.awaited_by[i]) continue;
    r.awaited_by.push_back({t.awaited_by[i], static_cast<EdgeKind>(t.awaited_by_kind[i])});
  }
  const uint32_t n = std::min<uint32_t>(t.nframes, AT_MAX_FRAMES);
  r.frames.reserve(n);
  bool frame_says_truncated = false;
  for (uint32_t i = 0; i < n; i++) {
    r.frames.push_back({t.frames[i].code_id, t.frames[i].line});
    // ASYNCTRACE_FRAME_TRUNCATED: the runtime itself cut the stack here.
    frame_says_truncated |= (t.frames[i].flags & 1u) != 0;
  }
  r.frames_truncated = (t.flags & AT_TASK_FRAMES_TRUNC) != 0 || frame_says_truncated;
  r.awaiters_truncated = (t.flags & AT_TASK_AWAITERS_FULL) != 0;
  return r;
}


// Decodes the maps (of a live tracer or pinned by `attach`) for one pid.
Result<Snapshot> read_maps(uint32_t pid, int tasks_fd, int codes_fd, int procs_fd) {
  Snapshot snap;
  snap.pid = pid;
  std::unordered_set<uint64_t> seen;
  Status st = for_each_entry<at_task_key, at_task>(
      tasks_fd, "tasks", [&](const at_task_key& k, const at_task& t) {
        if (k.pid != snap.pid || !seen.insert(k.task_id).second) return;
        snap.tasks.push_back(decode_task(t));
      });
  if (!st.ok()) return st.error();
  std::sort(snap.tasks.begin(), snap.tasks.end(),
            [](const TaskRecord& a, const TaskRecord& b) { return a.seq < b.seq; });

  st = for_each_entry<at_code_key, at_code>(
      codes_fd, "codes", [&](const at_code_key& k, const at_code& c) {
        if (k.pid != snap.pid) return;
        CodeInfo info;
        info.qualname = bytes(c.qualname, AT_QUALNAME_LEN, c.qualname_len);
        info.filename = bytes(c.filename, AT_FILENAME_LEN, c.filename_len);
        info.firstlineno = c.firstlineno;
        info.truncated = c.qualname_len > AT_QUALNAME_LEN || c.filename_len > AT_FILENAME_LEN;
        snap.code.emplace(k.code_id, std::move(info));
      });
  if (!st.ok()) return st.error();

  at_proc proc{};
  const __u32 key = snap.pid;
  if (bpf_map_lookup_elem(procs_fd, &key, &proc) == 0) {
    snap.counters.replay_gen = proc.replay_gen;
    snap.counters.replay_tasks = proc.replay_tasks;
    snap.counters.events = proc.events;
    snap.counters.drop_tasks_full = proc.drop_tasks_full;
    snap.counters.drop_codes_full = proc.drop_codes_full;
    snap.counters.drop_edges_full = proc.drop_edges_full;
    snap.counters.unknown_task = proc.unknown_task;
  }
  return snap;
}

// Pinned maps of one process plus the lock that says their holder is alive.
// The lock is a flock on /run/asynctrace/<pid>.lock: the kernel drops it when
// the holder dies, however it dies, so readers can tell stale pins.
constexpr const char* kPinnedMaps[] = {"tasks", "codes", "procs"};
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

Status make_private_dir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
    return Error{kExitTracing, "failed to create directory '" + path + "': " + std::strerror(errno)};
  return ok_status();
}

Status ensure_bpffs() {
  struct statfs fs {};
  if (statfs("/sys/fs/bpf", &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kBpfFsMagic)
    return ok_status();
  if (mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") == 0) return ok_status();
  return Error{kExitTracing, std::string("failed to mount bpffs '/sys/fs/bpf': ") + std::strerror(errno)};
}

class BpfTracer final : public Tracer {
 public:
  BpfTracer(pid_t pid, asynctrace_bpf* skel) : pid_(pid), skel_(skel) {}
  ~BpfTracer() override {
    // Reverse order: replay__end goes first so the runtime sees its
    // semaphore drop before anything else disappears.
    for (auto it = links_.rbegin(); it != links_.rend(); ++it) bpf_link__destroy(*it);
    asynctrace_bpf__destroy(skel_);
  }

  Status attach(const std::string& binary) {
    for (const ProbeSlot& slot : kAttachOrder) {
      bpf_link* link = bpf_program__attach_usdt(slot.prog(skel_), pid_, binary.c_str(),
                                                "asynctrace", slot.probe, nullptr);
      if (!link) {
        int err = errno;
        if (err == ENOENT && !slot.required) continue;  // the runtime has no such site
        int code = (err == EPERM || err == EACCES) ? kExitPrivilege : kExitTracing;
        std::string msg = "failed to attach USDT probe 'asynctrace:" + std::string(slot.probe) +
                          "' of '" + binary + "' to pid " + std::to_string(pid_) + ": " +
                          reason(err);
        if (code == kExitPrivilege) msg += "; tracing another user's process needs CAP_SYS_PTRACE";
        return Error{code, msg};
      }
      links_.push_back(link);
    }
    return ok_status();
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
                     "(retry, or raise --replay-timeout)"};
  }

  Result<Snapshot> snapshot() const override {
    return read_maps(static_cast<uint32_t>(pid_), bpf_map__fd(skel_->maps.tasks),
                     bpf_map__fd(skel_->maps.codes), bpf_map__fd(skel_->maps.procs));
  }

  Status pin() override;

 private:
  pid_t pid_;
  asynctrace_bpf* skel_;
  std::vector<bpf_link*> links_;
  Pins pins_;
};

Status BpfTracer::pin() {
  if (Status st = make_private_dir("/run/asynctrace"); !st.ok()) return st;
  pins_.pid = pid_;
  pins_.lock_fd = open(lock_path(pid_).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (pins_.lock_fd < 0)
    return Error{kExitTracing, "failed to open lock '" + lock_path(pid_) + "': " + std::strerror(errno)};
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
  bpf_map* maps[] = {skel_->maps.tasks, skel_->maps.codes, skel_->maps.procs};
  for (size_t i = 0; i < std::size(maps); ++i) {
    const std::string path = pin_dir(pid_) + "/" + kPinnedMaps[i];
    if (bpf_map__pin(maps[i], path.c_str()) != 0)
      return Error{kExitTracing, "failed to pin BPF map '" + path + "': " + reason(errno)};
  }
  return ok_status();
}

}  // namespace

std::string pin_dir(pid_t pid) { return "/sys/fs/bpf/asynctrace/" + std::to_string(pid); }

Result<std::optional<Snapshot>> read_pinned(pid_t pid) {
  const int lock = open(lock_path(pid).c_str(), O_RDONLY | O_CLOEXEC);
  if (lock < 0) return std::optional<Snapshot>{};
  if (flock(lock, LOCK_SH | LOCK_NB) == 0) {  // nobody holds it: stale
    remove_pins(pid);
    unlink(lock_path(pid).c_str());
    close(lock);
    return std::optional<Snapshot>{};
  }
  close(lock);
  int fds[3] = {-1, -1, -1};
  for (int i = 0; i < 3; ++i) {
    const std::string path = pin_dir(pid) + "/" + kPinnedMaps[i];
    fds[i] = bpf_obj_get(path.c_str());
    if (fds[i] < 0) {
      const int err = errno;
      for (int k = 0; k < i; ++k) close(fds[k]);
      return Error{err == EPERM || err == EACCES ? kExitPrivilege : kExitTracing,
                   "failed to open pinned BPF map '" + path + "': " + std::strerror(err)};
    }
  }
  auto snap = read_maps(static_cast<uint32_t>(pid), fds[0], fds[1], fds[2]);
  for (int fd : fds) close(fd);
  if (!snap.ok()) return snap.error();
  return std::optional<Snapshot>(std::move(snap.value()));
}

Result<std::unique_ptr<Tracer>> attach_tracer(const TraceOptions& opts, const ProcInfo& proc) {
  if (Status st = check_privileges(); !st.ok()) return st.error();
  if (proc.kind != ProcKind::Probed) return proc_error(proc);
  {
    std::lock_guard lock(g_log_mu);
    g_verbose = opts.verbose;
    g_last_libbpf_warning.clear();
  }
  libbpf_set_print(libbpf_log);
  // RLIMIT_MEMLOCK: libbpf >= 1.0 raises it by itself, and only on kernels
  // that still charge BPF memory to it (< 5.11, no memcg accounting).
  if (Status st = ensure_uprobe_interface(); !st.ok()) return st.error();

  asynctrace_bpf* skel = asynctrace_bpf__open();
  if (!skel)
    return Error{kExitTracing, "failed to open BPF object 'asynctrace': " + reason(errno)};
  skel->rodata->target_tgid = static_cast<__u32>(opts.pid ? opts.pid : proc.pid);
  auto tracer = std::make_unique<BpfTracer>(static_cast<pid_t>(skel->rodata->target_tgid), skel);

  if (int err = asynctrace_bpf__load(skel); err) {
    int code = (err == -EPERM || err == -EACCES) ? kExitPrivilege : kExitTracing;
    std::string msg = "failed to load BPF object 'asynctrace': " + reason(err);
    if (!opts.verbose) msg += "; rerun with --verbose for the verifier log";
    return Error{code, msg};
  }
  // Pre-create procs[pid] so a full procs map shows up here, not as silence.
  const __u32 key = skel->rodata->target_tgid;
  const at_proc zero{};
  if (bpf_map_update_elem(bpf_map__fd(skel->maps.procs), &key, &zero, BPF_NOEXIST) != 0 &&
      errno != EEXIST)
    return Error{kExitTracing, "failed to update BPF map 'procs': " + reason(errno)};

  const std::string& binary = proc.probe_lib_host.empty() ? proc.probe_lib : proc.probe_lib_host;
  if (Status st = tracer->attach(binary); !st.ok()) return st.error();
  return std::unique_ptr<Tracer>(std::move(tracer));
}

}  // namespace asynctrace
