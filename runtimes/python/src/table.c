// SPDX-License-Identifier: Apache-2.0
/*
 * ptr_table (table.h): growth, insertion and back-shift deletion.
 * Plain C (no Python.h). No locks: callers serialize (the runtime: the GIL).
 */
#include "table.h"

#include <stdlib.h>
#include <string.h>

void ptr_table_init(struct ptr_table *t, size_t esize, size_t min_cap)
{
	memset(t, 0, sizeof *t);
	t->esize = esize;
	t->min_cap = min_cap;
}

void ptr_table_init_fixed(struct ptr_table *t, size_t esize, size_t cap)
{
	ptr_table_init(t, esize, cap);
	t->fixed = 1;
}

void ptr_table_free(struct ptr_table *t)
{
	free(t->slots);
	t->slots = NULL;
	t->cap = t->len = 0;
	t->gen++;
}

static int grow(struct ptr_table *t)
{
	size_t cap = t->cap ? t->cap * 2 : t->min_cap;
	unsigned char *s = calloc(cap, t->esize);
	if (!s)
		return -1;
	for (size_t j = 0; j < t->cap; j++) {
		uintptr_t key = ptr_table_key_at(t, j);
		if (!key)
			continue;
		size_t i = ptr_hash(key, cap);
		while (*(uintptr_t *)(s + i * t->esize))
			i = (i + 1) & (cap - 1);
		memcpy(s + i * t->esize, ptr_table_at(t, j), t->esize);
	}
	free(t->slots);
	t->slots = s;
	t->cap = cap;
	t->gen++;
	return 0;
}

void *ptr_table_insert(struct ptr_table *t, uintptr_t key, int *added)
{
	*added = 0;
	if (!key)
		return NULL;
	void *e = ptr_table_find(t, key);
	if (e)
		return e;
	if (t->fixed) {
		if (!t->cap && grow(t) < 0)
			return NULL;
		if (t->len >= t->cap)
			return NULL;
	} else if ((t->len + 1) * 4 > t->cap * 3 && grow(t) < 0) {
		return NULL;
	}
	size_t i = ptr_hash(key, t->cap);
	while (ptr_table_key_at(t, i))
		i = (i + 1) & (t->cap - 1);
	e = ptr_table_at(t, i);
	memset(e, 0, t->esize);
	*(uintptr_t *)e = key;
	t->len++;
	*added = 1;
	return e;
}

int ptr_table_delete(struct ptr_table *t, uintptr_t key)
{
	unsigned char *e = ptr_table_find(t, key);
	if (!e)
		return 0;
	size_t mask = t->cap - 1, i = (size_t)(e - t->slots) / t->esize;
	for (size_t j = (i + 1) & mask; ptr_table_key_at(t, j); j = (j + 1) & mask) {
		size_t h = ptr_hash(ptr_table_key_at(t, j), t->cap);
		/* Move j into the hole i if its home is not in (i, j]. */
		if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) {
			memcpy(ptr_table_at(t, i), ptr_table_at(t, j), t->esize);
			i = j;
		}
	}
	*(uintptr_t *)ptr_table_at(t, i) = 0;
	t->len--;
	t->gen++;
	return 1;
}

void ptr_table_clear(struct ptr_table *t)
{
	if (t->slots)
		memset(t->slots, 0, t->cap * t->esize);
	t->len = 0;
	t->gen++;
}
