#!/usr/bin/env bash
# benches/keepalive.sh - idle HTTP/1.1 keep-alive connections through auth-sidecar and
# through nginx `proxy_pass` (long polls between polls, chat clients between requests).
#
# KA_N (6000) connections from 127.0.0.2..127.0.0.5 each send one request with the RS256
# token, read the 200 and stay open and idle (benches/keepalive.py). Reported: RSS per
# connection ((RSS with all open - RSS before) / opened, the proxy's process group) and
# the proxy's CPU over IDLE_S (5) s with all of them open. A fresh proxy per target and
# round; the backend is the nginx `200 ok` of the other benchmarks.
#
#   benches/keepalive.sh
#   KA_N=1000 ROUNDS=1 benches/keepalive.sh                     # quick look
#   CAND_BIN=/path/to/other/auth-sidecar benches/keepalive.sh   # A/B: also a `cand` row
set -uo pipefail
LOG_TAG=keepalive
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KA_N=${KA_N:-6000}
IDLE_S=${IDLE_S:-5}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-18650}
CAND_BIN=${CAND_BIN:-}
export BACKEND_PORT=$BASE_PORT
if [[ -z ${BENCH_DIR:-} ]]; then BENCH_DIR=$(mktemp -d /tmp/sidecar-ka.XXXXXX); fi
export BENCH_DIR
mkdir -p "$BENCH_DIR"/{conf,logs,run,out}
CONF=$BENCH_DIR/conf LOGS=$BENCH_DIR/logs

ulimit -n 20000 2>/dev/null || true
(($(ulimit -n) >= 2 * KA_N + 1000)) || die "ulimit -n is $(ulimit -n); need $((2 * KA_N + 1000)) for KA_N=$KA_N"
need_tools nginx curl openssl python3 ss pgrep setsid timeout
build_sidecar
python3 "$BENCH_HERE/mint_tokens.py" "$BENCH_DIR" --iss "$JWT_ISSUER" --aud "$JWT_AUDIENCE" --sub "$JWT_SUB" ||
  die "token minting failed"
TOKEN=$(cat "$BENCH_DIR/token.rs256")

declare -A PORT=([backend]=$BASE_PORT [nginx]=$((BASE_PORT + 1)) [sidecar]=$((BASE_PORT + 2)) [cand]=$((BASE_PORT + 3)))
ORDER=(nginx sidecar)
[[ -n $CAND_BIN ]] && ORDER+=(cand)

backend_conf "$BASE_PORT" >"$CONF/backend.conf"
nginx_proxy_conf nginx-ka "${PORT[nginx]}" | sed -e 's/worker_connections 8192;/worker_connections 20000;/' \
  -e 's/^worker_processes 1;/worker_processes 1;\nworker_rlimit_nofile 20000;/' >"$CONF/nginx-ka.conf"
for k in sidecar cand; do
  sidecar_conf "${PORT[$k]}" "$((PORT[$k] + 10))" rs256 100000 >"$CONF/$k.toml"
done

start_proc backend "$LOGS/backend.out" nginx -p "$BENCH_DIR/run" -e "$LOGS/backend.err" -c "$CONF/backend.conf"
wait_http backend "$BASE_PORT" 10 || die "backend did not start"

start() { # start KEY : a fresh proxy that answers a request with the token
  local key=$1 port=${PORT[$1]}
  for ((i = 0; i < 100; i++)); do port_free "$port" && break; sleep 0.1; done
  port_free "$port" || die "port $port is busy (set BASE_PORT)"
  case $key in
    nginx) start_proc nginx "$LOGS/nginx.out" nginx -p "$BENCH_DIR/run" -e "$LOGS/nginx.err" -c "$CONF/nginx-ka.conf" ;;
    sidecar) start_proc sidecar "$LOGS/sidecar.out" env ${SIDECAR_ENV:-} "$SIDECAR_BIN" --config "$CONF/sidecar.toml" ;;
    cand) start_proc cand "$LOGS/cand.out" env ${CAND_ENV:-} "$CAND_BIN" --config "$CONF/cand.toml" ;;
  esac
  for ((i = 0; i < 100; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H "Authorization: Bearer $TOKEN" \
      "http://127.0.0.1:$port/") == 200 ]] && return 0
    pgrep -g "${P_PID[$key]}" >/dev/null 2>&1 || break
    sleep 0.1
  done
  die "$key: no 200 through :$port (see $LOGS)"
}

IDLE=$BENCH_DIR/idle.tsv
printf 'target\tround\tKiB/conn\tRSS before MiB\tRSS open MiB\tidle CPU %%\topened\n' >"$IDLE"
log "$ROUNDS round(s): $KA_N idle keep-alive connections (${IDLE_S}s): ${ORDER[*]}"
for ((round = 1; round <= ROUNDS; round++)); do
  for k in "${ORDER[@]}"; do
    start "$k"
    sleep 1
    out=$BENCH_DIR/out/idle.$k.r$round.txt
    idle_round "$k" "$round" "$IDLE" "$out" \
      python3 "$BENCH_HERE/keepalive.py" "${PORT[$k]}" "$KA_N" "$TOKEN" $((IDLE_S + 30))
    log "round $round $k: ${IDLE_OPENED:-0}/$KA_N open, $IDLE_KIB KiB/conn, RSS $((IDLE_R0 / 1024)) -> $((IDLE_R1 / 1024)) MiB, idle CPU $IDLE_CPU %"
    grep -v '^OPEN' "$out" | head -3 >&2
    stop "$k" 5
  done
done

specs=("KiB/conn:sidecar<=nginx:1.0")
[[ -n $CAND_BIN ]] && specs+=("KiB/conn:cand<=sidecar:1.0")
python3 "$BENCH_HERE/rounds.py" "$IDLE" "Idle HTTP/1.1 keep-alive connections: $KA_N, one request each, ${IDLE_S} s idle" \
  "Medians of $ROUNDS round(s), a fresh proxy each; KiB/conn = (RSS with all open - RSS before) / opened, the proxy's process group; idle CPU % of one core over ${IDLE_S} s with all open." \
  "${specs[@]}" | tee "$BENCH_DIR/report.md"
log "report: $BENCH_DIR/report.md"
