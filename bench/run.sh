#!/usr/bin/env bash
# Load benchmark: strangler side by side with nginx and HAProxy, in interleaved rounds, through
# the shared harness (../shared/bench: origins, peers, pinning, wrk, CPU per request).
#
#   bench/run.sh --quick        # ~2 minutes: forwarding + 10 / 10,000 routes
#   bench/run.sh                # full: forwarding, 10 / 1,000 / 10,000 routes, 3 x 10 s rounds
#   bench/run.sh -r 5 -d 10     # any other option is passed to the shared run.sh
#
# Every process is started and stopped by the harness (by PID). Results: /tmp/proxy-bench/<ts>/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="${SHARED_BENCH:-$root/../shared/bench}"
if [ ! -x "$shared/run.sh" ]; then
  echo "bench/run.sh: the shared harness is missing at $shared (set SHARED_BENCH)" >&2
  exit 1
fi

quick=0
for arg in "$@"; do [ "$arg" = "--quick" ] && quick=1; done

# Debian packages the harness needs (wrk, nginx, haproxy, ...), once per machine.
for tool in wrk nginx haproxy; do
  command -v "$tool" >/dev/null 2>&1 || { "$shared/setup.sh"; break; }
done

"$root/scripts/setup"
cargo build --release --manifest-path "$root/Cargo.toml"
binary="$root/target/release/strangler"

work="$(mktemp -d /tmp/strangler-bench.XXXXXX)"
slow_origin=""
trap 'rm -rf "$work"; [ -n "$slow_origin" ] && kill "$slow_origin" 2>/dev/null' EXIT

# A config with `routes` routes (segment prefixes and anchored regexes, alternating) in front of
# the harness's origin A; the last route is the one the load hits, so a linear matcher would
# walk them all. All upstreams are origin A, so the routes change only the matching work.
write_config() {
  local file="$1" port="$2" admin="$3" routes="$4"
  {
    echo "server: { listen: 127.0.0.1:$port, admin: 127.0.0.1:$admin, threads: 1 }"
    echo "upstreams:"
    echo "  origin: { backends: [127.0.0.1:19001] }"
    echo "default_upstream: origin"
    echo "routes:"
    local i
    for ((i = 0; i < routes - 1; i++)); do
      if ((i % 2 == 0)); then
        echo "  - { name: r$i, match: { path_prefix: /svc$i/items }, upstream: origin }"
      else
        echo "  - { name: r$i, match: { path_regex: '^/svc$i/orders/[0-9]+\$' }, upstream: origin }"
      fi
    done
    ((routes > 0)) && echo "  - { name: last, match: { path_prefix: /item }, upstream: origin }"
    true
  } >"$file"
  "$binary" validate "$file" >/dev/null
}

starts=()
add_target() {
  local name="$1" port="$2" admin="$3" routes="$4"
  write_config "$work/$name.yaml" "$port" "$admin" "$routes"
  starts+=(--start "$name=http://127.0.0.1:$port/item" "env RUST_LOG=warn $binary run -c $work/$name.yaml")
}

# The floor: a bare Pingora forwarder with the same build settings (examples/bare_pingora.rs).
cargo build --release --manifest-path "$root/Cargo.toml" --example bare_pingora
starts+=(--start "bare-pingora=http://127.0.0.1:19579/item" "$root/target/release/examples/bare_pingora 127.0.0.1:19579 127.0.0.1:19001")

add_target strangler 19580 19590 0
add_target strangler-10r 19581 19591 10
((quick)) || add_target strangler-1kr 19582 19592 1000
add_target strangler-10kr 19583 19593 10000

# Shadowing: every request mirrored to origin B (the harness's "new service"), compared with
# nginx `mirror`; and to a candidate that answers after 200 ms, one request at a time (a slow
# shadow: copies pile up to the in-flight cap, the rest are dropped and counted).
shadow_config() {
  local file="$1" port="$2" admin="$3" candidate="$4"
  cat >"$file" <<YAML
server: { listen: 127.0.0.1:$port, admin: 127.0.0.1:$admin, threads: 1 }
upstreams:
  origin: { backends: [127.0.0.1:19001] }
  candidate: { backends: [$candidate] }
default_upstream: origin
routes:
  - name: all
    match: { path_prefix: / }
    shadow: { upstream: candidate, sample: 1.0, timeout: 2s, max_inflight: 256 }
YAML
  "$binary" validate "$file" >/dev/null
}
shadow_config "$work/shadow.yaml" 19584 19594 127.0.0.1:19002
starts+=(--start "strangler-shadow=http://127.0.0.1:19584/item" "env RUST_LOG=warn $binary run -c $work/shadow.yaml")
shadow_config "$work/slow-shadow.yaml" 19585 19595 127.0.0.1:19596
starts+=(--start "strangler-slowshadow=http://127.0.0.1:19585/item" "env RUST_LOG=warn $binary run -c $work/slow-shadow.yaml")
# The slow candidate runs on the load CPU with the origins, and is stopped by PID on exit.
taskset -c "${ORIGIN_CPU:-0}" "$root/bench/slow-origin.py" 127.0.0.1:19596 0.2 &
slow_origin=$!

status=0
"$shared/run.sh" "$@" "${starts[@]}" || status=$?
exit "$status"
