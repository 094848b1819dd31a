// SPDX-License-Identifier: Apache-2.0
/*
 * The event ring (batch path, probes.h batch__flush) and the fresh-task
 * erase table. Plain C, no Python.h; the tracer is reached only through
 * ring_sink_on/ring_sink_flush/ring_kick (ring.h), which tests stub.
 *
 * Locking (ring.h has the per-function rules):
 * - GIL: producers (ring_reserve, ring_commit, ring_head) and every fresh_*
 *   function; the GIL orders producers (all threads), so the ring keeps
 *   event order across threads.
 * - Ring lock: held by a flusher (the watcher every poll period or when
 *   kicked, or a producer finding the ring full) while it fires batch__flush
 *   over the published, unflushed range and advances `tail`; the tracer's BPF
 *   program reads the records during the probe. fresh_* take it to change an
 *   unflushed record; fresh_create_locked needs it held and keeps it held.
 * Nothing is computed or kept while no tracer attached batch__flush.
 */
#include "ring.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static struct {
	struct asynctrace_rec *slots;
	uint64_t head;            /* next free position (GIL) */
	_Atomic uint64_t pub;     /* head as published to flushers */
	_Atomic uint64_t tail;    /* first position not flushed yet */
	atomic_flag lock;
	_Atomic uint64_t dropped; /* records lost (no memory): cumulative */
	_Atomic int kicked;
} ring = { .lock = ATOMIC_FLAG_INIT };

struct ring_counters ring_counters;

void ring_lock(void)
{
	while (atomic_flag_test_and_set_explicit(&ring.lock, memory_order_acquire))
		sched_yield();
}

int ring_trylock(void) { return !atomic_flag_test_and_set_explicit(&ring.lock, memory_order_acquire); }

void ring_unlock(void) { atomic_flag_clear_explicit(&ring.lock, memory_order_release); }

/* Record headers between tail and pub are stable under the lock (fresh_erase
 * and fresh_note change a type, never a length). */
void ring_flush_locked(uint64_t keep)
{
	uint64_t t = atomic_load_explicit(&ring.tail, memory_order_relaxed);
	uint64_t h = atomic_load_explicit(&ring.pub, memory_order_acquire);
	if (keep) {
		uint64_t end = t;
		while (end < h && h - end > keep) {
			uint16_t n = ring.slots[end & RING_MASK].nslots;
			if (!n)
				break; /* never written so: flush up to here */
			end += n;
		}
		h = end;
	}
	if (ring_sink_on()) {
		while (t < h) {
			uint32_t off = (uint32_t)(t & RING_MASK);
			uint64_t n = h - t;
			if (n > RING_SLOTS - off)
				n = RING_SLOTS - off;
			ring_sink_flush(&ring.slots[off], n, atomic_load_explicit(&ring.dropped, memory_order_relaxed));
			ring_counters.flushes++; /* racy without the GIL: approximate */
			t += n;
		}
	}
	atomic_store_explicit(&ring.tail, h, memory_order_release);
	atomic_store_explicit(&ring.kicked, 0, memory_order_relaxed);
}

void ring_flush_keep(uint64_t keep)
{
	if (!ring.slots)
		return;
	ring_lock();
	ring_flush_locked(keep);
	ring_unlock();
}

void ring_flush(void) { ring_flush_keep(0); }

struct asynctrace_rec *ring_reserve(uint32_t n)
{
	if (!ring.slots) {
		ring.slots = aligned_alloc(64, (size_t)RING_SLOTS * sizeof(struct asynctrace_rec));
		if (!ring.slots) {
			atomic_fetch_add_explicit(&ring.dropped, 1, memory_order_relaxed);
			return NULL;
		}
	}
	uint64_t h = ring.head;
	uint32_t off = (uint32_t)(h & RING_MASK);
	uint32_t pad = off + n > RING_SLOTS ? RING_SLOTS - off : 0;
	if (h + pad + n - atomic_load_explicit(&ring.tail, memory_order_acquire) > RING_SLOTS) {
		ring_counters.self_flushes++;
		ring_flush();
		if (h + pad + n - atomic_load_explicit(&ring.tail, memory_order_acquire) > RING_SLOTS) {
			atomic_fetch_add_explicit(&ring.dropped, 1, memory_order_relaxed);
			return NULL;
		}
	}
	if (pad) {
		ring.slots[off] = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_PAD, .nslots = (uint16_t)pad };
		ring.head = h + pad;
	}
	return &ring.slots[ring.head & RING_MASK];
}

void ring_commit(uint32_t n)
{
	ring_counters.records[ring.slots[ring.head & RING_MASK].type & 15]++;
	ring.head += n;
	atomic_store_explicit(&ring.pub, ring.head, memory_order_release);
	if (ring.head - atomic_load_explicit(&ring.tail, memory_order_relaxed) >= RING_KICK &&
	    !atomic_exchange_explicit(&ring.kicked, 1, memory_order_relaxed))
		ring_kick();
}

uint64_t ring_head(void) { return ring.head; }

uint64_t ring_unflushed(void)
{
	return atomic_load(&ring.pub) - atomic_load(&ring.tail);
}

uint64_t ring_dropped(void) { return atomic_load(&ring.dropped); }

void ring_reset_after_fork(void)
{
	atomic_flag_clear(&ring.lock);
	ring.head = atomic_load(&ring.pub);
	atomic_store(&ring.tail, ring.head);
	atomic_store(&ring.kicked, 0);
}

void ring_free(void)
{
	free(ring.slots);
	ring.slots = NULL;
	ring.head = 0;
	atomic_store(&ring.pub, 0);
	atomic_store(&ring.tail, 0);
	atomic_store(&ring.kicked, 0);
	atomic_flag_clear(&ring.lock);
}

/*
 * Tasks whose first CREATE record has not been flushed yet, by address.
 * When such a task completes before the flush, its CREATE becomes a PAD
 * record and no COMPLETE is written: the tracer never sees the task, as if
 * it had lived between two looks. Records about it in between (STEP,
 * EDGE_ADD) name a task the tracer does not know, and the batch path ignores
 * those (probes.h). Short-lived tasks are most tasks of a busy service; this
 * keeps them out of the kernel's hash map (an insert and a delete each).
 *
 * Direct-mapped and lossy, on purpose not a ptr_table (table.h): a collision
 * just forgets the older task (it then reaches tracers, which is always
 * correct), there is nothing to grow or delete, and by address like the
 * dedupe cache, tasks created together share lines (128 bytes a slot: one
 * task at most; 2 MiB of addresses before slots repeat).
 */
#define FRESH_SLOTS 16384u
static struct {
	uintptr_t task;
	uint64_t pos; /* ring position of the CREATE record */
} fresh[FRESH_SLOTS];

static size_t fresh_slot(uintptr_t task) { return (size_t)(task >> 7) & (FRESH_SLOTS - 1); }

int fresh_maybe(uintptr_t task) { return fresh[fresh_slot(task)].task == task && ring.slots; }

struct asynctrace_rec *fresh_create_locked(uintptr_t task)
{
	size_t i = fresh_slot(task);
	if (fresh[i].task != task || !ring.slots)
		return NULL;
	uint64_t pos = fresh[i].pos;
	struct asynctrace_rec *r = &ring.slots[pos & RING_MASK];
	if (pos >= atomic_load_explicit(&ring.tail, memory_order_relaxed) && r->type == ASYNCTRACE_REC_CREATE &&
	    r->a == (uint64_t)task)
		return r; /* records never wrap: r[1] is its slot 1 */
	return NULL;
}

void fresh_note(uintptr_t task, uint64_t pos, int first)
{
	size_t i = fresh_slot(task);
	if (first) {
		fresh[i].task = task;
		fresh[i].pos = pos;
		return;
	}
	/* Renamed while its first CREATE is unflushed (create_task(name=) on
	 * 3.10-3.12 names the task just after creating it): that record becomes
	 * padding, and this one, the not yet published record at pos, takes over
	 * its creator, coroutine and edge and becomes the first. */
	int moved = 0;
	if (fresh_maybe(task) && ring_trylock()) {
		struct asynctrace_rec *o = fresh_create_locked(task);
		if (o) {
			struct asynctrace_rec *nr = &ring.slots[pos & RING_MASK];
			struct asynctrace_rec_create *oc = (struct asynctrace_rec_create *)&o[1];
			struct asynctrace_rec_create *nc = (struct asynctrace_rec_create *)&nr[1];
			if (!nr->b)
				nr->b = o->b;
			if (!nc->code_id)
				nc->code_id = oc->code_id;
			if (!nc->edge_kind) {
				nc->edge_awaiter = oc->edge_awaiter;
				nc->edge_kind = oc->edge_kind;
			}
			o->type = ASYNCTRACE_REC_PAD;
			fresh[i].pos = pos;
			moved = 1;
		}
		ring_unlock();
	}
	if (!moved && fresh[i].task == task)
		fresh[i].task = 0; /* two CREATEs reach tracers: erase neither */
}

int fresh_erase(uintptr_t task)
{
	int erased = 0;
	if (fresh_maybe(task) && ring_trylock()) {
		struct asynctrace_rec *r = fresh_create_locked(task);
		if (r) {
			r->type = ASYNCTRACE_REC_PAD;
			ring_counters.erased++;
			erased = 1;
		}
		ring_unlock();
	}
	fresh[fresh_slot(task)].task = 0;
	return erased;
}

void fresh_keep(uintptr_t task)
{
	size_t i = fresh_slot(task);
	if (fresh[i].task == task)
		fresh[i].task = 0;
}

int fresh_edge_into_create(uintptr_t child, uintptr_t awaiter, int kind)
{
	int done = 0;
	if (fresh_maybe(child) && ring_trylock()) {
		struct asynctrace_rec *r = fresh_create_locked(child);
		if (r) {
			struct asynctrace_rec_create *c = (struct asynctrace_rec_create *)&r[1];
			done = !c->edge_kind;
			if (done) {
				c->edge_awaiter = (uint64_t)awaiter;
				c->edge_kind = (uint32_t)kind + 1;
				ring_counters.edges_in_create++;
			}
		}
		ring_unlock();
	}
	return done;
}
