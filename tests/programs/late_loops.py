# SPDX-License-Identifier: Apache-2.0
# Starts event loops in new threads while it may be traced. The main loop has
# a "main-sleeper" task; each SIGUSR2 starts thread k with its own loop and
# tasks "late-k-0", "late-k-1", then prints "LOOP k READY <native tid>".
# SIGUSR1 stops every loop, joins the threads and prints the results.
import asyncio
import signal
import threading

loops = {}  # k -> (loop, stop event)


def thread_main(k, ready):
    async def sub(i):
        await stop.wait()
        return k * 10 + i

    async def tmain():
        nonlocal stop
        stop = asyncio.Event()
        loops[k] = (asyncio.get_running_loop(), stop)
        ts = [asyncio.create_task(sub(i), name=f"late-{k}-{i}") for i in range(2)]
        await asyncio.sleep(0)  # let both tasks start and suspend
        ready.set()
        return await asyncio.gather(*ts)

    stop = None
    results[k] = asyncio.run(tmain())


results = {}


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    start = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, start.set)
    sleeper = asyncio.create_task(stop.wait(), name="main-sleeper")
    threads = []
    print("READY", flush=True)
    while not stop.is_set():
        done, _ = await asyncio.wait([sleeper, asyncio.create_task(start.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if start.is_set():
            start.clear()
            k = len(threads)
            ready = threading.Event()
            th = threading.Thread(target=thread_main, args=(k, ready), name=f"late-loop-{k}")
            th.start()
            await loop.run_in_executor(None, ready.wait)
            threads.append(th)
            print(f"LOOP {k} READY {th.native_id}", flush=True)
    for lp, ev in loops.values():
        lp.call_soon_threadsafe(ev.set)
    for th in threads:
        await loop.run_in_executor(None, th.join)
    print("results:", [results[k] for k in sorted(results)], flush=True)


asyncio.run(main())
