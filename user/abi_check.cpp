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
static_assert(offsetof(struct at_task, awaited_by) == 56);
static_assert(offsetof(struct at_task, name) == 120);
static_assert(sizeof(struct at_task) == 120 + AT_NAME_LEN + 16 * AT_MAX_FRAMES);
static_assert(sizeof(struct at_code) == 16 + AT_QUALNAME_LEN + AT_FILENAME_LEN);
static_assert(sizeof(struct at_proc) == 64);
