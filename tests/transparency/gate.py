# SPDX-License-Identifier: Apache-2.0
"""Runs `python -m test ARGS` in this process, gated and recorded.

    python gate.py STATUS_FD GATE_FD RECORD EXPECT -- ARGS...

Started by transparency.py identically in all three modes (plain, probes,
probes + attached tracer), so the only difference between the modes is
asynctrace itself:

1. checks that the asynctrace runtime is loaded iff EXPECT is "1" (a "probes"
   run that silently ran without probes would compare plain with plain);
2. writes "ready pid=N probes=0|1" to STATUS_FD and blocks until the driver
   writes "go" to GATE_FD (in mode 3 the driver attaches the tracer first);
3. records every test outcome (one JSON line per test case and per test
   file, written as they happen) into RECORD: libregrtest's --junit-xml
   drops subtest failures and setUpClass errors, this does not;
4. runs the test package exactly as `python -m test` does (runpy);
5. writes "done rc=N" and blocks until the driver writes "exit" (in mode 3
   the driver reads the tracer's counters while the process is still alive).
"""
import os
import sys


def _line(fd):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        buf += chunk
    return buf.decode().strip()


def _probes_loaded():
    # The runtime enables itself at the first `import asyncio`
    # (asynctrace._lazy); the suite imports it anyway, in every mode.
    import asyncio  # noqa: F401

    mod = sys.modules.get("asynctrace._asynctrace")
    try:
        return bool(mod is not None and mod.is_installed())
    except Exception:
        return False


def _install_recorder(path):
    import json

    out = open(path, "a", buffering=1, encoding="utf-8")

    def emit(**rec):
        out.write(json.dumps(rec, sort_keys=True) + "\n")

    from test.libregrtest import testresult

    cls = testresult.RegressionTestResult
    state = {"id": None, "outcome": None, "subfail": False}

    def tid(test):
        try:
            return test.id()
        except Exception:
            return str(test)

    def wrap(name, outcome):
        orig = getattr(cls, name)

        def method(self, test, *args):
            t = tid(test)
            if t == state["id"]:
                state["outcome"] = outcome
            else:  # _ErrorHolder: setUpClass/tearDownModule errors, no startTest
                emit(k="case", id=t, o=outcome)
            return orig(self, test, *args)

        setattr(cls, name, method)

    orig_start, orig_stop, orig_sub = cls.startTest, cls.stopTest, cls.addSubTest

    def startTest(self, test):
        state.update(id=tid(test), outcome=None, subfail=False)
        return orig_start(self, test)

    def stopTest(self, test):
        if state["id"] is not None:
            o = state["outcome"]
            if state["subfail"] and o in (None, "pass"):
                o = "fail"
            emit(k="case", id=state["id"], o=o or "none")
            state["id"] = None
        return orig_stop(self, test)

    def addSubTest(self, test, subtest, err):
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            emit(k="subtest", id=tid(test), sub=tid(subtest), o="fail" if failure else "error")
            state["subfail"] = True
        return orig_sub(self, test, subtest, err)

    cls.startTest, cls.stopTest, cls.addSubTest = startTest, stopTest, addSubTest
    for name, outcome in (("addSuccess", "pass"), ("addFailure", "fail"), ("addError", "error"),
                          ("addSkip", "skip"), ("addExpectedFailure", "xfail"),
                          ("addUnexpectedSuccess", "xpass")):
        wrap(name, outcome)

    from test.libregrtest import results

    orig_acc = results.TestResults.accumulate_result

    def accumulate_result(self, result, runtests):
        stats = getattr(result, "stats", None)
        emit(k="file", name=result.test_name, state=str(result.state),
             run=getattr(stats, "tests_run", None), skipped=getattr(stats, "skipped", None))
        return orig_acc(self, result, runtests)

    results.TestResults.accumulate_result = accumulate_result


def main():
    sep = sys.argv.index("--")
    status_fd, gate_fd, record, expect = sys.argv[1:sep]
    status_fd, gate_fd = int(status_fd), int(gate_fd)
    args = sys.argv[sep + 1:]
    for fd in (status_fd, gate_fd):
        os.set_inheritable(fd, False)  # tests' own children must not hold the pipes

    probes = _probes_loaded()
    if probes != (expect == "1"):
        os.write(status_fd, f"error probes={int(probes)} expected={expect}\n".encode())
        sys.exit(97)
    os.write(status_fd, f"ready pid={os.getpid()} probes={int(probes)}\n".encode())
    if _line(gate_fd) != "go":
        sys.exit(98)  # the driver went away

    _install_recorder(record)
    import runpy

    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = os.getcwd()  # as `python -m test` has it, not this script's directory
    sys.argv = [os.path.join(os.path.dirname(__import__("test").__file__), "__main__.py")] + args
    rc = 0
    try:
        runpy.run_module("test", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.write(status_fd, f"done rc={rc} probes={int(_probes_loaded())}\n".encode())
            _line(gate_fd)  # "exit" (or EOF)
        except OSError:
            pass
    sys.exit(rc)


if __name__ == "__main__":
    main()
