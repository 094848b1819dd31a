# SPDX-License-Identifier: Apache-2.0
"""Imported by sitecustomize.py / asynctrace.pth: enable tracing, never fail the host."""
try:
    import asynctrace as _at

    _at.enable()
except BaseException:  # noqa: BLE001 - the host program must start regardless
    import os as _os

    if _os.environ.get("ASYNCTRACE_DEBUG"):
        import traceback as _tb

        _tb.print_exc()
