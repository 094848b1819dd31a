# SPDX-License-Identifier: Apache-2.0
"""Imported by sitecustomize.py / asynctrace.pth: enable tracing when the
program uses asyncio (now if it already imported it, else at its first
`import asyncio`: asynctrace._lazy), and never fail the host."""
try:
    import sys as _sys

    if "asyncio" in _sys.modules:
        import asynctrace as _at

        _at.enable()
    else:
        from asynctrace import _lazy

        _lazy.install()
except BaseException:  # noqa: BLE001 - the host program must start regardless
    import os as _os

    if _os.environ.get("ASYNCTRACE_DEBUG"):
        import traceback as _tb

        _tb.print_exc()
