#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A stand-in for a Pyroscope ingest endpoint (tests/e2e/agent_test.cpp).

  fake_ingest.py OUTDIR

Listens on a free loopback port and prints "PORT <n>". Every POST is answered
200 and saved as OUTDIR/<n>.target (path and query), <n>.ctype (its
Content-Type) and, for multipart/form-data, one file per part named
<n>.part.<field name>. Anything else: 404.
"""
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUT = sys.argv[1]
count = 0


def parts(body, ctype):
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not m:
        return {}
    sep = b"--" + m.group(1).encode()
    out = {}
    for chunk in body.split(sep)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            out[name.group(1).decode()] = data[:-2] if data.endswith(b"\r\n") else data
    return out


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        ctype = self.headers.get("Content-Type", "")
        count += 1
        base = os.path.join(OUT, str(count))
        for field, data in parts(body, ctype).items():
            with open(f"{base}.part.{field}", "wb") as f:
                f.write(data)
        with open(f"{base}.ctype", "w") as f:
            f.write(ctype)
        # Written last: a reader that sees .target sees the rest.
        with open(f"{base}.target.tmp", "w") as f:
            f.write(self.path)
        os.rename(f"{base}.target.tmp", f"{base}.target")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
