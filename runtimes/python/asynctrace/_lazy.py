# SPDX-License-Identifier: Apache-2.0
"""Enables asynctrace when the program first imports asyncio, not at start-up.

`asynctrace run` puts the runtime on PYTHONPATH of every Python it starts,
children included; enabling at start-up would import asyncio into programs
that never use it (tens of ms each, and a different sys.modules). Instead a
finder sits first on sys.meta_path and finds nothing itself; on the first
`import asyncio` it leaves sys.meta_path, lets the real finder find asyncio,
and has the real loader run it, then enables asynctrace. The module's loader
and spec are the real ones afterwards.
"""
import sys


class _Loader:
    def __init__(self, real):
        self._real = real

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = self._real
        module.__loader__ = self._real
        self._real.exec_module(module)
        try:
            import asynctrace

            asynctrace.enable()
        except BaseException:  # noqa: BLE001 - the host program must run regardless
            import os

            if os.environ.get("ASYNCTRACE_DEBUG"):
                import traceback

                traceback.print_exc()


class _Finder:
    def find_spec(self, name, path=None, target=None):
        if name != "asyncio":
            return None
        remove()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


_finder = _Finder()


def install():
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def remove():
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass
