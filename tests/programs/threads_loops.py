# SPDX-License-Identifier: Apache-2.0
# Three event loops in three threads, each with its own tasks.
import asyncio
import threading

import _truth

loops = []
started = threading.Barrier(3)


def thread_main(k, stop_flag):
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


async def body(stop):
    flag = threading.Event()
    ths = [threading.Thread(target=thread_main, args=(k, flag), name=f"loop-{k}") for k in range(2)]
    for t in ths:
        t.start()
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    await stop.wait()
    flag.set()
    for lp in loops:
        for t in asyncio.all_tasks(lp):
            if "-sub-" in t.get_name():
                lp.call_soon_threadsafe(t.cancel)
    for t in ths:
        t.join()
    return "joined"


_truth.run(body, settle=0.5, extra_loops=loops)
