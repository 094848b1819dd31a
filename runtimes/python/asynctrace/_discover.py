# SPDX-License-Identifier: Apache-2.0
"""Find the private _asyncio objects the C hooks patch, using a throw-away task.

The task runs on a fake loop object (no selector), so enable() also works
from inside a running event loop. Up to 3.13 nothing else is needed. From
3.14 on, a task can step only when its loop is its thread's running loop,
and a thread whose own task is in a step cannot step another one: enable()
then does all this in a short-lived helper thread (discovery_thread) where
each fake loop is the running loop while its tasks step (_running).
"""
import asyncio
import asyncio.tasks
import contextlib
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


async def _wait(fut, note=None):
    if note is not None:
        note()  # inside the task's step
    await fut


def _set_running(loop):
    """Makes `loop` this thread's running loop (3.14+ only, in the helper
    thread); returns the previous one."""
    prev = _asyncio._get_running_loop()
    _asyncio._set_running_loop(loop)
    return prev


@contextlib.contextmanager
def _running(loop, thread_state):
    """While inside, the fake `loop` runs in this thread if the version
    steps tasks only on their thread's running loop."""
    if not thread_state:
        yield
        return
    prev = _set_running(loop)
    try:
        yield
    finally:
        _asyncio._set_running_loop(prev)


def discovery_thread(fn, thread_state):
    """fn() in a thread of its own on 3.14+ (see the module docstring), joined
    (and gone from the kernel's thread count) before returning; else fn()."""
    if not thread_state:
        return fn()
    import _thread
    import os
    import time

    out = []

    def main():
        out.append(_thread.get_native_id())
        try:
            out.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out.append((False, e))

    _thread.start_joinable_thread(main).join()
    # join() returns once the thread cleared its id, a moment before the kernel
    # stops counting it (3.12+'s fork() warning counts kernel threads).
    for _ in range(200):
        if not os.path.exists("/proc/self/task/%d" % out[0]):
            break
        time.sleep(0.00005)
    ok, value = out[1]
    if not ok:
        raise value
    return value


async def _agen():
    yield None


def hook_points(thread_state=False):
    """Arguments for _asynctrace._install()."""
    loop = _FakeLoop()
    with _running(loop, thread_state):
        return _hook_points(loop)


def _hook_points(loop):
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
        getattr(_asyncio, "_current_tasks", None),  # gone in 3.14
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
    # No import statement: on 3.14 this runs in the helper thread, possibly
    # while the main thread is still importing asyncio (asynctrace._lazy),
    # and importing a module being initialized waits for its lock.
    tasks = asyncio.tasks
    code = getattr(tasks.shield, "__code__", None)
    for const in code.co_consts if code is not None else ():
        if getattr(const, "co_name", None) == "_outer_done_callback":
            try:
                return const, const.co_freevars.index("inner")
            except ValueError:
                break
    return None, -1


def layout_samples(note_step=None, thread_state=False):
    """Sample objects from which _install() learns the _asyncio field layout.

    Returns (samples, finish): finish() completes the sample task and futures
    so that nothing is logged when they are collected. note_step(task) is
    called inside the sample task's first step. On 3.14+ the samples' fake
    loop is this thread's running loop from here until finish() returns.
    """
    loop = _FakeLoop()
    prev = _set_running(loop) if thread_state else None
    wfut = _asyncio.Future(loop=loop)
    me = []
    coro = _wait(wfut, (lambda: note_step(me[0])) if note_step else None)
    task = _asyncio.Task(coro, loop=loop, name="asynctrace-layout")
    me.append(task)
    loop.ready.pop(0)[0]()  # first step: the task awaits wfut
    del me[:]
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
        try:
            fexc.exception()  # retrieved: no "exception was never retrieved" log
            fcb.cancel()
            wfut.set_result(None)
            while loop.ready:
                f, fargs = loop.ready.pop(0)
                f(*fargs)
        finally:
            if thread_state:
                _asyncio._set_running_loop(prev)

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


def wrap_wait(C):
    """A task in asyncio.wait(fs) awaits each task of fs until wait() returns
    (3.14 semantics: tasks._wait adds and discards the edges). A plain
    function that returns _wait's own coroutine, tracer or not (no frame is
    added to the waiting task, nor to a traceback): with a tracer attached it
    first has the runtime send the edges and note the coroutine, whose end
    the runtime sees after the task's next steps (wait_step_ended) and then
    removes the edges of the tasks still pending."""
    tasks = asyncio.tasks
    orig = tasks._wait
    if getattr(orig, "__asynctrace_wrapped__", False):
        return
    edge_enabled = C.edge_enabled
    wait_begin = C.wait_begin
    current_task = tasks.current_task

    @functools.wraps(orig)
    def _wait(fs, timeout, return_when, loop):
        coro = orig(fs, timeout, return_when, loop)
        if edge_enabled():
            try:
                wait_begin(current_task(loop), coro, False, fs)
            except Exception:  # never an error in the program's wait()
                pass
        return coro

    _wait.__asynctrace_wrapped__ = True
    tasks._wait = _wait


def wait_completion_code():
    """The code of _wait's _on_completion callback (the original _wait)."""
    fn = asyncio.tasks._wait
    fn = getattr(fn, "__wrapped__", fn)
    for const in getattr(fn, "__code__", None).co_consts:
        if getattr(const, "co_name", None) == "_on_completion":
            return const
    return None
