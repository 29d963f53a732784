#!/usr/bin/env bash
# benches/run.sh - auth-sidecar against nginx, HAProxy and Envoy on loopback.
#
# Starts one backend (nginx, 1 worker, `200 ok`), the peers (nginx proxy_pass, HAProxy
# and Envoy verifying JWTs) and auth-sidecar (worker_threads = 1), each with ONE worker;
# checks each one's behaviour (valid 200, bad tokens 401, spoofed identity replaced);
# then loads them with wrk (-t1) in interleaved rounds and prints medians: req/s, p50/p99,
# CPU us/request, idle and loaded RSS, ratios to the backend and to nginx, and the
# project's performance targets with verdicts.
#
# Workloads (a target's name says which):
#   NAME            one repeated token (the sidecar serves it from its verify cache)
#   NAME-distinct   a different token per request (benches/distinct.lua cycling through
#                   DISTINCT_TOKENS pre-minted tokens). The sidecar instances for these
#                   rows run with auth.cache_capacity = DISTINCT_CACHE (far below the
#                   token count), so nearly every request is verified from scratch; the
#                   table's "cache hit %" column shows what the cache really did.
#   NAME-c1         the repeated token over LAT_CONNS (1) connection: latency
#   revoke-none     sidecar-hs256 with [revocation] configured, nothing revoked
#   revoke-10k      the same with REVOKED_USERS (10 000) other users logged out through
#                   the admin API before loading: the request path's revocation check
#                   is one hash lookup on `sub` (README "Taking a user out")
#
# Baselines and worker counts:
#   bare            benches/bare_proxy.rs: a bare hyper 1 forwarder (server +
#                   client::conn::http1, one backend connection per client connection,
#                   no auth), current-thread runtime: the floor of the sidecar's stack
#   nginx2, bare2, sidecar2-rs256 (and cand2-rs256)
#                   the same with 2 workers (worker_processes 2, BARE_WORKERS=2,
#                   worker_threads = 2); never pinned, even with PIN=1
#
#   DURATION=3 ROUNDS=1 WARMUP=1 benches/run.sh                   # quick look (~2 min)
#   TARGETS="nginx haproxy-hs256 sidecar-rs256" benches/run.sh    # a subset
#   CHECK_ONLY=1 benches/run.sh                                   # start + checks only
#   CAND_BIN=/path/to/other/auth-sidecar benches/run.sh            # A/B: also cand-* rows
#
# PIN=1 pins the load generator and the backend to CPU 0 and every proxy to CPU 1
# (taskset), so each proxy gets one whole core and saturates it: steadier for A/B
# comparisons of two sidecar builds, but not how the peers' published numbers were taken.
#
# CAND_BIN (optional) is a second sidecar build (a branch, a prototype) measured in the same
# interleaved rounds as `sidecar-*`, with CAND_ENV in its environment; its rows are named
# cand-hs256, cand-rs256, cand-*-distinct, cand-*-c1 and are added after each sidecar row
# when TARGETS is not given.
#
# Every load run is bounded (wrk -d plus timeout); every process started here runs in
# its own process group and is stopped by the EXIT trap. Scratch files, raw wrk output,
# results.tsv and report.md stay in BENCH_DIR.
set -uo pipefail
LOG_TAG=run
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
LAT_CONNS=${LAT_CONNS:-1}
ROUNDS=${ROUNDS:-3}
CHECK_ONLY=${CHECK_ONLY:-0}
DISTINCT_TOKENS=${DISTINCT_TOKENS:-20000}
DISTINCT_CACHE=${DISTINCT_CACHE:-16}
BASE_PORT=${BASE_PORT:-18300}
STARTUP_S=${STARTUP_S:-30}
REVOKED_USERS=${REVOKED_USERS:-10000}
PIN=${PIN:-0}
PIN_GEN=() PIN_PROXY=()
if [[ $PIN == 1 ]]; then PIN_GEN=(taskset -c 0) PIN_PROXY=(taskset -c 1); fi
DEFAULT_TARGETS="direct nginx bare haproxy-hs256 haproxy-rs256 envoy-hs256 envoy-rs256 sidecar-hs256 sidecar-rs256 revoke-none revoke-10k
  nginx-distinct haproxy-hs256-distinct haproxy-rs256-distinct envoy-rs256-distinct sidecar-hs256-distinct sidecar-rs256-distinct
  direct-c1 nginx-c1 bare-c1 haproxy-hs256-c1 haproxy-rs256-c1 envoy-rs256-c1 sidecar-hs256-c1 sidecar-rs256-c1
  nginx2 bare2 sidecar2-rs256"
CAND_BIN=${CAND_BIN:-}
if [[ -z ${TARGETS:-} && -n $CAND_BIN ]]; then
  TARGETS=$(for n in $DEFAULT_TARGETS; do
    echo "$n"
    [[ $n == sidecar-* ]] && echo "cand-${n#sidecar-}"
    [[ $n == sidecar2-* ]] && echo "cand2-${n#sidecar2-}"
  done)
fi
# One line, spaces only: the membership tests below match " name" (with the list built
# above one name per line, the Envoy rows were silently left out).
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
TARGETS=$(echo $TARGETS)
BARE_BIN=${BARE_BIN:-$ROOT/target/release/examples/bare_proxy}
export BACKEND_PORT=$BASE_PORT

if [[ -z ${BENCH_DIR:-} ]]; then BENCH_DIR=$(mktemp -d /tmp/sidecar-bench.XXXXXX); fi
export BENCH_DIR
mkdir -p "$BENCH_DIR"/{conf,logs,run,wrk}
CONF=$BENCH_DIR/conf LOGS=$BENCH_DIR/logs

need_tools nginx haproxy wrk curl openssl python3 ss pgrep setsid timeout
build_sidecar
if [[ " $TARGETS " == *" bare"* ]]; then build_example bare_proxy; fi

# ---------------------------------------------------------------- processes and targets
# process key -> "port admin_port kind"   (admin port only for sidecars)
declare -A PROC=(
  [backend]="$BASE_PORT - nginx"
  [nginx-proxy]="$((BASE_PORT + 1)) - nginx"
  [haproxy-hs256]="$((BASE_PORT + 2)) - haproxy"
  [haproxy-rs256]="$((BASE_PORT + 3)) - haproxy"
  [envoy-hs256]="$((BASE_PORT + 4)) - envoy"
  [envoy-rs256]="$((BASE_PORT + 5)) - envoy"
  [sidecar-hs256]="$((BASE_PORT + 10)) $((BASE_PORT + 20)) sidecar"
  [sidecar-rs256]="$((BASE_PORT + 11)) $((BASE_PORT + 21)) sidecar"
  [sidecar-hs256-nc]="$((BASE_PORT + 12)) $((BASE_PORT + 22)) sidecar"
  [sidecar-rs256-nc]="$((BASE_PORT + 13)) $((BASE_PORT + 23)) sidecar"
  [cand-hs256]="$((BASE_PORT + 14)) $((BASE_PORT + 24)) sidecar"
  [cand-rs256]="$((BASE_PORT + 15)) $((BASE_PORT + 25)) sidecar"
  [cand-hs256-nc]="$((BASE_PORT + 16)) $((BASE_PORT + 26)) sidecar"
  [cand-rs256-nc]="$((BASE_PORT + 17)) $((BASE_PORT + 27)) sidecar"
  [nginx-proxy2]="$((BASE_PORT + 6)) - nginx"
  [bare]="$((BASE_PORT + 7)) - bare"
  [bare2]="$((BASE_PORT + 8)) - bare"
  [sidecar2-rs256]="$((BASE_PORT + 18)) $((BASE_PORT + 28)) sidecar"
  [cand2-rs256]="$((BASE_PORT + 19)) $((BASE_PORT + 29)) sidecar"
  [sidecar-hs256-rv]="$((BASE_PORT + 30)) $((BASE_PORT + 40)) sidecar"
  [sidecar-hs256-rv10k]="$((BASE_PORT + 31)) $((BASE_PORT + 41)) sidecar"
)
PROC_ORDER=(backend nginx-proxy nginx-proxy2 bare bare2 haproxy-hs256 haproxy-rs256 envoy-hs256 envoy-rs256
  sidecar-hs256 sidecar-rs256 sidecar-hs256-nc sidecar-rs256-nc
  cand-hs256 cand-rs256 cand-hs256-nc cand-rs256-nc sidecar2-rs256 cand2-rs256
  sidecar-hs256-rv sidecar-hs256-rv10k)
pfield() { local a=(${PROC[$1]}); echo "${a[$2]}"; } # 0=port 1=admin 2=kind

# target -> "process-key alg auth(0/1) workload(same|distinct) conns"
target_spec() {
  local n=$1 base wl=same c=$CONNS
  case $n in
    *-distinct) base=${n%-distinct}; wl=distinct ;;
    *-c1) base=${n%-c1}; c=$LAT_CONNS ;;
    *) base=$n ;;
  esac
  local key alg auth=1
  case $base in
    direct) key=backend; alg=hs256; auth=0 ;;
    nginx) key=nginx-proxy; alg=hs256; auth=0 ;;
    nginx2) key=nginx-proxy2; alg=hs256; auth=0 ;;
    bare | bare2) key=$base; alg=hs256; auth=0 ;;
    sidecar2-rs256 | cand2-rs256)
      [[ $base == cand2-* && -z $CAND_BIN ]] && return 1
      [[ $wl == distinct ]] && return 1
      key=$base; alg=rs256 ;;
    haproxy-hs256 | haproxy-rs256 | envoy-hs256 | envoy-rs256) key=$base; alg=${base##*-} ;;
    revoke-none) key=sidecar-hs256-rv; alg=hs256 ;;
    revoke-10k) key=sidecar-hs256-rv10k; alg=hs256 ;;
    sidecar-hs256 | sidecar-rs256 | cand-hs256 | cand-rs256)
      [[ $base == cand-* && -z $CAND_BIN ]] && return 1
      alg=${base##*-}; key=$base
      [[ $wl == distinct ]] && key=$base-nc ;;
    *) return 1 ;;
  esac
  echo "$key $alg $auth $wl $c"
}

ENVOY_OK=0
if [[ " $TARGETS " == *" envoy-"* ]]; then
  if find_envoy; then ENVOY_OK=1; else log "skipping envoy targets: $ENVOY_NOTE"; fi
fi
ORDER=()
declare -A T=()
for n in $TARGETS; do
  spec=$(target_spec "$n") || die "unknown target '$n' (known: $(echo $DEFAULT_TARGETS), cand-* with CAND_BIN)"
  [[ $n == envoy-* && $ENVOY_OK == 0 ]] && continue
  T[$n]=$spec
  ORDER+=("$n")
done
((${#ORDER[@]})) || die "no targets selected"
tfield() { local a=(${T[$1]}); echo "${a[$2]}"; } # 0=key 1=alg 2=auth 3=workload 4=conns

declare -A NEED=([backend]=1)
NEED_DISTINCT=""
for n in "${ORDER[@]}"; do
  NEED[$(tfield "$n" 0)]=1
  if [[ $(tfield "$n" 3) == distinct && $NEED_DISTINCT != *$(tfield "$n" 1)* ]]; then
    NEED_DISTINCT+="$(tfield "$n" 1),"
  fi
done

# ---------------------------------------------------------------- keys and tokens
log "scratch dir: $BENCH_DIR"
[[ -n $NEED_DISTINCT ]] && need_cryptography
mint_args=("$BENCH_DIR" --iss "$JWT_ISSUER" --aud "$JWT_AUDIENCE" --sub "$JWT_SUB")
[[ -n $NEED_DISTINCT ]] && mint_args+=(--distinct "$DISTINCT_TOKENS" --distinct-algs "$NEED_DISTINCT")
python3 "$BENCH_HERE/mint_tokens.py" "${mint_args[@]}" || die "token minting failed"
HS_SECRET=$(cat "$BENCH_DIR/hs256.secret")
tok() { cat "$BENCH_DIR/token.$1"; }
tokens_file() { echo "$BENCH_DIR/tokens.distinct.$1.txt"; }

# ---------------------------------------------------------------- configs
backend_conf "$BASE_PORT" >"$CONF/nginx-backend.conf"
nginx_proxy_conf nginx-proxy "$(pfield nginx-proxy 0)" >"$CONF/nginx-proxy.conf"
# nginx2: the same proxy with 2 worker processes (its own pid/temp dir and port).
sed -e 's/^worker_processes 1;/worker_processes 2;/' -e "s|run/nginx-proxy|run/nginx-proxy2|g" \
  -e "s|logs/nginx-proxy.err|logs/nginx-proxy2.err|" \
  -e "s|listen 127.0.0.1:$(pfield nginx-proxy 0) |listen 127.0.0.1:$(pfield nginx-proxy2 0) |" \
  "$CONF/nginx-proxy.conf" >"$CONF/nginx-proxy2.conf"
mkdir -p "$BENCH_DIR/run/nginx-proxy2"

# HAProxy 2.6: jwt_verify checks the signature only; alg, exp, iss and aud are rules.
haproxy_conf() { # $1 = port, $2 = HS256|RS256, $3 = secret or PEM path
  cat <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$1
  http-request del-header X-Auth-User-Id
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer) -m found }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str $2 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("$2","$3") -m int 1 }
  http-request set-var(txn.now) date
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str $JWT_ISSUER }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str $JWT_AUDIENCE }
  http-request set-header X-Auth-User-Id %[var(txn.bearer),jwt_payload_query('\$.sub')]
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$BASE_PORT
EOF
}
haproxy_conf "$(pfield haproxy-hs256 0)" HS256 "$HS_SECRET" >"$CONF/haproxy-hs256.cfg"
haproxy_conf "$(pfield haproxy-rs256 0)" RS256 "$BENCH_DIR/rs256.pub.pem" >"$CONF/haproxy-rs256.cfg"

envoy_conf() { # $1 = port, $2 = JWKS file
  local jwks
  jwks=$(cat "$2")
  cat <<EOF
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: $1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: backend}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: "$JWT_ISSUER"
                  audiences: ["$JWT_AUDIENCE"]
                  forward: true
                  local_jwks:
                    inline_string: '$jwks'
                  claim_to_headers:
                  - header_name: X-Auth-User-Id
                    claim_name: sub
              rules:
              - match: {prefix: "/"}
                requires: {provider_name: bench}
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
}

# ---------------------------------------------------------------- start
declare -A START_FAIL=()
start_key() {
  local key=$1 port kind
  port=$(pfield "$key" 0); kind=$(pfield "$key" 2)
  port_free "$port" || die "port $port is busy (set BASE_PORT)"
  case $key in
    backend) start_proc "$key" "$LOGS/$key.out" "${PIN_GEN[@]}" nginx -p "$BENCH_DIR/run" -e "$LOGS/$key.err" -c "$CONF/nginx-backend.conf" ;;
    nginx-proxy) start_proc "$key" "$LOGS/$key.out" "${PIN_PROXY[@]}" nginx -p "$BENCH_DIR/run" -e "$LOGS/$key.err" -c "$CONF/nginx-proxy.conf" ;;
    nginx-proxy2) start_proc "$key" "$LOGS/$key.out" nginx -p "$BENCH_DIR/run" -e "$LOGS/$key.err" -c "$CONF/nginx-proxy2.conf" ;;
    bare) start_proc "$key" "$LOGS/$key.out" "${PIN_PROXY[@]}" "$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$BASE_PORT" ;;
    bare2) start_proc "$key" "$LOGS/$key.out" env BARE_WORKERS=2 "$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$BASE_PORT" ;;
    haproxy-*) start_proc "$key" "$LOGS/$key.out" "${PIN_PROXY[@]}" haproxy -db -f "$CONF/$key.cfg" ;;
    envoy-*)
      envoy_conf "$port" "$BENCH_DIR/jwks.${key#envoy-}.json" >"$CONF/$key.yaml"
      start_proc "$key" "$LOGS/$key.out" "${PIN_PROXY[@]}" "$ENVOY_BIN" -c "$CONF/$key.yaml" --concurrency 1 \
        --disable-hot-restart -l warning --log-path "$LOGS/$key.log" ;;
    sidecar-* | cand-* | sidecar2-* | cand2-*)
      local alg=${key#*-} bin=$SIDECAR_BIN envs=${SIDECAR_ENV:-} pin=("${PIN_PROXY[@]}") extra=""
      alg=${alg%-nc}; alg=${alg%-rv10k}; alg=${alg%-rv}
      if [[ $key == *-rv || $key == *-rv10k ]]; then
        [[ -f $BENCH_DIR/revoke.secret ]] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$BENCH_DIR/revoke.secret"
        printf -v extra '\n[revocation]\nadmin_secret = { file = "%s" }\nmax_token_lifetime = "1h"' "$BENCH_DIR/revoke.secret"
      fi
      [[ $key == cand* ]] && bin=$CAND_BIN envs=${CAND_ENV:-}
      local cap=100000 workers=1
      [[ $key == *-nc ]] && cap=$DISTINCT_CACHE
      [[ $key == sidecar2-* || $key == cand2-* ]] && workers=2 pin=()
      port_free "$(pfield "$key" 1)" || die "port $(pfield "$key" 1) is busy (set BASE_PORT)"
      SIDECAR_WORKERS=$workers sidecar_conf "$port" "$(pfield "$key" 1)" "$alg" "$cap" "$extra" >"$CONF/$key.toml"
      start_proc "$key" "$LOGS/$key.out" "${pin[@]}" env $envs "$bin" --config "$CONF/$key.toml" ;;
  esac
  if ! wait_http "$key" "$port" "$STARTUP_S"; then
    START_FAIL[$key]="did not answer on :$port within ${STARTUP_S}s (see $LOGS/$key.*)"
    log "$key: ${START_FAIL[$key]}"
    tail -5 "$LOGS/$key".* >&2 2>/dev/null
  elif [[ $key == *-rv10k ]]; then
    revoke_users "$(pfield "$key" 1)" "$REVOKED_USERS" || START_FAIL[$key]="revoking $REVOKED_USERS users failed"
  fi
}
# Logs REVOKED_USERS users (never the benchmark token's) out through the admin API, over
# one keep-alive connection; checks the sidecar holds them all.
revoke_users() { # ADMIN_PORT N
  python3 - "$1" "$2" "$BENCH_DIR/revoke.secret" <<'PY'
import http.client, json, sys
port, n, secret = int(sys.argv[1]), int(sys.argv[2]), open(sys.argv[3]).read().strip()
h = {"Authorization": "Bearer " + secret, "Content-Type": "application/json"}
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for i in range(n):
    c.request("POST", "/revocations/logout", json.dumps({"sub": f"revoked-user-{i}"}), h)
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"revocation {i}: {r.status}")
c.request("GET", "/revocations/bans", headers=h)
held = json.loads(c.getresponse().read())["held"]["users"]
if held != n:
    sys.exit(f"the sidecar holds {held} revoked users, want {n}")
print(f"revoked {n} users", file=sys.stderr)
PY
}
for key in "${PROC_ORDER[@]}"; do
  [[ -n ${NEED[$key]:-} ]] && start_key "$key"
done
[[ -n ${START_FAIL[backend]:-} ]] && die "backend did not start"

# ---------------------------------------------------------------- checks
req() { # req PORT PATH TOKEN-or-"" [curl args] -> "CODE BODY"
  local port=$1 path=$2 token=$3 code; shift 3
  local args=(-s --max-time 5 -o "$BENCH_DIR/body.tmp" -w '%{http_code}')
  [[ -n $token ]] && args+=(-H "Authorization: Bearer $token")
  code=$(curl "${args[@]}" "$@" "http://127.0.0.1:$port$path" 2>/dev/null)
  printf '%s %s' "${code:-000}" "$(head -c 200 "$BENCH_DIR/body.tmp" 2>/dev/null | tr -d '\r\n')"
}
declare -A CHECK=() RUNNABLE=() IDLE_RSS=()
check_target() {
  local n=$1 key port alg auth wl r fails=() passed=0 total=0 valid sub
  key=$(tfield "$n" 0); alg=$(tfield "$n" 1); auth=$(tfield "$n" 2); wl=$(tfield "$n" 3)
  port=$(pfield "$key" 0)
  if [[ -n ${START_FAIL[$key]:-} ]]; then CHECK[$n]="FAIL: ${START_FAIL[$key]}"; return; fi
  valid=$(tok "$alg"); sub=$JWT_SUB
  if [[ $wl == distinct ]]; then valid=$(head -n 1 "$(tokens_file "$alg")"); sub=user-0; fi
  r=$(req "$port" / "$valid")
  if [[ $r != "200 ok" ]]; then CHECK[$n]="FAIL: valid $alg token -> '$r' (want '200 ok')"; return; fi
  RUNNABLE[$n]=1
  if [[ $auth == 0 ]]; then CHECK[$n]="ok (no auth)"; return; fi
  expect() { # label want-regex "CODE BODY"
    total=$((total + 1))
    if [[ ${3%% *} =~ ^($2)$ ]]; then passed=$((passed + 1)); else fails+=("$1->${3%% *}"); fi
  }
  expect none 401 "$(req "$port" / "")"
  expect garbage 401 "$(req "$port" / "not.a.jwt")"
  expect badsig 401 "$(req "$port" / "$(tok "$alg.badsig")")"
  expect expired 401 "$(req "$port" / "$(tok "$alg.expired")")"
  expect wrongaud '401|403' "$(req "$port" / "$(tok "$alg.wrongaud")")"
  expect algconfusion 401 "$(req "$port" / "$(tok algconfusion)")"
  expect alg-none 401 "$(req "$port" / "$(tok none)")"
  r=$(req "$port" /__whoami "$valid" -H "X-Auth-User-Id: spoofed")
  total=$((total + 1))
  if [[ $r == "200 $sub" ]]; then passed=$((passed + 1)); else fails+=("spoofed-identity:'$r'"); fi
  if ((${#fails[@]})); then CHECK[$n]="FAIL: ${fails[*]} ($passed/$total)"; else CHECK[$n]="ok ($passed/$total)"; fi
}
for n in "${ORDER[@]}"; do
  check_target "$n"
  log "check $n: ${CHECK[$n]}"
done
for n in "${ORDER[@]}"; do
  key=$(tfield "$n" 0)
  IDLE_RSS[$n]=$( [[ -n ${P_PID[$key]:-} ]] && rss_kb "$key" || echo 0)
done

META=$BENCH_DIR/meta.tsv RES=$BENCH_DIR/results.tsv
: >"$RES"
for n in "${ORDER[@]}"; do
  printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$(tfield "$n" 3)" "$(tfield "$n" 4)" "${IDLE_RSS[$n]}" "${CHECK[$n]}"
done >"$META"
if [[ $CHECK_ONLY == 1 ]]; then
  for n in "${ORDER[@]}"; do printf '%-26s %s\n' "$n" "${CHECK[$n]}"; done
  exit 0
fi

# ---------------------------------------------------------------- load
to_ms() { # wrk latency (255.00us / 1.02ms / 1.10s) -> ms
  awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000}
                        else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0}
                        else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000}
                        else print "nan" }'
}
run_wrk() { # run_wrk SECONDS CONNS OUTFILE TARGET [--latency]
  local d=$1 c=$2 out=$3 n=$4 url alg a=()
  shift 4
  url="http://127.0.0.1:$(pfield "$(tfield "$n" 0)" 0)/"
  alg=$(tfield "$n" 1)
  if [[ $(tfield "$n" 3) == distinct ]]; then
    a=(-s "$BENCH_HERE/distinct.lua" "$url" -- "$(tokens_file "$alg")")
  else
    a=(-H "Authorization: Bearer $(tok "$alg")" "$url")
  fi
  timeout $((d + 20)) "${PIN_GEN[@]}" wrk -t1 -c"$c" -d"${d}s" "$@" "${a[@]}" >"$out" 2>&1
}
run_one() {
  local n=$1 round=$2 key conns admin out c0 c1 maxrss=0 rss h0=0 m0=0 h1=0 m1=0
  key=$(tfield "$n" 0); conns=$(tfield "$n" 4); admin=$(pfield "$key" 1)
  out=$BENCH_DIR/wrk/$n.r$round.txt
  run_wrk "$WARMUP" "$conns" /dev/null "$n"
  if [[ $admin != - ]]; then
    h0=$(metric "$admin" 'auth_sidecar_verify_cache_total{result="hit"}')
    m0=$(metric "$admin" 'auth_sidecar_verify_cache_total{result="miss"}')
  fi
  c0=$(cpu_ticks "$key")
  run_wrk "$DURATION" "$conns" "$out" "$n" --latency &
  WRK_PID=$!
  while kill -0 "$WRK_PID" 2>/dev/null; do
    sleep 1
    rss=$(rss_kb "$key"); ((rss > maxrss)) && maxrss=$rss
  done
  wait "$WRK_PID"; WRK_PID=""
  c1=$(cpu_ticks "$key")
  if [[ $admin != - ]]; then
    h1=$(metric "$admin" 'auth_sidecar_verify_cache_total{result="hit"}')
    m1=$(metric "$admin" 'auth_sidecar_verify_cache_total{result="miss"}')
  fi
  local rps reqs p50 p99 non2xx errs cpu_s
  rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
  reqs=$(awk '/requests in/{print $1}' "$out")
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$out")")
  p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$out")")
  non2xx=$(awk '/Non-2xx/{print $NF}' "$out"); non2xx=${non2xx:-0}
  errs=$(awk '/Socket errors/{gsub(/,/,""); print $4+$6+$8+$10}' "$out"); errs=${errs:-0}
  cpu_s=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN{print d/hz}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$round" "${rps:-0}" "${reqs:-0}" \
    "$p50" "$p99" "$cpu_s" "$maxrss" "$non2xx" "$errs" $((h1 - h0)) $((m1 - m0)) >>"$RES"
  log "round $round $n: ${rps:-?} req/s p50=${p50}ms p99=${p99}ms cpu=${cpu_s}s rss=${maxrss}kB non2xx=$non2xx err=$errs$(
    [[ $admin != - ]] && echo " cache hit/miss=$((h1 - h0))/$((m1 - m0))")"
}

log "load: wrk -t1, c=$CONNS (c1 rows: $LAT_CONNS), ${WARMUP}s warm-up + ${DURATION}s, $ROUNDS interleaved round(s), ${#ORDER[@]} targets"
for ((round = 1; round <= ROUNDS; round++)); do
  for n in "${ORDER[@]}"; do
    [[ -n ${RUNNABLE[$n]:-} ]] && run_one "$n" "$round"
  done
done

# ---------------------------------------------------------------- report
VERSIONS="auth-sidecar $SIDECAR_REV, nginx $(nginx -v 2>&1 | sed 's|.*/||'), haproxy $(haproxy -v | awk 'NR==1{print $3}')"
[[ $ENVOY_OK == 1 ]] && VERSIONS+=", envoy $("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2)"
VERSIONS+=", wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}')"
python3 "$BENCH_HERE/report.py" "$META" "$RES" \
  "conns=$CONNS lat_conns=$LAT_CONNS duration=$DURATION warmup=$WARMUP rounds=$ROUNDS distinct_tokens=$DISTINCT_TOKENS distinct_cache=$DISTINCT_CACHE" \
  "$VERSIONS" | tee "$BENCH_DIR/report.md"
log "raw wrk output: $BENCH_DIR/wrk/, report: $BENCH_DIR/report.md"
