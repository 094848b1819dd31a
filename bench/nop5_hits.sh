#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Cost of one uprobe hit on a 1-byte nop probe site (int3 trap) and on a
# 5-byte nop one (a call once the kernel optimized it, Linux >= 6.17):
# tests/programs/redzone_{int3,safe} run HITS hits without a tracer (the
# probe is skipped: the loop alone) and under bpftrace counting them; the
# difference is the hit. Median of REPS runs each. Root (bpftrace).
# usage: bench/nop5_hits.sh [BUILD_DIR] [HITS] [REPS]     (docs/performance.md)
set -euo pipefail
build=${1:-build}
hits=${2:-1000000}
reps=${3:-5}

# ns_per_hit of one run of redzone_$1, under bpftrace if $2 = traced.
one() {
	local bin=$build/tests/programs/redzone_$1 out
	if [ "$2" != traced ]; then
		"$bin" "$hits" | awk '/^damaged/ { print $6 }'
		return
	fi
	local dir
	dir=$(mktemp -d)
	mkfifo "$dir/app" "$dir/bt"
	"$bin" "$hits" --wait >"$dir/app" &
	local app=$!
	exec 3<"$dir/app"
	read -r -u 3 _ # site line
	read -r -u 3 _ # ready
	bpftrace -p "$app" -e "BEGIN { printf(\"attached\\n\"); }
		usdt:$bin:asynctrace:task__resume { @n = count(); }" >"$dir/bt" 2>/dev/null &
	local bt=$!
	exec 4<"$dir/bt"
	grep -q -m1 attached <&4
	kill -USR1 "$app"
	read -r -u 3 out && echo "$out" | awk '{ print $6 }'
	read -r -u 3 _ # done
	kill -INT "$bt"
	kill -USR1 "$app"
	wait "$app" "$bt" || true
	exec 3<&- 4<&-
	rm -rf "$dir"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

printf '%-6s %12s %12s %12s\n' site 'loop ns' 'traced ns' 'hit ns'
for v in int3 safe; do
	plain=$(for _ in $(seq "$reps"); do one "$v" plain; done | median)
	traced=$(for _ in $(seq "$reps"); do one "$v" traced; done | median)
	printf '%-6s %12s %12s %12.0f\n' "$([ $v = int3 ] && echo nop1 || echo nop5)" "$plain" "$traced" \
		"$(echo "$traced - $plain" | bc)"
done
