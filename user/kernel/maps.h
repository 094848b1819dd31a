// SPDX-License-Identifier: Apache-2.0
// Internal to kernel/: the maps of one BPF object (live or pinned), by
// name; reading them into Snapshots (core/decode.h decodes), freeing stale
// entries.
#pragma once

#include <bpf/bpf.h>
#include <errno.h>
#include <sys/types.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <unordered_set>
#include <vector>

#include "abi.h"
#include "core/result.h"
#include "core/snapshot.h"
#include "kernel/object.h"
#include "kernel/replay.h"

struct asynctrace_bpf;

namespace asynctrace {

// The maps a Snapshot is read from, by fd (-1: absent).
struct MapFds {
  int tasks = -1, codes = -1, procs = -1, stacks = -1, timing = -1, code_timing = -1;
};

// The maps `attach` and the agent pin, by name: the file under the pin
// directory and the map of the object are both called so.
struct NamedMap {
  const char* name;
  int MapFds::*fd;
};
inline constexpr NamedMap kPinnedMaps[] = {
    {"tasks", &MapFds::tasks},   {"codes", &MapFds::codes},   {"procs", &MapFds::procs},
    {"stacks", &MapFds::stacks}, {"timing", &MapFds::timing}, {"code_timing", &MapFds::code_timing},
};

// The fds of the object's maps (owned by the object).
MapFds object_maps(const asynctrace_bpf* skel);

// Pinned maps opened from `dir` (one file per kPinnedMaps name), closed with this.
class PinnedMaps {
 public:
  PinnedMaps() = default;
  PinnedMaps(PinnedMaps&& o) noexcept : fds_(o.fds_) { o.fds_ = MapFds{}; }
  PinnedMaps& operator=(PinnedMaps&& o) noexcept;
  PinnedMaps(const PinnedMaps&) = delete;
  PinnedMaps& operator=(const PinnedMaps&) = delete;
  ~PinnedMaps() { close_all(); }
  static Result<PinnedMaps> open(const std::string& dir);
  const MapFds& fds() const { return fds_; }

 private:
  void close_all();
  MapFds fds_;
};

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
Result<Snapshot> read_maps(uint32_t pid, const MapFds& m);

// Every process's snapshot from one pass over the maps, stacks and per-task
// timing left out.
Result<std::vector<Snapshot>> read_all(const MapFds& m);

// Removes the interned stacks of `pid` that no task refers to, except those
// tagged with the replay in progress (its tasks may not point at them yet).
Status gc_stacks(uint32_t pid, const MapFds& m);

// procs[pid] (zero if absent).
at_proc read_proc(int procs_fd, pid_t pid);

// The replay generation of `pid` in the procs map `procs_fd`, for await_replay().
ReplayWatch replay_watch(pid_t pid, int procs_fd, uint64_t after_gen, uint64_t active0, std::function<void()> nudge);

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

}  // namespace asynctrace
