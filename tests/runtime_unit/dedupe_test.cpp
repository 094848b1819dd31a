// SPDX-License-Identifier: Apache-2.0
// Step de-duplication (runtimes/python/src/dedupe.c).
#include <gtest/gtest.h>

#include "dedupe.h"

namespace {

class Dedupe : public ::testing::Test {
protected:
	void SetUp() override { dedupe_clear(); }
};

constexpr uintptr_t kTask = 0x7f1234567800ull;

TEST_F(Dedupe, HitsAndMisses)
{
	uint32_t a = dedupe_state_hash(0x5000, 1), b = dedupe_state_hash(0x6000, 1);
	ASSERT_NE(a, b);
	EXPECT_NE(a, 0u);
	EXPECT_EQ(a & DEDUPE_STACK_SENT, 0u);
	EXPECT_EQ(dedupe_state_hash(0x5000, 2) == a, false); // the kind counts
	EXPECT_FALSE(dedupe_same(kTask, a)); // unknown task: a miss
	dedupe_put(kTask, a);
	EXPECT_TRUE(dedupe_same(kTask, a));  // the same state again: a hit
	EXPECT_FALSE(dedupe_same(kTask, b)); // a new state: a miss
	dedupe_put(kTask, b);
	EXPECT_TRUE(dedupe_same(kTask, b));
	EXPECT_FALSE(dedupe_same(kTask, a));
}

TEST_F(Dedupe, StackSentBitIsClearedWhenTheTaskRuns)
{
	uint32_t a = dedupe_state_hash(0x5000, 1);
	dedupe_put(kTask, a | DEDUPE_STACK_SENT);
	EXPECT_EQ(dedupe_get(kTask), a | DEDUPE_STACK_SENT);
	EXPECT_TRUE(dedupe_same(kTask, a)); // same state, but it ran:
	EXPECT_EQ(dedupe_get(kTask), a);    // the stack tracers have is stale
}

TEST_F(Dedupe, ForgetAndNeighbours)
{
	uint32_t a = dedupe_state_hash(0x5000, 1), b = dedupe_state_hash(0x5100, 1),
		 c = dedupe_state_hash(0x5200, 1);
	// Two tasks 16 bytes apart share a set (two ways).
	dedupe_put(kTask, a);
	dedupe_put(kTask + 16, b);
	EXPECT_EQ(dedupe_get(kTask), a);
	EXPECT_EQ(dedupe_get(kTask + 16), b);
	dedupe_forget(kTask);
	EXPECT_EQ(dedupe_get(kTask), 0u);
	EXPECT_EQ(dedupe_get(kTask + 16), b);
	// A third task in a full set takes a way: the cache is lossy, never wrong.
	dedupe_put(kTask, a);
	dedupe_put(kTask + 32, c);
	EXPECT_EQ(dedupe_get(kTask + 32), c);
	EXPECT_TRUE(dedupe_get(kTask) == a || dedupe_get(kTask + 16) == b);
	EXPECT_FALSE(dedupe_get(kTask) == a && dedupe_get(kTask + 16) == b);
}

TEST_F(Dedupe, ClearTouchesOnlyWrittenPages)
{
	EXPECT_EQ(dedupe_touched_pages(), 0u);
	uint32_t a = dedupe_state_hash(0x5000, 1);
	for (uintptr_t i = 0; i < 100; i++)
		dedupe_put(kTask + 208 * i, a); // ~20 KiB of addresses: a few sets, one page or two
	unsigned pages = dedupe_touched_pages();
	EXPECT_GE(pages, 1u);
	EXPECT_LE(pages, 2u);
	dedupe_put(kTask + (64ull << 20) + (1ull << 20), a); // another page
	EXPECT_EQ(dedupe_touched_pages(), pages + 1);
	dedupe_clear();
	EXPECT_EQ(dedupe_touched_pages(), 0u);
	for (uintptr_t i = 0; i < 100; i++)
		EXPECT_EQ(dedupe_get(kTask + 208 * i), 0u);
	EXPECT_EQ(dedupe_get(kTask + (64ull << 20) + (1ull << 20)), 0u);
}

} // namespace
