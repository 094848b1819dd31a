# SPDX-License-Identifier: Apache-2.0
# A busy asyncio program whose transcript does not depend on timing: a few
# long-lived named tasks, and every tick a gather of short-lived tasks, a
# nested await, a cancellation and a caught exception, each checked against
# the expected result. Prints READY once its long-lived tasks exist; SIGUSR1
# ends it after the current tick, and it prints what it saw (counts of
# mismatches, never of ticks, so traced and untraced runs print the same).
import asyncio
import signal
import sys

N_SLEEPERS = 3


async def sleeper(i):
    await asyncio.sleep(3600)


async def square(i):
    await asyncio.sleep(0)
    return i * i


async def nested(i):
    return await asyncio.create_task(square(i), name=f"nested-{i}")


async def fails(i):
    await asyncio.sleep(0)
    raise ValueError(f"boom {i}")


async def tick(n, seen):
    values = await asyncio.gather(*(asyncio.create_task(square(i), name=f"sq-{i}") for i in range(5)))
    if values != [0, 1, 4, 9, 16]:
        seen["bad_gather"] += 1
    if await nested(n % 7) != (n % 7) ** 2:
        seen["bad_nested"] += 1
    victim = asyncio.create_task(asyncio.sleep(3600), name="victim")
    await asyncio.sleep(0)
    victim.cancel()
    try:
        await victim
        seen["bad_cancel"] += 1
    except asyncio.CancelledError:
        pass
    try:
        await asyncio.create_task(fails(n), name="fails")
        seen["bad_raise"] += 1
    except ValueError as e:
        if str(e) != f"boom {n}":
            seen["bad_raise"] += 1


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    sleepers = [asyncio.create_task(sleeper(i), name=f"sleeper-{i}") for i in range(N_SLEEPERS)]
    seen = {"bad_gather": 0, "bad_nested": 0, "bad_cancel": 0, "bad_raise": 0}
    print("READY", flush=True)
    n = 0
    while not stop.is_set():
        await tick(n, seen)
        n += 1
        await asyncio.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.01)
    for t in sleepers:
        t.cancel()
    res = await asyncio.gather(*sleepers, return_exceptions=True)
    print("ran ticks:", n > 0, flush=True)
    print("mismatches:", seen, flush=True)
    print("sleepers:", [type(r).__name__ for r in res], flush=True)
    left = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    print("tasks left:", left, flush=True)


asyncio.run(main())
