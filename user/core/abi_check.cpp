// SPDX-License-Identifier: Apache-2.0
// The kernel/user contract (bpf/abi.h) and the public probe ABI are fixed-size:
// a change in either breaks decoding silently, so the compiler checks them.
#include <cstddef>

#include "abi.h"
#include "asynctrace/probes.h"

static_assert(sizeof(struct asynctrace_frame) == 16);
static_assert(sizeof(struct at_frame) == 16);
static_assert(sizeof(struct at_task_key) == 16);
static_assert(sizeof(struct at_code_key) == 16);
static_assert(AT_MAX_FRAMES == ASYNCTRACE_MAX_FRAMES);
static_assert(offsetof(struct at_task, awaited_by) == 48);
static_assert(offsetof(struct at_task, name) == 96);
static_assert(sizeof(struct at_task) == 96 + AT_NAME_LEN);
static_assert(sizeof(struct at_stack) == 16 + 16 * AT_MAX_FRAMES);
static_assert(sizeof(struct at_code) == 16 + AT_QUALNAME_LEN + AT_FILENAME_LEN);
static_assert(sizeof(struct at_proc) == 88 + 8 * 8 + 16 * AT_MAX_SECS);
static_assert(sizeof(struct at_timing) == 48 + 4 * AT_HIST_BUCKETS);
static_assert(sizeof(struct at_event) == 88 + AT_NAME_LEN);
static_assert(AT_HIST_BUCKETS == ASYNCTRACE_HIST_BUCKETS);
static_assert(sizeof(struct asynctrace_rec_timing) == 32 && sizeof(struct asynctrace_rec_loop) == 32 &&
              sizeof(struct asynctrace_rec_step_timed) == 32);
static_assert(AT_REC_TIMING == ASYNCTRACE_REC_TIMING && AT_REC_CODE == ASYNCTRACE_REC_CODE &&
              AT_REC_LOOP == ASYNCTRACE_REC_LOOP && AT_REC_STEP_TIMED == ASYNCTRACE_REC_STEP_TIMED &&
              AT_REC_SAMPLE == ASYNCTRACE_REC_SAMPLE);
static_assert(sizeof(struct at_rec) == sizeof(struct asynctrace_rec) && sizeof(struct at_rec) == 32);
static_assert(offsetof(struct at_rec, len) == offsetof(struct asynctrace_rec, len));
static_assert(offsetof(struct at_rec, a) == offsetof(struct asynctrace_rec, a));
static_assert(sizeof(struct at_rec_create) == sizeof(struct asynctrace_rec_create));
static_assert(offsetof(struct at_rec_create, kept) == offsetof(struct asynctrace_rec_create, kept));
static_assert(offsetof(struct at_rec_create, edge_kind) == offsetof(struct asynctrace_rec_create, edge_kind));
static_assert(AT_REC_NAME_MAX == ASYNCTRACE_REC_NAME_MAX && AT_REC_MAX_SLOTS == ASYNCTRACE_REC_MAX_SLOTS);
static_assert(AT_REC_CREATE == ASYNCTRACE_REC_CREATE && AT_REC_STEP == ASYNCTRACE_REC_STEP &&
              AT_REC_COMPLETE == ASYNCTRACE_REC_COMPLETE && AT_REC_EDGE_ADD == ASYNCTRACE_REC_EDGE_ADD &&
              AT_REC_EDGE_REMOVE == ASYNCTRACE_REC_EDGE_REMOVE && AT_REC_STACK == ASYNCTRACE_REC_STACK &&
              AT_REC_RESUME == ASYNCTRACE_REC_RESUME && AT_REC_PAD == ASYNCTRACE_REC_PAD);
