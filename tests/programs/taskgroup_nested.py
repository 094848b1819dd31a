# SPDX-License-Identifier: Apache-2.0
# Nested TaskGroups: main -> group of workers, one of which owns a group itself.
import asyncio

import _truth


async def leaf(stop, i):
    await stop.wait()
    return i


async def worker(stop, i):
    if i == 1:
        async with asyncio.TaskGroup() as tg:
            subs = [tg.create_task(leaf(stop, 10 + k), name=f"leaf-{k}") for k in range(2)]
        return sum(s.result() for s in subs)
    await stop.wait()
    return i


async def body(stop):
    async with asyncio.TaskGroup() as tg:
        ws = [tg.create_task(worker(stop, i), name=f"worker-{i}") for i in range(3)]
    _truth.log("workers:", [w.get_name() for w in ws], [w.result() for w in ws])
    return "done"


_truth.run(body)
