# SPDX-License-Identifier: Apache-2.0
"""Find the private _asyncio objects the C hooks patch, using a throw-away task.

The task runs on a fake loop object (no selector, no thread state, no running
loop needed), so enable() also works from inside a running event loop.
"""
import asyncio
import asyncio.tasks
import functools
import sys

import _asyncio


class _FakeLoop:
    """Just enough of a loop for _asyncio.Task/Future to schedule callbacks."""

    def __init__(self):
        self.ready = []

    def get_debug(self):
        return False

    def is_running(self):
        return False

    def call_soon(self, callback, *args, context=None):
        self.ready.append((callback, args))

    def call_exception_handler(self, context):
        pass


async def _wait(fut):
    await fut


async def _agen():
    yield None


def hook_points():
    """Arguments for _asynctrace._install()."""
    loop = _FakeLoop()
    fut = _asyncio.Future(loop=loop)
    # An explicit name keeps the "Task-N" counter of the program untouched.
    task = _asyncio.Task(_wait(fut), loop=loop, name="asynctrace-discovery")
    step = loop.ready.pop(0)[0]  # TaskStepMethWrapper scheduled by Task.__init__
    step()  # first step: the task now awaits fut
    wakeup = fut._callbacks[0][0]  # bound task_wakeup (PyCFunction of TaskWakeupDef)

    ag = _agen()
    asend = ag.asend(None)
    athrow = ag.athrow(GeneratorExit)
    args = (
        _asyncio.Task,
        step,
        task,
        wakeup,
        getattr(asyncio.tasks, "_GatheringFuture", None),
        _asyncio._current_tasks,
        _asyncio._get_running_loop,
        asend,
        athrow,
    )
    # Let the throw-away task finish cleanly (no "Task was destroyed" warning).
    fut.set_result(None)
    while loop.ready:
        cb, cbargs = loop.ready.pop(0)
        cb(*cbargs)
    return args


def _shield_closure():
    """(code of asyncio.shield's _outer_done_callback, index of `inner` in its closure)."""
    import asyncio.tasks as tasks

    code = getattr(tasks.shield, "__code__", None)
    for const in code.co_consts if code is not None else ():
        if getattr(const, "co_name", None) == "_outer_done_callback":
            try:
                return const, const.co_freevars.index("inner")
            except ValueError:
                break
    return None, -1


def layout_samples():
    """Sample objects from which _install() learns the _asyncio field layout.

    Returns (samples, finish): finish() completes the sample task and futures
    so that nothing is logged when they are collected.
    """
    loop = _FakeLoop()
    wfut = _asyncio.Future(loop=loop)
    coro = _wait(wfut)
    task = _asyncio.Task(coro, loop=loop, name="asynctrace-layout")
    loop.ready.pop(0)[0]()  # first step: the task awaits wfut
    fdone = _asyncio.Future(loop=loop)
    fdone.set_result(None)
    fcanc = _asyncio.Future(loop=loop)
    fcanc.cancel()
    fexc = _asyncio.Future(loop=loop)
    exc = RuntimeError("asynctrace layout sample")
    fexc.set_exception(exc)
    fcb = _asyncio.Future(loop=loop)

    def cb(fut):
        pass

    def cb2(fut):
        pass

    fcb.add_done_callback(cb)
    fcb.add_done_callback(cb2)
    shield_code, inner = _shield_closure()
    samples = (task, wfut, coro, task.get_name(), fdone, fcanc, fexc, exc, fcb, cb,
               shield_code, inner, cb2)

    def finish():
        fexc.exception()  # retrieved: no "exception was never retrieved" log
        fcb.cancel()
        wfut.set_result(None)
        while loop.ready:
            f, fargs = loop.ready.pop(0)
            f(*fargs)

    return samples, finish


def close_awaitables(args):
    """Close the sample asend/athrow objects (3.13 warns about unawaited ones)."""
    for aw in args[-2:]:
        try:
            aw.close()
        except Exception:
            pass


def wrap_taskgroup(C):
    """TaskGroup children are awaited by the group's parent task (3.14 semantics)."""
    if sys.version_info < (3, 11):
        return
    from asyncio import taskgroups

    orig = taskgroups.TaskGroup.create_task
    if getattr(orig, "__asynctrace_wrapped__", False):
        return
    edge_enabled = C.edge_enabled
    taskgroup_edge = C.taskgroup_edge

    @functools.wraps(orig)
    def create_task(self, *args, **kwargs):
        task = orig(self, *args, **kwargs)
        if edge_enabled():
            taskgroup_edge(task, self._parent_task)
        return task

    create_task.__asynctrace_wrapped__ = True
    taskgroups.TaskGroup.create_task = create_task
