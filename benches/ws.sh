#!/usr/bin/env bash
# benches/ws.sh - WebSockets through auth-sidecar and through nginx, to one echo backend
# (benches/ws_bench.rs `echo`, a tokio-tungstenite server).
#
#   idle:  WS_N (8000) upgraded connections opened at once through the proxy (client
#          sockets spread over 127.0.0.2..127.0.0.5), one echo each, then left idle:
#          RSS per connection ((RSS with all open - RSS before) / WS_N, the proxy's
#          process group) and the proxy's CPU over IDLE_S (10) s with all of them open.
#   msgs:  WS_CONNS (32) connections, each sending a 32-byte binary message and waiting
#          for its echo, for DURATION s: messages per second and CPU µs per message.
#
# Each round starts every proxy afresh (so the RSS before is a fresh process's, not
# the allocator's high-water mark of the previous round), runs idle then msgs on each
# target in turn, and stops it. The sidecar runs RS256 (the token in Authorization),
# worker_threads = 1; nginx 1 worker with worker_connections and worker_rlimit_nofile
# raised for 16 000 sockets. Needs `ulimit -n` >= 20000 (raised here when allowed).
#
#   benches/ws.sh
#   WS_N=1000 IDLE_S=3 DURATION=3 ROUNDS=1 benches/ws.sh     # quick look
#   CAND_BIN=/path/to/other/auth-sidecar benches/ws.sh        # A/B: also a `cand` row
set -uo pipefail
LOG_TAG=ws
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WS_N=${WS_N:-8000}
IDLE_S=${IDLE_S:-10}
WS_CONNS=${WS_CONNS:-32}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-18450}
CAND_BIN=${CAND_BIN:-}
WS_BIN=${WS_BIN:-$ROOT/target/release/examples/ws_bench}
export BACKEND_PORT=$BASE_PORT
if [[ -z ${BENCH_DIR:-} ]]; then BENCH_DIR=$(mktemp -d /tmp/sidecar-ws.XXXXXX); fi
export BENCH_DIR
mkdir -p "$BENCH_DIR"/{conf,logs,run,out}
CONF=$BENCH_DIR/conf LOGS=$BENCH_DIR/logs

ulimit -n 20000 2>/dev/null || true
(($(ulimit -n) >= 2 * WS_N + 1000)) || die "ulimit -n is $(ulimit -n); need $((2 * WS_N + 1000)) for WS_N=$WS_N"
need_tools nginx curl openssl python3 ss pgrep setsid timeout
build_sidecar
build_example ws_bench
python3 "$BENCH_HERE/mint_tokens.py" "$BENCH_DIR" --iss "$JWT_ISSUER" --aud "$JWT_AUDIENCE" --sub "$JWT_SUB" ||
  die "token minting failed"
TOKEN=$(cat "$BENCH_DIR/token.rs256")

declare -A PORT=([echo]=$BASE_PORT [nginx]=$((BASE_PORT + 1)) [sidecar]=$((BASE_PORT + 2)) [cand]=$((BASE_PORT + 3)))
ORDER=(nginx sidecar)
[[ -n $CAND_BIN ]] && ORDER+=(cand)

{
  nginx_common nginx-ws
  cat <<EOF
  upstream backend {
    server 127.0.0.1:$BASE_PORT;
  }
  server {
    listen 127.0.0.1:${PORT[nginx]} backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
EOF
} | sed -e 's/worker_connections 8192;/worker_connections 20000;/' \
  -e 's/^worker_processes 1;/worker_processes 1;\nworker_rlimit_nofile 20000;/' >"$CONF/nginx-ws.conf"
for k in sidecar cand; do
  sidecar_conf "${PORT[$k]}" "$((PORT[$k] + 10))" rs256 100000 >"$CONF/$k.toml"
done

start_proc echo "$LOGS/echo.out" "$WS_BIN" echo "127.0.0.1:$BASE_PORT"
for ((i = 0; i < 100; i++)); do ! port_free "$BASE_PORT" && break; sleep 0.1; done
port_free "$BASE_PORT" && die "echo backend did not start (see $LOGS/echo.out)"

start() { # start KEY : a fresh proxy, answering a WebSocket echo
  local key=$1 port=${PORT[$1]}
  for ((i = 0; i < 100; i++)); do port_free "$port" && break; sleep 0.1; done
  port_free "$port" || die "port $port is busy (set BASE_PORT)"
  case $key in
    nginx) start_proc nginx "$LOGS/nginx.out" nginx -p "$BENCH_DIR/run" -e "$LOGS/nginx.err" -c "$CONF/nginx-ws.conf" ;;
    sidecar) start_proc sidecar "$LOGS/sidecar.out" env ${SIDECAR_ENV:-} "$SIDECAR_BIN" --config "$CONF/sidecar.toml" ;;
    cand) start_proc cand "$LOGS/cand.out" env ${CAND_ENV:-} "$CAND_BIN" --config "$CONF/cand.toml" ;;
  esac
  for ((i = 0; i < 300; i++)); do
    if WS_SOURCES=127.0.0.2 timeout 5 "$WS_BIN" idle "ws://127.0.0.1:$port/ws" 1 0 "$TOKEN" 2>/dev/null | grep -q '^OPEN 1 ECHOED 1'; then
      return 0
    fi
    pgrep -g "${P_PID[$key]}" >/dev/null 2>&1 || break
    sleep 0.1
  done
  die "$key: no WebSocket echo through :$port (see $LOGS)"
}

IDLE=$BENCH_DIR/idle.tsv MSGS=$BENCH_DIR/msgs.tsv
printf 'target\tround\tKiB/conn\tRSS before MiB\tRSS open MiB\tidle CPU %%\topened\n' >"$IDLE"
printf 'target\tround\tmsgs/s\tCPU µs/msg\tCPU %%\terrors\n' >"$MSGS"
log "$ROUNDS round(s): idle $WS_N connections (${IDLE_S}s), then echo $WS_CONNS conns x ${DURATION}s: ${ORDER[*]}"
for ((round = 1; round <= ROUNDS; round++)); do
  for k in "${ORDER[@]}"; do
    start "$k"
    url="ws://127.0.0.1:${PORT[$k]}/ws"
    sleep 1
    out=$BENCH_DIR/out/idle.$k.r$round.txt
    idle_round "$k" "$round" "$IDLE" "$out" "$WS_BIN" idle "$url" "$WS_N" $((IDLE_S + 30)) "$TOKEN"
    log "round $round $k idle: ${IDLE_OPENED:-0}/$WS_N open (echoed: $(awk '/^OPEN/{print $4}' "$out")), $IDLE_KIB KiB/conn, RSS $((IDLE_R0 / 1024)) -> $((IDLE_R1 / 1024)) MiB, idle CPU $IDLE_CPU %"
    grep -v '^OPEN' "$out" | head -3 >&2
    sleep 2
    out=$BENCH_DIR/out/msgs.$k.r$round.txt
    c0=$(cpu_ticks "$k")
    timeout $((DURATION + 90)) "$WS_BIN" load "$url" "$WS_CONNS" "$DURATION" "$TOKEN" >"$out" 2>&1
    c1=$(cpu_ticks "$k")
    read -r n rate errs < <(awk '/^MSGS/{print $2, $6, $8}' "$out")
    us=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${n:-0}" 'BEGIN{ if (n > 0) printf "%.2f", d / hz * 1e6 / n; else print 0 }')
    pct=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN{printf "%.0f", d / hz / s * 100}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$round" "${rate:-0}" "$us" "$pct" "${errs:-0}" >>"$MSGS"
    log "round $round $k msgs: ${rate:-?} msg/s, $us µs/msg, cpu $pct %, errors ${errs:-?}"
    stop "$k" 5
  done
done

ispecs=("KiB/conn:sidecar<=nginx:1.0") mspecs=("msgs/s:sidecar>=nginx:1.0")
[[ -n $CAND_BIN ]] && ispecs+=("KiB/conn:cand<=sidecar:1.0") mspecs+=("msgs/s:cand>=sidecar:1.0" "CPU µs/msg:cand<=sidecar:1.0")
{
  python3 "$BENCH_HERE/rounds.py" "$IDLE" "Idle WebSockets: $WS_N upgraded connections, ${IDLE_S} s idle" \
    "Medians of $ROUNDS round(s), a fresh proxy each; KiB/conn = (RSS with all open - RSS before) / opened, the proxy's process group; idle CPU % of one core over ${IDLE_S} s with all open (target < 1 %)." \
    "${ispecs[@]}"
  python3 "$BENCH_HERE/rounds.py" "$MSGS" "WebSocket messages: $WS_CONNS connections, 32-byte echo, ${DURATION} s" \
    "Medians of $ROUNDS interleaved round(s); each connection sends one message and waits for its echo (one client thread)." \
    "${mspecs[@]}"
} | tee "$BENCH_DIR/report.md"
log "report: $BENCH_DIR/report.md"
