#!/usr/bin/env bash
# The replay's own throughput: `strangler replay` pinned to CPU 1, two nginx origins (one worker
# each, a fixed 206-byte JSON body from `return 200`) pinned to CPU 0, a generated corpus of GETs.
# Prints the requests (pairs) compared per second of each round, and their median.
#
#   bench/replay.sh                 # 20,000 requests, 3 rounds, --concurrency 32
#   bench/replay.sh -n 50000 -r 5 -c 64 [-b path/to/strangler]
#   bench/replay.sh -d              # the candidate differs in one JSON field on every answer
#
# Every process it starts is stopped by PID on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
requests=20000 rounds=3 concurrency=32 binary="$root/target/release/strangler" differ=0
while getopts "n:r:c:b:d" option; do
  case "$option" in
    n) requests="$OPTARG" ;; r) rounds="$OPTARG" ;; c) concurrency="$OPTARG" ;; b) binary="$OPTARG" ;;
    d) differ=1 ;;
    *) exit 2 ;;
  esac
done
command -v nginx >/dev/null || apt-get install -y nginx
[ -x "$binary" ] || cargo build --release --manifest-path "$root/Cargo.toml"

work="$(mktemp -d /tmp/strangler-replay-bench.XXXXXX)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

body='{"id":1042,"service":"legacy","name":"widget","price":19.99,"currency":"EUR","tags":["a","b","c"],"stock":{"warehouse":"eu-1","count":117},"updated":"2026-11-22T12:00:00Z","active":true,"note":"fixed body"}'
for port in 19101 19102; do
  if [ "$port" = 19102 ] && [ "$differ" = 1 ]; then body="${body/\"legacy\"/\"new\"}"; fi
  mkdir -p "$work/$port"
  cat >"$work/$port/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/$port/nginx.pid;
error_log $work/$port/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/$port/body;
  proxy_temp_path $work/$port/proxy;
  fastcgi_temp_path $work/$port/fastcgi;
  uwsgi_temp_path $work/$port/uwsgi;
  scgi_temp_path $work/$port/scgi;
  server {
    listen 127.0.0.1:$port;
    location / { default_type application/json; return 200 '$body'; }
  }
}
CONF
  taskset -c 0 nginx -c "$work/$port/nginx.conf" -p "$work/$port" &
  pids+=("$!")
done
for port in 19101 19102; do
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.05; done
done

python3 - "$requests" >"$work/corpus.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"version": 1, "route": "items", "method": "GET",
                      "target": f"/items/{i}?page={i % 7}",
                      "headers": [["accept", "application/json"], ["user-agent", "bench"]]}))
PY

rates=() costs=()
TIMEFORMAT='%U %S'
for round in $(seq "$rounds"); do
  # CPU of the whole command (user + system), report rendering included.
  cpu="$( { time taskset -c 1 "$binary" replay "$work/corpus.jsonl" \
    --primary http://127.0.0.1:19101 --candidate http://127.0.0.1:19102 \
    --concurrency "$concurrency" --max-diff-rate 1 >"$work/report.txt" 2>"$work/summary.txt" \
    || { cat "$work/summary.txt" "$work/report.txt" >&2; exit 1; } ; } 2>&1 )"
  rate="$(sed -n 's/.*(\([0-9]*\)\/s)$/\1/p' "$work/summary.txt")"
  cost="$(echo "$cpu" | awk -v n="$requests" '{ printf "%.1f", ($1 + $2) * 1e6 / n }')"
  echo "round $round: $(head -1 "$work/summary.txt" | sed "s/^replay: //"); $(tail -1 "$work/summary.txt"); CPU ${cost} us per pair"
  rates+=("$rate") costs+=("$cost")
done
middle=$(( (rounds + 1) / 2 ))
median="$(printf '%s\n' "${rates[@]}" | sort -n | sed -n "${middle}p")"
cost="$(printf '%s\n' "${costs[@]}" | sort -n | sed -n "${middle}p")"
echo "median: $median requests compared per second, ${cost} us of CPU per pair (${requests} requests, --concurrency ${concurrency}, replay on CPU 1)"
