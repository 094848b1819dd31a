# SPDX-License-Identifier: Apache-2.0
"""asynctrace: USDT probes for asyncio tasks (see include/asynctrace/probes.h).

    import asynctrace
    asynctrace.enable()

enable() hooks the C implementation of asyncio (_asyncio) in place: task
types, reprs, exceptions and cancellation are unchanged, and while no tracer is
attached each hook costs one load and one branch.
"""
import _thread

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
    (e.g. no C _asyncio); asynctrace._autoload swallows those.
    """
    global _enabled
    if _enabled:
        return True
    with _lock:
        if _enabled:
            return True
        from . import _asynctrace, _discover

        points = _discover.hook_points()
        samples, finish = _discover.layout_samples()
        try:
            _asynctrace._install(*points, samples)
        finally:
            _discover.close_awaitables(points)
            finish()
            # The sample task completed under the hooks: not the program's.
            _asynctrace._timing_restart()
        del points, samples
        _discover.wrap_taskgroup(_asynctrace)

        import atexit
        import os

        atexit.register(_asynctrace._stop_watcher)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_asynctrace._stop_watcher,
                                after_in_parent=_asynctrace._after_fork_parent,
                                after_in_child=_asynctrace._after_fork_child)
        _enabled = True
    return True
