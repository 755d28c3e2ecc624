#!/usr/bin/env bash
# bench/compat.sh — the seed systems' load scenarios (issue 5) against `ledgerd --compat`,
# with their correctness checks; docs/performance.md "Compatibility scenarios (issue 5)".
#
# usage: bench/compat.sh BIN_DIR quick|full
#   full (< 90 s):
#     1. a fresh ledgerd --compat --compat-open with the sign-in cost at libsodium's minimum
#        (--argon2-opslimit 1 --argon2-memlimit-kib 8: the ledger path, not the password hash):
#        microfin at 600 iterations/s (6 requests each: ~3,600 req/s, the original's published
#        rate) for 20 s; banking 10,000 x {"amount": -2} from 1,000 connections against 10000
#        (must be exactly 5,000 x 200 and 5,000 x 400, balance 0.00); Flask 64 connections 15 s;
#     2. a fresh ledgerd --compat with production Argon2id (64 MiB, 2 passes): microfin at
#        4 iterations/s for 10 s: what a real sign-in costs on this machine.
#   quick (< 20 s): the same at a tenth of the size.
# ledgerd on CPU 0, ledger-compat-bench on CPU 1 (two CPUs or more); rate limits raised to
# 1M/s so that they never throttle. Raw output of every run is printed; the last line is
# "compat key=value ..." for bench/run.sh. Exit status 1 if a scenario's check failed.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BIN_DIR quick|full" >&2; exit 2; }
BIN=$1
case $2 in
  quick) MF_RATE=600; MF_SECS=1; BK_N=1000; BK_C=100; BK_BAL=1000; FL_SECS=1; PR_RATE=4; PR_SECS=2 ;;
  full)  MF_RATE=600; MF_SECS=20; BK_N=10000; BK_C=1000; BK_BAL=10000; FL_SECS=15; PR_RATE=4; PR_SECS=10 ;;
  *) echo "usage: $0 BIN_DIR quick|full" >&2; exit 2 ;;
esac
for exe in ledgerd ledger-compat-bench; do
  [ -x "$BIN/$exe" ] || { echo "$0: $BIN/$exe is missing (build first)" >&2; exit 2; }
done
SERVER_PIN=(); CLIENT=()
if [ "$(nproc)" -ge 2 ]; then SERVER_PIN=(taskset -c 0); CLIENT=(--cpu 1); fi
RATES=(--rate-limit write.addr=1000000/1000000 --rate-limit write.cred=1000000/1000000
       --rate-limit read.addr=1000000/1000000 --rate-limit read.cred=1000000/1000000
       --rate-limit signin.addr=1000000/1000000 --rate-limit signin.user=1000000/1000000)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ledger-compat-bench.XXXXXX")
PID=""
stop() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"; for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$PID" 2>/dev/null && kill -KILL "$PID"
    wait "$PID" 2>/dev/null || true
  fi
  PID=""
}
trap 'stop; rm -rf "$WORK"' EXIT
# start NAME ARGS... -> PORT, PID, KEY (the bootstrap admin key file)
start() {
  local name=$1; shift
  mkdir -p "$WORK/$name"
  : >"$WORK/$name/out" # exists before the loop below reads it (set -e)
  "${SERVER_PIN[@]}" "$BIN/ledgerd" --listen 127.0.0.1:0 --data-dir "$WORK/$name/data" "$@" \
    >"$WORK/$name/out" 2>"$WORK/$name/err" &
  PID=$!
  PORT=""
  for _ in $(seq 100); do
    PORT=$(sed -n 's|^listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$WORK/$name/out")
    [ -n "$PORT" ] && break; sleep 0.1
  done
  [ -n "$PORT" ] || { echo "$0: ledgerd ($name) did not start" >&2; tail -5 "$WORK/$name/err" >&2; exit 1; }
  KEY=$WORK/$name/data/bootstrap-admin-key
  echo "# ledgerd ($name) pid $PID: ledgerd --listen 127.0.0.1:0 --data-dir DIR $*"
}
FAILED=0
# run LABEL ARGS... -> ledger-compat-bench; LINE = its summary line
run() {
  local label=$1; shift
  echo "## $label: ledger-compat-bench -p PORT ${CLIENT[*]} $*" | sed "s|$WORK/|WORK/|g"
  local out rc=0
  out=$("$BIN/ledger-compat-bench" -p "$PORT" "${CLIENT[@]}" "$@" 2>&1) || rc=$?
  printf '%s\n' "$out"
  LINE=$(printf '%s\n' "$out" | grep '^compat_' | tail -1 || true)
  if [ $rc -ne 0 ]; then echo "compat.sh: $label failed (exit $rc)" >&2; FAILED=1; fi
}
kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

echo "# compat scenarios ($2) $(date -u +%Y-%m-%dT%H:%M:%SZ); cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs"
echo "# git: $(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo none)"
start fast --compat --compat-open "${RATES[@]}" --argon2-opslimit 1 --argon2-memlimit-kib 8
run microfin -s microfin -r "$MF_RATE" -d "$MF_SECS" -c 1024 -u 1000; MF=$LINE
run banking -s banking --open --token-file "$KEY" -n "$BK_N" -c "$BK_C" --balance "$BK_BAL"; BK=$LINE
run flask -s flask --open --token-file "$KEY" -c 64 -d "$FL_SECS"; FL=$LINE
stop
start argon2 --compat "${RATES[@]}"
run microfin-argon2 -s microfin -r "$PR_RATE" -d "$PR_SECS" -c 256 -u 20; PR=$LINE
stop
echo "compat microfin_req_per_s=$(kv "$MF" req_per_s) microfin_iteration_avg_ms=$(kv "$MF" iteration_avg_ms)" \
  "microfin_ok=$(kv "$MF" ok) banking_s200=$(kv "$BK" s200) banking_s400=$(kv "$BK" s400)" \
  "banking_req_per_s=$(kv "$BK" req_per_s) banking_ok=$(kv "$BK" ok) flask_req_per_s=$(kv "$FL" req_per_s)" \
  "flask_ok=$(kv "$FL" ok) microfin_argon2_signin_avg_ms=$(kv "$PR" signin_avg_ms) microfin_argon2_ok=$(kv "$PR" ok)"
exit "$FAILED"
