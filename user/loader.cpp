// SPDX-License-Identifier: Apache-2.0
// The only file that speaks libbpf: loads bpf/asynctrace.bpf.c through its
// skeleton, attaches the USDT programs to one process and decodes the maps
// into a Snapshot. Everything else in user/ sees loader.h only.
#include "loader.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
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

bool process_alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  auto paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'Z';
}

// Attach order required by the ABI: replay__end last, because raising its
// semaphore is what starts the runtime's replay, and every probe the replay
// emits must already be live. task__complete first so no task can finish
// unseen between its creation and our attach.
struct ProbeSlot {
  const char* probe;
  bpf_program* (*prog)(asynctrace_bpf*);
};
constexpr std::array<ProbeSlot, 9> kAttachOrder{{
    {"task__complete", [](asynctrace_bpf* s) { return s->progs.task_complete; }},
    {"code__register", [](asynctrace_bpf* s) { return s->progs.code_register; }},
    {"task__create", [](asynctrace_bpf* s) { return s->progs.task_create; }},
    {"edge__add", [](asynctrace_bpf* s) { return s->progs.edge_add; }},
    {"edge__remove", [](asynctrace_bpf* s) { return s->progs.edge_remove; }},
    {"task__await", [](asynctrace_bpf* s) { return s->progs.task_await; }},
    {"task__resume", [](asynctrace_bpf* s) { return s->progs.task_resume; }},
    {"replay__begin", [](asynctrace_bpf* s) { return s->progs.replay_begin; }},
    {"replay__end", [](asynctrace_bpf* s) { return s->progs.replay_end; }},
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
    Snapshot snap;
    snap.pid = static_cast<uint32_t>(pid_);
    std::unordered_set<uint64_t> seen;
    Status st = for_each_entry<at_task_key, at_task>(
        bpf_map__fd(skel_->maps.tasks), "tasks", [&](const at_task_key& k, const at_task& t) {
          if (k.pid != snap.pid || !seen.insert(k.task_id).second) return;
          snap.tasks.push_back(decode_task(t));
        });
    if (!st.ok()) return st.error();
    std::sort(snap.tasks.begin(), snap.tasks.end(),
              [](const TaskRecord& a, const TaskRecord& b) { return a.seq < b.seq; });

    st = for_each_entry<at_code_key, at_code>(
        bpf_map__fd(skel_->maps.codes), "codes", [&](const at_code_key& k, const at_code& c) {
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
    if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.procs), &key, &proc) == 0) {
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

 private:
  static TaskRecord decode_task(const at_task& t) {
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

  pid_t pid_;
  asynctrace_bpf* skel_;
  std::vector<bpf_link*> links_;
};

}  // namespace

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
