#!/usr/bin/env bash
# bench/recovery.sh — issue 6, goals 5 (recovery time) and 6 (memory per account, disk per
# transfer), measured on one fresh ledgerd.
#
# usage: bench/recovery.sh BIN_DIR [ACCOUNTS] [TRANSFERS]     (defaults 1000000 10000000)
#
# 1. Starts ledgerd like bench/run.sh (fresh data dir under ${TMPDIR:-/tmp}, --listen
#    127.0.0.1:0, rate limits on at 1M/s, default snapshot interval, pinned to CPU 0 when there
#    are two CPUs or more; ledger-bench on CPU 1, authenticated with the bootstrap admin key).
# 2. Memory (goal 6a): VmRSS of the server (/proc/PID/status) after start, then
#    `ledger-bench -S ACCOUNTS` creates the accounts and deposits into each (one transfer per
#    account). A sampler reads VmRSS every 20 ms during that setup; the sample at the end of
#    the creation phase (ledger-bench's create_s after its start) gives the accounts alone.
#    Cross-check: the batch step below gives the resident bytes per transfer, and the setup
#    delta minus ACCOUNTS deposits at that cost gives the accounts' share again.
#    rss_bytes_per_account = (RSS at end of creation - RSS after start) / ACCOUNTS.
# 3. Disk (goal 6b): TRANSFERS transfers through POST /v1/transfers/batch (8190 per request,
#    random pairs among the accounts, 8 connections), then SIGTERM (a final snapshot is written
#    if at least a quarter of --snapshot-log-mb of log is not covered by a completed one).
#    The denominator is every transfer in the ledger: the batch transfers plus the ACCOUNTS
#    deposits. log_bytes_per_transfer = ledger.log / that; disk_bytes_per_transfer =
#    (ledger.log + snapshot-*.snap) / that. The log's marginal cost of a batch transfer (log
#    growth during the batch step / batch transfers) is printed on a detail line.
# 4. Recovery (goal 5): restarts ledgerd on the same data dir and port and times exec ->
#    first `GET /readyz` 200 (polled every 20 ms over bash /dev/tcp): (1) as left by the clean
#    stop (snapshot + log tail), (2) with the snapshot files moved aside: the whole log
#    replayed, (3) the snapshot put back: snapshot + tail again, on memory as warm as (2)'s
#    (see step 8). The log is in the page cache (just written); the snapshot is not (written
#    with O_DIRECT; dropped again before (3)). The server's own "recovery:" lines are printed.
#    Servers 2 and 3 are SIGKILLed (the data is discarded).
# Progress goes to stderr. Detail lines go to stdout; the LAST stdout line is:
#   recovery accounts=A transfers=T rss_bytes_per_account=X log_bytes_per_transfer=Y
#            disk_bytes_per_transfer=Z ready_s_clean=R1 ready_s_log_only=R2
#            ready_s_snapshot_again=R3 search_...
# (one line; T = transfers posted by the batch step). Every started ledgerd is stopped and the
# data dir removed on exit.
set -euo pipefail

usage() { echo "usage: $0 BIN_DIR [ACCOUNTS] [TRANSFERS]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
BIN=$1
ACCOUNTS=${2:-1000000}
TRANSFERS=${3:-10000000}
[[ $ACCOUNTS =~ ^[0-9]+$ && $ACCOUNTS -ge 2 && $TRANSFERS =~ ^[0-9]+$ && $TRANSFERS -ge 1 ]] || usage
for exe in ledgerd ledger-bench; do
  [ -x "$BIN/$exe" ] || { echo "$0: $BIN/$exe is missing (build first)" >&2; exit 2; }
done

say() { echo "recovery.sh: $*" >&2; }

NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
  SERVER_PIN=(taskset -c 0); CLIENT_CPU=(--cpu 1); SAMPLER_CPU=1
else
  SERVER_PIN=(); CLIENT_CPU=(); SAMPLER_CPU=""
fi
RATE_FLAGS=(--rate-limit write.addr=1000000/1000000 --rate-limit write.cred=1000000/1000000
            --rate-limit read.addr=1000000/1000000 --rate-limit read.cred=1000000/1000000)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ledger-recovery.XXXXXX")
DATA=$WORK/data
mkdir -p "$DATA"
SERVER_PID=""
SAMPLER_PID=""
cleanup() {
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null || true   # its data dir is removed just below
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.1f", a / b }'; }
kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
rss_bytes() {  # rss_bytes PID -> VmRSS in bytes
  local k v _
  while read -r k v _; do
    if [ "$k" = VmRSS: ]; then echo $((v * 1024)); return; fi
  done <"/proc/$1/status"
  echo 0
}
fsize() { stat -c %s "$1" 2>/dev/null || echo 0; }
snap_bytes() { local t=0 f; for f in "$DATA"/snapshot-*.snap; do [ -e "$f" ] && t=$((t + $(fsize "$f"))); done; echo $t; }

# start_server LOG_NAME LISTEN -> sets SERVER_PID and T_EXEC (epoch seconds just before exec)
start_server() {
  local name=$1 listen=$2
  : >"$WORK/$name.out" # exists before the callers' loops read it (set -e, pipefail)
  T_EXEC=$(now)
  "${SERVER_PIN[@]}" "$BIN/ledgerd" --listen "$listen" --data-dir "$DATA" "${RATE_FLAGS[@]}" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  SERVER_PID=$!
}
# stop_server [SECS] -> SIGTERM, wait up to SECS (120) for exit, then SIGKILL; sets STOP_S.
stop_server() {
  local limit=${1:-120} t0 i
  t0=$(now)
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for ((i = 0; i < limit * 20; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    say "ledgerd $SERVER_PID did not stop within $limit s of SIGTERM; killing it"
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  STOP_S=$(sub "$(now)" "$t0")
}
die_server() {
  say "ledgerd died or failed ($1); its stderr:"
  tail -20 "$WORK/$2.err" >&2
  exit 1
}
# readyz_ok -> 0 when GET /readyz on $PORT answers 200
readyz_ok() {
  local fd line
  { exec {fd}<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || return 1
  { printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$fd"; } 2>/dev/null || { exec {fd}>&-; return 1; }
  line=""
  { read -r -t 2 line <&"$fd"; } 2>/dev/null || true
  exec {fd}>&-
  [[ $line == "HTTP/1."?" 200"* ]]
}
# wait_ready NAME -> polls /readyz every 20 ms (up to 300 s); sets READY_S (exec -> 200)
wait_ready() {
  local name=$1 i
  for ((i = 0; i < 15000; i++)); do
    if readyz_ok; then READY_S=$(sub "$(now)" "$T_EXEC"); return; fi
    kill -0 "$SERVER_PID" 2>/dev/null || die_server "restart $name" "$name"
    sleep 0.02
  done
  die_server "restart $name: not ready within 300 s" "$name"
}
# recovery_lines NAME -> the server's "recovery:" lines, plus the time from exec to the snapshot
# being loaded (the timestamp of its "recovery: snapshot" line; 1 ms resolution)
recovery_lines() {
  local name=$1 l ts
  grep 'recovery' "$WORK/$name.err" | sed "s/^/# $name stderr: /" || true
  l=$(grep 'recovery: snapshot seq' "$WORK/$name.err" | head -1 || true)
  if [ -n "$l" ]; then
    ts=$(date -u -d "${l%% *}" +%s.%N 2>/dev/null || true)
    [ -n "$ts" ] && echo "# $name: snapshot loaded $(sub "$ts" "$T_EXEC") s after exec (log timestamp)"
  fi
  return 0
}

say "work dir $WORK ($(df -PT "$WORK" | awk 'NR==2 {print $2, $1}')); load average $(cut -d' ' -f1-3 /proc/loadavg); $NCPU CPUs"
echo "# recovery/memory/disk bench $(date -u +%Y-%m-%dT%H:%M:%SZ): accounts=$ACCOUNTS transfers=$TRANSFERS"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $NCPU CPUs"
T_ALL=$(now)

# ---- 1. fresh server ----
start_server first 127.0.0.1:0
PORT=""
for _ in $(seq 200); do
  PORT=$(sed -n 's|^listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$WORK/first.out" | head -1)
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.05
done
[ -n "$PORT" ] || die_server "no 'listening on' line" first
[ -s "$DATA/bootstrap-admin-key" ] || die_server "no bootstrap-admin-key" first
AUTH=(--token-file "$DATA/bootstrap-admin-key")
sleep 0.5
RSS0=$(rss_bytes "$SERVER_PID")
say "ledgerd pid $SERVER_PID port $PORT; VmRSS after start $RSS0 B"

# ---- 2. accounts (+ one deposit each), VmRSS sampled every 20 ms ----
SAMPLES=$WORK/rss.samples
(
  [ -n "$SAMPLER_CPU" ] && taskset -cp "$SAMPLER_CPU" "$BASHPID" >/dev/null 2>&1
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    echo "$EPOCHREALTIME $(rss_bytes "$SERVER_PID")"
    sleep 0.02
  done
) >"$SAMPLES" 2>/dev/null &
SAMPLER_PID=$!
say "creating and funding $ACCOUNTS accounts (ledger-bench -S $ACCOUNTS -c 64)"
T_SETUP=$(now)
SETUP_OUT=$("$BIN/ledger-bench" -p "$PORT" "${CLIENT_CPU[@]}" "${AUTH[@]}" -S "$ACCOUNTS" -c 64) ||
  { say "setup failed: $SETUP_OUT"; kill -0 "$SERVER_PID" 2>/dev/null || die_server setup first; exit 1; }
kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
SETUP=$(printf '%s\n' "$SETUP_OUT" | grep '^setup ' || true)
echo "$SETUP"
FIRST=$(kv "$SETUP" first); LAST=$(kv "$SETUP" last)
[ -n "$FIRST" ] && [ "$(kv "$SETUP" contiguous)" = 1 ] || { say "account setup failed"; exit 1; }
CREATE_S=$(kv "$SETUP" create_s); DEPOSIT_S=$(kv "$SETUP" deposit_s)
sleep 0.3
RSS1=$(rss_bytes "$SERVER_PID")
# the last sample taken before the creation phase ended
T_CREATED=$(awk -v a="$T_SETUP" -v b="$CREATE_S" 'BEGIN { printf "%.6f", a + b }')
RSS_CREATED=$(awk -v t="$T_CREATED" '$1 <= t { r = $2 } END { print r + 0 }' "$SAMPLES")
LOG_SETUP=$(fsize "$DATA/ledger.log")
say "setup: create ${CREATE_S}s ($(div "$ACCOUNTS" "$CREATE_S") accounts/s), deposits ${DEPOSIT_S}s; VmRSS $RSS_CREATED B after creation, $RSS1 B after deposits; log $LOG_SETUP B"

# ---- 3. batch transfers ----
REQS=$(((TRANSFERS + 8189) / 8190))
BATCH_MAX_S=${RECOVERY_BATCH_MAX_S:-150}   # time cap: on a busy box fewer transfers are posted (said below)
say "sending $REQS batch requests of 8190 transfers (ledger-bench -m batch -b 8190 -c 8 -n $REQS -A $FIRST-$LAST)"
BATCH_OUT=$("$BIN/ledger-bench" -p "$PORT" "${CLIENT_CPU[@]}" "${AUTH[@]}" -m batch -b 8190 -c 8 \
            -n "$REQS" -d "$BATCH_MAX_S" -A "$FIRST-$LAST" 2>"$WORK/bench.err") || say "batch run exited non-zero: $(head -5 "$WORK/bench.err")"
BATCH=$(printf '%s\n' "$BATCH_OUT" | grep '^mode=' | tail -1 || true)
echo "$BATCH"
kill -0 "$SERVER_PID" 2>/dev/null || die_server "batch" first
POSTED=$(kv "$BATCH" transfers); POSTED=${POSTED:-0}
[ "$POSTED" -gt 0 ] || { say "no transfer posted by the batch step"; exit 1; }
[ "$POSTED" -ge "$TRANSFERS" ] || say "note: only $POSTED of $TRANSFERS transfers posted within the ${BATCH_MAX_S}s cap"
[ "$(kv "$BATCH" errors)" = 0 ] || say "batch step reported errors: $BATCH"
sleep 0.3
RSS2=$(rss_bytes "$SERVER_PID")
LOG_BATCH=$(fsize "$DATA/ledger.log")
say "batch: $POSTED transfers at $(kv "$BATCH" transfers_per_s)/s; VmRSS $RSS2 B; log $LOG_BATCH B"

# ---- memory figures ----
TOTAL_T=$((POSTED + ACCOUNTS))   # every transfer in the ledger: batch + one deposit per account
RSS_PER_ACCOUNT=$(div $((RSS_CREATED - RSS0)) "$ACCOUNTS")
RSS_PER_ACCOUNT_FUNDED=$(div $((RSS1 - RSS0)) "$ACCOUNTS")
RSS_PER_TRANSFER=$(div $((RSS2 - RSS1)) "$POSTED")
RSS_PER_ACCOUNT_EST=$(awk -v d=$((RSS1 - RSS0)) -v n="$ACCOUNTS" -v t="$RSS_PER_TRANSFER" \
  'BEGIN { printf "%.1f", (d - n * t) / n }')
echo "# memory: VmRSS after start $RSS0 B; after creating $ACCOUNTS accounts $RSS_CREATED B (sampled at create_s=${CREATE_S}s): $RSS_PER_ACCOUNT B/account"
echo "# memory: after the deposits (one transfer per account) $RSS1 B: $RSS_PER_ACCOUNT_FUNDED B per funded account"
echo "# memory: after $POSTED batch transfers $RSS2 B: $RSS_PER_TRANSFER B per transfer; cross-check: (setup delta - $ACCOUNTS deposits x $RSS_PER_TRANSFER B) / $ACCOUNTS = $RSS_PER_ACCOUNT_EST B/account (this one also charges the accounts with whatever else the funding step left resident, e.g. request buffers)"

# ---- 4. clean stop, disk figures ----
say "stopping ledgerd (SIGTERM)"
stop_server 180
STOP1_S=$STOP_S
grep -E 'snapshot|stopped|signal' "$WORK/first.err" | sed 's/^/# first stderr: /' || true
LOG_BYTES=$(fsize "$DATA/ledger.log")
SNAP_BYTES=$(snap_bytes)
SNAP_FILES=$(cd "$DATA" && ls snapshot-*.snap 2>/dev/null | tr '\n' ' ' || true)
LOG_PER_T=$(div "$LOG_BYTES" "$TOTAL_T")
DISK_PER_T=$(div $((LOG_BYTES + SNAP_BYTES)) "$TOTAL_T")
echo "# stop: SIGTERM -> exit ${STOP1_S} s"
echo "# disk: ledger.log $LOG_BYTES B, snapshots $SNAP_BYTES B (${SNAP_FILES:-none}); $TOTAL_T transfers in the ledger ($POSTED batch + $ACCOUNTS deposits)"
echo "# disk: log $LOG_PER_T B/transfer, log + snapshots $DISK_PER_T B/transfer; log growth during the batch step $(div $((LOG_BATCH - LOG_SETUP)) "$POSTED") B per batch transfer; snapshot $(div "$SNAP_BYTES" "$TOTAL_T") B/transfer"
say "log $LOG_BYTES B, snapshots $SNAP_BYTES B; stop took ${STOP1_S}s"

# ---- 5. recovery: as left by the clean stop ----
say "restart 1: as left by the clean stop (snapshots: ${SNAP_FILES:-none})"
start_server clean "127.0.0.1:$PORT"
wait_ready clean
READY_CLEAN=$READY_S
RSS_CLEAN=$(rss_bytes "$SERVER_PID")
echo "# restart clean: exec -> /readyz 200 in $READY_CLEAN s (VmRSS then $RSS_CLEAN B)"
recovery_lines clean
say "ready in ${READY_CLEAN}s"
stop_server 180
echo "# restart clean: SIGTERM -> exit $STOP_S s"

# ---- 6. recovery: the whole log, no snapshot ----
# The snapshots are moved aside (same file system: a rename), for restart 3.
mkdir -p "$WORK/snapsave"
for f in "$DATA"/snapshot-*.snap; do [ -e "$f" ] && mv "$f" "$WORK/snapsave/"; done
rm -f "$DATA/snapshot.tmp"
say "restart 2: snapshots moved aside, the whole log replayed ($LOG_BYTES B)"
start_server logonly "127.0.0.1:$PORT"
wait_ready logonly
READY_LOG=$READY_S
RSS_LOG=$(rss_bytes "$SERVER_PID")
echo "# restart log only: exec -> /readyz 200 in $READY_LOG s (VmRSS then $RSS_LOG B)"
recovery_lines logonly

# ---- 7. search (issue 4): a page of 50 from the ledger just recovered ----
# Each query 5 times with curl (a new connection each: the figure includes connecting);
# the median time_total. "scan" is a filter with no index that matches nothing: the engine
# steps over its bounded 100,000 transfers and answers an empty page with a cursor.
search_ms() {
  local q=$1 i t=() rows med
  for i in 1 2 3 4 5; do
    t+=("$(curl -s -o "$WORK/search.json" -w '%{time_total}' -H "Authorization: Bearer $(cat "$DATA/bootstrap-admin-key")" \
      "http://127.0.0.1:$PORT/v1/transfers?$q")")
  done
  rows=$(grep -o '"seq":' "$WORK/search.json" | wc -l || true)
  med=$(printf '%s\n' "${t[@]}" | sort -g | sed -n 3p)
  echo "# search $q: $rows rows, median of 5: $med s" >&2
  awk -v v="$med" 'BEGIN { printf "%.2f", v * 1000 }'
}
S_NEW=$(search_ms "limit=50")
S_ACC=$(search_ms "account_id=$((ACCOUNTS / 2 + 10))&limit=50")
S_FLAG=$(search_ms "flagged=true&limit=50")
S_SCAN=$(search_ms "min_amount=999999999999&limit=50")
S_Q=$(search_ms "q=nothing-has-this&limit=50")
echo "# search on $POSTED+ transfers (curl, new connection each, median of 5): newest page ${S_NEW} ms, one account ${S_ACC} ms, flagged ${S_FLAG} ms, unindexed filter (bounded scan, empty page) ${S_SCAN} ms, q (no descriptions: bounded scan) ${S_Q} ms"
say "ready in ${READY_LOG}s; killing it (SIGKILL: no final snapshot is needed)"
kill -KILL "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

# ---- 8. recovery from the snapshot again, on memory as warm as restart 2's ----
# Restart 1 runs first, on memory the VM has not handed out for a while (first touch costs
# ~2 ns a byte here, docs/performance.md); restart 2 gets what restart 1 just freed. The same
# snapshot restart once more, after restart 2, tells the snapshot's cost from the order's.
# Its pages are dropped from the page cache first (restart 1 read them through it), so it
# reads the disk as restart 1 did.
READY_SNAP2=""
if ls "$WORK/snapsave"/snapshot-*.snap >/dev/null 2>&1; then
  for f in "$WORK/snapsave"/snapshot-*.snap; do
    mv "$f" "$DATA/"
    dd if="$DATA/$(basename "$f")" iflag=nocache count=0 status=none 2>/dev/null || true
  done
  say "restart 3: the snapshot again (after restart 2)"
  start_server again "127.0.0.1:$PORT"
  wait_ready again
  READY_SNAP2=$READY_S
  echo "# restart snapshot again: exec -> /readyz 200 in $READY_SNAP2 s"
  recovery_lines again
  say "ready in ${READY_SNAP2}s; killing it (SIGKILL: its data dir is discarded)"
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
fi

echo "# goals: rss_bytes_per_account <= 256, disk_bytes_per_transfer <= 256, ready_s <= 5; total run $(sub "$(now)" "$T_ALL") s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "recovery accounts=$ACCOUNTS transfers=$POSTED rss_bytes_per_account=$RSS_PER_ACCOUNT log_bytes_per_transfer=$LOG_PER_T disk_bytes_per_transfer=$DISK_PER_T ready_s_clean=$READY_CLEAN ready_s_log_only=$READY_LOG ready_s_snapshot_again=${READY_SNAP2:--} search_newest_ms=$S_NEW search_account_ms=$S_ACC search_flagged_ms=$S_FLAG search_scan_ms=$S_SCAN"
