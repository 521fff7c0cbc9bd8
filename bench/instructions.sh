#!/usr/bin/env bash
# Instructions per request of one proxy, counted by callgrind: robust where CPU time is not (a
# loaded or shared machine). Used for docs/performance.md, "Forwarding in instructions".
#
#   bench/instructions.sh NAME URL SECONDS CONNECTIONS COMMAND...
#   bench/instructions.sh bare http://127.0.0.1:19579/item 10 4 \
#       target/release/examples/bare_pingora 127.0.0.1:19579 127.0.0.1:19001
#
# COMMAND runs under `valgrind --tool=callgrind` on CPU 1 (PROXY_CPU) with instrumentation off;
# after a 2 s warm-up with wrk (on CPU 0, LOADGEN_CPU) it is turned on for one wrk run of
# SECONDS at CONNECTIONS, then off, and the total is divided by the requests wrk completed. The
# upstream (e.g. the harness's origin A, `bench/harness/run.sh --serve`) must already run.
# Environment: PRELOAD (an LD_PRELOAD for COMMAND, e.g. a malloc), RUST_LOG (default warn).
# The profile stays in /tmp/instructions-NAME.<pid>.1 for `callgrind_annotate --inclusive=yes`.
set -euo pipefail
name=$1 url=$2 seconds=$3 connections=$4
shift 4
out=/tmp/instructions-$name
rm -f "$out".*
export RUST_LOG="${RUST_LOG:-warn}"
taskset -c "${PROXY_CPU:-1}" env ${PRELOAD:+LD_PRELOAD=$PRELOAD} valgrind --tool=callgrind \
  --instr-atstart=no --fair-sched=yes --callgrind-out-file="$out.%p" "$@" >"$out.log" 2>&1 &
proxy=$!
trap 'kill -9 "$proxy" 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do curl -sf -o /dev/null "$url" && break; sleep 0.5; done
taskset -c "${LOADGEN_CPU:-0}" wrk -t1 -c"$connections" -d2s "$url" >/dev/null
callgrind_control -i on "$proxy" >/dev/null 2>&1
taskset -c "${LOADGEN_CPU:-0}" wrk -t1 -c"$connections" -d"${seconds}s" "$url" >"$out.wrk"
callgrind_control -i off "$proxy" >/dev/null 2>&1
callgrind_control -d "$proxy" >/dev/null 2>&1
requests=$(awk '/requests in/ {print $1}' "$out.wrk")
errors=$(awk '/Non-2xx|Socket errors/ {print}' "$out.wrk")
total=$(callgrind_annotate "$out.$proxy.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$name: $requests requests, $total instructions, $((total / requests)) per request ${errors:+($errors)}"
