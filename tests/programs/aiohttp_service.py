# SPDX-License-Identifier: Apache-2.0
"""A real aiohttp service under a bounded local load, for the e2e tests that
check what asynctrace reports on a live program (lineage, state, timing,
profiles) where task addresses are reused and state churns.

Handlers:
  /sleep   awaits asyncio.sleep(SLEEP_MS)
  /fanout  a TaskGroup of FANOUT short tasks (fanout_part), each sleeping
           PART_MS (asyncio.gather of them before Python 3.11)
  /report  awaits db_query() (a sleep); BLOCK_PCT of these requests (every
           one whose number mod 10 is below BLOCK_PCT/10) then block the loop
           in block_loop(): time.sleep(BLOCK_MS), in the handler's step

The load is a child process (the same script, `--load PORT`, run isolated
so it is never traced) with CONCURRENCY clients cycling through the paths.

Usage: aiohttp_service.py [SECONDS]
Prints {"ready": true, "pid": P, "port": N} once requests flow. On SIGUSR2 it prints
{"counters": {...}} (the blocking calls so far, and its CLOCK_MONOTONIC time
"at_s") and keeps serving, so a test can take what happened during a window.
On SIGUSR1 (or after SECONDS) it stops the load, then prints {"truth": {...}} with what it
measured of itself: requests served per path, the blocking calls (count,
total/min/max seconds inside block_loop, and their spans in CLOCK_MONOTONIC
seconds), the longest fan-out (fanout_max_s: from before its parts were
created to after the last ended), the longest a request task lived from its
handler's start (request_max_s), and the ids of the request tasks and fan-out
parts, so a test can tell that addresses were reused.
"""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

SLEEP_MS = float(os.environ.get("SLEEP_MS", "20"))
PART_MS = float(os.environ.get("PART_MS", "30"))
FANOUT = int(os.environ.get("FANOUT", "5"))
BLOCK_MS = float(os.environ.get("BLOCK_MS", "300"))
BLOCK_PCT = int(os.environ.get("BLOCK_PCT", "30"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "8"))
PATHS = ["/sleep", "/fanout", "/report", "/fanout", "/sleep"]


def block_loop(ms):
    t0 = time.perf_counter()
    time.sleep(ms / 1000)
    return time.perf_counter() - t0


def serve(seconds):
    from aiohttp import web

    truth = {"requests": {}, "block": {"count": 0, "total_s": 0.0, "min_s": 1e9, "max_s": 0.0},
             "fanout_parts": 0, "fanout_max_s": 0.0, "request_max_s": 0.0}
    request_ids, part_ids = set(), set()
    blocks = []  # [start, end] of each block_loop, time.monotonic()
    reports = [0]

    def request_done(t0):
        truth["request_max_s"] = max(truth["request_max_s"], time.monotonic() - t0)

    def served(path):
        truth["requests"][path] = truth["requests"].get(path, 0) + 1
        task = asyncio.current_task()
        request_ids.add(id(task))
        # How long request tasks live, from their handler's start (a done
        # callback: no frame added to the handlers' stacks).
        task.add_done_callback(lambda _t, t0=time.monotonic(): request_done(t0))

    async def handle_sleep(request):
        served("/sleep")
        await asyncio.sleep(SLEEP_MS / 1000)
        return web.Response(text="slept\n")

    async def fanout_part(i):
        part_ids.add(id(asyncio.current_task()))
        truth["fanout_parts"] += 1
        await asyncio.sleep(PART_MS / 1000)
        return i

    async def handle_fanout(request):
        served("/fanout")
        t0 = time.monotonic()
        try:
            if hasattr(asyncio, "TaskGroup"):
                async with asyncio.TaskGroup() as tg:
                    parts = [tg.create_task(fanout_part(i), name=f"part-{i}") for i in range(FANOUT)]
                total = sum(p.result() for p in parts)
            else:
                total = sum(await asyncio.gather(*(fanout_part(i) for i in range(FANOUT))))
        finally:
            # Bounds the lifetime of every part of this fan-out (cancelled ones too).
            truth["fanout_max_s"] = max(truth["fanout_max_s"], time.monotonic() - t0)
        return web.Response(text=f"fanout {total}\n")

    async def db_query():
        await asyncio.sleep(SLEEP_MS / 1000)
        return 42

    async def handle_report(request):
        served("/report")
        n = reports[0]
        reports[0] += 1
        rows = await db_query()
        if n % 10 < BLOCK_PCT // 10:
            d = block_loop(BLOCK_MS)
            end = time.monotonic()  # CLOCK_MONOTONIC, as the tracer's clock
            blocks.append([end - d, end])
            b = truth["block"]
            b["count"] += 1
            b["total_s"] += d
            b["min_s"] = min(b["min_s"], d)
            b["max_s"] = max(b["max_s"], d)
        return web.Response(text=f"report {rows}\n")

    async def main():
        app = web.Application()
        app.router.add_get("/sleep", handle_sleep)
        app.router.add_get("/fanout", handle_fanout)
        app.router.add_get("/report", handle_report)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, stop.set)
        loop.add_signal_handler(signal.SIGUSR2, lambda: print(json.dumps(
            {"counters": {"block": dict(truth["block"]), "requests": dict(truth["requests"]),
                          "at_s": time.monotonic()}}), flush=True))
        load = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "--load", str(port)],
                                stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        while sum(truth["requests"].values()) < 20 and time.monotonic() - t0 < 60:
            await asyncio.sleep(0.05)
        print(json.dumps({"ready": True, "pid": os.getpid(), "port": port}), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        load.terminate()
        await loop.run_in_executor(None, load.wait)
        await runner.cleanup()
        if truth["block"]["count"] == 0:
            truth["block"]["min_s"] = 0.0
        truth["block"]["spans"] = blocks
        truth["request_ids"] = len(request_ids)
        truth["part_ids"] = len(part_ids)
        truth["reused_ids"] = len(request_ids & part_ids)
        print(json.dumps({"truth": truth}), flush=True)

    asyncio.run(main())


def load(port):
    import aiohttp

    async def client(session, k):
        i = k
        while True:
            path = PATHS[i % len(PATHS)]
            i += 1
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                    await r.read()
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)

    async def orphaned(parent):
        # The service was killed (a failed test): stop loading the machine.
        while os.getppid() == parent:
            await asyncio.sleep(0.5)
        os._exit(0)

    async def main():
        watch = asyncio.create_task(orphaned(os.getppid()))
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(client(session, k) for k in range(CONCURRENCY)))
        watch.cancel()

    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    asyncio.run(main())


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--load":
        load(int(sys.argv[2]))
    else:
        serve(float(sys.argv[1]) if len(sys.argv) > 1 else 3600)
