#!/usr/bin/env bash
# bench/ab.sh — two ledgerd servers side by side, the same load alternated between them: the
# A/B comparisons of docs/performance.md and docs/storage.md ("What changed", session 6).
#
# usage: bench/ab.sh BIN_A BIN_B
#   BIN_A, BIN_B: directories holding a ledgerd each (e.g. a worktree of an older commit built
#   with `cmake -S . -B build && cmake --build build --target ledgerd`, and build/bin); the
#   load generator is build/bin/ledger-bench of this checkout.
# environment (defaults in brackets):
#   N [1000000] accounts per server; SECS [8] seconds per run; ROUNDS [4] rounds (A then B,
#   the order flipped each round); CPUS [0,1] the servers' CPUs (taskset); the load generator
#   runs on CPU 1; MODE [batch] and MARGS [-b 8190 -c 8] for ledger-bench (e.g. MODE=transfer
#   MARGS="-c 256"); ARGS_A, ARGS_B: more ledgerd flags for one side (e.g. "--snapshot-log-mb
#   1048576"); ARGS: for both.
# Each round starts once neither server has a live child (a snapshot being written), so one
# server's snapshot never runs during the other's measurement. Prints, per run, the server,
# transfers/s, p50/p99, and the durable batches of the run with their mean write + fdatasync
# (from /metrics); then each server's snapshot log lines. Servers are stopped (SIGTERM) and
# their data directories removed on exit. Bounded: ROUNDS x 2 runs of SECS seconds, plus setup.
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$HERE/build/bin/ledger-bench
for b in "$1/ledgerd" "$2/ledgerd" "$BENCH"; do [ -x "$b" ] || { echo "ab.sh: $b is missing (build first)" >&2; exit 2; }; done
N=${N:-1000000}; SECS=${SECS:-8}; ROUNDS=${ROUNDS:-4}; CPUS=${CPUS:-0,1}
MODE=${MODE:-batch}; MARGS=${MARGS:--b 8190 -c 8}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ledger-ab.XXXXXX")
declare -A BIN PORT PID DIR RANGE
BIN[A]=$1; BIN[B]=$2
cleanup() {
  local k
  for k in A B; do
    if [ -n "${PID[$k]:-}" ] && kill -0 "${PID[$k]}" 2>/dev/null; then kill "${PID[$k]}"; wait "${PID[$k]}" || true; fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
start() {  # start KEY EXTRA-ARGS
  local k=$1 extra=$2 d=$WORK/$1 p="" out
  mkdir -p "$d"; DIR[$k]=$d
  : >"$d/out" # exists before the loop below reads it (set -e)
  # shellcheck disable=SC2086  # extra flags are words
  taskset -c "$CPUS" "${BIN[$k]}/ledgerd" --listen 127.0.0.1:0 --data-dir "$d/data" --rate-limit off \
    ${ARGS:-} $extra >"$d/out" 2>"$d/err" &
  PID[$k]=$!
  for _ in $(seq 200); do
    p=$(sed -n 's|^listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$d/out"); [ -n "$p" ] && break; sleep 0.05
  done
  [ -n "$p" ] || { echo "ab.sh: server $k did not start:" >&2; tail -5 "$d/err" >&2; exit 1; }
  PORT[$k]=$p
  out=$("$BENCH" -p "$p" --token-file "$d/data/bootstrap-admin-key" -S "$N" -c 64 --cpu 1 | grep '^setup ')
  RANGE[$k]=$(sed -n 's/.*first=\([0-9]*\).*last=\([0-9]*\).*/\1-\2/p' <<<"$out")
  [ -n "${RANGE[$k]}" ] || { echo "ab.sh: account setup failed on $k" >&2; exit 1; }
  echo "# $k: ${BIN[$k]}/ledgerd ${ARGS:-} $extra (pid ${PID[$k]}, $N accounts ${RANGE[$k]})"
}
quiet() {  # waits until neither server has a live child process (a snapshot child)
  local k
  for k in A B; do
    # shellcheck disable=SC2009  # pgrep -P would count a reaped-late zombie as alive
    while ps --ppid "${PID[$k]}" -o stat= | grep -qv Z; do sleep 0.5; done
  done
}
fsync_stats() {  # fsync_stats KEY -> "SUM COUNT" of ledger_engine_fsync_seconds
  curl -s -H "Authorization: Bearer $(head -1 "${DIR[$1]}/data/bootstrap-admin-key")" "http://127.0.0.1:${PORT[$1]}/metrics" |
    awk '/^ledger_engine_fsync_seconds_sum/ { s = $2 } /^ledger_engine_fsync_seconds_count/ { c = $2 } END { print s + 0, c + 0 }'
}
run() {
  local k=$1 m0 line
  quiet
  m0=$(fsync_stats "$k")
  # shellcheck disable=SC2086
  line=$("$BENCH" -p "${PORT[$k]}" --token-file "${DIR[$k]}/data/bootstrap-admin-key" --cpu 1 -m "$MODE" $MARGS \
    -d "$SECS" -A "${RANGE[$k]}" | grep '^mode=')
  echo "$m0 $(fsync_stats "$k")" | awk -v k="$k" -v l="$line" '{
    n = split(l, f, " "); o = "";
    for (i = 1; i <= n; i++) if (f[i] ~ /^(transfers_per_s|p50_us|p99_us|errors)=/) o = o " " f[i];
    b = $4 - $2; printf "%s%s batches=%d fsync_mean_ms=%.2f\n", k, o, b, (b > 0 ? ($3 - $1) / b * 1000 : 0) }'
}
start A "${ARGS_A:-}"
start B "${ARGS_B:-}"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run A; run B; else run B; run A; fi
done
for k in A B; do echo "# $k snapshots:"; grep -h 'snapshot at' "${DIR[$k]}/err" | sed 's/^/  /' | tail -8 || true; done
