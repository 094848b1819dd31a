# SPDX-License-Identifier: Apache-2.0
# Task churn for scripts/soak: ALIVE top-level tasks at all times, each living
# a short random time and replaced as it finishes. They sleep, await a child
# task, gather two children, get cancelled or raise, so that every probe
# (create, await, resume, edges, complete) keeps firing. Prints READY once
# ALIVE tasks exist; every second writes {"alive": len(all_tasks()), ...} to
# the --status file (atomically); SIGUSR1 ends it.
import argparse
import asyncio
import json
import os
import random
import signal
import time


async def leaf(t):
    await asyncio.sleep(t)
    return 1


async def with_child(t):
    return await asyncio.create_task(leaf(t), name="child")


async def with_gather(t):
    return sum(await asyncio.gather(leaf(t), leaf(t / 2)))


async def raises(t):
    await asyncio.sleep(t)
    raise ValueError("expected")


async def main(args):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    rng = random.Random(4)
    stats = {"created": 0, "done": 0, "cancelled": 0, "failed": 0}
    kinds = [leaf, with_child, with_gather, raises]

    def spawn():
        k = rng.randrange(5)
        t = rng.uniform(0.2, args.max_life)
        if k == 4:  # cancelled half-way by its own timer
            task = loop.create_task(leaf(t * 2), name=f"churn-{stats['created']}")
            loop.call_later(t, task.cancel)
        else:
            task = loop.create_task(kinds[k](t), name=f"churn-{stats['created']}")
        stats["created"] += 1
        task.add_done_callback(finished)

    def finished(task):
        if task.cancelled():
            stats["cancelled"] += 1
        elif task.exception() is not None:
            stats["failed"] += 1
        else:
            stats["done"] += 1
        if not stop.is_set():
            spawn()

    for _ in range(args.alive):
        spawn()
    print("READY", flush=True)
    while not stop.is_set():
        status = dict(stats, alive=len(asyncio.all_tasks()), time=time.time())
        tmp = args.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(status, f)
        os.replace(tmp, args.status)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    print("churned:", stats["created"], "tasks", flush=True)


p = argparse.ArgumentParser()
p.add_argument("--alive", type=int, default=3000)
p.add_argument("--max-life", type=float, default=3.0)
p.add_argument("--status", required=True)
asyncio.run(main(p.parse_args()))
