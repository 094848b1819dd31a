// SPDX-License-Identifier: Apache-2.0
// Map snapshots: raw bytes read as the records of bpf/abi.h, exactly as
// kernel/maps.cpp's read_maps() receives them from the kernel, decoded by
// SnapshotDecoder (user/core/decode.cpp) and rendered by every view.
//
// Input: u32 pid, then records, each a tag byte followed by the raw record
// (a record cut by the end of the input is zero-padded):
//   tag % 4 == 0: at_task_key + at_task   (tasks map entry)
//   tag % 4 == 1: at_code_key + at_code   (codes map entry)
//   tag % 4 == 2: at_proc                 (procs[pid])
//   tag % 4 == 3: at_stack_key + at_stack (stacks map entry), key.pid forced
//                 to pid; the next task entry points at it (stack_id), as
//                 the kernel writes them
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/decode.h"
#include "fuzz_common.h"

namespace {

template <class T>
T take(const uint8_t*& p, const uint8_t* end) {
  T v;
  std::memset(&v, 0, sizeof v);
  const size_t n = std::min<size_t>(sizeof v, static_cast<size_t>(end - p));
  std::memcpy(&v, p, n);
  p += n;
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace asynctrace;
  const uint8_t* p = data;
  const uint8_t* const end = data + size;
  const uint32_t pid = take<uint32_t>(p, end);
  SnapshotDecoder dec(pid);
  if (size % 2) dec.allow_repeats();
  uint64_t last_stack = 0;
  while (p < end) {
    const uint8_t tag = *p++;
    switch (tag % 4) {
      case 0: {
        const auto k = take<at_task_key>(p, end);
        auto t = take<at_task>(p, end);
        if (last_stack && (tag & 0x80)) t.stack_id = last_stack;
        dec.add_task(k, t);
        break;
      }
      case 1: {
        const auto k = take<at_code_key>(p, end);
        const auto c = take<at_code>(p, end);
        dec.add_code(k, c);
        break;
      }
      case 2:
        dec.set_proc(take<at_proc>(p, end));
        break;
      case 3: {
        auto k = take<at_stack_key>(p, end);
        const auto s = take<at_stack>(p, end);
        k.pid = pid;
        last_stack = k.stack_id;
        dec.add_stack(k, s);
        break;
      }
    }
  }
  const Snapshot snap = std::move(dec).finish();

  // Decoder invariants: strings never longer than the kernel's buffers,
  // frames within AT_MAX_FRAMES, tasks by seq.
  for (size_t i = 0; i < snap.tasks.size(); ++i) {
    const TaskRecord& t = snap.tasks[i];
    FUZZ_CHECK(t.name.size() <= AT_NAME_LEN, t.name);
    FUZZ_CHECK(t.frames.size() <= AT_MAX_FRAMES, "");
    FUZZ_CHECK(t.awaited_by.size() <= AT_MAX_AWAITERS, "");
    for (const auto& a : t.awaited_by) FUZZ_CHECK(a.task_id != 0, "");
    if (i) FUZZ_CHECK(snap.tasks[i - 1].seq <= t.seq, "");
  }
  for (const auto& [id, c] : snap.code) {
    FUZZ_CHECK(c.qualname.size() <= AT_QUALNAME_LEN && c.filename.size() <= AT_FILENAME_LEN, c.qualname);
  }
  fuzzcheck::check_pipeline(snap);
  return 0;
}
