#!/usr/bin/env bash
# benches/count.sh - load-independent per-request costs, for A/B of hot-path changes on a
# busy machine: instructions per request (valgrind --tool=callgrind, user space), system
# calls per request (`perf stat -e raw_syscalls:sys_enter`, unperturbed; and `strace -c`,
# which slows the process but names the calls) and context switches per request.
#
# Targets (COUNT_TARGETS, default "sidecar bare nginx", plus `cand` with CAND_BIN):
#   sidecar / cand   auth-sidecar RS256, repeated token (verify cache hits), worker_threads = 1
#   bare             benches/bare_proxy.rs (bare hyper 1 forwarder), current-thread
#   nginx            nginx proxy_pass, master_process off (one process), keepalive upstream
#   bare-same        bare with BARE_SAME_TASK=1 (backend connection driven in the client task)
#   sidecar2, bare2, nginx2   the same with 2 workers (worker_threads = 2, BARE_WORKERS=2,
#                    worker_processes 2 with its master); perf and strace only (callgrind
#                    is skipped for them: instructions per request do not depend on it)
# Each is loaded by wrk -t1 -c$CONNS for COUNT_S seconds per tool, against the nginx
# `200 ok` backend. The counts divide by wrk's request count for the same window.
#
#   benches/count.sh
#   CAND_BIN=/tmp/old/auth-sidecar benches/count.sh   # A/B: cand = the other build
#   CAND_ENV="VAR=1" benches/count.sh                 # A/B: the same build, cand with VAR=1
#   TOOLS="perf strace" benches/count.sh              # skip callgrind
set -uo pipefail
LOG_TAG=count
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNT_S=${COUNT_S:-5}
CALLGRIND_S=${CALLGRIND_S:-5}
CONNS=${CONNS:-8}
TOOLS=${TOOLS:-callgrind perf strace}
BASE_PORT=${BASE_PORT:-18500}
CAND_BIN=${CAND_BIN:-}
CAND_ENV=${CAND_ENV:-}
BARE_BIN=${BARE_BIN:-$ROOT/target/release/examples/bare_proxy}
COUNT_TARGETS=${COUNT_TARGETS:-sidecar${CAND_BIN:+ cand} bare nginx}
[[ -n $CAND_ENV && " $COUNT_TARGETS " != *" cand "* ]] && COUNT_TARGETS="sidecar cand ${COUNT_TARGETS#sidecar }"
export BACKEND_PORT=$BASE_PORT
if [[ -z ${BENCH_DIR:-} ]]; then BENCH_DIR=$(mktemp -d /tmp/sidecar-count.XXXXXX); fi
export BENCH_DIR
mkdir -p "$BENCH_DIR"/{conf,logs,run,out}
CONF=$BENCH_DIR/conf LOGS=$BENCH_DIR/logs

need_tools nginx wrk curl openssl python3 ss pgrep setsid timeout valgrind strace
command -v perf >/dev/null || need_tools linux-perf
build_sidecar
[[ " $COUNT_TARGETS " == *" bare "* ]] && build_example bare_proxy
python3 "$BENCH_HERE/mint_tokens.py" "$BENCH_DIR" --iss "$JWT_ISSUER" --aud "$JWT_AUDIENCE" --sub "$JWT_SUB" ||
  die "token minting failed"
TOKEN=$(cat "$BENCH_DIR/token.rs256")

declare -A PORT=([backend]=$BASE_PORT [sidecar]=$((BASE_PORT + 1)) [cand]=$((BASE_PORT + 2))
  [bare]=$((BASE_PORT + 3)) [nginx]=$((BASE_PORT + 4)) [sidecar2]=$((BASE_PORT + 5))
  [bare2]=$((BASE_PORT + 6)) [nginx2]=$((BASE_PORT + 7)) [bare-same]=$((BASE_PORT + 8)))
backend_conf "$BASE_PORT" >"$CONF/backend.conf"
nginx_proxy_conf nginx-proxy "${PORT[nginx]}" >"$CONF/nginx-proxy2.conf"
sed 's/^master_process on;/master_process off;/' "$CONF/nginx-proxy2.conf" >"$CONF/nginx-proxy.conf"
sed -i -e 's/^worker_processes 1;/worker_processes 2;/' -e "s|:${PORT[nginx]} |:${PORT[nginx2]} |" \
  -e "s|run/nginx-proxy|run/nginx-proxy2|g" "$CONF/nginx-proxy2.conf"
mkdir -p "$BENCH_DIR/run/nginx-proxy2"
for k in sidecar cand; do sidecar_conf "${PORT[$k]}" "$((PORT[$k] + 10))" rs256 100000 >"$CONF/$k.toml"; done
SIDECAR_WORKERS=2 sidecar_conf "${PORT[sidecar2]}" "$((PORT[sidecar2] + 10))" rs256 100000 >"$CONF/sidecar2.toml"

start_proc backend "$LOGS/backend.out" nginx -p "$BENCH_DIR/run" -e "$LOGS/backend.err" -c "$CONF/backend.conf"
wait_http backend "$BASE_PORT" 20 || die "backend did not start"

cmd_of() { # the target's command line
  case $1 in
    sidecar) echo "$SIDECAR_BIN --config $CONF/sidecar.toml" ;;
    cand) echo "${CAND_BIN:-$SIDECAR_BIN} --config $CONF/cand.toml" ;;
    bare) echo "$BARE_BIN 127.0.0.1:${PORT[bare]} 127.0.0.1:$BASE_PORT" ;;
    nginx) echo "nginx -p $BENCH_DIR/run -e $LOGS/nginx.err -c $CONF/nginx-proxy.conf" ;;
    sidecar2) echo "$SIDECAR_BIN --config $CONF/sidecar2.toml" ;;
    bare2) echo "$BARE_BIN 127.0.0.1:${PORT[bare2]} 127.0.0.1:$BASE_PORT" ;;
    bare-same) echo "$BARE_BIN 127.0.0.1:${PORT[bare-same]} 127.0.0.1:$BASE_PORT" ;;
    nginx2) echo "nginx -p $BENCH_DIR/run -e $LOGS/nginx2.err -c $CONF/nginx-proxy2.conf" ;;
  esac
}
envs_of() { # environment for the target (CAND_ENV for cand; SIDECAR_ENV for sidecar)
  case $1 in
    cand) echo "${CAND_ENV:-}" ;;
    sidecar) echo "${SIDECAR_ENV:-}" ;;
    bare2) echo "BARE_WORKERS=2" ;;
    bare-same) echo "BARE_SAME_TASK=1" ;;
  esac
}
load() { # PORT SECONDS OUT
  timeout $(($2 + 30)) wrk -t1 -c"$CONNS" -d"${2}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/" >"$3" 2>&1
}
reqs() { awk '/requests in/{print $1}' "$1"; }
main_pid() { pgrep -g "${P_PID[$1]}" | head -n 1; }
group_tids() { # every thread of every process in KEY's group
  local p
  for p in $(pgrep -g "${P_PID[$1]}"); do ls "/proc/$p/task"; done
}

RES=$BENCH_DIR/counts.tsv
: >"$RES"
for k in $COUNT_TARGETS; do
  port=${PORT[$k]}
  for tool in $TOOLS; do
    [[ $tool == callgrind && $k == *2 ]] && continue
    out=$BENCH_DIR/out/$k.$tool
    if [[ $tool == callgrind ]]; then
      # shellcheck disable=SC2046
      start_proc "$k" "$LOGS/$k.callgrind.out" env $(envs_of "$k") valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out.cg" $(cmd_of "$k")
      wait_http "$k" "$port" 120 || die "$k did not start under valgrind"
    else
      # shellcheck disable=SC2046
      start_proc "$k" "$LOGS/$k.out" env $(envs_of "$k") $(cmd_of "$k")
      wait_http "$k" "$port" 30 || die "$k did not start"
    fi
    pid=$(main_pid "$k")
    load "$port" 2 /dev/null
    case $tool in
      callgrind)
        callgrind_control -i on "$pid" >/dev/null
        load "$port" "$CALLGRIND_S" "$out.wrk"
        callgrind_control -i off "$pid" >/dev/null
        callgrind_control -d "$pid" >/dev/null
        sleep 1
        dump=$(ls -t "$out.cg"* | head -n 1)
        total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(/,/,"",$1); print $1; exit}')
        callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -n 60 >"$out.inclusive.txt"
        callgrind_annotate --threshold=100 "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -n 60 >"$out.exclusive.txt"
        wrk_all_2xx "$out.wrk" || die "$k: not every response was 2xx; the count would be wrong"
        n=$(reqs "$out.wrk")
        printf '%s\tinstr/req\t%s\n' "$k" "$(awk -v t="${total:-0}" -v n="${n:-0}" 'BEGIN{ if (n > 0) printf "%.0f", t / n; else print 0 }')" >>"$RES"
        ;;
      perf)
        tids=$(group_tids "$k" | paste -sd,)
        perf stat -x, -e raw_syscalls:sys_enter -e context-switches -t "$tids" -o "$out.txt" &
        ppid=$!
        sleep 0.3
        load "$port" "$COUNT_S" "$out.wrk"
        kill -INT "$ppid" 2>/dev/null; wait "$ppid" 2>/dev/null
        wrk_all_2xx "$out.wrk" || die "$k: not every response was 2xx; the count would be wrong"
        n=$(reqs "$out.wrk")
        sc=$(awk -F, '/raw_syscalls:sys_enter/{print $1}' "$out.txt")
        cs=$(awk -F, '/context-switches/{print $1}' "$out.txt")
        printf '%s\tsyscalls/req (perf)\t%s\n' "$k" "$(awk -v t="${sc:-0}" -v n="${n:-0}" 'BEGIN{ if (n > 0) printf "%.2f", t / n; else print 0 }')" >>"$RES"
        printf '%s\tcontext switches/req\t%s\n' "$k" "$(awk -v t="${cs:-0}" -v n="${n:-0}" 'BEGIN{ if (n > 0) printf "%.3f", t / n; else print 0 }')" >>"$RES"
        ;;
      strace)
        tids=$(group_tids "$k" | sed 's/^/-p /' | paste -sd' ')
        # shellcheck disable=SC2086
        strace -c -f $tids -o "$out.txt" 2>/dev/null &
        spid=$!
        sleep 0.5
        load "$port" "$COUNT_S" "$out.wrk"
        kill -INT "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
        wrk_all_2xx "$out.wrk" || die "$k: not every response was 2xx; the count would be wrong"
        n=$(reqs "$out.wrk")
        total=$(awk '$NF=="total"{print $4}' "$out.txt")
        printf '%s\tsyscalls/req (strace)\t%s\n' "$k" "$(awk -v t="${total:-0}" -v n="${n:-0}" 'BEGIN{ if (n > 0) printf "%.2f", t / n; else print 0 }')" >>"$RES"
        top=$(awk -v n="${n:-1}" '$NF!="total" && $1 ~ /^[0-9.]+$/ {printf "%s %.2f, ", $NF, $4 / n}' "$out.txt" | head -c 300)
        printf '%s\tstrace per req\t%s\n' "$k" "${top%, }" >>"$RES"
        ;;
    esac
    log "$k $tool: $(grep -P "^$k\t" "$RES" | tail -n 2 | cut -f2,3 | paste -sd' ')"
    stop "$k"
  done
done

python3 - "$RES" "$COUNT_TARGETS" "$CONNS" <<'EOF' | tee "$BENCH_DIR/report.md"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
targets, conns = sys.argv[2].split(), sys.argv[3]
d = {}
metrics = []
for t, m, v in rows:
    d[(t, m)] = v
    if m not in metrics:
        metrics.append(m)
num = [m for m in metrics if m != "strace per req"]
print(f"\n### Per-request counts (wrk -t1 -c{conns}, repeated RS256 token)\n")
print("| target | " + " | ".join(num) + " |")
print("|---|" + "---:|" * len(num))
for t in targets:
    print(f"| {t} | " + " | ".join(d.get((t, m), "-") for m in num) + " |")
base = targets[0]
print(f"\nRatios to {base}:\n")
print("| target | " + " | ".join(num) + " |")
print("|---|" + "---:|" * len(num))
for t in targets[1:]:
    cells = []
    for m in num:
        try:
            cells.append(f"{float(d[(t, m)]) / float(d[(base, m)]):.3f}")
        except (KeyError, ValueError, ZeroDivisionError):
            cells.append("-")
    print(f"| {t} | " + " | ".join(cells) + " |")
if any(m == "strace per req" for m in metrics):
    print("\nstrace -c, calls per request:\n")
    for t in targets:
        print(f"- {t}: {d.get((t, 'strace per req'), '-')}")
EOF
log "report: $BENCH_DIR/report.md; callgrind annotations: $BENCH_DIR/out/*.inclusive.txt"
