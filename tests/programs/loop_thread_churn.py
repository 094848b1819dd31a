# SPDX-License-Identifier: Apache-2.0
"""Many short-lived loop threads, then one with slow steps (step slots).

Prints {"ready": ...}, waits until a tracer holds timing__on, then runs
THREADS (default 70, more than the runtime's 64 step slots) short event
loops, each in its own thread, one after the other (each thread exits
before the next starts). Then one more loop thread runs the task
"late_burner", whose steps burn BURN_MS of CPU in burn_late(), STEPS times.
Prints {"done": true} and waits for SIGTERM/SIGINT (or 60 s).
"""
import asyncio
import json
import os
import sys
import threading
import time

import asynctrace._asynctrace as rt

THREADS = int(os.environ.get("THREADS", "70"))
BURN_MS = float(os.environ.get("BURN_MS", "250"))
STEPS = int(os.environ.get("STEPS", "4"))


def burn_late(ms):
    end = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < end:
        x += 1
    return x


async def short():
    for _ in range(3):
        await asyncio.sleep(0)


async def late_burner():
    for _ in range(STEPS):
        burn_late(BURN_MS)
        await asyncio.sleep(0.05)


def run_loop(coro_fn, name=None):
    async def main():
        await asyncio.create_task(coro_fn(), name=name)
    asyncio.run(main())


def main():
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sem = rt.semaphores()
        if sem.get("timing__on") and sem.get("batch__flush"):
            break
        time.sleep(0.05)
    else:
        print(json.dumps({"error": "no tracer"}), flush=True)
        sys.exit(1)
    time.sleep(0.3)
    for i in range(THREADS):
        t = threading.Thread(target=run_loop, args=(short,), name=f"churn-{i}")
        t.start()
        t.join()
    t = threading.Thread(target=run_loop, args=(late_burner, "late_burner"), name="late")
    t.start()
    t.join()
    print(json.dumps({"done": True, "threads": THREADS + 1}), flush=True)
    time.sleep(60)


if __name__ == "__main__":
    main()
