#!/usr/bin/env bash
# bench/run.sh — ledgerd's benchmark suite: the figures of docs/performance.md.
#
# usage: bench/run.sh BIN_DIR quick|full
#   quick: 1,000 accounts, 3 s per figure; auth on/off: 2 rounds of 2 s  (< 1 minute)
#   full:  100,000 accounts, 20 s per figure; auth on/off: 5 rounds of 6 s (< 10 minutes)
#
# Runs $BIN/ledger-ceiling (the machine's ceiling: memory + append-only log + group commit) on
# the data directory's file system, then:
#  1. auth on/off: two fresh servers side by side, one authenticated (bearer: the bootstrap
#     admin key) and one --no-auth, both with the rate limits below and snapshots pushed out
#     of reach; single-transfer and batch runs alternate between them (ROUNDS each, the order
#     flipped every round) and the table gives the median of each and their ratio;
#  2. the main run: a third fresh server, authenticated, with every figure of the table.
# Every ledgerd runs on a free loopback port with a fresh data directory (pinned to CPU 0 when
# there are two CPUs or more) and with rate limiting ON at 1M/s (burst 1M) per address and per
# credential for reads and writes: far above what the benchmark sends, so the limiter's cost is
# measured but it never throttles (the defaults, 20k/s per credential, would). $BIN/ledger-bench
# (pinned to CPU 1) sends `Authorization: Bearer KEY` with every request, setup included, except
# on the health route (open; kept unauthenticated to compare with wrk). Raw ledger-bench lines
# are printed as they come, so every figure can be traced to its command. Servers are stopped
# with SIGTERM (also on any exit) and their data directories removed.
set -euo pipefail

usage() { echo "usage: $0 BIN_DIR quick|full" >&2; exit 2; }
[ $# -eq 2 ] || usage
BIN=$1
PROFILE=$2
case $PROFILE in
  quick) ACCOUNTS=1000;   SECS=3;  CEIL_SECS=3;  CMP_SECS=2;  ROUNDS=2 ;;
  full)  ACCOUNTS=100000; SECS=20; CEIL_SECS=10; CMP_SECS=6;  ROUNDS=5 ;;
  *) usage ;;
esac
for exe in ledgerd ledger-bench ledger-ceiling; do
  [ -x "$BIN/$exe" ] || { echo "$0: $BIN/$exe is missing (build first)" >&2; exit 2; }
done

# ---- CPU placement: server on CPU 0, load generator on CPU 1 ----
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
  SERVER_PIN=(taskset -c 0)
  CLIENT_CPU=(--cpu 1)
  CLIENT_PIN=(taskset -c 1)
  PLACEMENT="ledgerd on CPU 0, load generator on CPU 1"
else
  SERVER_PIN=(); CLIENT_CPU=(); CLIENT_PIN=()
  PLACEMENT="one CPU: ledgerd and the load generator share it"
fi

# Rate limiting stays on, 1M/s with a burst of 1M per address and per credential: its cost is
# in every figure, but it never throttles the benchmark.
RATE_FLAGS=(--rate-limit write.addr=1000000/1000000 --rate-limit write.cred=1000000/1000000
            --rate-limit read.addr=1000000/1000000 --rate-limit read.cred=1000000/1000000)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ledger-bench.XXXXXX")
SERVER_PIDS=()   # every ledgerd started and not yet stopped
# stop_server PID -> SIGTERM, up to 10 s to exit, then SIGKILL (said on stderr).
stop_server() {
  local pid=$1
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: ledgerd $pid did not stop within 10 s of SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  fi
  local keep=() p
  for p in "${SERVER_PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  SERVER_PIDS=("${keep[@]}")
}
cleanup() {
  local p
  for p in "${SERVER_PIDS[@]}"; do stop_server "$p"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "# ledgerd benchmark ($PROFILE) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "# cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $NCPU CPUs"
echo "# kernel: $(uname -r)"
echo "# placement: $PLACEMENT"
echo "# load average before the run: $(cut -d" " -f1-3 /proc/loadavg) (other processes skew every figure)"
echo "# file system of the data dir: $(df -PT "$WORK" | awk 'NR==2 {print $2, $1}')"
echo "# git: $(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo none)"

# kv LINE KEY -> the value of KEY=... in a summary line ("" when absent)
kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

# ---- the ceiling first, while nothing else runs, on the data dir's file system ----
CEIL_LINES=$(TMPDIR=$WORK "${SERVER_PIN[@]}" "$BIN/ledger-ceiling" -d "$CEIL_SECS")
echo "$CEIL_LINES"
CEIL=$(printf '%s\n' "$CEIL_LINES" | grep '^ceiling ')
CEIL_CPU=$(printf '%s\n' "$CEIL_LINES" | grep '^ceiling_cpu ')

# start_server NAME LEDGERD_ARGS... -> a fresh ledgerd in $WORK/NAME (data in $WORK/NAME/data);
# sets SERVER_PID, PORT, SERVER_DIR, and AUTH (the ledger-bench arguments that authenticate:
# --token-file with the bootstrap admin key, or nothing under --no-auth).
start_server() {
  local name=$1; shift
  SERVER_DIR=$WORK/$name
  mkdir -p "$SERVER_DIR/data"
  "${SERVER_PIN[@]}" "$BIN/ledgerd" --listen 127.0.0.1:0 --data-dir "$SERVER_DIR/data" "$@" \
    >"$SERVER_DIR/ledgerd.out" 2>"$SERVER_DIR/ledgerd.err" &
  SERVER_PID=$!
  SERVER_PIDS+=("$SERVER_PID")
  PORT=""
  for _ in $(seq 100); do
    PORT=$(sed -n 's|^listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$SERVER_DIR/ledgerd.out" | head -1)
    [ -n "$PORT" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$PORT" ]; then
    echo "run.sh: ledgerd ($name) did not print 'listening on' within 10 s; its stderr:" >&2
    tail -20 "$SERVER_DIR/ledgerd.err" >&2
    exit 1
  fi
  AUTH=()
  local a
  for a in "$@"; do [ "$a" = --no-auth ] && AUTH=(none); done
  if [ "${AUTH[*]}" = none ]; then
    AUTH=()
  elif [ -s "$SERVER_DIR/data/bootstrap-admin-key" ]; then
    AUTH=(--token-file "$SERVER_DIR/data/bootstrap-admin-key")
  else
    echo "run.sh: ledgerd ($name) wrote no $SERVER_DIR/data/bootstrap-admin-key" >&2
    exit 1
  fi
  echo "# ledgerd ($name) pid $SERVER_PID port $PORT: ledgerd --listen 127.0.0.1:0 --data-dir DIR $*"
}

FAILED=0
server_alive() {
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "run.sh: ledgerd died during '$1'; its stderr:" >&2
    tail -20 "$SERVER_DIR/ledgerd.err" >&2
    exit 1
  fi
}
# bench NAME ARGS... -> runs ledger-bench against $PORT, echoes its output; sets OUT (stdout)
# and LINE (the summary line). A failing run is reported and the suite goes on; the exit
# status says so. Every summary line is kept in ALL_LINES for the error count.
ALL_LINES=()
bench() {
  local name=$1; shift
  local rc=0
  echo "## $name: ledger-bench -p PORT ${CLIENT_CPU[*]} $*" | sed "s|$WORK/|WORK/|g"
  OUT=$("$BIN/ledger-bench" -p "$PORT" "${CLIENT_CPU[@]}" "$@" 2>"$WORK/bench.err") || rc=$?
  printf '%s\n' "$OUT"
  if [ -s "$WORK/bench.err" ]; then sed 's/^/  stderr: /' "$WORK/bench.err" | head -12; fi
  LINE=$(printf '%s\n' "$OUT" | grep '^mode=' | tail -1 || true)
  [ "$name" = setup ] || ALL_LINES+=("$LINE")
  if [ $rc -ne 0 ]; then
    echo "run.sh: '$name' exited $rc" >&2
    FAILED=1
  fi
  server_alive "$name"
}
# setup_accounts -> creates and funds $ACCOUNTS accounts on the current server; sets RANGE.
setup_accounts() {
  bench setup "${AUTH[@]}" -S "$ACCOUNTS" -c 64
  local setup first last
  setup=$(printf '%s\n' "$OUT" | grep '^setup ' || true)
  first=$(kv "$setup" first); last=$(kv "$setup" last)
  if [ -z "$first" ] || [ "$(kv "$setup" contiguous)" != 1 ]; then
    echo "run.sh: account setup failed" >&2
    exit 1
  fi
  RANGE="$first-$last"
}
# median V... -> the median (mean of the middle two for an even count); "" for none.
median() { printf '%s\n' "$@" | awk NF | sort -g | awk '{ v[NR] = $1 } END {
  if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ---- 1. auth on/off: two fresh servers, the same accounts, runs alternated ----
# Snapshots (every 256 MiB of log by default) are pushed out of reach on both: a snapshot
# child forked by one server would otherwise run during the other's measurement.
NOSNAP=(--snapshot-log-mb 1048576)
start_server auth "${RATE_FLAGS[@]}" "${NOSNAP[@]}"
A_PID=$SERVER_PID; A_PORT=$PORT; A_DIR=$SERVER_DIR; A_AUTH=("${AUTH[@]}")
setup_accounts; A_RANGE=$RANGE
start_server noauth --no-auth "${RATE_FLAGS[@]}" "${NOSNAP[@]}"
N_PID=$SERVER_PID; N_PORT=$PORT; N_DIR=$SERVER_DIR
setup_accounts; N_RANGE=$RANGE
[ "$A_RANGE" = "$N_RANGE" ] || echo "run.sh: note: account ranges differ ($A_RANGE vs $N_RANGE)" >&2
use_auth()   { SERVER_PID=$A_PID; PORT=$A_PORT; SERVER_DIR=$A_DIR; AUTH=("${A_AUTH[@]}"); RANGE=$A_RANGE; }
use_noauth() { SERVER_PID=$N_PID; PORT=$N_PORT; SERVER_DIR=$N_DIR; AUTH=(); RANGE=$N_RANGE; }
CMP_T_AUTH=(); CMP_T_NOAUTH=(); CMP_B_AUTH=(); CMP_B_NOAUTH=()
# cmp_round KIND R -> one run on each server, auth first in odd rounds, no-auth first in even.
cmp_round() {
  local kind=$1 r=$2 order=(auth noauth) who args
  [ $((r % 2)) -eq 1 ] || order=(noauth auth)
  for who in "${order[@]}"; do
    "use_$who"
    if [ "$kind" = transfer ]; then args=(-m transfer -c 256); else args=(-m batch -b 8190 -c 8); fi
    bench "$kind-$who-$r" "${AUTH[@]}" "${args[@]}" -d "$CMP_SECS" -A "$RANGE"
    local v; v=$(kv "$LINE" transfers_per_s)
    case $kind-$who in
      transfer-auth) CMP_T_AUTH+=("$v") ;;   transfer-noauth) CMP_T_NOAUTH+=("$v") ;;
      batch-auth) CMP_B_AUTH+=("$v") ;;      batch-noauth) CMP_B_NOAUTH+=("$v") ;;
    esac
  done
}
for r in $(seq "$ROUNDS"); do cmp_round transfer "$r"; done
for r in $(seq "$ROUNDS"); do cmp_round batch "$r"; done
stop_server "$A_PID"; stop_server "$N_PID"
rm -rf "$A_DIR" "$N_DIR"

# ---- 2. the main run: a fresh authenticated server; accounts created and funded once ----
start_server main "${RATE_FLAGS[@]}"
setup_accounts

# ---- the figures ----
WRK_RPS=""
if command -v wrk >/dev/null; then
  echo "## health (wrk): wrk -t1 -c64 -d${SECS}s http://127.0.0.1:PORT/healthz"
  WRK_OUT=$("${CLIENT_PIN[@]}" wrk -t1 -c64 -d"${SECS}s" "http://127.0.0.1:$PORT/healthz" || true)
  printf '%s\n' "$WRK_OUT" | sed 's/^/  /'
  WRK_RPS=$(printf '%s\n' "$WRK_OUT" | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p')
  server_alive "wrk health"
fi
bench health -m health -c 64 -d "$SECS";                                    HEALTH=$LINE
bench transfer "${AUTH[@]}" -m transfer -c 256 -d "$SECS" -A "$RANGE";       TRANSFER=$LINE
bench batch "${AUTH[@]}" -m batch -b 8190 -c 8 -d "$SECS" -A "$RANGE";       BATCH=$LINE
bench hot "${AUTH[@]}" -m hot -c 256 -d "$SECS" -A "$RANGE";                 HOT=$LINE
# Open loop at half the closed-loop rate: latency without coordinated omission.
HALF=$(awk -v r="$(kv "$TRANSFER" req_per_s)" 'BEGIN { printf "%d", (r > 2 ? r / 2 : 1) }')
bench transfer-open "${AUTH[@]}" -m transfer -c 256 -d "$SECS" -r "$HALF" -A "$RANGE"; OPEN=$LINE

# ---- the table ----
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.3f", a / b }'; }
row() { printf '| %-44s | %14s | %-34s | %7s |\n' "$1" "$2" "$3" "$(ratio "$2" "$4")"; }
fmt() { [ -n "$1" ] && printf '%.0f' "$1" || printf -- '-'; }

echo
echo "main run: authenticated (bearer admin key; health excepted), rate limits on at 1M/s"
echo "| figure                                       |          value | baseline                           |   ratio |"
echo "|----------------------------------------------|---------------:|------------------------------------|--------:|"
H=$(kv "$HEALTH" req_per_s); T=$(kv "$TRANSFER" transfers_per_s); B=$(kv "$BATCH" transfers_per_s)
O=$(kv "$HOT" transfers_per_s); C=$(kv "$CEIL" transfers_per_s); CC=$(kv "$CEIL_CPU" transfers_per_s)
row "GET /healthz req/s (64 conns, ledger-bench)" "$(fmt "$H")" "wrk -t1 -c64: $(fmt "$WRK_RPS")" "$WRK_RPS"
row "POST /v1/transfers transfers/s (256 conns)" "$(fmt "$T")" "health req/s: $(fmt "$H")" "$H"
row "  p50 / p99 / p99.9 latency (us)" "$(kv "$TRANSFER" p50_us)/$(kv "$TRANSFER" p99_us)/$(kv "$TRANSFER" p999_us)" "" ""
row "transfers/s open loop at $HALF req/s" "$(fmt "$(kv "$OPEN" transfers_per_s)")" "offered: $HALF" "$HALF"
row "  p50 / p99 / p99.9 latency (us)" "$(kv "$OPEN" p50_us)/$(kv "$OPEN" p99_us)/$(kv "$OPEN" p999_us)" "" ""
row "batch (8190/request) transfers/s (8 conns)" "$(fmt "$B")" "ceiling: $(fmt "$C")" "$C"
row "  p50 / p99 request latency (us)" "$(kv "$BATCH" p50_us)/$(kv "$BATCH" p99_us)" "" ""
row "hot account transfers/s (256 conns)" "$(fmt "$O")" "spread transfers/s: $(fmt "$T")" "$T"
row "ceiling: memory + log, fdatasync/10k" "$(fmt "$C")" "same without I/O: $(fmt "$CC")" "$CC"
row "  fdatasync p50 / p99 (us)" "$(kv "$CEIL" fdatasync_p50_us)/$(kv "$CEIL" fdatasync_p99_us)" "" ""
TA=$(median "${CMP_T_AUTH[@]}"); TN=$(median "${CMP_T_NOAUTH[@]}")
BA=$(median "${CMP_B_AUTH[@]}"); BN=$(median "${CMP_B_NOAUTH[@]}")
runs() { local v out=""; for v in "$@"; do out+="${out:+ }$(fmt "$v")"; done; printf '%s' "$out"; }
echo
echo "auth on/off: $ROUNDS alternated runs of ${CMP_SECS} s per configuration (order flipped each round); median of each"
echo "| figure                                       |          value | baseline                           |   ratio |"
echo "|----------------------------------------------|---------------:|------------------------------------|--------:|"
row "POST /v1/transfers with auth vs without" "$(fmt "$TA")" "no auth: $(fmt "$TN")" "$TN"
row "  each run: auth / no auth (transfers/s)" "$(runs "${CMP_T_AUTH[@]}")" "$(runs "${CMP_T_NOAUTH[@]}")" ""
row "POST /v1/transfers/batch with auth vs without" "$(fmt "$BA")" "no auth: $(fmt "$BN")" "$BN"
row "  each run: auth / no auth (transfers/s)" "$(runs "${CMP_B_AUTH[@]}")" "$(runs "${CMP_B_NOAUTH[@]}")" ""
echo "(goal: ratio >= 0.90)"
ERRS=0
for l in "${ALL_LINES[@]}"; do
  e=$(kv "$l" errors); ERRS=$((ERRS + ${e:-1}))  # a missing summary line counts as an error
done
echo
echo "errors across runs: $ERRS (see the raw lines above: unexpected statuses, closed connections)"
[ "$FAILED" -eq 0 ] || exit 1
