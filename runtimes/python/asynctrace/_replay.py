# SPDX-License-Identifier: Apache-2.0
"""State replay for a tracer that attached late (probes.h: replay__begin/end).

Called by the watcher thread of _asynctrace with the GIL held. It runs on a
thread asyncio does not know about, so it must not call threading.current_thread()
(that would register a _DummyThread) or anything that needs a running loop.
Probes are fired by the C helpers.
"""
import sys
import weakref

import _asyncio

from . import _asynctrace as C
from . import _discover

_MAX_FRAMES = 32
_AWAIT_KINDS_TASKGROUP = 2  # asynctrace_edge_kind TASKGROUP


def _pending_tasks():
    """Every pending task of every loop, in every thread."""
    tasks = C.task_refs()  # 3.14+: the thread states' task lists
    for _ in range(10):
        if tasks is not None:
            break
        try:
            if hasattr(_asyncio, "_scheduled_tasks"):  # 3.12, 3.13
                tasks = list(_asyncio._scheduled_tasks) + list(_asyncio._eager_tasks)
            else:  # 3.10, 3.11
                tasks = list(_asyncio._all_tasks)
            break
        except RuntimeError:  # set changed size during iteration (another thread)
            continue
    tasks = tasks or []
    seen = set()
    out = []
    for t in tasks:
        if id(t) not in seen and not t.done():
            seen.add(id(t))
            out.append(t)
    return out


def _thread_natives():
    """thread ident -> native id, without creating _DummyThread entries."""
    natives = {}
    threading = sys.modules.get("threading")
    if threading is not None:
        for ident, th in list(getattr(threading, "_active", {}).items()):
            nid = getattr(th, "native_id", None)
            if nid:
                natives[ident] = nid
    return natives


def _main_native(natives):
    threading = sys.modules.get("threading")
    try:
        return threading.main_thread().native_id or 0
    except Exception:
        return 0


# Generator, coroutine, iterable coroutine, async generator (CO_* flags).
_CORO_FLAGS = 0x20 | 0x80 | 0x100 | 0x200


def _running_frames(task, thread_frames):
    """For a task running now on some thread: (ident, frames innermost first,
    truncated). Only coroutine frames, as for a suspended task and as Python
    3.14 shows them: plain functions the step is inside are not part of the
    task's await chain."""
    coro = task.get_coro()
    cframe = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    if cframe is None:
        return None, [], False
    for ident, top in thread_frames.items():
        frames = []
        f = top
        while f is not None:
            if f is cframe or f.f_code.co_flags & _CORO_FLAGS:
                frames.append(f)
            if f is cframe:
                truncated = len(frames) > _MAX_FRAMES
                return ident, frames[:_MAX_FRAMES], truncated
            f = f.f_back
    return None, [cframe], False


def _taskgroup_parent(task):
    """The parent task of the TaskGroup that owns `task`, if any (3.11+)."""
    tg_mod = sys.modules.get("asyncio.taskgroups")
    if tg_mod is None:
        return None
    cbs = task._callbacks or ()
    for ent in cbs:
        cb = ent[0] if isinstance(ent, tuple) else ent
        owner = getattr(cb, "__self__", None)
        if isinstance(owner, tg_mod.TaskGroup) and getattr(cb, "__name__", "") == "_on_task_done":
            return owner._parent_task
    return None


def _on_task_done():
    """TaskGroup._on_task_done (the function), or None before 3.11."""
    tg_mod = sys.modules.get("asyncio.taskgroups")
    tg = getattr(tg_mod, "TaskGroup", None) if tg_mod else None
    return getattr(tg, "_on_task_done", None) if tg else None


def _task_refs():
    """Every task of every loop as a list of tasks or weak references to them
    (C.replay_tasks skips dead references, done tasks and duplicates), read
    from the WeakSets' underlying sets at C speed (3.14+: from the thread
    states' task lists, in C)."""
    tasks = C.task_refs()
    if tasks is not None:
        return tasks
    for _ in range(10):
        try:
            if hasattr(_asyncio, "_scheduled_tasks"):  # 3.12, 3.13
                return list(_asyncio._scheduled_tasks.data) + list(_asyncio._eager_tasks)
            return list(_asyncio._all_tasks.data)  # 3.10, 3.11
        except (RuntimeError, AttributeError):  # changed size (GC, another thread)
            continue
    return _pending_tasks()


def _wait_edges(tasks):
    """Re-sends the edges of every asyncio.wait() in progress (3.14: the
    waiting task awaits each task of fs): each pending task of fs carries
    wait's _on_completion callback, whose closure holds the `waiter` future
    the waiting task is suspended on."""
    code = _discover.wait_completion_code()
    if code is None:
        return
    by_waiter = {}  # id(waiter) -> [tasks of fs]
    live = []
    for t in tasks:
        if isinstance(t, weakref.ref):
            t = t()
        if t is None or t.done():
            continue
        live.append(t)
        for ent in t._callbacks or ():
            cb = ent[0] if isinstance(ent, tuple) else ent
            if getattr(cb, "__code__", None) is not code:
                continue
            for name, cell in zip(code.co_freevars, cb.__closure__ or ()):
                if name == "waiter":
                    by_waiter.setdefault(id(cell.cell_contents), []).append(t)
    if not by_waiter:
        return
    for t in live:
        children = by_waiter.get(id(t._fut_waiter))
        if children:
            # Noted by the waiter: the edges go when t waits on something else.
            C.wait_begin(t, t._fut_waiter, True, children)


def _replay_fast(tasks, full=True):
    """The per-task work in C (C.replay_tasks); Python only maps threads and
    sends the frames of the few tasks running right now."""
    natives = _thread_natives()
    main_native = _main_native(natives)
    loop_tids = {}
    for loop in C.unknown_loops(tasks):
        ident = getattr(loop, "_thread_id", None)
        tid = natives.get(ident, 0) if ident is not None else 0
        if tid:
            loop_tids[loop] = tid
    running = {}
    for loop, t in C.running_tasks():
        if C.loop_alive(loop):  # not a loop a forked child inherited
            running[id(t)] = t
    thread_frames = sys._current_frames() if running else {}
    run_frames = {}
    for tid_, t in running.items():
        ident, frames, truncated = _running_frames(t, thread_frames)
        run_frames[tid_] = (t, ident, frames, truncated)
        if ident is not None and not C.loop_tid(t._loop):
            loop_tids.setdefault(t._loop, natives.get(ident, 0) or main_native)
    n = C.replay_tasks(tasks, loop_tids, main_native, set(running), _on_task_done(), full)
    if full:
        _wait_edges(tasks)
    for t, ident, frames, truncated in run_frames.values():
        if not t.done():
            C.emit_running(t, frames, truncated)
    return n


def replay(full=True):
    """full: everything a new tracer needs; else only current await states
    and stacks (a refresh for a tracer that followed the events)."""
    gen = C.replay_begin(full)
    n = 0
    try:
        if C.layout() is not None:
            n = _replay_fast(_task_refs(), full)
            return
        tasks = [t for t in _pending_tasks() if C.loop_alive(t._loop)]
        natives = _thread_natives()
        main_native = _main_native(natives)
        thread_frames = sys._current_frames()
        running = {}  # id(task) -> loop
        for loop, t in C.running_tasks():
            if C.loop_alive(loop):
                running[id(t)] = loop

        states = []
        for t in tasks:
            loop = t._loop
            tid = C.loop_tid(loop)
            ident = None
            run = None
            if id(t) in running:
                ident, frames, truncated = _running_frames(t, thread_frames)
                run = (frames, truncated)
            if not tid:
                if ident is None:
                    ident = getattr(loop, "_thread_id", None)
                tid = natives.get(ident, 0) if ident is not None else 0
            if not tid:
                tid = main_native
            tg_parent = _taskgroup_parent(t)
            C.emit_create(t, tg_parent, tid)
            states.append((t, tg_parent, run))
            n += 1

        for t, tg_parent, run in states:
            if tg_parent is not None:
                C.emit_edge(t, tg_parent, _AWAIT_KINDS_TASKGROUP)
        _wait_edges(tasks)
        for t, tg_parent, run in states:
            if run is not None:
                C.emit_running(t, run[0], run[1])
            else:
                C.emit_state(t)
    finally:
        C.replay_end(gen, n)
