// SPDX-License-Identifier: Apache-2.0
// top, slow, record: the commands built on the runtime's step timing
// (docs/probes.md "Timing"). Each attaches with timing__on held; slow and
// record also read the events ring (STEP_TIMED and SAMPLE records).
#include <fcntl.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "cmd/command_util.h"
#include "core/escape.h"
#include "core/model.h"
#include "kernel/procinfo.h"
#include "profile/profile.h"
#include "render/top_view.h"
#include "render/views.h"

namespace asynctrace {
namespace {

Error exited(pid_t pid) {
  return Error{kExitProcessExited, "process " + std::to_string(pid) + " exited while traced"};
}

// Sleeps up to `d`, waking early on a stop signal.
void nap(std::chrono::milliseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (!g_stop && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(std::chrono::milliseconds(20), d));
}

// Attached for timing: the maps an `asynctrace attach` holds (plus our hold
// of timing__on), or a tracer of our own.
struct TimingSource {
  std::unique_ptr<Tracer> tracer;
  std::unique_ptr<ModeHold> hold;
};

Result<TimingSource> open_timing(const Options& o, const TraceModes& modes) {
  if (auto st = check_privileges(); !st.ok()) return st.error();
  sweep_stale_pins();
  if (!process_alive(o.pid)) return proc_error(inspect_process(o.pid));
  const ProcInfo info = inspect_process(o.pid);
  if (info.kind != ProcKind::Probed) return proc_error(info);
  TimingSource src;
  if (!modes.events) {
    auto pinned = open_pinned(o.pid, &info, o.verbose);
    if (!pinned.ok()) return pinned.error();
    if (pinned.value()) {
      // The agent holds timing__on for every process already.
      const bool agent_maps = !pin_holder_alive(o.pid) && agent_running();
      if (!agent_maps || modes.steps) {
        auto hold = hold_modes(info, true, modes.steps);
        if (!hold.ok()) return hold.error();
        src.hold = std::move(hold.value());
      }
      if (auto st = pinned.value()->wait_replay(o.timeout); !st.ok() && st.error().code != kExitReplayTimeout)
        return st.error();
      src.tracer = std::move(pinned.value());
      return src;
    }
  }
  auto tracer = start_tracing(o, nullptr, modes);
  if (!tracer.ok()) return tracer.error();
  src.tracer = std::move(tracer.value());
  return src;
}

// ---- top ---------------------------------------------------------------------

std::pair<size_t, size_t> terminal_size() {
  winsize ws{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) return {ws.ws_row, ws.ws_col};
  return {24, 80};
}

}  // namespace

int run_top(const Options& o) {
  auto src = open_timing(o, TraceModes{true, false, false});
  if (!src.ok()) return fail(src.error());
  install_stop_handlers();
  const bool tty = isatty(STDOUT_FILENO);
  TopModel model;
  TopOptions topts;
  topts.sort = o.sort;
  topts.name_filter = o.name_filter;
  topts.stuck_ns = static_cast<uint64_t>(o.stuck.count()) * 1'000'000ull;
  int code = kExitOk;
  for (uint32_t i = 0; !g_stop && (o.iterations == 0 || i < o.iterations); ++i) {
    nap(o.interval);
    if (g_stop) break;
    if (!process_alive(o.pid)) {
      code = fail(exited(o.pid));
      break;
    }
    auto snap = src.value().tracer->snapshot();
    if (!snap.ok()) return fail(snap.error());
    const uint64_t now = monotonic_ns();
    const TaskGraph g = build_graph(snap.value());
    const TopFrame f = model.update(g, now, topts);
    if (o.format == Format::Json) {
      std::cout << top_json(f).dump() << "\n";
    } else if (tty) {
      const auto [rows, cols] = terminal_size();
      const size_t fixed = 3 + f.warnings.size();
      // Home and clear, then the frame: a redraw in place.
      std::cout << "\x1b[H\x1b[2J" << render_top(f, rows > fixed + 1 ? rows - fixed - 1 : 1, cols);
    } else {
      std::cout << render_top(f) << "\n";
    }
    std::cout.flush();
    if (!std::cout.good()) return fail(Error{kExitInternal, "failed to write output"});
  }
  detach_in_background(src.value().tracer);
  return code;
}

// ---- stacks of slow steps and recordings --------------------------------------

namespace {

// Resolves stack and code ids, re-reading the maps when an id is new.
class StackBook {
 public:
  explicit StackBook(Tracer* t) : tracer_(t) {}

  const StackInfo* stack(uint64_t id) {
    if (!id) return nullptr;
    auto it = stacks_.find(id);
    // A new id: the maps have it now (its record came before the event).
    if (it == stacks_.end() && tried_.insert(id).second && refresh(true)) it = stacks_.find(id);
    return it == stacks_.end() ? nullptr : &it->second;
  }
  const CodeInfo* code(uint64_t id) {
    auto it = code_.find(id);
    if (it != code_.end() || !id || !code_tried_.insert(id).second) return it == code_.end() ? nullptr : &it->second;
    // A code the runtime registered before this tracer attached, while
    // another holder (the agent, an `attach`) kept its session going: the
    // runtime does not send it again, but that holder's maps have it.
    if (refresh(true)) it = code_.find(id);
    if (it == code_.end() && holder_) {
      auto snap = holder_->snapshot();
      if (snap.ok())
        for (auto& [cid, c] : snap.value().code) code_.try_emplace(cid, std::move(c));
      it = code_.find(id);
    }
    return it == code_.end() ? nullptr : &it->second;
  }
  // The maps of a holder of the process (open_pinned), for codes ours lack.
  void set_holder(std::unique_ptr<Tracer> t) { holder_ = std::move(t); }
  // Reads the maps once more (at most every 50 ms); false if nothing new.
  bool refresh(bool force = false) {
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(50)) return false;
    last_ = now;
    auto snap = tracer_->snapshot();
    if (!snap.ok()) return false;
    take(std::move(snap.value()));
    return true;
  }
  void take(Snapshot s) {
    for (auto& [id, st] : s.stacks) stacks_.try_emplace(id, std::move(st));
    for (auto& [id, c] : s.code) code_.try_emplace(id, std::move(c));
    last_snapshot_ = std::move(s);
  }
  const Snapshot& last_snapshot() const { return last_snapshot_; }

 private:
  Tracer* tracer_;
  std::unordered_map<uint64_t, StackInfo> stacks_;
  std::unordered_map<uint64_t, CodeInfo> code_;
  std::unordered_set<uint64_t> tried_;  // ids a forced refresh looked for
  std::unordered_set<uint64_t> code_tried_;
  std::unique_ptr<Tracer> holder_;
  Snapshot last_snapshot_;
  std::chrono::steady_clock::time_point last_{};
};

struct NamedFrame {
  std::string func, file;
  uint32_t line = 0;
  uint64_t code_id = 0;
};

std::vector<NamedFrame> name_frames(StackBook& book, const StackInfo* st) {
  std::vector<NamedFrame> out;
  if (!st) return out;
  for (const Frame& f : st->frames) {
    NamedFrame n;
    n.code_id = f.code_id;
    n.line = f.line;
    if (const CodeInfo* c = book.code(f.code_id)) {
      n.func = c->qualname;
      n.file = c->filename;
    } else {
      n.func = "<code " + hex_id(f.code_id) + ">";
    }
    out.push_back(std::move(n));
  }
  return out;
}

std::string frame_text(const NamedFrame& f) {
  std::string s = escape_untrusted(f.func);
  if (!f.file.empty()) s += " " + escape_untrusted(f.file) + ":" + std::to_string(f.line);
  return s;
}

nlohmann::json frames_json(const std::vector<NamedFrame>& fs) {
  nlohmann::json a = nlohmann::json::array();
  for (const NamedFrame& f : fs)
    a.push_back({{"function", sanitize_utf8(f.func)}, {"file", sanitize_utf8(f.file)}, {"line", f.line}});
  return a;
}

// Samples taken during recent steps, per task (they arrive before their step).
class SampleBook {
 public:
  void add(const StepEvent& s) {
    auto& q = by_task_[s.task_id];
    q.push_back(s);
    if (q.size() > 4096) q.pop_front();
  }
  // The samples of the step [start, start + dur] of `task`, removed.
  std::vector<StepEvent> take(uint64_t task, uint64_t start, uint64_t dur) {
    std::vector<StepEvent> out;
    auto it = by_task_.find(task);
    if (it == by_task_.end()) return out;
    auto& q = it->second;
    while (!q.empty() && q.front().at_ns <= start + dur) {
      if (q.front().at_ns >= start) out.push_back(q.front());
      q.pop_front();
    }
    if (q.empty()) by_task_.erase(it);
    return out;
  }

 private:
  std::unordered_map<uint64_t, std::deque<StepEvent>> by_task_;
};

std::string wall_time() {
  timespec t{};
  clock_gettime(CLOCK_REALTIME, &t);
  tm parts{};
  localtime_r(&t.tv_sec, &parts);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03ld", parts.tm_hour, parts.tm_min, parts.tm_sec,
                t.tv_nsec / 1'000'000);
  return buf;
}

}  // namespace

// ---- slow --------------------------------------------------------------------

int run_slow(const Options& o) {
  // The runtime reports steps past its slow floor (10 ms) by itself; a lower
  // threshold needs every step's record (steps__on), which costs more.
  const bool all_steps = o.threshold < std::chrono::milliseconds(10);
  auto src = open_timing(o, TraceModes{true, all_steps, true});
  if (!src.ok()) return fail(src.error());
  Tracer* tracer = src.value().tracer.get();
  install_stop_handlers();
  if (o.format != Format::Json)
    std::cerr << "asynctrace: reporting steps of process " << o.pid << " longer than "
              << short_duration(static_cast<uint64_t>(o.threshold.count()) * 1'000'000ull)
              << " (Ctrl-C to stop)\n";
  StackBook book(tracer);
  SampleBook samples;
  const uint64_t threshold_ns = static_cast<uint64_t>(o.threshold.count()) * 1'000'000ull;
  const auto end = std::chrono::steady_clock::now() + o.duration;
  size_t reported = 0;
  int code = kExitOk;

  auto report = [&](const StepEvent& ev) {
    const std::vector<StepEvent> during = samples.take(ev.task_id, ev.start_ns, ev.dur_ns);
    if (ev.dur_ns < threshold_ns) return;
    ++reported;
    const auto resumed = name_frames(book, book.stack(ev.start_stack));
    const auto suspended = name_frames(book, book.stack(ev.end_stack));
    // Distinct sampled stacks, most frequent first.
    std::map<uint64_t, size_t> counts;
    for (const StepEvent& s : during) counts[s.stack_id]++;
    std::vector<std::pair<size_t, uint64_t>> order;
    for (auto [id, n] : counts) order.push_back({n, id});
    std::sort(order.rbegin(), order.rend());
    const std::string name = ev.task_known ? ev.task_name : "";
    if (o.format == Format::Json) {
      nlohmann::json j = {{"task_id", hex_id(ev.task_id)},
                          {"task_name", sanitize_utf8(name)},
                          {"duration_ns", ev.dur_ns},
                          {"start_ns", ev.start_ns},
                          {"tid", ev.tid},
                          {"completed", ev.completed},
                          {"resumed_stack_id", hex_id(ev.start_stack)},
                          {"suspended_stack_id", hex_id(ev.end_stack)},
                          {"resumed_at", frames_json(resumed)},
                          {"suspended_at", frames_json(suspended)}};
      nlohmann::json smp = nlohmann::json::array();
      for (auto [n, id] : order) smp.push_back({{"count", n}, {"stack", frames_json(name_frames(book, book.stack(id)))}});
      j["samples"] = std::move(smp);
      std::cout << j.dump() << "\n";
    } else {
      std::cout << wall_time() << " slow step: " << short_duration(ev.dur_ns) << " in task "
                << (ev.task_known ? "'" + escape_untrusted(name) + "'" : std::string("<unknown>")) << " ("
                << hex_id(ev.task_id) << ") on thread " << ev.tid << "\n";
      std::cout << "  resumed at:\n";
      if (resumed.empty()) std::cout << "    (its first step, or not known)\n";
      for (const NamedFrame& f : resumed) std::cout << "    " << frame_text(f) << "\n";
      std::cout << "  " << (ev.completed ? "then completed" : "suspended at:") << "\n";
      for (const NamedFrame& f : suspended) std::cout << "    " << frame_text(f) << "\n";
      if (order.empty()) {
        std::cout << "  no sample of the loop thread during the step\n";
      } else {
        std::cout << "  the loop thread while the step ran (" << during.size()
                  << " sample(s), innermost first):\n";
        size_t shown = 0;
        for (auto [n, id] : order) {
          if (++shown > 3) break;
          const auto fs = name_frames(book, book.stack(id));
          for (size_t i = 0; i < fs.size(); ++i)
            std::cout << (i == 0 ? "    " + std::to_string(n) + "x " : std::string(5 + std::to_string(n).size(), ' '))
                      << frame_text(fs[i]) << "\n";
        }
      }
      std::cout << "\n";
    }
    std::cout.flush();
  };

  while (!g_stop) {
    auto st = tracer->poll_events(
        [&](const StepEvent& ev) {
          if (ev.type == StepEvent::Type::Sample) samples.add(ev);
          else report(ev);
        },
        100);
    if (!st.ok()) return fail(st.error());
    if (o.duration.count() > 0 && std::chrono::steady_clock::now() >= end) break;
    if (!process_alive(o.pid)) {
      code = fail(exited(o.pid));
      break;
    }
  }
  warn_partial(book.last_snapshot().counters);
  if (o.format != Format::Json) std::cerr << "asynctrace: " << reported << " slow step(s) reported\n";
  detach_in_background(src.value().tracer);
  return code;
}

// ---- record --------------------------------------------------------------------

namespace {

struct ChainLink {
  std::string name;                 // task name
  std::vector<NamedFrame> frames;   // its coroutine stack, innermost first
};

// For every live task: its awaiters from the root down, each with its stack.
std::unordered_map<uint64_t, std::vector<ChainLink>> await_chains(const TaskGraph& g, StackBook& book) {
  std::unordered_map<uint64_t, std::vector<ChainLink>> out;
  auto link_of = [&](const TaskNode& t) {
    ChainLink l;
    l.name = t.name;
    for (const FrameInfo* f : t.stack) l.frames.push_back({f->funcname, f->filename, f->line, 0});
    return l;
  };
  (void)book;
  for (const TaskNode& t : g.tasks) {
    std::vector<ChainLink> chain;
    std::unordered_set<uint64_t> seen{t.id};
    uint64_t cur = t.id;
    for (int depth = 0; depth < 64; ++depth) {
      const auto aw = g.awaiters_of(cur);
      if (aw.empty() || !seen.insert(aw.front()->awaiter).second) break;
      const TaskNode* a = g.find(aw.front()->awaiter);
      if (!a) break;
      chain.push_back(link_of(*a));
      cur = a->id;
    }
    std::reverse(chain.begin(), chain.end());
    out[t.id] = std::move(chain);
  }
  return out;
}

}  // namespace

namespace {

// Builds the profile while the events arrive, so memory stays bounded by
// distinct stacks and live tasks, not by the number of steps: equal stacks
// with equal labels are merged as they come, timelines stop at kMaxEvents.
class Recorder {
 public:
  static constexpr size_t kMaxEvents = 1'000'000;  // timeline events kept (speedscope)

  Recorder(Profile& p, StackBook& book, uint64_t start_ns) : p_(p), book_(book), start_ns_(start_ns) {}

  void set_chains(std::unordered_map<uint64_t, std::vector<ChainLink>> chains) {
    for (auto& [id, c] : chains) chains_[id] = std::move(c);
    cache_.clear();  // prefixes may have changed
  }
  void name(uint64_t task, const std::string& n) {
    std::string& old = names_[task];
    if (old != n) {
      old = n;
      cache_.clear();
    }
  }
  void sample(const StepEvent& s) {
    samples_.add(s);
    ++nsamples_;
  }
  size_t steps() const { return nsteps_; }
  size_t samples() const { return nsamples_; }
  bool timelines_cut() const { return cut_; }

  void step(const StepEvent& ev) {
    ++nsteps_;
    if (ev.task_known) name(ev.task_id, ev.task_name);
    auto during = samples_.take(ev.task_id, ev.start_ns, ev.dur_ns);
    Last& last = last_[ev.task_id];
    if (during.empty()) {
      // The common case, a step without samples: its stacks were built
      // before for the same (task, stacks), merged by index.
      Cached& c = cached(ev.task_id, ev.end_stack, ev.start_stack, ev.code_id, false);
      c.weight->second += ev.dur_ns;
      if (p_.mode == ProfMode::Wall && last.end_ns && ev.start_ns > last.end_ns)
        cached(ev.task_id, last.end_stack, 0, ev.code_id, true).weight->second += ev.start_ns - last.end_ns;
      last = Last{ev.start_ns + ev.dur_ns, ev.end_stack, ev.code_id, ev.completed};
      if (ev.completed) last_.erase(ev.task_id);
      timeline(ev, c.opened);
      return;
    }
    const std::string name = task_name(ev.task_id);
    const std::string coro = coroutine_of(ev.code_id);
    const auto end_frames = name_frames(book_, book_.stack(ev.end_stack));
    const auto start_frames = name_frames(book_, book_.stack(ev.start_stack));
    const auto& coro_frames = end_frames.empty() ? start_frames : end_frames;
    std::unordered_set<uint64_t> coro_codes;
    for (const auto& f : end_frames) coro_codes.insert(f.code_id);
    for (const auto& f : start_frames) coro_codes.insert(f.code_id);
    const std::vector<uint32_t> base = prefix(ev.task_id, name);
    // A step's time goes to its samples in equal shares.
    const uint64_t share = ev.dur_ns / during.size();
    for (size_t i = 0; i < during.size(); ++i) {
      std::vector<uint32_t> stack = base;
      append(stack, name_frames(book_, book_.stack(during[i].stack_id)), &coro_codes);
      add(std::move(stack), i + 1 == during.size() ? ev.dur_ns - share * (during.size() - 1) : share, name, coro);
    }
    // Wall mode: the time since the task's previous step, suspended where
    // that step left it.
    if (p_.mode == ProfMode::Wall && last.end_ns && ev.start_ns > last.end_ns)
      cached(ev.task_id, last.end_stack, 0, ev.code_id, true).weight->second += ev.start_ns - last.end_ns;
    last = Last{ev.start_ns + ev.dur_ns, ev.end_stack, ev.code_id, ev.completed};
    if (ev.completed) last_.erase(ev.task_id);
    timeline(ev, opened(name, coro_frames));
  }

  // Wall mode: tasks still suspended at the end wait up to the end.
  void finish(uint64_t end_ns) {
    if (p_.mode == ProfMode::Wall) {
      for (const auto& [task, l] : last_) {
        if (l.completed || end_ns <= l.end_ns) continue;
        const std::string name = task_name(task);
        std::vector<uint32_t> stack = prefix(task, name);
        append(stack, name_frames(book_, book_.stack(l.end_stack)), nullptr);
        stack.push_back(p_.frame(ProfFrame::Kind::Await, "awaiting"));
        add(std::move(stack), end_ns - l.end_ns, name, coroutine_of(l.code_id));
      }
    }
    for (auto& [key, weight] : merged_)
      p_.samples.push_back({key.stack, weight, key.task_name, key.coroutine});
    merged_.clear();
  }

 private:
  struct Key {
    std::vector<uint32_t> stack;
    std::string task_name, coroutine;
    bool operator<(const Key& o) const {
      return std::tie(stack, task_name, coroutine) < std::tie(o.stack, o.task_name, o.coroutine);
    }
  };
  struct Last {
    uint64_t end_ns = 0, end_stack = 0, code_id = 0;
    bool completed = false;
  };
  struct Cached {
    std::map<Key, uint64_t>::iterator weight;  // its entry in merged_
    std::vector<uint32_t> opened;              // timeline frames, outermost first
  };
  struct CacheKey {
    uint64_t task, end_stack, start_stack;
    bool await;
    bool operator==(const CacheKey& o) const {
      return task == o.task && end_stack == o.end_stack && start_stack == o.start_stack && await == o.await;
    }
  };
  struct CacheHash {
    size_t operator()(const CacheKey& k) const {
      uint64_t h = k.task * 0x9E3779B97F4A7C15ull ^ k.end_stack ^ (k.start_stack * 0xff51afd7ed558ccdull);
      return static_cast<size_t>(h ^ (h >> 29) ^ k.await);
    }
  };

  // The merged entry for a step (await: a wait) of `task` at these stacks.
  Cached& cached(uint64_t task, uint64_t end_stack, uint64_t start_stack, uint64_t code_id, bool await) {
    const CacheKey key{task, end_stack, start_stack, await};
    if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    if (cache_.size() > 100000) cache_.clear();  // bounded: rebuilt on demand
    const std::string name = task_name(task);
    const auto end_frames = name_frames(book_, book_.stack(end_stack));
    const auto start_frames = await ? std::vector<NamedFrame>{} : name_frames(book_, book_.stack(start_stack));
    const auto& coro_frames = end_frames.empty() ? start_frames : end_frames;
    std::vector<uint32_t> stack = prefix(task, name);
    append(stack, coro_frames, nullptr);
    if (await) stack.push_back(p_.frame(ProfFrame::Kind::Await, "awaiting"));
    auto w = merged_.try_emplace(Key{std::move(stack), name, coroutine_of(code_id)}, 0).first;
    return cache_.emplace(key, Cached{w, opened(name, coro_frames)}).first->second;
  }
  std::vector<uint32_t> opened(const std::string& name, const std::vector<NamedFrame>& coro_frames) {
    std::vector<uint32_t> out{p_.frame(ProfFrame::Kind::Task, name)};
    for (auto f = coro_frames.rbegin(); f != coro_frames.rend(); ++f)
      out.push_back(p_.frame(ProfFrame::Kind::Coroutine, f->func, f->file, f->line));
    return out;
  }

  std::string task_name(uint64_t task) const {
    const auto it = names_.find(task);
    return it == names_.end() ? hex_id(task) : it->second;
  }
  std::string coroutine_of(uint64_t code_id) {
    const CodeInfo* c = code_id ? book_.code(code_id) : nullptr;
    return c ? c->qualname : "";
  }
  // Root-first frames of the task's await chain, then the task itself.
  std::vector<uint32_t> prefix(uint64_t task, const std::string& name) {
    std::vector<uint32_t> out;
    if (auto it = chains_.find(task); it != chains_.end()) {
      for (const ChainLink& l : it->second) {
        out.push_back(p_.frame(ProfFrame::Kind::Task, l.name));
        for (auto f = l.frames.rbegin(); f != l.frames.rend(); ++f)
          out.push_back(p_.frame(ProfFrame::Kind::Coroutine, f->func, f->file, f->line));
      }
    }
    out.push_back(p_.frame(ProfFrame::Kind::Task, name));
    return out;
  }
  // Frames innermost first, appended outermost first; with `coroutines`,
  // frames of other code are plain functions (sampled inside the step).
  void append(std::vector<uint32_t>& stack, const std::vector<NamedFrame>& fs,
              const std::unordered_set<uint64_t>* coroutines) {
    for (auto f = fs.rbegin(); f != fs.rend(); ++f) {
      const bool coro = !coroutines || coroutines->count(f->code_id);
      stack.push_back(p_.frame(coro ? ProfFrame::Kind::Coroutine : ProfFrame::Kind::Function, f->func, f->file, f->line));
    }
  }
  void add(std::vector<uint32_t> stack, uint64_t w, const std::string& name, const std::string& coro) {
    merged_[Key{std::move(stack), name, coro}] += w;
  }
  void timeline(const StepEvent& ev, const std::vector<uint32_t>& opened) {
    const size_t need = 2 * opened.size();
    if (events_ + need > kMaxEvents) {
      cut_ = true;
      return;
    }
    auto [tl, fresh] = timeline_of_.try_emplace(ev.task_id, p_.timelines.size());
    if (fresh) p_.timelines.push_back({ev.task_id, task_name(ev.task_id), {}});
    ProfTimeline& line = p_.timelines[tl->second];
    const uint64_t s = ev.start_ns > start_ns_ ? ev.start_ns - start_ns_ : 0;
    const uint64_t e = std::max(s, ev.start_ns + ev.dur_ns > start_ns_ ? ev.start_ns + ev.dur_ns - start_ns_ : 0);
    if (!line.events.empty() && line.events.back().at_ns > s) return;  // overlaps: skip
    for (uint32_t fr : opened) line.events.push_back({s, fr, true});
    for (auto fr = opened.rbegin(); fr != opened.rend(); ++fr) line.events.push_back({e, *fr, false});
    events_ += need;
  }

  Profile& p_;
  StackBook& book_;
  uint64_t start_ns_;
  SampleBook samples_;
  std::unordered_map<uint64_t, std::vector<ChainLink>> chains_;
  std::unordered_map<uint64_t, std::string> names_;
  std::unordered_map<uint64_t, Last> last_;
  std::unordered_map<uint64_t, size_t> timeline_of_;
  std::map<Key, uint64_t> merged_;
  std::unordered_map<CacheKey, Cached, CacheHash> cache_;
  size_t events_ = 0, nsteps_ = 0, nsamples_ = 0;
  bool cut_ = false;
};

}  // namespace

int run_record(const Options& o) {
  ProfFormat pf = ProfFormat::Folded;
  if (o.prof_format == "speedscope") pf = ProfFormat::Speedscope;
  else if (o.prof_format == "svg") pf = ProfFormat::Svg;
  else if (o.prof_format == "html") pf = ProfFormat::Html;
  else if (o.prof_format == "pprof") pf = ProfFormat::Pprof;
  // The output must be writable before anything is attached.
  std::ofstream file;
  if (o.output != "-") {
    file.open(o.output, std::ios::binary | std::ios::trunc);
    if (!file)
      return fail(Error{kExitUsage, "failed to open output '" + escape_untrusted(o.output) +
                                        "': " + std::strerror(errno)});
  }
  std::ofstream also;
  if (!o.also_pprof.empty()) {
    also.open(o.also_pprof, std::ios::binary | std::ios::trunc);
    if (!also)
      return fail(Error{kExitUsage, "failed to open output '" + escape_untrusted(o.also_pprof) +
                                        "': " + std::strerror(errno)});
  }
  auto src = open_timing(o, TraceModes{true, true, true});
  if (!src.ok()) {
    if (o.output != "-") {
      file.close();
      unlink(o.output.c_str());
    }
    if (also.is_open()) {
      also.close();
      unlink(o.also_pprof.c_str());
    }
    return fail(src.error());
  }
  Tracer* tracer = src.value().tracer.get();
  install_stop_handlers();
  const bool progress = isatty(STDERR_FILENO);
  StackBook book(tracer);
  // Nothing loaded, no replay asked: only read when a code is missing.
  if (auto held = open_pinned(o.pid, nullptr, o.verbose); held.ok() && held.value())
    book.set_holder(std::move(held.value()));
  Profile p;
  p.mode = o.mode == "wall" ? ProfMode::Wall : ProfMode::Cpu;
  p.pid = static_cast<uint32_t>(o.pid);
  p.comm = inspect_process(o.pid).comm;
  const uint64_t start_ns = monotonic_ns();
  p.start_ns = start_ns;
  Recorder rec(p, book, start_ns);
  const auto t0 = std::chrono::steady_clock::now();
  const auto end = t0 + o.duration;
  auto next_look = t0;
  int code = kExitOk;
  // The task graph, every second: await chains and names for the stacks.
  auto look = [&] {
    auto snap = tracer->snapshot();
    if (!snap.ok()) return;
    const TaskGraph g = build_graph(snap.value());
    rec.set_chains(await_chains(g, book));
    for (const TaskNode& t : g.tasks) rec.name(t.id, t.name);
    book.take(std::move(snap.value()));
  };
  while (!g_stop) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_look) {
      look();
      next_look = now + std::chrono::seconds(1);
    }
    auto st = tracer->poll_events(
        [&](const StepEvent& ev) {
          if (ev.type == StepEvent::Type::Sample) rec.sample(ev);
          else rec.step(ev);
        },
        100);
    if (!st.ok()) return fail(st.error());
    if (progress) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "\rrecording pid %d: %.1f / %.1f s, %zu steps, %zu samples  ", o.pid, el,
                   o.duration.count() / 1e3, rec.steps(), rec.samples());
    }
    if (std::chrono::steady_clock::now() >= end) break;
    if (!process_alive(o.pid)) {
      std::cerr << (progress ? "\n" : "") << "asynctrace: process " << o.pid
                << " exited during the recording; writing what was recorded\n";
      code = kExitProcessExited;
      break;
    }
  }
  if (progress) std::fprintf(stderr, "\n");
  const uint64_t end_ns = monotonic_ns();
  p.duration_ns = end_ns - start_ns;
  rec.finish(end_ns);
  std::ostream& out = o.output == "-" ? std::cout : static_cast<std::ostream&>(file);
  write_profile(p, pf, out);
  out.flush();
  if (!out.good()) return fail(Error{kExitInternal, "failed to write output '" + escape_untrusted(o.output) + "'"});
  if (also.is_open()) {
    write_profile(p, ProfFormat::Pprof, also);
    also.flush();
    if (!also.good())
      return fail(Error{kExitInternal, "failed to write output '" + escape_untrusted(o.also_pprof) + "'"});
  }
  if (code == kExitOk) book.refresh(true);
  warn_partial(book.last_snapshot().counters);
  if (rec.timelines_cut())
    std::cerr << "asynctrace: warning: timelines cut at " << Recorder::kMaxEvents
              << " events (speedscope's evented profiles); the sampled profile has every step\n";
  std::cerr << "asynctrace: recorded " << rec.steps() << " step(s), " << rec.samples() << " sample(s) of process "
            << o.pid << " in " << short_duration(p.duration_ns) << " to " << escape_untrusted(o.output) << "\n";
  detach_in_background(src.value().tracer);
  return code;
}

}  // namespace asynctrace

namespace asynctrace {

// ps --long: the ps rows with each task's timing over one second of
// tracing (plus whatever a holder with timing on counted before), and the
// warnings top gives.
int run_ps_long(const Options& o) {
  auto src = open_timing(o, TraceModes{true, false, false});
  if (!src.ok()) return fail(src.error());
  install_stop_handlers();
  TopModel model;
  TopOptions topts;
  topts.stuck_ns = static_cast<uint64_t>(o.stuck.count()) * 1'000'000ull;
  auto first = src.value().tracer->snapshot();
  if (!first.ok()) return fail(first.error());
  (void)model.update(build_graph(first.value()), monotonic_ns(), topts);
  nap(o.interval);
  if (!process_alive(o.pid)) return fail(exited(o.pid));
  auto later = src.value().tracer->snapshot();
  if (!later.ok()) return fail(later.error());
  // The tasks, states and stacks of the first look (just after the
  // runtime's replay: stacks are complete then), the timing of the second.
  Snapshot& snap = first.value();
  std::unordered_map<uint64_t, const TaskRecord*> timed;
  for (const TaskRecord& r : later.value().tasks) timed[r.id] = &r;
  for (TaskRecord& r : snap.tasks)
    if (auto it = timed.find(r.id); it != timed.end()) r.timing = it->second->timing;
  snap.counters = later.value().counters;
  const TaskGraph g = build_graph(snap);
  const TopFrame f = model.update(g, monotonic_ns(), topts);
  warn_partial(g.counters);
  std::unordered_map<uint64_t, const TopRow*> by_id;
  for (const TopRow& r : f.rows) by_id[r.id] = &r;
  std::vector<std::string> warnings = f.warnings;
  if (f.header.created > f.header.completed && g.tasks.size() >= 50 && f.header.created_per_s > f.header.completed_per_s * 1.1)
    warnings.push_back("tasks are created faster than they complete (" + std::to_string(static_cast<int>(f.header.created_per_s)) +
                       "/s vs " + std::to_string(static_cast<int>(f.header.completed_per_s)) + "/s): a task leak?");
  // Per coroutine, busiest first (all tasks of it, short-lived ones included).
  struct CodeRow {
    std::string name, file;
    Timing t;
  };
  std::vector<CodeRow> codes;
  for (const auto& [id, t] : later.value().code_timing) {
    const auto it = snap.code.find(id);
    codes.push_back({it == snap.code.end() ? "<code " + hex_id(id) + ">" : it->second.qualname,
                     it == snap.code.end() ? "" : it->second.filename, t});
  }
  std::sort(codes.begin(), codes.end(), [](const CodeRow& a, const CodeRow& b) { return a.t.busy_ns > b.t.busy_ns; });
  auto hist_json = [](const Timing& t) {
    size_t n = t.hist.size();
    while (n && !t.hist[n - 1]) --n;
    return nlohmann::json(std::vector<uint32_t>(t.hist.begin(), t.hist.begin() + static_cast<long>(n)));
  };
  if (o.format == Format::Json) {
    nlohmann::json j = graph_json(g, false);
    // graph_json lists g.tasks in order.
    for (size_t i = 0; i < g.tasks.size() && i < j["tasks"].size(); ++i) {
      const TaskNode& node = g.tasks[i];
      const auto it = by_id.find(node.id);
      const TopRow* r = it == by_id.end() ? nullptr : it->second;
      j["tasks"][i]["timing"] =
          r && r->timed && node.timing
              ? nlohmann::json{{"steps", r->steps},         {"busy_ns", r->busy_ns},
                               {"sched_ns", r->sched_ns},   {"idle_ns", r->idle_ns},
                               {"longest_ns", r->longest_ns}, {"waiting_ns", r->waiting_ns},
                               {"hist_log2_us", hist_json(*node.timing)}}
              : nlohmann::json(nullptr);
    }
    nlohmann::json cj = nlohmann::json::array();
    for (const CodeRow& c : codes)
      cj.push_back({{"coroutine", sanitize_utf8(c.name)}, {"file", sanitize_utf8(c.file)}, {"steps", c.t.steps},
                    {"busy_ns", c.t.busy_ns}, {"sched_ns", c.t.sched_ns}, {"longest_ns", c.t.max_ns},
                    {"hist_log2_us", hist_json(c.t)}});
    j["coroutines"] = std::move(cj);
    nlohmann::json w = nlohmann::json::array();
    for (const std::string& s : warnings) w.push_back(sanitize_utf8(s));
    j["warnings"] = std::move(w);
    j["header"] = top_json(f)["header"];
    std::cout << j.dump(2) << "\n";
  } else {
    auto line = [](const std::vector<std::pair<std::string, size_t>>& cols) {
      std::string s;
      for (const auto& [text, width] : cols) s += ljust(text, width) + " ";
      while (!s.empty() && s.back() == ' ') s.pop_back();
      return s + "\n";
    };
    std::cout << line({{"tid", 10}, {"task id", 16}, {"task name", 20}, {"state", 8}, {"steps", 7}, {"busy", 9},
                       {"longest", 9}, {"waiting", 9}, {"created by", 15}, {"coroutine stack", 50},
                       {"awaiter chain", 40}, {"awaiter name", 15}, {"awaiter id", 15}});
    std::cout << std::string(220, '-') << "\n";
    for (const PsRow& r : build_ps_rows(g)) {
      const TopRow* t = by_id.count(r.task_id) ? by_id[r.task_id] : nullptr;
      const TaskNode* awaiter = g.find(r.awaiter_id);
      const TaskNode* self = g.find(r.task_id);
      const TaskNode* creator = self && self->parent_id ? g.find(self->parent_id) : nullptr;
      const std::string created_by = creator ? escape_untrusted(creator->name)
                                     : self && self->parent_id ? hex_id(self->parent_id) : "";
      std::cout << line({{std::to_string(r.tid), 10},
                         {hex_id(r.task_id), 16},
                         {escape_untrusted(r.task_name), 20},
                         {t ? t->state : "", 8},
                         {t && t->timed ? std::to_string(t->steps) : "-", 7},
                         {t && t->timed ? short_duration(t->busy_ns) : "-", 9},
                         {t && t->timed ? short_duration(t->longest_ns) : "-", 9},
                         {!t || !t->waiting_ns ? "-" : t->waiting_ns < 500000000ull ? "<0.5s" : short_duration(t->waiting_ns), 9},
                         {created_by, 15},
                         {escape_untrusted(r.coroutine_stack), 50},
                         {escape_untrusted(r.awaiter_chain), 40},
                         {awaiter ? escape_untrusted(awaiter->name) : "", 15},
                         {r.awaiter_id ? hex_id(r.awaiter_id) : "", 15}});
    }
    if (!codes.empty()) {
      std::cout << "\n" << line({{"coroutine", 40}, {"steps", 9}, {"busy", 9}, {"longest", 9}, {"steps by duration", 0}});
      size_t shown = 0;
      for (const CodeRow& c : codes) {
        if (++shown > 10) break;
        std::string dist;
        for (size_t b = 0; b < c.t.hist.size(); ++b) {
          if (!c.t.hist[b]) continue;
          // Bucket b holds [2^b, 2^(b+1)) us; bucket 0 also < 1 us.
          dist += (dist.empty() ? "" : ", ") + std::string(b ? ">=" : "<") +
                  short_duration(b ? (1ull << b) * 1000ull : 2000ull) + " " + std::to_string(c.t.hist[b]);
        }
        std::cout << line({{escape_untrusted(c.name), 40}, {std::to_string(c.t.steps), 9},
                           {short_duration(c.t.busy_ns), 9}, {short_duration(c.t.max_ns), 9}, {dist, 0}});
      }
    }
    if (!warnings.empty()) std::cout << "\n";
    for (const std::string& w : warnings) std::cout << "warning: " << escape_untrusted(w) << "\n";
  }
  std::cout.flush();
  detach_in_background(src.value().tracer);
  return std::cout.good() ? kExitOk : fail(Error{kExitInternal, "failed to write output"});
}

}  // namespace asynctrace
