#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks asynctrace's profile exports with the tools that read them.

One check per run, each a ctest test (tests/CMakeLists.txt, label unit: no
root, no kernel):

  speedscope_schema   the speedscope files validate against speedscope's own
                      JSON schema (committed copy: tests/third_party/speedscope)
  pprof_protoc        protoc decodes the gunzipped pprof files against pprof's
                      profile.proto (tests/third_party/pprof) and they hold the
                      expected samples, values and labels
  flamegraph_browser  headless Chromium renders the SVG and HTML flame graphs:
                      the frames are there, a click on a frame zooms it to the
                      full width, reset and search work, no script errors

Inputs come from profile_write_samples (tests/profile/write_samples.cpp), the
profile of tests/profile/sample_profile.h. A missing tool is a failure, never
a skip: scripts/deps installs them all.
"""
import argparse
import copy
import gzip
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

FULL_WIDTH = 1180.0  # export_flamegraph.cpp: kWidth - 2 * kPad
HOSTILE_TASK_ESCAPED = "evil;task\\nname\\x1b[31m \"q\" <b>&amp;'\uffff"


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def need_tool(*names):
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    raise CheckFailed(f"none of {', '.join(names)} found in PATH: run scripts/deps")


def write_samples(binary, work_dir):
    if os.path.isdir(work_dir):
        shutil.rmtree(work_dir)
    os.makedirs(work_dir)
    subprocess.run([binary, work_dir], check=True, timeout=60)
    return work_dir


# --- speedscope ------------------------------------------------------------

def check_speedscope(d, third_party):
    try:
        import jsonschema
    except ImportError as e:
        raise CheckFailed(f"python3-jsonschema missing ({e}): run scripts/deps")
    with open(os.path.join(third_party, "speedscope", "file-format-schema.json")) as f:
        schema = json.load(f)
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)

    def errors(doc):
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(doc)]

    for stem in ("cpu", "wall", "empty"):
        path = os.path.join(d, f"{stem}.speedscope.json")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        errs = errors(doc)
        check(not errs, f"{path} does not match the speedscope schema:\n  " + "\n  ".join(errs))
        frames = doc["shared"]["frames"]
        for prof in doc["profiles"]:
            if prof["type"] == "sampled":
                check(len(prof["samples"]) == len(prof["weights"]), f"{path}: samples != weights")
                for s in prof["samples"]:
                    check(all(0 <= i < len(frames) for i in s), f"{path}: frame index out of range")
                continue
            stack = []
            for ev in prof["events"]:
                check(0 <= ev["frame"] < len(frames), f"{path}: frame index out of range")
                if ev["type"] == "O":
                    stack.append(ev["frame"])
                else:
                    check(stack and stack[-1] == ev["frame"], f"{path}: unbalanced close {ev}")
                    stack.pop()
            check(not stack, f"{path}: {prof['name']} leaves frames open")
        print(f"ok: {path} ({len(frames)} frames, {len(doc['profiles'])} profiles)")

    # The validator must be able to say no, or the checks above prove nothing.
    with open(os.path.join(d, "cpu.speedscope.json"), encoding="utf-8") as f:
        good = json.load(f)
    for mutate in (lambda doc: doc["profiles"][1]["events"][0].update(type="X"),
                   lambda doc: doc["profiles"][0].update(unit="furlongs"),
                   lambda doc: doc.pop("shared")):
        bad = copy.deepcopy(good)
        mutate(bad)
        check(errors(bad), "the schema accepted a broken document: the validator is not working")
    names = [f["name"] for f in good["shared"]["frames"]]
    check("[task] " + HOSTILE_TASK_ESCAPED in names, f"hostile task name not as expected: {names}")
    check(good["profiles"][0]["weights"] == [1500, 3000600, 499, 4000000, 250000],
          f"unexpected weights {good['profiles'][0]['weights']}")


# --- pprof -----------------------------------------------------------------

def parse_textproto(text):
    """protoc --decode's text format, one field per line: a list of (name, value)
    where value is a str (scalars, strings unescaped) or a nested list."""
    root = []
    stack = [root]
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line == "}":
            stack.pop()
            continue
        m = re.fullmatch(r"(\w+) \{", line)
        if m:
            child = []
            stack[-1].append((m.group(1), child))
            stack.append(child)
            continue
        m = re.fullmatch(r"(\w+): (.*)", line)
        check(m is not None, f"unexpected protoc output line: {line!r}")
        value = m.group(2)
        if value.startswith('"'):
            # C escapes of bytes (octal for non-ASCII), back to the UTF-8 string.
            raw = value[1:-1].encode("latin-1").decode("unicode_escape").encode("latin-1")
            value = raw.decode("utf-8")
        stack[-1].append((m.group(1), value))
    check(len(stack) == 1, "unbalanced braces in protoc output")
    return root


def fields(msg, name):
    return [v for k, v in msg if k == name]


def field(msg, name, default="0"):
    vs = fields(msg, name)
    return vs[0] if vs else default


def decode_pprof(protoc, proto_dir, path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    r = subprocess.run([protoc, f"--proto_path={proto_dir}", "--decode=perftools.profiles.Profile",
                        "profile.proto"], input=raw, capture_output=True, timeout=60)
    check(r.returncode == 0, f"protoc failed to decode {path}: {r.stderr.decode(errors='replace')}")
    check(not r.stderr.strip(), f"protoc complained about {path}: {r.stderr.decode(errors='replace')}")
    return raw, parse_textproto(r.stdout.decode("utf-8"))


def check_pprof(d, third_party):
    protoc = need_tool("protoc")
    proto_dir = os.path.join(third_party, "pprof")
    for stem, kind in (("cpu", "cpu"), ("wall", "wall"), ("empty", "cpu")):
        path = os.path.join(d, f"{stem}.pb.gz")
        raw, prof = decode_pprof(protoc, proto_dir, path)
        strings = fields(prof, "string_table")
        check(strings and strings[0] == "", f"{path}: string_table[0] must be empty")
        s = lambda i: strings[int(i)]  # noqa: E731
        types = fields(prof, "sample_type")
        check(len(types) == 1, f"{path}: expected one sample type")
        check((s(field(types[0], "type")), s(field(types[0], "unit"))) == (kind, "nanoseconds"),
              f"{path}: sample type is not ({kind}, nanoseconds)")
        samples = fields(prof, "sample")
        if stem == "empty":
            check(not samples, f"{path}: samples in an empty profile")
            print(f"ok: {path} (empty)")
            continue
        check(field(prof, "duration_nanos") == "10000000", f"{path}: duration_nanos")
        funcs = {field(f, "id"): f for f in fields(prof, "function")}
        locs = {}
        for loc in fields(prof, "location"):
            line = fields(loc, "line")[0]
            fn = funcs[field(line, "function_id")]
            locs[field(loc, "id")] = (s(field(fn, "name")), s(field(fn, "filename")),
                                      int(field(line, "line")))
        got = []
        for smp in samples:
            stack = [locs[i][0] for i in fields(smp, "location_id")]  # leaf first
            labels = {s(field(lb, "key")): s(field(lb, "str", "0")) for lb in fields(smp, "label")}
            got.append((stack, [int(v) for v in fields(smp, "value")], labels))
        expected = [
            (["main", "[task] main"], [1500], {"task_name": "main", "coroutine": "main"}),
            (["crunch", "worker", "[task] worker-1", "main", "[task] main"], [3000600],
             {"task_name": "worker-1", "coroutine": "worker"}),
            (["worker", "[task] worker-2", "main", "[task] main"], [499],
             {"task_name": "worker-2", "coroutine": "worker"}),
            (["[awaiting asyncio.sleep]", "worker", "[task] worker-2", "main", "[task] main"],
             [4000000], {"task_name": "worker-2", "coroutine": "worker"}),
            (["co;ro<x>\\x01", "[task] " + HOSTILE_TASK_ESCAPED], [250000],
             {"task_name": HOSTILE_TASK_ESCAPED, "coroutine": "co;ro<x>\\x01"}),
        ]
        check(got == expected, f"{path}: samples differ:\n got {got}\nwant {expected}")
        check(("crunch", "/srv/lib.py", 5) in locs.values(), f"{path}: crunch's file and line")
        print(f"ok: {path} ({len(samples)} samples, {len(locs)} locations)")

        # protoc must reject a damaged file, or its silence above proves nothing.
        bad = os.path.join(d, f"{stem}.truncated.pb")
        with open(bad, "wb") as f:
            f.write(raw[: len(raw) - 7])
        r = subprocess.run([protoc, f"--proto_path={proto_dir}",
                            "--decode=perftools.profiles.Profile", "profile.proto"],
                           stdin=open(bad, "rb"), capture_output=True, timeout=60)
        check(r.returncode != 0, "protoc decoded a truncated profile: the check is not working")


# --- flame graphs in a browser -----------------------------------------------

# Runs before the page's own script: any error it throws is recorded.
PROBE_HEAD = """
window.__atErrors = [];
window.addEventListener("error", function (e) { window.__atErrors.push(String(e.message)); });
"""

# Runs after the page's script, in the page: measures, clicks, measures again,
# and writes what it saw as JSON into an element the DOM dump carries out.
PROBE_TAIL = r"""
(function () {
  var r = { errors: window.__atErrors, api: typeof window.asynctraceFlame };
  function frames() {
    return Array.prototype.map.call(document.querySelectorAll("g.f"), function (g) {
      return { name: g.querySelector("text").textContent,
               title: g.querySelector("title").textContent,
               width: g.querySelector("rect").getBoundingClientRect().width,
               shown: g.getBoundingClientRect().width > 0 };
    });
  }
  function find(name) {
    return Array.prototype.filter.call(document.querySelectorAll("g.f"), function (g) {
      return g.querySelector("text").textContent === name;
    })[0];
  }
  function click(el) {
    el.dispatchEvent(new MouseEvent("click", { bubbles: true, cancelable: true, view: window }));
  }
  try {
    r.before = frames();
    r.text = document.body ? document.body.textContent.indexOf("No samples") >= 0
                           : document.documentElement.textContent.indexOf("No samples") >= 0;
    var target = find("crunch (/srv/lib.py:5)");
    if (target) {
      click(target.querySelector("rect"));
      r.zoomed = frames();
      click(document.getElementById("reset"));
      r.reset = frames();
      r.hits = window.asynctraceFlame.search("^worker ");
      r.matched = document.getElementById("matched").textContent;
      r.highlighted = document.querySelectorAll("g.f.hit").length;
    }
  } catch (e) {
    r.errors.push("probe: " + e);
  }
  var out = document.createElementNS(document.documentElement.namespaceURI, "%(tag)s");
  out.setAttribute("id", "asynctrace-probe");
  out.textContent = JSON.stringify(r);
  document.documentElement.appendChild(out);
})();
"""


def instrument(path, dest):
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    if path.endswith(".svg"):
        wrap = lambda js: f'<script type="text/ecmascript"><![CDATA[{js}]]></script>\n'  # noqa
        head_at = doc.index(">", doc.index("<svg ")) + 1
        tail_at = doc.rindex("</svg>")
        tail = PROBE_TAIL % {"tag": "text"}
    else:
        wrap = lambda js: f"<script>{js}</script>\n"  # noqa: E731
        head_at = doc.index("<head>") + len("<head>")
        tail_at = doc.rindex("</body>")
        tail = PROBE_TAIL % {"tag": "pre"}
    doc = doc[:head_at] + wrap(PROBE_HEAD) + doc[head_at:tail_at] + wrap(tail) + doc[tail_at:]
    with open(dest, "w", encoding="utf-8") as f:
        f.write(doc)


def run_browser(chromium, page, profile_dir):
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}",
           "--window-size=1280,800", "--dump-dom", "file://" + os.path.abspath(page)]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=90)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"chromium did not finish within 90 s on {page}")
    out = r.stdout.decode("utf-8", errors="replace")
    m = re.search(r'<(?:text|pre) id="asynctrace-probe"[^>]*>(.*?)</(?:text|pre)>', out, re.S)
    check(r.returncode == 0 and m,
          f"chromium gave no probe result for {page} (rc {r.returncode}):\n"
          f"{out[-2000:]}\n{r.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(html.unescape(m.group(1)))


def by_name(frames, name):
    hits = [f for f in frames if f["name"] == name]
    check(len(hits) == 1, f"expected one frame named {name!r}, found {len(hits)}")
    return hits[0]


def close(a, b):
    return abs(a - b) < 0.5


def check_flamegraphs(d, _third_party):
    chromium = need_tool("chromium", "chromium-browser", "google-chrome")
    profile_dir = tempfile.mkdtemp(prefix="asynctrace-chromium-")
    try:
        for stem in ("cpu", "empty"):
            for ext in ("svg", "html"):
                path = os.path.join(d, f"{stem}.{ext}")
                if ext == "svg":
                    ET.parse(path)  # well-formed XML whatever the names held
                page = os.path.join(d, f"{stem}.probe.{ext}")
                instrument(path, page)
                r = run_browser(chromium, page, profile_dir)
                check(not r["errors"], f"{path}: script errors {r['errors']}")
                check(r["api"] == "object", f"{path}: the flame graph script did not run")
                if stem == "empty":
                    check(r["before"] == [] and r["text"], f"{path}: empty graph not as expected")
                    print(f"ok: {path} (empty)")
                    continue
                check_graph(path, r)
    finally:
        shutil.rmtree(profile_dir, ignore_errors=True)


def check_graph(path, r):
    before = r["before"]
    names = sorted(f["name"] for f in before)
    expected = sorted([
        "all", "[task] main", "main (/srv/app.py:10)", "[task] worker-1",
        "worker (/srv/app.py:20)", "crunch (/srv/lib.py:5)", "[task] worker-2",
        "worker (/srv/app.py:20)", "[awaiting asyncio.sleep]",
        # XML has no U+FFFF: the flame graphs spell it out.
        "[task] " + HOSTILE_TASK_ESCAPED.replace("\uffff", "\\u{ffff}"),
        "co;ro<x>\\x01 (/tmp/a;b.py:7)"])
    check(names == expected, f"{path}: frames rendered {names}\nwant {expected}")
    check(all(f["shown"] for f in before), f"{path}: a frame is not displayed")
    check(close(by_name(before, "all")["width"], FULL_WIDTH),
          f"{path}: root width {by_name(before, 'all')['width']}")
    crunch0 = by_name(before, "crunch (/srv/lib.py:5)")
    check(close(crunch0["width"], FULL_WIDTH * 3000600 / 7252599),
          f"{path}: crunch width {crunch0['width']} not proportional to its weight")
    check(crunch0["title"] == "crunch (/srv/lib.py:5) (3.00 ms, 41.37%)",
          f"{path}: tooltip {crunch0['title']!r}")

    zoomed = r["zoomed"]
    crunch = by_name(zoomed, "crunch (/srv/lib.py:5)")
    check(close(crunch["width"], FULL_WIDTH),
          f"{path}: after the click crunch is {crunch['width']} px wide, not {FULL_WIDTH}")
    check(close(by_name(zoomed, "[task] worker-1")["width"], FULL_WIDTH),
          f"{path}: ancestors of the zoomed frame must span the width")
    sleep = by_name(zoomed, "[awaiting asyncio.sleep]")
    check(not sleep["shown"], f"{path}: a frame outside the zoomed one is still shown")

    reset = r["reset"]
    check(all(f["shown"] for f in reset), f"{path}: reset left frames hidden")
    check(close(by_name(reset, "crunch (/srv/lib.py:5)")["width"], crunch0["width"]),
          f"{path}: reset did not restore the widths")

    check(r["hits"] == 2 and r["highlighted"] == 2, f"{path}: search '^worker ' hits {r['hits']}")
    pct = 100 * (3000600 + 4000499) / 7252599
    check(r["matched"] == f"Matched: {pct:.2f}%", f"{path}: matched text {r['matched']!r}")
    print(f"ok: {path} ({len(before)} frames; zoom, reset, search)")


CHECKS = {
    "speedscope_schema": check_speedscope,
    "pprof_protoc": check_pprof,
    "flamegraph_browser": check_flamegraphs,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("check", choices=sorted(CHECKS))
    ap.add_argument("--write-samples", required=True, help="profile_write_samples binary")
    ap.add_argument("--third-party", required=True, help="tests/third_party")
    ap.add_argument("--work-dir", required=True)
    a = ap.parse_args()
    try:
        d = write_samples(a.write_samples, a.work_dir)
        CHECKS[a.check](d, a.third_party)
    except CheckFailed as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    print(f"PASS: {a.check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
