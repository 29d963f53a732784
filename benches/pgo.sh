#!/usr/bin/env bash
# benches/pgo.sh - a profile-guided (PGO) release build of the sidecar.
#
# 1. builds an instrumented binary (rustc -Cprofile-generate) in its own target dir;
# 2. trains it on the request paths the sidecar exists for, each a bounded load against
#    the nginx `200 ok` backend on loopback: RS256 repeated tokens (the verify cache),
#    distinct RS256 and HS256 tokens (full verification), 401s (no token, a bad
#    signature, an expired token), HTTP/2 clients (h2load, when installed) and WebSocket
#    echo messages (benches/ws_bench.rs);
# 3. merges the profiles with llvm-profdata of rustc's own LLVM version (Debian's
#    llvm-N package; installed with apt-get when missing and INSTALL=1);
# 4. builds the optimised binary with -Cprofile-use into PGO_DIR/auth-sidecar.
# The same release profile as a plain build (fat LTO, panic = abort) and AUTH_SIDECAR_RELR=1
# as in the image. Behaviour is the plain build's: PGO only changes code layout, inlining
# and branch weights, so the whole test suite is the check that nothing else changed.
#
#   benches/pgo.sh                         # -> target/pgo/auth-sidecar
#   SIDECAR_BIN=target/pgo/auth-sidecar BUILD=0 benches/run.sh
#   PGO_S=3 benches/pgo.sh                 # shorter training (seconds per load)
set -uo pipefail
LOG_TAG=pgo
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PGO_S=${PGO_S:-6}
PGO_DIR=${PGO_DIR:-$ROOT/target/pgo}
BASE_PORT=${BASE_PORT:-18600}
export BACKEND_PORT=$BASE_PORT
SIDECAR_PORT=$((BASE_PORT + 1)) ADMIN_PORT=$((BASE_PORT + 2)) ECHO_PORT=$((BASE_PORT + 3))
if [[ -z ${BENCH_DIR:-} ]]; then BENCH_DIR=$(mktemp -d /tmp/sidecar-pgo.XXXXXX); fi
export BENCH_DIR
mkdir -p "$BENCH_DIR"/{conf,logs,run} "$PGO_DIR"
CONF=$BENCH_DIR/conf LOGS=$BENCH_DIR/logs

need_tools nginx wrk curl openssl python3 ss pgrep setsid timeout
for p in "$BACKEND_PORT" "$SIDECAR_PORT" "$ADMIN_PORT" "$ECHO_PORT"; do port_free "$p" || die "port $p is busy (set BASE_PORT)"; done

# llvm-profdata must read the format rustc's LLVM writes: the same major version.
LLVM_MAJOR=$(rustc -vV | awk '/^LLVM version/{split($3, v, "."); print v[1]}')
[[ -n $LLVM_MAJOR ]] || die "cannot read rustc's LLVM version (rustc -vV)"
PROFDATA=${PROFDATA:-$(command -v "llvm-profdata-$LLVM_MAJOR" || true)}
if [[ -z $PROFDATA ]]; then
  if [[ $INSTALL == 1 ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    log "installing llvm-$LLVM_MAJOR for llvm-profdata (apt-get; INSTALL=0 to forbid)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$LLVM_MAJOR" >&2 ||
      die "apt-get install llvm-$LLVM_MAJOR failed"
  fi
  PROFDATA=$(command -v "llvm-profdata-$LLVM_MAJOR" || true)
  [[ -n $PROFDATA ]] || die "llvm-profdata-$LLVM_MAJOR not found (apt-get install llvm-$LLVM_MAJOR, or set PROFDATA)"
fi

RAW=$PGO_DIR/raw
rm -rf "$RAW" && mkdir -p "$RAW"
if [[ $BUILD == 1 ]]; then
  log "instrumented build (-Cprofile-generate) in $PGO_DIR/gen"
  (cd "$ROOT" && CARGO_TARGET_DIR=$PGO_DIR/gen AUTH_SIDECAR_RELR=${AUTH_SIDECAR_RELR:-1} \
    RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release --locked --bin auth-sidecar >&2) ||
    die "instrumented build failed"
  build_example ws_bench
fi
GEN_BIN=$PGO_DIR/gen/release/auth-sidecar
[[ -x $GEN_BIN ]] || die "no instrumented binary at $GEN_BIN"
# RUSTFLAGS also instrumented the build scripts, which wrote profiles while cargo ran them.
rm -f "$RAW"/*.profraw
WS_BIN=$ROOT/target/release/examples/ws_bench

need_cryptography
python3 "$BENCH_HERE/mint_tokens.py" "$BENCH_DIR" --iss "$JWT_ISSUER" --aud "$JWT_AUDIENCE" --sub "$JWT_SUB" \
  --distinct 2000 --distinct-algs hs256,rs256 || die "token minting failed"

backend_conf "$BASE_PORT" >"$CONF/backend.conf"
start_proc backend "$LOGS/backend.out" nginx -p "$BENCH_DIR/run" -e "$LOGS/backend.err" -c "$CONF/backend.conf"
wait_http backend "$BASE_PORT" 20 || die "backend did not start"

load() { # seconds, wrk arguments...
  local s=$1; shift
  timeout $((s + 20)) wrk -t1 -c32 -d"${s}s" "$@" >>"$LOGS/wrk.out" 2>&1 || log "wrk $* failed (see $LOGS/wrk.out)"
}
url=http://127.0.0.1:$SIDECAR_PORT/

# train ALG CACHE_CAPACITY [EXTRA_AUTH_TOML]: one instrumented sidecar, its loads, SIGTERM
# (the profile is written when the process exits, so it gets 20 s before a KILL).
train() {
  local alg=$1 cap=$2 extra=${3:-}
  sidecar_conf "$SIDECAR_PORT" "$ADMIN_PORT" "$alg" "$cap" "$extra" >"$CONF/sidecar-$alg.toml"
  start_proc "sidecar-$alg" "$LOGS/sidecar-$alg.out" "$GEN_BIN" --config "$CONF/sidecar-$alg.toml"
  wait_http "sidecar-$alg" "$SIDECAR_PORT" 30 || die "instrumented sidecar did not start (see $LOGS/sidecar-$alg.out)"
  log "training on $alg: repeated token, distinct tokens, 401s"
  load "$PGO_S" -H "Authorization: Bearer $(cat "$BENCH_DIR/token.$alg")" "$url"
  load "$PGO_S" -s "$BENCH_HERE/distinct.lua" "$url" -- "$BENCH_DIR/tokens.distinct.$alg.txt"
  local bad
  for bad in "" "$(cat "$BENCH_DIR/token.$alg.badsig")" "$(cat "$BENCH_DIR/token.$alg.expired")"; do
    if [[ -z $bad ]]; then load 1 "$url"; else load 1 -H "Authorization: Bearer $bad" "$url"; fi
  done
  if [[ $alg == rs256 ]]; then
    if command -v h2load >/dev/null; then
      log "training on HTTP/2 clients (h2load)"
      timeout $((PGO_S + 20)) h2load -t1 -c16 -m10 -D "$PGO_S" -H "authorization: Bearer $(cat "$BENCH_DIR/token.$alg")" \
        "$url" >>"$LOGS/h2load.out" 2>&1 || log "h2load failed (see $LOGS/h2load.out)"
    else
      log "h2load not installed (nghttp2-client): no HTTP/2 training"
    fi
  fi
  stop "sidecar-$alg" 20
}

# WebSocket messages: a third instrumented sidecar, in front of the echo server.
if [[ -x $WS_BIN ]]; then
  start_proc echo "$LOGS/echo.out" "$WS_BIN" echo "127.0.0.1:$ECHO_PORT"
fi
train rs256 100000
train hs256 16
if [[ -x $WS_BIN ]]; then
  BACKEND_PORT=$ECHO_PORT sidecar_conf "$SIDECAR_PORT" "$ADMIN_PORT" rs256 100000 >"$CONF/sidecar-ws.toml"
  start_proc sidecar-ws "$LOGS/sidecar-ws.out" "$GEN_BIN" --config "$CONF/sidecar-ws.toml"
  if wait_http sidecar-ws "$SIDECAR_PORT" 30; then
    log "training on WebSocket messages (ws_bench, echo backend)"
    timeout $((PGO_S + 60)) "$WS_BIN" load "ws://127.0.0.1:$SIDECAR_PORT/ws" 16 "$PGO_S" "$(cat "$BENCH_DIR/token.rs256")" \
      >>"$LOGS/ws.out" 2>&1 || log "ws_bench load failed (see $LOGS/ws.out)"
  fi
  stop sidecar-ws 20
fi

shopt -s nullglob
raws=("$RAW"/*.profraw)
((${#raws[@]})) || die "the instrumented sidecar wrote no profile to $RAW"
"$PROFDATA" merge -o "$PGO_DIR/merged.profdata" "${raws[@]}" || die "llvm-profdata merge failed"
# Cargo tracks RUSTFLAGS, not the file they name: a profile under its own hash makes a new
# profile rebuild every crate instead of leaving dependencies built with the last one.
sum=$(sha256sum "$PGO_DIR/merged.profdata" | cut -c1-16)
rm -f "$PGO_DIR"/merged-*.profdata
PROFILE=$PGO_DIR/merged-$sum.profdata
mv "$PGO_DIR/merged.profdata" "$PROFILE"
log "merged ${#raws[@]} profile(s) into $PROFILE"

log "optimised build (-Cprofile-use) in $PGO_DIR/use"
(cd "$ROOT" && CARGO_TARGET_DIR=$PGO_DIR/use AUTH_SIDECAR_RELR=${AUTH_SIDECAR_RELR:-1} \
  RUSTFLAGS="-Cprofile-use=$PROFILE" cargo build --release --locked --bin auth-sidecar >&2) ||
  die "PGO build failed"
cp "$PGO_DIR/use/release/auth-sidecar" "$PGO_DIR/auth-sidecar"
log "PGO binary: $PGO_DIR/auth-sidecar"
