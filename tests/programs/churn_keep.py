# SPDX-License-Identifier: Apache-2.0
"""Batch-path e2e program: long-lived tasks plus heavy churn.

Prints WAITING and waits for SIGUSR2 (so a tracer can attach first), then
runs 20 "keep-N" tasks that stay pending, 20,000 short tasks created and
completed in gathers of 500, and 50 tasks stepping through sleep(0) loops
(their states repeat). Then, from a loop callback, writes what it knows to
the JSON file argv[1] (the names of its pending tasks, the runtime's ring
counters), prints READY and waits for SIGUSR1 to finish.
"""
import asyncio
import json
import signal
import sys


async def main():
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR2, go.set)
    print("WAITING", flush=True)
    await go.wait()

    stop = asyncio.Event()
    keep = [asyncio.create_task(stop.wait(), name=f"keep-{i}") for i in range(20)]

    async def short(i):
        return i

    for b in range(40):
        await asyncio.gather(*[asyncio.create_task(short(i), name=f"churn-{b}-{i}") for i in range(500)])

    async def spinner():
        for _ in range(200):
            await asyncio.sleep(0)

    await asyncio.gather(*[asyncio.create_task(spinner(), name=f"spin-{i}") for i in range(50)])

    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, done.set)

    def report():
        from asynctrace import _asynctrace as C
        names = sorted(t.get_name() for t in asyncio.all_tasks(loop))
        with open(sys.argv[1], "w") as f:
            json.dump({"tasks": names, "ring": C.ring_stats()}, f)
        print("READY", flush=True)

    loop.call_soon(report)
    await done.wait()
    stop.set()
    await asyncio.gather(*keep)
    print("DONE", flush=True)


asyncio.run(main())
