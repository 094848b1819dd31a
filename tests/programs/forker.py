# SPDX-License-Identifier: Apache-2.0
# Forks while it may be traced. The parent keeps named tasks ("parent-*") and
# goes on ticking; on SIGUSR2 it forks a child that runs its own event loop
# with "child-*" tasks, prints "CHILD READY <pid>", finishes on SIGUSR1 and
# exits. The parent reaps it, then ends on SIGUSR1. The transcript holds only
# results, so a traced and an untraced run print the same.
import asyncio
import os
import signal
import sys


async def sleeper(prefix, i):
    await asyncio.sleep(3600)


async def work(i):
    await asyncio.sleep(0.001)
    return i * 3


def semaphores_raised():
    try:
        from asynctrace import _asynctrace
    except ImportError:
        return 0
    return sum(_asynctrace.semaphores().values())


def child():
    async def cmain():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, stop.set)
        ts = [asyncio.create_task(sleeper("child", i), name=f"child-{i}") for i in range(2)]
        # Work while the parent is traced: the child's probes must stay quiet.
        total = sum(await asyncio.gather(*(work(i) for i in range(200))))
        if "--semaphores" in sys.argv:
            print("child semaphores raised at start:", semaphores_raised(), file=sys.stderr, flush=True)
        print(f"CHILD READY {os.getpid()}", flush=True)
        await stop.wait()
        for t in ts:
            t.cancel()
        res = await asyncio.gather(*ts, return_exceptions=True)
        return total, [type(r).__name__ for r in res]

    # The parent's loop is not ours to use: a fresh one, as a forking server would.
    code = 1
    try:
        asyncio.events._set_running_loop(None)
        result = asyncio.run(cmain())
        print("child result:", result, flush=True)
        if "--semaphores" in sys.argv:
            print("child semaphores raised:", semaphores_raised(), file=sys.stderr, flush=True)
        code = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    fork_now = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, fork_now.set)
    ts = [asyncio.create_task(sleeper("parent", i), name=f"parent-{i}") for i in range(3)]
    print("READY", flush=True)
    await fork_now.wait()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)
        child()
    # The parent goes on working while the child runs.
    total = 0
    while not stop.is_set():
        total += sum(await asyncio.gather(*(work(i) for i in range(10))))
        await asyncio.sleep(0.01)
    _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    print("child exit status:", os.waitstatus_to_exitcode(status), flush=True)
    for t in ts:
        t.cancel()
    res = await asyncio.gather(*ts, return_exceptions=True)
    print("parent:", total > 0, [type(r).__name__ for r in res], flush=True)


asyncio.run(main())
