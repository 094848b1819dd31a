# SPDX-License-Identifier: Apache-2.0
"""A small service with task churn (scripts/demo-agent): ~50 requests a
second, each a `handle_request` task that awaits a `query_db` child task and
then finishes. Its task counters move: `asynctrace agent` exports them."""
import asyncio
import random


async def query_db(i):
    await asyncio.sleep(random.uniform(0.005, 0.05))
    return i


async def handle_request(i):
    row = await asyncio.create_task(query_db(i), name=f"db-{i}")
    await asyncio.sleep(random.uniform(0.01, 0.2))
    return row


async def main():
    i = 0
    print("serving", flush=True)
    while True:
        asyncio.create_task(handle_request(i), name=f"request-{i}")
        i += 1
        await asyncio.sleep(0.02)


asyncio.run(main())
