# SPDX-License-Identifier: Apache-2.0
"""asynctrace: USDT probes for asyncio tasks (see include/asynctrace/probes.h).

    import asynctrace
    asynctrace.enable()

enable() hooks the C implementation of asyncio (_asyncio) in place: task
types, reprs, exceptions and cancellation are unchanged, and while no tracer is
attached each hook costs one load and one branch.
"""
import _thread
import sys

__all__ = ["enable", "is_enabled"]

# _thread, not threading: this package is imported at start-up of every
# Python `asynctrace run` starts (asynctrace._autoload), and threading would
# bring a dozen modules into programs that never use asyncio.
_lock = _thread.allocate_lock()
_enabled = False


def is_enabled():
    """True once enable() succeeded in this process."""
    return _enabled


def enable():
    """Install the asyncio hooks and start the tracer watcher. Idempotent.

    Raises ImportError/RuntimeError if this interpreter cannot be hooked
    (e.g. no C _asyncio, a free-threaded build); asynctrace._autoload
    swallows those.
    """
    global _enabled
    if _enabled:
        return True
    _refuse_free_threaded()
    with _lock:
        if _enabled:
            return True
        from . import _asynctrace, _discover

        _discover.discovery_thread(lambda: _install(_asynctrace, _discover),
                                   _asynctrace.ASYNCIO_THREAD_STATE)
        _discover.wrap_taskgroup(_asynctrace)
        _discover.wrap_wait(_asynctrace)

        import atexit
        import os

        atexit.register(_asynctrace._stop_watcher)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_asynctrace._stop_watcher,
                                after_in_parent=_asynctrace._after_fork_parent,
                                after_in_child=_asynctrace._after_fork_child)
        _enabled = True
    return True


def _refuse_free_threaded():
    """The runtime relies on the GIL (its event ring, and on 3.14 the task
    lists it walks): free-threaded builds (abiflags "t") are refused, even
    with the GIL re-enabled at run time, before anything is changed."""
    gil = getattr(sys, "_is_gil_enabled", None)
    if "t" in getattr(sys, "abiflags", "") or (gil is not None and not gil()):
        raise ImportError("asynctrace: free-threaded CPython (no GIL) is not supported; "
                          "run the program with a GIL build of CPython")


def _install(C, discover):
    """Discovery and _install(); on 3.14+ in discovery's helper thread."""
    ts = C.ASYNCIO_THREAD_STATE
    points = discover.hook_points(ts)
    samples, finish = discover.layout_samples(C._note_step, ts)
    try:
        C._install(*points, samples)
    finally:
        discover.close_awaitables(points)
        finish()
        # The sample task completed under the hooks: not the program's.
        C._timing_restart()
