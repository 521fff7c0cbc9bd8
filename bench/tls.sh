#!/usr/bin/env bash
# TLS benchmark: strangler and nginx terminating TLS with the same certificate (ECDSA P-256) in
# front of the same nginx origin, one worker each, in interleaved rounds.
#
#   bench/tls.sh                 # 3 rounds x 10 s per phase
#   bench/tls.sh -r 5 -d 20      # rounds, seconds per phase
#
# Phases: `keepalive` (wrk, 32 connections kept open: TLS record cost per request) and
# `handshake` (wrk with `Connection: close`: one full TLS handshake per request). For each:
# requests/s and the proxy's CPU per request (utime+stime from /proc, in µs). Pinning: the
# proxy on CPU 1, origin and wrk on CPU 0. Needs wrk, nginx, openssl (apt-get install wrk
# nginx openssl). Every process is started and stopped here, by PID.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds=3
duration=10
while getopts "r:d:" opt; do
  case "$opt" in
    r) rounds="$OPTARG" ;;
    d) duration="$OPTARG" ;;
    *) exit 2 ;;
  esac
done
for tool in wrk nginx openssl taskset; do
  command -v "$tool" >/dev/null || { echo "bench/tls.sh: $tool is missing" >&2; exit 1; }
done

binary="$root/target/release/strangler"
[ -x "$binary" ] || cargo build --release --manifest-path "$root/Cargo.toml"

work="$(mktemp -d /tmp/strangler-tls-bench.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

origin=19101
nginx_tls=19110
strangler_tls=19120
strangler_admin=19121

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test,IP:127.0.0.1" \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null

mkdir -p "$work/nginx-origin" "$work/nginx-tls"
cat >"$work/nginx-origin/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx-origin/pid;
error_log $work/nginx-origin/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$origin reuseport;
    keepalive_requests 1000000;
    location / { default_type application/json; return 200 '{"service":"origin","ok":true}'; }
  }
}
EOF
cat >"$work/nginx-tls/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx-tls/pid;
error_log $work/nginx-tls/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:$origin; keepalive 128; }
  server {
    listen 127.0.0.1:$nginx_tls ssl;
    ssl_certificate $work/tls.crt;
    ssl_certificate_key $work/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
cat >"$work/routes.yaml" <<EOF
server:
  listen:
    - address: 127.0.0.1:$strangler_tls
      tls: { certificates: [{ cert: $work/tls.crt, key: $work/tls.key }], max_handshakes: 4096 }
  admin: 127.0.0.1:$strangler_admin
  threads: 1
  limits: { max_connections: 100000 }
upstreams:
  origin: { backends: [127.0.0.1:$origin] }
default_upstream: origin
EOF

taskset -c 0 nginx -p "$work/nginx-origin" -c "$work/nginx-origin/nginx.conf" -e stderr &
pids+=($!)
taskset -c 1 nginx -p "$work/nginx-tls" -c "$work/nginx-tls/nginx.conf" -e stderr &
pids+=($!)
RUST_LOG=error taskset -c 1 "$binary" run -c "$work/routes.yaml" 2>"$work/strangler.log" &
strangler_pid=$!
pids+=("$strangler_pid")

for _ in $(seq 100); do
  curl -sk -o /dev/null "https://127.0.0.1:$strangler_tls/" && curl -sk -o /dev/null "https://127.0.0.1:$nginx_tls/" && break
  sleep 0.1
done
# nginx's worker, not its master, does the work.
nginx_worker="$(pgrep -P "${pids[1]}" | head -1)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_s="$(getconf CLK_TCK)"

# One wrk run: prints "requests/s cpu_us_per_request".
measure() {
  local name="$1" port="$2" phase="$3" pid
  pid="$([ "$name" = strangler ] && echo "$strangler_pid" || echo "$nginx_worker")"
  local extra=()
  [ "$phase" = handshake ] && extra=(-H "Connection: close")
  local before after out requests
  before="$(cpu_ticks "$pid")"
  out="$(taskset -c 0 wrk -t1 -c32 -d"${duration}s" "${extra[@]}" "https://127.0.0.1:$port/" 2>&1)"
  after="$(cpu_ticks "$pid")"
  requests="$(echo "$out" | awk '/requests in/ {print $1}')"
  awk -v r="$requests" -v d="$duration" -v t="$((after - before))" -v hz="$ticks_per_s" \
    'BEGIN { printf "%.0f %.1f\n", r / d, (t / hz) * 1e6 / (r > 0 ? r : 1) }'
}

printf "%-10s %-10s %5s %12s %14s\n" phase proxy round "requests/s" "cpu µs/req" | tee "$work/report.txt"
for phase in keepalive handshake; do
  for round in $(seq "$rounds"); do
    for target in strangler:$strangler_tls nginx:$nginx_tls; do
      name="${target%%:*}"
      port="${target##*:}"
      read -r rps cpu < <(measure "$name" "$port" "$phase")
      printf "%-10s %-10s %5s %12s %14s\n" "$phase" "$name" "$round" "$rps" "$cpu" | tee -a "$work/report.txt"
    done
  done
done
