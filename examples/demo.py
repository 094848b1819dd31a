# SPDX-License-Identifier: Apache-2.0
"""A small asyncio service for the README demo: a TaskGroup of workers, some
waiting on a shared lock, one gathering sub-requests."""
import asyncio


async def fetch(i):
    await asyncio.sleep(3600)
    return i


async def handle_batch(n):
    return await asyncio.gather(*(fetch(i) for i in range(n)))


async def locked_worker(lock, i):
    async with lock:
        await asyncio.sleep(3600)


async def main():
    lock = asyncio.Lock()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(handle_batch(2), name="batch-handler")
        for i in range(2):
            tg.create_task(locked_worker(lock, i), name=f"locked-{i}")
        asyncio.get_running_loop().call_later(0.3, lambda: print("serving", flush=True))


asyncio.run(main())
