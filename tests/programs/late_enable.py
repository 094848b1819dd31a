# SPDX-License-Identifier: Apache-2.0
# asynctrace.enable() called late, from inside the main task's step (as an
# injected enable() runs), after three loops already have pending tasks: two
# loops in threads of their own (idle in asyncio.sleep) and one loop that
# never ran (its task created, never stepped). The replay must show them all.
# The package comes from $ASYNCTRACE_E2E_PKG (build/python/cpXY), added to
# sys.path only then: the program starts without asynctrace.
import asyncio
import os
import sys
import threading

import _truth

loops = []
started = threading.Barrier(3)


def thread_main(k):
    async def sub(i):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return i

    async def tmain():
        loop = asyncio.get_running_loop()
        _truth.register_loop(loop)
        loops.append(loop)
        ts = [asyncio.create_task(sub(i), name=f"t{k}-sub-{i}") for i in range(2)]
        started.wait()
        return await asyncio.gather(*ts)

    asyncio.run(tmain())


async def never_stepped():
    await asyncio.sleep(3600)


async def body(stop):
    ths = [threading.Thread(target=thread_main, args=(k,), name=f"loop-{k}") for k in range(2)]
    for t in ths:
        t.start()
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    idle = asyncio.new_event_loop()
    _truth.register_loop(idle)  # its tasks belong to no thread: shown on the main one
    loops.append(idle)
    parked = idle.create_task(never_stepped(), name="parked")
    pkg = os.environ.get("ASYNCTRACE_E2E_PKG")
    if pkg:
        sys.path.insert(0, pkg)
        import asynctrace

        asynctrace.enable()  # inside this task's step
        if not asynctrace.is_enabled():
            raise SystemExit("asynctrace.enable() failed")
    await stop.wait()
    for lp in loops[:2]:
        for t in asyncio.all_tasks(lp):
            if "-sub-" in t.get_name():
                lp.call_soon_threadsafe(t.cancel)
    for t in ths:
        t.join()
    parked.cancel()

    def finish_idle():  # a thread with no running loop may run it
        idle.run_until_complete(asyncio.sleep(0))
        idle.close()
        return parked.cancelled()

    return "joined", await asyncio.get_running_loop().run_in_executor(None, finish_idle)


_truth.run(body, settle=0.5, extra_loops=loops)
