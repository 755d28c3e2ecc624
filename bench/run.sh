#!/usr/bin/env bash
# bench/run.sh — ledgerd's benchmark suite: the goal table of issue 6 (docs/performance.md).
#
# usage: bench/run.sh BIN_DIR quick|full
#   quick: 1,000 accounts, 1 s per figure; auth on/off 1 round of 1 s, goal 3 2 rounds of 1 s;
#          goals 4-6 and the perf
#          profiles skipped ("full only")                                         (< 1 minute)
#   full:  1,000,000 accounts in the main run (100,000 in the auth on/off servers), 15 s per
#          figure; auth on/off 4 rounds of 5 s; perf profiles of goals 1 and 2; then
#          bench/pgbench.sh (goal 4) and bench/recovery.sh (goals 5, 6)          (< 10 minutes)
#
# Runs $BIN/ledger-ceiling (the machine's ceiling: memory + append-only log + group commit) on
# the data directory's file system, then:
#  1. auth on/off (issue 3) and rules on/off (issue 4): three fresh servers side by side, one
#     authenticated (bearer: the bootstrap admin key) with the default rules, one --no-auth, one
#     authenticated with an empty rules file; all with the rate limits below and snapshots pushed
#     out of reach; single-transfer and batch runs rotate between them (ROUNDS each, the order
#     rotated every round); the later tables give the median of each and their ratios;
#  2. the main run: a third fresh server, authenticated, MAIN_ACCOUNTS accounts: /healthz (wrk
#     and ledger-bench), single transfers (ledger-bench, wrk + bench/wrk_transfer.lua, ledger-bench
#     again: goal 7 compares wrk with the mean of the two around it), the
#     open-loop run at half the closed-loop rate, the hot account (alternated with random single
#     transfers and /healthz, ROUNDS rounds; goal 3 is the ratio of the hot and random medians,
#     goal 2 that of the random and /healthz medians; in full, goal 2's floors: the p99 of a
#     durable writer that does nothing else, ledger-ceiling --open-loop, at the open loop's
#     rate on the server's CPU while the server answers /healthz at that rate, and /healthz
#     beside that writer at the closed-loop rate as a fourth mode of the rounds), then the batch endpoint last, in
#     rounds alternated with ledger-ceiling rounds (goal 1: the ratio of the two medians)
#     (it logs the most; snapshots it triggers do not land in the other figures); in full, a
#     perf profile of the server during an extra transfer run, an extra /healthz run (goal 2's
#     CPU per request by thread and code, side by side) and an extra batch run;
#  3. full only: bench/pgbench.sh (PostgreSQL, same workload) and bench/recovery.sh
#     (1 M accounts, 10 M transfers: memory, disk, time to ready), each on its own server;
#  4. bench/compat.sh: the seed systems' scenarios against ledgerd --compat (issue 5).
# Every ledgerd runs on a free loopback port with a fresh data directory (pinned to CPU 0 when
# there are two CPUs or more) and with rate limiting ON at 1M/s (burst 1M) per address and per
# credential for reads and writes: far above what the benchmark sends, so the limiter's cost is
# measured but it never throttles (the defaults, 20k/s per credential, would). $BIN/ledger-bench
# (pinned to CPU 1) sends `Authorization: Bearer KEY` with every request, setup included, except
# on the health route (open; kept unauthenticated to compare with wrk). Raw lines of every run
# are printed as they come, so every figure can be traced to its command. The final table
# (figure | value | baseline | ratio | goal | met) is computed from those lines. Servers are
# stopped with SIGTERM (also on any exit) and their data directories removed; perf reports are
# kept in $PERF_DIR (default ${TMPDIR:-/tmp}/ledger-bench-perf).
set -euo pipefail

usage() { echo "usage: $0 BIN_DIR quick|full" >&2; exit 2; }
[ $# -eq 2 ] || usage
BIN=$1
PROFILE=$2
# ACCOUNTS: the auth on/off servers; MAIN_ACCOUNTS: the main run (issue 6 says "random accounts
# among 1 M": full uses 1 M; creating them is ~25 s of the budget on an idle box).
case $PROFILE in
  quick) ACCOUNTS=1000;   MAIN_ACCOUNTS=1000;    SECS=1;  CEIL_SECS=1;  CEIL_CPU_SECS=0.5
         CMP_SECS=1; ROUNDS=1; HOT_ROUNDS=2; PERF_SECS=0; G1_ROUNDS=1; G1_CEIL_SECS=1; G1_BATCH_SECS=1
         FLOOR_SECS=0 ;;
  full)  ACCOUNTS=100000; MAIN_ACCOUNTS=1000000; SECS=15; CEIL_SECS=6;  CEIL_CPU_SECS=3
         CMP_SECS=5; ROUNDS=3; HOT_ROUNDS=3; PERF_SECS=5; G1_ROUNDS=3; G1_CEIL_SECS=4; G1_BATCH_SECS=5
         FLOOR_SECS=10 ;;
  *) usage ;;
esac
PERF_SECS=${BENCH_PERF_SECS:-$PERF_SECS}   # e.g. BENCH_PERF_SECS=2 profiles a quick run too
FLOOR_SECS=${BENCH_FLOOR_SECS:-$FLOOR_SECS} # e.g. BENCH_FLOOR_SECS=1 measures goal 2's floors in a quick run
HERE=$(cd "$(dirname "$0")" && pwd)
T_START=$SECONDS
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
echo "## ceiling: ledger-ceiling -d $CEIL_SECS --cpu-only-seconds $CEIL_CPU_SECS (log under WORK)"
CEIL_LINES=$(TMPDIR=$WORK "${SERVER_PIN[@]}" "$BIN/ledger-ceiling" -d "$CEIL_SECS" \
               --cpu-only-seconds "$CEIL_CPU_SECS")
echo "$CEIL_LINES"
CEIL=$(printf '%s\n' "$CEIL_LINES" | grep '^ceiling ')
CEIL_CPU=$(printf '%s\n' "$CEIL_LINES" | grep '^ceiling_cpu ')
# The same loop keeping each 64-byte record in an in-memory table (fresh memory, as a ledger's
# transfer table is): information only, the goal is judged against the ceiling above.
KEEP_SECS=$([ "$PROFILE" = full ] && echo 5 || echo 1); KEEP_CPU_SECS=$([ "$PROFILE" = full ] && echo 2 || echo 0.5)
echo "## ceiling keeping its records in memory: ledger-ceiling --keep-records -d $KEEP_SECS --cpu-only-seconds $KEEP_CPU_SECS"
KEEP_LINES=$(TMPDIR=$WORK "${SERVER_PIN[@]}" "$BIN/ledger-ceiling" --keep-records -d "$KEEP_SECS" \
               --cpu-only-seconds "$KEEP_CPU_SECS" || true)
echo "$KEEP_LINES"
CEIL_KEPT=$(printf '%s\n' "$KEEP_LINES" | grep '^ceiling_kept ' || true)
CEIL_KEPT_CPU=$(printf '%s\n' "$KEEP_LINES" | grep '^ceiling_kept_cpu ' || true)
# What fresh memory costs here: ledgerd's transfer table grows into new memory (56 bytes a
# transfer); on a VM whose host backs memory lazily, the first touch is the host's cost.
TOUCH_MB=$([ "$PROFILE" = full ] && echo 1024 || echo 256)
echo "## memory: ledger-ceiling --touch-mb $TOUCH_MB"
TOUCH=$("${SERVER_PIN[@]}" "$BIN/ledger-ceiling" --touch-mb "$TOUCH_MB" | grep '^touch ' || true)
echo "$TOUCH"
# Are slow fdatasyncs a property of the log file or of the device? Two files synced at the
# same time (full: 10,000 syncs each, ~6 s; quick: 1,000).
PAIR_N=$([ "$PROFILE" = full ] && echo 10000 || echo 1000)
echo "## fsync tail: ledger-ceiling --sync-pair $PAIR_N (files under WORK)"
PAIR=$(TMPDIR=$WORK "${SERVER_PIN[@]}" "$BIN/ledger-ceiling" --sync-pair "$PAIR_N" --dir "$WORK" | grep '^sync_pair ' || true)
echo "$PAIR"

# start_server NAME LEDGERD_ARGS... -> a fresh ledgerd in $WORK/NAME (data in $WORK/NAME/data);
# sets SERVER_PID, PORT, SERVER_DIR, and AUTH (the ledger-bench arguments that authenticate:
# --token-file with the bootstrap admin key, or nothing under --no-auth).
start_server() {
  local name=$1; shift
  SERVER_DIR=$WORK/$name
  mkdir -p "$SERVER_DIR/data"
  : >"$SERVER_DIR/ledgerd.out" # exists before the loop below reads it (set -e, pipefail)
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
# setup_accounts [N] -> creates and funds N ($ACCOUNTS) accounts on the current server (funding:
# batch transfers from cash:USD, one per account); sets RANGE.
setup_accounts() {
  bench setup "${AUTH[@]}" -S "${1:-$ACCOUNTS}" -c 64
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
# Rules on/off (issue 4): the auth server runs the default rules (no --config: amount >=
# 10,000.00 flags); this third one is the same but with an empty rules file (no rules).
printf '# no rules: the rules-off baseline of bench/run.sh\n' >"$WORK/norules.conf"
start_server norules --config "$WORK/norules.conf" "${RATE_FLAGS[@]}" "${NOSNAP[@]}"
R_PID=$SERVER_PID; R_PORT=$PORT; R_DIR=$SERVER_DIR; R_AUTH=("${AUTH[@]}")
setup_accounts; R_RANGE=$RANGE
[ "$A_RANGE" = "$N_RANGE" ] || echo "run.sh: note: account ranges differ ($A_RANGE vs $N_RANGE)" >&2
use_auth()   { SERVER_PID=$A_PID; PORT=$A_PORT; SERVER_DIR=$A_DIR; AUTH=("${A_AUTH[@]}"); RANGE=$A_RANGE; }
use_noauth() { SERVER_PID=$N_PID; PORT=$N_PORT; SERVER_DIR=$N_DIR; AUTH=(); RANGE=$N_RANGE; }
use_norules() { SERVER_PID=$R_PID; PORT=$R_PORT; SERVER_DIR=$R_DIR; AUTH=("${R_AUTH[@]}"); RANGE=$R_RANGE; }
CMP_T_AUTH=(); CMP_T_NOAUTH=(); CMP_B_AUTH=(); CMP_B_NOAUTH=(); CMP_T_NORULES=(); CMP_B_NORULES=()
# cmp_round KIND R -> one run on each server; the order rotates each round.
cmp_round() {
  local kind=$1 r=$2 order=(auth noauth norules) who args
  case $((r % 3)) in 0) order=(noauth norules auth) ;; 2) order=(norules auth noauth) ;; esac
  for who in "${order[@]}"; do
    "use_$who"
    if [ "$kind" = transfer ]; then args=(-m transfer -c 256); else args=(-m batch -b 8190 -c 8); fi
    bench "$kind-$who-$r" "${AUTH[@]}" "${args[@]}" -d "$CMP_SECS" -A "$RANGE"
    local v; v=$(kv "$LINE" transfers_per_s)
    case $kind-$who in
      transfer-auth) CMP_T_AUTH+=("$v") ;;   transfer-noauth) CMP_T_NOAUTH+=("$v") ;;
      batch-auth) CMP_B_AUTH+=("$v") ;;      batch-noauth) CMP_B_NOAUTH+=("$v") ;;
      transfer-norules) CMP_T_NORULES+=("$v") ;; batch-norules) CMP_B_NORULES+=("$v") ;;
    esac
  done
}
for r in $(seq "$ROUNDS"); do cmp_round transfer "$r"; done
for r in $(seq "$ROUNDS"); do cmp_round batch "$r"; done
stop_server "$A_PID"; stop_server "$N_PID"; stop_server "$R_PID"
rm -rf "$A_DIR" "$N_DIR" "$R_DIR"

# ---- 2. the main run: a fresh authenticated server; accounts created and funded once ----
start_server main "${RATE_FLAGS[@]}"
MAIN_PID=$SERVER_PID
setup_accounts "$MAIN_ACCOUNTS"
FIRST=${RANGE%-*}; LAST=${RANGE#*-}

# run_wrk NAME OUTFILE WRK_ARGS... -> wrk pinned like ledger-bench; its CPU seconds (user+sys,
# from bash's `time`) in WRK_CPU, its output in OUTFILE and on stdout (indented).
run_wrk() {
  local name=$1 out=$2; shift 2
  echo "## $name: wrk $*" | sed "s|$WORK/|WORK/|g; s|$HERE/|bench/|g"
  local TIMEFORMAT='%U %S'
  { time "${CLIENT_PIN[@]}" wrk "$@" >"$out" 2>&1; } 2>"$WORK/wrk.time" || true
  sed 's/^/  /' "$out"
  WRK_CPU=$(awk '{ printf "%.3f", $1 + $2 }' "$WORK/wrk.time")
  server_alive "$name"
}
WRK_RPS=""; WRK_HCPU=""; WRKL_RPS=""; WRKL_CPU=""; WRKL_LINE=""
if command -v wrk >/dev/null; then
  run_wrk "health (wrk)" "$WORK/wrk-health.out" -t1 -c256 -d"${SECS}s" "http://127.0.0.1:$PORT/healthz"
  WRK_RPS=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$WORK/wrk-health.out")
  WRK_HCPU=$WRK_CPU
else
  echo "## wrk not installed: the wrk rows are not measured"
fi
# thread_cpu -> "NET ENGINE OTHER": CPU seconds (user + system) the main server's threads have
# used so far, by thread name (ledger-net; ledger-engine and ledger-commit, its committer; the
# rest: main, pre-fault, log filler, auth pool).
TICK=$(getconf CLK_TCK)
thread_cpu() {
  local t name ticks net=0 eng=0 oth=0
  for t in /proc/"$MAIN_PID"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    ticks=$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null) || continue
    case $name in
      ledger-net) net=$((net + ticks)) ;;
      ledger-engine|ledger-commit) eng=$((eng + ticks)) ;;
      *) oth=$((oth + ticks)) ;;
    esac
  done
  echo "$net $eng $oth"
}
# per_req BEFORE AFTER REQUESTS -> "net/engine/other" microseconds of server CPU per request.
per_req() {
  awk -v a="$1" -v b="$2" -v n="$3" -v tick="$TICK" 'BEGIN {
    split(a, x, " "); split(b, y, " ");
    if (n + 0 == 0) { print "-"; exit }
    for (i = 1; i <= 3; i++) v[i] = (y[i] - x[i]) * 1e6 / tick / n;
    printf "%.2f/%.2f/%.2f", v[1], v[2], v[3] }'
}
CPU0=$(thread_cpu)
bench health -m health -c 256 -d "$SECS";                                   HEALTH=$LINE
CPU1=$(thread_cpu); HEALTH_CPU=$(per_req "$CPU0" "$CPU1" "$(kv "$HEALTH" requests)")
# ledger-bench's own ceiling on the trivial route: 8 requests in flight per connection, so each
# writev/read carries several requests (the server answers them in order).
bench health-pipelined -m health -c 256 -P 8 -d "$((SECS < 5 ? 1 : 5))";    HEALTHP=$LINE
CPU0=$(thread_cpu)
bench transfer "${AUTH[@]}" -m transfer -c 256 -d "$SECS" -A "$RANGE";       TRANSFER=$LINE
CPU1=$(thread_cpu); TRANSFER_CPU=$(per_req "$CPU0" "$CPU1" "$(kv "$TRANSFER" requests)")
# Goal 7: wrk + Lua on the same route, connections and server, bracketed by two ledger-bench
# runs (the one above and one right after): their mean is compared with wrk, so a drift of the
# server over the three runs (a snapshot child, the page cache) favours neither client.
if command -v wrk >/dev/null; then
  run_wrk "transfer (wrk+Lua)" "$WORK/wrk-transfer.out" -t1 -c256 -d"${SECS}s" \
    -s "$HERE/wrk_transfer.lua" "http://127.0.0.1:$PORT" -- \
    "$SERVER_DIR/data/bootstrap-admin-key" "$FIRST" "$LAST"
  WRKL_LINE=$(grep '^wrk_lua ' "$WORK/wrk-transfer.out" | tail -1 || true)
  WRKL_RPS=$(kv "$WRKL_LINE" req_per_s); WRKL_CPU=$WRK_CPU
  bench transfer-after-wrk "${AUTH[@]}" -m transfer -c 256 -d "$SECS" -A "$RANGE"; TRANSFER2=$LINE
fi
# Open loop at half the closed-loop rate: latency without coordinated omission.
HALF=$(awk -v r="$(kv "$TRANSFER" req_per_s)" 'BEGIN { printf "%d", (r > 2 ? r / 2 : 1) }')
# fsync_hist -> "BATCHES OVER4MS": the main server's ledger_engine_fsync_seconds (log write +
# fdatasync per durable batch) from /metrics: how many batches so far, how many took > 4 ms.
fsync_hist() {
  curl -s -m 5 -H "Authorization: Bearer $(head -1 "$SERVER_DIR/data/bootstrap-admin-key")" \
    "http://127.0.0.1:$PORT/metrics" | awk '
      /^ledger_engine_fsync_seconds_count/ { n = $2 }
      /^ledger_engine_fsync_seconds_bucket\{le="0.004194304"\}/ { le4 = $2 }
      END { printf "%d %d", n, n - le4 }' || echo "0 0"
}
FS0=$(fsync_hist)
bench transfer-open "${AUTH[@]}" -m transfer -c 256 -d "$SECS" -r "$HALF" -A "$RANGE"; OPEN=$LINE
FS1=$(fsync_hist)
# The batches of the open-loop run, and those whose write + fdatasync took > 4 ms: a request
# that arrives while one runs waits for it and for the next batch's.
OPEN_BATCHES=$(( ${FS1% *} - ${FS0% *} )); OPEN_SLOW=$(( ${FS1#* } - ${FS0#* } ))
echo "# open loop: $OPEN_BATCHES durable batches, $OPEN_SLOW with log write + fdatasync > 4 ms"
# Baseline for the p99 goal: the trivial route at the same fixed rate, same connections.
bench health-open -m health -c 256 -d "$SECS" -r "$HALF";                    HOPEN=$LINE
# The machine's floors for goal 2 (full only): ledger-ceiling --open-loop RATE is a durable
# writer that does nothing else (one 64-byte write per request, group commit with ledgerd's
# 1 ms interval, latency from the scheduled time), pinned where the server is, its file under
# WORK. writer_start RATE SECONDS NAME starts it in the background and returns once its file
# is written (up to 10 s); writer_wait NAME waits for it and sets WLINE (its summary line).
# The writer runs at SCHED_FIFO where that is allowed (root), so that its floor is the
# device's and the host's, not the scheduler's (CPU 0 is shared with the server's threads).
WRITER_PID=""
WRITER_RT=(); chrt -f 10 true 2>/dev/null && WRITER_RT=(chrt -f 10)
writer_start() {
  echo "## writer $3: ${WRITER_RT[*]:+${WRITER_RT[*]} }ledger-ceiling --open-loop $1 -d $2 (on the server's CPU, log under WORK)"
  TMPDIR=$WORK "${SERVER_PIN[@]}" "${WRITER_RT[@]}" "$BIN/ledger-ceiling" --open-loop "$1" -d "$2" >"$WORK/$3.out" 2>&1 &
  WRITER_PID=$!
  for _ in $(seq 200); do
    grep -q '^open_loop_ready' "$WORK/$3.out" && return 0
    kill -0 "$WRITER_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "run.sh: ledger-ceiling --open-loop ($3) did not get ready" >&2
  FAILED=1
}
writer_wait() {
  local rc=0
  [ -n "$WRITER_PID" ] && { wait "$WRITER_PID" || rc=$?; }
  WRITER_PID=""
  WLINE=$(grep '^open_loop ' "$WORK/$1.out" | tail -1 || true)
  printf '%s\n' "$WLINE"
  if [ $rc -ne 0 ] || [ -z "$WLINE" ]; then
    echo "run.sh: ledger-ceiling --open-loop ($1) exited $rc:" >&2
    tail -5 "$WORK/$1.out" >&2
    FAILED=1
  fi
}
# The p99's floor: that writer at the open loop's rate, for FLOOR_SECS, while the server
# answers /healthz at the same rate and connections (the HTTP load of the open-loop run
# without the ledger; it starts first and ends last). What a server that answers a request
# only once it is durable cannot beat on this machine under this load.
FLOOR=""; FHOPEN=""; WFLOOR=""
if [ "$FLOOR_SECS" -gt 0 ]; then
  echo "## floor-load: ledger-bench -p PORT ${CLIENT_CPU[*]} -m health -c 256 -d $((FLOOR_SECS + 2)) -r $HALF (in the background)"
  "$BIN/ledger-bench" -p "$PORT" "${CLIENT_CPU[@]}" -m health -c 256 -d "$((FLOOR_SECS + 2))" -r "$HALF" \
    >"$WORK/floor-load.out" 2>"$WORK/floor-load.err" &
  FLOAD_PID=$!
  sleep 0.5
  writer_start "$HALF" "$FLOOR_SECS" floor-open
  writer_wait floor-open; FLOOR=$WLINE
  wait "$FLOAD_PID" || { echo "run.sh: the floor's /healthz load failed" >&2; FAILED=1; }
  cat "$WORK/floor-load.out"
  FHOPEN=$(grep '^mode=' "$WORK/floor-load.out" | tail -1 || true)
  ALL_LINES+=("$FHOPEN")
  server_alive floor-load
fi
# Goal 3: hot-account and random single transfers in alternated rounds (HOT_ROUNDS of CMP_SECS
# each, the order rotated every round), judged on the ratio of their medians. The main
# server's first snapshot (at 256 MiB of log: ~4.4 M transfers, in full runs right here) or a
# noisy moment then lands in one round of one side, and the median leaves it out, instead of
# landing in the one hot run and in none of the transfer runs it is compared with.
# Three rounds in full (since session 10; four before): each mode takes each place in the
# order once. The same rounds give goal 2 its ratio (since session 10): /healthz joins the rotation, and
# goal 2 is the median of the random-transfer rounds against the median of the /healthz
# rounds, so that the machine's drift over the run (±15 % between runs minutes apart) does not
# land on one side only, as it can with the single 15 s runs above (still printed).
# In full runs a fourth mode joins them: /healthz while the writer above runs on the server's
# CPU at the first closed-loop transfer run's rate (what durability alone costs the trivial
# route here: the highest goal 2 ratio a server committing on its one CPU could reach).
HOT_R=(); TRN_R=(); HLT_R=(); HWR_R=(); HOT_LINES=()
for r in $(seq "$HOT_ROUNDS"); do
  case $((r % 3)) in
    1) order=(hot transfer health) ;;
    2) order=(transfer health hot) ;;
    *) order=(health hot transfer) ;;
  esac
  if [ "$FLOOR_SECS" -gt 0 ]; then
    # right next to the round's /healthz run, after it in odd rounds and before it in even
    # ones: the bound is the median of the rounds' pair ratios, so the machine's drift over
    # the minute (±30 % between runs here) cuts into it less than into two medians
    o=()
    for m in "${order[@]}"; do
      if [ "$m" = health ]; then
        if [ $((r % 2)) = 1 ]; then o+=(health health-writer); else o+=(health-writer health); fi
      else o+=("$m"); fi
    done
    order=("${o[@]}")
  fi
  for m in "${order[@]}"; do
    if [ "$m" = health-writer ]; then
      writer_start "$((HALF * 2))" "$(awk -v s="$CMP_SECS" 'BEGIN { print s + 0.5 }')" "writer-$r"
      bench "$m-alternated-$r" -m health -c 256 -d "$CMP_SECS"
      HWR_R+=("$(kv "$LINE" req_per_s)")
      writer_wait "writer-$r"; WFLOOR=$WLINE
      continue
    fi
    if [ "$m" = health ]; then
      bench "$m-alternated-$r" -m health -c 256 -d "$CMP_SECS"
      HLT_R+=("$(kv "$LINE" req_per_s)")
      continue
    fi
    bench "$m-alternated-$r" "${AUTH[@]}" -m "$m" -c 256 -d "$CMP_SECS" -A "$RANGE"
    if [ "$m" = hot ]; then HOT_R+=("$(kv "$LINE" transfers_per_s)"); HOT_LINES+=("$LINE")
    else TRN_R+=("$(kv "$LINE" transfers_per_s)"); fi
  done
done

# ---- perf: where the server's time goes (goals 1 and 2), full only ----
# Sampling on the cpu-clock software event (VMs often expose no hardware counters), call
# graphs with -g, of every thread of the server, during an extra run that is not in the table.
PERF_DIR=${PERF_DIR:-${TMPDIR:-/tmp}/ledger-bench-perf}
PERF_STATE="skipped (full only)"
if [ "$PERF_SECS" -gt 0 ]; then
  if ! command -v perf >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "# perf missing: apt-get install -y linux-perf"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null 2>&1 || true
  fi
  if ! command -v perf >/dev/null; then
    PERF_STATE="not available (perf is not installed and could not be installed)"
  elif ! perf record -e cpu-clock -o "$WORK/perf-probe.data" -- true >/dev/null 2>&1; then
    PERF_STATE="not supported on this machine (perf record -e cpu-clock failed)"
  else
    PERF_STATE="ok"
    perf stat -e instructions true 2>&1 | grep -q 'not supported' &&
      PERF_STATE="ok (cpu-clock sampling; hardware counters are not supported on this VM)"
    mkdir -p "$PERF_DIR"
  fi
  rm -f "$WORK/perf-probe.data"
fi
# profile NAME LEDGER_BENCH_ARGS... -> perf records the server while ledger-bench runs for
# PERF_SECS (perf's workload; -p limits the recording to the server's threads), so the samples
# cover exactly the requests ledger-bench reports; reports in $PERF_DIR/NAME.{report,symbols,
# threads,thread-symbols,by-code}.txt (report = `perf report --stdio --no-children | head -60`;
# by-code: ns of server CPU per request by thread and code, see per_request_by_code).
profile() {
  local name=$1; shift
  echo "## perf $name: perf record -e cpu-clock -g -p SERVER_PID -- ledger-bench -p PORT ${CLIENT_CPU[*]} $* -d $PERF_SECS" |
    sed "s|$WORK/|WORK/|g"
  "${CLIENT_PIN[@]}" perf record -q -e cpu-clock -g -p "$SERVER_PID" -o "$WORK/perf-$name.data" \
    -- "$BIN/ledger-bench" -p "$PORT" "${CLIENT_CPU[@]}" "$@" -d "$PERF_SECS" \
    >"$WORK/perf-$name.bench" 2>&1 || echo "run.sh: perf record ($name) failed" >&2
  sed 's/^/  /' "$WORK/perf-$name.bench"
  local d=$PERF_DIR/$name
  perf report -i "$WORK/perf-$name.data" --stdio --no-children 2>/dev/null | head -60 >"$d.report.txt" || true
  perf report -i "$WORK/perf-$name.data" --stdio --no-children -g none --sort dso,sym \
    --percent-limit 0.1 2>/dev/null | grep -v '^#' | awk NF | head -15 >"$d.symbols.txt" || true
  perf report -i "$WORK/perf-$name.data" --stdio --no-children -g none --sort pid \
    2>/dev/null | grep -v '^#' | awk NF | head -8 >"$d.threads.txt" || true
  perf report -i "$WORK/perf-$name.data" --stdio --no-children -g none --sort pid,dso,sym \
    --percent-limit 0.3 2>/dev/null | grep -v '^#' | awk NF | head -60 >"$d.thread-symbols.txt" || true
  local line n
  line=$(grep '^mode=' "$WORK/perf-$name.bench" || true)
  n=$(kv "$line" transfers); [ "${n:-0}" -gt 0 ] 2>/dev/null || n=$(kv "$line" requests)
  per_request_by_code "$WORK/perf-$name.data" "$n" >"$d.by-code.txt" || true
  echo "  top 15 symbols of ledgerd (share of its samples, all threads):"
  sed 's/^/    /' "$d.symbols.txt"
  echo "  by thread (tid:name: ledger-engine, ledger-net, ledger-prefault, ledger-auth; a snapshot child keeps the name ledger-engine):"
  sed 's/^/    /' "$d.threads.txt"
  server_alive "perf $name"
}
# per_request_by_code PERF_DATA N -> lines "THREAD CODE NS": the sampled CPU time (cpu-clock
# periods) of each server thread name in each kind of code (kernel, ledgerd, or libraries:
# libc, http_parser, libsodium, liburing, vdso), divided by N, the run's transfers (requests
# for /healthz), and a line "all all NS". Sampling costs the server too (its own overhead lands in
# the kernel rows of every run alike), so compare runs, not these figures with the table.
per_request_by_code() {
  local data=$1 n=${2:-0}
  [ "${n:-0}" -gt 0 ] 2>/dev/null || return 0
  perf report -i "$data" --stdio --no-children -g none --sort comm,dso -F period,comm,dso 2>/dev/null |
    grep -v '^#' | awk -v n="$n" 'NF >= 3 {
      code = $NF == "[kernel.kallsyms]" ? "kernel" : ($NF == "ledgerd" ? "ledgerd" : "libraries")
      t[$2 " " code] += $1; all += $1 }
      END { for (k in t) printf "%s %.0f\n", k, t[k] / n; printf "all all %.0f\n", all / n }' | sort
}
# by_code_compare A B -> a table of the two by-code files side by side (ns per request).
by_code_compare() {
  join -a 1 -a 2 -e 0 -o 0,1.2,2.2 <(awk '{print $1 "/" $2, $3}' "$1" | sort) \
    <(awk '{print $1 "/" $2, $3}' "$2" | sort) |
    awk '{ line = sprintf("    %-28s %8d %8d %+9d", $1, $2, $3, $2 - $3)
           if ($1 == "all/all") last = line; else print line }
         END { if (last != "") print last }'
}
if [ "${PERF_STATE%% *}" = ok ]; then
  profile transfer "${AUTH[@]}" -m transfer -c 256 -A "$RANGE"
  profile health -m health -c 256
  if [ -s "$PERF_DIR/transfer.by-code.txt" ] && [ -s "$PERF_DIR/health.by-code.txt" ]; then
    echo "# goal 2, where a transfer's extra CPU goes: ns of server CPU per request by thread/code"
    echo "# (perf samples of the two runs above; sampling overhead included in both)"
    printf '    %-28s %8s %8s %9s\n' thread/code transfer /healthz difference
    by_code_compare "$PERF_DIR/transfer.by-code.txt" "$PERF_DIR/health.by-code.txt" |
      tee "$PERF_DIR/goal2-by-code.txt"
  fi
fi
# Goal 1 gives ledgerd every CPU: the batch load generator needs ~10 % of CPU 1 (8 connections,
# prebuilt requests), so ledgerd on CPU 0 alone would leave most of the machine idle while the
# engine applies one batch and its committer writes the one before. The same run with ledgerd
# on CPU 0 alone follows, for the details table (and for comparison with earlier runs).
# set_server_cpus PID CPUS -> the affinity of every thread of the server and of its children
# (a snapshot child).
set_server_cpus() {
  local c
  taskset -a -p -c "$2" "$1" >/dev/null || true
  for c in $(pgrep -P "$1" 2>/dev/null); do taskset -a -p -c "$2" "$c" >/dev/null 2>&1 || true; done
}
BATCH_PLACEMENT=$PLACEMENT
if [ "$NCPU" -ge 2 ]; then
  set_server_cpus "$MAIN_PID" "0-$((NCPU - 1))"
  BATCH_PLACEMENT="ledgerd on CPUs 0-$((NCPU - 1)), load generator on CPU 1"
fi
echo "# batch placement: $BATCH_PLACEMENT"
# Goal 1's baseline is measured again here, in rounds alternated with the batch runs (ceiling,
# batch, ceiling, batch, ...): the ceiling at the start ran minutes earlier on what may have
# been a quieter (or busier) machine. The goal is judged on the medians of these rounds; the
# first ceiling stays in the details table. A snapshot child of the main server (forked when the
# log grows) or its pre-fault thread catching up would take CPU, memory or disk from a ceiling
# round, so each waits for them first (said if it waited, or if it gave up).
wait_no_snapshot() {
  local i
  for i in $(seq 600); do
    [ -z "$(pgrep -P "$MAIN_PID" 2>/dev/null)" ] && return 0
    [ "$i" = 1 ] && echo "# waiting for the main server's snapshot child to end before the ceiling round"
    sleep 0.1
  done
  echo "# the main server's snapshot child still runs: this ceiling round shares the machine with it"
}
# wait_server_quiet: after a batch run the server's pre-fault thread may still be populating
# memory ahead of its grown tables; the ceiling round waits (at most 20 s) until the server
# used at most one clock tick in 0.3 s, so that it does not share the machine with it.
server_ticks() { awk '{ print $14 + $15 }' /proc/"$MAIN_PID"/stat 2>/dev/null || echo 0; }
wait_server_quiet() {
  local i a b
  for i in $(seq 66); do
    a=$(server_ticks); sleep 0.3; b=$(server_ticks)
    [ $((b - a)) -le 1 ] && { [ "$i" -gt 1 ] && echo "# the main server went quiet after $(awk -v i="$i" 'BEGIN { printf "%.1f", i * 0.3 }') s"; return 0; }
  done
  echo "# the main server was still busy after 20 s: this ceiling round shares the machine with it"
}
# add_ticks SUM BEFORE AFTER -> SUM + (AFTER - BEFORE), each three thread_cpu counters.
add_ticks() {
  awk -v s="$1" -v a="$2" -v b="$3" 'BEGIN { split(s, z, " "); split(a, x, " "); split(b, y, " ");
    printf "%d %d %d", z[1] + y[1] - x[1], z[2] + y[2] - x[2], z[3] + y[3] - x[3] }'
}
BATCH_R=(); CEIL_R=(); BATCH_TICKS="0 0 0"; BATCH_N=0
for r in $(seq "$G1_ROUNDS"); do
  wait_no_snapshot
  wait_server_quiet
  echo "## ceiling round $r: ledger-ceiling -d $G1_CEIL_SECS --cpu-only-seconds 0 (log under WORK)"
  CL=$(TMPDIR=$WORK "${SERVER_PIN[@]}" "$BIN/ledger-ceiling" -d "$G1_CEIL_SECS" --cpu-only-seconds 0 | grep '^ceiling ' || true)
  echo "$CL"
  CEIL_R+=("$(kv "$CL" transfers_per_s)")
  CPU0=$(thread_cpu)
  bench "batch-$r" "${AUTH[@]}" -m batch -b 8190 -c 8 -d "$G1_BATCH_SECS" -A "$RANGE"; BATCH=$LINE
  CPU1=$(thread_cpu)
  BATCH_TICKS=$(add_ticks "$BATCH_TICKS" "$CPU0" "$CPU1")
  BT=$(kv "$BATCH" transfers); BATCH_N=$((BATCH_N + ${BT:-0}))
  BATCH_R+=("$(kv "$BATCH" transfers_per_s)")
done
BATCH_CPU=$(per_req "0 0 0" "$BATCH_TICKS" "$BATCH_N")
if [ "${PERF_STATE%% *}" = ok ]; then
  profile batch "${AUTH[@]}" -m batch -b 8190 -c 8 -A "$RANGE"
  echo "# perf reports: $PERF_DIR/{transfer,health,batch}.{report,symbols,threads,thread-symbols,by-code}.txt, $PERF_DIR/goal2-by-code.txt"
fi
BATCH0=""; BATCH0_CPU="-"
if [ "$NCPU" -ge 2 ]; then
  set_server_cpus "$MAIN_PID" 0
  echo "# batch placement: $PLACEMENT (details table)"
  CPU0=$(thread_cpu)
  bench batch-cpu0 "${AUTH[@]}" -m batch -b 8190 -c 8 -d "$SECS" -A "$RANGE"; BATCH0=$LINE
  CPU1=$(thread_cpu); BATCH0_CPU=$(per_req "$CPU0" "$CPU1" "$(kv "$BATCH0" transfers)")
fi
echo "# perf: $PERF_STATE"
echo "# the main server's log lines about snapshots (a snapshot child shares CPU 0 and the disk) and slow commits:"
grep -ihE 'snapshot|slow commit' "$SERVER_DIR/ledgerd.out" "$SERVER_DIR/ledgerd.err" 2>/dev/null | head -20 | sed 's/^/  /' || true
stop_server "$MAIN_PID"

# ---- 3. full only: PostgreSQL (goal 4), recovery / memory / disk (goals 5, 6) ----
# Each script starts its own server(s) after ours has stopped; its last stdout line is parsed.
PG_LINE=""; PG_STATE="skipped (full only)"
REC_LINE=""; REC_STATE="skipped (full only)"
# run_script NAME VAR_PREFIX CMD... -> sets ${VAR_PREFIX}_LINE (the line starting with NAME)
# and ${VAR_PREFIX}_STATE ("ok", "not measured (script missing)", or "failed: ...").
run_script() {
  local name=$1 var=$2; shift 2
  local script=$1 line state rc=0
  if [ ! -x "$script" ]; then
    state="not measured (script missing)"; line=""
  else
    echo "## $name: ${*#$HERE/}" | sed "s|$HERE/|bench/|g"
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    sed 's/^/  /' "$WORK/$name.out"
    line=$(awk NF "$WORK/$name.out" | tail -1)
    if [ $rc -ne 0 ] || [ "${line%% *}" != "$name" ]; then
      echo "run.sh: $name exited $rc; its stderr:" >&2
      tail -5 "$WORK/$name.err" >&2
      state="failed (exit $rc: $(tail -1 "$WORK/$name.err" | cut -c1-80))"; line=""
      FAILED=1
    else
      state="ok"
    fi
  fi
  printf -v "${var}_LINE" '%s' "$line"
  printf -v "${var}_STATE" '%s' "$state"
}
if [ "$PROFILE" = full ]; then
  run_script pgbench PG "$HERE/pgbench.sh" 100000 10
  RECOVERY_BATCH_MAX_S=${RECOVERY_BATCH_MAX_S:-90} \
    run_script recovery REC "$HERE/recovery.sh" "$BIN" 1000000 10000000
fi

# ---- 4. compatibility scenarios (issue 5): bench/compat.sh, its own servers (full < 90 s) ----
run_script compat COMPAT "$HERE/compat.sh" "$BIN" "$PROFILE"

# ---- the goal table ----
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.3f", a / b }'; }
# fmt V -> V rounded, with thousands separators ("-" when empty); fmtv: the same, "" when empty.
fmtv() { [ -n "$1" ] && printf '%.0f' "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' || true; }
fmt() { [ -n "$1" ] && fmtv "$1" || printf -- '-'; }
# check VALUE OP LIMIT -> "met" / "not met" / "-" (no value); OP is one of >= <= > <
check() { awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
  if (v == "" || v == "-") { print "-"; exit }
  ok = (op == ">=") ? v + 0 >= l + 0 : (op == "<=") ? v + 0 <= l + 0 : (op == ">") ? v + 0 > l + 0 : v + 0 < l + 0
  print ok ? "met" : "not met" }'; }
both() { if [ "$1" = met ] && [ "$2" = met ]; then echo met; elif [ "$1" = - ] || [ "$2" = - ]; then echo -; else echo "not met"; fi; }
# row CELL x6: one table row (figure, value, baseline, ratio, goal, met).
row() { printf '| %-52s | %16s | %-30s | %7s | %-24s | %-7s |\n' "$@"; }
hdr() {
  row figure value baseline ratio goal met
  echo "|------------------------------------------------------|-----------------:|--------------------------------|--------:|--------------------------|---------|"
}
H=$(kv "$HEALTH" req_per_s); T=$(kv "$TRANSFER" transfers_per_s); TR=$(kv "$TRANSFER" req_per_s)
B=$(median "${BATCH_R[@]}"); O=$(median "${HOT_R[@]}"); OT=$(median "${TRN_R[@]}"); OH=$(median "${HLT_R[@]}")
C=$(median "${CEIL_R[@]}"); C_START=$(kv "$CEIL" transfers_per_s); CC=$(kv "$CEIL_CPU" transfers_per_s)
OP99=$(kv "$OPEN" p99_us); OPR=$(kv "$OPEN" req_per_s)
OP99MS=$(awk -v v="$OP99" 'BEGIN { if (v == "") print ""; else printf "%.2f", v / 1000 }')
HOP99MS=$(awk -v v="$(kv "$HOPEN" p99_us)" 'BEGIN { if (v == "") print ""; else printf "%.2f", v / 1000 }')
H_CPU=$(kv "$HEALTH" cpu_util); T_CPU=$(kv "$TRANSFER" cpu_util)
# goal 7: the mean of the two ledger-bench transfer runs around the wrk+Lua run
T2R=$(kv "${TRANSFER2:-}" req_per_s); T2_CPU=$(kv "${TRANSFER2:-}" cpu_util)
TRB=$(awk -v a="$TR" -v b="$T2R" 'BEGIN { if (b == "") print a; else printf "%.0f", (a + b) / 2 }')
T_CPUB=$(awk -v a="$T_CPU" -v b="$T2_CPU" 'BEGIN { if (b == "") print a; else printf "%.3f", (a + b) / 2 }')
WRK_HUTIL=$(awk -v c="$WRK_HCPU" -v s="$SECS" 'BEGIN { if (c == "") print ""; else printf "%.3f", c / s }')
WRKL_UTIL=$(awk -v c="$WRKL_CPU" -v s="$SECS" 'BEGIN { if (c == "") print ""; else printf "%.3f", c / s }')
# req/s per fully busy client CPU: what the client could drive if the server kept up.
per_cpu() { awk -v r="$1" -v u="$2" 'BEGIN { if (r == "" || u == "" || u + 0 == 0) print ""; else printf "%.0f", r / u }'; }
LB_HCEIL=$(per_cpu "$H" "$H_CPU"); WRK_HCEIL=$(per_cpu "$WRK_RPS" "$WRK_HUTIL")
LB_TCEIL=$(per_cpu "$TRB" "$T_CPUB"); WRKL_CEIL=$(per_cpu "$WRKL_RPS" "$WRKL_UTIL")

PG32=$(kv "$PG_LINE" tps_c32); PG64=$(kv "$PG_LINE" tps_c64); PGH=$(kv "$PG_LINE" tps_hot_c32)
R_T=$(kv "$REC_LINE" transfers); R_A=$(kv "$REC_LINE" accounts)
R_RSS=$(kv "$REC_LINE" rss_bytes_per_account); R_LOG=$(kv "$REC_LINE" log_bytes_per_transfer)
R_DISK=$(kv "$REC_LINE" disk_bytes_per_transfer)
R_CLEAN=$(kv "$REC_LINE" ready_s_clean); R_LOGONLY=$(kv "$REC_LINE" ready_s_log_only)
val() { [ -n "$1" ] && printf '%s' "$1" || printf '%s' "$2"; }   # value, or the reason it is missing
verdict() { [ "$1" = - ] && printf '%s' "$2" || printf '%s' "$1"; }
PG_WHY=$PG_STATE; [ "$PG_STATE" = ok ] && PG_WHY="-"
REC_WHY=$REC_STATE; [ "$REC_STATE" = ok ] && REC_WHY="-"
[ "$PG_STATE" = "skipped (full only)" ] && PG_WHY="full only"
[ "$REC_STATE" = "skipped (full only)" ] && REC_WHY="full only"

echo
echo "goals of issue 6 ($PROFILE run; main server authenticated, rate limits on at 1M/s; ${MAIN_ACCOUNTS} accounts)"
hdr
V1=$(both "$(check "$B" '>=' 1000000)" "$(check "$(ratio "$B" "$C")" '>=' 0.55)")
row "1 batch 8190/req, 8 conns, all CPUs, transfers/s" "$(fmt "$B")" "ceiling, alternated: $(fmt "$C")" "$(ratio "$B" "$C")" ">= 1,000,000/s, >= 0.55" "$V1"
row "2 POST /v1/transfers, 256 conns, alternated: tr/s" "$(fmt "$OT")" "/healthz, alternated: $(fmt "$OH")" "$(ratio "$OT" "$OH")" ">= 0.90" "$(check "$(ratio "$OT" "$OH")" '>=' 0.90)"
row "2 open loop at $HALF req/s (half): p99 ms" "$(val "$OP99MS" -)" "/healthz same rate: $(val "$HOP99MS" -) ms" "$(ratio "$OP99MS" 5)" "p99 <= 5 ms" "$(check "$OP99MS" '<=' 5)"
FULL_ONLY=-; [ "$FLOOR_SECS" -gt 0 ] || FULL_ONLY="full only"
OHW=$(median "${HWR_R[@]}")
# the bound: the median of each round's /healthz-beside-the-writer over its /healthz run
HW_PAIRS=(); for i in "${!HWR_R[@]}"; do HW_PAIRS+=("$(ratio "${HWR_R[$i]}" "${HLT_R[$i]:-}")"); done
HW_BOUND=$(median "$(printf '%s\n' "${HW_PAIRS[@]}" | grep -v '^-$' || true)")
HW_BOUND=$(awk -v v="$HW_BOUND" 'BEGIN { if (v == "") print ""; else printf "%.3f", v }')
FP99MS=$(awk -v v="$(kv "$FLOOR" p99_ms)" 'BEGIN { if (v == "") print ""; else printf "%.2f", v }')
row "2 bound: /healthz beside a durable writer, req/s" "$(val "$(fmtv "$OHW")" "$FULL_ONLY")" "/healthz, alternated: $(fmt "$OH")" "$(val "$HW_BOUND" -)" "(info: 2's best ratio)" "-"
row "2 floor: durable writer's p99 at $HALF/s, ms" "$(val "$FP99MS" "$FULL_ONLY")" "ledgerd open loop: $(val "$OP99MS" -) ms" "$(ratio "$OP99MS" "$FP99MS")" "(info: 2's best p99)" "-"
row "3 hot account (one debit acct), 256 conns, tr/s" "$(fmt "$O")" "random, alternated: $(fmt "$OT")" "$(ratio "$O" "$OT")" ">= 0.80" "$(check "$(ratio "$O" "$OT")" '>=' 0.80)"
row "4 ledgerd / PostgreSQL, 32 clients" "$(fmt "$T")" "pgbench c32: $(val "$(fmtv "$PG32")" "$PG_WHY")" "$(ratio "$T" "$PG32")" "> 20" "$(verdict "$(check "$(ratio "$T" "$PG32")" '>' 20)" "$PG_WHY")"
row "4 ledgerd / PostgreSQL, 64 clients" "$(fmt "$T")" "pgbench c64: $(val "$(fmtv "$PG64")" "$PG_WHY")" "$(ratio "$T" "$PG64")" "> 20" "$(verdict "$(check "$(ratio "$T" "$PG64")" '>' 20)" "$PG_WHY")"
row "4 ledgerd / PostgreSQL, hot account" "$(fmt "$O")" "pgbench hot c32: $(val "$(fmtv "$PGH")" "$PG_WHY")" "$(ratio "$O" "$PGH")" "> 20" "$(verdict "$(check "$(ratio "$O" "$PGH")" '>' 20)" "$PG_WHY")"
row "4 ledgerd batch / PostgreSQL c32 (info)" "$(fmt "$B")" "pgbench c32: $(val "$(fmtv "$PG32")" "$PG_WHY")" "$(ratio "$B" "$PG32")" "(info)" "-"
row "5 s to ready, $(val "$R_T" "10M") transfers, snapshot+log" "$(val "$R_CLEAN" "$REC_WHY")" "-" "$(ratio "$R_CLEAN" 5)" "<= 5 s" "$(verdict "$(check "$R_CLEAN" '<=' 5)" "$REC_WHY")"
row "5 s to ready, same, whole log replayed" "$(val "$R_LOGONLY" "$REC_WHY")" "-" "$(ratio "$R_LOGONLY" 5)" "<= 5 s" "$(verdict "$(check "$R_LOGONLY" '<=' 5)" "$REC_WHY")"
row "6 resident bytes per account, $(val "$R_A" "1M") accounts" "$(val "$R_RSS" "$REC_WHY")" "-" "$(ratio "$R_RSS" 256)" "<= 256" "$(verdict "$(check "$R_RSS" '<=' 256)" "$REC_WHY")"
row "6 disk bytes per transfer (log + snapshots)" "$(val "$R_DISK" "$REC_WHY")" "log only: $(val "$R_LOG" -)" "$(ratio "$R_DISK" 256)" "<= 256" "$(verdict "$(check "$R_DISK" '<=' 256)" "$REC_WHY")"
row "7 ledger-bench vs wrk+Lua, transfers, req/s" "$(fmt "$TRB")" "wrk+Lua: $(fmt "$WRKL_RPS")" "$(ratio "$TRB" "$WRKL_RPS")" "> 1 (faster)" "$(check "$(ratio "$TRB" "$WRKL_RPS")" '>' 1)"
row "7 same, req/s per client CPU (client's ceiling)" "$(fmt "$LB_TCEIL")" "wrk+Lua: $(fmt "$WRKL_CEIL")" "$(ratio "$LB_TCEIL" "$WRKL_CEIL")" "> 1 (faster)" "$(check "$(ratio "$LB_TCEIL" "$WRKL_CEIL")" '>' 1)"
row "7 ledger-bench vs wrk, /healthz 256 conns, req/s" "$(fmt "$H")" "wrk: $(fmt "$WRK_RPS")" "$(ratio "$H" "$WRK_RPS")" "> 1 (faster)" "$(check "$(ratio "$H" "$WRK_RPS")" '>' 1)"
row "7 ledger-bench ceiling, /healthz req/s per CPU" "$(fmt "$LB_HCEIL")" "wrk: $(fmt "$WRK_HCEIL")" "$(ratio "$LB_HCEIL" "$WRK_HCEIL")" "(stated)" "-"
row "7 ledger-bench -P 8, /healthz req/s (CPU $(kv "$HEALTHP" cpu_util))" "$(fmt "$(kv "$HEALTHP" req_per_s)")" "wrk: $(fmt "$WRK_RPS")" "$(ratio "$(kv "$HEALTHP" req_per_s)" "$WRK_RPS")" "(stated)" "-"
echo
echo "details (same run)"
row figure value baseline ratio "" ""
echo "|------------------------------------------------------|-----------------:|--------------------------------|--------:|--------------------------|---------|"
row "  server CPU us/request, net/engine/other threads" "transfer $TRANSFER_CPU" "/healthz: $HEALTH_CPU" "" "CPU 0's time per request" ""
row "  transfers 256 conns: p50 / p99 / p99.9 us" "$(kv "$TRANSFER" p50_us)/$(kv "$TRANSFER" p99_us)/$(kv "$TRANSFER" p999_us)" "" "" "" ""
row "  open loop: p50 / p99.9 / max us" "$(kv "$OPEN" p50_us)/$(kv "$OPEN" p999_us)/$(kv "$OPEN" max_us)" "offered $HALF req/s" "$(ratio "$OPR" "$HALF")" "" ""
row "  open loop: batches with write+fdatasync > 4 ms" "$OPEN_SLOW of $OPEN_BATCHES" "share" "$(ratio "$OPEN_SLOW" "$OPEN_BATCHES")" "" ""
row "  /healthz open loop, same rate: p50 / p99 / max us" "$(kv "$HOPEN" p50_us)/$(kv "$HOPEN" p99_us)/$(kv "$HOPEN" max_us)" "achieved $(fmt "$(kv "$HOPEN" req_per_s)") req/s" "" "" ""
row "  p99 floor: writer p50 / p99.9 / max ms" "$(val "$(kv "$FLOOR" p50_ms)" -)/$(val "$(kv "$FLOOR" p999_ms)" -)/$(val "$(kv "$FLOOR" max_ms)" -)" "fdatasyncs $(val "$(kv "$FLOOR" fdatasyncs)" -), > 4 ms: $(val "$(kv "$FLOOR" fdatasyncs_over_4ms)" -)" "" "ledger-ceiling --open-loop" ""
row "  p99 floor: its /healthz load, p50 / p99 / max us" "$(kv "$FHOPEN" p50_us)/$(kv "$FHOPEN" p99_us)/$(kv "$FHOPEN" max_us)" "alone: $(kv "$HOPEN" p99_us) us p99" "" "" ""
# thousands V... -> "61.2 59.8 ..." (values / 1000, one decimal)
thousands() { printf '%s\n' "$@" | awk '{ printf "%s%.1f", (NR > 1 ? " " : ""), $1 / 1000 }'; }
row "  goal 3 rounds, k tr/s: hot / random" "$(thousands "${HOT_R[@]}") / $(thousands "${TRN_R[@]}")" "hot median / the ${SECS} s run: $(fmt "$T")" "$(ratio "$O" "$T")" "$HOT_ROUNDS x $CMP_SECS s each, alternated" ""
row "  goal 2 rounds, k req/s: /healthz" "$(thousands "${HLT_R[@]}")" "the same rounds as goal 3's" "" "$HOT_ROUNDS x $CMP_SECS s each, alternated" ""
row "  goal 2 rounds, k req/s: /healthz beside a writer" "$(val "$([ ${#HWR_R[@]} -eq 0 ] || thousands "${HWR_R[@]}")" "$FULL_ONLY")" "pair ratios: $(val "${HW_PAIRS[*]}" -)" "$(val "$HW_BOUND" -)" "writer at $((HALF * 2))/s, $(val "$(kv "$WFLOOR" fdatasyncs)" -) syncs (last)" ""
row "  goal 2, single $SECS s runs: transfers/s" "$(fmt "$T")" "/healthz: $(fmt "$H")" "$(ratio "$T" "$H")" "(before session 10)" ""
row "  goal 1 rounds, k tr/s: batch / ceiling" "$(thousands "${BATCH_R[@]}") / $(thousands "${CEIL_R[@]}")" "batch median / start ceiling: $(fmt "$C_START")" "$(ratio "$B" "$C_START")" "$G1_ROUNDS x $G1_BATCH_SECS s / $G1_CEIL_SECS s, alternated" ""
# A ceiling round can measure low after ledgerd's own disk work that the guest cannot see
# (the host still writing a snapshot back); the ratio to the highest round is the strict one.
C_MAX=$(printf '%s\n' "${CEIL_R[@]}" | awk 'NF && ($1 + 0 > m) { m = $1 + 0 } END { if (m > 0) printf "%.0f", m }')
row "  goal 1, batch median / highest ceiling round" "$(fmt "$B")" "highest ceiling round: $(fmt "$C_MAX")" "$(ratio "$B" "$C_MAX")" ">= 0.55 (information)" ""
row "  batch: server CPU us/transfer, net/engine/other" "$BATCH_CPU" "ledgerd on CPU 0 alone: $BATCH0_CPU" "" "CPU time (all CPUs) per transfer" ""
row "  batch request latency p50 / p99 us (last round)" "$(kv "$BATCH" p50_us)/$(kv "$BATCH" p99_us)" "" "" "" ""
B0=$(kv "$BATCH0" transfers_per_s)
row "  batch, ledgerd on CPU 0 alone, transfers/s" "$(val "$(fmtv "$B0")" "one CPU")" "ceiling: $(fmt "$C")" "$(ratio "$B0" "$C")" "all CPUs / it: $(ratio "$B" "$B0")" ""
row "  ceiling at the start: memory + log, fdatasync/10k" "$(fmt "$C_START")" "no I/O: $(fmt "$CC")" "$(ratio "$C_START" "$CC")" "" ""
row "  ceiling keeping 64 B/transfer in memory (info)" "$(fmt "$(kv "$CEIL_KEPT" transfers_per_s)")" "no I/O: $(fmt "$(kv "$CEIL_KEPT_CPU" transfers_per_s)")" "$(ratio "$B" "$(kv "$CEIL_KEPT" transfers_per_s)")" "ledger-ceiling --keep-records" ""
row "  fresh memory, ns/byte: first touch / just freed" "$(kv "$TOUCH" first_ns_per_byte) / $(kv "$TOUCH" again_ns_per_byte)" "x 56 B/transfer: $(awk -v v="$(kv "$TOUCH" first_ns_per_byte)" 'BEGIN { if (v == "") print "-"; else printf "%.0f ns", v * 56 }')" "" "ledger-ceiling --touch-mb" ""
row "  two files synced together: slow (> 4 ms) syncs" "$(kv "$PAIR" slow_first) / $(kv "$PAIR" slow_second) of $(kv "$PAIR" syncs_each) each" "first's slow ones during a slow one of the second: $(kv "$PAIR" slow_first_overlapping_slow_second)" "" "ledger-ceiling --sync-pair" ""
row "  ceiling fdatasync p50 / p99 us" "$(kv "$CEIL" fdatasync_p50_us)/$(kv "$CEIL" fdatasync_p99_us)" "" "" "" ""
row "  client CPU used: ledger-bench health / transfer" "$H_CPU / $T_CPUB" "wrk: $(val "$WRK_HUTIL" -) / $(val "$WRKL_UTIL" -)" "" "1.0 = one CPU busy" ""
row "  ledger-bench transfers: before / after wrk" "$(fmt "$TR") / $(fmt "$T2R")" "wrk+Lua: $(fmt "$WRKL_RPS")" "" "" ""
row "  wrk+Lua transfer errors (status / socket)" "$(kv "$WRKL_LINE" status_errors) / $(kv "$WRKL_LINE" socket_errors)" "" "" "" ""
row "  restart s: snapshot 1st / whole log 2nd / snapshot 3rd" "$(val "$R_CLEAN" -) / $(val "$R_LOGONLY" -) / $(val "$(kv "$REC_LINE" ready_s_snapshot_again)" -)" "3rd: memory as warm as the 2nd's" "" "bench/recovery.sh" ""
row "  search (issue 4), page of 50, ms: newest/acct" "$(val "$(kv "$REC_LINE" search_newest_ms)" -)/$(val "$(kv "$REC_LINE" search_account_ms)" -)" "ledger of $(val "$R_T" -) transfers" "" "milliseconds" ""
row "  search ms: flagged / unindexed bounded scan" "$(val "$(kv "$REC_LINE" search_flagged_ms)" -)/$(val "$(kv "$REC_LINE" search_scan_ms)" -)" "(recovery.sh server)" "" "" ""
echo "perf profiles: $PERF_STATE"
echo "pgbench.sh: $PG_STATE; recovery.sh: $REC_STATE"
echo "compat.sh (issue 5 scenarios, docs/performance.md): $COMPAT_STATE; ${COMPAT_LINE#compat }"

TA=$(median "${CMP_T_AUTH[@]}"); TN=$(median "${CMP_T_NOAUTH[@]}")
BA=$(median "${CMP_B_AUTH[@]}"); BN=$(median "${CMP_B_NOAUTH[@]}")
runs() { local v out=""; for v in "$@"; do out+="${out:+ }$(fmt "$v")"; done; printf '%s' "$out"; }
echo
echo "auth on/off (issue 3): $ROUNDS alternated runs of ${CMP_SECS} s per configuration (order flipped each round); median of each; $ACCOUNTS accounts"
hdr
row "POST /v1/transfers with auth vs without" "$(fmt "$TA")" "no auth: $(fmt "$TN")" "$(ratio "$TA" "$TN")" ">= 0.90" "$(check "$(ratio "$TA" "$TN")" '>=' 0.90)"
row "  each run: auth | no auth (transfers/s)" "$(runs "${CMP_T_AUTH[@]}")" "$(runs "${CMP_T_NOAUTH[@]}")" "" "" ""
row "POST /v1/transfers/batch with auth vs without" "$(fmt "$BA")" "no auth: $(fmt "$BN")" "$(ratio "$BA" "$BN")" ">= 0.90" "$(check "$(ratio "$BA" "$BN")" '>=' 0.90)"
row "  each run: auth | no auth (transfers/s)" "$(runs "${CMP_B_AUTH[@]}")" "$(runs "${CMP_B_NOAUTH[@]}")" "" "" ""
TR0=$(median "${CMP_T_NORULES[@]}"); BR0=$(median "${CMP_B_NORULES[@]}")
echo
echo "rules on/off (issue 4): the same rounds; 'on' is the auth server above (default rules: amount >= 10,000.00 flags), 'off' an identical server with an empty --config"
hdr
row "POST /v1/transfers, default rules vs none" "$(fmt "$TA")" "no rules: $(fmt "$TR0")" "$(ratio "$TA" "$TR0")" ">= 0.90" "$(check "$(ratio "$TA" "$TR0")" '>=' 0.90)"
row "  each run: rules | no rules (transfers/s)" "$(runs "${CMP_T_AUTH[@]}")" "$(runs "${CMP_T_NORULES[@]}")" "" "" ""
row "POST /v1/transfers/batch, default rules vs none" "$(fmt "$BA")" "no rules: $(fmt "$BR0")" "$(ratio "$BA" "$BR0")" ">= 0.90" "$(check "$(ratio "$BA" "$BR0")" '>=' 0.90)"
row "  each run: rules | no rules (transfers/s)" "$(runs "${CMP_B_AUTH[@]}")" "$(runs "${CMP_B_NORULES[@]}")" "" "" ""
ERRS=0
for l in "${ALL_LINES[@]}"; do
  e=$(kv "$l" errors); ERRS=$((ERRS + ${e:-1}))  # a missing summary line counts as an error
done
WERR=$(( $(kv "$WRKL_LINE" status_errors || true) + 0 ))
echo
echo "errors across ledger-bench runs: $ERRS (see the raw lines above: unexpected statuses, closed connections); wrk+Lua non-2xx: $WERR"
echo "elapsed: $((SECONDS - T_START)) s; load average after the run: $(cut -d" " -f1-3 /proc/loadavg)"
[ "$FAILED" -eq 0 ] || exit 1
