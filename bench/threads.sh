#!/usr/bin/env bash
# bench/threads.sh — CPU time per transfer (or request), by ledgerd thread and user/system,
# during a batch, single-transfer or /healthz run: the per-thread figures of docs/performance.md ("What changed", session 9). Less noisy
# than throughput on a shared VM: a slower run is slower in every thread, and what a change
# moves shows in its own thread.
#
# usage: bench/threads.sh BIN_DIR [BIN_DIR ...]
#   each BIN_DIR holds a ledgerd (e.g. build/bin, or a copy of an older build); the load
#   generator is build/bin/ledger-bench of this checkout. With several, they alternate.
# environment (defaults in brackets): ROUNDS [1] rounds over the BIN_DIRs; SECS [8] seconds
#   per run; N [1000000] accounts; CPUS [0,1] ledgerd's CPUs (taskset); the load generator
#   runs on CPU 1; MODE [batch]: batch (-m batch -b 8190 -c 8, as goal 1), transfer
#   (-m transfer -c 256, as goal 2; use CPUS=0 as the bench does) or health (-m health
#   -c 256, goal 2's baseline); ARGS: more ledgerd flags.
# Prints per run: the directory, transfers (or requests)/s, then thread=user/system ns of CPU
#   per transfer (request) for each thread that used at least 1 ns (from
#   /proc/PID/task/*/stat before and after), and total= their sum.
# Bounded: ROUNDS x BIN_DIRs runs of SECS seconds plus setup; servers are stopped (SIGTERM)
# and their data directories removed.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$HERE/build/bin/ledger-bench
for d in "$@"; do [ -x "$d/ledgerd" ] || { echo "threads.sh: $d/ledgerd is missing" >&2; exit 2; }; done
[ -x "$BENCH" ] || { echo "threads.sh: $BENCH is missing (make build)" >&2; exit 2; }
ROUNDS=${ROUNDS:-1}; SECS=${SECS:-8}; N=${N:-1000000}; CPUS=${CPUS:-0,1}; MODE=${MODE:-batch}
case $MODE in
  batch) LOAD=(-m batch -b 8190 -c 8) ;;
  transfer) LOAD=(-m transfer -c 256) ;;
  health) LOAD=(-m health -c 256) ;;
  *) echo "threads.sh: MODE is batch, transfer or health" >&2; exit 2 ;;
esac
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ledger-threads.XXXXXX")
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill "$PID"; wait "$PID" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
CLK=$(getconf CLK_TCK)
# thread name, user ticks, system ticks (summed over threads of one name)
ticks() {
  local t
  for t in /proc/"$PID"/task/*; do
    printf '%s %s\n' "$(cat "$t/comm")" "$(awk '{print $14, $15}' "$t/stat")"
  done | awk '{u[$1] += $2; s[$1] += $3} END {for (k in u) print k, u[k], s[k]}' | sort
}
run() {  # run BIN_DIR
  local bin=$1 d p="" range out
  d=$(mktemp -d "$WORK/run.XXXXXX")
  : >"$d/out" # exists before the loop below reads it (set -e)
  # shellcheck disable=SC2086  # extra flags are words
  taskset -c "$CPUS" "$bin/ledgerd" --listen 127.0.0.1:0 --data-dir "$d/data" --rate-limit off ${ARGS:-} \
    >"$d/out" 2>"$d/err" &
  PID=$!
  for _ in $(seq 200); do
    p=$(sed -n 's|^listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$d/out"); [ -n "$p" ] && break; sleep 0.05
  done
  [ -n "$p" ] || { echo "threads.sh: ledgerd did not start:" >&2; tail -5 "$d/err" >&2; exit 1; }
  range=$("$BENCH" -p "$p" --token-file "$d/data/bootstrap-admin-key" -S "$N" -c 64 --cpu 1 |
    sed -n 's/.*first=\([0-9]*\).*last=\([0-9]*\).*/\1-\2/p')
  ticks >"$d/t0"
  out=$("$BENCH" -p "$p" --token-file "$d/data/bootstrap-admin-key" --cpu 1 "${LOAD[@]}" \
    -d "$SECS" -A "$range" | grep '^mode=')
  ticks >"$d/t1"
  local transfers tps
  if [ "$MODE" = health ]; then
    transfers=$(printf '%s\n' "$out" | tr ' ' '\n' | sed -n 's/^requests=//p')
    tps=$(printf '%s\n' "$out" | tr ' ' '\n' | sed -n 's/^req_per_s=//p')
  else
    transfers=$(printf '%s\n' "$out" | tr ' ' '\n' | sed -n 's/^transfers=//p')
    tps=$(printf '%s\n' "$out" | tr ' ' '\n' | sed -n 's/^transfers_per_s=//p')
  fi
  join "$d/t0" "$d/t1" | awk -v t="$transfers" -v clk="$CLK" -v tps="$tps" -v b="$bin" '
    BEGIN { printf "%s per_s=%s", b, tps }
    { u = ($4 - $2) / clk * 1e9 / t; s = ($5 - $3) / clk * 1e9 / t; all += u + s
      if (u + s >= 1) printf " %s=%.0f/%.0f", $1, u, s }
    END { printf " total=%.0f\n", all }'
  kill "$PID"; wait "$PID" || true; PID=""
}
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do run "$bin"; done
done
