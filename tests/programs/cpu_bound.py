# SPDX-License-Identifier: Apache-2.0
# A task blocks the loop in CPU-bound Python code when the tracer attaches.
import asyncio
import signal
import sys
import time

import _truth

stopped = False


def on_usr1(*_):
    global stopped
    stopped = True


def burn(path, loop):
    # The truth is taken here, while this task runs; then the loop is blocked.
    _truth.dump(path, [loop])
    x = 0
    while not stopped:
        x += 1
    return x >= 0  # x may be 0 if SIGUSR1 came before the first spin


async def waiter(i):
    await asyncio.sleep(3600)


async def main():
    loop = asyncio.get_running_loop()
    _truth.register_loop(loop)
    ws = [asyncio.create_task(waiter(i), name=f"waiter-{i}") for i in range(2)]
    await asyncio.sleep(0.1)
    ok = burn(sys.argv[1], loop)
    for w in ws:
        w.cancel()
    await asyncio.gather(*ws, return_exceptions=True)
    return ok


signal.signal(signal.SIGUSR1, on_usr1)
_truth.log("result:", asyncio.run(main(), debug=False))
