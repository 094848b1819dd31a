# SPDX-License-Identifier: Apache-2.0
"""Does every kind of child Python that uses asyncio get the asynctrace runtime? (It
enables itself at the first `import asyncio`.) Prints one JSON object:
{"self": bool, "<way of starting a child>": bool, ...}, True = runtime installed there.

Run as `asynctrace run -- PYTHON children_check.py` (expect True everywhere except
children started with -E/-I, which ignore PYTHONPATH by design) and as plain
`PYTHON children_check.py` (expect False everywhere).
"""
import asyncio  # noqa: F401 - the runtime enables itself where asyncio is used (asynctrace._lazy)
import json
import multiprocessing
import os
import subprocess
import sys

PROBE = ("import asyncio, sys; m = sys.modules.get('asynctrace._asynctrace'); "
         "print(bool(m and m.is_installed()))")


def installed():
    m = sys.modules.get("asynctrace._asynctrace")
    return bool(m and m.is_installed())


def child(*argv, shell=False):
    out = subprocess.run(argv[0] if shell else argv, shell=shell, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    return out.stdout.strip() == "True"


def _mp_report(q):
    q.put(installed())


def via_multiprocessing(method):
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_mp_report, args=(q,))
    p.start()
    try:
        return q.get(timeout=60)
    finally:
        p.join(60)


def via_fork():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, b"1" if installed() else b"0")
        os._exit(0)
    os.close(w)
    data = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    return data == b"1"


def main():
    exe = sys.executable
    res = {"self": installed()}
    res["subprocess: python -c"] = child(exe, "-c", PROBE)
    res["shell: sh -c 'python -c'"] = child(f"{exe} -c \"{PROBE}\"", shell=True)
    res["os.fork()"] = via_fork()
    for method in ("spawn", "forkserver", "fork"):
        res[f"multiprocessing {method}"] = via_multiprocessing(method)
    res["python -E -c (ignores PYTHONPATH)"] = child(exe, "-E", "-c", PROBE)
    res["python -I -c (ignores PYTHONPATH)"] = child(exe, "-I", "-c", PROBE)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
