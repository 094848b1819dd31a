# SPDX-License-Identifier: Apache-2.0
# gather of coroutines, one of which gathers again.
import asyncio

import _truth


async def leaf(stop, i):
    await stop.wait()
    return i


async def branch(stop):
    return await asyncio.gather(leaf(stop, 1), leaf(stop, 2))


async def body(stop):
    res = await asyncio.gather(branch(stop), leaf(stop, 3), leaf(stop, 4))
    _truth.log("gather:", res)
    return sum(res[1:]) + sum(res[0])


_truth.run(body)
