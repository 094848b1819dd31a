// SPDX-License-Identifier: Apache-2.0
// The runtime's event ring and fresh-task erase table (runtimes/python/src/ring.c).
#include <gtest/gtest.h>

#include <cstring>

#include "stubs.h"

namespace {

class Ring : public ::testing::Test {
protected:
	void SetUp() override
	{
		ring_free();
		std::memset(&ring_counters, 0, sizeof ring_counters);
		sink.reset();
	}
	void TearDown() override { ring_free(); }

	// A one-slot STEP record for `task`.
	static bool step(uint64_t task)
	{
		asynctrace_rec *r = ring_reserve(1);
		if (!r)
			return false;
		*r = asynctrace_rec{};
		r->type = ASYNCTRACE_REC_STEP;
		r->nslots = 1;
		r->a = task;
		ring_commit(1);
		return true;
	}

	// A CREATE record (2 slots, no name) for `task`, noted as fresh.
	static asynctrace_rec *create(uint64_t task, uint64_t parent, uint64_t code, int first = 1)
	{
		asynctrace_rec *r = ring_reserve(2);
		if (!r)
			return nullptr;
		std::memset(r, 0, 2 * sizeof *r);
		r->type = ASYNCTRACE_REC_CREATE;
		r->nslots = 2;
		r->a = task;
		r->b = parent;
		auto *c = reinterpret_cast<asynctrace_rec_create *>(&r[1]);
		c->code_id = code;
		c->tid = 1;
		fresh_note(task, ring_head(), first);
		ring_commit(2);
		return r;
	}

	static uint64_t flushed_slots()
	{
		uint64_t n = 0;
		for (auto &f : sink.flushes)
			n += f.nslots;
		return n;
	}
};

TEST_F(Ring, FlushHandsEveryPublishedRecordOnce)
{
	for (uint64_t i = 1; i <= 10; i++)
		ASSERT_TRUE(step(0x1000 * i));
	EXPECT_EQ(ring_unflushed(), 10u);
	ring_flush();
	ASSERT_EQ(sink.flushes.size(), 1u);
	EXPECT_EQ(sink.flushes[0].nslots, 10u);
	for (uint64_t i = 0; i < 10; i++)
		EXPECT_EQ(sink.flushes[0].copy[i].a, 0x1000 * (i + 1));
	EXPECT_EQ(ring_unflushed(), 0u);
	ring_flush(); // nothing new: no probe
	EXPECT_EQ(sink.flushes.size(), 1u);
	EXPECT_EQ(ring_counters.records[ASYNCTRACE_REC_STEP], 10u);
	EXPECT_EQ(ring_counters.flushes, 1u);
}

TEST_F(Ring, NoTracerDropsRecordsWithoutProbe)
{
	sink.on = false;
	ASSERT_TRUE(step(0x1000));
	ring_flush();
	EXPECT_TRUE(sink.flushes.empty());
	EXPECT_EQ(ring_unflushed(), 0u);
}

TEST_F(Ring, WrapAroundPadsAndSplitsTheFlush)
{
	// Fill up to one slot before the end, flushing as the watcher would.
	for (uint32_t i = 0; i < RING_SLOTS - 1; i++) {
		ASSERT_TRUE(step(0x10 + i));
		if (ring_unflushed() >= RING_SLOTS / 2)
			ring_flush();
	}
	ring_flush();
	sink.flushes.clear();
	ASSERT_EQ(ring_head(), RING_SLOTS - 1u);
	// A 2-slot record does not fit in the last slot: a PAD fills it and the
	// record starts at slot 0 (records never wrap).
	asynctrace_rec *r = create(0xabc0, 7, 9);
	ASSERT_NE(r, nullptr);
	EXPECT_EQ(ring_head(), RING_SLOTS + 2u);
	ring_flush();
	ASSERT_EQ(sink.flushes.size(), 2u);
	EXPECT_EQ(sink.flushes[0].nslots, 1u);
	EXPECT_EQ(sink.flushes[0].copy[0].type, ASYNCTRACE_REC_PAD);
	EXPECT_EQ(sink.flushes[0].copy[0].nslots, 1u);
	EXPECT_EQ(sink.flushes[1].nslots, 2u);
	EXPECT_EQ(sink.flushes[1].copy[0].type, ASYNCTRACE_REC_CREATE);
	EXPECT_EQ(sink.flushes[1].copy[0].a, 0xabc0u);
	EXPECT_EQ(sink.flushes[1].recs, sink.flushes[0].recs - (RING_SLOTS - 1)); // slot 0
}

TEST_F(Ring, FullRingFlushesItselfAndKicksOnce)
{
	for (uint32_t i = 0; i < RING_SLOTS; i++)
		ASSERT_TRUE(step(0x10 + i));
	EXPECT_EQ(ring_unflushed(), RING_SLOTS);
	EXPECT_EQ(sink.kicks, 1); // at RING_KICK, once until a flush
	EXPECT_TRUE(sink.flushes.empty());
	// Full: the producer flushes everything itself, then writes.
	ASSERT_TRUE(step(0xfeed0));
	EXPECT_EQ(ring_counters.self_flushes, 1u);
	EXPECT_EQ(flushed_slots(), RING_SLOTS);
	EXPECT_EQ(ring_unflushed(), 1u);
	EXPECT_EQ(ring_dropped(), 0u);
	EXPECT_EQ(ring_counters.records[ASYNCTRACE_REC_STEP], RING_SLOTS + 1u);
}

TEST_F(Ring, FlushKeepLeavesTheNewestRecords)
{
	for (uint32_t i = 0; i < 100; i++)
		ASSERT_TRUE(step(0x10 + i));
	ring_flush_keep(30);
	EXPECT_EQ(flushed_slots(), 70u);
	EXPECT_EQ(ring_unflushed(), 30u);
	ring_flush();
	EXPECT_EQ(flushed_slots(), 100u);
}

TEST_F(Ring, EraseOfAnUnflushedCreate)
{
	asynctrace_rec *r = create(0x7000, 1, 2);
	ASSERT_NE(r, nullptr);
	ASSERT_TRUE(step(0x7000));
	EXPECT_EQ(fresh_erase(0x7000), 1); // created and completed between two flushes
	EXPECT_EQ(r->type, ASYNCTRACE_REC_PAD);
	EXPECT_EQ(r->nslots, 2u);          // its length stays: flushers skip it
	EXPECT_EQ(ring_counters.erased, 1u);
	EXPECT_EQ(fresh_erase(0x7000), 0); // forgotten
	ring_flush();
	EXPECT_EQ(flushed_slots(), 3u);
}

TEST_F(Ring, NoEraseOnceFlushed)
{
	asynctrace_rec *r = create(0x7100, 1, 2);
	ASSERT_NE(r, nullptr);
	ring_flush();
	EXPECT_EQ(fresh_erase(0x7100), 0); // tracers have it: a COMPLETE must follow
	EXPECT_EQ(sink.flushes[0].copy[0].type, ASYNCTRACE_REC_CREATE);
}

TEST_F(Ring, NoEraseWhileAFlushHoldsTheLock)
{
	ASSERT_NE(create(0x7200, 1, 2), nullptr);
	ring_lock();
	EXPECT_EQ(fresh_erase(0x7200), 0);
	ring_unlock();
}

TEST_F(Ring, KeptTaskIsNotErased)
{
	ASSERT_NE(create(0x7300, 1, 2), nullptr);
	fresh_keep(0x7300);
	EXPECT_EQ(fresh_erase(0x7300), 0);
}

TEST_F(Ring, FreshCreateLockedKeepsTheLockAsItFoundIt)
{
	asynctrace_rec *r = create(0x7400, 1, 2);
	ASSERT_TRUE(ring_trylock());
	EXPECT_EQ(fresh_create_locked(0x7400), r);
	EXPECT_FALSE(ring_trylock()); // still ours
	EXPECT_EQ(fresh_create_locked(0x7500), nullptr); // unknown task: lock kept too
	EXPECT_FALSE(ring_trylock());
	ring_unlock();
	EXPECT_TRUE(ring_trylock());
	ring_unlock();
}

TEST_F(Ring, EdgeRidesInTheChildsCreateAndIsErasedWithIt)
{
	asynctrace_rec *r = create(0x7600, 1, 2);
	EXPECT_EQ(fresh_edge_into_create(0x7600, 0x9000, ASYNCTRACE_EDGE_GATHER), 1);
	auto *c = reinterpret_cast<asynctrace_rec_create *>(&r[1]);
	EXPECT_EQ(c->edge_awaiter, 0x9000u);
	EXPECT_EQ(c->edge_kind, (uint32_t)ASYNCTRACE_EDGE_GATHER + 1);
	// One edge a record: a second goes as its own record.
	EXPECT_EQ(fresh_edge_into_create(0x7600, 0x9100, ASYNCTRACE_EDGE_GATHER), 0);
	EXPECT_EQ(ring_counters.edges_in_create, 1u);
	EXPECT_EQ(fresh_erase(0x7600), 1);
}

TEST_F(Ring, RenameMovesTheFirstCreate)
{
	asynctrace_rec *o = create(0x7700, 5, 6);
	auto *oc = reinterpret_cast<asynctrace_rec_create *>(&o[1]);
	oc->edge_awaiter = 0x42;
	oc->edge_kind = 2;
	asynctrace_rec *n = create(0x7700, 0, 0, /*first=*/0); // a rename: parent and code "keep"
	EXPECT_EQ(o->type, ASYNCTRACE_REC_PAD);
	EXPECT_EQ(n->b, 5u);
	auto *nc = reinterpret_cast<asynctrace_rec_create *>(&n[1]);
	EXPECT_EQ(nc->code_id, 6u);
	EXPECT_EQ(nc->edge_awaiter, 0x42u);
	EXPECT_EQ(nc->edge_kind, 2u);
	EXPECT_EQ(fresh_erase(0x7700), 1); // the new one is the first now
	EXPECT_EQ(n->type, ASYNCTRACE_REC_PAD);
}

TEST_F(Ring, RenameAfterAFlushSendsBoth)
{
	ASSERT_NE(create(0x7800, 5, 6), nullptr);
	ring_flush();
	asynctrace_rec *n = create(0x7800, 0, 0, /*first=*/0);
	EXPECT_EQ(n->type, ASYNCTRACE_REC_CREATE);
	EXPECT_EQ(fresh_erase(0x7800), 0); // two CREATEs reach tracers: erase neither
}

} // namespace
