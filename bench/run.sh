#!/usr/bin/env bash
# bench/run.sh — ledgerd's benchmark suite: the figures of docs/performance.md.
#
# usage: bench/run.sh BIN_DIR quick|full
#   quick: 1,000 accounts, 5 s per figure   (< 1 minute)
#   full:  100,000 accounts, 20 s per figure (< 10 minutes)
#
# Starts $BIN/ledgerd on a free loopback port with a fresh data directory (pinned to CPU 0
# when there are two CPUs or more), drives it with $BIN/ledger-bench pinned to CPU 1, runs
# $BIN/ledger-ceiling (the machine's ceiling: memory + append-only log + group commit) on the
# same file system, and prints one table: figure, value, baseline, ratio. Raw ledger-bench
# lines are printed as they come, so every figure can be traced to its command.
# The server is stopped with SIGTERM (also on any exit) and the data directory removed.
set -euo pipefail

usage() { echo "usage: $0 BIN_DIR quick|full" >&2; exit 2; }
[ $# -eq 2 ] || usage
BIN=$1
PROFILE=$2
case $PROFILE in
  quick) ACCOUNTS=1000;   SECS=5;  CEIL_SECS=3 ;;
  full)  ACCOUNTS=100000; SECS=20; CEIL_SECS=10 ;;
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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ledger-bench.XXXXXX")
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "run.sh: ledgerd did not stop within 5 s of SIGTERM; killing it" >&2
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
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

# ---- start the server ----
mkdir -p "$WORK/data"
"${SERVER_PIN[@]}" "$BIN/ledgerd" --listen 127.0.0.1:0 --data-dir "$WORK/data" \
  >"$WORK/ledgerd.out" 2>"$WORK/ledgerd.err" &
SERVER_PID=$!
PORT=""
for _ in $(seq 100); do
  PORT=$(sed -n 's|^listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$WORK/ledgerd.out" | head -1)
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$PORT" ]; then
  echo "run.sh: ledgerd did not print 'listening on' within 10 s; its stderr:" >&2
  tail -20 "$WORK/ledgerd.err" >&2
  exit 1
fi
echo "# ledgerd pid $SERVER_PID port $PORT"

FAILED=0
server_alive() {
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "run.sh: ledgerd died during '$1'; its stderr:" >&2
    tail -20 "$WORK/ledgerd.err" >&2
    SERVER_PID=""
    exit 1
  fi
}
# bench NAME ARGS... -> runs ledger-bench, echoes its output; sets OUT (stdout) and LINE (the
# summary line). A failing run is reported and the suite goes on; the exit status says so.
bench() {
  local name=$1; shift
  local rc=0
  echo "## $name: ledger-bench -p PORT ${CLIENT_CPU[*]} $*"
  OUT=$("$BIN/ledger-bench" -p "$PORT" "${CLIENT_CPU[@]}" "$@" 2>"$WORK/bench.err") || rc=$?
  printf '%s\n' "$OUT"
  if [ -s "$WORK/bench.err" ]; then sed 's/^/  stderr: /' "$WORK/bench.err" | head -12; fi
  LINE=$(printf '%s\n' "$OUT" | grep '^mode=' | tail -1 || true)
  if [ $rc -ne 0 ]; then
    echo "run.sh: '$name' exited $rc" >&2
    FAILED=1
  fi
  server_alive "$name"
}

# ---- accounts: created and funded once, used by every transfer figure ----
bench setup -S "$ACCOUNTS" -c 64
SETUP=$(printf '%s\n' "$OUT" | grep '^setup ' || true)
FIRST=$(kv "$SETUP" first); LAST=$(kv "$SETUP" last)
if [ -z "$FIRST" ] || [ "$(kv "$SETUP" contiguous)" != 1 ]; then
  echo "run.sh: account setup failed" >&2
  exit 1
fi
RANGE="$FIRST-$LAST"

# ---- the figures ----
WRK_RPS=""
if command -v wrk >/dev/null; then
  echo "## health (wrk): wrk -t1 -c64 -d${SECS}s http://127.0.0.1:PORT/healthz"
  WRK_OUT=$("${CLIENT_PIN[@]}" wrk -t1 -c64 -d"${SECS}s" "http://127.0.0.1:$PORT/healthz" || true)
  printf '%s\n' "$WRK_OUT" | sed 's/^/  /'
  WRK_RPS=$(printf '%s\n' "$WRK_OUT" | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p')
  server_alive "wrk health"
fi
bench health -m health -c 64 -d "$SECS";                        HEALTH=$LINE
bench transfer -m transfer -c 256 -d "$SECS" -A "$RANGE";       TRANSFER=$LINE
bench batch -m batch -b 8190 -c 8 -d "$SECS" -A "$RANGE";       BATCH=$LINE
bench hot -m hot -c 256 -d "$SECS" -A "$RANGE";                 HOT=$LINE
# Open loop at half the closed-loop rate: latency without coordinated omission.
HALF=$(awk -v r="$(kv "$TRANSFER" req_per_s)" 'BEGIN { printf "%d", (r > 2 ? r / 2 : 1) }')
bench transfer-open -m transfer -c 256 -d "$SECS" -r "$HALF" -A "$RANGE"; OPEN=$LINE

# ---- the table ----
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.3f", a / b }'; }
row() { printf '| %-44s | %14s | %-34s | %7s |\n' "$1" "$2" "$3" "$(ratio "$2" "$4")"; }
fmt() { [ -n "$1" ] && printf '%.0f' "$1" || printf -- '-'; }

echo
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
ERRS=0
for l in "$HEALTH" "$TRANSFER" "$BATCH" "$HOT" "$OPEN"; do
  e=$(kv "$l" errors); ERRS=$((ERRS + ${e:-1}))  # a missing summary line counts as an error
done
echo
echo "errors across runs: $ERRS (see the raw lines above: unexpected statuses, closed connections)"
[ "$FAILED" -eq 0 ] || exit 1
