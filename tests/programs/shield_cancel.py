# SPDX-License-Identifier: Apache-2.0
# shield, cancellation and exceptions: finished tasks must not be shown.
import asyncio

import _truth


async def protected(stop):
    await stop.wait()
    return "protected"


async def fails():
    raise ValueError("boom")


async def cancelled_forever():
    await asyncio.sleep(3600)


async def survivor(stop):
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await stop.wait()
        return "survived"


async def body(stop):
    f = asyncio.create_task(fails(), name="fails")
    c = asyncio.create_task(cancelled_forever(), name="cancelled")
    s = asyncio.create_task(survivor(stop), name="survivor")
    await asyncio.sleep(0.01)
    c.cancel()
    s.cancel()
    await asyncio.sleep(0.01)
    _truth.log("fails:", repr(f.exception()), "cancelled:", c.cancelled())
    inner = asyncio.create_task(protected(stop), name="inner")
    res = await asyncio.shield(inner)
    _truth.log("survivor:", await s)
    return res


_truth.run(body)
