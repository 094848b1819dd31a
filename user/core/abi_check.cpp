// SPDX-License-Identifier: Apache-2.0
// The layouts the kernel side and the tool share are fixed: the record
// layouts a runtime hands a tracer (include/asynctrace/records.h) and the map
// keys and values (bpf/abi.h). A change in either breaks decoding silently,
// so the compiler checks the size and the offset of every field here. An
// intended change edits these numbers together with the layout (and, for the
// records, ASYNCTRACE_ABI_VERSION and docs/probes.md).
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "abi.h"
#include "asynctrace/probes.h"
#include "asynctrace/stack_hash.h"

#define AT_FIELD(type, field, off, size)                                  \
  static_assert(offsetof(type, field) == (off), #type "." #field " offset"); \
  static_assert(sizeof(((type*)nullptr)->field) == (size), #type "." #field " size")

// records.h's fixed-width types are <stdint.h>'s.
static_assert(std::is_same_v<asynctrace_u8, uint8_t> && std::is_same_v<asynctrace_u16, uint16_t> &&
              std::is_same_v<asynctrace_u32, uint32_t> && std::is_same_v<asynctrace_u64, uint64_t>);

// ---- include/asynctrace/records.h: what a runtime writes ----
static_assert(sizeof(struct asynctrace_frame) == 16);
AT_FIELD(struct asynctrace_frame, code_id, 0, 8);
AT_FIELD(struct asynctrace_frame, line, 8, 4);
AT_FIELD(struct asynctrace_frame, flags, 12, 4);

static_assert(sizeof(struct asynctrace_rec) == 32);
AT_FIELD(struct asynctrace_rec, type, 0, 1);
AT_FIELD(struct asynctrace_rec, kind, 1, 1);
AT_FIELD(struct asynctrace_rec, nslots, 2, 2);
AT_FIELD(struct asynctrace_rec, len, 4, 4);
AT_FIELD(struct asynctrace_rec, a, 8, 8);
AT_FIELD(struct asynctrace_rec, b, 16, 8);
AT_FIELD(struct asynctrace_rec, c, 24, 8);

static_assert(sizeof(struct asynctrace_rec_create) == 32);
AT_FIELD(struct asynctrace_rec_create, code_id, 0, 8);
AT_FIELD(struct asynctrace_rec_create, tid, 8, 4);
AT_FIELD(struct asynctrace_rec_create, kept, 12, 4);
AT_FIELD(struct asynctrace_rec_create, edge_awaiter, 16, 8);
AT_FIELD(struct asynctrace_rec_create, edge_kind, 24, 4);
AT_FIELD(struct asynctrace_rec_create, reserved, 28, 4);

static_assert(sizeof(struct asynctrace_rec_timing) == 32);
AT_FIELD(struct asynctrace_rec_timing, max_ns, 0, 8);
AT_FIELD(struct asynctrace_rec_timing, last_end_ns, 8, 8);
AT_FIELD(struct asynctrace_rec_timing, task_code, 16, 8);
AT_FIELD(struct asynctrace_rec_timing, reserved, 24, 8);

static_assert(sizeof(struct asynctrace_rec_loop) == 32);
AT_FIELD(struct asynctrace_rec_loop, busy_ns, 0, 8);
AT_FIELD(struct asynctrace_rec_loop, max_step_ns, 8, 8);
AT_FIELD(struct asynctrace_rec_loop, at_ns, 16, 8);
AT_FIELD(struct asynctrace_rec_loop, since_ns, 24, 8);

static_assert(sizeof(struct asynctrace_rec_step_timed) == 32);
AT_FIELD(struct asynctrace_rec_step_timed, start_stack, 0, 8);
AT_FIELD(struct asynctrace_rec_step_timed, end_stack, 8, 8);
AT_FIELD(struct asynctrace_rec_step_timed, nsamples, 16, 4);
AT_FIELD(struct asynctrace_rec_step_timed, reserved, 20, 4);
AT_FIELD(struct asynctrace_rec_step_timed, task_code, 24, 8);

// Every view of a slot is the whole slot, from its start.
static_assert(sizeof(union asynctrace_slot) == ASYNCTRACE_SLOT_SIZE && ASYNCTRACE_SLOT_SIZE == 32);
static_assert(alignof(union asynctrace_slot) == 8);
AT_FIELD(union asynctrace_slot, hdr, 0, 32);
AT_FIELD(union asynctrace_slot, create, 0, 32);
AT_FIELD(union asynctrace_slot, frames, 0, 32);
AT_FIELD(union asynctrace_slot, timing, 0, 32);
AT_FIELD(union asynctrace_slot, hist, 0, ASYNCTRACE_HIST_BUCKETS);
AT_FIELD(union asynctrace_slot, loop, 0, 32);
AT_FIELD(union asynctrace_slot, step_timed, 0, 32);
AT_FIELD(union asynctrace_slot, bytes, 0, 32);

static_assert(ASYNCTRACE_MAX_FRAMES == 32 && ASYNCTRACE_HIST_BUCKETS == 32);
static_assert(ASYNCTRACE_REC_NAME_MAX == 64 && ASYNCTRACE_REC_MAX_SLOTS == 18);
// The largest record (STACK or SAMPLE with every frame) fits in its slots.
static_assert(1 + (ASYNCTRACE_MAX_FRAMES + 1) / 2 < ASYNCTRACE_REC_MAX_SLOTS);
static_assert(ASYNCTRACE_REC_PAD == 0 && ASYNCTRACE_REC_CREATE == 1 && ASYNCTRACE_REC_STEP == 2 &&
              ASYNCTRACE_REC_COMPLETE == 3 && ASYNCTRACE_REC_EDGE_ADD == 4 && ASYNCTRACE_REC_EDGE_REMOVE == 5 &&
              ASYNCTRACE_REC_STACK == 6 && ASYNCTRACE_REC_RESUME == 7 && ASYNCTRACE_REC_TIMING == 8 &&
              ASYNCTRACE_REC_CODE == 9 && ASYNCTRACE_REC_LOOP == 10 && ASYNCTRACE_REC_STEP_TIMED == 11 &&
              ASYNCTRACE_REC_SAMPLE == 12);
static_assert(ASYNCTRACE_STACK_HASH_BASIS == 0xcbf29ce484222325ULL && ASYNCTRACE_STACK_HASH_PRIME == 0x100000001b3ULL);

// ---- bpf/abi.h: the maps ----
static_assert(AT_MAX_FRAMES == ASYNCTRACE_MAX_FRAMES && AT_HIST_BUCKETS == ASYNCTRACE_HIST_BUCKETS);

static_assert(sizeof(struct at_task_key) == 16);
AT_FIELD(struct at_task_key, pid, 0, 4);
AT_FIELD(struct at_task_key, pad, 4, 4);
AT_FIELD(struct at_task_key, task_id, 8, 8);

// timing_entry() in bpf/timing.bpf.h uses one key type for both timing maps.
static_assert(sizeof(struct at_code_key) == 16);
AT_FIELD(struct at_code_key, pid, 0, 4);
AT_FIELD(struct at_code_key, pad, 4, 4);
AT_FIELD(struct at_code_key, code_id, 8, 8);

static_assert(sizeof(struct at_stack_key) == 16);
AT_FIELD(struct at_stack_key, pid, 0, 4);
AT_FIELD(struct at_stack_key, pad, 4, 4);
AT_FIELD(struct at_stack_key, stack_id, 8, 8);

static_assert(sizeof(struct at_task) == 104 + AT_NAME_LEN);
AT_FIELD(struct at_task, parent_id, 0, 8);
AT_FIELD(struct at_task, loop_id, 8, 8);
AT_FIELD(struct at_task, coro_code_id, 16, 8);
AT_FIELD(struct at_task, create_ns, 24, 8);
AT_FIELD(struct at_task, awaiting_id, 32, 8);
AT_FIELD(struct at_task, stack_id, 40, 8);
AT_FIELD(struct at_task, awaited_by, 48, 8 * AT_MAX_AWAITERS);
AT_FIELD(struct at_task, awaited_by_kind, 80, AT_MAX_AWAITERS);
AT_FIELD(struct at_task, tid, 84, 4);
AT_FIELD(struct at_task, name_len, 88, 4);
AT_FIELD(struct at_task, state, 92, 1);
AT_FIELD(struct at_task, awaiting_kind, 93, 1);
AT_FIELD(struct at_task, nframes, 94, 1);
AT_FIELD(struct at_task, flags, 95, 1);
AT_FIELD(struct at_task, name, 96, AT_NAME_LEN);
AT_FIELD(struct at_task, awaiter_id, 96 + AT_NAME_LEN, 8);

static_assert(sizeof(struct at_stack) == 16 + 16 * AT_MAX_FRAMES);
AT_FIELD(struct at_stack, nframes, 0, 4);
AT_FIELD(struct at_stack, pad, 4, 4);
AT_FIELD(struct at_stack, gen, 8, 8);
AT_FIELD(struct at_stack, frames, 16, 16 * AT_MAX_FRAMES);

static_assert(sizeof(struct at_code) == 16 + AT_QUALNAME_LEN + AT_FILENAME_LEN);
AT_FIELD(struct at_code, qualname_len, 0, 4);
AT_FIELD(struct at_code, filename_len, 4, 4);
AT_FIELD(struct at_code, firstlineno, 8, 4);
AT_FIELD(struct at_code, pad, 12, 4);
AT_FIELD(struct at_code, qualname, 16, AT_QUALNAME_LEN);
AT_FIELD(struct at_code, filename, 16 + AT_QUALNAME_LEN, AT_FILENAME_LEN);

static_assert(sizeof(struct at_proc) == 88 + 8 * 8 + 16 * AT_MAX_SECS);
AT_FIELD(struct at_proc, replay_gen, 0, 8);
AT_FIELD(struct at_proc, replay_tasks, 8, 8);
AT_FIELD(struct at_proc, events, 16, 8);
AT_FIELD(struct at_proc, drop_tasks_full, 24, 8);
AT_FIELD(struct at_proc, drop_codes_full, 32, 8);
AT_FIELD(struct at_proc, drop_edges_full, 40, 8);
AT_FIELD(struct at_proc, unknown_task, 48, 8);
AT_FIELD(struct at_proc, drop_runtime, 56, 8);
AT_FIELD(struct at_proc, bad_records, 64, 8);
AT_FIELD(struct at_proc, drop_stacks_full, 72, 8);
AT_FIELD(struct at_proc, replay_active, 80, 8);
AT_FIELD(struct at_proc, timing_since_ns, 88, 8);
AT_FIELD(struct at_proc, loop_at_ns, 96, 8);
AT_FIELD(struct at_proc, tasks_created, 104, 8);
AT_FIELD(struct at_proc, tasks_completed, 112, 8);
AT_FIELD(struct at_proc, steps, 120, 8);
AT_FIELD(struct at_proc, busy_ns, 128, 8);
AT_FIELD(struct at_proc, drop_events, 136, 8);
AT_FIELD(struct at_proc, drop_timing_full, 144, 8);
AT_FIELD(struct at_proc, step_max_ns, 152, 8 * AT_MAX_SECS);
AT_FIELD(struct at_proc, step_max_sec, 152 + 8 * AT_MAX_SECS, 8 * AT_MAX_SECS);

static_assert(sizeof(struct at_timing) == 48 + 4 * AT_HIST_BUCKETS);
AT_FIELD(struct at_timing, steps, 0, 8);
AT_FIELD(struct at_timing, busy_ns, 8, 8);
AT_FIELD(struct at_timing, sched_ns, 16, 8);
AT_FIELD(struct at_timing, max_ns, 24, 8);
AT_FIELD(struct at_timing, last_end_ns, 32, 8);
AT_FIELD(struct at_timing, first_ns, 40, 8);
AT_FIELD(struct at_timing, hist, 48, 4 * AT_HIST_BUCKETS);

static_assert(sizeof(struct at_event) == 112 + AT_NAME_LEN);
AT_FIELD(struct at_event, pid, 0, 4);
AT_FIELD(struct at_event, name_len, 4, 4);
AT_FIELD(struct at_event, ktime, 8, 8);
AT_FIELD(struct at_event, rec, 16, 32);
AT_FIELD(struct at_event, slot1, 48, 32);
AT_FIELD(struct at_event, task_code, 80, 8);
AT_FIELD(struct at_event, task_gen, 88, 8);
AT_FIELD(struct at_event, awaiter_id, 96, 8);
AT_FIELD(struct at_event, awaiter_gen, 104, 8);
AT_FIELD(struct at_event, name, 112, AT_NAME_LEN);
