// SPDX-License-Identifier: Apache-2.0
// The two ways to read one process's maps: a BPF object of our own attached
// to it (BpfTracer: owns the object, its links, its pins) and the pinned
// maps of a holder (PinnedView: reads, and asks for replays). Plus the mode
// holds (timing__on, steps__on).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "abi.h"
#include "asynctrace.skel.h"
#include "core/decode.h"
#include "kernel/attach.h"
#include "kernel/kernel_features.h"
#include "kernel/loader.h"
#include "kernel/maps.h"
#include "kernel/object.h"
#include "kernel/pins.h"
#include "kernel/replay.h"
#include "kernel/usdt_attach.h"

namespace asynctrace {
namespace {

class BpfTracer final : public Tracer {
 public:
  BpfTracer(pid_t pid, SkelPtr skel, AttachMode mode, EventPath path, std::string mapped_path)
      : pid_(pid), skel_(std::move(skel)), mode_(mode), path_(path), mapped_path_(std::move(mapped_path)) {}
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
    skel_.reset();
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
    // Any replay: the maps were empty before ours.
    Status st = await_replay(replay_watch(pid_, fds().procs, 0, 0, {}), timeout);
    if (st.ok() || st.error().code != kExitReplayTimeout) return st;
    return Error{kExitReplayTimeout,
                 "failed to wait for replay of process " + std::to_string(pid_) + ": no answer in " +
                     std::to_string(timeout.count()) +
                     " ms; the event loop thread may be blocked or holding the GIL in C code "
                     "(retry, or raise --timeout)"};
  }

  Result<Snapshot> snapshot() const override {
    return read_maps(static_cast<uint32_t>(pid_), fds());
  }

  Status pin() override { return pin_maps(pid_, skel_.get(), pins_); }
  Status gc() override { return gc_stacks(static_cast<uint32_t>(pid_), fds()); }

  MapFds fds() const { return object_maps(skel_.get()); }

 private:
  Status attach_per_site(const std::string& binary);
  Status attach_multi(const std::string& binary, const Sites& sites);
  void request_full_replay(const std::string& binary, const std::vector<usdt::Site>& sites);

  pid_t pid_;
  SkelPtr skel_;
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
    bpf_link* link = bpf_program__attach_usdt(slot.prog(skel_.get()), pid_, binary.c_str(),
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
  return attach_sites_multi(skel_.get(), path_, binary, sites.value(), pid_, spec_ids, link_fds_);
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

}  // namespace

namespace {

// The maps an `asynctrace attach` holds for a process, plus (while it lives)
// one extra link on the runtime's replay__end site: a do-nothing program
// whose only effect is raising the semaphore, which makes the runtime replay
// its live tasks with their current stacks into the holder's maps. Between
// replays the batch path keeps states and edges current but not stacks.
class PinnedView final : public MapView {
 public:
  PinnedView(pid_t pid, PinnedMaps maps) : pid_(pid), maps_(std::move(maps)) {}
  ~PinnedView() override {
    close_links_concurrently(link_fds_);  // a grace period each: run_view forks for it
    if (prog_fd_ >= 0) close(prog_fd_);
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
    // A replay that began before our request may show older stacks: wait
    // for one that begins after it (generation > the active one then).
    Status st = await_replay(replay_watch(pid_, maps_.fds().procs, active0_, active0_, [this] { (void)add_request(); }),
                             timeout);
    if (st.ok() || st.error().code != kExitReplayTimeout) return st;
    return Error{kExitReplayTimeout, "no replay from process " + std::to_string(pid_) + " in " +
                                         std::to_string(timeout.count()) +
                                         " ms; showing the held maps, whose stacks may be missing or stale"};
  }

  Result<Snapshot> snapshot() const override {
    return read_maps(static_cast<uint32_t>(pid_), maps_.fds());
  }

 private:
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

  at_proc proc_counters() const { return read_proc(maps_.fds().procs, pid_); }

  pid_t pid_;
  PinnedMaps maps_;  // closed after the links (declared first, destroyed last)
  int prog_fd_ = -1;
  std::vector<int> link_fds_;
  std::string binary_, mapped_;
  std::vector<usdt::Site> sites_;
  uint64_t active0_ = 0;
};

}  // namespace

Result<std::unique_ptr<MapView>> open_pinned(pid_t pid, const ProcInfo* proc, bool verbose) {
  PinnedMaps maps;
  if (!pin_holder_alive(pid)) {
    remove_stale(pid);
    // The agent's maps, if it knows this process (it has a procs entry once
    // the process's probes fired, at the latest at its replay).
    if (!agent_running()) return std::unique_ptr<MapView>{};
    auto agent_maps = PinnedMaps::open(agent_pin_dir());
    if (!agent_maps.ok()) return agent_maps.error();
    maps = std::move(agent_maps.value());
    at_proc p{};
    const __u32 key = static_cast<__u32>(pid);
    if (bpf_map_lookup_elem(maps.fds().procs, &key, &p) != 0 || !agent_running()) return std::unique_ptr<MapView>{};
    if (verbose) std::fprintf(stderr, "asynctrace: reading the agent's maps in '%s'\n", agent_pin_dir().c_str());
  } else {
    auto pid_maps = PinnedMaps::open(pin_dir(pid));
    if (!pid_maps.ok()) return pid_maps.error();
    maps = std::move(pid_maps.value());
  }
  auto view = std::make_unique<PinnedView>(pid, std::move(maps));
  if (proc && proc->kind == ProcKind::Probed) {
    if (std::string why = view->request_replay(*proc); !why.empty() && verbose)
      std::fprintf(stderr, "asynctrace: no replay requested: %s\n", why.c_str());
  }
  return std::unique_ptr<MapView>(std::move(view));
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

  // Owned from here on: every error return below destroys it.
  auto opened = open_object();
  if (!opened.ok()) return opened.error();
  SkelPtr owned = std::move(opened.value());
  asynctrace_bpf* skel = owned.get();
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
      std::make_unique<BpfTracer>(static_cast<pid_t>(skel->rodata->target_tgid), std::move(owned), mode, path,
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

}  // namespace asynctrace
