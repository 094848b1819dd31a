# SPDX-License-Identifier: Apache-2.0
# Tasks on a uvloop loop (Debian's python3-uvloop, /usr/bin/python3.11).
import asyncio

import uvloop

import _truth


async def worker(stop, i):
    await stop.wait()
    return i * 2


async def body(stop):
    tasks = [asyncio.create_task(worker(stop, i), name=f"uv-{i}") for i in range(3)]
    res = await asyncio.gather(*tasks)
    _truth.log("uvloop:", type(asyncio.get_running_loop()).__module__, res)
    return sum(res)


_truth.run(body, loop_factory=uvloop.new_event_loop)
