# SPDX-License-Identifier: Apache-2.0
# A coroutine defined in a module imported from a file whose path holds a
# newline, an ESC (terminal control) and a BEL, in a temporary directory:
# co_filename is that path. One task is named after the path too, so that ps
# (which shows names, not files) carries it as well. argv[1]: truth JSON.
import asyncio
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

import _truth

top = tempfile.mkdtemp(prefix="asynctrace-evil-module-")
atexit.register(shutil.rmtree, top, True)
moddir = os.path.join(top, "dir\nwith\x1b[31mred")
os.mkdir(moddir)
path = os.path.join(moddir, "mod\x1b]0;title\x07\n.py")
with open(path, "w") as f:
    f.write("async def evil_coro(stop):\n    await stop.wait()\n    return 7\n")
spec = importlib.util.spec_from_file_location("evil_mod", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)


async def body(stop):
    tasks = [asyncio.create_task(mod.evil_coro(stop), name=n) for n in ("evil-file-task", path)]
    res = await asyncio.gather(*tasks)
    _truth.log("file:", mod.evil_coro.__code__.co_filename == path, sum(res))
    return len(res)


_truth.run(body)
