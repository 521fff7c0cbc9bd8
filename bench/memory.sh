#!/usr/bin/env bash
# Memory benchmark: peak and after-load RSS of strangler built with glibc malloc and with jemalloc
# (the default), for the cases of issue 15, plus forwarding CPU per request with each allocator.
#
#   bench/memory.sh            # ~6 minutes after the two release builds
#
# Cases, each on a fresh proxy (RSS from /proc/PID/status, sampled every 100 ms):
#   diff-heavy   wrk -t2 -c32 for 20 s on a route shadowed at sample 1.0, primary and candidate
#                answering different 256 KiB JSON bodies (every exchange parsed, compared, stored)
#   silent       19,900 client connections that connect and send nothing, held 10 s
#   idle         19,900 keep-alive client connections that send one GET each, then sit idle,
#                held 10 s
# "after" is RSS 10 s after the load stopped (connections closed), "idle" before any load.
# CPU: strangler with threads: 1 pinned to CPU 1, wrk -t1 -c64 pinned to CPU 0, a 206-byte answer,
# 3 interleaved 10 s rounds per allocator; CPU time from /proc/PID/stat over requests done.
#
# Needs: cargo, make (jemalloc's build), python3, and wrk and nginx (Debian packages; installed
# with apt-get when missing). Only this repository: no other checkout. Every process it starts is
# stopped by PID. Override the binaries with STRANGLER_GLIBC_BIN / STRANGLER_JEMALLOC_BIN to
# skip the builds.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
flood="$root/bench/flood.py"

"$root/scripts/setup"
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
nginx="$(command -v nginx || echo /usr/sbin/nginx)"
# Each side of a flood needs a descriptor per connection: raise the soft limit to the hard one.
# 19,900 connections fit under a hard limit of 20,000 (this VM's); fewer are opened under less.
ulimit -n "$(ulimit -Hn)"
connections=$(($(ulimit -n) - 100))
((connections > 19900)) && connections=19900

work="$(mktemp -d /tmp/strangler-memory.XXXXXX)"
chmod 755 "$work" # nginx workers run as nobody and read the bodies from here
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The two builds: glibc malloc (--no-default-features) and jemalloc (default).
if [ -z "${STRANGLER_GLIBC_BIN:-}" ]; then
  cargo build --release --no-default-features --bin strangler --manifest-path "$root/Cargo.toml"
  cp "$root/target/release/strangler" "$work/strangler-glibc"
  STRANGLER_GLIBC_BIN="$work/strangler-glibc"
fi
if [ -z "${STRANGLER_JEMALLOC_BIN:-}" ]; then
  cargo build --release --bin strangler --manifest-path "$root/Cargo.toml"
  cp "$root/target/release/strangler" "$work/strangler-jemalloc"
  STRANGLER_JEMALLOC_BIN="$work/strangler-jemalloc"
fi
declare -A binary=([glibc]="$STRANGLER_GLIBC_BIN" [jemalloc]="$STRANGLER_JEMALLOC_BIN")

# Origins: nginx (one worker) serving a 256 KiB JSON document that differs between the primary
# (port 19701) and the candidate (19702) in every record's `updated_at` and `stock`, and a
# 206-byte /small.
mkdir -p "$work/a" "$work/b" "$work/nginx"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
for side, offset in (("a", 0), ("b", 1)):
    items, n = [], 0
    while len(json.dumps({"items": items})) < 256 * 1024 - 200:
        items.append({"id": n, "sku": f"SKU-{n:06d}", "name": f"item number {n}",
                      "stock": n * 3 + offset, "updated_at": f"2026-12-0{1 + offset}T10:00:{n % 60:02d}Z"})
        n += 1
    with open(f"{work}/{side}/big", "w") as f:
        json.dump({"items": items}, f)
    with open(f"{work}/{side}/small", "w") as f:
        f.write(json.dumps({"id": 7, "status": "open", "total": "90.00", "currency": "EUR",
                            "customer": {"name": "Ada Lovelace", "country": "FR"},
                            "lines": [{"sku": "SKU-0001", "quantity": 1}]}).ljust(205) + "\n")
PY
cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:19701; root $work/a; }
  server { listen 127.0.0.1:19702; root $work/b; }
}
CONF
taskset -c 0 "$nginx" -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)
python3 "$flood" ready http://127.0.0.1:19701/small

# write_config FILE PORT ADMIN THREADS SHADOW(0|1)
write_config() {
  local file="$1" port="$2" admin="$3" threads="$4" shadow="$5"
  {
    echo "server:"
    echo "  listen: 127.0.0.1:$port"
    echo "  admin: 127.0.0.1:$admin"
    [ "$threads" != default ] && echo "  threads: $threads"
    echo "  diff_store: $work/diffs-$port.db"
    echo "  limits: { max_connections: 25000 }"
    echo "upstreams:"
    echo "  legacy: { backends: [127.0.0.1:19701] }"
    echo "  candidate: { backends: [127.0.0.1:19702] }"
    echo "default_upstream: legacy"
    if ((shadow)); then
      echo "routes:"
      echo "  - name: items"
      echo "    match: { path_prefix: /big }"
      echo "    upstream: legacy"
      echo "    shadow: { upstream: candidate, sample: 1.0 }"
    fi
  } >"$file"
}

proxy_pid=""
# start_proxy ALLOCATOR PORT ADMIN THREADS SHADOW [taskset CPU list]
start_proxy() {
  local allocator="$1" port="$2" admin="$3" threads="$4" shadow="$5" cpus="${6:-0,1}"
  write_config "$work/$port.yaml" "$port" "$admin" "$threads" "$shadow"
  RUST_LOG=warn taskset -c "$cpus" "${binary[$allocator]}" run -c "$work/$port.yaml" \
    >"$work/$port.log" 2>&1 &
  proxy_pid=$!
  pids+=("$proxy_pid")
  python3 "$flood" ready "http://127.0.0.1:$admin/readyz"
}
stop_proxy() {
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
}
mib() { echo $((($1 + 512) / 1024)); }

results="$work/results"
: >"$results"
port=19710
for allocator in glibc jemalloc; do
  # diff-heavy
  port=$((port + 2))
  start_proxy "$allocator" "$port" $((port + 1)) default 1
  idle=$(python3 "$flood" rss "$proxy_pid")
  python3 "$flood" peak "$proxy_pid" 21 >"$work/peak" &
  sampler=$!
  wrk -t2 -c32 -d20s "http://127.0.0.1:$port/big" >"$work/wrk-$port.txt"
  wait "$sampler"
  peak=$(cat "$work/peak")
  sleep 10 # the quiet period being measured, not a readiness wait
  after=$(python3 "$flood" rss "$proxy_pid")
  requests=$(awk '/requests in/ {print $1}' "$work/wrk-$port.txt")
  python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$((port + 1))/metrics').read().decode())" >"$work/metrics"
  compared=$(awk '/^strangler_diffs_total/ && !/skipped/ {s += $2} END {print s + 0}' "$work/metrics")
  dropped=$(awk '/^strangler_shadow_requests_total/ && /dropped_memory/ {s += $2} END {print s + 0}' "$work/metrics")
  echo "diff-heavy $allocator $(mib "$idle") $(mib "$peak") $(mib "$after") requests=$requests compared=$compared dropped_memory=$dropped" >>"$results"
  stop_proxy

  for mode in silent idle; do
    port=$((port + 2))
    start_proxy "$allocator" "$port" $((port + 1)) default 0
    idle=$(python3 "$flood" rss "$proxy_pid")
    line=$(python3 "$flood" connections "127.0.0.1:$port" "$connections" "$mode" 10 --pid "$proxy_pid")
    peak=${line##*peak_kib=}
    sleep 10 # the quiet period being measured
    after=$(python3 "$flood" rss "$proxy_pid")
    echo "$mode $allocator $(mib "$idle") $(mib "$peak") $(mib "$after") ${line% peak_kib=*}" >>"$results"
    stop_proxy
  done
done

# CPU per request, interleaved rounds.
cpu_us_per_request() {
  local allocator="$1"
  port=$((port + 2))
  start_proxy "$allocator" "$port" $((port + 1)) 1 0 1
  wrk -t1 -c64 -d2s "http://127.0.0.1:$port/small" >/dev/null # warm-up
  local ticks_before ticks_after hz requests
  hz=$(getconf CLK_TCK)
  ticks_before=$(awk '{print $14 + $15}' "/proc/$proxy_pid/stat")
  taskset -c 0 wrk -t1 -c64 -d10s "http://127.0.0.1:$port/small" >"$work/wrk-cpu.txt"
  ticks_after=$(awk '{print $14 + $15}' "/proc/$proxy_pid/stat")
  requests=$(awk '/requests in/ {print $1}' "$work/wrk-cpu.txt")
  stop_proxy
  python3 -c "print(f'{($ticks_after - $ticks_before) / $hz / $requests * 1e6:.1f} {$requests / 10:.0f}')"
}
for round in 1 2 3; do
  for allocator in glibc jemalloc; do
    echo "cpu $allocator round$round $(cpu_us_per_request "$allocator")" >>"$results"
  done
done

echo
echo "RSS in MiB (idle before load, peak during, 10 s after the load stopped)"
printf '%-11s %-9s %6s %6s %6s  %s\n' case allocator idle peak after notes
awk '$1 != "cpu" {printf "%-11s %-9s %6s %6s %6s  %s %s %s\n", $1, $2, $3, $4, $5, $6, $7, $8}' "$results"
cp "$results" /tmp/strangler-memory-results.txt
echo "(raw: /tmp/strangler-memory-results.txt)"
echo
echo "Forwarding CPU per request (us; req/s), 3 interleaved rounds"
awk '$1 == "cpu" {printf "%-9s %s %6s us/req %7s req/s\n", $2, $3, $4, $5}' "$results"
