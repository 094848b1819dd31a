// SPDX-License-Identifier: Apache-2.0
// ptr_table, the runtime's pointer-keyed hash table (runtimes/python/src/table.c).
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "table.h"

namespace {

struct Entry {
	uintptr_t key;
	uint64_t value;
};

uintptr_t key_of(size_t i) { return 0x7f0000000000ull + i * 208; } // tasks lie ~200 bytes apart

TEST(PtrTable, InsertFindAndGrow)
{
	ptr_table t;
	ptr_table_init(&t, sizeof(Entry), 16);
	EXPECT_EQ(ptr_table_find(&t, key_of(1)), nullptr); // empty, unallocated
	uint64_t gen = t.gen;
	for (size_t i = 1; i <= 1000; i++) {
		int added = 0;
		auto *e = static_cast<Entry *>(ptr_table_insert(&t, key_of(i), &added));
		ASSERT_NE(e, nullptr);
		EXPECT_EQ(added, 1);
		EXPECT_EQ(e->value, 0u); // new entries are zeroed
		e->value = i;
	}
	EXPECT_EQ(t.len, 1000u);
	EXPECT_GE(t.cap * 3, t.len * 4); // at most 3/4 full
	EXPECT_NE(t.gen, gen);           // growth moved entries
	for (size_t i = 1; i <= 1000; i++) {
		auto *e = static_cast<Entry *>(ptr_table_find(&t, key_of(i)));
		ASSERT_NE(e, nullptr);
		EXPECT_EQ(e->value, i);
	}
	EXPECT_EQ(ptr_table_find(&t, key_of(1001)), nullptr);
	int added = 1;
	auto *e = static_cast<Entry *>(ptr_table_insert(&t, key_of(5), &added));
	EXPECT_EQ(added, 0); // present: the same entry
	EXPECT_EQ(e->value, 5u);
	ptr_table_free(&t);
}

TEST(PtrTable, DeleteKeepsProbeChains)
{
	ptr_table t;
	ptr_table_init(&t, sizeof(Entry), 64);
	std::set<size_t> live;
	for (size_t i = 1; i <= 40; i++) { // 40 of 64: long chains
		int added;
		static_cast<Entry *>(ptr_table_insert(&t, key_of(i), &added))->value = i;
		live.insert(i);
	}
	ASSERT_EQ(t.cap, 64u);
	for (size_t i = 1; i <= 40; i += 3) {
		uint64_t gen = t.gen;
		EXPECT_EQ(ptr_table_delete(&t, key_of(i)), 1);
		EXPECT_NE(t.gen, gen);
		live.erase(i);
		for (size_t j : live) { // every other key is still found
			auto *e = static_cast<Entry *>(ptr_table_find(&t, key_of(j)));
			ASSERT_NE(e, nullptr) << j;
			EXPECT_EQ(e->value, j);
		}
		EXPECT_EQ(ptr_table_find(&t, key_of(i)), nullptr);
	}
	EXPECT_EQ(ptr_table_delete(&t, key_of(1)), 0); // gone already
	EXPECT_EQ(t.len, live.size());
	ptr_table_free(&t);
}

TEST(PtrTable, DeleteWrapsAroundTheEnd)
{
	// Keys whose home slots are the last ones, so chains wrap to slot 0.
	ptr_table t;
	ptr_table_init(&t, sizeof(Entry), 16);
	std::vector<uintptr_t> keys;
	for (size_t i = 1; keys.size() < 6; i++)
		if (ptr_hash(key_of(i), 16) >= 14)
			keys.push_back(key_of(i));
	for (uintptr_t k : keys) {
		int added;
		ASSERT_NE(ptr_table_insert(&t, k, &added), nullptr);
	}
	ASSERT_EQ(t.cap, 16u);
	EXPECT_EQ(ptr_table_delete(&t, keys[0]), 1);
	EXPECT_EQ(ptr_table_delete(&t, keys[2]), 1);
	for (size_t i = 0; i < keys.size(); i++)
		EXPECT_EQ(ptr_table_find(&t, keys[i]) != nullptr, i != 0 && i != 2) << i;
	ptr_table_free(&t);
}

TEST(PtrTable, FixedTableFillsUpAndNeverMoves)
{
	ptr_table t;
	ptr_table_init_fixed(&t, sizeof(Entry), 8);
	std::vector<void *> where;
	for (size_t i = 1; i <= 8; i++) {
		int added;
		void *e = ptr_table_insert(&t, key_of(i), &added);
		ASSERT_NE(e, nullptr);
		where.push_back(e);
	}
	int added = 1;
	EXPECT_EQ(ptr_table_insert(&t, key_of(9), &added), nullptr); // full
	EXPECT_EQ(added, 0);
	EXPECT_EQ(ptr_table_find(&t, key_of(9)), nullptr); // full table, absent key: terminates
	for (size_t i = 1; i <= 8; i++)
		EXPECT_EQ(ptr_table_find(&t, key_of(i)), where[i - 1]);
	ptr_table_clear(&t);
	EXPECT_EQ(t.len, 0u);
	EXPECT_EQ(ptr_table_find(&t, key_of(1)), nullptr);
	EXPECT_NE(ptr_table_insert(&t, key_of(9), &added), nullptr);
	ptr_table_free(&t);
}

TEST(PtrTable, ZeroIsNeverAKey)
{
	ptr_table t;
	ptr_table_init(&t, sizeof(uintptr_t), 16);
	int added = 1;
	EXPECT_EQ(ptr_table_insert(&t, 0, &added), nullptr);
	EXPECT_EQ(added, 0);
	ptr_table_free(&t);
}

TEST(PtrTable, HashSpreadsNeighbours)
{
	// 16-byte aligned neighbours land in distinct slots of a large table.
	std::set<size_t> slots;
	for (size_t i = 0; i < 256; i++)
		slots.insert(ptr_hash(0x7f0000001000ull + 16 * i, 1 << 16));
	EXPECT_GT(slots.size(), 250u);
}

} // namespace
