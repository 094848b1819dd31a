// SPDX-License-Identifier: Apache-2.0
/*
 * Step de-duplication (plain C, no Python.h): what the last STEP record of
 * each task said, so that a step leaving a task in the state tracers already
 * have writes nothing.
 *
 * A fixed-size, lossy, set-associative cache located by address, on purpose
 * not a ptr_table (table.h): looking a task up must not be a cache miss per
 * step, and tasks created together lie together, so neighbouring tasks share
 * cache lines here; losing an entry only costs a record. See dedupe.c.
 *
 * Locking: the GIL (every function; the hooks and the replay call them).
 */
#ifndef ASYNCTRACE_RUNTIME_DEDUPE_H
#define ASYNCTRACE_RUNTIME_DEDUPE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The low bit of a state says "tracers have this task's current stack"
 * (a STACK record was sent and the task has not run since). */
#define DEDUPE_STACK_SENT 1u

/* 32-bit hash of a state (awaited object, await kind); never 0, low bit 0. */
uint32_t dedupe_state_hash(uintptr_t awaited, int kind);

/* 1 if `task`'s last state is `h` (the stack bit aside): the step repeats it
 * and writes nothing; the stack bit is cleared (the task ran). 0 otherwise. */
int dedupe_same(uintptr_t task, uint32_t h);
/* Remember `state` (a hash, maybe | DEDUPE_STACK_SENT) as the task's last. */
void dedupe_put(uintptr_t task, uint32_t state);
/* The task's last state, 0 if unknown. */
uint32_t dedupe_get(uintptr_t task);
/* Forget the task (it completed, or a new task took its address). */
void dedupe_forget(uintptr_t task);
/* Forget every task (a full replay re-tells everything). Clears only the
 * pages written since the last clear, so that untouched pages stay unmapped. */
void dedupe_clear(void);
/* Pages of the cache written since the last clear (for tests). */
unsigned dedupe_touched_pages(void);

#ifdef __cplusplus
}
#endif

#endif
