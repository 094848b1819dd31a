# SPDX-License-Identifier: Apache-2.0
"""Idle tasks, one of them stuck, for top's "stuck" warning:
  stuck    a coroutine of its own awaiting an asyncio.Event nobody sets, no
           timeout (genuinely stuck)
  napper   sleeps in asyncio.sleep(3600) (a wait it chose)
  main     awaits asyncio.wait_for(stop.wait(), SECONDS) (a timeout)
Prints {"ready": true, "pid": P}; SIGUSR1 ends it, printing {"truth": {...}}.
"""
import asyncio
import json
import os
import signal
import sys


async def wait_for_nothing(never):
    await never.wait()


async def main(seconds):
    never, stop = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stop.set)
    tasks = [asyncio.create_task(wait_for_nothing(never), name="stuck"),
             asyncio.create_task(asyncio.sleep(3600), name="napper")]
    await asyncio.sleep(0)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"truth": {"stuck_set": never.is_set()}}), flush=True)


asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 300))
