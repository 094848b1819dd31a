# SPDX-License-Identifier: Apache-2.0
# Chains of tasks awaiting tasks, and one task awaited by two others;
# tasks made by create_task, ensure_future and asyncio.Task(...) directly.
import asyncio

import _truth


async def bottom(stop):
    await stop.wait()
    return "bottom"


async def middle(t):
    return await t


async def body(stop):
    loop = asyncio.get_running_loop()
    shared = asyncio.Task(bottom(stop), name="shared")
    a = loop.create_task(middle(shared), name="a")
    b = asyncio.ensure_future(middle(shared))
    b.set_name("b")
    top = asyncio.create_task(middle(a), name="top")
    res = await asyncio.wait_for(top, 3600)
    _truth.log("top:", res, "b:", await b)
    return res


_truth.run(body)
