# SPDX-License-Identifier: Apache-2.0
"""Target program for smoke.py. Modes: live [uvloop] | idle | busy.

live: waits for a tracer, runs a workload covering every way a task is made,
prints the ids smoke.py must find in the trace as one JSON line, then waits
for the tracer to go away and reports whether the semaphores are zero again.
"""
import asyncio
import gc
import json
import os
import sys
import time

import asynctrace

asynctrace.enable()
from asynctrace import _asynctrace as C  # noqa: E402

MODE = sys.argv[1]
UVLOOP = "uvloop" in sys.argv[2:]
ids = {}


def wait_attached():
    print(os.getpid(), flush=True)
    deadline = time.time() + 20
    while C.semaphores()["replay__end"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # bpftrace sets semaphores before it attaches the probes


async def leaf(t=0.01):
    await asyncio.sleep(t)
    return 1


async def mid():
    return await leaf()


async def quick():
    return 7


async def boom():
    await asyncio.sleep(0)
    raise ValueError("boom")


async def forever(fut):
    await fut


class MyTask(asyncio.Task):
    def __init__(self, coro, **kw):
        super().__init__(coro, **kw)


async def live():
    loop = asyncio.get_running_loop()
    ids["main"] = id(asyncio.current_task())
    t = asyncio.create_task(mid(), name="t_create")
    ids["t_create"] = id(t)
    await t
    g = asyncio.gather(leaf(), leaf())
    ids["gather_children"] = [id(c) for c in g._children]
    await g
    t = asyncio.Task(leaf(), name="t_direct")
    ids["t_direct"] = id(t)
    await t
    t = asyncio.ensure_future(leaf())
    ids["t_ensure"] = id(t)
    await t
    t = MyTask(leaf(), name="t_subclass")
    ids["t_subclass"] = id(t)
    await t
    t = asyncio.create_task(boom(), name="t_exc")
    ids["t_exc"] = id(t)
    try:
        await t
    except ValueError:
        pass
    t = asyncio.create_task(leaf(10), name="t_cancel")
    ids["t_cancel"] = id(t)
    await asyncio.sleep(0)
    t.cancel()
    try:
        await t
    except asyncio.CancelledError:
        pass
    inner = asyncio.ensure_future(leaf(0.05))
    ids["shield_inner"] = id(inner)
    await asyncio.shield(inner)
    if sys.version_info >= (3, 11):
        async with asyncio.TaskGroup() as tg:
            t = tg.create_task(leaf(), name="t_tg")
        ids["t_tg"] = id(t)
    if sys.version_info >= (3, 12):
        loop.set_task_factory(asyncio.eager_task_factory)
        t = loop.create_task(mid(), name="t_eager")
        ids["t_eager"] = id(t)
        await t
        t = loop.create_task(quick(), name="t_eager_done")
        ids["t_eager_done"] = id(t)
        await t
        loop.set_task_factory(None)
    fut = loop.create_future()
    t = asyncio.create_task(forever(fut), name="t_destroyed")
    ids["t_destroyed"] = id(t)
    await asyncio.sleep(0)
    del t, fut
    gc.collect()


def run(coro):
    if UVLOOP:
        import uvloop

        return uvloop.run(coro) if hasattr(uvloop, "run") else uvloop.install() or asyncio.run(coro)
    return asyncio.run(coro)


async def deep(n):
    if n == 0:
        await asyncio.sleep(60)
    else:
        await deep(n - 1)


def cpu():
    x = 0
    while True:
        x += 1


async def busy():
    await asyncio.sleep(0.05)
    cpu()


async def child():
    await asyncio.sleep(60)


async def idle():
    asyncio.create_task(deep(3), name="deep3")
    if sys.version_info >= (3, 11):
        async def tg():
            async with asyncio.TaskGroup() as g:
                g.create_task(child(), name="tgchild")

        asyncio.create_task(tg(), name="tgowner")
    if MODE == "busy":
        asyncio.create_task(busy(), name="busy")
    print(os.getpid(), flush=True)
    await asyncio.sleep(60)


if MODE == "live":
    wait_attached()
    run(live())
    print(json.dumps(ids), flush=True)
    deadline = time.time() + 20
    while any(C.semaphores().values()) and time.time() < deadline:
        time.sleep(0.05)
    sems = C.semaphores()
    print("SEM_ZERO" if not any(sems.values()) else "SEM_NONZERO %s" % sems, flush=True)
else:
    run(idle())
