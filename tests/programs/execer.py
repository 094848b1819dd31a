# SPDX-License-Identifier: Apache-2.0
# Replaces itself while it may be traced: "before-*" tasks, READY; on SIGUSR2
# it exec()s the same interpreter on this file with --after, which runs a new
# asyncio program ("after-*" tasks), prints AFTER READY, and ends on SIGUSR1.
# With --semaphores the new image reports on stderr whether its probes are
# armed when it ends (they must not be, once every tracer is gone).
import asyncio
import os
import signal
import sys


async def sleeper(i):
    await asyncio.sleep(3600)


async def before():
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR2, go.set)
    ts = [asyncio.create_task(sleeper(i), name=f"before-{i}") for i in range(3)]
    print("READY", flush=True)
    await go.wait()
    print("exec", flush=True)
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "--after", *sys.argv[1:]])
    return ts  # not reached


async def after():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    ts = [asyncio.create_task(sleeper(i), name=f"after-{i}") for i in range(2)]
    print("AFTER READY", flush=True)
    await stop.wait()
    for t in ts:
        t.cancel()
    res = await asyncio.gather(*ts, return_exceptions=True)
    print("after:", [type(r).__name__ for r in res], flush=True)


def semaphores_raised():
    try:
        from asynctrace import _asynctrace
    except ImportError:
        return 0
    return sum(_asynctrace.semaphores().values())


if "--after" in sys.argv:
    asyncio.run(after())
    if "--semaphores" in sys.argv:
        print("semaphores raised at exit:", semaphores_raised(), file=sys.stderr, flush=True)
else:
    asyncio.run(before())
