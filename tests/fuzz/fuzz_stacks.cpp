// SPDX-License-Identifier: Apache-2.0
// Stacks and await graphs: at_task records built from a compact op stream so
// that the fuzzer reaches interesting shapes quickly: ids from a small space
// (await cycles, self edges, tasks awaited by many, frames sharing code ids,
// key/value id mismatches, foreign pids), arbitrary code ids, lines and
// frame flags, huge lengths and counts, and bulk shapes (deep chains, wide
// fans, diamond ladders) of up to 80 tasks, well past the (scaled down)
// forest limits of fuzz_common.h. Then the same decoder
// (user/core/decode.cpp) and pipeline as fuzz_snapshot.
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/decode.h"
#include "fuzz_common.h"

namespace {

constexpr uint32_t kPid = 4242;

// Reads the input front to back; zeros once it runs out. (Simpler to write
// seeds for than libFuzzer's FuzzedDataProvider, which takes integers from the back.)
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  size_t remaining_bytes() const { return static_cast<size_t>(end_ - p_); }
  template <class T>
  T ConsumeIntegral() {
    T v = 0;
    const size_t n = std::min(sizeof v, remaining_bytes());
    if (n) std::memcpy(&v, p_, n);  // little endian, like the kernel's records here
    p_ += n;
    return v;
  }
  template <class T>
  T ConsumeIntegralInRange(T lo, T hi) {
    return lo + ConsumeIntegral<T>() % (hi - lo + 1);
  }
  template <class T>
  std::vector<T> ConsumeBytes(size_t n) {
    n = std::min(n, remaining_bytes());
    std::vector<T> out(p_, p_ + n);
    p_ += n;
    return out;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

uint64_t pick_id(Reader& in) {
  const uint8_t b = in.ConsumeIntegral<uint8_t>();
  if (b < 0xE0) return b % 24;  // 0 = "none" where the ABI says so
  if (b < 0xF0) return 0x7f0000000000ull + (b & 0xF);
  return in.ConsumeIntegral<uint64_t>();
}

uint64_t pick_code(Reader& in) {
  const uint8_t b = in.ConsumeIntegral<uint8_t>();
  return b < 0xF0 ? b % 12 : in.ConsumeIntegral<uint64_t>();
}

uint32_t pick_small32(Reader& in, uint8_t mod) {
  const uint8_t b = in.ConsumeIntegral<uint8_t>();
  return b < 0xF0 ? b % mod : in.ConsumeIntegral<uint32_t>();
}

template <size_t N>
uint32_t fill_string(Reader& in, char (&dst)[N]) {
  const uint32_t len = pick_small32(in, static_cast<uint8_t>(N + 8 > 255 ? 255 : N + 8));
  const auto bytes = in.ConsumeBytes<char>(std::min<size_t>(len, N));
  if (!bytes.empty()) std::memcpy(dst, bytes.data(), bytes.size());
  return len;
}

void add_task(asynctrace::SnapshotDecoder& dec, Reader& in) {
  at_task t{};
  const uint64_t task_id = pick_id(in);
  t.parent_id = pick_id(in);
  t.loop_id = pick_id(in);
  t.coro_code_id = pick_code(in);
  const uint8_t s = in.ConsumeIntegral<uint8_t>();
  t.create_ns = s < 0xF0 ? s : in.ConsumeIntegral<uint64_t>();
  t.tid = 100 + pick_small32(in, 3);
  t.state = pick_small32(in, 4);
  t.awaiting_kind = pick_small32(in, 6);
  t.awaiting_id = pick_id(in);
  const uint8_t mask = in.ConsumeIntegral<uint8_t>();
  for (int i = 0; i < AT_MAX_AWAITERS; ++i) {
    if (!(mask & (1u << i))) continue;
    t.awaited_by[i] = pick_id(in);
    t.awaited_by_kind[i] = in.ConsumeIntegral<uint8_t>() % 6;
  }
  t.flags = in.ConsumeIntegral<uint8_t>() & 0xF;
  t.name_len = fill_string(in, t.name);
  // Its stack: an interned entry keyed by a small id, so tasks share them.
  at_stack st{};
  const uint8_t nf = in.ConsumeIntegral<uint8_t>();
  const uint32_t filled = std::min<uint32_t>(nf % 40, AT_MAX_FRAMES);
  st.nframes = nf < 0xF8 ? nf % 40 : in.ConsumeIntegral<uint32_t>();
  for (uint32_t i = 0; i < filled; ++i) {
    st.frames[i].code_id = pick_code(in);
    st.frames[i].line = pick_small32(in, 200);
    st.frames[i].flags = in.ConsumeIntegral<uint8_t>() % 3;
  }
  t.stack_id = 1 + in.ConsumeIntegral<uint8_t>() % 8;
  t.nframes = static_cast<uint8_t>(filled);
  dec.add_stack({kPid, 0, t.stack_id}, st);
  at_task_key k{kPid, 0, task_id};
  const uint8_t keymode = in.ConsumeIntegral<uint8_t>();
  if (keymode >= 0xF0) k.task_id = pick_id(in);  // key and value disagree
  if (keymode == 0xFF) k.pid = kPid + 1;           // another process's entry
  dec.add_task(k, t);
}

void add_code(asynctrace::SnapshotDecoder& dec, Reader& in) {
  at_code c{};
  at_code_key k{kPid, 0, pick_code(in)};
  c.firstlineno = pick_small32(in, 200);
  c.qualname_len = fill_string(in, c.qualname);
  c.filename_len = fill_string(in, c.filename);
  dec.add_code(k, c);
}

void add_proc(asynctrace::SnapshotDecoder& dec, Reader& in) {
  at_proc p{};
  p.replay_gen = in.ConsumeIntegral<uint64_t>();
  p.replay_tasks = in.ConsumeIntegral<uint64_t>();
  p.events = in.ConsumeIntegral<uint64_t>();
  p.drop_tasks_full = in.ConsumeIntegral<uint64_t>();
  p.drop_codes_full = in.ConsumeIntegral<uint64_t>();
  p.drop_edges_full = in.ConsumeIntegral<uint64_t>();
  p.unknown_task = in.ConsumeIntegral<uint64_t>();
  p.drop_runtime = in.ConsumeIntegral<uint64_t>();
  p.bad_records = in.ConsumeIntegral<uint64_t>();
  p.drop_stacks_full = in.ConsumeIntegral<uint64_t>();
  p.replay_active = in.ConsumeIntegral<uint64_t>();
  dec.set_proc(p);
}

// Many tasks in one op: deep chains, wide fans, diamond ladders. At most
// kBulkTasks per input in all: nine bytes must not buy thousands of tasks
// (the fuzzer would spend its time rendering them, not exploring).
constexpr uint32_t kBulkTasks = 160;

void add_bulk(asynctrace::SnapshotDecoder& dec, Reader& in, uint32_t& budget) {
  const uint32_t n = std::min(budget, in.ConsumeIntegralInRange<uint32_t>(1, 80));
  budget -= n;
  const uint8_t shape = in.ConsumeIntegral<uint8_t>() % 4;
  const uint32_t nframes = in.ConsumeIntegral<uint8_t>() % (AT_MAX_FRAMES + 1);
  const uint64_t base = 1000 + (pick_id(in) << 16);
  const uint64_t code = pick_code(in);
  for (uint32_t s = 0; s < 7; ++s) {  // the stacks the bulk tasks share
    at_stack st{};
    st.nframes = nframes;
    for (uint32_t f = 0; f < nframes; ++f) st.frames[f] = {code + f % 3, f + s, 0};
    dec.add_stack({kPid, 0, base + 0x8000 + s}, st);
  }
  for (uint32_t i = 0; i < n; ++i) {
    at_task t{};
    const uint64_t task_id = base + i;
    t.create_ns = 1000 + i;
    t.tid = 100;
    t.state = AT_STATE_SUSPENDED;
    t.name_len = static_cast<uint32_t>(std::snprintf(t.name, sizeof t.name, "bulk-%u", i));
    t.nframes = static_cast<uint8_t>(nframes);
    t.stack_id = base + 0x8000 + i % 7;
    switch (shape) {
      case 0:  // chain: i awaits i + 1 (the last one awaits the first: a cycle)
        t.awaiting_kind = 1;
        t.awaiting_id = base + (i + 1) % n;
        break;
      case 1:  // gather chain: i awaited by i - 1
        if (i) t.awaited_by[0] = base + i - 1;
        t.awaited_by_kind[0] = 1;
        break;
      case 2:  // fan: everyone awaited by task 0 (and by itself)
        t.awaited_by[0] = base;
        t.awaited_by_kind[0] = 2;
        break;
      case 3:  // ladder: i awaited by i - 1 and i - 2 (shared subtrees)
        if (i >= 1) t.awaited_by[0] = base + i - 1;
        if (i >= 2) t.awaited_by[1] = base + i - 2;
        break;
    }
    dec.add_task(at_task_key{kPid, 0, task_id}, t);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  asynctrace::SnapshotDecoder dec(kPid);
  uint32_t bulk_budget = kBulkTasks;
  while (in.remaining_bytes()) {
    switch (in.ConsumeIntegral<uint8_t>() % 8) {
      case 0: case 1: case 2: case 3: add_task(dec, in); break;
      case 4: case 5: add_code(dec, in); break;
      case 6: add_proc(dec, in); break;
      case 7: add_bulk(dec, in, bulk_budget); break;
    }
  }
  fuzzcheck::check_pipeline(std::move(dec).finish());
  return 0;
}
