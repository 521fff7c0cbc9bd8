#!/usr/bin/env bash
# Load benchmark: strangler side by side with nginx and HAProxy, in interleaved rounds, through
# the harness in bench/harness (origins, peers, pinning, wrk, CPU per request; see its README).
#
#   bench/run.sh --quick        # ~4 minutes: forwarding, 10 / 10,000 routes, shadowing, 2 threads
#   bench/run.sh                # full: the same plus 1,000 routes, 3 x 10 s rounds
#   bench/run.sh -r 5 -d 10     # any other option is passed to bench/harness/run.sh
#
# Needs only this repository, cargo, and Debian's wrk, nginx and haproxy (installed with apt-get
# on first use). Every process is started and stopped by the harness (by PID).
# Results: /tmp/proxy-bench/<ts>/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="${SHARED_BENCH:-$root/bench/harness}"

quick=0
for arg in "$@"; do [ "$arg" = "--quick" ] && quick=1; done

# Debian packages the harness needs (wrk, nginx, haproxy, ...), once per machine.
for tool in wrk nginx haproxy; do
  command -v "$tool" >/dev/null 2>&1 || { "$shared/setup.sh"; break; }
done

"$root/scripts/setup"
# One build for the binary and both floors (examples/bare_pingora.rs, examples/core_forwarder.rs).
cargo build --release --manifest-path "$root/Cargo.toml" --bin strangler \
  --example bare_pingora --example core_forwarder
binary="$root/target/release/strangler"

work="$(mktemp -d /tmp/strangler-bench.XXXXXX)"
slow_origin=""
trap 'rm -rf "$work"; [ -n "$slow_origin" ] && kill "$slow_origin" 2>/dev/null' EXIT

# A config with `routes` routes (segment prefixes and anchored regexes, alternating) in front of
# the harness's origin A; the last route is the one the load hits, so a linear matcher would
# walk them all. All upstreams are origin A, so the routes change only the matching work.
write_config() {
  local file="$1" port="$2" admin="$3" routes="$4" threads="${5:-1}" stealing="${6:-true}"
  {
    echo "server: { listen: 127.0.0.1:$port, admin: 127.0.0.1:$admin, threads: $threads, work_stealing: $stealing }"
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

# The floor: a bare Pingora forwarder with the same build settings (examples/bare_pingora.rs),
# and the spike below it: a forwarder on pingora-core's HTTP server app and connector, without
# pingora-proxy (examples/core_forwarder.rs).
starts+=(--start "bare-pingora=http://127.0.0.1:19579/item" "$root/target/release/examples/bare_pingora 127.0.0.1:19579 127.0.0.1:19001")
starts+=(--start "core-forwarder=http://127.0.0.1:19578/item" "$root/target/release/examples/core_forwarder 127.0.0.1:19578 127.0.0.1:19001")

add_target strangler 19580 19590 0
add_target strangler-10r 19581 19591 10
((quick)) || add_target strangler-1kr 19582 19592 1000
add_target strangler-10kr 19583 19593 10000

# Both cores: strangler with `threads: 2` beside nginx `worker_processes 2` (nginx-proxy-auto)
# and HAProxy `nbthread 2` (haproxy-2t), all on CPUs 0,1 with the load generator: compare these
# three with each other only.
write_config "$work/strangler-2t.yaml" 19586 19597 0 2
starts+=(--start-multi "strangler-2t=http://127.0.0.1:19586/item" "env RUST_LOG=warn $binary run -c $work/strangler-2t.yaml")
# The same with a runtime per thread (`work_stealing: false`): no task moves between threads.
write_config "$work/strangler-2t-nosteal.yaml" 19577 19576 0 2 false
starts+=(--start-multi "strangler-2t-nosteal=http://127.0.0.1:19577/item" "env RUST_LOG=warn $binary run -c $work/strangler-2t-nosteal.yaml")

# Shadowing: every request mirrored to origin B (the harness's "new service"), compared with
# nginx `mirror`; and to a candidate that answers after 200 ms, one request at a time (a slow
# shadow: copies pile up to the in-flight cap, the rest are dropped and counted).
# Origin B answers origin A's JSON with another `id` and `service`: with those two ignored
# (`compare.ignore_json`) every exchange matches, as a mostly-finished migration would; without,
# every exchange is a mismatch and stored as a row. Matches are stored as a 1 % sample
# (`diff_match_sample`); the per-minute aggregates count every exchange.
# The stores live outside the configs' directory: the config watch (inotify on that directory)
# would otherwise wake on every store commit (~1 µs per request measured).
mkdir -p "$work/stores"
shadow_config() {
  local file="$1" port="$2" admin="$3" candidate="$4" compare="${5:-}"
  cat >"$file" <<YAML
server:
  listen: 127.0.0.1:$port
  admin: 127.0.0.1:$admin
  threads: 1
  diff_store: $work/stores/$(basename "$file" .yaml).db
  diff_match_sample: 0.01
upstreams:
  origin: { backends: [127.0.0.1:19001] }
  candidate: { backends: [$candidate] }
default_upstream: origin
routes:
  - name: all
    match: { path_prefix: / }
    shadow: { upstream: candidate, sample: 1.0, timeout: 2s, max_inflight: 256$compare }
YAML
  "$binary" validate "$file" >/dev/null
}
shadow_config "$work/shadow.yaml" 19584 19594 127.0.0.1:19002 ", compare: { ignore_json: ['\$.id', '\$.service'] }"
starts+=(--start "strangler-shadow=http://127.0.0.1:19584/item" "env RUST_LOG=warn $binary run -c $work/shadow.yaml")
shadow_config "$work/shadow-mismatch.yaml" 19587 19598 127.0.0.1:19002
starts+=(--start "strangler-shadow-mismatch=http://127.0.0.1:19587/item" "env RUST_LOG=warn $binary run -c $work/shadow-mismatch.yaml")
shadow_config "$work/slow-shadow.yaml" 19585 19595 127.0.0.1:19596
starts+=(--start "strangler-slowshadow=http://127.0.0.1:19585/item" "env RUST_LOG=warn $binary run -c $work/slow-shadow.yaml")
# The slow candidate runs on the load CPU with the origins, and is stopped by PID on exit.
taskset -c "${ORIGIN_CPU:-0}" "$root/bench/slow-origin.py" 127.0.0.1:19596 0.2 &
slow_origin=$!

# The multi-core peers join the built-in targets (a --targets given by the caller wins).
targets=direct,nginx-proxy,haproxy,nginx-mirror,nginx-proxy-auto,haproxy-2t
status=0
"$shared/run.sh" --targets "$targets" "$@" "${starts[@]}" || status=$?
exit "$status"
