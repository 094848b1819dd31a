# SPDX-License-Identifier: Apache-2.0
# Put first on PYTHONPATH by `asynctrace run`: enables asynctrace, then runs the
# sitecustomize this one shadows (Debian ships one), as Python would have.
import os as _os
import sys as _sys

# The import system's own modules, always loaded: importing the importlib
# package would add a dozen modules to every Python we start.
_m = _sys.modules["_frozen_importlib_external"]
_u = _sys.modules["_frozen_importlib"]

try:
    import asynctrace._autoload  # noqa: F401  (never raises)
except BaseException:
    pass


def _chain():
    here = _os.path.dirname(_os.path.abspath(__file__))
    rest = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != here]
    spec = _m.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    mod = _u.module_from_spec(spec)
    _sys.modules["sitecustomize"] = mod
    spec.loader.exec_module(mod)


_chain()
del _chain
