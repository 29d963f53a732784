#!/usr/bin/env bash
# benches/h2.sh - HTTP/2 clients: h2load (one thread, H2_CONNS connections x H2_STREAMS
# streams, cleartext h2 with prior knowledge) against auth-sidecar (RS256, repeated token,
# worker_threads = 1), nginx (`listen ... http2`, 1 worker, proxy_pass) and Envoy (h2
# listener, no jwt_authn, --concurrency 1), all in front of the same HTTP/1.1 backend
# (nginx `200 ok`), in interleaved rounds. Reports req/s and CPU µs per request, with
# ratios per round.
#
#   benches/h2.sh
#   DURATION=3 ROUNDS=1 WARMUP=1 benches/h2.sh      # quick look
#   CAND_BIN=/path/to/other/auth-sidecar benches/h2.sh   # A/B: also a `cand` row
set -uo pipefail
LOG_TAG=h2
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
H2_CONNS=${H2_CONNS:-32}
H2_STREAMS=${H2_STREAMS:-10}
BASE_PORT=${BASE_PORT:-18400}
CAND_BIN=${CAND_BIN:-}
export BACKEND_PORT=$BASE_PORT
if [[ -z ${BENCH_DIR:-} ]]; then BENCH_DIR=$(mktemp -d /tmp/sidecar-h2.XXXXXX); fi
export BENCH_DIR
mkdir -p "$BENCH_DIR"/{conf,logs,run,out}
CONF=$BENCH_DIR/conf LOGS=$BENCH_DIR/logs

need_tools nginx curl openssl python3 ss pgrep setsid timeout
command -v h2load >/dev/null || need_tools nghttp2-client
command -v h2load >/dev/null || die "missing h2load (apt-get install nghttp2-client)"
build_sidecar
ENVOY_OK=0
if find_envoy; then ENVOY_OK=1; else log "skipping envoy: $ENVOY_NOTE"; fi

python3 "$BENCH_HERE/mint_tokens.py" "$BENCH_DIR" --iss "$JWT_ISSUER" --aud "$JWT_AUDIENCE" --sub "$JWT_SUB" ||
  die "token minting failed"
TOKEN=$(cat "$BENCH_DIR/token.rs256")

declare -A PORT=([backend]=$BASE_PORT [nginx]=$((BASE_PORT + 1)) [envoy]=$((BASE_PORT + 2))
  [sidecar]=$((BASE_PORT + 3)) [cand]=$((BASE_PORT + 4)))
ORDER=(nginx)
[[ $ENVOY_OK == 1 ]] && ORDER+=(envoy)
ORDER+=(sidecar)
[[ -n $CAND_BIN ]] && ORDER+=(cand)

backend_conf "$BASE_PORT" >"$CONF/backend.conf"
{
  nginx_common nginx-h2
  cat <<EOF
  upstream backend {
    server 127.0.0.1:$BASE_PORT;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:${PORT[nginx]} http2 backlog=4096;
    http2_max_concurrent_streams 256;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} >"$CONF/nginx-h2.conf"
cat >"$CONF/envoy.yaml" <<EOF
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: ${PORT[envoy]}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          http2_protocol_options: {max_concurrent_streams: 256}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: backend}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $BASE_PORT}}}
EOF

start() { # start KEY
  local key=$1 port=${PORT[$1]}
  port_free "$port" || die "port $port is busy (set BASE_PORT)"
  case $key in
    backend) start_proc backend "$LOGS/backend.out" nginx -p "$BENCH_DIR/run" -e "$LOGS/backend.err" -c "$CONF/backend.conf" ;;
    nginx) start_proc nginx "$LOGS/nginx.out" nginx -p "$BENCH_DIR/run" -e "$LOGS/nginx.err" -c "$CONF/nginx-h2.conf" ;;
    envoy) start_proc envoy "$LOGS/envoy.out" "$ENVOY_BIN" -c "$CONF/envoy.yaml" --concurrency 1 \
      --disable-hot-restart -l warning --log-path "$LOGS/envoy.log" ;;
    sidecar | cand)
      local bin=$SIDECAR_BIN
      [[ $key == cand ]] && bin=$CAND_BIN
      sidecar_conf "$port" "$((port + 10))" rs256 100000 >"$CONF/$key.toml"
      start_proc "$key" "$LOGS/$key.out" env ${SIDECAR_ENV:-} "$bin" --config "$CONF/$key.toml" ;;
  esac
  if [[ $key == backend ]]; then
    wait_http "$key" "$port" 20 || die "$key did not start (see $LOGS)"
    return
  fi
  # h2c with prior knowledge: curl --http2-prior-knowledge must get 200 ok.
  local i r
  for ((i = 0; i < 300; i++)); do
    r=$(curl -s --http2-prior-knowledge --max-time 1 -H "Authorization: Bearer $TOKEN" \
      -w ' %{http_code} %{http_version}' "http://127.0.0.1:$port/" 2>/dev/null)
    [[ $r == "ok 200 2" ]] && return 0
    pgrep -g "${P_PID[$key]}" >/dev/null 2>&1 || break
    sleep 0.1
  done
  die "$key: no h2c 200 ok on :$port (last '$r'; see $LOGS)"
}
start backend
for k in "${ORDER[@]}"; do start "$k"; log "$k: h2c 200 ok"; done

run_h2load() { # SECONDS PORT OUT
  timeout $(($1 + 30)) h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$1" --warm-up-time=0 \
    -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$2/" >"$3" 2>&1
}
RES=$BENCH_DIR/results.tsv
printf 'target\tround\treq/s\tCPU µs/req\tCPU %%\tfailed\n' >"$RES"
log "load: h2load -t1 -c$H2_CONNS -m$H2_STREAMS, ${WARMUP}s warm-up + ${DURATION}s, $ROUNDS interleaved round(s): ${ORDER[*]}"
for ((round = 1; round <= ROUNDS; round++)); do
  for k in "${ORDER[@]}"; do
    out=$BENCH_DIR/out/$k.r$round.txt
    run_h2load "$WARMUP" "${PORT[$k]}" /dev/null
    c0=$(cpu_ticks "$k")
    run_h2load "$DURATION" "${PORT[$k]}" "$out"
    c1=$(cpu_ticks "$k")
    rps=$(awk '/^finished in/{gsub(/,/,""); print $4}' "$out")
    done_n=$(awk '/^requests:/{print $6}' "$out")
    ok2xx=$(awk '/^status codes:/{print $3}' "$out")
    # failed + errored requests, plus done ones that were not 2xx (h2load's counters can be
    # one apart at the end of a timed run, so never below 0)
    failed=$(awk -v ok="${ok2xx:-0}" '/^requests:/{n = $6 - ok; if (n < 0) n = 0; print n + $10 + $12}' "$out")
    us=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${done_n:-0}" 'BEGIN{ if (n > 0) printf "%.2f", d / hz * 1e6 / n; else print 0 }')
    pct=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN{printf "%.0f", d / hz / s * 100}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$round" "${rps:-0}" "$us" "$pct" "$failed" >>"$RES"
    log "round $round $k: ${rps:-?} req/s, $us µs/req, cpu $pct %, non-2xx/failed $failed"
  done
done

specs=("req/s:sidecar>=envoy:1.0" "req/s:sidecar>=nginx:1.0" "CPU µs/req:sidecar<=envoy:1.0")
[[ -n $CAND_BIN ]] && specs+=("req/s:cand>=sidecar:1.0" "CPU µs/req:cand<=sidecar:1.0")
python3 "$BENCH_HERE/rounds.py" "$RES" "HTTP/2 clients: h2load -t1 -c$H2_CONNS -m$H2_STREAMS, HTTP/1.1 backend" \
  "Medians of $ROUNDS interleaved round(s) of ${WARMUP} s warm-up + ${DURATION} s; sidecar RS256 (repeated token, worker_threads = 1), nginx 1 worker proxy_pass, Envoy --concurrency 1 without jwt_authn. CPU: the proxy's process group." \
  "${specs[@]}" | tee "$BENCH_DIR/report.md"
log "report: $BENCH_DIR/report.md"
