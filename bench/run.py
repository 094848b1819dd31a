# SPDX-License-Identifier: Apache-2.0
"""Overhead and pstree-latency benchmark of asynctrace (run it via scripts/bench).

Each workload runs as
  baseline  python workload.py ...                          (no asynctrace)
  dormant   asynctrace run -- python workload.py ...         (probes loaded, nobody attached)
  attached  the same, with `asynctrace attach -p PID` live before the timed part
  timing    attached with --timing (per-step timing on: what top/ps --long/an agent cost)
(plus reference rows on ping-pong: asyncio debug mode, and a bpftrace script
keeping a task map on the per-event probes), in interleaved order: each
repetition runs every mode once, rotating the order. Ratios are the median over
repetitions of (mode / baseline of the same repetition): time for the CPU
workloads, requests/s for the aiohttp server. With a CPython 3.14, a one-shot
pstree is also timed against 3.14's own `python -m asyncio pstree`.
"""
import argparse
import datetime
import json
import os
import platform
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "workload.py")
DEBIAN_PY = "/usr/bin/python3.11"

# Targets from the issue: (comparison, bound). "le": ratio <= bound, "ge": ratio >= bound.
TARGETS = {
    ("ping-pong", "dormant"): ("le", 1.01),
    ("ping-pong", "attached"): ("le", 1.05),
    ("churn", "dormant"): ("le", 1.01),
    ("churn", "attached"): ("le", 1.10),
    ("aiohttp", "dormant"): ("ge", 0.99),
    ("aiohttp", "attached"): ("ge", 0.98),
}
PSTREE_TARGET_MS = {1000: 20.0, 10000: 50.0, 100000: 300.0}
RSS_TARGET_MB = 64.0
BYTES_PER_TASK_TARGET = 256.0

BPFTRACE_SCRIPT = (
    "usdt:{so}:asynctrace:task__create {{ @tasks[arg0] = nsecs; }} "
    "usdt:{so}:asynctrace:task__resume {{ @state[arg0] = 1; }} "
    "usdt:{so}:asynctrace:task__await {{ @state[arg0] = 2; }} "
    "usdt:{so}:asynctrace:task__complete {{ delete(@tasks[arg0]); delete(@state[arg0]); }} "
    'BEGIN {{ printf("bpftrace-ready\\n"); }} '
    "END {{ clear(@tasks); clear(@state); }}"
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes

_live = []  # every Proc still possibly running, for cleanup


class Proc:
    """A child in its own session (Ctrl-C reaches only the driver, which then
    stops children in order), with stdout lines collected by a thread."""

    def __init__(self, argv, env=None, stdin=False, tracer=False):
        self.argv = argv
        self.tracer = tracer
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,
        )
        _live.append(self)
        self.lines = queue.Queue()
        self.out = []
        self.err = []
        self._t = threading.Thread(target=self._read, args=(self.p.stdout, self.out, True), daemon=True)
        self._t.start()
        self._te = threading.Thread(target=self._read, args=(self.p.stderr, self.err, False), daemon=True)
        self._te.start()

    def _read(self, f, keep, enqueue):
        for line in f:
            if len(keep) < 200:
                keep.append(line)
            if enqueue:
                self.lines.put(line)
        if enqueue:
            self.lines.put(None)

    @property
    def pid(self):
        return self.p.pid

    def expect(self, pattern, timeout):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timeout waiting for /{pattern}/ from {self.argv[:4]}: {self.tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.p.wait()
                raise BenchError(f"{self.argv[:4]} exited ({self.p.returncode}) before /{pattern}/: {self.tail()}")
            m = rx.search(line)
            if m:
                return m

    def tail(self):
        return ("".join(self.out[-5:]) + "".join(self.err[-5:])).strip()[-800:]

    def send(self, text):
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        if self.p.poll() is None:
            try:
                self.p.send_signal(sig)
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
            except ProcessLookupError:
                pass
        for f in (self.p.stdin,):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        if self in _live:
            _live.remove(self)
        return self.p.returncode


def cleanup():
    # Tracers first (SIGINT: they detach and unpin), then the workloads.
    for pr in sorted(list(_live), key=lambda x: not x.tracer):
        pr.stop(signal.SIGINT if pr.tracer else signal.SIGTERM, timeout=10.0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def so_of(pid):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if "_asynctrace" in line and line.rstrip().endswith(".so"):
                return line.split()[-1]
    raise BenchError(f"pid {pid}: no _asynctrace*.so mapped (runtime not loaded?)")


# ---------------------------------------------------------------- one run

class Runner:
    def __init__(self, args):
        self.a = args
        self.tool = os.path.join(args.build_dir, "asynctrace")

    def argv(self, py, mode, wl_args):
        base = [py, WORKLOAD] + wl_args
        if mode in ("baseline", "debug"):
            return base
        return [self.tool, "run", "--"] + base

    def env(self, mode):
        env = dict(os.environ)
        env.pop("PYTHONASYNCIODEBUG", None)
        env.pop("PYTHONPATH", None)
        if mode == "debug":
            env["PYTHONASYNCIODEBUG"] = "1"
        return env

    def start_tracer(self, mode, pid):
        if mode in ("attached", "per-event", "timing"):
            env = dict(os.environ)
            if mode == "per-event":
                env["ASYNCTRACE_EVENTS"] = "per-event"
            extra = ["--timing"] if mode == "timing" else []
            t = Proc([self.tool, "attach", "-p", str(pid), "--timeout", "60s"] + extra, env=env, tracer=True)
            t.expect(r"^attached pid=", 120)
            return t
        if mode == "bpftrace":
            script = BPFTRACE_SCRIPT.format(so=so_of(pid))
            t = Proc(["bpftrace", "-p", str(pid), "-e", script], tracer=True)
            t.expect(r"bpftrace-ready", 120)
            return t
        return None

    def breakdown(self, py, wl_args):
        """One attached run with kernel BPF statistics on: where the cost goes."""
        w = Proc(self.argv(py, "attached", wl_args + ["--wait"]), env=self.env("attached"), stdin=True)
        tracer = None
        try:
            m = w.expect(r"^ready pid=(\d+)", 60)
            pid = int(m.group(1))
            tracer = self.start_tracer("attached", pid)
            before = bpf_prog_stats(pid)
            w.send("go\n")
            m = w.expect(r"^result seconds=([\d.,]+) cpu=([\d.,]+)", 900)
            ring = json.loads(w.expect(r"^ring (.*)$", 60).group(1))
            after = bpf_prog_stats(pid)
            progs = {}
            for name, (cnt, ns) in after.items():
                c0, n0 = before.get(name, (0, 0))
                progs[name] = {"runs": cnt - c0, "ns": ns - n0}
            return {"wall_s": float(m.group(1).split(",")[0]), "cpu_s": float(m.group(2).split(",")[0]),
                    "ring": ring, "progs": progs}
        finally:
            if tracer is not None:
                tracer.stop(signal.SIGINT)
            w.stop()

    def timed(self, py, mode, wl_args):
        """Runs a CPU workload; returns the median of its rounds' seconds."""
        w = Proc(self.argv(py, mode, wl_args + ["--wait"]), env=self.env(mode), stdin=True)
        tracer = None
        try:
            m = w.expect(r"^ready pid=(\d+)", 60)
            pid = int(m.group(1))
            tracer = self.start_tracer(mode, pid)
            w.send("go\n")
            m = w.expect(r"^result seconds=([\d.,]+) cpu=([\d.,]+)", 900)
            secs = [float(x) for x in m.group(1).split(",")]
            cpu = [float(x) for x in m.group(2).split(",")]
            if tracer is not None and tracer.p.poll() is not None:
                raise BenchError(f"tracer exited during the run: {tracer.tail()}")
            return statistics.median(secs), statistics.median(cpu)
        finally:
            if tracer is not None:
                tracer.stop(signal.SIGINT)
            w.stop()

    def server(self, py, mode):
        """Runs the aiohttp server under wrk; returns requests/s."""
        port = free_port()
        a = self.a
        pin = a.pin
        argv = self.argv(py, mode, ["server", "--port", str(port)])
        if pin:
            argv = ["taskset", "-c", "1"] + argv
        w = Proc(argv, env=self.env(mode))
        tracer = None
        try:
            w.expect(r"^serving port=", 60)
            tracer = self.start_tracer(mode, w.pid)
            wrk = ["wrk", f"-t{a.wrk_threads}", f"-c{a.wrk_conns}"]
            if pin:
                wrk = ["taskset", "-c", "0"] + wrk
            url = f"http://127.0.0.1:{port}/"
            if a.wrk_warmup > 0:
                subprocess.run(wrk + [f"-d{a.wrk_warmup}s", url], capture_output=True, text=True, check=True)
            r = subprocess.run(wrk + [f"-d{a.wrk_duration}s", url], capture_output=True, text=True, check=True)
            m = re.search(r"Requests/sec:\s*([\d.]+)", r.stdout)
            if not m:
                raise BenchError(f"cannot parse wrk output: {r.stdout}{r.stderr}")
            bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", r.stdout)
            if bad:
                raise BenchError(f"wrk saw {bad.group(1)} bad responses")
            if tracer is not None and tracer.p.poll() is not None:
                raise BenchError(f"tracer exited during the run: {tracer.tail()}")
            return float(m.group(1))
        finally:
            if tracer is not None:
                tracer.stop(signal.SIGINT)
            w.stop()


def bpf_prog_stats(traced_pid):
    """name -> (run_cnt, run_time_ns) of the BPF programs of the `attach`
    holding traced_pid: those using its pinned tasks map
    (kernel.bpf_stats_enabled must be 1)."""
    m = subprocess.run(["bpftool", "-j", "map", "show", "pinned", f"/sys/fs/bpf/asynctrace/{traced_pid}/tasks"],
                       capture_output=True, text=True, check=True).stdout
    map_id = json.loads(m)["id"]
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    stats = {}
    for p in json.loads(out):
        if map_id not in p.get("map_ids", []):
            continue
        c, n = stats.get(p.get("name", "?"), (0, 0))
        stats[p.get("name", "?")] = (c + p.get("run_cnt", 0), n + p.get("run_time_ns", 0))
    return stats


def cost_breakdown(args, runner, py):
    """Per-event costs on the batch path: records written per step, BPF time
    per record (kernel bpf_stats), and the whole process's extra CPU per step."""
    path = "/proc/sys/kernel/bpf_stats_enabled"
    old = open(path).read().strip()
    rows = []
    try:
        with open(path, "w") as f:
            f.write("1")
        cases = [("ping-pong", ["pingpong", "--tasks", str(args.pingpong_tasks), "--steps", str(args.pingpong_steps)],
                  args.pingpong_tasks * args.pingpong_steps),
                 ("churn", ["churn", "--tasks", str(args.churn_tasks)], args.churn_tasks)]
        for wl, wl_args, steps in cases:
            base = [runner.timed(py, "baseline", wl_args) for _ in range(3)]
            br = runner.breakdown(py, wl_args)
            ring = br["ring"]
            written = sum(ring.get(k, 0) for k in ("create", "step", "complete", "edge_add", "stack"))
            bf = br["progs"].get("batch_flush", {"runs": 0, "ns": 0})
            base_cpu = statistics.median(c for _, c in base)
            rows.append({
                "workload": wl, "python": py, "steps": steps, "ring": ring, "records": written,
                "bpf_runs": bf["runs"], "bpf_ns": bf["ns"],
                "bpf_ns_per_record": bf["ns"] / written if written else None,
                "cpu_s": br["cpu_s"], "baseline_cpu_s": base_cpu,
                "extra_cpu_ns_per_step": (br["cpu_s"] - base_cpu) * 1e9 / steps,
                "baseline_ns_per_step": base_cpu * 1e9 / steps,
            })
    finally:
        with open(path, "w") as f:
            f.write(old)
    return rows


def breakdown_table(rows):
    lines = ["", "Cost breakdown, attached, batch path (one run each, %s; kernel bpf_stats on):" %
             (LABELS.get(rows[0]["python"], rows[0]["python"]) if rows else "")]
    hdr = (f"{'workload':10} {'steps/tasks':>11} {'records':>8} {'erased':>7} {'same st.':>8} {'flushes':>7} "
           f"{'BPF ns/rec':>10} {'BPF ms':>7} {'base ns/step':>12} {'+CPU ns/step':>12}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in rows:
        ring = r["ring"]
        per = f"{r['bpf_ns_per_record']:.0f}" if r["bpf_ns_per_record"] else "-"
        lines.append(f"{r['workload']:10} {r['steps']:>11} {r['records']:>8} {ring.get('erased', 0):>7} "
                     f"{ring.get('same_state', 0):>8} {ring.get('flushes', 0):>7} {per:>10} "
                     f"{r['bpf_ns'] / 1e6:>7.1f} {r['baseline_ns_per_step']:>12.0f} {r['extra_cpu_ns_per_step']:>12.0f}")
    lines.append("+CPU ns/step: extra CPU of the whole traced process (all threads, user + system) per step")
    lines.append("(ping-pong) or per task (churn) against the median of 3 baseline runs; it includes the BPF time.")
    return "\n".join(lines)


# ---------------------------------------------------------------- overhead

def py_label(py):
    v = subprocess.run([py, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                       capture_output=True, text=True, check=True).stdout.strip()
    origin = ("debian" if py.startswith("/usr/bin/") else "pyenv" if "/.pyenv/" in py
              else "opt" if py.startswith("/opt/") else os.path.dirname(py))
    return f"{v} {origin}"


def overhead(args, runner, pythons):
    # (workload, python, mode) -> [samples per repetition]; cases run in order
    cases = []  # (workload, py, modes, kind, fn)
    pp_args = ["pingpong", "--tasks", str(args.pingpong_tasks), "--steps", str(args.pingpong_steps),
               "--rounds", str(args.rounds)]
    churn_args = ["churn", "--tasks", str(args.churn_tasks), "--rounds", str(args.rounds)]
    for i, py in enumerate(pythons):
        modes = ["baseline", "dormant", "attached"] + ([] if args.no_timing else ["timing"])
        if i == 0 or args.reference_all:
            if not args.no_per_event:
                modes.append("per-event")
            if not args.no_debug:
                modes.append("debug")
            if not args.no_bpftrace:
                modes.append("bpftrace")
        cases.append(("ping-pong", py, modes, "time"))
        cases.append(("churn", py, ["baseline", "dormant", "attached"] + ([] if args.no_timing else ["timing"]),
                      "time"))
    if not args.no_server:
        if DEBIAN_PY in pythons:
            cases.append(("aiohttp", DEBIAN_PY, ["baseline", "dormant", "attached"] +
                          ([] if args.no_timing else ["timing"]), "rps"))
        else:
            log(f"bench: aiohttp server skipped ({DEBIAN_PY} not among --python)")

    samples = {}
    cpu_samples = {}
    for rep in range(args.reps):
        for wl, py, modes, kind in cases:
            k = rep % len(modes)
            for mode in modes[k:] + modes[:k]:
                t0 = time.monotonic()
                if wl == "ping-pong":
                    wl_args = list(pp_args)
                    if mode == "debug":
                        wl_args[wl_args.index("--rounds") + 1] = "1"
                    v, cpu = runner.timed(py, mode, wl_args)
                elif wl == "churn":
                    v, cpu = runner.timed(py, mode, churn_args)
                else:
                    v, cpu = runner.server(py, mode), None
                samples.setdefault((wl, py, mode), []).append(v)
                cpu_samples.setdefault((wl, py, mode), []).append(cpu)
                unit = "req/s" if kind == "rps" else "s"
                log(f"  rep {rep + 1}/{args.reps} {wl:9} {LABELS[py]:13} {mode:9} "
                    f"{v:.4f} {unit}  ({time.monotonic() - t0:.1f}s)")

    rows = []
    for wl, py, modes, kind in cases:
        base = samples[(wl, py, "baseline")]
        for mode in modes:
            vals = samples[(wl, py, mode)]
            ratios = [v / b for v, b in zip(vals, base)]
            ratio = statistics.median(ratios)
            cpus, cbase = cpu_samples[(wl, py, mode)], cpu_samples[(wl, py, "baseline")]
            cpu_ratio = (statistics.median([c / b for c, b in zip(cpus, cbase)])
                         if kind == "time" and all(cpus) and all(cbase) else None)
            tgt = TARGETS.get((wl, mode))
            if mode == "debug":
                tgt_s, ok = "ref (13-18x)", None
            elif mode in ("bpftrace", "per-event", "timing"):
                tgt_s, ok = "ref", None
            elif tgt is None:
                tgt_s, ok = "", None
            else:
                op, bound = tgt
                ok = ratio <= bound if op == "le" else ratio >= bound
                tgt_s = ("<= " if op == "le" else ">= ") + f"{bound:.2f}x"
            rows.append({
                "workload": wl,
                "python": py,
                "python_label": LABELS[py],
                "mode": mode,
                "metric": "requests/s" if kind == "rps" else "seconds",
                "median": statistics.median(vals),
                "baseline_median": statistics.median(base),
                "ratio": ratio,
                "ratios": ratios,
                "cpu_ratio": cpu_ratio,
                "cpu_samples": cpus,
                "samples": vals,
                "target": tgt_s,
                "pass": ok,
            })
    return rows


# ---------------------------------------------------------------- pstree

def run_rusage(argv, timeout=300, out=os.devnull):
    """Runs argv with stdout to `out` (a file name); returns (seconds, maxrss
    KiB, rc, stderr). Past `timeout` s its session is killed (rc -9)."""
    with open(out, "w") as sink:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE, text=True, start_new_session=True)

        def kill():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            err = p.stderr.read()
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        t1 = time.perf_counter()
        p.returncode = os.waitstatus_to_exitcode(status)
    return t1 - t0, ru.ru_maxrss, p.returncode, err


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def map_info(pid, name):
    path = f"/sys/fs/bpf/asynctrace/{pid}/{name}"
    r = subprocess.run(["bpftool", "-j", "map", "show", "pinned", path], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"bpftool map show pinned {path}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def count_tasks(tool, pid):
    r = subprocess.run([tool, "ps", "-p", str(pid), "--format", "json"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return None
    for key in ("tasks", "rows"):
        if isinstance(doc.get(key), list):
            return len(doc[key])
    return None


def pstree_bench(args, runner, py):
    tool = runner.tool
    out = []
    for n in args.pstree_tasks:
        log(f"  pstree: {n} pending tasks ({os.path.basename(py)})")
        w = Proc([tool, "run", "--", py, WORKLOAD, "hold", "--tasks", str(n)], env=runner.env("dormant"))
        tracer = None
        try:
            w.expect(r"^holding tasks=", 300)
            row = {"tasks": n, "python": py}
            argv = [tool, "pstree", "-p", str(w.pid), "--timeout", "60s"]
            def timed_pstrees(label, key):
                runs = [run_rusage(argv) for _ in range(args.pstree_reps)]
                for _, _, rc, err in runs:
                    if rc != 0:
                        raise BenchError(f"pstree {label} failed rc={rc}: {err.strip()[-400:]}")
                row[f"{key}_ms"] = [secs * 1e3 for secs, *_ in runs]
                row[f"{key}_maxrss_kib"] = max(rss for _, rss, *_ in runs)

            # One-shot: attach + replay + read + detach each time.
            timed_pstrees("one-shot", "oneshot")
            # Held: `asynctrace attach` keeps the maps pinned; pstree reads them.
            t0 = time.perf_counter()
            tracer = Proc([tool, "attach", "-p", str(w.pid), "--timeout", "60s"], tracer=True)
            tracer.expect(r"^attached pid=", 300)
            row["attach_s"] = time.perf_counter() - t0
            timed_pstrees("(held)", "held")
            row["seen_tasks"] = count_tasks(tool, w.pid)
            info = map_info(w.pid, "tasks")
            row["tasks_map"] = {k: info.get(k) for k in ("id", "bytes_key", "bytes_value", "max_entries",
                                                          "bytes_memlock", "flags")}
            try:
                row["codes_map_memlock"] = map_info(w.pid, "codes").get("bytes_memlock")
            except BenchError:
                row["codes_map_memlock"] = None
            row["attach_vmhwm_kib"] = vm_hwm_kib(tracer.pid)
            row["oneshot_median_ms"] = statistics.median(row["oneshot_ms"])
            row["held_median_ms"] = statistics.median(row["held_ms"])
            row["target_ms"] = PSTREE_TARGET_MS.get(n)
            out.append(row)
            log(f"    one-shot {row['oneshot_median_ms']:.1f} ms, held {row['held_median_ms']:.1f} ms, "
                f"maxrss {row['oneshot_maxrss_kib'] / 1024:.1f} MiB, tasks map {row['tasks_map']['bytes_memlock']} B, "
                f"seen {row['seen_tasks']}")
        finally:
            if tracer is not None:
                tracer.stop(signal.SIGINT)
            w.stop()
    return out


def anchor_bench(args, runner, py):
    """asynctrace's one-shot pstree against CPython 3.14's own
    `python -m asyncio pstree` on the same idle process, interleaved (ours,
    then the anchor's, per repetition); both print to a file. The anchor's
    failures (non-zero exit, killed at --anchor-timeout) are kept as such."""
    tool = runner.tool
    out = []
    sink = f"/tmp/asynctrace-bench-{os.getpid()}.out"
    try:
        for n in args.pstree_tasks:
            log(f"  pstree vs python -m asyncio pstree: {n} pending tasks ({py})")
            w = Proc([tool, "run", "--", py, WORKLOAD, "hold", "--tasks", str(n)], env=runner.env("dormant"))
            try:
                w.expect(r"^holding tasks=", 300)
                row = {"tasks": n, "python": py, "ours_ms": [], "anchor_ms": [], "anchor_failures": []}
                for rep in range(args.anchor_reps):
                    secs, _, rc, err = run_rusage([tool, "pstree", "-p", str(w.pid), "--timeout", "60s"], out=sink)
                    if rc != 0:
                        raise BenchError(f"pstree one-shot failed rc={rc}: {err.strip()[-400:]}")
                    row["ours_ms"].append(secs * 1e3)
                    secs, _, rc, err = run_rusage([py, "-m", "asyncio", "pstree", str(w.pid)],
                                                  timeout=args.anchor_timeout, out=sink)
                    if rc == 0:
                        row["anchor_ms"].append(secs * 1e3)
                    else:
                        with open(sink) as f:
                            said = (f.read(300) + err).strip().splitlines()
                        what = "timeout" if rc == -signal.SIGKILL else f"rc={rc}"
                        row["anchor_failures"].append({"ms": secs * 1e3, "what": what,
                                                       "said": said[-1][:120] if said else ""})
                    log(f"    rep {rep + 1}/{args.anchor_reps}: asynctrace {row['ours_ms'][-1]:.1f} ms, "
                        f"anchor {secs * 1e3:.1f} ms" + ("" if rc == 0 else f" ({row['anchor_failures'][-1]['what']})"))
                row["ours_median_ms"] = statistics.median(row["ours_ms"])
                row["anchor_median_ms"] = statistics.median(row["anchor_ms"]) if row["anchor_ms"] else None
                out.append(row)
            finally:
                w.stop()
    finally:
        if os.path.exists(sink):
            os.unlink(sink)
    return out


def anchor_table(rows, args):
    py = rows[0]["python"]
    lines = ["", f"pstree one-shot vs python -m asyncio pstree: median of {args.anchor_reps}, stdout to a file "
             f"({LABELS.get(py, py)}; anchor timeout {args.anchor_timeout:g} s)"]
    hdr = f"{'tasks':>7} {'asynctrace':>11} {'python -m asyncio':>18} {'ratio':>7}  anchor failures"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in rows:
        a = r["anchor_median_ms"]
        ok = len(r["anchor_ms"])
        anchor_s = f"{a:.1f} ms" if a is not None else "-"
        ratio = f"{a / r['ours_median_ms']:.1f}x" if a is not None else "-"
        kinds = {}  # (what, said) -> seconds of each such failure
        for f in r["anchor_failures"]:
            kinds.setdefault((f["what"], f["said"]), []).append(f["ms"] / 1e3)
        fails = "; ".join(f"{len(v)} of {ok + len(r['anchor_failures'])} {what} after "
                          f"{min(v):.1f}-{max(v):.1f} s: {said}" for (what, said), v in sorted(kinds.items())) or "none"
        lines.append(f"{r['tasks']:>7} {r['ours_median_ms']:>8.1f} ms {anchor_s:>18} {ratio:>7}  {fails}")
    return "\n".join(lines)


# ---------------------------------------------------------------- report

def fmt_ratio(r):
    return f"{r:.3f}x" if r < 10 else f"{r:.1f}x"


def verdict(ok):
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def table(rows, pst, args):
    lines = []
    hdr = (f"{'workload':10} {'python':13} {'mode':9} {'baseline':>12} {'this mode':>12} {'ratio':>8}  "
           f"{'target':13} {'result':6} {'cpu ratio':>9}")
    if rows:
        lines.append("Overhead: median over %d interleaved repetitions of (mode / baseline of the same repetition)"
                     % args.reps)
        lines.append("ratio: wall time (rq/s for aiohttp); cpu ratio: CPU time of the whole traced process, all threads")
        lines.append(hdr)
        lines.append("-" * len(hdr))
    for r in rows:
        if r["metric"] == "seconds":
            b, v = f"{r['baseline_median']:.3f} s", f"{r['median']:.3f} s"
        else:
            b, v = f"{r['baseline_median']:.0f} rq/s", f"{r['median']:.0f} rq/s"
        cr = fmt_ratio(r["cpu_ratio"]) if r.get("cpu_ratio") else ""
        lines.append(f"{r['workload']:10} {r['python_label']:13} {r['mode']:9} {b:>12} {v:>12} "
                     f"{fmt_ratio(r['ratio']):>8}  {r['target']:13} {verdict(r['pass']):6} {cr:>9}")
    if pst:
        lines.append("")
        lines.append("pstree latency: median of %d, stdout to /dev/null (%s)" % (args.pstree_reps, pst[0]["python"]))
        hdr2 = f"{'tasks':>7} {'one-shot':>10} {'held':>9} {'target':>9}  one-shot  held   {'tool maxrss':>11} {'tasks map':>10} {'B/task':>7}"
        lines.append(hdr2)
        lines.append("-" * len(hdr2))
        for r in pst:
            t = r["target_ms"]
            okone = verdict(None if t is None else r["oneshot_median_ms"] <= t)
            okheld = verdict(None if t is None else r["held_median_ms"] <= t)
            mem = r["tasks_map"]["bytes_memlock"] or 0
            lines.append(f"{r['tasks']:>7} {r['oneshot_median_ms']:>7.1f} ms {r['held_median_ms']:>6.1f} ms "
                         f"{'<= %g ms' % t if t else '':>9}  {okone:8}  {okheld:5}  "
                         f"{max(r['oneshot_maxrss_kib'], r['held_maxrss_kib']) / 1024:>8.1f} MiB "
                         f"{mem / 1048576:>6.1f} MiB {mem / r['tasks']:>7.0f}")
        big = max(pst, key=lambda r: r["tasks"])
        rss = max(big["oneshot_maxrss_kib"], big["held_maxrss_kib"]) / 1024
        bpt = (big["tasks_map"]["bytes_memlock"] or 0) / big["tasks"]
        lines.append(f"tool max RSS at {big['tasks']} tasks: {rss:.1f} MiB (pstree; target <= {RSS_TARGET_MB:g} MiB) "
                     f"{verdict(rss <= RSS_TARGET_MB)}; attach holder VmHWM {(big['attach_vmhwm_kib'] or 0) / 1024:.1f} MiB")
        marg = ""
        small = min(pst, key=lambda r: r["tasks"])
        if small is not big and small["tasks_map"]["bytes_memlock"] is not None:
            m = ((big["tasks_map"]["bytes_memlock"] or 0) - small["tasks_map"]["bytes_memlock"]) / (
                big["tasks"] - small["tasks"])
            marg = f", marginal {m:.0f} B/task between {small['tasks']} and {big['tasks']}"
        lines.append(f"kernel tasks map at {big['tasks']} tasks: {bpt:.0f} B/task memlock{marg} "
                     f"(value {big['tasks_map']['bytes_value']} B; target <= {BYTES_PER_TASK_TARGET:g}) "
                     f"{verdict(bpt <= BYTES_PER_TASK_TARGET)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

LABELS = {}
COMMIT = None


def git_commit():
    root = os.path.dirname(HERE)
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def built(build_dir):
    """(tag, interpreter) lines of BUILD_DIR/python/versions.txt, in order."""
    vf = os.path.join(build_dir, "python", "versions.txt")
    try:
        with open(vf) as f:
            return [tuple(line.split()) for line in f if len(line.split()) == 2]
    except OSError:
        log(f"bench: {vf} missing")
        return []


def default_pythons(build_dir):
    pys = []
    want = {"cp312": None, "cp313": None, "cp314": None}
    if os.path.exists(DEBIAN_PY):
        pys.append(DEBIAN_PY)
    for tag, py in built(build_dir):
        if tag in want and want[tag] is None:
            want[tag] = py
    pys += [p for p in want.values() if p]
    return pys


def default_anchor(build_dir, pythons):
    """The 3.14 interpreter whose `python -m asyncio pstree` is compared:
    the first --python that is 3.14, else the build's cp314, else none."""
    tags = dict((py, tag) for tag, py in built(build_dir))
    for py in pythons:
        if tags.get(py) == "cp314":
            return py
    return next((py for tag, py in built(build_dir) if tag == "cp314"), None)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", required=True)
    p.add_argument("--python", action="append", dest="pythons", metavar="PATH",
                   help="interpreter to measure (repeatable; default Debian 3.11 and the build's 3.12, 3.13, 3.14)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--rounds", type=int, default=1,
                   help="timed rounds per process for ping-pong/churn, median taken (default 1)")
    p.add_argument("--pingpong-tasks", type=int, default=10_000)
    p.add_argument("--pingpong-steps", type=int, default=20)
    p.add_argument("--churn-tasks", type=int, default=200_000, help="tasks per churn run (default 200000)")
    p.add_argument("--wrk-duration", type=int, default=5)
    p.add_argument("--wrk-warmup", type=int, default=1)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wrk-conns", type=int, default=64)
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the server to CPU 1 and wrk to CPU 0")
    p.add_argument("--no-server", action="store_true")
    p.add_argument("--no-debug", action="store_true")
    p.add_argument("--no-breakdown", action="store_true",
                   help="skip the per-event cost breakdown (kernel bpf_stats, runtime ring counters)")
    p.add_argument("--no-per-event", action="store_true",
                   help="skip the reference row with asynctrace on its per-event probes "
                        "(ASYNCTRACE_EVENTS=per-event: one trap per event, the pre-batch design)")
    p.add_argument("--no-bpftrace", action="store_true")
    p.add_argument("--no-timing", action="store_true", help="skip the attach --timing rows")
    p.add_argument("--reference-all", action="store_true",
                   help="debug-mode and bpftrace rows on every interpreter (default: the first only)")
    p.add_argument("--pstree-tasks", type=lambda s: [int(x) for x in s.split(",") if x],
                   default=[1000, 10000, 100000])
    p.add_argument("--pstree-reps", type=int, default=5)
    p.add_argument("--anchor-python", metavar="PATH",
                   help="CPython 3.14 whose `python -m asyncio pstree` is timed against a one-shot pstree "
                        "(default: the build's cp314)")
    p.add_argument("--anchor-reps", type=int, default=5, help="repetitions of that comparison (default 5)")
    p.add_argument("--anchor-timeout", type=float, default=120.0,
                   help="seconds before a `python -m asyncio pstree` run is killed and counted failed (default 120)")
    p.add_argument("--no-anchor", action="store_true", help="skip the python -m asyncio pstree comparison")
    p.add_argument("--no-overhead", action="store_true")
    p.add_argument("--no-pstree", action="store_true")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        a.pin = False

    def on_term(signum, _frame):
        # Once: cleanup must not be interrupted by a second signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    # scripts/bench starts us in the background, where SIGINT is ignored; an
    # ignored SIGINT would be inherited by the workloads, so handle it here
    # (handlers, unlike SIG_IGN, are reset in children at exec).
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    global COMMIT
    COMMIT = git_commit()
    pythons = a.pythons or default_pythons(a.build_dir)
    for py in pythons:
        LABELS[py] = py_label(py)
    runner = Runner(a)
    started = time.monotonic()
    rows, pst, brk, anc = [], [], [], []
    anchor_py = None if a.no_anchor else (a.anchor_python or default_anchor(a.build_dir, pythons))
    if anchor_py and anchor_py not in LABELS:
        LABELS[anchor_py] = py_label(anchor_py)
    try:
        if not a.no_overhead:
            log(f"bench: overhead on {', '.join(LABELS[p] for p in pythons)}; {a.reps} reps, "
                f"ping-pong {a.pingpong_tasks}x{a.pingpong_steps}, churn {a.churn_tasks} tasks")
            rows = overhead(a, runner, pythons)
        if not a.no_pstree:
            log("bench: pstree latency")
            pst = pstree_bench(a, runner, pythons[0])
        if anchor_py:
            log("bench: pstree vs python -m asyncio pstree")
            anc = anchor_bench(a, runner, anchor_py)
        elif not a.no_anchor:
            log("bench: no CPython 3.14 built: python -m asyncio pstree comparison skipped")
        if not a.no_breakdown:
            log("bench: cost breakdown")
            brk = cost_breakdown(a, runner, pythons[0])
    except KeyboardInterrupt:
        log("bench: interrupted; stopping children")
        cleanup()
        return 130
    except BenchError as e:
        log(f"bench: error: {e}")
        cleanup()
        return 1
    finally:
        cleanup()
    elapsed = time.monotonic() - started
    text = table(rows, pst, a)
    if anc:
        text += "\n" + anchor_table(anc, a)
    if brk:
        text += "\n" + breakdown_table(brk)
    print(text)
    print(f"\n(measured in {elapsed:.0f} s on {os.cpu_count()} CPUs, kernel {platform.release()}, "
          f"asynctrace {COMMIT or 'unknown commit'})")
    if a.json:
        doc = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
            "commit": COMMIT,
            "settings": {k: v for k, v in vars(a).items() if k != "json"},
            "pythons": {p: LABELS[p] for p in pythons},
            "elapsed_s": elapsed,
            "overhead": rows,
            "pstree": pst,
            "anchor_pstree": anc,
            "breakdown": brk,
            "table": text,
        }
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
