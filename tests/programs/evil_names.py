# SPDX-License-Identifier: Apache-2.0
# Untrusted strings: task names and file names with newlines, NUL bytes,
# terminal escapes, non-ASCII text, and a 100,000-character name. The tool
# must print them escaped (never raw) and mark the truncated one.
import asyncio

import _truth

NAMES = [
    "line1\nline2",
    "esc\x1b[2Jclear\x1b[31m",
    "nul\x00byte",
    "tab\tand\\backslash",
    "ünï-名前",
    "a" + "é" * 40,  # 81 bytes: the kernel keeps 64, cutting an 'é' in half
    "x" * 100_000,
]

SRC = """
async def evil(stop):
    await stop.wait()
    return 1
"""
ns = {}
exec(compile(SRC, "/tmp/evil\n\x1b[31mfile.py", "exec"), ns)


async def body(stop):
    tasks = [asyncio.create_task(ns["evil"](stop), name=n) for n in NAMES]
    res = await asyncio.gather(*tasks)
    _truth.log("names:", [len(t.get_name()) for t in tasks], sum(res))
    return len(res)


_truth.run(body)
