// SPDX-License-Identifier: Apache-2.0
#include "kernel/maps.h"

#include <bpf/libbpf.h>
#include <unistd.h>

#include <map>
#include <utility>

#include "asynctrace.skel.h"
#include "core/decode.h"

namespace asynctrace {

MapFds object_maps(const asynctrace_bpf* skel) {
  MapFds m;
  for (const NamedMap& nm : kPinnedMaps)
    m.*nm.fd = bpf_map__fd(bpf_object__find_map_by_name(skel->obj, nm.name));
  return m;
}

PinnedMaps& PinnedMaps::operator=(PinnedMaps&& o) noexcept {
  if (this != &o) {
    close_all();
    fds_ = o.fds_;
    o.fds_ = MapFds{};
  }
  return *this;
}

void PinnedMaps::close_all() {
  for (const NamedMap& nm : kPinnedMaps)
    if (fds_.*nm.fd >= 0) close(fds_.*nm.fd);
  fds_ = MapFds{};
}

Result<PinnedMaps> PinnedMaps::open(const std::string& dir) {
  PinnedMaps out;
  for (const NamedMap& nm : kPinnedMaps) {
    const std::string path = dir + "/" + nm.name;
    const int fd = bpf_obj_get(path.c_str());
    if (fd < 0) {
      const int err = errno;
      return Error{err == EPERM || err == EACCES ? kExitPrivilege : kExitTracing,
                   "failed to open pinned BPF map '" + path + "': " + std::strerror(err)};
    }
    out.fds_.*nm.fd = fd;
  }
  return out;
}

at_proc read_proc(int procs_fd, pid_t pid) {
  at_proc proc{};
  const __u32 key = static_cast<__u32>(pid);
  if (bpf_map_lookup_elem(procs_fd, &key, &proc) != 0) proc = at_proc{};
  return proc;
}

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

ReplayWatch replay_watch(pid_t pid, int procs_fd, uint64_t after_gen, uint64_t active0, std::function<void()> nudge) {
  ReplayWatch w;
  w.pid = pid;
  w.read = [pid, procs_fd] {
    const at_proc proc = read_proc(procs_fd, pid);
    return std::make_pair(static_cast<uint64_t>(proc.replay_gen), static_cast<uint64_t>(proc.replay_active));
  };
  w.after_gen = after_gen;
  w.active0 = active0;
  w.nudge = std::move(nudge);
  return w;
}

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

}  // namespace asynctrace
