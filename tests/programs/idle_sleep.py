# SPDX-License-Identifier: Apache-2.0
# The loop idles inside a 60-second sleep when the tracer attaches; the
# main task waits in asyncio.wait() for "stop-waiter", after a
# FIRST_COMPLETED wait left "left-pending" pending (and no longer awaited).
import asyncio

import _truth


async def sleeper(i):
    await asyncio.sleep(60)
    return i


async def body(stop):
    ts = [asyncio.create_task(sleeper(i), name=f"sleeper-{i}") for i in range(3)]
    # FIRST_COMPLETED returns with "left-pending" still pending: from then
    # on nobody awaits it (3.14 discards wait's edges when wait returns).
    quick = asyncio.create_task(asyncio.sleep(0), name="quick")
    left = asyncio.create_task(sleeper(3), name="left-pending")
    done, pending = await asyncio.wait([quick, left], return_when=asyncio.FIRST_COMPLETED)
    _truth.log("first completed:", [t.get_name() for t in done], [t.get_name() for t in pending])
    ts.append(left)
    waiter = asyncio.create_task(stop.wait(), name="stop-waiter")
    await asyncio.wait([waiter])
    for t in ts:
        t.cancel()
    res = await asyncio.gather(*ts, return_exceptions=True)
    _truth.log("cancelled:", [type(r).__name__ for r in res])
    return "idle"


_truth.run(body)
