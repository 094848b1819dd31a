#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Smoke-test the CPython runtime with bpftrace for every interpreter listed in
# BUILD/python/versions.txt (and uvloop on /usr/bin/python3.11 if installed).
# usage: tests/runtime_smoke/run.sh [BUILD_DIR]     (root required)
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
rc=0
while read -r tag py; do
	[ -x "$py" ] || continue
	python3 "$here/smoke.py" "$py" "$build/python/$tag" || rc=1
	if [ "$py" = /usr/bin/python3.11 ] && "$py" -c 'import uvloop' 2>/dev/null; then
		python3 "$here/smoke.py" "$py" "$build/python/$tag" --uvloop || rc=1
	fi
done < "$build/python/versions.txt"
[ $rc = 0 ] && echo "ALL PASSED" || echo "SOME FAILED"
exit $rc
