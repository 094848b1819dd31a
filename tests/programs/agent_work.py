# SPDX-License-Identifier: Apache-2.0
# Work with known counts for the agent's e2e tests: WORKERS tasks of coroutine
# `worker`, each taking STEPS+1 steps (STEPS sleep(0) yields) and completing,
# plus IDLE tasks of coroutine `idler` that stay suspended. Prints READY, does
# the work, prints its own counts as one JSON line {"truth": ...}, then stays
# alive (tasks suspended) until SIGUSR1 or LINGER seconds, and exits with
# os._exit so asyncio.run's shutdown creates no further tasks.
#
# usage: agent_work.py WORKERS STEPS IDLE LINGER
import asyncio
import json
import os
import signal
import sys
import time

WORKERS, STEPS, IDLE, LINGER = (int(a) for a in sys.argv[1:5])

steps_done = 0


async def worker(i):
    global steps_done
    for _ in range(STEPS):
        steps_done += 1
        await asyncio.sleep(0)
    steps_done += 1


async def idler():
    await asyncio.sleep(3600)


async def main():
    # A bare future to linger on: wait_for() would add a task of its own.
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def end():
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGUSR1, end)
    created = 1  # this task
    idle = [asyncio.create_task(idler(), name=f"idle-{i}") for i in range(IDLE)]
    created += len(idle)
    print("READY", flush=True)
    await asyncio.sleep(0.5)
    completed = 0
    for start in range(0, WORKERS, 50):  # waves of 50
        batch = [asyncio.create_task(worker(i), name=f"worker-{i}")
                 for i in range(start, min(WORKERS, start + 50))]
        created += len(batch)
        await asyncio.gather(*batch)
        completed += len(batch)
        await asyncio.sleep(0.05)
    print(json.dumps({"truth": {"created": created, "completed": completed,
                                "alive": len(asyncio.all_tasks()),
                                "worker_steps": steps_done}}), flush=True)
    loop.call_later(LINGER, end)
    await stop
    sys.stdout.flush()
    os._exit(0)


# The runtime turns timing on at its watcher's first poll (every 5 ms) once
# the agent holds timing__on: wait for it, so every task is counted.
time.sleep(0.3)
asyncio.run(main())
