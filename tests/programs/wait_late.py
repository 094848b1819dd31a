# SPDX-License-Identifier: Apache-2.0
# An asyncio.wait() that began before the tracer attached and returns after:
# the main task waits (FIRST_COMPLETED) for "quick", which SIGUSR2 completes,
# and "left-pending". The test attaches while the wait is in progress (the
# replay finds it and sends its edges), then sends SIGUSR2; once the wait has
# returned nobody awaits "left-pending" any more (3.14's rule), and the truth
# is dumped then.
import asyncio
import signal

import _truth


async def sleeper():
    await asyncio.sleep(60)


async def body(stop):
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR2, go.set)
    quick = asyncio.create_task(go.wait(), name="quick")
    left = asyncio.create_task(sleeper(), name="left-pending")
    loop.call_soon(_truth.log, "WAITING")
    done, pending = await asyncio.wait([quick, left], return_when=asyncio.FIRST_COMPLETED)
    _truth.log("first completed:", [t.get_name() for t in done], [t.get_name() for t in pending])
    loop.call_later(0.2, _truth.dump, _truth.sys.argv[1], [loop])
    await stop.wait()
    left.cancel()
    return "done"


_truth.run(body, settle=3600)
