# SPDX-License-Identifier: Apache-2.0
"""High task turnover around a fixed structure (tests/e2e/parity_test.cpp).

A "keepers" task owns a TaskGroup of KEEPERS tasks that wait for the end; a
"churner" task gathers batches of BATCH (argv[2], default 1000) short tasks
("churn-N", one sleep(0) each) back to back, so tasks are created and freed
all the time.
At any moment at most BATCH churn tasks are pending. The truth file (argv[1])
is written once, from a loop callback: every pending task, as _truth does;
the keepers' part of it never changes. SIGUSR1 ends it.
"""
import asyncio
import sys

import _truth

KEEPERS = 8
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 1000


async def keeper(stop):
    await stop.wait()


async def keepers(stop):
    async with asyncio.TaskGroup() as tg:
        for i in range(KEEPERS):
            tg.create_task(keeper(stop), name=f"keeper-{i}")


async def short():
    await asyncio.sleep(0)


async def churner(stop):
    n = 0
    while not stop.is_set():
        await asyncio.gather(*[asyncio.create_task(short(), name=f"churn-{n + i}") for i in range(BATCH)])
        n += BATCH
    return n


async def body(stop):
    k = asyncio.create_task(keepers(stop), name="keepers")
    c = asyncio.create_task(churner(stop), name="churner")
    await stop.wait()
    await k
    _truth.log("churned at least", BATCH if await c > 0 else 0)
    return "done"


_truth.run(body, settle=0.5)
