#!/usr/bin/env bash
# benches/profile.sh - where the sidecar spends its time per request.
#
# Starts the backend and one sidecar (worker_threads = 1) and profiles a bounded load:
#   TOOL=callgrind (default): the sidecar runs under valgrind --tool=callgrind with
#     instrumentation off; after a warm-up it is switched on for PROFILE_S seconds of wrk
#     load, dumped, and the report gives instructions per request by function
#     (inclusive and exclusive). Deterministic; user space only.
#   TOOL=perf: `perf record -e cpu-clock -g` on the running sidecar for PROFILE_S seconds
#     (a software clock: works in VMs without hardware counters); includes the kernel.
# WORKLOAD=same (one repeated token: cache hits) or distinct (a token per request,
# cache_capacity 16); ALG=rs256|hs256.
#
#   benches/profile.sh                                  # callgrind, RS256, repeated token
#   WORKLOAD=distinct benches/profile.sh
#   TOOL=perf PROFILE_S=10 benches/profile.sh
set -uo pipefail
LOG_TAG=profile
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TOOL=${TOOL:-callgrind}
WORKLOAD=${WORKLOAD:-same}
ALG=${ALG:-rs256}
PROFILE_S=${PROFILE_S:-10}
CONNS=${CONNS:-8}
BASE_PORT=${BASE_PORT:-18370}
export BACKEND_PORT=$BASE_PORT
SIDECAR_PORT=$((BASE_PORT + 1)) ADMIN_PORT=$((BASE_PORT + 2))

if [[ -z ${BENCH_DIR:-} ]]; then BENCH_DIR=$(mktemp -d /tmp/sidecar-prof.XXXXXX); fi
export BENCH_DIR
mkdir -p "$BENCH_DIR"/{conf,logs,run,wrk}
need_tools nginx wrk curl openssl python3 ss pgrep setsid timeout
case $TOOL in
  callgrind) need_tools valgrind ;;
  perf) command -v perf >/dev/null || need_tools linux-perf ;;
  *) die "TOOL must be callgrind or perf" ;;
esac
build_sidecar
for p in "$BACKEND_PORT" "$SIDECAR_PORT" "$ADMIN_PORT"; do port_free "$p" || die "port $p is busy (set BASE_PORT)"; done

margs=("$BENCH_DIR" --iss "$JWT_ISSUER" --aud "$JWT_AUDIENCE" --sub "$JWT_SUB")
[[ $WORKLOAD == distinct ]] && { need_cryptography; margs+=(--distinct 20000 --distinct-algs "$ALG"); }
python3 "$BENCH_HERE/mint_tokens.py" "${margs[@]}" || die "token minting failed"
cap=100000; [[ $WORKLOAD == distinct ]] && cap=16
backend_conf "$BACKEND_PORT" >"$BENCH_DIR/conf/nginx-backend.conf"
sidecar_conf "$SIDECAR_PORT" "$ADMIN_PORT" "$ALG" "$cap" >"$BENCH_DIR/conf/sidecar.toml"
# EXTRA_CONF: a TOML file appended to the config (e.g. a [tracing] section to price).
[[ -n ${EXTRA_CONF:-} ]] && cat "$EXTRA_CONF" >>"$BENCH_DIR/conf/sidecar.toml"
start_proc backend "$BENCH_DIR/logs/backend.out" nginx -p "$BENCH_DIR/run" -e "$BENCH_DIR/logs/backend.err" \
  -c "$BENCH_DIR/conf/nginx-backend.conf"
wait_http backend "$BACKEND_PORT" 15 || die "backend did not start"

OUT=$BENCH_DIR/callgrind.out
if [[ $TOOL == callgrind ]]; then
  start_proc sidecar "$BENCH_DIR/logs/sidecar.out" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$OUT" "$SIDECAR_BIN" --config "$BENCH_DIR/conf/sidecar.toml"
  wait_http sidecar "$SIDECAR_PORT" 120 || die "sidecar did not start under valgrind"
else
  start_proc sidecar "$BENCH_DIR/logs/sidecar.out" env ${SIDECAR_ENV:-} "$SIDECAR_BIN" --config "$BENCH_DIR/conf/sidecar.toml"
  wait_http sidecar "$SIDECAR_PORT" 30 || die "sidecar did not start"
fi
SPID=$(pgrep -g "${P_PID[sidecar]}" | head -n 1)

load() { # load SECONDS OUTFILE
  local a
  if [[ $WORKLOAD == distinct ]]; then
    a=(-s "$BENCH_HERE/distinct.lua" "http://127.0.0.1:$SIDECAR_PORT/" -- "$BENCH_DIR/tokens.distinct.$ALG.txt")
  else
    a=(-H "Authorization: Bearer $(cat "$BENCH_DIR/token.$ALG")" "http://127.0.0.1:$SIDECAR_PORT/")
  fi
  timeout $(($1 + 30)) wrk -t1 -c"$CONNS" -d"${1}s" "${a[@]}" >"$2" 2>&1
}
log "warm-up 2s"
load 2 /dev/null
if [[ $TOOL == callgrind ]]; then
  callgrind_control -i on "$SPID" >/dev/null || die "callgrind_control failed"
  load "$PROFILE_S" "$BENCH_DIR/wrk/profile.txt"
  callgrind_control -i off "$SPID" >/dev/null
  callgrind_control -d "$SPID" >/dev/null
  sleep 1
  wrk_all_2xx "$BENCH_DIR/wrk/profile.txt" || die "not every response was 2xx; the profile would be of errors"
  REQS=$(awk '/requests in/{print $1}' "$BENCH_DIR/wrk/profile.txt")
  DUMP=$(ls -t "$OUT"* | head -n 1)
  TOTAL=$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(/,/,"",$1); print $1; exit}')
  {
    echo "### callgrind: $ALG, workload=$WORKLOAD, ${REQS} requests in ${PROFILE_S}s under valgrind (c=$CONNS)"
    echo
    awk -v t="$TOTAL" -v r="$REQS" 'BEGIN{printf "instructions per request (user space, sidecar process): %.0f\n\n", t/r}'
    echo '#### inclusive (top 45)'
    echo '```'
    callgrind_annotate --inclusive=yes --threshold=100 "$DUMP" 2>/dev/null | sed -n '/^Ir/,$p' | head -n 50
    echo '```'
    echo '#### exclusive (top 40)'
    echo '```'
    callgrind_annotate --threshold=100 "$DUMP" 2>/dev/null | sed -n '/^Ir/,$p' | head -n 45
    echo '```'
  } | tee "$BENCH_DIR/profile.md"
  log "callgrind data: $DUMP (callgrind_annotate / kcachegrind)"
else
  load "$((PROFILE_S + 2))" "$BENCH_DIR/wrk/profile.txt" &
  WRK_PID=$!
  sleep 1
  timeout $((PROFILE_S + 20)) perf record -e cpu-clock -F 2000 -g -p "$SPID" -o "$BENCH_DIR/perf.data" -- sleep "$PROFILE_S" >/dev/null 2>&1
  wait "$WRK_PID"; WRK_PID=""
  wrk_all_2xx "$BENCH_DIR/wrk/profile.txt" || die "not every response was 2xx; the profile would be of errors"
  {
    echo "### perf cpu-clock: $ALG, workload=$WORKLOAD, c=$CONNS"
    echo '```'
    grep -E 'Requests/sec|Latency' "$BENCH_DIR/wrk/profile.txt"
    perf report -i "$BENCH_DIR/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
      grep -v '^#' | grep -E '^ +[0-9]' | head -n 45
    echo '```'
  } | tee "$BENCH_DIR/profile.md"
fi
