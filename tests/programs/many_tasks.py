# SPDX-License-Identifier: Apache-2.0
# 10,000 pending tasks (argv[2]: another count).
import asyncio
import sys

import _truth

N = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000


async def idle(stop, i):
    await stop.wait()
    return i


async def body(stop):
    tasks = [asyncio.create_task(idle(stop, i), name=f"idle-{i}") for i in range(N)]
    total = sum(await asyncio.gather(*tasks))
    _truth.log("sum:", total)
    return total


_truth.run(body, settle=1.0)
