# SPDX-License-Identifier: Apache-2.0
"""Benchmark workloads for scripts/bench (driven by bench/run.py).

usage: workload.py pingpong [--tasks N] [--steps N] [--rounds R] [--wait]
       workload.py churn    [--tasks N] [--batch N] [--rounds R] [--wait]
       workload.py server   [--port P]
       workload.py hold     [--tasks N]

With --wait the workload prints "ready pid=PID" and blocks on a line from stdin
before the timed part, so the driver can attach a tracer first. The timed
workloads print one line "result seconds=S1,S2,..." (wall time of each of the
R rounds of the timed part, each on a fresh event loop; nothing else is timed)
and " cpu=C1,C2,..." (CPU seconds of the whole process, all threads, in each).
server prints "serving port=P" once it accepts connections; hold prints
"holding tasks=N pid=PID" once its N tasks are pending in event.wait().
Both run until SIGTERM/SIGINT.
"""
import argparse
import asyncio
import os
import sys
import time


def _handshake(wait):
    if not wait:
        return
    print(f"ready pid={os.getpid()}", flush=True)
    # readline releases the GIL, so the asynctrace watcher thread can replay.
    if not sys.stdin.readline():
        sys.exit(1)


async def _pingpong(tasks, steps):
    async def player():
        for _ in range(steps):
            await asyncio.sleep(0)

    await asyncio.gather(*[asyncio.create_task(player()) for _ in range(tasks)])


async def _churn(tasks, batch):
    async def trivial():
        return None

    loop = asyncio.get_running_loop()
    done = 0
    while done < tasks:
        n = min(batch, tasks - done)
        await asyncio.gather(*[loop.create_task(trivial()) for _ in range(n)])
        done += n


def _timed(coro_fn, *args):
    """(wall seconds, CPU seconds of the whole process: every thread, user +
    system, so work a tracer does on another thread counts too)."""
    loop = asyncio.new_event_loop()
    try:
        c0 = time.process_time()
        t0 = time.perf_counter()
        loop.run_until_complete(coro_fn(*args))
        t1 = time.perf_counter()
        c1 = time.process_time()
    finally:
        loop.close()
    return t1 - t0, c1 - c0


def _report(runs):
    print("result seconds=" + ",".join(f"{w:.6f}" for w, _ in runs)
          + " cpu=" + ",".join(f"{c:.6f}" for _, c in runs), flush=True)
    C = sys.modules.get("asynctrace._asynctrace")
    if C is not None and hasattr(C, "ring_stats"):
        import json

        # What the batch path wrote and left out (for the cost breakdown).
        print("ring " + json.dumps(C.ring_stats()), flush=True)


async def _serve(port):
    from aiohttp import web  # Debian python3-aiohttp (python3.11 only)

    async def hello(_request):
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(f"serving port={port} pid={os.getpid()}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _hold(tasks):
    event = asyncio.Event()

    async def idle():
        await event.wait()

    held = [asyncio.create_task(idle()) for _ in range(tasks)]
    await asyncio.sleep(0)  # let every task reach event.wait()
    await asyncio.sleep(0)
    print(f"holding tasks={len(held)} pid={os.getpid()}", flush=True)
    await asyncio.Event().wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["pingpong", "churn", "server", "hold"])
    p.add_argument("--tasks", type=int)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--wait", action="store_true")
    a = p.parse_args()
    if a.mode == "pingpong":
        _handshake(a.wait)
        _report([_timed(_pingpong, a.tasks or 10_000, a.steps) for _ in range(a.rounds)])
    elif a.mode == "churn":
        _handshake(a.wait)
        _report([_timed(_churn, a.tasks or 1_000_000, a.batch) for _ in range(a.rounds)])
    elif a.mode == "server":
        try:
            asyncio.run(_serve(a.port))
        except KeyboardInterrupt:
            pass
    else:
        try:
            asyncio.run(_hold(a.tasks or 1000))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
