#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpora of tests/fuzz (tests/fuzz/corpus/<target>/).

    sudo tests/fuzz/make_seeds.py capture BUILD_DIR   # real maps + synthetic seeds
    tests/fuzz/make_seeds.py synthetic                # synthetic seeds only

`capture` runs some tests/programs under `asynctrace run`, holds each with
`asynctrace attach` (maps pinned), dumps the pinned tasks/codes/procs maps with
bpftool and turns the raw records into:
  fuzz_snapshot/real-<prog>   the bytes read_maps() received (fuzz_snapshot.cpp's format)
  fuzz_stacks/real-<prog>     the same graph in fuzz_stacks.cpp's op stream (ids renumbered)
  fuzz_escape/real-<sha1>     the strings of the traced process (task names, qualnames, files)
`synthetic` adds hand-made shapes: the unit tests' TaskGroup program, await
cycles, self edges, shared awaiters, huge lengths and counts, bulk chains,
fans and ladders, and hostile strings. Both formats are documented in the
fuzz targets' headers; the encoders below must match them.
"""
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CORPUS = HERE / "corpus"

# bpf/abi.h
NAME_LEN, QUALNAME_LEN, FILENAME_LEN, MAX_FRAMES, MAX_AWAITERS = 64, 96, 160, 32, 4
TASK_SIZE = 120 + NAME_LEN + 16 * MAX_FRAMES
CODE_SIZE = 16 + QUALNAME_LEN + FILENAME_LEN
PROC_SIZE = 64


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# ---- raw records (fuzz_snapshot) -------------------------------------------------

def parse_task(v):
    (task_id, parent_id, loop_id, coro_code_id, create_ns, seq, awaiting_id) = struct.unpack_from("<7Q", v, 0)
    awaited_by = struct.unpack_from("<4Q", v, 56)
    kinds = struct.unpack_from("<4B", v, 88)
    tid, state, awaiting_kind, name_len, nframes, flags, _pad = struct.unpack_from("<7I", v, 92)
    name = v[120:120 + min(NAME_LEN, name_len)]
    frames = [struct.unpack_from("<QII", v, 120 + NAME_LEN + 16 * i) for i in range(min(nframes, MAX_FRAMES))]
    return dict(id=task_id, parent=parent_id, loop=loop_id, coro=coro_code_id, seq=seq,
                awaiting_id=awaiting_id, awaited_by=list(zip(awaited_by, kinds)), tid=tid,
                state=state, awaiting_kind=awaiting_kind, name_len=name_len, name=name,
                nframes=nframes, flags=flags, frames=frames)


def parse_code(v):
    qualname_len, filename_len, firstlineno, _ = struct.unpack_from("<4I", v, 0)
    return dict(qualname=v[16:16 + min(QUALNAME_LEN, qualname_len)], qualname_len=qualname_len,
                filename=v[16 + QUALNAME_LEN:16 + QUALNAME_LEN + min(FILENAME_LEN, filename_len)],
                filename_len=filename_len, firstlineno=firstlineno)


def snapshot_seed(pid, tasks, codes, proc):
    """fuzz_snapshot.cpp: u32 pid, then tag 0 task / 1 code / 2 proc records."""
    out = bytearray(struct.pack("<I", pid))
    for k, v in tasks:
        out += b"\x00" + k + v
    for k, v in codes:
        out += b"\x01" + k + v
    if proc is not None:
        out += b"\x02" + proc
    return bytes(out)


# ---- op stream (fuzz_stacks) -----------------------------------------------------

class Stacks:
    """Encoder for fuzz_stacks.cpp's op stream (integers little endian, read front to back)."""

    def __init__(self):
        self.b = bytearray()

    def u8(self, v):
        self.b += struct.pack("<B", v & 0xFF)

    def u32(self, v):
        self.b += struct.pack("<I", v & 0xFFFFFFFF)

    def u64(self, v):
        self.b += struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)

    def id(self, v):  # pick_id: 0..23 small, 0x7f0000000000 + 0..15, else raw
        if 0 <= v < 24:
            self.u8(v)
        elif 0 <= v - 0x7F0000000000 < 16:
            self.u8(0xE0 + v - 0x7F0000000000)
        else:
            self.u8(0xF0)
            self.u64(v)

    def code(self, v):  # pick_code: 0..11 small, else raw
        if 0 <= v < 12:
            self.u8(v)
        else:
            self.u8(0xF0)
            self.u64(v)

    def small32(self, v, mod):
        if 0 <= v < mod and v < 0xF0:
            self.u8(v)
        else:
            self.u8(0xF0)
            self.u32(v)

    def string(self, s, cap, length=None):
        length = len(s) if length is None else length
        self.small32(length, min(cap + 8, 255))
        self.b += s[:min(length, cap)]

    def task(self, id, name=b"", seq=0, parent=0, loop=0, coro=0, tid=0, state=2, awaiting_kind=0,
             awaiting_id=0, awaited_by=(), flags=0, frames=(), name_len=None, nframes=None,
             key_id=None, foreign=False):
        self.u8(0)
        self.id(id)
        self.id(parent)
        self.id(loop)
        self.code(coro)
        if seq < 0xF0:
            self.u8(seq)
        else:
            self.u8(0xF0)
            self.u64(seq)
        self.small32(tid, 3)
        self.small32(state, 4)
        self.small32(awaiting_kind, 6)
        self.id(awaiting_id)
        mask = sum(1 << i for i, _ in enumerate(awaited_by[:MAX_AWAITERS]))
        self.u8(mask)
        for aid, kind in awaited_by[:MAX_AWAITERS]:
            self.id(aid)
            self.u8(kind)
        self.u8(flags)
        self.string(name, NAME_LEN, name_len)
        frames = list(frames)[:MAX_FRAMES]
        if nframes is None:
            self.u8(len(frames))
        else:  # a claimed count of its own: 0xF8 fills 0xF8 % 40 = 8 frames
            self.u8(0xF8)
            self.u32(nframes)
            frames = (frames + [(0, 0, 0)] * 8)[:8]
        for code, line, fflags in frames:
            self.code(code)
            self.small32(line, 200)
            self.u8(fflags)
        if key_id is None and not foreign:
            self.u8(0)
        else:
            self.u8(0xFF if foreign else 0xF0)
            self.id(id if key_id is None else key_id)

    def code_rec(self, code_id, qualname, filename, firstlineno=1, qualname_len=None, filename_len=None):
        self.u8(4)
        self.code(code_id)
        self.small32(firstlineno, 200)
        self.string(qualname, QUALNAME_LEN, qualname_len)
        self.string(filename, FILENAME_LEN, filename_len)

    def proc(self, *counters):
        self.u8(6)
        for c in (list(counters) + [0] * 8)[:8]:
            self.u64(c)

    def bulk(self, n, shape, nframes, base_id=1, code=1):
        self.u8(7)
        self.u32(n - 1)
        self.u8(shape)
        self.u8(nframes)
        self.id(base_id)
        self.code(code)


def stacks_from_real(tasks, codes):
    """The captured graph as an op stream: task ids renumbered 1.., code ids 1..11."""
    tids = {}
    ids = {t["id"]: i + 1 for i, t in enumerate(sorted(tasks, key=lambda t: t["seq"]))}
    if len(ids) > 23:
        return None
    cids = {}
    for c in codes:
        cids.setdefault(c, len(cids) + 1)
    if len(cids) > 11:
        return None
    s = Stacks()
    for cid, c in codes.items():
        s.code_rec(cids[cid], c["qualname"], c["filename"], min(c["firstlineno"], 199),
                   c["qualname_len"], c["filename_len"])
    for t in tasks:
        tid = tids.setdefault(t["tid"], len(tids))
        s.task(ids[t["id"]], t["name"], seq=ids[t["id"]], parent=ids.get(t["parent"], 0),
               loop=1, coro=cids.get(t["coro"], 0), tid=tid % 3, state=t["state"],
               awaiting_kind=t["awaiting_kind"], awaiting_id=ids.get(t["awaiting_id"], 0),
               awaited_by=[(ids[a], k) for a, k in t["awaited_by"] if a in ids],
               flags=t["flags"], name_len=t["name_len"],
               frames=[(cids.get(c, 0), min(line, 199), fl) for c, line, fl in t["frames"]])
    return bytes(s.b)


# ---- capture -----------------------------------------------------------------------

PROGRAMS = ["gather_nested", "taskgroup_nested", "evil_names", "shield_cancel", "await_tasks",
            "semaphore", "threads_loops"]


def bpftool_dump(path):
    out = subprocess.run(["bpftool", "map", "dump", "pinned", path, "-j"], check=True,
                         capture_output=True, text=True).stdout
    return [(bytes(int(x, 16) for x in e["key"]), bytes(int(x, 16) for x in e["value"]))
            for e in json.loads(out)]


def capture(build):
    asynctrace = Path(build) / "asynctrace"
    for prog in PROGRAMS:
        truth = f"/tmp/asynctrace-seed-{prog}.json"
        p = subprocess.Popen([str(asynctrace), "run", "--", "python3.11",
                              str(REPO / "tests/programs" / f"{prog}.py"), truth],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = ""
            for _ in range(20):  # a program may print its transcript first
                line = p.stdout.readline()
                if not line or "READY" in line:
                    break
            if "READY" not in line:
                print(f"{prog}: no READY ({line!r}), skipped", file=sys.stderr)
                continue
            pin = Path(f"/sys/fs/bpf/asynctrace/{p.pid}")
            a = subprocess.Popen([str(asynctrace), "attach", "-p", str(p.pid)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(100):
                    if (pin / "procs").exists():
                        break
                    time.sleep(0.05)
                time.sleep(0.3)
                tasks = bpftool_dump(str(pin / "tasks"))
                codes = bpftool_dump(str(pin / "codes"))
                procs = bpftool_dump(str(pin / "procs"))
            finally:
                a.send_signal(signal.SIGINT)
                a.wait(timeout=10)
        finally:
            p.send_signal(signal.SIGUSR1)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        pid = p.pid
        tasks = [(k, v) for k, v in tasks if struct.unpack_from("<I", k)[0] == pid]
        codes = [(k, v) for k, v in codes if struct.unpack_from("<I", k)[0] == pid]
        proc = next((v for k, v in procs if struct.unpack_from("<I", k)[0] == pid), None)
        write("fuzz_snapshot", f"real-{prog}", snapshot_seed(pid, tasks, codes, proc))
        ptasks = [parse_task(v) for _, v in tasks]
        pcodes = {struct.unpack_from("<Q", k, 8)[0]: parse_code(v) for k, v in codes}
        st = stacks_from_real(ptasks, pcodes)
        if st:
            write("fuzz_stacks", f"real-{prog}", st)
        strings = {t["name"] for t in ptasks} | {c["qualname"] for c in pcodes.values()} | \
                  {c["filename"] for c in pcodes.values()}
        for s in strings:
            write("fuzz_escape", "real-" + hashlib.sha1(s).hexdigest()[:12], s)
        print(f"{prog}: {len(tasks)} tasks, {len(codes)} codes", file=sys.stderr)


# ---- synthetic -----------------------------------------------------------------

HOSTILE = [b"", b"Task-1", b"worker-0 /srv/app.py:30", "t\u00e2che-\u00e9t\u00e9 \u2713".encode(),
           b"\x1b[2J\x1b[31mred\x1b[0m", b"a\nb\tc\rd\x00e\x7f", b"\xc2\x9b6n", b"back\\slash\\x41",
           b"\xff\xfe\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80", b"\xe2\x82", b"\xf0\x9f\x98\x80\xf0\x9f",
           b"\\u009b\\x1b", "\u202eevil\u2066".encode(), b"x" * 62 + "\u00e9".encode() + b"\xc3"]


def synthetic():
    # unit test shape (views_test.cpp): main -> TaskGroup -> two sleeping workers
    s = Stacks()
    for cid, qn, fn in [(1, b"main", b"/srv/app/demo.py"),
                        (2, b"TaskGroup.__aexit__", b"/usr/lib/python3.14/asyncio/taskgroups.py"),
                        (3, b"TaskGroup._aexit", b"/usr/lib/python3.14/asyncio/taskgroups.py"),
                        (4, b"worker", b"/srv/app/demo.py"), (5, b"sleep", b"/usr/lib/python3.14/asyncio/tasks.py")]:
        s.code_rec(cid, qn, fn)
    s.task(3, b"worker-1", seq=3, awaited_by=[(1, 2)], frames=[(5, 105, 0), (4, 30, 0)])
    s.task(1, b"Task-1", seq=1, awaiting_kind=2, frames=[(3, 121, 0), (2, 72, 0), (1, 55, 0)])
    s.task(2, b"worker-0", seq=2, awaited_by=[(1, 2)], frames=[(5, 105, 0), (4, 30, 0)])
    s.proc(1, 3, 42)
    write("fuzz_stacks", "taskgroup", bytes(s.b))

    # await cycle, self edge, shared awaiter, awaiting a missing task
    s = Stacks()
    s.code_rec(1, b"f", b"/c.py")
    s.task(1, b"A", seq=1, awaiting_kind=1, awaiting_id=2, frames=[(1, 1, 0)])
    s.task(2, b"B", seq=2, awaiting_kind=1, awaiting_id=1, frames=[(1, 2, 0)])
    s.task(3, b"self", seq=3, awaiting_kind=1, awaiting_id=3, awaited_by=[(3, 0)], frames=[(1, 3, 0)])
    s.task(4, b"C", seq=4, awaiting_kind=1, awaiting_id=6, frames=[(1, 4, 0)])
    s.task(5, b"D", seq=5, awaiting_kind=1, awaiting_id=6, frames=[(1, 4, 0)])
    s.task(6, b"shared", seq=6, awaited_by=[(4, 1), (5, 1), (7, 3), (20, 2)], frames=[(2, 9, 0)])
    s.task(7, b"missing", seq=7, awaiting_kind=1, awaiting_id=23)
    write("fuzz_stacks", "cycles", bytes(s.b))

    # huge lengths and counts, truncation flags, unnamed codes, odd states and kinds
    s = Stacks()
    s.code_rec(1, b"q" * 96, b"/f" * 80, 199, qualname_len=0xFFFFFFFF, filename_len=1 << 20)
    s.task(1, b"n" * 64, seq=0xFFFFFFFFFFFFFFFF, name_len=0xFFFFFFFF, nframes=0xFFFFFFFF,
           frames=[(1, 0xFFFFFFFF, 1)] * 4, flags=0xF, state=0xFFFFFFFF, awaiting_kind=0xFFFFFFFF,
           tid=0xFFFFFFFF, awaiting_id=0xFFFFFFFFFFFFFFFF, awaited_by=[(0xFFFFFFFFFFFFFFFF, 255)])
    s.task(2, b"\xc3", seq=1, name_len=65, frames=[(0xFFFFFFFFFFFFFFFF, 5, 2), (11, 0, 0)],
           key_id=9, parent=0x7F0000000001)
    s.task(3, b"foreign", seq=2, foreign=True)
    s.proc(*([0xFFFFFFFFFFFFFFFF] * 8))
    write("fuzz_stacks", "huge", bytes(s.b))

    for shape, name in enumerate(["chain", "gather-chain", "fan", "ladder"]):
        s = Stacks()
        s.code_rec(1, b"step", b"/bulk.py")
        s.bulk(80, shape, 32 if shape in (0, 3) else 2)
        write("fuzz_stacks", f"bulk-{name}", bytes(s.b))

    for i, h in enumerate(HOSTILE):
        write("fuzz_escape", f"hostile-{i}", h)
    s = Stacks()
    for i, h in enumerate(HOSTILE[:11]):
        s.code_rec(i, h[:96], h[::-1][:160])
        s.task(i + 1, h[:64], seq=i, frames=[(i, i, 0)], awaiting_kind=1, awaiting_id=i)
    write("fuzz_stacks", "hostile-names", bytes(s.b))

    # fuzz_snapshot: the same TaskGroup shape as raw records, plus a truncated tail
    pid = 99
    def task_rec(tid_, name, seq, frames, awaited_by=()):
        v = bytearray(TASK_SIZE)
        struct.pack_into("<7Q", v, 0, tid_, 0, 0x7F00, 0, 0, seq, 0)
        for i, a in enumerate(awaited_by):
            struct.pack_into("<Q", v, 56 + 8 * i, a)
            v[88 + i] = 2
        struct.pack_into("<7I", v, 92, 4242, 2, 2, len(name), len(frames), 0, 0)
        v[120:120 + len(name)] = name
        for i, (c, line) in enumerate(frames):
            struct.pack_into("<QII", v, 120 + NAME_LEN + 16 * i, c, line, 0)
        return struct.pack("<IIQ", pid, 0, tid_), bytes(v)

    def code_rec(cid, qn, fn):
        v = bytearray(CODE_SIZE)
        struct.pack_into("<4I", v, 0, len(qn), len(fn), 1, 0)
        v[16:16 + len(qn)] = qn
        v[16 + QUALNAME_LEN:16 + QUALNAME_LEN + len(fn)] = fn
        return struct.pack("<IIQ", pid, 0, cid), bytes(v)

    tasks = [task_rec(0x300, b"worker-1", 3, [(5, 705), (4, 30)], [0x100]),
             task_rec(0x100, b"Task-1", 1, [(3, 121), (2, 72), (1, 55)]),
             task_rec(0x200, b"worker-0", 2, [(5, 705), (4, 30)], [0x100])]
    codes = [code_rec(1, b"main", b"/srv/app/demo.py"), code_rec(4, b"worker", b"/srv/app/demo.py"),
             code_rec(5, b"sleep", b"/usr/lib/python3.14/asyncio/tasks.py")]
    proc = struct.pack("<8Q", 1, 3, 42, 0, 0, 0, 0, 4)
    write("fuzz_snapshot", "taskgroup", snapshot_seed(pid, tasks, codes, proc))
    write("fuzz_snapshot", "truncated", snapshot_seed(pid, tasks, codes, None)[:-100])
    elf_seeds()


# ---- ELF files (fuzz_elf_notes) --------------------------------------------------

def elf_file(notes, base_addr=0x4000, overlap=0, phnum=1):
    """A minimal ELF64 LE shared object: one PT_LOAD (r-x), sections .shstrtab,
    .note.stapsdt (the `notes`: (pc, base, sema, provider, name, args)) and
    .stapsdt.base; `overlap` more .note.stapsdt headers over the same bytes."""
    shstr = b"\0.shstrtab\0.note.stapsdt\0.stapsdt.base\0"
    body = b""
    for pc, base, sema, prov, name, args in notes:
        desc = struct.pack("<3Q", pc, base, sema) + prov + b"\0" + name + b"\0" + args + b"\0"
        body += struct.pack("<3I", 8, len(desc), 3) + b"stapsdt\0" + desc + b"\0" * (-len(desc) % 4)
    eh_size, ph_size, sh_size = 64, 56, 64
    ph_off = eh_size
    shstr_off = ph_off + ph_size * phnum
    notes_off = shstr_off + len(shstr)
    sh_off = notes_off + len(body)
    sh_off += -sh_off % 8
    sections = [
        struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 25, 1, 2, base_addr, 0, 1, 0, 0, 1, 0),
    ] + [struct.pack("<IIQQQQIIQQ", 11, 7, 0, 0, notes_off, len(body), 0, 0, 4, 0)] * (1 + overlap)
    eh = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    eh += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, ph_off, sh_off, 0, eh_size, ph_size, phnum, sh_size,
                      len(sections), 1)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, 0x10000, 0x10000, 0x1000) * phnum
    out = eh + ph + shstr + body
    out += b"\0" * (sh_off - len(out))
    return out + b"".join(sections)


def elf_seeds():
    probes = [(0x1000 + i * 16, 0x4000, 0x2000 if i == 0 else 0, b"asynctrace", name, args)
              for i, (name, args) in enumerate([(b"replay__end", b"8@%rdi"), (b"task__create", b"8@%rdi -8@-24(%rbp)"),
                                                 (b"timing__on", b":")])]
    write("fuzz_elf_notes", "asynctrace", elf_file(probes))
    write("fuzz_elf_notes", "other-provider", elf_file([(0x1000, 0, 0, b"libc", b"setjmp", b"8@%rdi")]))
    write("fuzz_elf_notes", "overlapping-sections", elf_file(probes, overlap=6))
    write("fuzz_elf_notes", "malformed-note", elf_file([(0x1000, 0, 0, b"asynctrace", b"", b"")])[:-70])
    write("fuzz_elf_notes", "truncated", elf_file(probes)[:200])


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "synthetic":
        synthetic()
    elif len(sys.argv) == 3 and sys.argv[1] == "capture":
        synthetic()
        capture(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
