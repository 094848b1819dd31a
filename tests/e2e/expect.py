# SPDX-License-Identifier: Apache-2.0
"""What Python 3.14's `python -m asyncio pstree` / `ps` print for a program's
own ground truth (tests/programs/_truth.py JSON).

An independent oracle for the e2e tests: it follows the algorithm of 3.14's
Lib/asyncio/tools.py (awaiter -> awaiter's frames -> child; leaf tasks get their
own frames; siblings share frame nodes) in Python, over data the traced program
reported itself, so the C++ tool's output can be compared line by line.

usage: expect.py TRUTH.json pstree|ps
"""
import json
import sys


def label(fr):
    if fr["line"] == 0 and fr["file"] == "":
        return fr["function"]
    return f'{fr["function"]} {fr["file"]}:{fr["line"]}'


def escape(s):
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o == 0:
            out.append("\\0")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0x80 <= o <= 0x9F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


NAME_BYTES = 64  # bytes of a task name the kernel keeps (bpf/abi.h AT_NAME_LEN)


def shown_name(name):
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) <= NAME_BYTES:
        return escape(name)
    return escape(raw[:NAME_BYTES].decode("utf-8", "ignore")) + "\u2026"


def pstree(truth):
    tasks = truth["tasks"]
    name = {t["id"]: t["name"] for t in tasks}
    stack = {t["id"]: t["stack"] for t in tasks}
    children, cor = {}, {}
    counter = [0]

    def node(parent, fr):
        key = (parent, label(fr))
        if key not in cor:
            counter[0] += 1
            cor[key] = ("c", counter[0], label(fr))
            children.setdefault(parent, []).append(cor[key])
        return cor[key]

    awaiting, linked = set(), set()
    for t in tasks:
        for a in t["awaited_by"]:
            cur = ("t", a)
            for fr in reversed(stack[a]):
                cur = node(cur, fr)
            kid = ("t", t["id"])
            if (cur, kid) not in linked:  # a set: 3.14's list scan is quadratic in siblings
                linked.add((cur, kid))
                children.setdefault(cur, []).append(kid)
            awaiting.add(a)
    for t in tasks:
        if t["id"] not in awaiting:
            cur = ("t", t["id"])
            for fr in reversed(t["stack"]):
                cur = node(cur, fr)
    kids = {k for v in children.values() for k in v}
    lines = []

    def render(n, prefix, last):
        text = f"(T) {shown_name(name[n[1]])}" if n[0] == "t" else f" {escape(n[2])}"
        lines.append(prefix + ("└── " if last else "├── ") + text)
        ks = children.get(n, [])
        for i, k in enumerate(ks):
            render(k, prefix + ("    " if last else "│   "), i == len(ks) - 1)

    for t in tasks:
        if ("t", t["id"]) not in kids:
            render(("t", t["id"]), "", True)
    return lines


def ps(truth):
    tasks = truth["tasks"]
    byid = {t["id"]: t for t in tasks}

    def chain(st):
        return " -> ".join(label(f).split(" ")[0] for f in st)

    rows = []
    for t in tasks:
        base = [str(t["tid"]), t["id"], shown_name(t["name"]), escape(chain(t["stack"]))]
        if not t["awaited_by"]:
            rows.append(base + ["", "", "0x0"])
        for a in t["awaited_by"]:
            rows.append(base + [escape(chain(byid[a]["stack"])), shown_name(byid[a]["name"]), a])
    out = [f"{'tid':<10} {'task id':<20} {'task name':<20} {'coroutine stack':<50} "
           f"{'awaiter chain':<50} {'awaiter name':<15} {'awaiter id':<15}", "-" * 180]
    for r in rows:
        out.append(f"{r[0]:<10} {r[1]:<20} {r[2]:<20} {r[3]:<50} {r[4]:<50} {r[5]:<15} {r[6]:<15}")
    return out


if __name__ == "__main__":
    truth = json.load(open(sys.argv[1]))
    view = {"pstree": pstree, "ps": ps}[sys.argv[2]]
    sys.stdout.write("".join(line + "\n" for line in view(truth)))
