#!/usr/bin/env bash
# What storing shadow diffs costs the proxy: shadow at 100 % to a candidate that answers
# mostly-matching JSON (ids and timestamps ignored through compare.ignore_json; 1 in 16 answers
# has another price), through three strangler processes that differ only in their diff store:
#
#   none      a Postgres URL to a closed port: every exchange compared, every batch dropped at
#             the writer (what comparing costs without storing)
#   sqlite    the default SQLite file
#   postgres  a real local Postgres cluster (started and removed here)
#
# All three keep 1 % of the matching exchanges as rows (diff_match_sample: 0.01, as a fleet would;
# every differing one is a row). Rounds are interleaved (none, sqlite, postgres, none, ...) so a
# loaded machine weighs on all three alike. strangler is pinned to one CPU (PROXY_CPU), wrk, the
# nginx origins and Postgres to the other (LOAD_CPU); CPU per request is strangler's user+system
# time from /proc/PID/stat before and after a round, over the requests wrk completed. The
# Postgres server's own CPU is printed beside it (it is another process, on the load CPU).
#
#   bench/shadow-store.sh                      # release build, 3 rounds x 10 s, 32 connections
#   PROFILE=debug bench/shadow-store.sh        # the debug build
#   BUILD=0 PROFILE=debug bench/shadow-store.sh  # the binary already built (cargo test builds it)
#   ROUNDS=5 DURATION=20 CONNS=64 bench/shadow-store.sh
#
# Every process is started here and stopped by PID at exit. Needs scripts/setup (postgresql),
# nginx and wrk (apt-get install nginx wrk).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
profile="${PROFILE:-release}"
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
conns="${CONNS:-32}"
proxy_cpu="${PROXY_CPU:-1}"
load_cpu="${LOAD_CPU:-0}"

"$root/scripts/setup"
for tool in nginx wrk; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench/shadow-store.sh: $tool is missing (apt-get install nginx wrk)" >&2
    exit 1
  }
done
if [ "${BUILD:-1}" = 0 ]; then
  : # BUILD=0: the binary already in target/$profile, as it is
elif [ "$profile" = release ]; then
  cargo build --release --manifest-path "$root/Cargo.toml" --bin strangler
else
  cargo build --manifest-path "$root/Cargo.toml" --bin strangler
fi
binary="$root/target/$profile/strangler"

work="$(mktemp -d /tmp/strangler-shadow-store.XXXXXX)"
chmod 755 "$work"
pids=()
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  run_pg "$bin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- origins: legacy :19701, the candidate :19702 (nginx, one worker, on the load CPU) --------
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  # 1 in 16 request ids start with 0: the candidate prices those differently.
  map \$request_id \$price { ~^0 "13.50"; default "12.50"; }
  server {
    listen 127.0.0.1:19701;
    location / {
      default_type application/json;
      return 200 '{"id":"\$request_id","name":"widget","price":"12.50","stock":7,"tags":["a","b","c"],"dimensions":{"w":10,"h":20,"d":5},"updated":"\$msec"}';
    }
  }
  server {
    listen 127.0.0.1:19702;
    location / {
      default_type application/json;
      return 200 '{"id":"\$request_id","name":"widget","price":"\$price","stock":7,"tags":["a","b","c"],"dimensions":{"w":10,"h":20,"d":5},"updated":"\$msec"}';
    }
  }
}
NGINX
taskset -c "$load_cpu" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx"

# ---- Postgres ----------------------------------------------------------------------------------
mkdir "$work/pg"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$work/pg"
pg_port=$((20000 + RANDOM % 30000))
run_pg "$bin/initdb" -D "$work/pg/data" -U strangler --auth=trust --no-sync >/dev/null
run_pg taskset -c "$load_cpu" "$bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
  -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null
postmaster="$(head -1 "$work/pg/data/postmaster.pid")"
closed_port=$((pg_port + 1))
while (exec 3<>"/dev/tcp/127.0.0.1/$closed_port") 2>/dev/null; do closed_port=$((closed_port + 1)); done

# ---- three proxies -----------------------------------------------------------------------------
declare -A port=([none]=19711 [sqlite]=19712 [postgres]=19713)
declare -A store=(
  [none]="postgres://strangler@127.0.0.1:$closed_port/postgres?sslmode=disable"
  [sqlite]="$work/diffs.db"
  [postgres]="postgres://strangler@127.0.0.1:$pg_port/postgres?sslmode=disable"
)
declare -A pid
for name in none sqlite postgres; do
  cat >"$work/$name.yaml" <<YAML
server:
  listen: 127.0.0.1:${port[$name]}
  admin: 127.0.0.1:$((port[$name] + 10))
  threads: 1
  diff_store: '${store[$name]}'
  diff_match_sample: 0.01
  replica: bench-$name
upstreams:
  legacy: { backends: [127.0.0.1:19701] }
  candidate: { backends: [127.0.0.1:19702] }
default_upstream: legacy
routes:
  - name: items
    match: { path_prefix: /items }
    shadow:
      upstream: candidate
      sample: 1.0
      max_inflight: 256
      compare:
        ignore_json: ['\$.id', '\$.updated']
YAML
  "$binary" validate --no-resolve "$work/$name.yaml" >/dev/null
  RUST_LOG=warn taskset -c "$proxy_cpu" "$binary" run -c "$work/$name.yaml" \
    2>"$work/$name.log" &
  pid[$name]=$!
  pids+=("${pid[$name]}")
done
for name in none sqlite postgres; do
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$((port[$name] + 10))/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$((port[$name] + 10))/readyz" >/dev/null
done

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
pg_ticks() {
  local total=0 p
  for p in "$postmaster" $(ps -o pid= --ppid "$postmaster"); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(ticks "$p")))
  done
  echo "$total"
}
metric() { # name admin-port: the sum of a counter's series
  curl -fsS "http://127.0.0.1:$2/metrics" | awk -v m="$1" '$1 ~ "^"m"([{]|$)" { s += $2 } END { printf "%d", s }'
}
hz="$(getconf CLK_TCK)"

echo "strangler $profile build, $rounds rounds x ${duration}s, $conns connections, shadow at 100 %"
printf '%-9s %5s %9s %9s %8s %10s %7s %8s %8s\n' store round req/s requests errors "cpu us/req" "pg us/req" stored dropped
declare -A sum_us
for round in $(seq "$rounds"); do
  for name in none sqlite postgres; do
    before="$(ticks "${pid[$name]}")"
    pg_before="$(pg_ticks)"
    out="$(taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"${duration}s" "http://127.0.0.1:${port[$name]}/items/1")"
    after="$(ticks "${pid[$name]}")"
    pg_after="$(pg_ticks)"
    requests="$(echo "$out" | awk '/requests in/ { print $1 }')"
    rate="$(echo "$out" | awk '/Requests\/sec/ { printf "%d", $2 }')"
    { echo "$out" | grep -E "Non-2xx|Socket errors" || true; } | sed "s/^/  $name round $round wrk: /" >>"$work/wrk-errors"
    errors="$(echo "$out" | awk '/Non-2xx|Socket errors/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i } END { print s + 0 }')"
    us=$(((after - before) * 1000000 / hz / requests))
    pg_us=$(((pg_after - pg_before) * 1000000 / hz / requests))
    sum_us[$name]="${sum_us[$name]:-} $us"
    admin=$((port[$name] + 10))
    printf '%-9s %5s %9s %9s %8s %10s %7s %8s %8s\n' "$name" "$round" "$rate" "$requests" "$errors" "$us" \
      "$pg_us" "$(metric strangler_diff_store_written_total "$admin")" \
      "$(metric strangler_diff_store_dropped_total "$admin")"
  done
done
echo
for name in none sqlite postgres; do
  admin=$((port[$name] + 10))
  median="$(tr ' ' '\n' <<<"${sum_us[$name]}" | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')"
  echo "$name: median $median us/request"
  curl -fsS "http://127.0.0.1:$admin/metrics" |
    grep -E '^strangler_(diffs_total|diff_store_dropped_total|diff_store_errors_total|shadow_requests_total)' |
    sed 's/^/    /'
done
for name in none sqlite postgres; do
  grep -iE "warn|error" "$work/$name.log" | sort | uniq -c | sort -rn | head -3 | sed "s/^/  $name log: /" || true
done
cat "$work/wrk-errors" 2>/dev/null || true
echo "(stored/dropped: cumulative exchanges; none drops every one by design)"
