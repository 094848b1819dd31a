# SPDX-License-Identifier: Apache-2.0
# The loop idles inside a 60-second sleep when the tracer attaches.
import asyncio

import _truth


async def sleeper(i):
    await asyncio.sleep(60)
    return i


async def body(stop):
    ts = [asyncio.create_task(sleeper(i), name=f"sleeper-{i}") for i in range(3)]
    waiter = asyncio.create_task(stop.wait(), name="stop-waiter")
    await asyncio.wait([waiter])
    for t in ts:
        t.cancel()
    res = await asyncio.gather(*ts, return_exceptions=True)
    _truth.log("cancelled:", [type(r).__name__ for r in res])
    return "idle"


_truth.run(body)
