#!/usr/bin/env bash
# Side-by-side reverse-proxy benchmark on loopback (see README.md).
#
# Starts two nginx origins (A :19001, B :19002 = the "new service" for shadow traffic) and the
# peer proxies, then runs the load generator against every target in interleaved rounds
# (A B C A B C ...) and prints medians and ratios to nginx-proxy and to direct-to-origin.
# Every process it starts is recorded by PID (RUN/pids) and stopped by that PID at exit.
#
# usage: run.sh [options] [NAME=URL ...]
#   NAME=URL              an extra target already listening on loopback (e.g. the project's proxy,
#                         forwarding to 127.0.0.1:19001); its PID is found by port for CPU figures
#   --start NAME=URL CMD  start CMD (one shell string) pinned to the proxy CPU once the origins
#                         are up, wait for URL's port, benchmark it, stop it by PID at the end
#   --start-multi NAME=URL CMD  the same, on the multi-worker CPUs (MULTI_CPUS) like nginx-proxy-auto
#   --quick               ~1 minute: targets direct,nginx-proxy,haproxy,nginx-mirror (+ extras),
#                         2 rounds x 4 s at 64 connections, 1 round x 3 s at 1 connection
#   --targets LIST        built-in targets, comma-separated (default: all; see --list)
#   -r, --rounds N        throughput rounds (default 3)       -d, --duration S   seconds (10)
#   -c, --connections N   throughput connections (64)         -t, --threads N    wrk threads (2)
#   --lat-rounds N        1-connection latency rounds (3; 0 skips)  --lat-duration S   (5)
#   --rate RPS            add a fixed-rate phase with oha (open loop, latency-corrected)
#   --rate-rounds N       (default: --lat-rounds)   --rate-duration S (default: --lat-duration)
#   --path P              request path for built-in targets (default /item)
#   --no-warmup           skip the 1 s warm-up of each target
#   --out DIR             results directory (default $BENCH_RESULTS/<timestamp>, BENCH_RESULTS=/tmp/proxy-bench)
#   --serve               start origins and peers, print them, wait for Ctrl-C (no load)
#   --list                print the built-in targets and ports, then exit
# env: LOADGEN_CPU=0 ORIGIN_CPU=0 PROXY_CPU=1 MULTI_CPUS=0,1 (taskset CPU lists)
#      WRK=wrk OHA=oha NGINX=nginx HAPROXY=haproxy ENVOY=... TRAEFIK=... (binaries)
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS=${BENCH_TOOLS:-$HOME/.cache/proxy-bench-tools}

die() { echo "run.sh: $*" >&2; exit 2; }
usage() { sed -n '/^# usage:/,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------- built-in targets
# name -> port, CPU class (proxy = pinned to PROXY_CPU, multi = MULTI_CPUS, origin = ORIGIN_CPU)
ALL_BUILTIN=(direct nginx-proxy nginx-proxy-auto haproxy haproxy-2t nginx-mirror envoy envoy-mirror traefik)
QUICK_BUILTIN=(direct nginx-proxy haproxy nginx-mirror)
declare -A B_PORT=([direct]=19001 [nginx-proxy]=19010 [nginx-proxy-auto]=19011 [nginx-mirror]=19012
  [haproxy]=19020 [haproxy-2t]=19021 [envoy]=19030 [envoy-mirror]=19032 [traefik]=19040)
declare -A B_CLASS=([direct]=origin [nginx-proxy]=proxy [nginx-proxy-auto]=multi [nginx-mirror]=proxy
  [haproxy]=proxy [haproxy-2t]=multi [envoy]=proxy [envoy-mirror]=proxy [traefik]=proxy)
declare -A B_DESC=([direct]="origin A itself, no proxy (ceiling: same wrk+origin work on the load CPU)"
  [nginx-proxy]="nginx, worker_processes 1, keepalive upstream"
  [nginx-proxy-auto]="nginx, worker_processes auto (2), on both CPUs"
  [nginx-mirror]="nginx, 1 worker, mirror 100% to origin B :19002"
  [haproxy]="HAProxy, nbthread 1, http-reuse always"
  [haproxy-2t]="HAProxy, nbthread 2, on both CPUs"
  [envoy]="Envoy, --concurrency 1"
  [envoy-mirror]="Envoy, --concurrency 1, request_mirror_policies 100% to origin B"
  [traefik]="Traefik, GOMAXPROCS=1, file provider")
ORIGIN_A=19001 ORIGIN_B=19002 STATUS_A=19003 STATUS_B=19004

# ---------------------------------------------------------------- options
ROUNDS=3 DURATION=10 CONNS=64 THREADS=2 LAT_ROUNDS=3 LAT_DURATION=5
RATE="" RATE_ROUNDS="" RATE_DURATION="" REQ_PATH=/item WARMUP=1 OUT="" SERVE=0 QUICK=0 TARGET_LIST=""
EXTRA_NAMES=() EXTRA_URLS=() EXTRA_CMDS=() EXTRA_MULTI=()
add_extra() { # NAME=URL [CMD [multi]]
  [[ $1 == *=* ]] || die "expected NAME=URL, got '$1'"
  local n=${1%%=*} u=${1#*=}
  [[ $n =~ ^[A-Za-z0-9._-]+$ ]] || die "bad target name '$n'"
  [[ $u =~ ^http://(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost|\[::1\])(:[0-9]+)?(/.*)?$ ]] ||
    die "target $n: only http:// URLs on loopback (127.0.0.0/8, localhost, [::1]) are allowed: $u"
  EXTRA_NAMES+=("$n"); EXTRA_URLS+=("$u"); EXTRA_CMDS+=("${2:-}"); EXTRA_MULTI+=("${3:-}")
}
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --list) for n in "${ALL_BUILTIN[@]}"; do printf '%-17s 127.0.0.1:%-6s %s\n' "$n" "${B_PORT[$n]}" "${B_DESC[$n]}"; done
            echo "origin A 127.0.0.1:$ORIGIN_A (status :$STATUS_A), origin B 127.0.0.1:$ORIGIN_B (status :$STATUS_B)"; exit 0 ;;
    --quick) QUICK=1 ;;
    --targets) TARGET_LIST=$2; shift ;;
    -r|--rounds) ROUNDS=$2; shift ;;
    -d|--duration) DURATION=${2%s}; shift ;;
    -c|--connections) CONNS=$2; shift ;;
    -t|--threads) THREADS=$2; shift ;;
    --lat-rounds) LAT_ROUNDS=$2; shift ;;
    --lat-duration) LAT_DURATION=${2%s}; shift ;;
    --rate) RATE=$2; shift ;;
    --rate-rounds) RATE_ROUNDS=$2; shift ;;
    --rate-duration) RATE_DURATION=${2%s}; shift ;;
    --path) REQ_PATH=$2; shift ;;
    --no-warmup) WARMUP=0 ;;
    --out) OUT=$2; shift ;;
    --serve) SERVE=1 ;;
    --start) (($# >= 3)) || die "--start needs NAME=URL and a command"; add_extra "$2" "$3"; shift 2 ;;
    --start-multi) (($# >= 3)) || die "--start-multi needs NAME=URL and a command"; add_extra "$2" "$3" multi; shift 2 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *=*) add_extra "$1" ;;
    *) die "unexpected argument '$1' (targets are NAME=URL)" ;;
  esac
  shift
done
if ((QUICK)); then
  # explicit -r/-d given before or after --quick are overridden; --quick is a fixed recipe
  ROUNDS=2 DURATION=4 LAT_ROUNDS=1 LAT_DURATION=3
  [[ -z $TARGET_LIST ]] && TARGET_LIST=$(IFS=,; echo "${QUICK_BUILTIN[*]}")
fi
: "${RATE_ROUNDS:=$LAT_ROUNDS}" "${RATE_DURATION:=$LAT_DURATION}"
for v in ROUNDS DURATION CONNS THREADS LAT_ROUNDS LAT_DURATION RATE_ROUNDS RATE_DURATION; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[[ -z $RATE || $RATE =~ ^[0-9]+$ ]] || die "--rate must be a whole number of requests/s"
[[ $REQ_PATH == /* ]] || die "--path must start with /"

# ---------------------------------------------------------------- CPUs and binaries
NCPU=$(nproc)
LOADGEN_CPU=${LOADGEN_CPU:-0} ORIGIN_CPU=${ORIGIN_CPU:-0} PROXY_CPU=${PROXY_CPU:-1} MULTI_CPUS=${MULTI_CPUS:-0,1}
if ((NCPU < 2)); then
  echo "warning: only $NCPU CPU: everything shares CPU 0, numbers are not comparable to a 2-CPU run" >&2
  LOADGEN_CPU=0 ORIGIN_CPU=0 PROXY_CPU=0 MULTI_CPUS=0
fi
CPU_CLASS_origin=$ORIGIN_CPU CPU_CLASS_proxy=$PROXY_CPU CPU_CLASS_multi=$MULTI_CPUS
first_on_path() { local c; for c in "$@"; do [[ -x $c ]] && { echo "$c"; return; }; command -v "$c" 2>/dev/null && return; done; }
WRK=${WRK:-$(first_on_path wrk)}
NGINX=${NGINX:-$(first_on_path nginx /usr/sbin/nginx)}
HAPROXY=${HAPROXY:-$(first_on_path haproxy /usr/sbin/haproxy)}
OHA=${OHA:-$(first_on_path "$TOOLS/oha/bin/oha" oha)}
ENVOY=${ENVOY:-$(first_on_path $TOOLS/venv/lib/python3*/site-packages/envoy/_bin/envoy envoy)}
TRAEFIK=${TRAEFIK:-$(first_on_path "$TOOLS/venv/bin/traefik" traefik)}
[[ -n $WRK ]] || die "wrk not found: run bench/setup.sh"
[[ -n $NGINX ]] || die "nginx not found: run bench/setup.sh"
[[ -z $RATE || -n $OHA ]] || die "--rate needs oha: run bench/setup.sh --oha"
for t in taskset ss curl python3 pgrep; do command -v $t >/dev/null || die "$t not found"; done

# ---------------------------------------------------------------- which targets
declare -A TURL TPID TCPUS TNOTE
TARGETS=()
if [[ -n $TARGET_LIST ]]; then IFS=, read -ra want <<<"$TARGET_LIST"; else want=("${ALL_BUILTIN[@]}"); fi
for n in "${want[@]}"; do
  [[ -n ${B_PORT[$n]:-} ]] || die "unknown built-in target '$n' (see --list)"
  case $n in
    haproxy*) [[ -n $HAPROXY ]] || { echo "note: $n skipped (haproxy not installed)" >&2; continue; } ;;
    envoy*) [[ -n $ENVOY ]] || { echo "note: $n skipped (envoy not installed: bench/setup.sh --extra-peers)" >&2; continue; } ;;
    traefik) [[ -n $TRAEFIK ]] || { echo "note: $n skipped (traefik not installed: bench/setup.sh --extra-peers)" >&2; continue; } ;;
  esac
  TARGETS+=("$n"); TURL[$n]="http://127.0.0.1:${B_PORT[$n]}$REQ_PATH"
done
for i in "${!EXTRA_NAMES[@]}"; do
  n=${EXTRA_NAMES[$i]}
  [[ -z ${TURL[$n]:-} ]] || die "target name '$n' used twice"
  TARGETS+=("$n"); TURL[$n]=${EXTRA_URLS[$i]}
done
((${#TARGETS[@]})) || die "no targets"
url_port() { local hp=${1#http://}; hp=${hp%%/*}; [[ $hp == *:* ]] && echo "${hp##*:}" || echo 80; }

# ---------------------------------------------------------------- process bookkeeping
RUN=${OUT:-${BENCH_RESULTS:-/tmp/proxy-bench}/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RUN/logs" "$RUN/conf" "$RUN/tmp" || die "cannot create $RUN"
RUN=$(cd "$RUN" && pwd)
: >"$RUN/pids"; : >"$RUN/targets.tsv"
PIDS=()
descendants() { local c; echo "$1"; for c in $(pgrep -P "$1" 2>/dev/null); do descendants "$c"; done; }
start_proc() { # NAME CPUS CMD...  (taskset execs CMD, so $! is the server's own PID)
  local name=$1 cpus=$2; shift 2
  taskset -c "$cpus" "$@" >>"$RUN/logs/$name.out" 2>&1 &
  local pid=$!
  PIDS+=("$pid"); echo "$name $pid" >>"$RUN/pids"; TPID[$name]=$pid
}
stop_all() {
  ((${#PIDS[@]})) || return 0
  local all=() p i left
  for p in "${PIDS[@]}"; do all+=($(descendants "$p")); done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null; done
  for i in $(seq 50); do
    left=(); for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
    ((${#left[@]})) || break; sleep 0.1
  done
  for p in "${left[@]}"; do echo "run.sh: PID $p did not stop on TERM, sending KILL" >&2; kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  PIDS=()
  echo "stopped every process this run started (PIDs in $RUN/pids)"
}
SLEEP_PID=""
trap '[[ -n $SLEEP_PID ]] && kill "$SLEEP_PID" 2>/dev/null; stop_all' EXIT
trap 'exit 130' INT TERM
port_busy() { ss -ltnH "sport = :$1" | grep -q .; }
wait_port() { # PORT TIMEOUT_S [PID]
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_busy "$1" && return 0
    [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null && return 1
    sleep 0.1
  done
  return 1
}
listening_pids() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un | xargs; }
affinity() { taskset -cp "$1" 2>/dev/null | sed 's/.*: //'; }
render() { # SRC DST KEY=VAL...
  local src=$1 dst=$2 kv expr=(-e "s|@RUN@|$RUN|g"); shift 2
  for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${expr[@]}" "$HERE/conf/$src" >"$RUN/conf/$dst"
}

# ---------------------------------------------------------------- start origins, peers, extras
need_ports=($ORIGIN_A $ORIGIN_B $STATUS_A $STATUS_B)
for n in "${TARGETS[@]}"; do
  [[ -n ${B_PORT[$n]:-} ]] && need_ports+=("${B_PORT[$n]}")
  [[ $n == envoy ]] && need_ports+=(19031)
  [[ $n == envoy-mirror ]] && need_ports+=(19033)
done
for i in "${!EXTRA_NAMES[@]}"; do [[ -n ${EXTRA_CMDS[$i]} ]] && need_ports+=("$(url_port "${EXTRA_URLS[$i]}")"); done
for p in "${need_ports[@]}"; do
  port_busy "$p" && die "port $p is already in use (a leftover run? see its pids file under the results directory): $(ss -ltnpH "sport = :$p")"
done

render origin-a.conf origin-a.conf; render origin-b.conf origin-b.conf
start_proc origin-a "$ORIGIN_CPU" "$NGINX" -e "$RUN/logs/origin-a.err" -c "$RUN/conf/origin-a.conf"
start_proc origin-b "$ORIGIN_CPU" "$NGINX" -e "$RUN/logs/origin-b.err" -c "$RUN/conf/origin-b.conf"
for n in "${TARGETS[@]}"; do
  [[ -n ${B_PORT[$n]:-} ]] || continue
  cls=CPU_CLASS_${B_CLASS[$n]}; cpus=${!cls}; port=${B_PORT[$n]}
  case $n in
    direct) TPID[$n]=${TPID[origin-a]} ;;
    nginx-proxy|nginx-proxy-auto)
      w=1; [[ $n == nginx-proxy-auto ]] && w=auto
      render nginx-proxy.conf "$n.conf" NAME="$n" PORT="$port" WORKERS="$w"
      start_proc "$n" "$cpus" "$NGINX" -e "$RUN/logs/$n.err" -c "$RUN/conf/$n.conf" ;;
    nginx-mirror)
      render nginx-mirror.conf "$n.conf" NAME="$n" PORT="$port"
      start_proc "$n" "$cpus" "$NGINX" -e "$RUN/logs/$n.err" -c "$RUN/conf/$n.conf" ;;
    haproxy|haproxy-2t)
      t=1; [[ $n == haproxy-2t ]] && t=2
      render haproxy.cfg "$n.cfg" PORT="$port" NBTHREAD="$t"
      start_proc "$n" "$cpus" "$HAPROXY" -db -f "$RUN/conf/$n.cfg" ;;
    envoy|envoy-mirror)
      m=""; [[ $n == envoy-mirror ]] && m=", request_mirror_policies: [ { cluster: origin_b } ]"
      render envoy.yaml "$n.yaml" PORT="$port" ADMIN="$((port + 1))" MIRROR="$m"
      start_proc "$n" "$cpus" "$ENVOY" -c "$RUN/conf/$n.yaml" --concurrency 1 --disable-hot-restart \
        -l error --log-path "$RUN/logs/$n.log" ;;
    traefik)
      render traefik.yaml traefik.yaml; render traefik-dynamic.yaml traefik-dynamic.yaml
      start_proc "$n" "$cpus" env GOMAXPROCS=1 "$TRAEFIK" --configFile="$RUN/conf/traefik.yaml" ;;
  esac
done
wait_port $ORIGIN_A 10 "${TPID[origin-a]}" || die "origin A did not start: $(cat "$RUN/logs/origin-a.err" "$RUN/logs/origin-a.out" 2>/dev/null)"
wait_port $ORIGIN_B 10 "${TPID[origin-b]}" || die "origin B did not start: $(cat "$RUN/logs/origin-b.err" "$RUN/logs/origin-b.out" 2>/dev/null)"
for i in "${!EXTRA_NAMES[@]}"; do
  [[ -n ${EXTRA_CMDS[$i]} ]] || continue
  cpus=$PROXY_CPU; [[ -n ${EXTRA_MULTI[$i]} ]] && cpus=$MULTI_CPUS
  start_proc "${EXTRA_NAMES[$i]}" "$cpus" bash -c "exec ${EXTRA_CMDS[$i]}"
done
for n in "${TARGETS[@]}"; do
  port=$(url_port "${TURL[$n]}")
  if [[ -n ${TPID[$n]:-} ]]; then
    wait_port "$port" 30 "${TPID[$n]}" || die "$n did not start listening on :$port; log: $(tail -5 "$RUN/logs/$n.out" 2>/dev/null)"
  else
    # an extra target started by someone else: find its PID by port (for CPU figures and pinning)
    wait_port "$port" 2 || die "$n: nothing listens on ${TURL[$n]} (start it, or use --start)"
    p=$(listening_pids "$port"); [[ -n $p ]] && TPID[$n]=$p   # e.g. nginx master + worker
  fi
  TCPUS[$n]=$( [[ -n ${TPID[$n]:-} ]] && affinity "${TPID[$n]%% *}" || echo "?")
done

# sanity: each target answers 200 and the body is origin A's (or say what it is)
ref_body=$(curl -s -m 2 "http://127.0.0.1:$ORIGIN_A$REQ_PATH")
sleep 0.3
for n in "${TARGETS[@]}"; do
  code=$(curl -s -m 5 -o "$RUN/tmp/body-$n" -w '%{http_code}' "${TURL[$n]}")
  if [[ $code != 200 ]]; then TNOTE[$n]="answered HTTP $code"
  elif [[ $(cat "$RUN/tmp/body-$n") == "$ref_body" ]]; then TNOTE[$n]="ok"
  else TNOTE[$n]="200 but body differs from origin A ($(wc -c <"$RUN/tmp/body-$n") bytes)"; fi
done

# ---------------------------------------------------------------- header
ver() { "$@" 2>&1 | head -1 | tr -s ' ' | cut -c1-90; }
{
  echo "# reverse-proxy bench  $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host $(hostname)  results $RUN"
  echo "# machine: $NCPU CPUs ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')), kernel $(uname -r), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# versions: $("$WRK" -v 2>&1 | head -1 | cut -d" " -f1-2) | $(ver "$NGINX" -v)${HAPROXY:+ | $(ver "$HAPROXY" -v)}${ENVOY:+ | envoy $("$ENVOY" --version 2>/dev/null | grep -o '/[0-9][0-9.]*/' | tr -d / | head -1)}${TRAEFIK:+ | traefik $("$TRAEFIK" version 2>/dev/null | awk '/^Version/{print $2}')}${OHA:+ | $(ver "$OHA" --version)}"
  echo "# pinning (taskset): load generator on CPU $LOADGEN_CPU, origins on CPU $ORIGIN_CPU, single-worker proxies on CPU $PROXY_CPU,"
  echo "#   multi-worker variants (nginx-proxy-auto, haproxy-2t) on CPUs $MULTI_CPUS, sharing with the load generator: compare those only with each other."
  echo "#   'direct' = wrk -> origin A on CPU $LOADGEN_CPU alone: the ceiling, since every proxied request costs the load CPU that same work."
  echo "# throughput: wrk -t$THREADS -c$CONNS, $ROUNDS rounds x ${DURATION}s; latency: wrk -t1 -c1, $LAT_ROUNDS rounds x ${LAT_DURATION}s${RATE:+; fixed rate: oha -q $RATE -c$CONNS --latency-correction, $RATE_ROUNDS rounds x ${RATE_DURATION}s}"
  echo "#   rounds interleaved (A B C A B C ...), $( ((WARMUP)) && echo "1 s warm-up per target first" || echo "no warm-up"); medians over rounds"
  echo "# targets:"
  for n in "${TARGETS[@]}"; do
    printf '#   %-17s %-32s cpus %-5s pid %-7s %s\n' "$n" "${TURL[$n]}" "${TCPUS[$n]}" "${TPID[$n]:-?}" "${B_DESC[$n]:-extra target}; check: ${TNOTE[$n]}"
  done
} | tee "$RUN/header.txt"
for n in "${TARGETS[@]}"; do
  printf '%s\t%s\t%s\t%s\t%s\n' "$n" "${TURL[$n]}" "${TCPUS[$n]}" "${B_CLASS[$n]:-extra}" "${TNOTE[$n]}" >>"$RUN/targets.tsv"
  if [[ -z ${B_PORT[$n]:-} && ${TCPUS[$n]} != "$PROXY_CPU" ]]; then
    echo "warning: $n runs on CPUs '${TCPUS[$n]}', not pinned to CPU $PROXY_CPU like the single-worker peers (start it with taskset -c $PROXY_CPU, or use --start)" | tee -a "$RUN/header.txt" >&2
  fi
done

if ((SERVE)); then
  echo "serving (origins and peers up; Ctrl-C or kill -TERM $$ stops them)"
  while :; do sleep 3600 & SLEEP_PID=$!; wait "$SLEEP_PID"; done   # wait, unlike sleep, lets the trap run at once
fi

# ---------------------------------------------------------------- measuring
CLK_TCK=$(getconf CLK_TCK)
LUA=$HERE/lib/wrk-report.lua
tree_ticks() { # PID... -> utime+stime of those processes and their descendants, in clock ticks
  local t=0 p q s f
  for q in $(for p in "$@"; do descendants "$p"; done | sort -un); do
    s=$(cat "/proc/$q/stat" 2>/dev/null) || continue
    read -ra f <<<"${s##*) }"; t=$((t + f[11] + f[12]))
  done
  echo "$t"
}
cpu_stat() { # busy total for the load CPU and the proxy CPU, then steal and total over all CPUs
  awk -v a="cpu$LOADGEN_CPU" -v b="cpu$PROXY_CPU" '
    $1 ~ /^cpu[0-9]*$/ { tot = $2+$3+$4+$5+$6+$7+$8+$9; busy = tot-$5-$6-$9 }
    $1 == a { ab = busy; at = tot } $1 == b { bb = busy; bt = tot } $1 == "cpu" { st = $9; t = tot }
    END { print ab, at, bb, bt, st, t }' /proc/stat
}
origin_count() { curl -s -m 2 "http://127.0.0.1:$1/" | awk 'NR == 3 { print $3 }'; }
RAW=$RUN/raw.tsv
echo -e "phase\tround\ttarget\trequests\tduration_us\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\tmean_us\terrors\tnon2xx\twall_ns\tproc_ticks\tclk_tck\tlg_busy\tlg_total\tpx_busy\tpx_total\tsteal\ttotal\torigin_a\torigin_b\ttarget_rate" >"$RAW"

measure() { # PHASE ROUND NAME
  local phase=$1 round=$2 n=$3 url=${TURL[$3]} pid=${TPID[$3]:-} out r
  local a0 b0 t0=0 t1=0 c0 c1 w0 w1
  a0=$(origin_count $STATUS_A); b0=$(origin_count $STATUS_B)
  [[ -n $pid ]] && t0=$(tree_ticks $pid); c0=$(cpu_stat); w0=$(date +%s%N)
  case $phase in
    warmup) out=$(taskset -c "$LOADGEN_CPU" "$WRK" -t"$THREADS" -c"$CONNS" -d1s -s "$LUA" "$url" 2>&1) ;;
    tput) out=$(taskset -c "$LOADGEN_CPU" "$WRK" -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$LUA" "$url" 2>&1) ;;
    lat) out=$(taskset -c "$LOADGEN_CPU" "$WRK" -t1 -c1 -d"${LAT_DURATION}s" -s "$LUA" "$url" 2>&1) ;;
    rate) out=$(taskset -c "$LOADGEN_CPU" "$OHA" --no-tui --output-format json --worker-threads 1 -w \
                  -q "$RATE" --latency-correction -c "$CONNS" -z "${RATE_DURATION}s" "$url" 2>&1) ;;
  esac
  w1=$(date +%s%N); c1=$(cpu_stat); [[ -n $pid ]] && t1=$(tree_ticks $pid)
  local a1 b1; a1=$(origin_count $STATUS_A); b1=$(origin_count $STATUS_B)
  printf '=== %s round %s %s %s\n%s\n' "$phase" "$round" "$n" "$url" "$out" >>"$RUN/logs/loadgen-$phase.log"
  [[ $phase == warmup ]] && return
  if [[ $phase == rate ]]; then
    r=$(python3 "$HERE/lib/oha_row.py" <<<"$out") || r=""
  else
    r=$(grep '^WRKRESULT' <<<"$out" | awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", v["requests"], v["duration_us"], v["p50_us"], v["p90_us"], v["p99_us"],
                 v["p999_us"], v["max_us"], v["mean_us"], v["err_connect"] + v["err_read"] + v["err_write"] + v["err_timeout"], v["err_status"] }')
  fi
  if [[ -z $r ]]; then
    echo "warning: no result from the load generator for $n ($phase round $round); see $RUN/logs/loadgen-$phase.log" >&2
    return
  fi
  local c; read -ra c0 <<<"$c0"; read -ra c1 <<<"$c1"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$round" "$n" "$r" \
    "$((w1 - w0))" "$([[ -n $pid ]] && echo $((t1 - t0)) || echo "")" "$CLK_TCK" \
    "$((c1[0] - c0[0]))" "$((c1[1] - c0[1]))" "$((c1[2] - c0[2]))" "$((c1[3] - c0[3]))" "$((c1[4] - c0[4]))" "$((c1[5] - c0[5]))" \
    "$((a1 - a0 - 1))" "$((b1 - b0 - 1))" "${RATE:-}" >>"$RAW"
}
run_phase() { # PHASE ROUNDS LABEL
  local r n
  for ((r = 1; r <= $2; r++)); do
    printf '%s round %d/%d:' "$3" "$r" "$2" >&2
    for n in "${TARGETS[@]}"; do printf ' %s' "$n" >&2; measure "$1" "$r" "$n"; done
    echo >&2
  done
}
((WARMUP)) && run_phase warmup 1 "warm-up (1 s each)"
run_phase tput "$ROUNDS" "throughput"
((LAT_ROUNDS > 0)) && run_phase lat "$LAT_ROUNDS" "latency (1 connection)"
[[ -n $RATE ]] && ((RATE_ROUNDS > 0)) && run_phase rate "$RATE_ROUNDS" "fixed rate $RATE/s (oha)"
echo
python3 "$HERE/lib/summarize.py" "$RUN" | tee "$RUN/summary.txt"
cat "$RUN/header.txt" "$RUN/summary.txt" >"$RUN/report.txt"
echo "(full report: $RUN/report.txt; raw rows: $RUN/raw.tsv; load-generator output: $RUN/logs/)"
