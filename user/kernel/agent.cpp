// SPDX-License-Identifier: Apache-2.0
// The agent's BPF object (kernel/loader.h, docs/agent.md): one for the
// whole host, attached by library file, its maps pinned and reused.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "abi.h"
#include "asynctrace.skel.h"
#include "kernel/attach.h"
#include "kernel/kernel_features.h"
#include "kernel/loader.h"
#include "kernel/maps.h"
#include "kernel/object.h"
#include "kernel/pins.h"
#include "kernel/usdt_attach.h"

namespace asynctrace {
namespace {

class AgentImpl final : public Agent {
 public:
  AgentImpl(SkelPtr skel, int lock_fd, bool reused) : skel_(std::move(skel)), lock_fd_(lock_fd), reused_(reused) {}
  ~AgentImpl() override {
    // Links go (the probes detach); the pinned maps stay for the next agent.
    for (const auto& r : requests_) link_fds_.push_back(r.first);
    std::reverse(link_fds_.begin(), link_fds_.end());
    close_links_concurrently(link_fds_);
    if (noop_fd_ >= 0) close(noop_fd_);
    skel_.reset();
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
    if (Status s = attach_sites_multi(skel_.get(), ep, path, sites.value(), 0, spec_ids_, link_fds_); !s.ok()) return s;
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
  MapFds fds() const { return object_maps(skel_.get()); }

  SkelPtr skel_;
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

  auto opened = open_object();
  if (!opened.ok()) return fail_unlocked(opened.error());
  SkelPtr owned = std::move(opened.value());  // destroyed on every error return
  asynctrace_bpf* skel = owned.get();
  auto destroy = [&](Error e) {
    owned.reset();
    return fail_unlocked(std::move(e));
  };
  skel->rodata->target_tgid = 0;       // every process the uprobes fire in
  skel->rodata->require_begin = true;  // our runtimes have replay__begin
  skel->rodata->forward_events = false;
  if (bpf_map__set_max_entries(skel->maps.events, static_cast<__u32>(getpagesize())) != 0)
    return destroy(Error{kExitTracing, "failed to size BPF map 'events': " + reason(errno)});
  // libbpf reuses a compatible map pinned at the path, or creates and pins it.
  for (const NamedMap& m : kPinnedMaps) {
    const std::string path = dir + "/" + m.name;
    if (bpf_map__set_pin_path(bpf_object__find_map_by_name(skel->obj, m.name), path.c_str()) != 0)
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
  for (const NamedMap& m : kPinnedMaps)
    if (Status st = make_private(dir + "/" + m.name, false); !st.ok()) return destroy(st.error());
  auto agent = std::make_unique<AgentImpl>(std::move(owned), lock_fd, reused);
  if (Status st = agent->init(); !st.ok()) return st.error();
  if (verbose)
    std::fprintf(stderr, "asynctrace: agent maps %s '%s'\n", reused ? "reused from" : "pinned in", dir.c_str());
  return std::unique_ptr<Agent>(std::move(agent));
}

}  // namespace asynctrace
