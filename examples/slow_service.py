# SPDX-License-Identifier: Apache-2.0
"""A small service whose event loop stalls now and then (scripts/demo-timing).

Handlers `http-<n>` answer requests from an in-process client at ~200/s and a
`metrics-flush` task runs twice a second: all quick. Once a second the
`report-builder` task builds a report, and somewhere in there a plain
function does ~150 ms of CPU work on the loop thread: every request waiting
meanwhile is late. `asynctrace top`, `slow` and `record` find which task and
which line.
"""
import asyncio
import time

ROWS = ["row-%06d," % i + "x" * 90 for i in range(20000)]


def checksum_rows(rows):
    total = 0
    for row in rows:
        for ch in row:
            total = (total * 31 + ord(ch)) & 0xFFFFFFFF
    return total


async def build_report(rows):
    await asyncio.sleep(0)
    return checksum_rows(rows)


async def report_builder():
    while True:
        await asyncio.sleep(1.0)
        await build_report(ROWS)


async def handler(queue):
    while True:
        fut = await queue.get()
        await asyncio.sleep(0.002)  # the "database"
        if not fut.done():
            fut.set_result(time.monotonic())


async def client(queue, late):
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0.005)
        fut = loop.create_future()
        sent = time.monotonic()
        await queue.put(fut)
        done = await fut
        late.append(done - sent)


async def metrics_flush(late):
    while True:
        await asyncio.sleep(0.5)
        late.clear()


async def main():
    queue = asyncio.Queue()
    late = []
    async with asyncio.TaskGroup() as tg:
        for i in range(4):
            tg.create_task(handler(queue), name=f"http-{i}")
        tg.create_task(client(queue, late), name="client")
        tg.create_task(metrics_flush(late), name="metrics-flush")
        tg.create_task(report_builder(), name="report-builder")
        asyncio.get_running_loop().call_later(0.3, lambda: print("serving", flush=True))


asyncio.run(main())
