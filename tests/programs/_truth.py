# SPDX-License-Identifier: Apache-2.0
"""Ground truth for the e2e tests: what an asyncio program knows about itself.

Each program in this folder builds a task structure, then, from a plain loop
callback (so every task is suspended), writes its own view of its pending
tasks to the JSON file named by argv[1]: ids, names, coroutine stacks
(innermost first, as Python 3.14 reports them) and who awaits whom. It then
prints READY and waits for SIGUSR1, finishes its tasks and prints a transcript
of observable behaviour (names, results, exceptions) that must be identical
with and without asynctrace.
"""
import asyncio
import json
import os
import signal
import sys
import threading

_loop_tids = {}


def register_loop(loop):
    """Call from the loop's thread: remembers the loop's OS thread id."""
    _loop_tids[id(loop)] = threading.get_native_id()


def _qualname(obj, code):
    return getattr(code, "co_qualname", None) or getattr(obj, "__qualname__", code.co_name)


def stack_of(coro):
    frames = []
    obj = coro
    while obj is not None:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        frames.append({"function": _qualname(obj, code), "file": code.co_filename,
                       "line": frame.f_lineno})
        obj = getattr(obj, "cr_await", None) if hasattr(obj, "cr_await") else getattr(obj, "gi_yieldfrom", None)
    frames.reverse()
    return frames


def _is_task(x):
    return isinstance(x, asyncio.Task)


def awaiters(tasks):
    """child id -> [awaiter ids], per Python 3.14's rules: direct awaits,
    gather children, TaskGroup children (owned by the group's parent task),
    shield inners, the tasks an asyncio.wait() waits for (only while it
    waits: a task FIRST_COMPLETED left pending is no longer awaited)."""
    tg_type = getattr(asyncio, "TaskGroup", None)
    edges = {id(t): [] for t in tasks}

    def add(child, awaiter):
        if id(child) in edges and id(awaiter) in edges and id(awaiter) not in edges[id(child)]:
            edges[id(child)].append(id(awaiter))

    def children_of(fut):
        for c in getattr(fut, "_children", ()):
            if _is_task(c):
                if not c.done():
                    yield c
            elif type(c).__name__ == "_GatheringFuture":
                yield from children_of(c)

    # asyncio.wait(fs): each pending task of fs has _wait's _on_completion
    # callback, whose closure holds the future the waiting task awaits.
    in_wait = {}  # id(waiter future) -> [tasks of fs]
    for t in tasks:
        for cb, _ctx in (t._callbacks or []):
            code = getattr(cb, "__code__", None)
            if code is not None and code.co_name == "_on_completion" and "waiter" in code.co_freevars:
                cell = cb.__closure__[code.co_freevars.index("waiter")]
                in_wait.setdefault(id(cell.cell_contents), []).append(t)

    for t in tasks:
        w = t._fut_waiter
        if w is None:
            continue
        for c in in_wait.get(id(w), ()):
            if not c.done():
                add(c, t)
        if _is_task(w):
            add(w, t)
        elif type(w).__name__ == "_GatheringFuture":
            for c in children_of(w):
                add(c, t)
        else:
            for cb, _ctx in (w._callbacks or []):
                if getattr(cb, "__name__", "") == "_outer_done_callback":
                    for cell in cb.__closure__ or ():
                        if _is_task(cell.cell_contents):
                            add(cell.cell_contents, t)
    if tg_type is not None:
        for t in tasks:
            for cb, _ctx in (t._callbacks or []):
                owner = getattr(cb, "__self__", None)
                if isinstance(owner, tg_type) and owner._parent_task is not None:
                    add(t, owner._parent_task)
    return edges


def dump(path, loops):
    """Writes the truth file; "running" marks the task whose step is calling
    dump (none when called from a plain loop callback)."""
    tasks = []
    for loop in loops:
        tasks.extend(asyncio.all_tasks(loop))
    edges = awaiters(tasks)
    out = []
    for t in tasks:
        out.append({
            "id": hex(id(t)),
            "name": t.get_name(),
            "tid": _loop_tids.get(id(t.get_loop()), 0),
            "stack": stack_of(t.get_coro()),
            "awaited_by": [hex(a) for a in edges[id(t)]],
            "running": t is asyncio.current_task(t.get_loop()),
        })
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "tasks": out}, f, indent=1)
    os.replace(tmp, path)
    print("READY", flush=True)


def log(*args):
    print(*args, flush=True)


def run(body, *, settle=0.3, loop_factory=None, extra_loops=()):
    """Runs body(stop) as the main task. settle s after start, dumps the truth
    to argv[1] from a loop callback; SIGUSR1 sets `stop`."""
    truth = sys.argv[1]

    async def main():
        loop = asyncio.get_running_loop()
        register_loop(loop)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, stop.set)
        if os.environ.get("ASYNCTRACE_E2E_GATE"):
            # Event-path tests: wait until the tracer is attached (SIGUSR2),
            # so the whole structure is built under its eyes.
            gate = asyncio.Event()
            loop.add_signal_handler(signal.SIGUSR2, gate.set)
            log("GATED")
            await gate.wait()
        beat = float(os.environ.get("ASYNCTRACE_E2E_HEARTBEAT") or 0)
        if beat > 0:
            # Injection tests (tests/e2e/inject_test.cpp): a plain callback,
            # no task, runs Python code every `beat` s, so that a script
            # sys.remote_exec queued runs soon; an idle loop would run none.
            def tick():
                loop.call_later(beat, tick)

            loop.call_later(beat, tick)
        loop.call_later(settle, lambda: dump(truth, [loop, *extra_loops]))
        return await body(stop)

    if loop_factory is None:
        result = asyncio.run(main())
    else:
        loop = loop_factory()
        try:
            result = loop.run_until_complete(main())
        finally:
            loop.close()
    log("result:", result)
    if os.environ.get("ASYNCTRACE_E2E_HEARTBEAT"):
        # What an injected script could have left changed.
        log("sys.path:", sys.path)
        log("dont_write_bytecode:", sys.dont_write_bytecode)
        # Finders of sys.path-like entries, not of packages' own directories
        # (the runtime's package keeps its own, as any imported package).
        log("path_importer_cache:", sorted(k for k in sys.path_importer_cache
                                           if not os.path.exists(os.path.join(k, "__init__.py"))))
