// SPDX-License-Identifier: Apache-2.0
// The tracer side of the runtime's ring (ring.h), stubbed: records what
// batch__flush would have handed to a tracer.
#pragma once
#include <cstdint>
#include <vector>

#include "ring.h"

struct FlushCall {
	const asynctrace_rec *recs;
	uint64_t nslots;
	uint64_t dropped;
	std::vector<asynctrace_rec> copy;
};

struct SinkStub {
	bool on = true;
	int kicks = 0;
	std::vector<FlushCall> flushes;
	void reset()
	{
		on = true;
		kicks = 0;
		flushes.clear();
	}
};
extern SinkStub sink;
