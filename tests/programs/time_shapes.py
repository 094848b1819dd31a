# SPDX-License-Identifier: Apache-2.0
"""Tasks with known time shapes, each measuring its own steps.

  burner:   every step burns ~BURN_MS of CPU in burn_cpu(), a plain function,
            then sleeps SLEEP_MS;
  blocker:  every step blocks in blocking_io() (time.sleep, GIL released)
            for ~BLOCK_MS, then sleeps SLEEP_MS;
  sleeper-<i>: only sleeps (tiny steps);
  spinner:  sleep(0) in a loop, ~0.1 ms of work a step.

Ground truth: on SIGUSR1 (or after --seconds) the program prints one JSON
line with what each task measured of itself around its own work (steps it
ran and seconds of work per step), then exits. The e2e tests compare
asynctrace's timing with it.
"""
import asyncio
import json
import os
import signal
import sys
import time

BURN_MS = float(os.environ.get("BURN_MS", "200"))
BLOCK_MS = float(os.environ.get("BLOCK_MS", "150"))
SLEEP_MS = float(os.environ.get("SLEEP_MS", "300"))

truth = {}
stop = None


def burn_cpu(ms):
    end = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < end:
        x += 1
    return x


def blocking_io(ms):
    time.sleep(ms / 1000)


async def burner():
    t = truth.setdefault("burner", {"steps": 0, "work_s": 0.0, "max_s": 0.0, "min_s": 1e9})
    while True:
        t0 = time.perf_counter()
        burn_cpu(BURN_MS)
        d = time.perf_counter() - t0
        t["work_s"] += d
        t["max_s"] = max(t["max_s"], d)
        t["min_s"] = min(t["min_s"], d)
        t["steps"] += 1
        await asyncio.sleep(SLEEP_MS / 1000)


async def blocker():
    t = truth.setdefault("blocker", {"steps": 0, "work_s": 0.0, "max_s": 0.0, "min_s": 1e9})
    while True:
        t0 = time.perf_counter()
        blocking_io(BLOCK_MS)
        d = time.perf_counter() - t0
        t["work_s"] += d
        t["max_s"] = max(t["max_s"], d)
        t["min_s"] = min(t["min_s"], d)
        t["steps"] += 1
        await asyncio.sleep(SLEEP_MS / 1000)


async def sleeper(i):
    while True:
        await asyncio.sleep(0.05 * (i + 1))


async def spinner():
    t = truth.setdefault("spinner", {"steps": 0, "work_s": 0.0})
    while True:
        t["steps"] += 1
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)


async def main():
    global stop
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    tasks = [asyncio.create_task(burner(), name="burner"),
             asyncio.create_task(blocker(), name="blocker"),
             asyncio.create_task(spinner(), name="spinner")]
    tasks += [asyncio.create_task(sleeper(i), name=f"sleeper-{i}") for i in range(3)]
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3600
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"truth": truth}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
