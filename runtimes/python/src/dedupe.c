// SPDX-License-Identifier: Apache-2.0
/*
 * Step de-duplication cache (dedupe.h). Plain C, no Python.h.
 * Locking: every function needs the GIL (one writer at a time); none takes a lock.
 *
 * What the last STEP record of each task said, as a 32-bit hash of
 * (awaited, kind): a step that leaves a task in the state tracers already
 * have (a loop of sleep(0), a worker waiting again on the same queue future)
 * writes nothing. A collision between two tasks only costs a record; equal
 * hashes of a task's two successive states (2^-32) would hide one change
 * until the next.
 *
 * Located by address, not hashed: looking a task up is a cache miss per step
 * unless tasks that run one after the other share cache lines, and tasks
 * created together lie together (176-384 bytes apart, by version and
 * program). A two-way set of 8-byte entries covers 256 bytes of address
 * space (two tasks at most), four sets a cache line: 1 KiB, ~5 tasks created
 * in a row (10,000 tasks: ~1,900 lines instead of 10,000). Entry: a tag (the
 * address bits the set does not say) << 32 | state (0: empty).
 *
 * The table is 4 MiB of zero pages until written; only pages written are
 * resident. `touched` (one bit a 4 KiB page, 128 bytes, always hot) lets
 * dedupe_clear() zero those pages alone: a memset of the whole table would
 * make all of it resident at the first full replay.
 */
#include "dedupe.h"

#include <string.h>

#define STATE_SET_SHIFT 8
#define STATE_SET_BITS 18
#define STATE_SETS (1u << STATE_SET_BITS) /* 4 MiB (touched pages only): 64 MiB of addresses */
#define PAGE_SETS (4096u / 16u)           /* sets of one 4 KiB page */
#define PAGES (STATE_SETS / PAGE_SETS)

static uint64_t last_state[STATE_SETS][2] __attribute__((aligned(4096)));
static uint64_t touched[PAGES / 64];

struct state_ref {
	uint64_t *set;
	uint32_t tag;
	uint32_t index;
};

static struct state_ref state_set(uintptr_t a)
{
	uintptr_t hi = a >> (STATE_SET_SHIFT + STATE_SET_BITS);
	uintptr_t lo = (a >> 4) & ((1u << (STATE_SET_SHIFT - 4)) - 1); /* objects are 16-aligned */
	uint32_t index = (uint32_t)((a >> STATE_SET_SHIFT) & (STATE_SETS - 1));
	return (struct state_ref){ last_state[index], (uint32_t)((hi << (STATE_SET_SHIFT - 4)) | lo), index };
}

uint32_t dedupe_state_hash(uintptr_t awaited, int kind)
{
	uint64_t h = ((uint64_t)awaited ^ 0x9E3779B97F4A7C15ull) * 0xff51afd7ed558ccdull;
	h ^= (uint64_t)kind * 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	uint32_t s = (uint32_t)(h ^ (h >> 32)) & ~DEDUPE_STACK_SENT;
	return s ? s : 2;
}

static uint32_t way_state(struct state_ref r, int w) { return (uint32_t)r.set[w]; }

static void way_put(struct state_ref r, int w, uint32_t state)
{
	uint32_t page = r.index / PAGE_SETS;
	touched[page / 64] |= 1ull << (page % 64);
	r.set[w] = (uint64_t)r.tag << 32 | state;
}

/* The task's way in its set, -1 if it has none. */
static int state_way_of(struct state_ref r)
{
	for (int w = 0; w < 2; w++)
		if ((uint32_t)(r.set[w] >> 32) == r.tag && (uint32_t)r.set[w])
			return w;
	return -1;
}

/* A way for the task: an empty one, else either (by the state's bits). */
static int state_take_way(struct state_ref r, uint32_t h)
{
	return !(uint32_t)r.set[0] ? 0 : !(uint32_t)r.set[1] ? 1 : (int)((h >> 1) & 1);
}

int dedupe_same(uintptr_t task, uint32_t h)
{
	struct state_ref set = state_set(task);
	int w = state_way_of(set);
	if (w < 0 || (way_state(set, w) & ~DEDUPE_STACK_SENT) != h)
		return 0;
	if (way_state(set, w) != h)
		way_put(set, w, h); /* it ran: the stack tracers have is stale */
	return 1;
}

void dedupe_put(uintptr_t task, uint32_t state)
{
	struct state_ref set = state_set(task);
	int w = state_way_of(set);
	if (w < 0)
		w = state_take_way(set, state & ~DEDUPE_STACK_SENT);
	way_put(set, w, state);
}

uint32_t dedupe_get(uintptr_t task)
{
	struct state_ref set = state_set(task);
	int w = state_way_of(set);
	return w < 0 ? 0 : way_state(set, w);
}

void dedupe_forget(uintptr_t task)
{
	struct state_ref r = state_set(task);
	int w = state_way_of(r);
	if (w >= 0)
		r.set[w] = 0;
}

void dedupe_clear(void)
{
	for (unsigned k = 0; k < PAGES / 64; k++) {
		for (uint64_t bits = touched[k]; bits; bits &= bits - 1) {
			unsigned page = k * 64 + (unsigned)__builtin_ctzll(bits);
			memset(last_state[page * PAGE_SETS], 0, PAGE_SETS * sizeof last_state[0]);
		}
		touched[k] = 0;
	}
}

unsigned dedupe_touched_pages(void)
{
	unsigned n = 0;
	for (unsigned k = 0; k < PAGES / 64; k++)
		n += (unsigned)__builtin_popcountll(touched[k]);
	return n;
}
