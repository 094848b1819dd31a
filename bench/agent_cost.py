#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Cost of `asynctrace agent` (docs/agent.md): its CPU (% of one core) and
resident memory while N traced processes each run about RATE task steps per
second, against a baseline with no traced process.

usage: sudo bench/agent_cost.py [--build build] [--procs 20] [--rate 10000] [--seconds 30]

Each load process runs 10 tasks yielding with sleep(0), paced in 10 ms
ticks. The step rate actually reached is read from the agent's own metrics
(asynctrace_steps_total), since a small machine may not sustain the target.
The agent's CPU is utime+stime from /proc/PID/stat over the window; the BPF
programs run in the traced processes and are charged to them, not to it.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

LOAD = r'''
import asyncio, sys, time
RATE = int(sys.argv[1])
TASKS = 10
async def spinner(per_tick):
    tick = 0.01
    nxt = time.monotonic()
    while True:
        for _ in range(per_tick):
            await asyncio.sleep(0)
        nxt += tick
        d = nxt - time.monotonic()
        if d > 0:
            await asyncio.sleep(d)
        else:
            nxt = time.monotonic()
async def main():
    per_tick = max(1, RATE // TASKS // 100)
    await asyncio.gather(*(spinner(per_tick) for _ in range(TASKS)))
time.sleep(0.3)
asyncio.run(main())
'''

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def total_steps(text):
    return sum(float(m.group(1)) for m in re.finditer(r"^asynctrace_steps_total\{[^}]*\} (\S+)$", text, re.M))


def measure(build, procs, rate, seconds, python):
    tool = os.path.join(build, "asynctrace")
    port = 19000 + os.getpid() % 1000
    agent = subprocess.Popen([tool, "agent", "--listen", f"127.0.0.1:{port}",
                              "--library-prefix", os.path.join(build, "python")],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    agent.stdout.readline()  # "agent maps=... metrics=..."
    load = []
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(LOAD)
        script = f.name
    try:
        for _ in range(procs):
            load.append(subprocess.Popen([tool, "run", "--", python, script, str(rate)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(5)  # start-up, replay, first scans
        c0, t0, s0 = cpu_seconds(agent.pid), time.monotonic(), total_steps(scrape(port))
        if os.environ.get("AGENT_COST_DEBUG"):
            print(scrape(port), file=sys.stderr)
        rss_max = 0
        end = t0 + seconds
        while time.monotonic() < end:
            time.sleep(1)
            rss_max = max(rss_max, rss_bytes(agent.pid))
            scrape(port)  # as Prometheus would, every second
        c1, t1, s1 = cpu_seconds(agent.pid), time.monotonic(), total_steps(scrape(port))
        return {"procs": procs, "cpu_pct": 100 * (c1 - c0) / (t1 - t0), "rss_mb": rss_max / 2**20,
                "steps_per_s": (s1 - s0) / (t1 - t0)}
    finally:
        for p in load:
            p.kill()
            p.wait()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        os.unlink(script)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--procs", type=int, default=20)
    ap.add_argument("--rate", type=int, default=10000, help="target steps/s per process")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--python", default="/usr/bin/python3.11")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent_cost.py: needs root (the agent loads BPF programs)")
    for n in (0, a.procs):
        r = measure(a.build, n, a.rate, a.seconds, a.python)
        print(f"{r['procs']:3d} traced processes: agent CPU {r['cpu_pct']:.2f}% of one core, "
              f"RSS max {r['rss_mb']:.1f} MiB, {r['steps_per_s']:.0f} steps/s traced in total", flush=True)
    subprocess.run([os.path.join(a.build, "asynctrace"), "agent", "--cleanup"], stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
