#!/usr/bin/env bash
# How long `strangler report` takes over a big diff store: 1,000,000 exchanges from 10 replicas
# over a day (1% differing, 1% of matches kept as rows), in Postgres and in SQLite, written
# through the real write path (examples/fill_store.rs). Prints the fill time and three report
# timings per store. Needs scripts/setup (postgresql); starts and removes its own cluster.
#
#   bench/report-store.sh                   # 1,000,000 exchanges, release build
#   bench/report-store.sh 100000            # fewer
#   PROFILE=debug bench/report-store.sh     # the debug build (slower: an upper bound)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exchanges="${1:-1000000}"
profile="${PROFILE:-release}"

"$root/scripts/setup"
if [ "$profile" = release ]; then
  cargo build --release --manifest-path "$root/Cargo.toml" --bin strangler --example fill_store
else
  cargo build --manifest-path "$root/Cargo.toml" --bin strangler --example fill_store
fi
dir="$root/target/$profile"
binary="$dir/strangler"
fill="$dir/examples/fill_store"

bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
work="$(mktemp -d /tmp/strangler-report-bench.XXXXXX)"
chmod 755 "$work"
run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir "$work/pg"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$work/pg"
port=$((20000 + RANDOM % 30000))
cleanup() {
  run_pg "$bin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
run_pg "$bin/initdb" -D "$work/pg/data" -U strangler --auth=trust --no-sync >/dev/null
run_pg "$bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
  -o "-p $port -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null
url="postgres://strangler@127.0.0.1:$port/postgres"

for store in "$url" "$work/diffs.db"; do
  echo "== $store"
  "$fill" "$store" "$exchanges" 10
  for run in 1 2 3; do
    start=$(date +%s%N)
    "$binary" report --db "$store" --max-diff-rate 5% >/dev/null
    end=$(date +%s%N)
    echo "report run $run: $(((end - start) / 1000000)) ms"
  done
done
if [ -f "$work/diffs.db" ]; then
  echo "SQLite file: $(du -h "$work/diffs.db" | cut -f1)"
fi
run_pg "$bin/psql" -h "$work/pg" -p "$port" -U strangler -d postgres -At -c \
  "SELECT 'Postgres: ' || (SELECT COUNT(*) FROM diffs) || ' rows, ' || (SELECT COUNT(*) FROM diff_counts) || ' count rows, ' || pg_size_pretty(pg_database_size('postgres'))"
