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
