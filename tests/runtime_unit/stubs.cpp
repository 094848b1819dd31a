// SPDX-License-Identifier: Apache-2.0
#include "stubs.h"

SinkStub sink;

extern "C" int ring_sink_on(void) { return sink.on; }

extern "C" void ring_sink_flush(struct asynctrace_rec *recs, uint64_t nslots, uint64_t dropped)
{
	sink.flushes.push_back({ recs, nslots, dropped, std::vector<asynctrace_rec>(recs, recs + nslots) });
}

extern "C" void ring_kick(void) { sink.kicks++; }
