// SPDX-License-Identifier: Apache-2.0
/*
 * ptr_table: the runtime's one pointer-keyed hash table (plain C, no Python.h).
 *
 * Open addressing with linear probing over fixed-size entries whose first
 * word is the key (a uintptr_t; 0 marks an empty slot, so 0 is never a key).
 * One hash function for every pointer key: ptr_hash(). Deletion shifts the
 * following entries back (no tombstones), so probe chains stay short.
 *
 * Growing tables double at 3/4 load; a fixed table (ptr_table_init_fixed)
 * never reallocates, so pointers to its entries stay valid for its life, and
 * fills up to its capacity.
 *
 * `gen` counts the moves of entries (growth, deletion, clear): a caller may
 * keep an entry's index across code that cannot touch the table and reuse it
 * while gen is unchanged.
 *
 * Locking: none inside. Every table of the runtime is used with the GIL
 * held (the owner of each table says so); the table itself never allocates
 * on lookups, only when an insert grows it.
 */
#ifndef ASYNCTRACE_RUNTIME_TABLE_H
#define ASYNCTRACE_RUNTIME_TABLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ptr_table {
	unsigned char *slots; /* cap entries of esize bytes, key first */
	size_t esize;         /* entry size, >= sizeof(uintptr_t) */
	size_t cap, len;      /* cap: 0 or a power of two */
	size_t min_cap;       /* first allocation */
	int fixed;            /* never grows (entries never move on insert) */
	uint64_t gen;         /* bumped whenever entries move */
};

/* The hash of every pointer key: objects are 16-byte aligned, Fibonacci
 * hashing spreads neighbours; take the high bits of the product. */
static inline size_t ptr_hash(uintptr_t key, size_t cap)
{
	return (size_t)((((uint64_t)key >> 4) * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

static inline uintptr_t ptr_table_key_at(const struct ptr_table *t, size_t i)
{
	return *(const uintptr_t *)(t->slots + i * t->esize);
}

static inline void *ptr_table_at(const struct ptr_table *t, size_t i)
{
	return t->slots + i * t->esize;
}

/* A growing table: allocates min_cap (a power of two) entries at its first insert. */
void ptr_table_init(struct ptr_table *t, size_t esize, size_t min_cap);
/* A fixed table of cap (a power of two) entries, allocated at its first insert. */
void ptr_table_init_fixed(struct ptr_table *t, size_t esize, size_t cap);
void ptr_table_free(struct ptr_table *t);

/* The entry of `key`, or NULL. Allocation-free. */
static inline void *ptr_table_find(const struct ptr_table *t, uintptr_t key)
{
	if (!t->cap)
		return NULL;
	for (size_t i = ptr_hash(key, t->cap), k = 0; k < t->cap; i = (i + 1) & (t->cap - 1), k++) {
		uintptr_t s = ptr_table_key_at(t, i);
		if (s == key)
			return ptr_table_at(t, i);
		if (!s)
			return NULL;
	}
	return NULL;
}

/* The entry of `key` (created zeroed but for its key if new, *added = 1),
 * or NULL when the table is full or out of memory. */
void *ptr_table_insert(struct ptr_table *t, uintptr_t key, int *added);

/* Removes `key`'s entry if any; 1 if it did. */
int ptr_table_delete(struct ptr_table *t, uintptr_t key);

/* Empties the table (keeps its memory). */
void ptr_table_clear(struct ptr_table *t);

#ifdef __cplusplus
}
#endif

#endif
