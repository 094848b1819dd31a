// SPDX-License-Identifier: Apache-2.0
/*
 * The event ring of the batch path (probes.h, batch__flush) and the table of
 * tasks whose CREATE record is still unflushed (fresh_*). Plain C, no Python.h.
 *
 * Locking:
 * - Producers (ring_reserve, ring_commit, fresh_note_first, ring counters)
 *   need the GIL: it orders all threads' records.
 * - Flushers (ring_flush, ring_flush_keep) need no GIL; they take the ring
 *   lock themselves. ring_flush_locked needs the ring lock held.
 * - fresh_create_locked needs the ring lock held by its caller and never
 *   takes or releases it (one rule). Callers take it with ring_trylock():
 *   a failed try means a flush is reading the ring now.
 * - The tracer side is behind three functions the embedder defines (module.c
 *   for the extension, stubs in tests/runtime_unit): ring_sink_on(),
 *   ring_sink_flush() (executes the batch__flush probe) and ring_kick()
 *   (wakes the watcher).
 */
#ifndef ASYNCTRACE_RUNTIME_RING_H
#define ASYNCTRACE_RUNTIME_RING_H

#include <stdint.h>

#include "asynctrace/probes.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RING_SLOTS 65536u /* 2 MiB, allocated when a tracer first attaches */
#define RING_MASK (RING_SLOTS - 1)
#define RING_KICK (RING_SLOTS / 4) /* wake the watcher at this fill */
/* A flush the fill asked for leaves the newest RING_KEEP slots (whole
 * records) in the ring: tasks created in them may still complete unflushed
 * and never reach the kernel (fresh_erase). Without it, every task alive at
 * such a flush did: in a churn of short tasks created in bursts, a quarter
 * of them, an insert and a delete in the kernel's hash map each. */
#define RING_KEEP (RING_SLOTS / 8)

/* Defined by the embedder (see above). */
int ring_sink_on(void);
void ring_sink_flush(struct asynctrace_rec *recs, uint64_t nslots, uint64_t dropped);
void ring_kick(void);

/* Counters of the batch path (GIL), for ring_stats(): what was written and
 * what never had to be. */
struct ring_counters {
	uint64_t records[16];     /* by type */
	uint64_t erased;          /* tasks created and completed between two flushes */
	uint64_t same_state;      /* steps that repeated the task's last state */
	uint64_t flushes;         /* batch__flush probes fired */
	uint64_t self_flushes;    /* by a producer finding the ring full */
	uint64_t edges_in_create; /* edges carried by their child's CREATE */
};
extern struct ring_counters ring_counters;

/* Ring lock: a spin lock (flushers hold it a few microseconds). */
void ring_lock(void);
int ring_trylock(void); /* 1: taken */
void ring_unlock(void);

/* Ring lock held: hands the published records to the tracers (or drops them
 * when none listens), all but those starting in the newest `keep` slots. */
void ring_flush_locked(uint64_t keep);
/* Takes the ring lock (no GIL needed). */
void ring_flush_keep(uint64_t keep);
/* Everything published: replays, exit, fork, a full ring, the flush period. */
void ring_flush(void);

/* GIL: space for an n-slot record, or NULL (counted as dropped). No Python
 * API may run between ring_reserve() and ring_commit(). */
struct asynctrace_rec *ring_reserve(uint32_t n);
/* GIL: publishes the reserved record. */
void ring_commit(uint32_t n);
/* GIL: ring position of the next record ring_reserve returned. */
uint64_t ring_head(void);
/* Records not flushed yet (published ones). */
uint64_t ring_unflushed(void);
uint64_t ring_dropped(void);
/* In a forked child: forget the parent's records and lock. */
void ring_reset_after_fork(void);
/* Frees the ring (tests). */
void ring_free(void);

/*
 * Fresh tasks: those whose first CREATE record is still in the ring
 * (direct-mapped by address: a collision just forgets the older task).
 */
/* GIL, with the CREATE record at `pos` being written (not yet committed):
 * remember it if it is the task's first; else (a rename) make it replace an
 * unflushed first one (the old becomes padding). Takes the ring lock itself. */
void fresh_note(uintptr_t task, uint64_t pos, int first);
/* Ring lock held by the caller (kept held): the task's unflushed first
 * CREATE record, or NULL. */
struct asynctrace_rec *fresh_create_locked(uintptr_t task);
/* Cheap check without the lock: could the task have such a record? */
int fresh_maybe(uintptr_t task);
/* GIL: 1 if the task's unflushed CREATE became a PAD (the caller then
 * writes no COMPLETE); the task is forgotten either way. */
int fresh_erase(uintptr_t task);
/* GIL: the task's CREATE must reach tracers (a record will name it). */
void fresh_keep(uintptr_t task);
/* GIL: an edge to an unflushed child rides in its CREATE; 1 if it did. */
int fresh_edge_into_create(uintptr_t child, uintptr_t awaiter, int kind);

#ifdef __cplusplus
}
#endif

#endif
