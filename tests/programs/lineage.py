# SPDX-License-Identifier: Apache-2.0
"""Creation lineage: on SIGUSR2 (sent once a tracer is attached), task
`spawner` creates `child`, which creates `grandchild` (plus a gather of two
`leaf-<i>` tasks); all then wait. Prints one JSON line with id(task) of each,
then waits for SIGUSR1 to finish."""
import asyncio
import json
import signal

ids = {}


async def leaf():
    await asyncio.sleep(3600)


async def grandchild():
    ids["grandchild"] = id(asyncio.current_task())
    await asyncio.sleep(3600)


async def child():
    ids["child"] = id(asyncio.current_task())
    g = asyncio.create_task(grandchild(), name="grandchild")
    await asyncio.sleep(0)
    leaves = [asyncio.create_task(leaf(), name=f"leaf-{i}") for i in range(2)]
    for i, t in enumerate(leaves):
        ids[f"leaf-{i}"] = id(t)
    await asyncio.gather(g, *leaves)


async def spawner(done):
    ids["spawner"] = id(asyncio.current_task())
    c = asyncio.create_task(child(), name="child")
    await asyncio.sleep(0.05)
    done.set()
    await c


async def main():
    loop = asyncio.get_running_loop()
    go, stop, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR2, go.set)
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    print("WAITING", flush=True)
    await go.wait()
    s = asyncio.create_task(spawner(done), name="spawner")
    await done.wait()
    print(json.dumps(ids), flush=True)
    await stop.wait()
    s.cancel()
    await asyncio.gather(s, return_exceptions=True)


asyncio.run(main())
