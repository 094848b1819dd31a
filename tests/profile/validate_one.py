#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Validates one recorded profile file (tests/e2e/timing_test.cpp): the
format's own checker says yes, and it mentions every name given.

  validate_one.py FORMAT PATH THIRD_PARTY_DIR NAME...

speedscope: speedscope's JSON schema, balanced events; pprof: protoc decodes
it against profile.proto, with task_name labels; svg/html: well-formed XML
(svg) or an <svg> inside (html); folded: every line "stack weight".
Prints one line; exit 0 if valid.
"""
import gzip
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET


def fail(msg):
    print(f"invalid: {msg}")
    sys.exit(1)


def main():
    fmt, path, third_party, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    raw = open(path, "rb").read()
    if not raw:
        fail("empty file")
    if fmt == "speedscope":
        import jsonschema
        schema = json.load(open(os.path.join(third_party, "speedscope", "file-format-schema.json")))
        doc = json.loads(raw)
        errs = [e.message for e in jsonschema.validators.validator_for(schema)(schema).iter_errors(doc)]
        if errs:
            fail("; ".join(errs[:5]))
        for prof in doc["profiles"]:
            depth = 0
            for ev in prof.get("events", []):
                depth += 1 if ev["type"] == "O" else -1
                if depth < 0:
                    fail(f"unbalanced events in {prof['name']}")
            if depth:
                fail(f"frames left open in {prof['name']}")
        text = json.dumps(doc)
    elif fmt == "pprof":
        proto_dir = os.path.join(third_party, "pprof")
        r = subprocess.run(["protoc", f"--proto_path={proto_dir}", "--decode=perftools.profiles.Profile",
                            os.path.join(proto_dir, "profile.proto")], input=gzip.decompress(raw),
                           capture_output=True, timeout=60)
        if r.returncode or r.stderr.strip():
            fail(f"protoc: {r.stderr.decode(errors='replace')}")
        text = r.stdout.decode(errors="replace")
        if "task_name" not in text or "coroutine" not in text:
            fail("no task_name/coroutine labels")
    elif fmt in ("svg", "html"):
        text = raw.decode("utf-8")
        if fmt == "svg":
            ET.fromstring(raw)
        elif "<svg" not in text:
            fail("no <svg> in the page")
    elif fmt == "folded":
        text = raw.decode("utf-8", errors="replace")
        for line in text.splitlines():
            stack, _, weight = line.rpartition(" ")
            if not stack or not weight.isdigit():
                fail(f"bad line {line!r}")
    else:
        fail(f"unknown format {fmt}")
    missing = [n for n in names if n not in text]
    if missing:
        fail(f"names missing: {missing}")
    print(f"valid {fmt}: {len(raw)} bytes")


if __name__ == "__main__":
    main()
