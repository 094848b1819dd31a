# SPDX-License-Identifier: Apache-2.0
"""Transparency on CPython's own test suite: `python -m test test_asyncio` three ways.

    plain     PYTHON gate.py ... -- -m test test_asyncio
    probes    asynctrace run -- PYTHON gate.py ...      (runtime in every child Python too)
    attached  as probes, and `asynctrace attach --timing -p PID` live before the first test
              (ASYNCTRACE_SLOW_MS=1: end stacks and loop-thread samples for most steps)

All three run sequentially in one process (the attached tracer sees every test),
with the same random seed and the same harness (gate.py records every test case's
outcome and every test file's state). The per-test outcomes and per-file states
must be identical. Tests that differ are run again, once, in all three modes:
a difference that the rerun reproduces fails the run; one that does not is
reported as flaky. See docs/transparency.md.

Exit: 0 identical (flaky differences, if any, are printed), 1 a difference,
2 usage, 3 harness failure (a run did not start, the tracer failed, ...),
6 not root, 130 interrupted.
"""
import argparse
import ctypes
import glob
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODES = ("plain", "probes", "attached")
_modes = list(MODES)  # --modes: a subset, for debugging one mode (nothing is compared then)
QUICK = ("test_asyncio.test_tasks", "test_asyncio.test_taskgroups",
         "test_asyncio.test_eager_task_factory", "test_asyncio.test_locks",
         "test_asyncio.test_queues", "test_asyncio.test_runners", "test_asyncio.test_timeouts",
         "test_asyncio.test_waitfor", "test_asyncio.test_subprocess")
# libregrtest seeds `random` before every test file; with SOURCE_DATE_EPOCH set it uses
# this seed and keeps the natural test order (--randseed would shuffle the files).
SEED = "1717200000"
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
_libc = ctypes.CDLL(None, use_errno=True)


class HarnessError(Exception):
    pass


class Interrupted(Exception):
    pass


def log(msg):
    print(f"[transparency] {msg}", flush=True)


# ---- child processes: started by us, killed by us ------------------------------------

_live = []  # Popen objects still to clean up


def _deathsig(sig):
    def pre():
        _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return pre


def spawn(argv, sig=signal.SIGKILL, **kw):
    p = subprocess.Popen(argv, start_new_session=True, preexec_fn=_deathsig(sig), **kw)
    _live.append(p)
    return p


def _proc_table():
    """pid -> (ppid, starttime) for every process."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = s[s.rfind(")") + 2:].split()
        table[int(d)] = (int(rest[1]), int(rest[19]))
    return table


def descendants(pid, table=None):
    table = table or _proc_table()
    kids = {}
    for p, (pp, _) in table.items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass


def stop_tree(p, sig=signal.SIGTERM, grace=5.0):
    """Stop p and everything below it (session members and orphans re-parented to us)."""
    if p.poll() is None:  # not reaped: p.pid is still ours
        _kill([p.pid] + descendants(p.pid), sig)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            _kill([p.pid] + descendants(p.pid), signal.SIGKILL)
            p.wait()
    # What p left behind was re-parented to us (child subreaper): see reap_orphans().
    if p in _live:
        _live.remove(p)


def reap_orphans():
    """We are a child subreaper: processes the tests left behind end up ours. Kill, reap."""
    mine = {p.pid for p in _live}
    for _ in range(50):
        table = _proc_table()
        top = [c for c, (pp, _) in table.items() if pp == os.getpid() and c not in mine]
        kids = top + [d for c in top for d in descendants(c, table)]
        if not kids:
            return
        _kill(kids, signal.SIGKILL)
        for c in kids:
            try:
                os.waitpid(c, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)


def cleanup():
    for p in list(_live):
        stop_tree(p, signal.SIGTERM, 10.0)  # asynctrace attach detaches on SIGTERM
    reap_orphans()


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


# ---- which children carry the runtime ------------------------------------------------

class ChildAudit:
    """Samples the test process's Python descendants every 0.25 s: was the runtime
    mapped, was it on their PYTHONPATH? Runs the same way in every mode (plain must
    show none). Sampling misses or catches mid-startup many short-lived children."""

    def __init__(self, exe, runtime_dir):
        self.exe = os.path.realpath(exe)
        self.runtime_dir = runtime_dir.encode()
        self.seen = {}  # (pid, starttime) -> {"argv", "runtime", "on_path"}

    def sample(self, root_pid):
        table = _proc_table()
        for pid in descendants(root_pid, table):
            key = (pid, table[pid][1])
            ent = self.seen.get(key)
            if ent is None:
                try:
                    if os.path.realpath(f"/proc/{pid}/exe") != self.exe:
                        continue
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        env = f.read().split(b"\0")
                except OSError:
                    continue
                path = next((e for e in env if e.startswith(b"PYTHONPATH=")), b"")
                ent = self.seen[key] = {"argv": argv, "runtime": False, "on_path": self.runtime_dir in path}
            if ent["runtime"]:
                continue
            try:
                with open(f"/proc/{pid}/maps", "rb") as f:
                    ent["runtime"] = b"/asynctrace/_asynctrace" in f.read()
            except OSError:
                continue

    def summary(self):
        rest = [e for e in self.seen.values() if not e["runtime"]]
        no_env = [e for e in rest if {"-E", "-I", "-S"} & set(e["argv"][1:6])]
        rest = [e for e in rest if e not in no_env]
        on_path = [e for e in rest if e["on_path"]]
        other = [e for e in rest if not e["on_path"]]
        return {"python_children": len(self.seen),
                "runtime_loaded": sum(1 for e in self.seen.values() if e["runtime"]),
                "on_path_not_seen_loaded": len(on_path),
                "started_E_I_S": len(no_env),
                "env_without_runtime": len(other),
                "env_without_runtime_argv": [e["argv"][:4] for e in other][:5]}


# ---- one run -------------------------------------------------------------------------

class Run:
    def __init__(self, mode, py, tool, out_dir, test_args, timeout):
        self.mode, self.py, self.tool = mode, py, tool
        self.dir = out_dir
        self.test_args = test_args
        self.timeout = timeout
        self.record = os.path.join(out_dir, "records.jsonl")
        self.log = os.path.join(out_dir, "output.log")
        self.cases, self.subtests, self.files = {}, {}, {}
        self.rc = None
        self.wall = None
        self.stats = None
        self.audit = ChildAudit(py, os.path.join(os.path.dirname(os.path.realpath(tool)), "python"))
        self.attach_log = None
        self.regrtest_total = ("?", "?")  # libregrtest's own "Total tests: run=N skipped=M"

    def execute(self, env):
        os.makedirs(self.dir, exist_ok=True)
        for f in (self.record,):
            if os.path.exists(f):
                os.unlink(f)
        s_r, s_w = os.pipe()
        g_r, g_w = os.pipe()
        argv = [self.py, os.path.join(HERE, "gate.py"), str(s_w), str(g_r), self.record,
                "0" if self.mode == "plain" else "1", "--"] + self.test_args
        if self.mode != "plain":
            argv = [self.tool, "run", "--"] + argv
        if self.mode == "attached":
            # The tracer holds timing__on (attach --timing): every step is
            # timed, and with a 1 ms slow floor most steps of the suite also
            # send their end stack, and the watcher samples the loop thread
            # (taking the GIL) during any step past 1 ms.
            env = dict(env, ASYNCTRACE_SLOW_MS="1")
        workdir = tempfile.mkdtemp(prefix=f"transparency-{self.mode}-")
        with open(self.log, "wb") as logf:
            logf.write(("$ " + " ".join(argv) + "\n").encode())
            logf.flush()
            proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                         pass_fds=(s_w, g_r), cwd=workdir, env=env)
        os.close(s_w)
        os.close(g_r)
        attach = None
        status = os.fdopen(s_r, "rb", buffering=0)
        try:
            line = self._status_line(status, proc, 60)
            if not line.startswith("ready"):
                raise HarnessError(f"{self.mode}: test process did not start ({line!r}); see {self.log}")
            pid = int(re.search(r"pid=(\d+)", line).group(1))
            if pid != proc.pid:
                raise HarnessError(f"{self.mode}: unexpected test process pid {pid} != {proc.pid}")
            if self.mode == "attached":
                attach = self._attach(pid)
            t0 = time.monotonic()
            os.write(g_w, b"go\n")
            line = self._status_line(status, proc, self.timeout, audit=True, attach=attach)
            self.wall = time.monotonic() - t0
            m = re.match(r"done rc=(-?\d+) probes=(\d)", line)
            if not m:
                raise HarnessError(f"{self.mode}: test process ended without finishing ({line!r}); "
                                   f"see {self.log}")
            if m.group(2) != ("0" if self.mode == "plain" else "1"):
                raise HarnessError(f"{self.mode}: runtime state changed during the run: {line!r}")
            if attach is not None:
                if attach.poll() is not None:
                    raise HarnessError(self._tracer_gone(attach))
                self.stats = self._stats(pid)
                # attach --timing: the runtime must have timed the suite's
                # steps, or the attached run proves nothing about timing.
                if not self.stats["counters"].get("steps"):
                    raise HarnessError("attached: no timed steps in `asynctrace stats` (attach --timing)")
            os.write(g_w, b"exit\n")
            try:
                self.rc = proc.wait(120)
            except subprocess.TimeoutExpired:
                raise HarnessError(f"{self.mode}: test process did not exit after the tests")
            if attach is not None:
                try:
                    arc = attach.wait(30)
                except subprocess.TimeoutExpired:
                    raise HarnessError("attached: the tracer did not detach after the process exited")
                # 9: "the process exited while attached" (README exit codes),
                # the expected end here.
                if arc not in (0, 9):
                    raise HarnessError(f"attached: the tracer exited with {arc}; see {self.attach_log}")
        finally:
            os.close(g_w)
            status.close()
            stop_tree(proc)
            if attach is not None:
                stop_tree(attach, signal.SIGTERM, 10.0)
                attach.stdout.close()
            reap_orphans()
            shutil.rmtree(workdir, ignore_errors=True)
        self._load()
        with open(self.log, encoding="utf-8", errors="replace") as f:
            m = re.search(r"^Total tests: (.*)$", f.read(), re.M)
        if m:
            kv = {k: v.replace(",", "") for k, v in re.findall(r"(\w+)=([\d,]+)", m.group(1))}
            self.regrtest_total = (kv.get("run", "?"), kv.get("skipped", "0"))
        return self

    def _status_line(self, status, proc, timeout, audit=False, attach=None):
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([status], [], [], 0.25)
            if r:
                c = status.read(1)
                if not c:
                    return f"<test process exited, rc={proc.poll()}>"
                buf += c
                if c == b"\n":
                    return buf.decode().strip()
                continue
            if proc.poll() is not None:  # (a forked child may still hold the status pipe)
                return f"<test process exited, rc={proc.returncode}>"
            if audit:
                self.audit.sample(proc.pid)
            if attach is not None and attach.poll() is not None:
                raise HarnessError(self._tracer_gone(attach))
        raise HarnessError(f"{self.mode}: no answer from the test process in {timeout} s; see {self.log}")

    def _tracer_gone(self, attach):
        msg = f"attached: the tracer exited during the run (rc={attach.returncode})"
        if attach.returncode == 0:
            msg += (": asynctrace attach ends with 0 only on SIGINT/SIGTERM/SIGHUP or when the"
                    " traced process exits, and the test process was alive: a signal from outside?")
        return msg + f"; see {self.attach_log}"

    def _attach(self, pid):
        self.attach_log = os.path.join(self.dir, "attach.log")
        errf = open(self.attach_log, "wb")
        a = spawn([self.tool, "attach", "--timing", "-p", str(pid)], sig=signal.SIGTERM, stdin=subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=errf)
        errf.close()
        deadline = time.monotonic() + 60
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([a.stdout], [], [], 0.5)
            if r:
                c = os.read(a.stdout.fileno(), 4096)
                if not c:
                    break
                buf += c
                if b"\n" in buf:
                    first = buf.split(b"\n")[0].decode()
                    if first.startswith("attached"):
                        log(f"  tracer live: {first}")
                        return a
                    break
            elif a.poll() is not None:
                break
        raise HarnessError(f"attached: `asynctrace attach -p {pid}` did not report 'attached' "
                           f"(rc={a.poll()}, stdout={buf[:200]!r}); see {self.attach_log}")

    def _stats(self, pid):
        p = spawn([self.tool, "stats", "-p", str(pid), "--format", "json"], stdin=subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=60)
        finally:
            stop_tree(p)
        if p.returncode != 0:
            raise HarnessError(f"attached: `asynctrace stats -p {pid}` failed ({p.returncode}): {err.decode()}")
        return json.loads(out)

    def _load(self):
        if not os.path.exists(self.record):
            raise HarnessError(f"{self.mode}: no test records; see {self.log}")
        with open(self.record, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if r["k"] == "case":
                    key = r["id"]
                    n = 2
                    while key in self.cases:  # the same id twice (should not happen): keep both
                        key = f"{r['id']} #{n}"
                        n += 1
                    self.cases[key] = r["o"]
                elif r["k"] == "subtest":
                    self.subtests[f"{r['id']} {r['sub']}"] = r["o"]
                elif r["k"] == "file":
                    self.files[r["name"]] = r["state"]

    def counts(self):
        c = {o: 0 for o in ("pass", "fail", "error", "skip", "xfail", "xpass", "none")}
        for o in self.cases.values():
            c[o] = c.get(o, 0) + 1
        return c


# ---- comparison ----------------------------------------------------------------------

def differences(runs):
    """{key: {mode: outcome}} for every test case / test file whose result differs."""
    diff = {}
    for kind, attr in (("case", "cases"), ("file", "files")):
        keys = set().union(*(getattr(r, attr).keys() for r in runs.values()))
        for k in sorted(keys):
            vals = {m: getattr(r, attr).get(k, "missing") for m, r in runs.items()}
            if len(set(vals.values())) > 1:
                diff[(kind, k)] = vals
    return diff


def file_of(test_id):
    """'test.test_asyncio.test_tasks.X.test_y' -> 'test_asyncio.test_tasks'."""
    m = re.search(r"\(([^)]*)\)", test_id)  # "setUpClass (test.test_asyncio.x.Cls)"
    tid = m.group(1) if m else test_id.split(" ")[0]
    parts = tid.split(".")
    if parts[0] == "test":
        parts = parts[1:]
    return ".".join(parts[:2]), tid


def rerun_batches(diff):
    """[(test files, match patterns or None)] covering every differing key."""
    whole_files = sorted({k for (kind, k) in diff if kind == "file"})
    ids = {}
    for (kind, k) in diff:
        if kind != "case":
            continue
        f, tid = file_of(k)
        if f in whole_files:
            continue
        pat = tid if tid.count(".") >= 4 and " (" not in k else tid + ".*"
        ids.setdefault(f, set()).add(pat)
    batches = []
    if ids:
        batches.append((sorted(ids), sorted(set().union(*ids.values()))))
    if whole_files:
        batches.append((whole_files, None))
    return batches


def case_counts_table(runs, extra_rows):
    rows = [("test files", lambda r: str(len(r.files))),
            ("test cases", lambda r: str(len(r.cases))),
            ("  passed", lambda r: str(r.counts()["pass"])),
            ("  skipped", lambda r: str(r.counts()["skip"])),
            ("  failed", lambda r: str(r.counts()["fail"])),
            ("  errors", lambda r: str(r.counts()["error"])),
            ("  expected failures", lambda r: str(r.counts()["xfail"])),
            ("  unexpected successes", lambda r: str(r.counts()["xpass"])),
            ("failed subtests", lambda r: str(len(r.subtests))),
            ("files not PASSED", lambda r: str(sum(1 for s in r.files.values() if s != "PASSED"))),
            ("regrtest exit code", lambda r: str(r.rc)),
            ("regrtest 'Total tests' run", lambda r: r.regrtest_total[0]),
            ("regrtest 'Total tests' skipped", lambda r: r.regrtest_total[1]),
            ("wall time (s)", lambda r: f"{r.wall:.1f}")] + extra_rows
    out = [f"  {'':<30}" + "".join(f"{m:>12}" for m in runs)]
    for name, fn in rows:
        out.append(f"  {name:<30}" + "".join(f"{fn(r):>12}" for r in runs.values()))
    return "\n".join(out)


# ---- per interpreter -----------------------------------------------------------------

def interpreter_info(py):
    code = ("import sys, os, test; print('%d.%d.%d' % sys.version_info[:3]); "
            "print(os.path.dirname(test.__file__))")
    out = subprocess.run([py, "-I", "-c", code], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise HarnessError(f"{py}: no usable `test` package: {out.stderr.strip()}")
    version, test_dir = out.stdout.split("\n")[:2]
    helptext = subprocess.run([py, "-I", "-m", "test", "--help"], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL).stdout
    return version, test_dir, "--single-process" in helptext


def child_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # do not write into the interpreter's tree
    env["SOURCE_DATE_EPOCH"] = SEED
    env.pop("ASYNCTRACE_DEBUG", None)
    return env


def check_children(py, tool, env):
    """Preflight: every way of starting a child Python gets the runtime (except -E/-I)."""
    res = {}
    for mode in ("plain", "probes"):
        argv = [py, os.path.join(HERE, "children_check.py")]
        if mode == "probes":
            argv = [tool, "run", "--"] + argv
        p = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            out, err = p.communicate(timeout=180)
        finally:
            stop_tree(p)
        if p.returncode != 0:
            raise HarnessError(f"children check ({mode}) failed: {err.decode()[-2000:]}")
        res[mode] = json.loads(out)
    bad = []
    for way, got in res["plain"].items():
        if got:
            bad.append(f"plain: {way} has the runtime")
    for way, got in res["probes"].items():
        want = "ignores PYTHONPATH" not in way
        if got != want:
            bad.append(f"probes: {way}: runtime {'present' if got else 'missing'}")
    if bad:
        raise HarnessError("children check: " + "; ".join(bad))
    covered = [w for w, g in res["probes"].items() if g]
    log(f"  children check: runtime in {', '.join(covered)}; not in -E/-I children (by design)")
    return res


def run_all_modes(py, tool, env, out, test_args, timeout, label):
    runs = {}
    for mode in _modes:
        log(f"  {label}: {mode} ...")
        r = Run(mode, py, tool, os.path.join(out, label, mode), test_args, timeout).execute(env)
        log(f"  {label}: {mode}: {len(r.cases)} test cases, rc={r.rc}, {r.wall:.1f} s")
        runs[mode] = r
    return runs


def one_python(py, tool, out_root, quick, tests, timeout):
    py = os.path.abspath(py)
    version, test_dir, single = interpreter_info(py)
    tag = "cp" + "".join(version.split(".")[:2])
    out = os.path.join(out_root, tag)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    print(f"\n== CPython {version} ({py})", flush=True)
    env = child_env()
    audit_pre = check_children(py, tool, env)

    if tests:
        names = list(tests)
    elif quick:
        names = [n for n in QUICK if os.path.exists(os.path.join(test_dir, *n.split(".")) + ".py")]
    else:
        names = ["test_asyncio"]
    base = ["--single-process"] if single else []
    runs = run_all_modes(py, tool, env, out, base + names, timeout, "full")

    diff = differences(runs)
    reruns = {}
    for i, (files, patterns) in enumerate(rerun_batches(diff)):
        args = list(base)
        if patterns:
            mf = os.path.join(out, f"rerun{i}.match")
            with open(mf, "w") as f:
                f.write("\n".join(patterns) + "\n")
            args += ["--matchfile", mf]
        log(f"  rerun {i}: {len(files)} file(s), "
            f"{'all tests' if patterns is None else f'{len(patterns)} test id(s)'}, in all three modes")
        reruns[i] = (files, patterns, run_all_modes(py, tool, env, out, args + files, timeout, f"rerun{i}"))

    confirmed, flaky = {}, {}
    for key, vals in diff.items():
        kind, k = key
        again = None
        for files, patterns, rr in reruns.values():
            attr = "cases" if kind == "case" else "files"
            if any(k in getattr(r, attr) for r in rr.values()):
                again = {m: getattr(r, attr).get(k, "missing") for m, r in rr.items()}
        if again is not None and len(set(again.values())) == 1:
            flaky[key] = (vals, again)
        else:
            confirmed[key] = (vals, again)

    extra = [("tracer events (stats)", lambda r: str(r.stats["counters"]["events"]) if r.stats else "-"),
             ("tracer drops", lambda r: str(sum(v for k, v in r.stats["counters"].items()
                                                if k.startswith("dropped"))) if r.stats else "-"),
             ("timed steps (stats)", lambda r: str(r.stats["counters"].get("steps", 0)) if r.stats else "-"),
             ("python children sampled", lambda r: str(r.audit.summary()["python_children"])),
             ("  runtime loaded", lambda r: str(r.audit.summary()["runtime_loaded"])),
             ("  on PYTHONPATH, not seen yet", lambda r: str(r.audit.summary()["on_path_not_seen_loaded"])),
             ("  started with -E/-I/-S", lambda r: str(r.audit.summary()["started_E_I_S"])),
             ("  env without the runtime", lambda r: str(r.audit.summary()["env_without_runtime"]))]
    print(f"\n== CPython {version}: python -m test {' '.join(base + names)}")
    print(case_counts_table(runs, extra))
    for mode, r in runs.items():
        s = r.audit.summary()
        if mode != "plain" and s["env_without_runtime"]:
            print(f"  note: {mode}: {s['env_without_runtime']} python child(ren) started with an environment"
                  f" of the test's own, without the runtime: {s['env_without_runtime_argv']}")
        if mode == "plain" and (s["runtime_loaded"] or s["on_path_not_seen_loaded"]):
            raise HarnessError("plain: a child Python had the asynctrace runtime")
    not_passed = sorted({k for r in runs.values() for k, s in r.files.items() if s != "PASSED"})
    if not_passed:
        print("  test files not PASSED: " + ", ".join(
            f"{k} ({'/'.join(r.files.get(k, 'missing') for r in runs.values())})" for k in not_passed))

    for title, group in (("FLAKY: differed in the first run, all three modes agreed on the rerun", flaky),
                         ("DIFFERENT (reproduced on the rerun)", confirmed)):
        if not group:
            continue
        print(f"  {title}:")
        for (kind, k), (vals, again) in sorted(group.items()):
            first = " ".join(f"{m}={v}" for m, v in vals.items())
            rer = " ".join(f"{m}={v}" for m, v in again.items()) if again else "-"
            print(f"    {kind} {k}\n      first: {first}\n      rerun: {rer}")
    verdict = "DIFFERENT" if confirmed else ("IDENTICAL (after rerun of flaky tests)" if flaky else "IDENTICAL")
    print(f"  result: {verdict}", flush=True)

    summary = {"python": py, "version": version, "args": base + names, "verdict": verdict,
               "children_check": audit_pre,
               "modes": {m: {"cases": r.counts(), "n_cases": len(r.cases), "files": len(r.files),
                             "files_not_passed": {k: s for k, s in r.files.items() if s != "PASSED"},
                             "rc": r.rc, "wall_s": round(r.wall, 1), "stats": r.stats,
                             "children": r.audit.summary()} for m, r in runs.items()},
               "flaky": [[kind, k, vals, again] for (kind, k), (vals, again) in flaky.items()],
               "different": [[kind, k, vals, again] for (kind, k), (vals, again) in confirmed.items()]}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return not confirmed


def default_pythons():
    roots = []
    try:
        roots.append(subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                    stdin=subprocess.DEVNULL).stdout.strip())
    except OSError:
        pass
    roots += [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv"), "/root/.pyenv"]
    found = []
    for minor in ("3.12", "3.13"):
        for root in filter(None, roots):
            cands = glob.glob(os.path.join(root, "versions", minor + ".*", "bin", "python3"))
            cands = [c for c in cands if re.search(r"/\d+\.\d+\.\d+/bin/", c)]  # no -dev, no t builds
            if cands:
                found.append(max(cands, key=lambda c: [int(x) for x in
                                                     re.search(r"(\d+)\.(\d+)\.(\d+)/bin", c).groups()]))
                break
    return found


def main():
    ap = argparse.ArgumentParser(prog="scripts/transparency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", metavar="PATH",
                    help="interpreter to test (repeatable; default: pyenv's 3.12 and 3.13)")
    ap.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} test files (~1/3 of the time)")
    ap.add_argument("--tests", nargs="+", metavar="NAME",
                    help="test files to run instead (e.g. test_asyncio.test_tasks)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--build-dir", default=os.environ.get("BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--no-build", action="store_true", help="use the build dir as it is")
    ap.add_argument("--out", help="results directory (default: BUILD_DIR/transparency)")
    ap.add_argument("--timeout", type=float, default=1800, help="per run, seconds (default 1800)")
    a = ap.parse_args()

    if os.geteuid() != 0:
        print("scripts/transparency: mode 3 attaches BPF programs; run as root", file=sys.stderr)
        return 6
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    build = os.path.abspath(a.build_dir)
    _modes[:] = a.modes
    try:
        if not a.no_build:
            env = dict(os.environ, BUILD_DIR=build)
            p = spawn([os.path.join(ROOT, "scripts", "build")], stdin=subprocess.DEVNULL, env=env)
            if p.wait() != 0:
                raise HarnessError("scripts/build failed")
            _live.remove(p)
        tool = os.path.join(build, "asynctrace")
        if not os.access(tool, os.X_OK):
            raise HarnessError(f"{tool} not built")
        pythons = a.python or default_pythons()
        if not pythons:
            print("scripts/transparency: no pyenv 3.12/3.13 found; pass --python PATH", file=sys.stderr)
            return 2
        out = os.path.abspath(a.out or os.path.join(build, "transparency"))
        ok = True
        t0 = time.monotonic()
        for py in pythons:
            ok = one_python(py, tool, out, a.quick, a.tests, a.timeout) and ok
        log(f"done in {time.monotonic() - t0:.0f} s; details in {out}")
        return 0 if ok else 1
    except HarnessError as e:
        print(f"scripts/transparency: {e}", file=sys.stderr, flush=True)
        return 3
    except Interrupted as e:
        print(f"scripts/transparency: interrupted ({e}); stopping child processes", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
