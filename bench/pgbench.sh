#!/usr/bin/env bash
# PostgreSQL baseline for issue 6, goal 4: the ledgerd transfer workload through pgbench on a
# private, durable PostgreSQL cluster started (and removed) by this script.
#
# Usage: bench/pgbench.sh [ACCOUNTS] [SECONDS]        (defaults: 100000 accounts, 10 s per run)
#
# Per transfer, the same work ledgerd does: debit one account, credit another, insert the
# transfer, insert the idempotency key, commit (fsync=on, synchronous_commit=on,
# full_page_writes=on). Three runs: random accounts with 32 and 64 clients, and 32 clients all
# debiting account 1 (hot account). The server is pinned to CPU 0 and pgbench to CPU 1 when
# there are >= 2 CPUs, like bench/run.sh. Progress goes to stderr; the last line on stdout is:
#   pgbench tps_c32=X tps_c64=Y tps_hot_c32=Z accounts=N seconds=S
# (TPS without connection establishment). On failure: exit non-zero, one-line reason on stderr.
#
# Runs as root (the server runs as the `postgres` OS user) or as an ordinary user (the server
# runs as that user). Installs PostgreSQL with apt-get only when no server binaries are found.
# Environment: TMPDIR (where the cluster lives, default /tmp: same disk as bench/run.sh's data),
# PG_BINDIR (use these PostgreSQL binaries instead of searching), PGBENCH_PIN=0 (do not pin).
set -euo pipefail

ME=$(basename "$0")
HERE=$(cd "$(dirname "$0")" && pwd)
ACCOUNTS=${1:-100000}
SECS=${2:-10}

log() { printf '%s: %s\n' "$ME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$ME" "$*" >&2; exit 1; }

[[ $ACCOUNTS =~ ^[0-9]+$ ]] && [ "$ACCOUNTS" -ge 2 ] ||
  die "usage: $ME [ACCOUNTS>=2] [SECONDS>=1] (got ACCOUNTS='$ACCOUNTS')"
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -ge 1 ] ||
  die "usage: $ME [ACCOUNTS>=2] [SECONDS>=1] (got SECONDS='$SECS')"
for f in pg_transfer.sql pg_hot.sql; do
  [ -r "$HERE/$f" ] || die "missing $HERE/$f"
done

# ---- PostgreSQL binaries: find them, install if missing -----------------------------------
has_bins() {
  local b
  for b in initdb pg_ctl postgres pgbench psql; do [ -x "$1/$b" ] || return 1; done
}
find_bindir() {
  local d
  # Debian/Ubuntu layout; newest major version first.
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if has_bins "$d"; then echo "$d"; return 0; fi
  done
  # Anything else (e.g. a source build with pg_config on PATH).
  d=$(command -v pg_config >/dev/null 2>&1 && pg_config --bindir 2>/dev/null || true)
  if [ -n "$d" ] && has_bins "$d"; then echo "$d"; return 0; fi
  return 1
}

if [ -n "${PG_BINDIR:-}" ]; then
  has_bins "$PG_BINDIR" || die "PG_BINDIR=$PG_BINDIR lacks one of initdb, pg_ctl, postgres, pgbench, psql"
fi
BINDIR=${PG_BINDIR:-$(find_bindir || true)}
if [ -z "$BINDIR" ]; then
  [ "$(id -u)" -eq 0 ] || die "PostgreSQL (initdb, pg_ctl, postgres, pgbench, psql) not found and not root to install it"
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL not found and apt-get is not available to install it"
  log "PostgreSQL not found: installing with apt-get (postgresql, postgresql-client)"
  # On Debian 12 pgbench, initdb, pg_ctl and postgres ship in postgresql-15 (pulled in by
  # `postgresql`), psql in postgresql-client-15. The package's own `main` cluster is not used.
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends postgresql postgresql-client >&2 ||
    die "apt-get install postgresql postgresql-client failed"
  BINDIR=$(find_bindir || true)
  [ -n "$BINDIR" ] || die "PostgreSQL installed but initdb/pg_ctl/postgres/pgbench/psql not found under /usr/lib/postgresql/*/bin"
fi
PGVER=$("$BINDIR/postgres" --version 2>/dev/null | awk '{print $3}')
log "using PostgreSQL $PGVER from $BINDIR"
command -v taskset >/dev/null 2>&1 || TASKSET_MISSING=1

# ---- the OS user the server runs as -------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
  PGOSUSER=postgres
  if ! id "$PGOSUSER" >/dev/null 2>&1; then
    # Packages create it; a source build may not have. Create a system user, no login.
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PGOSUSER" >/dev/null 2>&1 ||
      die "no '$PGOSUSER' OS user and useradd failed (PostgreSQL refuses to run as root)"
  fi
  as_pg() { runuser -u "$PGOSUSER" -- "$@"; }
else
  PGOSUSER=$(id -un)
  as_pg() { "$@"; }
fi

# ---- CPU placement (same as bench/run.sh: server on CPU 0, load generator on CPU 1) ---------
NCPU=$(nproc 2>/dev/null || echo 1)
if [ "$NCPU" -ge 2 ] && [ -z "${TASKSET_MISSING:-}" ] && [ "${PGBENCH_PIN:-1}" != 0 ]; then
  SERVER_PIN=(taskset -c 0); CLIENT_PIN=(taskset -c 1)
  log "placement: postgres on CPU 0, pgbench on CPU 1"
else
  SERVER_PIN=(); CLIENT_PIN=()
  log "placement: unpinned ($NCPU CPU(s)${TASKSET_MISSING:+, no taskset}${PGBENCH_PIN:+, PGBENCH_PIN=$PGBENCH_PIN})"
fi

# ---- private cluster in a temp dir, removed on exit ---------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ledger-pg.XXXXXX") || die "mktemp failed"
PGDATA_DIR=$WORK/data
SOCKDIR=$WORK
PGLOG=$WORK/postgres.log
STARTED=""

cleanup() {
  local rc=$? pid=""
  trap - EXIT INT TERM
  if [ -n "$STARTED" ] && [ -f "$PGDATA_DIR/postmaster.pid" ]; then
    pid=$(head -n1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true)
    as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 20 stop >/dev/null 2>&1 || true
    # If pg_ctl could not stop it, kill our postmaster (only that pid; backends exit with it).
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      kill -QUIT "$pid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

chmod 700 "$WORK"
[ "$PGOSUSER" = "$(id -un)" ] || chown "$PGOSUSER:" "$WORK" || die "chown $WORK to $PGOSUSER failed"
as_pg test -w "$WORK" || die "$PGOSUSER cannot write $WORK (a parent of TMPDIR is not traversable?)"

log "initdb in $PGDATA_DIR"
as_pg "$BINDIR/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    >"$WORK/initdb.log" 2>&1 ||
  as_pg "$BINDIR/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C \
    >"$WORK/initdb.log" 2>&1 ||
  { tail -n 5 "$WORK/initdb.log" >&2; die "initdb failed"; }

# shared_buffers: 1 GB, or a quarter of RAM on small machines.
MEM_MB=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo 2>/dev/null || echo 4096)
SB_MB=1024
[ "$MEM_MB" -ge 4096 ] || SB_MB=$(( MEM_MB / 4 ))
[ "$SB_MB" -ge 128 ] || SB_MB=128

# Durable like ledgerd: every commit waits for its WAL to be fdatasync'ed (group commit is
# PostgreSQL's own, across concurrent committers). Checkpoints are spaced out so a short run
# does not measure one, which is what a tuned production server does too.
cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# ---- bench/pgbench.sh ----
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCKDIR'
max_connections = 200
shared_buffers = ${SB_MB}MB
fsync = on
synchronous_commit = on
full_page_writes = on
wal_sync_method = fdatasync
wal_level = replica
wal_buffers = 64MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
huge_pages = try
jit = off
logging_collector = off
log_checkpoints = on
EOF

# A free TCP port on 127.0.0.1; retry on a race with another process.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=""
for attempt in 1 2 3 4 5; do
  p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 30000 ))
  port_busy "$p" && continue
  log "starting postgres on 127.0.0.1:$p (fsync=on, synchronous_commit=on, full_page_writes=on, shared_buffers=${SB_MB}MB)"
  # taskset on pg_ctl: the postmaster and every backend it forks inherit the affinity.
  if as_pg "${SERVER_PIN[@]}" "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t 60 \
       -o "-p $p" start >/dev/null 2>&1; then
    STARTED=1; PORT=$p; break
  fi
  STARTED=1   # it may have half-started: let cleanup check postmaster.pid
  if grep -q 'could not bind\|Address already in use' "$PGLOG" 2>/dev/null; then continue; fi
  tail -n 5 "$PGLOG" >&2 2>/dev/null || true
  die "pg_ctl start failed (see the log lines above)"
done
[ -n "$PORT" ] || die "could not start postgres on a free port after 5 attempts"

PSQL=("$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$PORT" -U postgres -d postgres)
sql() { "${PSQL[@]}" "$@" >&2 || die "psql failed: ${*: -1}"; }

# Confirm the settings the comparison depends on.
SETTINGS=$("${PSQL[@]}" -At -c "select string_agg(name||'='||setting, ' ' order by name) from pg_settings where name in ('fsync','synchronous_commit','full_page_writes','wal_sync_method')") ||
  die "cannot query the server"
log "server: $SETTINGS"
case " $SETTINGS " in
  *" fsync=on "*) ;; *) die "fsync is not on" ;;
esac
case " $SETTINGS " in
  *" synchronous_commit=on "*) ;; *) die "synchronous_commit is not on" ;;
esac

# ---- schema and accounts -------------------------------------------------------------------
log "loading $ACCOUNTS accounts"
T0=$(date +%s.%N)
# fillfactor 90 on accounts leaves room for HOT updates (balance is not indexed): standard tuning.
sql -c "
CREATE TABLE accounts (id bigint NOT NULL, balance bigint NOT NULL CHECK (balance >= 0))
  WITH (fillfactor = 90);
INSERT INTO accounts (id, balance) SELECT g, 1000000000000 FROM generate_series(1, $ACCOUNTS) g;
ALTER TABLE accounts ADD PRIMARY KEY (id);
CREATE TABLE transfers (
  id bigserial PRIMARY KEY,
  debit bigint NOT NULL,
  credit bigint NOT NULL,
  amount bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE idem (key text PRIMARY KEY);
" 
sql -c "VACUUM ANALYZE accounts" -c "VACUUM ANALYZE transfers" -c "VACUUM ANALYZE idem"
T1=$(date +%s.%N)
log "loaded in $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s"

# ---- runs ----------------------------------------------------------------------------------
# pgbench's -T clock includes connecting its clients, but the reported TPS excludes that time, so
# a slow backend start (a fork costs tens of ms on some VMs) would shrink the measured window.
# Each run's -T is therefore SECONDS plus the expected connection time, estimated from a probe
# (at most SECONDS/2+1 extra per run, to bound the runtime).
echo 'SELECT 1;' >"$WORK/probe.sql"
probe=$("${CLIENT_PIN[@]}" "$BINDIR/pgbench" -h "$SOCKDIR" -p "$PORT" -U postgres -n -c 8 -j 2 -t 1 \
          -f "$WORK/probe.sql" postgres 2>&1) || { echo "$probe" | tail -n 3 >&2; die "pgbench probe failed"; }
CONN_US=$(echo "$probe" | awk '/^initial connection time = / {printf "%d", $5 * 1000 / 8; exit}')
[[ ${CONN_US:-} =~ ^[0-9]+$ ]] || CONN_US=10000
log "connection setup: ~$(( CONN_US / 1000 )) ms per client"

# run NAME SCRIPT CLIENTS -> prints TPS (without connection establishment) on stdout
run() {
  local name=$1 script=$2 clients=$3 out tps failed extra conn_ms n
  sql -c "CHECKPOINT"
  extra=$(( (CONN_US * clients + 999999) / 1000000 ))
  [ "$extra" -le $(( SECS / 2 + 1 )) ] || extra=$(( SECS / 2 + 1 ))   # bound the total runtime
  log "run $name: $clients clients, ${SECS} s (+${extra} s to connect), $(basename "$script")"
  out=$WORK/pgbench-$name.log
  if ! "${CLIENT_PIN[@]}" "$BINDIR/pgbench" -h "$SOCKDIR" -p "$PORT" -U postgres -n \
        -M prepared -c "$clients" -j 2 -T $(( SECS + extra )) \
        -D naccounts="$ACCOUNTS" -D run="$name" -D seq=0 \
        -f "$script" postgres >"$out" 2>&1; then
    grep -m3 -i 'error\|abort' "$out" >&2 || tail -n 3 "$out" >&2
    die "pgbench run $name failed"
  fi
  # PostgreSQL >= 14: "(without initial connection time)"; older: "(excluding connections establishing)".
  tps=$(awk '/^tps = / && /without initial connection time|excluding connections establishing/ {print $3; exit}' "$out")
  [[ $tps =~ ^[0-9]+(\.[0-9]+)?$ ]] || { tail -n 5 "$out" >&2; die "cannot parse TPS of run $name"; }
  failed=$(awk '/^number of failed transactions:/ {print $5; exit}' "$out")
  [ -z "$failed" ] || [ "$failed" = 0 ] || die "run $name: $failed failed transactions"
  n=$(awk '/^number of transactions actually processed:/ {print $6; exit}' "$out")
  conn_ms=$(awk '/^initial connection time = / {print $5; exit}' "$out")
  log "[$name] $n transfers, $(awk -v t="$tps" 'BEGIN{printf "%.1f", t}') TPS, latency avg $(awk '/^latency average = / {print $4; exit}' "$out") ms, measured window $(awk -v n="$n" -v t="$tps" 'BEGIN{printf "%.1f", n/t}') s, connect ${conn_ms:-?} ms"
  printf '%.0f\n' "$tps"
}

TPS_C32=$(run c32 "$HERE/pg_transfer.sql" 32)
TPS_C64=$(run c64 "$HERE/pg_transfer.sql" 64)
TPS_HOT=$(run hot_c32 "$HERE/pg_hot.sql" 32)

# Sanity: money is conserved and every transfer has its key.
CHECK=$("${PSQL[@]}" -At -F' ' -c "select (select sum(balance) from accounts) = $ACCOUNTS::numeric * 1000000000000, (select count(*) from transfers), (select count(*) from idem)") ||
  die "cannot read back the ledger"
read -r CONSERVED NTRANSFERS NKEYS <<<"$CHECK"
[ "$CONSERVED" = t ] || die "sum of balances changed: money not conserved"
[ "$NTRANSFERS" = "$NKEYS" ] || die "transfers ($NTRANSFERS) != idempotency keys ($NKEYS)"
log "check: $NTRANSFERS transfers, balances conserved"

echo "pgbench tps_c32=$TPS_C32 tps_c64=$TPS_C64 tps_hot_c32=$TPS_HOT accounts=$ACCOUNTS seconds=$SECS"
