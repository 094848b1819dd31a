# SPDX-License-Identifier: Apache-2.0
# Semaphore contention: two holders, three waiters.
import asyncio

import _truth


async def user(stop, sem, i, log):
    async with sem:
        log.append(i)
        await stop.wait()
    return i


async def body(stop):
    sem = asyncio.Semaphore(2)
    log = []
    tasks = [asyncio.create_task(user(stop, sem, i, log), name=f"user-{i}") for i in range(5)]
    done = await asyncio.gather(*tasks)
    _truth.log("order:", log, done)
    return len(done)


_truth.run(body)
