// SPDX-License-Identifier: Apache-2.0
// Step and sample events -> Profile, while they arrive (record, the agent's
// periodic profiles through it): stacks named through a StackSource, steps
// merged by stack and labels, await chains as prefixes, wall time of
// suspended tasks, speedscope timelines. Includes core/ and profile/ only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/escape.h"
#include "core/model.h"
#include "core/snapshot.h"
#include "profile/profile.h"

namespace asynctrace {

// Resolves the stack and code ids of events (the tracer's maps, in cmd/).
class StackSource {
 public:
  virtual ~StackSource() = default;
  virtual const StackInfo* stack(uint64_t id) = 0;  // null if unknown
  virtual const CodeInfo* code(uint64_t id) = 0;    // null if unknown
};

struct NamedFrame {
  std::string func, file;
  uint32_t line = 0;
  uint64_t code_id = 0;
};

// The frames of `st` (innermost first), named by `book`; "<code 0x..>" for
// codes it does not know.
std::vector<NamedFrame> name_frames(StackSource& book, const StackInfo* st);

// One task. Task ids are object addresses, reused once a task dies; the
// generation (the kernel's create_ns for that incarnation, StepEvent::task_gen,
// TaskNode::create_ns) tells a new task at a dead one's address from the dead
// one. 0: the tracer did not know the task.
struct TaskKey {
  uint64_t id = 0, gen = 0;
  bool operator==(const TaskKey& o) const { return id == o.id && gen == o.gen; }
};
struct TaskKeyHash {
  size_t operator()(const TaskKey& k) const {
    const uint64_t h = k.id * 0x9E3779B97F4A7C15ull ^ (k.gen * 0xff51afd7ed558ccdull);
    return static_cast<size_t>(h ^ (h >> 29));
  }
};
inline TaskKey task_key(const StepEvent& e) { return {e.task_id, e.task_gen}; }

// Samples taken during recent steps, per task (they arrive before their step).
class SampleBook {
 public:
  void add(const StepEvent& s) {
    auto& q = by_task_[task_key(s)];
    q.push_back(s);
    if (q.size() > 4096) q.pop_front();
  }
  // The samples of the step [start, start + dur] of `task`, removed.
  std::vector<StepEvent> take(TaskKey task, uint64_t start, uint64_t dur) {
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
  // The samples of `step`; the task's last step forgets its leftovers.
  std::vector<StepEvent> take(const StepEvent& step) {
    auto out = take(task_key(step), step.start_ns, step.dur_ns);
    if (step.completed) by_task_.erase(task_key(step));
    return out;
  }

 private:
  std::unordered_map<TaskKey, std::deque<StepEvent>, TaskKeyHash> by_task_;
};

struct ChainLink {
  std::string name;                 // task name
  std::string coroutine;            // its coroutine's qualname ("" if unknown)
  std::vector<NamedFrame> frames;   // its coroutine stack, innermost first
};

// What one read of the task graph says about a live task.
struct GraphTask {
  ChainLink self;                // the task: name, coroutine, where it was
  std::vector<ChainLink> chain;  // its awaiters from the root down, each with its stack
};
using GraphTasks = std::unordered_map<TaskKey, GraphTask, TaskKeyHash>;

// Every live task of `g`, keyed by (id, create_ns).
GraphTasks graph_tasks(const TaskGraph& g);

// Builds the profile while the events arrive, so memory stays bounded by
// distinct stacks and live tasks, not by the number of steps: equal stacks
// with equal labels are merged as they come, timelines stop at kMaxEvents.
class Recorder {
 public:
  static constexpr size_t kMaxEvents = 1'000'000;  // timeline events kept (speedscope)

  Recorder(Profile& p, StackSource& book, uint64_t start_ns) : p_(p), book_(book), start_ns_(start_ns) {}

  // A new read of the task graph (about once a second). Only this read and
  // the one before are kept: memory stays bounded by live tasks, and a task
  // that was live at either read still finds its chain.
  void set_graph(GraphTasks g) {
    prev_ = std::move(cur_);
    cur_ = std::move(g);
    cache_.clear();  // prefixes may have changed
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
    const TaskKey task = task_key(ev);
    if (ev.task_known) name(task, ev.task_name);
    if (ev.awaiter_id && ev.awaiter_gen) awaited_by(task, TaskKey{ev.awaiter_id, ev.awaiter_gen});
    auto during = samples_.take(ev);
    Last& last = last_[task];
    if (during.empty()) {
      // The common case, a step without samples: its stacks were built
      // before for the same (task, stacks), merged by index.
      Cached& c = cached(task, ev.end_stack, ev.start_stack, ev.code_id, false);
      c.weight->second += ev.dur_ns;
      if (p_.mode == ProfMode::Wall && last.end_ns && ev.start_ns > last.end_ns)
        cached(task, last.end_stack, 0, ev.code_id, true).weight->second += ev.start_ns - last.end_ns;
      timeline(ev, c.opened);
      done(task, ev);
      return;
    }
    const std::string coro = coroutine_of(ev.code_id);
    const std::string label = task_label(task, coro);
    const auto end_frames = name_frames(book_, book_.stack(ev.end_stack));
    const auto start_frames = name_frames(book_, book_.stack(ev.start_stack));
    const auto& coro_frames = end_frames.empty() ? start_frames : end_frames;
    std::unordered_set<uint64_t> coro_codes;
    for (const auto& f : end_frames) coro_codes.insert(f.code_id);
    for (const auto& f : start_frames) coro_codes.insert(f.code_id);
    const std::vector<uint32_t> base = prefix(task, label);
    // A step's time goes to its samples in equal shares.
    const uint64_t share = ev.dur_ns / during.size();
    for (size_t i = 0; i < during.size(); ++i) {
      std::vector<uint32_t> stack = base;
      append(stack, name_frames(book_, book_.stack(during[i].stack_id)), &coro_codes);
      add(std::move(stack), i + 1 == during.size() ? ev.dur_ns - share * (during.size() - 1) : share, label, coro);
    }
    // Wall mode: the time since the task's previous step, suspended where
    // that step left it.
    if (p_.mode == ProfMode::Wall && last.end_ns && ev.start_ns > last.end_ns)
      cached(task, last.end_stack, 0, ev.code_id, true).weight->second += ev.start_ns - last.end_ns;
    timeline(ev, opened(label, coro_frames));
    done(task, ev);
  }

  // Wall mode: tasks still suspended at the end wait up to the end.
  void finish(uint64_t end_ns) {
    if (p_.mode == ProfMode::Wall) {
      for (const auto& [task, l] : last_) {
        if (l.completed || end_ns <= l.end_ns) continue;
        const std::string coro = coroutine_of(l.code_id);
        const std::string label = task_label(task, coro);
        std::vector<uint32_t> stack = prefix(task, label);
        append(stack, name_frames(book_, book_.stack(l.end_stack)), nullptr);
        stack.push_back(p_.frame(ProfFrame::Kind::Await, "awaiting"));
        add(std::move(stack), end_ns - l.end_ns, label, coro);
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
    TaskKey task;
    uint64_t end_stack, start_stack;
    bool await;
    bool operator==(const CacheKey& o) const {
      return task == o.task && end_stack == o.end_stack && start_stack == o.start_stack && await == o.await;
    }
  };
  struct CacheHash {
    size_t operator()(const CacheKey& k) const {
      uint64_t h = TaskKeyHash{}(k.task) ^ k.end_stack ^ (k.start_stack * 0xff51afd7ed558ccdull);
      return static_cast<size_t>(h ^ (h >> 29) ^ k.await);
    }
  };

  void name(TaskKey task, const std::string& n) {
    std::string& old = names_[task];
    if (old != n) {
      old = n;
      cache_.clear();
    }
  }
  void awaited_by(TaskKey task, TaskKey awaiter) {
    auto [it, fresh] = awaiter_.try_emplace(task, awaiter);
    if (!fresh && !(it->second == awaiter)) {
      it->second = awaiter;
      cache_.clear();
    }
  }
  // After a step of `task`: where it was left (wall mode, and where its
  // awaited tasks see it wait), and forgetting a completed task, whose
  // address the next task may take.
  void done(TaskKey task, const StepEvent& ev) {
    last_[task] = Last{ev.start_ns + ev.dur_ns, ev.end_stack, ev.code_id, ev.completed};
    if (!ev.completed) return;
    last_.erase(task);
    names_.erase(task);
    awaiter_.erase(task);
  }

  // The merged entry for a step (await: a wait) of `task` at these stacks.
  Cached& cached(TaskKey task, uint64_t end_stack, uint64_t start_stack, uint64_t code_id, bool await) {
    const CacheKey key{task, end_stack, start_stack, await};
    if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    if (cache_.size() > 100000) cache_.clear();  // bounded: rebuilt on demand
    const std::string coro = coroutine_of(code_id);
    const std::string name = task_label(task, coro);
    const auto end_frames = name_frames(book_, book_.stack(end_stack));
    const auto start_frames = await ? std::vector<NamedFrame>{} : name_frames(book_, book_.stack(start_stack));
    const auto& coro_frames = end_frames.empty() ? start_frames : end_frames;
    std::vector<uint32_t> stack = prefix(task, name);
    append(stack, coro_frames, nullptr);
    if (await) stack.push_back(p_.frame(ProfFrame::Kind::Await, "awaiting"));
    auto w = merged_.try_emplace(Key{std::move(stack), name, coro}, 0).first;
    return cache_.emplace(key, Cached{w, opened(name, coro_frames)}).first->second;
  }
  std::vector<uint32_t> opened(const std::string& name, const std::vector<NamedFrame>& coro_frames) {
    std::vector<uint32_t> out{p_.frame(ProfFrame::Kind::Task, name)};
    for (auto f = coro_frames.rbegin(); f != coro_frames.rend(); ++f)
      out.push_back(coroutine_frame(*f));
    return out;
  }
  uint32_t coroutine_frame(const NamedFrame& f) {
    return p_.frame(ProfFrame::Kind::Coroutine, f.func, f.file, p_.lines ? f.line : 0);
  }

  // The task's name: from its events, else from a graph read, else its id.
  std::string task_name(TaskKey task) const {
    const std::string n = known_name(task);
    return n.empty() ? hex_id(task.id) : n;
  }
  std::string known_name(TaskKey task) const {
    if (const auto it = names_.find(task); it != names_.end()) return it->second;
    if (const GraphTask* t = graph_task(task)) return t->self.name;
    return "";
  }
  // Seen by its own events or a graph read: an awaiter worth drawing.
  bool known(TaskKey task) const { return last_.count(task) || names_.count(task) || graph_task(task); }
  const GraphTask* graph_task(TaskKey task) const {
    if (const auto it = cur_.find(task); it != cur_.end()) return &it->second;
    if (const auto it = prev_.find(task); it != prev_.end()) return &it->second;
    return nullptr;
  }
  // A task's frame as p_.grouping names it ("" name: not known).
  std::string group_label(const std::string& name, const std::string& coroutine, uint64_t id) const {
    switch (p_.grouping) {
      case TaskGrouping::Task:
        return name.empty() ? hex_id(id) : name;
      case TaskGrouping::Coroutine:
        if (!coroutine.empty()) return coroutine;
        break;
      case TaskGrouping::Name:
        break;
    }
    // Not its id: an address, folded or not, would split or fake a group.
    return name.empty() ? "<unnamed>" : fold_digits(name);
  }
  std::string task_label(TaskKey task, const std::string& coroutine) const {
    return group_label(known_name(task), coroutine, task.id);
  }
  std::string coroutine_of(uint64_t code_id) {
    const CodeInfo* c = code_id ? book_.code(code_id) : nullptr;
    return c ? c->qualname : "";
  }

  // Root-first frames of the task's await chain, then the task itself.
  std::vector<uint32_t> prefix(TaskKey task, const std::string& label) {
    std::vector<uint32_t> out;
    ancestors(task, out, 0);
    out.push_back(p_.frame(ProfFrame::Kind::Task, label));
    return out;
  }
  // The tasks awaiting `task`, root first, each as its task frame and the
  // stack it waits at. The awaiter the task's own events name (the kernel's
  // entry of this very task) comes first; else the chain a graph read saw
  // for this very task (never another's at the same address); else none.
  void ancestors(TaskKey task, std::vector<uint32_t>& out, int depth) {
    if (const auto aw = awaiter_.find(task); aw != awaiter_.end() && depth < 64 && known(aw->second)) {
      const TaskKey a = aw->second;
      ancestors(a, out, depth + 1);
      awaiter_link(a, out);
      return;
    }
    if (const GraphTask* t = graph_task(task)) {
      for (const ChainLink& l : t->chain) {
        out.push_back(p_.frame(ProfFrame::Kind::Task, group_label(l.name, l.coroutine, 0)));
        for (auto f = l.frames.rbegin(); f != l.frames.rend(); ++f) out.push_back(coroutine_frame(*f));
      }
    }
  }
  // An awaiter's frames: where its last step left it, else where the last
  // graph reads saw it.
  void awaiter_link(TaskKey a, std::vector<uint32_t>& out) {
    const GraphTask* g = graph_task(a);
    const auto l = last_.find(a);
    const bool stepped = l != last_.end() && l->second.end_stack;
    const std::string coro = stepped ? coroutine_of(l->second.code_id) : g ? g->self.coroutine : "";
    out.push_back(p_.frame(ProfFrame::Kind::Task, task_label(a, coro)));
    const std::vector<NamedFrame> fs =
        stepped ? name_frames(book_, book_.stack(l->second.end_stack)) : g ? g->self.frames : std::vector<NamedFrame>{};
    for (auto f = fs.rbegin(); f != fs.rend(); ++f) out.push_back(coroutine_frame(*f));
  }
  // Frames innermost first, appended outermost first; with `coroutines`,
  // frames of other code are plain functions (sampled inside the step).
  void append(std::vector<uint32_t>& stack, const std::vector<NamedFrame>& fs,
              const std::unordered_set<uint64_t>* coroutines) {
    for (auto f = fs.rbegin(); f != fs.rend(); ++f) {
      const bool coro = !coroutines || coroutines->count(f->code_id);
      stack.push_back(p_.frame(coro ? ProfFrame::Kind::Coroutine : ProfFrame::Kind::Function, f->func, f->file,
                               p_.lines ? f->line : 0));
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
    auto [tl, fresh] = timeline_of_.try_emplace(task_key(ev), p_.timelines.size());
    if (fresh) p_.timelines.push_back({ev.task_id, task_name(task_key(ev)), {}});
    ProfTimeline& line = p_.timelines[tl->second];
    const uint64_t s = ev.start_ns > start_ns_ ? ev.start_ns - start_ns_ : 0;
    const uint64_t e = std::max(s, ev.start_ns + ev.dur_ns > start_ns_ ? ev.start_ns + ev.dur_ns - start_ns_ : 0);
    if (!line.events.empty() && line.events.back().at_ns > s) return;  // overlaps: skip
    for (uint32_t fr : opened) line.events.push_back({s, fr, true});
    for (auto fr = opened.rbegin(); fr != opened.rend(); ++fr) line.events.push_back({e, *fr, false});
    events_ += need;
  }

  Profile& p_;
  StackSource& book_;
  uint64_t start_ns_;
  SampleBook samples_;
  GraphTasks cur_, prev_;  // the last two graph reads
  std::unordered_map<TaskKey, std::string, TaskKeyHash> names_;  // from events, until the task completes
  std::unordered_map<TaskKey, TaskKey, TaskKeyHash> awaiter_;     // from events, until the task completes
  std::unordered_map<TaskKey, Last, TaskKeyHash> last_;
  std::unordered_map<TaskKey, size_t, TaskKeyHash> timeline_of_;
  std::map<Key, uint64_t> merged_;
  std::unordered_map<CacheKey, Cached, CacheHash> cache_;
  size_t events_ = 0, nsteps_ = 0, nsamples_ = 0;
  bool cut_ = false;
};

}  // namespace asynctrace
