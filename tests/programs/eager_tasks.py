# SPDX-License-Identifier: Apache-2.0
# Eager tasks (3.12+): the first step runs inside create_task.
import asyncio

import _truth


async def quick(i):
    return i


async def slow(stop, i):
    await stop.wait()
    return i


async def body(stop):
    asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    q = [asyncio.create_task(quick(i), name=f"quick-{i}") for i in range(3)]
    s = [asyncio.create_task(slow(stop, i), name=f"slow-{i}") for i in range(3)]
    _truth.log("quick done at once:", [t.done() for t in q])
    res = await asyncio.gather(*s)
    return sum(res) + sum(t.result() for t in q)


_truth.run(body)
