#!/usr/bin/env bash
# benches/memory.sh - the sidecar's RSS with MEM_TOKENS (100 000) distinct live tokens in
# its verify cache, and again after every one of them has expired.
#
#   1. mints MEM_TOKENS distinct HS256 tokens that expire MEM_TTL seconds from now
#      (auth.leeway = "0s", so the cache drops them at exp);
#   2. starts the backend and one sidecar (worker_threads = 1, default cache_capacity
#      100 000 unless MEM_CACHE is set) and records its idle RSS;
#   3. sends every token at least once (wrk + distinct.lua, c=CONNS, bounded by
#      MEM_LOAD_S) and records RSS and the cache's entry count;
#   4. waits until the tokens have expired, sends a little traffic with one long-lived
#      token, waits SETTLE_S (the sidecar sweeps every 5 s), and records RSS
#      and the entry count again (twice, SETTLE_S apart).
#
#   benches/memory.sh                      # ~1 min
#   MEM_TOKENS=20000 MEM_TTL=15 benches/memory.sh
set -uo pipefail
LOG_TAG=memory
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MEM_TOKENS=${MEM_TOKENS:-100000}
MEM_TTL=${MEM_TTL:-25}
MEM_LOAD_S=${MEM_LOAD_S:-10}
MEM_CACHE=${MEM_CACHE:-100000}
CONNS=${CONNS:-32}
SETTLE_S=${SETTLE_S:-3}
BASE_PORT=${BASE_PORT:-18350}
export BACKEND_PORT=$BASE_PORT
SIDECAR_PORT=$((BASE_PORT + 1)) ADMIN_PORT=$((BASE_PORT + 2))

if [[ -z ${BENCH_DIR:-} ]]; then BENCH_DIR=$(mktemp -d /tmp/sidecar-mem.XXXXXX); fi
export BENCH_DIR
mkdir -p "$BENCH_DIR"/{conf,logs,run,wrk}
need_tools nginx wrk curl openssl python3 ss pgrep setsid timeout
build_sidecar
for p in "$BACKEND_PORT" "$SIDECAR_PORT" "$ADMIN_PORT"; do port_free "$p" || die "port $p is busy (set BASE_PORT)"; done

log "scratch dir: $BENCH_DIR"
python3 "$BENCH_HERE/mint_tokens.py" "$BENCH_DIR" --iss "$JWT_ISSUER" --aud "$JWT_AUDIENCE" \
  --sub "$JWT_SUB" --distinct "$MEM_TOKENS" --distinct-algs hs256 --distinct-ttl "$MEM_TTL" \
  --distinct-name mem || die "token minting failed"
TOKENS=$BENCH_DIR/tokens.mem.hs256.txt
EXP=$(head -n 1 "$TOKENS" | cut -d. -f2 | tr '_-' '/+' | { read -r s; while ((${#s} % 4)); do s+="="; done; echo "$s"; } |
  base64 -d 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["exp"])')
LONG=$(cat "$BENCH_DIR/token.hs256")

backend_conf "$BACKEND_PORT" >"$BENCH_DIR/conf/nginx-backend.conf"
sidecar_conf "$SIDECAR_PORT" "$ADMIN_PORT" hs256 "$MEM_CACHE" 'leeway = "0s"' >"$BENCH_DIR/conf/sidecar.toml"
start_proc backend "$BENCH_DIR/logs/backend.out" nginx -p "$BENCH_DIR/run" -e "$BENCH_DIR/logs/backend.err" \
  -c "$BENCH_DIR/conf/nginx-backend.conf"
wait_http backend "$BACKEND_PORT" 15 || die "backend did not start"
start_proc sidecar "$BENCH_DIR/logs/sidecar.out" env ${SIDECAR_ENV:-} "$SIDECAR_BIN" --config "$BENCH_DIR/conf/sidecar.toml"
wait_http sidecar "$SIDECAR_PORT" 30 || die "sidecar did not start (see $BENCH_DIR/logs/sidecar.out)"

code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -n 1 "$TOKENS")" "http://127.0.0.1:$SIDECAR_PORT/")
[[ $code == 200 ]] || die "a minted token got $code (want 200)"
entries() { metric "$ADMIN_PORT" auth_sidecar_verify_cache_entries; }
misses() { metric "$ADMIN_PORT" 'auth_sidecar_verify_cache_total{result="miss"}'; }
sleep 1
RSS_IDLE=$(rss_kb sidecar)
log "idle: RSS $((RSS_IDLE / 1024)) MiB, cache entries $(entries)"

left=$((EXP - $(date +%s)))
((left > MEM_LOAD_S + 3)) || die "tokens expire in ${left}s: minting took too long; raise MEM_TTL"
log "load: wrk -t1 -c$CONNS -d${MEM_LOAD_S}s cycling $MEM_TOKENS tokens (expire in ${left}s)"
timeout $((MEM_LOAD_S + 20)) wrk -t1 -c"$CONNS" -d"${MEM_LOAD_S}s" -s "$BENCH_HERE/distinct.lua" \
  "http://127.0.0.1:$SIDECAR_PORT/" -- "$TOKENS" >"$BENCH_DIR/wrk/load.txt" 2>&1 &
WRK_PID=$!
RSS_PEAK=0
while kill -0 "$WRK_PID" 2>/dev/null; do
  sleep 1
  r=$(rss_kb sidecar); ((r > RSS_PEAK)) && RSS_PEAK=$r
done
wait "$WRK_PID"; WRK_PID=""
REQS=$(awk '/requests in/{print $1}' "$BENCH_DIR/wrk/load.txt")
NON2XX=$(awk '/Non-2xx/{print $NF}' "$BENCH_DIR/wrk/load.txt")
sleep 1
RSS_LOADED=$(rss_kb sidecar) ENTRIES_LOADED=$(entries) MISSES=$(misses)
log "loaded: ${REQS:-?} requests (non-2xx ${NON2XX:-0}), verify misses $MISSES, entries $ENTRIES_LOADED, RSS $((RSS_LOADED / 1024)) MiB (peak $((RSS_PEAK / 1024)))"
((MISSES >= MEM_TOKENS)) || log "WARNING: only $MISSES verifications for $MEM_TOKENS tokens: raise MEM_LOAD_S"

wait_s=$((EXP - $(date +%s) + 1))
((wait_s > 0)) && { log "waiting ${wait_s}s for the tokens to expire"; sleep "$wait_s"; }
# Traffic after expiry: the cache must shrink while it is being used, too.
timeout 10 wrk -t1 -c4 -d1s -H "Authorization: Bearer $LONG" "http://127.0.0.1:$SIDECAR_PORT/" >/dev/null 2>&1
sleep "$SETTLE_S"
timeout 10 wrk -t1 -c4 -d1s -H "Authorization: Bearer $LONG" "http://127.0.0.1:$SIDECAR_PORT/" >/dev/null 2>&1
RSS_AFTER1=$(rss_kb sidecar) ENTRIES_AFTER1=$(entries)
sleep "$SETTLE_S"
RSS_AFTER2=$(rss_kb sidecar) ENTRIES_AFTER2=$(entries)
log "after expiry: entries $ENTRIES_AFTER1 -> $ENTRIES_AFTER2, RSS $((RSS_AFTER1 / 1024)) -> $((RSS_AFTER2 / 1024)) MiB"

mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
{
  echo
  echo "### Memory: $MEM_TOKENS distinct live tokens in the verify cache (HS256, leeway 0s, cache_capacity $MEM_CACHE)"
  echo
  echo "| phase | RSS MiB | cache entries | note |"
  echo "|---|---:|---:|---|"
  echo "| idle (after start-up and one request) | $(mib "$RSS_IDLE") | - | |"
  echo "| loaded: every token verified and cached | $(mib "$RSS_LOADED") | $ENTRIES_LOADED | ${REQS:-?} requests in ${MEM_LOAD_S}s, $MISSES verifications, peak RSS $(mib "$RSS_PEAK") MiB, non-2xx ${NON2XX:-0} |"
  echo "| after expiry + traffic + ${SETTLE_S}s | $(mib "$RSS_AFTER1") | $ENTRIES_AFTER1 | |"
  echo "| after another ${SETTLE_S}s | $(mib "$RSS_AFTER2") | $ENTRIES_AFTER2 | |"
  echo
  v1=FAIL; ((RSS_PEAK <= 64 * 1024)) && v1=PASS
  v2=FAIL; ((RSS_AFTER2 * 100 <= (RSS_IDLE + (RSS_LOADED - RSS_IDLE) / 4) * 100)) && v2=PASS
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  echo "| RSS with $MEM_TOKENS cached tokens <= 64 MiB | peak $(mib "$RSS_PEAK") MiB, settled $(mib "$RSS_LOADED") MiB | $v1 |"
  echo "| back down after expiry (within a quarter of the growth above idle) | $(mib "$RSS_LOADED") -> $(mib "$RSS_AFTER2") MiB (idle $(mib "$RSS_IDLE")), entries $ENTRIES_LOADED -> $ENTRIES_AFTER2 | $v2 |"
} | tee "$BENCH_DIR/report.md"
