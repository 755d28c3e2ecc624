/*
 * engine.c — the sequencer and committer: the engine thread's loop, the committer thread that
 * writes and answers its batches, recovery at open, the submit path used by net threads,
 * snapshots and verify.
 *
 * Threads: engine_submit from any thread; everything that touches `st` runs on the engine
 * thread (or in engine_open/engine_verify before any thread exists). The committer touches
 * only the batch handed to it (its record and its commands) and the log. A snapshot child
 * process gets a copy-on-write image of `st` at a batch boundary.
 *
 * Durability: a batch's commands are completed only after its record is written and
 * fdatasync'd. A failed write or fsync stops the process (fail-stop, as PostgreSQL does
 * since 2018): memory is then ahead of the disk, and only recovery from the log is right.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/engine_state.h"
#include "store/store.h"

/* A batch of commands: one log record, one write + fdatasync, then every command answered. */
typedef struct engine_batch {
  encoder_t enc;
  engine_cmd_t **cmds; /* ENGINE_BATCH_COMMANDS_MAX */
  size_t n;
  size_t bytes;       /* the record's size if every command taken is logged (take limits) */
  uint64_t transfers; /* transfer weight taken */
  uint64_t record_pos; /* log offset the record is written at */
  uint64_t seq;
  int64_t time_ms;
  uint64_t transfers_before;
  bool open, changed;
  uint32_t logged;
} engine_batch_t;

struct engine {
  engine_config_t cfg;
  store_t *store;
  engine_state_t st;
  mpmc_queue_t *queue;
  int wake_fd;
  _Atomic int sleeping; /* SLEEP_* */
  _Atomic int stopping;
  _Atomic int submitting;
  pthread_t thread;
  bool thread_running;
  /* Two batches: the engine thread builds one (applying commands to `st` and encoding its log
   * record) while the committer thread writes and fdatasyncs the other, then completes its
   * commands. cur is the engine's; the committer has commit_todo while commit_busy. */
  engine_batch_t batches[2];
  unsigned cur;
  uint64_t log_reserved; /* log end once every handed-off batch is written (engine thread) */
  engine_cmd_t *carry; /* taken from the queue but did not fit the open batch */
  pthread_t commit_thread;
  bool commit_running;
  pthread_mutex_t commit_mu;
  pthread_cond_t commit_cv;      /* the committer waits for work or stop */
  pthread_cond_t commit_done_cv; /* commit_drain waits for the committer to be idle */
  engine_batch_t *commit_todo;   /* under commit_mu */
  bool commit_inline;            /* one CPU: the engine thread commits (commit_mode_refresh) */
  uint64_t commit_mode_checked_ns; /* 0: not yet */
  uint64_t last_close_ns;        /* when the last batch was closed (commit_hold_ns) */
  uint32_t last_close_n;         /* ... and how many commands it had */
  bool commit_stop;              /* under commit_mu */
  _Atomic bool commit_busy;
  uint64_t log_at_snapshot;      /* log covered by the newest snapshot started */
  uint64_t log_at_snapshot_done; /* ... and by the newest one completed */
  _Atomic uint64_t snapshot_bytes; /* size of the newest snapshot completed (or loaded); 0 = none */
  _Atomic uint64_t snapshots_started, snapshots_written; /* background snapshots (not at close) */
  pid_t snapshot_pid;
  uint64_t snapshot_seq;
  /* The snapshot child's copy of the account table (snapshot_start); NULL: the child shares
   * the live table copy-on-write instead. */
  account_rec_t *accounts_stage;
  _Atomic uint64_t batches_total, commands_total, transfers_total, last_seq, rejected_full_total,
      log_bytes, accounts, users, api_keys, fsync_ns_last, rules_version, suspicious_total, settlement_rows;
  _Atomic bool ready;
  /* Pre-faulting the transfer table ahead of use, at idle priority (see prefault_main). */
  pthread_t prefault_thread;
  bool prefault_running;
  /* A snapshot's start holds the prefault thread (snapshot_may_start): prefault_held is set by
   * the engine, prefault_in_call by the prefault thread around each MADV_POPULATE_WRITE. */
  _Atomic bool prefault_held, prefault_in_call;
  _Atomic uint64_t prefault_populated; /* bytes, engine_stats_t.prefault_populated_bytes */
  _Atomic uint64_t transfer_count_pub; /* st.transfer_count, published after each batch */
  /* engine_set_batch_done_hook: set once, before commands that rely on it are submitted */
  void (*batch_done_hook)(void *arg);
  void *batch_done_arg;
  _Atomic bool batch_done_set;
  ledger_hist_t hist_batch_commands;
  ledger_hist_t hist_fsync_ns;
  /* commit_batch only (one commit at a time): the last slow-commit line, and those since */
  uint64_t slow_commit_logged_ns;
  uint64_t slow_commits_unlogged;
};

/* What may wake the engine thread from wait_for_work: any submit (SLEEP_ANY), or, while the
 * committer is busy (it wakes the engine when done), only a submit of at least
 * ENGINE_WAKE_WEIGHT transfers (SLEEP_HEAVY): a batch request is worth applying during the
 * write, but waking the engine for each single transfer costs more CPU (an eventfd write and a
 * context switch each) than applying them all at once after the write. */
enum { SLEEP_AWAKE = 0, SLEEP_ANY = 1, SLEEP_HEAVY = 2 };
#define ENGINE_WAKE_WEIGHT 64u

static bool is_write(const engine_cmd_t *c) { return c->kind < ENGINE_CMD_ACCOUNT_GET; }

static uint32_t transfer_weight(const engine_cmd_t *c) {
  return c->kind == ENGINE_CMD_TRANSFER_BATCH ? c->u.batch.item_count : 1u;
}

/* ------------------------------------------------------------ snapshots */

static void commit_drain(engine_t *e); /* the committer (below) */

static uint64_t file_bytes(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* Log bytes between two snapshots: the configured interval, or, with snapshot_growth_pct, that
 * share of the newest snapshot's size if more. A snapshot writes the whole state, so at a fixed
 * interval its cost per transfer grows with the ledger (on the benchmark VM from ~10 M
 * transfers on, a batch load had snapshots back to back: each fork write-protects the
 * process's memory, and the child takes CPU and disk); growing the interval with the state
 * keeps the snapshot bytes written per log byte at most 100 / pct. The price is a longer log
 * tail to replay after a crash: up to pct % of the snapshot's size (docs/storage.md). */
static uint64_t snapshot_interval(const engine_t *e) {
  uint64_t grown = atomic_load_explicit(&e->snapshot_bytes, memory_order_relaxed) / 100u * e->cfg.snapshot_growth_pct;
  return grown > e->cfg.snapshot_log_bytes ? grown : e->cfg.snapshot_log_bytes;
}

static void snapshot_reap(engine_t *e, bool wait) {
  if (e->snapshot_pid <= 0) return;
  int status = 0;
  pid_t r = waitpid(e->snapshot_pid, &status, wait ? 0 : WNOHANG);
  if (r == 0) return;
  if (r == e->snapshot_pid && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    e->log_at_snapshot_done = e->log_at_snapshot;
    char final_path[PATH_MAX], tmp_path[PATH_MAX];
    store_snapshot_paths(e->store, e->snapshot_seq, final_path, tmp_path, sizeof final_path);
    atomic_store_explicit(&e->snapshot_bytes, file_bytes(final_path), memory_order_relaxed);
    atomic_fetch_add_explicit(&e->snapshots_written, 1, memory_order_relaxed);
    if (store_sync_dir(e->store) == 0) store_snapshot_prune(e->store, e->snapshot_seq);
    LOG_INFO("snapshot at seq %llu written", (unsigned long long)e->snapshot_seq);
  } else {
    LOG_WARN("snapshot at seq %llu failed (status %d)", (unsigned long long)e->snapshot_seq, status);
    /* log_at_snapshot stays: the next attempt comes after another interval of log. */
  }
  e->snapshot_pid = 0;
}

/* After fork, every page of the parent is write-protected and the engine's first write to
 * each costs a fault, and a copy while the child lives: ~17 us a page on the benchmark VM
 * (docs/storage.md). The child reads the transfer table and its links only up to
 * transfer_count (the side and stamp tables up to their counts), so the part beyond (populated ahead
 * by the prefault thread, and where new transfers go) is left out of the child: MADV_DONTFORK from the first 2 MiB boundary past
 * the used part (a huge page is not split), MADV_DOFORK again after the fork. */
#define HUGE_PAGE_BYTES (2u * 1024u * 1024u) /* x86-64's transparent huge page */

static void table_tail_advise(void *base, size_t used, size_t size, int advice) {
  uintptr_t start = (uintptr_t)base, end = start + size;
  uintptr_t from = (start + used + HUGE_PAGE_BYTES - 1) & ~(uintptr_t)(HUGE_PAGE_BYTES - 1);
  if (from < end && madvise((void *)from, end - from, advice) != 0)
    LOG_WARN("snapshot: madvise(%s): %s", advice == MADV_DONTFORK ? "MADV_DONTFORK" : "MADV_DOFORK", strerror(errno));
}

static void snapshot_tails_advise(engine_t *e, int advice) {
  const engine_state_t *st = &e->st;
  table_tail_advise(st->transfers, st->transfer_count * sizeof(transfer_rec_t),
                    (size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_rec_t), advice);
  table_tail_advise(st->side, st->side_count * sizeof(transfer_side_t),
                    (size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_side_t), advice);
  table_tail_advise(st->stamps, st->stamp_count * sizeof(transfer_stamp_t),
                    (size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_stamp_t), advice);
  table_tail_advise(st->account_extra, st->account_count * sizeof(account_extra_t),
                    (size_t)ENGINE_ACCOUNTS_MAX * sizeof(account_extra_t), advice);
  table_tail_advise(st->next, st->transfer_count * sizeof(engine_next_t),
                    (size_t)ENGINE_TRANSFERS_MAX * sizeof(engine_next_t), advice);
}

/* The account table is written at random: every transfer changes two accounts, so while a
 * child shares the table, the engine's writes fault on page after page of it (17,783 of a
 * snapshot's ~18,500 faults in session 5's count), and with ledgerd on two CPUs each such
 * fault also sends the other CPU a TLB-flush interrupt. So the child gets a copy instead:
 * accounts_stage, copied just before the fork (64 bytes an account, ~10-30 ms per 1 M
 * accounts on warm memory; the pre-fault thread keeps the stage's pages populated), and the
 * live table is kept out of the child (MADV_DONTFORK). The engine does not write the stage
 * while a child lives (one snapshot at a time), so sharing it costs no fault. */
static size_t accounts_table_bytes(void) { return (size_t)ENGINE_ACCOUNTS_MAX * sizeof(account_rec_t); }

static bool accounts_stage_fill(engine_t *e) {
  if (e->accounts_stage == NULL) return false;
  if (madvise(e->st.accounts, accounts_table_bytes(), MADV_DONTFORK) != 0) {
    LOG_WARN("snapshot: madvise(MADV_DONTFORK) on the account table: %s", strerror(errno));
    return false;
  }
  memcpy(e->accounts_stage, e->st.accounts, e->st.account_count * sizeof(account_rec_t));
  return true;
}

/* A step of the prefault thread populates 2 MiB with MADV_POPULATE_WRITE, which holds the
 * process's mmap lock for reading for 5-15 ms on the benchmark VM (the host backs each new
 * page on first touch), while madvise(MADV_DONTFORK / MADV_DOFORK) and fork each need it
 * for writing. snapshot_start makes eleven such calls in a row, and under a batch load the
 * prefault thread started a new step between each: the engine stood still for 100-145 ms
 * per snapshot (session 10, `perf trace` of the madvise calls). So the engine holds the
 * prefault thread when a snapshot is due (no new step starts) and starts the snapshot at the
 * first batch close, or idle tick, where no step is in progress: it never waits for one.
 * True means both hold, until snapshot_start lets the thread go after the fork (Dekker: the
 * prefault thread sets prefault_in_call before it reads prefault_held). */
static bool snapshot_may_start(engine_t *e) {
  atomic_store(&e->prefault_held, true); /* seq_cst with prefault_step's store and load */
  return !atomic_load(&e->prefault_in_call); /* never set without a prefault thread */
}

/* A background snapshot is due: none running and an interval of log not covered. */
static bool snapshot_due(const engine_t *e) {
  return e->snapshot_pid == 0 && e->log_reserved - e->log_at_snapshot >= snapshot_interval(e);
}

/* Called only once snapshot_may_start said yes. The engine stands still from here to the
 * fork's return. The account copy comes before the
 * drain: the committer does not touch the state, and the engine, which alone writes it, is
 * here, so the copy overlaps the write + fdatasync of the batch in flight instead of
 * following it. */
static void snapshot_start(engine_t *e) {
  uint64_t t0 = time_mono_ns();
  bool staged = accounts_stage_fill(e);
  uint64_t d0 = time_mono_ns();
  commit_drain(e); /* the snapshot is the state of the log's end: nothing in flight */
  uint64_t t1 = time_mono_ns();
  char final_path[PATH_MAX], tmp_path[PATH_MAX];
  store_snapshot_paths(e->store, e->st.last_seq, final_path, tmp_path, sizeof final_path);
  uint64_t log_pos = store_log_end(e->store);
  snapshot_tails_advise(e, MADV_DONTFORK);
  pid_t pid = fork();
  if (pid != 0) {
    snapshot_tails_advise(e, MADV_DOFORK);
    if (staged && madvise(e->st.accounts, accounts_table_bytes(), MADV_DOFORK) != 0)
      LOG_WARN("snapshot: madvise(MADV_DOFORK) on the account table: %s", strerror(errno));
    atomic_store(&e->prefault_held, false); /* the prefault thread may go on */
  }
  if (pid < 0) {
    LOG_WARN("snapshot: fork failed: %s", strerror(errno));
    return;
  }
  if (pid == 0) {
    /* The child needs none of the parent's descriptors: holding its sockets would keep
     * closed connections alive (and registered in the parent's epoll sets). */
    (void)close_range(3, ~0u, 0);
    /* The child yields disk and CPU to the engine: idle I/O class, lowest priority. */
    (void)syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, (3 << 13) /* IOPRIO_CLASS_IDLE */);
    (void)nice(19);
    if (staged) e->st.accounts = e->accounts_stage; /* the live table is not mapped here */
    _exit(snapshot_write(&e->st, tmp_path, final_path, log_pos, true) == 0 ? 0 : 1);
  }
  LOG_INFO("snapshot at seq %llu started (account copy %.1f ms, then commit drain %.1f ms, fork %.1f ms, %llu transfers)",
           (unsigned long long)e->st.last_seq, (double)(d0 - t0) / 1e6, (double)(t1 - d0) / 1e6,
           (double)(time_mono_ns() - t1) / 1e6,
           (unsigned long long)e->st.transfer_count);
  e->snapshot_pid = pid;
  atomic_fetch_add_explicit(&e->snapshots_started, 1, memory_order_relaxed);
  e->snapshot_seq = e->st.last_seq;
  e->log_at_snapshot = log_pos;
}

/* Shutdown: a snapshot in progress is optional; stop it rather than wait for it. */
static void snapshot_abandon(engine_t *e) {
  if (e->snapshot_pid <= 0) return;
  kill(e->snapshot_pid, SIGKILL);
  int status;
  (void)waitpid(e->snapshot_pid, &status, 0);
  char final_path[PATH_MAX], tmp_path[PATH_MAX];
  store_snapshot_paths(e->store, e->snapshot_seq, final_path, tmp_path, sizeof final_path);
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    unlink(tmp_path);
    e->log_at_snapshot = e->log_at_snapshot_done; /* it never finished */
  }
  e->snapshot_pid = 0;
}

static int snapshot_now(engine_t *e) {
  char final_path[PATH_MAX], tmp_path[PATH_MAX];
  store_snapshot_paths(e->store, e->st.last_seq, final_path, tmp_path, sizeof final_path);
  int rc = snapshot_write(&e->st, tmp_path, final_path, store_log_end(e->store), true);
  if (rc == 0 && store_sync_dir(e->store) == 0) store_snapshot_prune(e->store, e->st.last_seq);
  if (rc == 0) e->log_at_snapshot = e->log_at_snapshot_done = store_log_end(e->store);
  if (rc == 0) atomic_store_explicit(&e->snapshot_bytes, file_bytes(final_path), memory_order_relaxed);
  return rc;
}

/* ------------------------------------------------------------ the batch */

static void complete(engine_t *e, engine_cmd_t **cmds, size_t n) {
  for (size_t i = 0; i < n; i++) cmds[i]->done(cmds[i]);
  if (atomic_load_explicit(&e->batch_done_set, memory_order_acquire)) e->batch_done_hook(e->batch_done_arg);
}

void engine_set_batch_done_hook(engine_t *e, void (*hook)(void *arg), void *arg) {
  LEDGER_ASSERT(hook != NULL);
  if (atomic_load(&e->batch_done_set)) { /* a second caller: only the same hook is allowed */
    LEDGER_ASSERT(e->batch_done_hook == hook && e->batch_done_arg == arg);
    return;
  }
  e->batch_done_hook = hook;
  e->batch_done_arg = arg;
  atomic_store_explicit(&e->batch_done_set, true, memory_order_release);
}

/* Opens the engine's batch: its sequence number and time, and the state's batch start
 * (expiry of due two-phase holds: `changed`). */
static void batch_open(engine_t *e, engine_batch_t *b) {
  engine_state_t *st = &e->st;
  int64_t now = time_now_ms() + e->cfg.time_offset_ms;
  b->time_ms = now > st->last_time_ms ? now : st->last_time_ms;
  b->seq = st->last_seq + 1;
  b->record_pos = e->log_reserved;
  b->transfers_before = st->transfer_count;
  b->enc.len = STORE_RECORD_HEADER_BYTES + ENGINE_BATCH_HEADER_BYTES;
  b->n = 0;
  b->bytes = b->enc.len;
  b->transfers = 0;
  b->logged = 0;
  b->changed = state_begin_batch(st, b->seq, b->time_ms);
  b->open = true;
}

static void batch_apply(engine_t *e, engine_batch_t *b, engine_cmd_t *c) {
  engine_state_t *st = &e->st;
  c->outcome_unknown = false;
  if (c->auth_mode == ENGINE_AUTH_BEARER && !auth_resolve(st, c)) {
    c->result = ENGINE_R_UNAUTHENTICATED; /* live only: nothing to log */
    c->seq = b->seq;
    return;
  }
  if (!is_write(c)) {
    state_read(st, c);
    return;
  }
  size_t mark = b->enc.len;
  size_t extra_off = codec_encode_cmd(&b->enc, c);
  if (state_apply(st, c, b->record_pos + STORE_RECORD_HEADER_BYTES + extra_off)) b->logged++;
  else b->enc.len = mark;
}

/* Room for another command: a batch that is not open is empty (its n, transfers and bytes
 * are the last batch's, which the committer may still be answering). */
static bool batch_has_room(const engine_batch_t *b) { return !b->open || b->n < ENGINE_BATCH_COMMANDS_MAX; }

/* Single transfers come from the queue one by one, each touching two accounts at random
 * among millions and their newest history entries. On the benchmark VM the price of such a
 * touch is mostly the address translation (a TLB miss walks the guest's and the host's page
 * tables), which a software prefetch does not hide when issued one command ahead: it waits for
 * the walk itself. Walks do overlap with each other, so the loads are started for groups of
 * PREFETCH_GROUP commands at once (the engine is the queue's only consumer, so it may look at
 * commands before it takes them): every PREFETCH_GROUP commands, the accounts of the group
 * after the next one, and the history entries of the next group (their accounts were loaded
 * a group earlier). state_prefetch; a hint, it changes nothing. */
#define PREFETCH_GROUP 8u

/* Starts stage `stage` of the loads for the queued commands [from, from + PREFETCH_GROUP),
 * counted from the next one to take (0). */
static void prefetch_queued(engine_t *e, size_t from, int stage) {
  for (size_t k = from; k < from + PREFETCH_GROUP; k++) {
    void *item;
    if (!mpmc_queue_peek(e->queue, k, &item)) break;
    state_prefetch(&e->st, item, stage);
  }
}

/* Takes waiting commands into the open batch (opening it for the first) up to the batch
 * limits, and applies each. false: nothing was taken. */
static bool batch_fill(engine_t *e, engine_batch_t *b) {
  bool took = false;
  size_t taken = 0;
  while (batch_has_room(b)) {
    engine_cmd_t *c = e->carry;
    e->carry = NULL;
    if (!c) {
      if (taken % PREFETCH_GROUP == 0) {
        if (taken == 0) { /* the first two groups: commands, accounts, then the first's history */
          prefetch_queued(e, 0, 0);
          prefetch_queued(e, PREFETCH_GROUP, 0);
          prefetch_queued(e, 0, 1);
          prefetch_queued(e, PREFETCH_GROUP, 1);
          prefetch_queued(e, 0, 2);
        } else {
          prefetch_queued(e, 2 * PREFETCH_GROUP, 0);
          prefetch_queued(e, PREFETCH_GROUP, 1);
          prefetch_queued(e, 0, 2);
        }
      }
      void *item;
      if (!mpmc_queue_pop(e->queue, &item)) break;
      c = item;
      taken++;
    }
    size_t need = is_write(c) ? codec_cmd_bytes(c) : 0;
    uint32_t w = transfer_weight(c);
    if (b->open && b->n > 0 && (b->transfers + w > ENGINE_BATCH_TRANSFERS_MAX || b->bytes + need > b->enc.cap)) {
      e->carry = c; /* the batch is full: c opens the next one */
      break;
    }
    if (!b->open) batch_open(e, b);
    LEDGER_ASSERT(b->bytes + need <= b->enc.cap);
    b->bytes += need;
    b->transfers += w;
    b->cmds[b->n++] = c;
    batch_apply(e, b, c);
    took = true;
  }
  return took;
}

static void commit_batch(engine_t *e, engine_batch_t *b);

/* Closes the open batch (its record sealed, the state's batch ended) and hands it to the
 * committer, which must be idle (or, with one CPU, commits it on this thread). */
static void batch_close(engine_t *e, engine_batch_t *b) {
  engine_state_t *st = &e->st;
  if (b->changed || b->logged > 0) {
    uint8_t *h = b->enc.buf + STORE_RECORD_HEADER_BYTES;
    uint32_t zero = 0;
    memcpy(h, &b->seq, 8);
    memcpy(h + 8, &b->time_ms, 8);
    memcpy(h + 16, &b->logged, 4);
    memcpy(h + 20, &zero, 4);
    store_record_seal(b->enc.buf, (uint32_t)(b->enc.len - STORE_RECORD_HEADER_BYTES));
    st->last_seq = b->seq;
    st->last_time_ms = b->time_ms;
    e->log_reserved += b->enc.len;
  } else {
    b->enc.len = 0; /* nothing to write: the committer only answers (after the batch before) */
  }
  b->open = false;
  atomic_fetch_add_explicit(&e->commands_total, b->n, memory_order_relaxed);
  if (b->n > 0) hist_record(&e->hist_batch_commands, b->n);
  atomic_fetch_add_explicit(&e->transfers_total, st->transfer_count - b->transfers_before, memory_order_relaxed);
  atomic_store_explicit(&e->transfer_count_pub, st->transfer_count, memory_order_relaxed);
  atomic_store_explicit(&e->rules_version, st->rules.version, memory_order_relaxed);
  atomic_store_explicit(&e->suspicious_total, st->suspicious_count, memory_order_relaxed);
  atomic_store_explicit(&e->settlement_rows, st->settle_count, memory_order_relaxed);
  atomic_store_explicit(&e->accounts, st->account_count, memory_order_relaxed);
  atomic_store_explicit(&e->users, st->user_count, memory_order_relaxed);
  atomic_store_explicit(&e->api_keys, st->key_count, memory_order_relaxed);
  if (e->commit_inline) {
    commit_batch(e, b);
    return;
  }
  pthread_mutex_lock(&e->commit_mu);
  LEDGER_ASSERT(e->commit_todo == NULL);
  e->commit_todo = b;
  atomic_store(&e->commit_busy, true);
  pthread_cond_signal(&e->commit_cv);
  pthread_mutex_unlock(&e->commit_mu);
}

/* Writes and fdatasyncs a closed batch's record (if it has one), then answers its commands. */
static void commit_batch(engine_t *e, engine_batch_t *b) {
  if (b->enc.len > 0) {
    uint64_t t0 = time_mono_ns();
    int rc = store_log_append(e->store, b->enc.buf, b->enc.len, e->cfg.fsync);
    if (rc != 0) {
      LOG_ERROR("log append failed (%s): stopping so that recovery decides from the log", ledger_strerror(rc));
      abort();
    }
    uint64_t t1 = time_mono_ns(), fsync_ns = t1 - t0;
    uint64_t slow_ns = e->cfg.slow_commit_ns ? e->cfg.slow_commit_ns : (uint64_t)ENGINE_SLOW_COMMIT_MS * 1000000u;
    if (fsync_ns >= slow_ns) {
      if (e->slow_commit_logged_ns == 0 || t1 - e->slow_commit_logged_ns >= 1000000000u) {
        LOG_WARN("slow commit: write + fdatasync of %zu bytes (%zu commands) took %.1f ms (%llu more over %.1f ms "
                 "since the last such line)",
                 b->enc.len, b->n, (double)fsync_ns / 1e6, (unsigned long long)e->slow_commits_unlogged,
                 (double)slow_ns / 1e6);
        e->slow_commit_logged_ns = t1;
        e->slow_commits_unlogged = 0;
      } else {
        e->slow_commits_unlogged++;
      }
    }
    atomic_store_explicit(&e->fsync_ns_last, fsync_ns, memory_order_relaxed);
    hist_record(&e->hist_fsync_ns, fsync_ns);
    atomic_fetch_add_explicit(&e->batches_total, 1, memory_order_relaxed);
    atomic_store_explicit(&e->last_seq, b->seq, memory_order_relaxed);
    atomic_store_explicit(&e->log_bytes, store_log_end(e->store), memory_order_relaxed);
  }
  complete(e, b->cmds, b->n);
}

/* The committer thread: writes and fdatasyncs each batch handed to it, in order, then
 * answers its commands. A command is answered only after its own batch and every batch
 * before it are durable (a read may have seen the batch before it). */
static void *commit_main(void *arg) {
  engine_t *e = arg;
  thread_start_background("ledger-commit");
  pthread_mutex_lock(&e->commit_mu);
  for (;;) {
    while (e->commit_todo == NULL && !e->commit_stop) pthread_cond_wait(&e->commit_cv, &e->commit_mu);
    engine_batch_t *b = e->commit_todo;
    if (b == NULL) break; /* stop, and nothing left */
    pthread_mutex_unlock(&e->commit_mu);
    commit_batch(e, b);
    pthread_mutex_lock(&e->commit_mu);
    e->commit_todo = NULL;
    atomic_store(&e->commit_busy, false);
    pthread_cond_broadcast(&e->commit_done_cv);
    /* The engine may sleep waiting for the committer (its batch full, or one to hand over). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&e->sleeping) != SLEEP_AWAKE) {
      uint64_t one = 1;
      ssize_t w = write(e->wake_fd, &one, sizeof one);
      (void)w;
    }
  }
  pthread_mutex_unlock(&e->commit_mu);
  return NULL;
}

/* Overlapping the apply with the write needs a second CPU. When the engine thread may run
 * on one CPU only (taskset, cgroups), every hand-over is two context switches, and the
 * device idles while the CPU runs the net threads that the answers woke before it gets
 * back to the engine. Measured on the benchmark VM with ledgerd on one CPU (256 connections of
 * single transfers, 4 alternated rounds against the engine committing itself): 42.3 / 40.6 /
 * 37.1 / 51.1 k/s against 56.9 / 39.0 / 38.7 / 50.8 k/s, no gain. So with one CPU the engine
 * thread writes and answers its batches itself, as before the committer existed. The
 * affinity is read again every ENGINE_TICK_MS (it can change at run time). */
static void commit_mode_refresh(engine_t *e) {
  uint64_t now = time_mono_ns();
  bool first = e->commit_mode_checked_ns == 0;
  if (!first && now - e->commit_mode_checked_ns < (uint64_t)ENGINE_TICK_MS * 1000000u) return;
  e->commit_mode_checked_ns = now;
  cpu_set_t set;
  bool inline_commit = sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < 2;
  if (first || inline_commit != e->commit_inline)
    LOG_INFO("engine: batches are written %s", inline_commit ? "by the engine thread (one CPU)"
                                                             : "by the committer thread while the next one is applied");
  e->commit_inline = inline_commit;
}

/* Waits until the committer has written and answered everything handed to it. */
static void commit_drain(engine_t *e) {
  pthread_mutex_lock(&e->commit_mu);
  while (e->commit_todo != NULL) pthread_cond_wait(&e->commit_done_cv, &e->commit_mu);
  pthread_mutex_unlock(&e->commit_mu);
}

static bool expiry_due(const engine_t *e) {
  return e->st.pending_count > 0 && e->st.pending[0].deadline_ms <= time_now_ms() + e->cfg.time_offset_ms;
}

/* Sleeps until the wake descriptor is written (engine_submit, the committer, engine_stop) or
 * ns have passed, and consumes the wake. */
static void wake_wait(engine_t *e, uint64_t ns) {
  struct pollfd p = {.fd = e->wake_fd, .events = POLLIN};
  struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
  if (ppoll(&p, 1, &ts, NULL) > 0) {
    uint64_t v;
    ssize_t r = read(e->wake_fd, &v, sizeof v);
    (void)r;
  }
}

/* Sleeps until there is something the engine can do: a command it can take (can_take: the
 * open batch has room), or the committer idle with a batch to hand over; at most a tick. */
static void wait_for_work(engine_t *e, const engine_batch_t *b, bool can_take) {
  atomic_store(&e->sleeping, atomic_load(&e->commit_busy) ? SLEEP_HEAVY : SLEEP_ANY);
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load(&e->sleeping) == SLEEP_HEAVY && !atomic_load(&e->commit_busy)) {
    /* The committer finished before it could see SLEEP_HEAVY: nothing will wake us for a
     * light command now, so any submit must (the queue is checked after this store). */
    atomic_store(&e->sleeping, SLEEP_ANY);
    atomic_thread_fence(memory_order_seq_cst);
  }
  bool work = b->open && !atomic_load(&e->commit_busy);
  void *item;
  if (!work && can_take && e->carry == NULL && mpmc_queue_pop(e->queue, &item)) { /* raced with a submit */
    e->carry = item;
    work = true;
  }
  if (!work && !atomic_load(&e->stopping)) wake_wait(e, (uint64_t)ENGINE_TICK_MS * 1000000u);
  atomic_store(&e->sleeping, SLEEP_AWAKE);
}

/* The transfer table and its links table grow into fresh memory, and the kernel zeroes every
 * new page inside the engine thread's page fault: 20% of its time in the batch benchmark
 * (docs/performance.md); and a fault on a huge page may first compact memory, which can hold
 * the engine for 100 ms or more. This thread keeps the pages ahead of both tables' ends
 * populated with MADV_POPULATE_WRITE, which fills missing pages with zeros and never changes
 * a page that is present: it cannot race with the engine's writes. Ahead = a quarter of what
 * is already used (at least 8 MiB), at most cfg.prefault_bytes, per table (prefault_ahead;
 * until session 14 as much as was used, which populated two bytes for every byte a growing
 * ledger used until it reached cfg.prefault_bytes, and kept that much resident unused). The snapshot's account stage (snapshot_start) is
 * written all at once, so its pages are populated up to the accounts in use instead.
 * Priority: SCHED_IDLE (only when a CPU would otherwise idle) while the transfer table's
 * populated runway is at least half of that target, so that it never delays a request; the
 * normal policy once the runway has fallen under half (the engine is about to fault pages
 * itself, on the critical path: the same zeroing, done by the one serial thread), back to
 * SCHED_IDLE when the runway is whole again. Batch A/B, 2 CPUs, 1 M accounts, 4 alternated
 * 8 s rounds (session 7): 1.97 / 2.04 / 1.84 / 1.95 M transfers/s against 1.83 / 1.62 /
 * 1.86 / 1.65 M always at SCHED_IDLE (docs/performance.md). */
#define PREFAULT_STEP_BYTES HUGE_PAGE_BYTES

typedef struct prefault_table {
  char *base;
  size_t size, record, done;
  bool upto_used; /* populate [0, used) rather than ahead of used */
} prefault_table_t;

size_t engine_prefault_ahead(uint64_t prefault_bytes, size_t used) {
  size_t ahead = used / 4 > ENGINE_PREFAULT_AHEAD_MIN_BYTES ? used / 4 : ENGINE_PREFAULT_AHEAD_MIN_BYTES;
  return ahead < prefault_bytes ? ahead : (size_t)prefault_bytes;
}
static size_t prefault_ahead(const engine_t *e, size_t used) { return engine_prefault_ahead(e->cfg.prefault_bytes, used); }

/* One step of populating; false when there was nothing to do, the engine holds it
 * (snapshot_may_start), or it failed. */
static bool prefault_step(engine_t *e, prefault_table_t *t, uint64_t count) {
  size_t used = (size_t)count * t->record;
  size_t want;
  if (t->upto_used) {
    want = (used + PREFAULT_STEP_BYTES - 1) & ~(size_t)(PREFAULT_STEP_BYTES - 1);
  } else {
    want = used + prefault_ahead(e, used);
    if (t->done < used) t->done = used & ~(size_t)(PREFAULT_STEP_BYTES - 1); /* the engine went past */
  }
  if (want > t->size) want = t->size;
  if (t->done + PREFAULT_STEP_BYTES > want) return false;
  atomic_store(&e->prefault_in_call, true); /* seq_cst with the load below: snapshot_may_start */
  if (atomic_load(&e->prefault_held)) {
    atomic_store(&e->prefault_in_call, false);
    return false;
  }
  int rc = madvise(t->base + t->done, PREFAULT_STEP_BYTES, MADV_POPULATE_WRITE);
  atomic_store(&e->prefault_in_call, false);
  if (rc != 0) {
    LOG_WARN("prefault: madvise(MADV_POPULATE_WRITE): %s; the engine faults its own pages", strerror(errno));
    t->size = 0; /* off for this table */
    return false;
  }
  t->done += PREFAULT_STEP_BYTES;
  atomic_fetch_add_explicit(&e->prefault_populated, PREFAULT_STEP_BYTES, memory_order_relaxed);
  return true;
}

/* The populated runway ahead of a table's used part, and the most prefault_step will fill
 * (its target rounded down to whole steps, as it populates whole steps only). */
static void prefault_runway(const engine_t *e, const prefault_table_t *t, uint64_t count, size_t *have, size_t *most) {
  size_t used = (size_t)count * t->record;
  size_t ahead = prefault_ahead(e, used);
  size_t want = used + ahead > t->size ? t->size : used + ahead;
  want &= ~(size_t)(PREFAULT_STEP_BYTES - 1);
  *most = want > used ? want - used : 0;
  *have = t->done > used ? t->done - used : 0;
}

/* Leaving SCHED_IDLE needs CAP_SYS_NICE (or RLIMIT_NICE 20): without it the thread stays at
 * SCHED_IDLE, as before session 7, and says so once. */
static bool prefault_policy(bool urgent) {
  struct sched_param sp = {0};
  int rc = pthread_setschedparam(pthread_self(), urgent ? SCHED_OTHER : SCHED_IDLE, &sp);
  if (rc != 0 && urgent) {
    LOG_INFO("prefault: cannot leave SCHED_IDLE (%s): it stays at idle priority when it falls behind", strerror(rc));
    return false;
  }
  return true;
}

/* With nothing to populate the thread naps, 2 ms after a step, twice as long after each empty
 * round up to 20 ms: an idle server wakes it ~50 times a second, not ~500 (session 14). The
 * runway (at least 8 MiB, engine_prefault_ahead) outlasts a 20 ms nap below ~400 MB/s of new
 * transfers, twice the batch benchmark's rate; above that the engine faults its own pages
 * until the thread, awake again, catches up. */
#define PREFAULT_NAP_MIN_US 2000u
#define PREFAULT_NAP_MAX_US 20000u

static void *prefault_main(void *arg) {
  engine_t *e = arg;
  unsigned nap_us = PREFAULT_NAP_MIN_US;
  thread_start_background("ledger-prefault");
  bool urgent = false, can_switch = true;
  (void)prefault_policy(false);
  prefault_table_t tables[2] = {
      {(char *)e->st.transfers, (size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_rec_t), sizeof(transfer_rec_t), 0, false},
      {(char *)e->st.next, (size_t)ENGINE_TRANSFERS_MAX * sizeof(engine_next_t), sizeof(engine_next_t), 0, false},
  };
  prefault_table_t stage = {(char *)e->accounts_stage, e->accounts_stage ? accounts_table_bytes() : 0,
                            sizeof(account_rec_t), 0, true};
  while (!atomic_load(&e->stopping)) {
    uint64_t count = atomic_load_explicit(&e->transfer_count_pub, memory_order_relaxed);
    size_t have, most;
    prefault_runway(e, &tables[0], count, &have, &most);
    if (can_switch && (urgent ? have >= most : have < most / 2)) {
      urgent = !urgent;
      if (!prefault_policy(urgent)) can_switch = urgent = false;
    }
    bool busy = false;
    for (size_t i = 0; i < LEDGER_ARRAY_LEN(tables); i++) busy |= prefault_step(e, &tables[i], count);
    busy |= prefault_step(e, &stage, atomic_load_explicit(&e->accounts, memory_order_relaxed));
    if (busy) {
      nap_us = PREFAULT_NAP_MIN_US;
    } else {
      usleep(nap_us);
      nap_us = nap_us * 2 < PREFAULT_NAP_MAX_US ? nap_us * 2 : PREFAULT_NAP_MAX_US;
    }
  }
  return NULL;
}

/* Group commit with a floor on the time between writes (cfg.commit_interval_ns, ledgerd
 * --commit-interval-us). Without it a batch is written as soon as the one before is durable,
 * so a fast device under a stream of single commands sees one write + fdatasync per few
 * commands: ~2,000 a second at 30,000 transfers/s here. On the benchmark VM that I/O rate
 * gets the whole VM paused by its host for ~10 ms every 100 ms (docs/performance.md, "The
 * p99 and the host"), which is the open-loop p99. The floor bounds the rate of writes.
 * It only holds a batch when commands come concurrently (this batch or the last one had two
 * or more): a client that sends one request at a time never waits for it. Returns how long
 * the open batch waits before it is written, 0 = now (also for a full batch, a command that
 * did not fit, and when stopping). */
static uint64_t commit_hold_ns(const engine_t *e, const engine_batch_t *b) {
  if (e->cfg.commit_interval_ns == 0 || (b->n < 2 && e->last_close_n < 2) || e->carry != NULL ||
      !batch_has_room(b) || atomic_load(&e->stopping))
    return 0;
  uint64_t now = time_mono_ns(), due = e->last_close_ns + e->cfg.commit_interval_ns;
  return now >= due ? 0 : due - now;
}

/* Sleeps for ns while the open batch waits out the commit interval; only a heavy command
 * (SLEEP_HEAVY) wakes it early, the rest are applied together when it ends. A heavy command
 * submitted just before `sleeping` is set is not woken for: it waits out the rest of the
 * interval (at most ENGINE_COMMIT_INTERVAL_NS_MAX; the queue cannot tell a heavy command
 * from the light ones the hold is for without taking them). */
static void wait_hold(engine_t *e, uint64_t ns) {
  atomic_store(&e->sleeping, SLEEP_HEAVY);
  atomic_thread_fence(memory_order_seq_cst);
  wake_wait(e, ns);
  atomic_store(&e->sleeping, SLEEP_AWAKE);
}

/* The engine thread. It keeps one batch open while the committer writes the one before:
 * commands that arrive during a write are applied at once and go out in the next write, as
 * soon as the committer is free (group commit with the apply off the write's path). */
static void *engine_main(void *arg) {
  engine_t *e = arg;
  thread_start_background("ledger-engine");
  for (;;) {
    engine_batch_t *b = &e->batches[e->cur];
    bool took = batch_fill(e, b);
    bool idle = !atomic_load(&e->commit_busy);
    if (!b->open && idle && expiry_due(e)) batch_open(e, b); /* holds to release, no command */
    if (b->open && idle) {
      uint64_t hold = commit_hold_ns(e, b);
      if (hold > 0) {
        if (!took) wait_hold(e, hold);
        continue;
      }
      commit_mode_refresh(e);
      e->last_close_ns = time_mono_ns();
      e->last_close_n = (uint32_t)b->n; /* <= ENGINE_BATCH_COMMANDS_MAX */
      batch_close(e, b);
      e->cur ^= 1u;
      snapshot_reap(e, false);
      if (snapshot_due(e) && snapshot_may_start(e)) {
        snapshot_start(e);
      }
      continue;
    }
    if (took) continue;
    if (!b->open && idle) {
      if (atomic_load(&e->stopping) && e->carry == NULL && atomic_load(&e->submitting) == 0 &&
          mpmc_queue_size_approx(e->queue) == 0)
        break;
      snapshot_reap(e, false); /* an idle ledger still learns that its snapshot is written */
      /* A snapshot put off at a batch close (a pre-fault step was in progress) starts here,
       * within an idle tick, rather than at the next batch: the pre-fault thread is held
       * until it does. Nothing is open or in flight, so the state is the log's end. */
      if (!atomic_load(&e->stopping) && snapshot_due(e) && snapshot_may_start(e)) snapshot_start(e);
    }
    wait_for_work(e, b, e->carry == NULL && batch_has_room(b));
  }
  return NULL;
}

/* ------------------------------------------------------------ open / close */

static int recover(engine_t *e) {
  char path[PATH_MAX];
  uint64_t snap_seq = 0, log_pos = 0;
  int rc = store_snapshot_newest(e->store, path, sizeof path, &snap_seq);
  if (rc == 0) {
    rc = snapshot_load(&e->st, path, &log_pos);
    if (rc != 0) {
      LOG_WARN("snapshot %s unreadable (%s): replaying the whole log", path, ledger_strerror(rc));
      state_free(&e->st);
      if ((rc = state_init(&e->st, e->cfg.idempotency_retention_ms)) != 0) return rc;
      log_pos = 0;
    } else {
      atomic_store_explicit(&e->snapshot_bytes, file_bytes(path), memory_order_relaxed);
      LOG_INFO("recovery: snapshot seq %llu, log tail from offset %llu", (unsigned long long)snap_seq,
               (unsigned long long)log_pos);
    }
  }
  e->log_at_snapshot = e->log_at_snapshot_done = log_pos;
  replay_ctx_t rctx;
  if ((rc = replay_ctx_init(&rctx, &e->st)) != 0) return rc;
  bool torn = false;
  uint64_t t0 = time_mono_ns();
  rc = store_log_scan(e->store, log_pos, replay_record, &rctx, &torn);
  if (rc != 0) LOG_ERROR("recovery failed: %s %s", ledger_strerror(rc), rctx.problem);
  if (torn) LOG_WARN("recovery: a torn last record was cut off at offset %llu", (unsigned long long)store_log_end(e->store));
  LOG_INFO("recovery: %llu batches replayed in %.3f s; seq %llu, %llu accounts, %llu transfers",
           (unsigned long long)rctx.batches, (double)(time_mono_ns() - t0) / 1e9,
           (unsigned long long)e->st.last_seq, (unsigned long long)e->st.account_count,
           (unsigned long long)e->st.transfer_count);
  replay_ctx_free(&rctx);
  return rc != 0 ? LEDGER_ECORRUPT : LEDGER_OK;
}

/* Stops the committer once it has written and answered what it was handed. */
static void commit_stop_join(engine_t *e) {
  if (!e->commit_running) return;
  pthread_mutex_lock(&e->commit_mu);
  e->commit_stop = true;
  pthread_cond_signal(&e->commit_cv);
  pthread_mutex_unlock(&e->commit_mu);
  pthread_join(e->commit_thread, NULL);
  e->commit_running = false;
}

static void engine_free(engine_t *e) {
  if (!e) return;
  commit_stop_join(e);
  snapshot_reap(e, true);
  state_free(&e->st);
  if (e->accounts_stage) munmap(e->accounts_stage, accounts_table_bytes());
  store_close(e->store);
  mpmc_queue_destroy(e->queue);
  if (e->wake_fd >= 0) close(e->wake_fd);
  for (unsigned i = 0; i < 2; i++) {
    free(e->batches[i].enc.buf);
    free(e->batches[i].cmds);
  }
  pthread_mutex_destroy(&e->commit_mu);
  pthread_cond_destroy(&e->commit_cv);
  pthread_cond_destroy(&e->commit_done_cv);
  free(e);
}

int engine_open(const engine_config_t *config, engine_t **out) {
  engine_t *e = calloc(1, sizeof *e);
  if (!e) return LEDGER_ENOMEM;
  e->cfg = *config;
  e->wake_fd = -1;
  pthread_mutex_init(&e->commit_mu, NULL);
  pthread_cond_init(&e->commit_cv, NULL);
  pthread_cond_init(&e->commit_done_cv, NULL);
  if (e->cfg.snapshot_log_bytes == 0) e->cfg.snapshot_log_bytes = ENGINE_SNAPSHOT_LOG_BYTES_DEFAULT;
  if (e->cfg.idempotency_retention_ms == 0) e->cfg.idempotency_retention_ms = ENGINE_IDEMPOTENCY_RETENTION_MS_DEFAULT;
  if (e->cfg.commit_interval_ns > ENGINE_COMMIT_INTERVAL_NS_MAX) e->cfg.commit_interval_ns = ENGINE_COMMIT_INTERVAL_NS_MAX;
  if (e->cfg.snapshot_growth_pct > ENGINE_SNAPSHOT_GROWTH_PCT_MAX) e->cfg.snapshot_growth_pct = ENGINE_SNAPSHOT_GROWTH_PCT_MAX;
  int rc = store_open(config->data_dir, false, &e->store);
  if (rc != 0) goto fail;
  if ((rc = state_init(&e->st, e->cfg.idempotency_retention_ms)) != 0) goto fail;
  if ((rc = recover(e)) != 0) goto fail;
  static_assert(ENGINE_BATCH_LOG_BYTES_MAX <= STORE_APPEND_BYTES_MAX, "a batch record is one append");
  if (e->cfg.fsync && (rc = store_log_prealloc_start(e->store, e->cfg.log_prealloc_bytes)) != 0) goto fail;
  /* Address space only (MAP_NORESERVE): pages are populated as accounts are created. */
  e->accounts_stage = state_reserve(accounts_table_bytes());
  if (e->accounts_stage == NULL) LOG_WARN("snapshot: no account stage (%s): the child shares the live table", strerror(errno));
  e->log_reserved = store_log_end(e->store);
  rc = LEDGER_ENOMEM;
  for (unsigned i = 0; i < 2; i++) {
    engine_batch_t *b = &e->batches[i];
    b->enc.cap = ENGINE_BATCH_LOG_BYTES_MAX;
    b->enc.buf = malloc(b->enc.cap); /* address space; pages as records need them */
    b->cmds = calloc(ENGINE_BATCH_COMMANDS_MAX, sizeof *b->cmds);
    if (!b->enc.buf || !b->cmds) goto fail;
  }
  uint32_t queue_max = config->queue_commands_max ? config->queue_commands_max : ENGINE_QUEUE_COMMANDS_MAX;
  if (queue_max > ENGINE_QUEUE_COMMANDS_MAX) {
    rc = LEDGER_EINVAL;
    goto fail;
  }
  if ((rc = mpmc_queue_create(queue_max, &e->queue)) != 0) goto fail;
  e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (e->wake_fd < 0) {
    rc = LEDGER_EIO;
    goto fail;
  }
  atomic_store(&e->last_seq, e->st.last_seq);
  atomic_store(&e->accounts, e->st.account_count);
  atomic_store(&e->users, e->st.user_count);
  atomic_store(&e->api_keys, e->st.key_count);
  atomic_store(&e->rules_version, e->st.rules.version);
  atomic_store(&e->suspicious_total, e->st.suspicious_count);
  atomic_store(&e->settlement_rows, e->st.settle_count);
  atomic_store(&e->log_bytes, store_log_end(e->store));
  if (pthread_create(&e->commit_thread, NULL, commit_main, e) != 0) {
    rc = LEDGER_ENOMEM;
    goto fail;
  }
  e->commit_running = true;
  if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
    rc = LEDGER_ENOMEM;
    goto fail;
  }
  e->thread_running = true;
  atomic_store(&e->transfer_count_pub, e->st.transfer_count);
  if (e->cfg.prefault_bytes > 0 && pthread_create(&e->prefault_thread, NULL, prefault_main, e) == 0)
    e->prefault_running = true;
  atomic_store(&e->ready, true);
  *out = e;
  return LEDGER_OK;
fail:
  engine_free(e);
  return rc;
}

void engine_stop(engine_t *e) {
  if (!e->thread_running) return;
  atomic_store(&e->stopping, 1);
  atomic_store(&e->ready, false);
  while (atomic_load(&e->submitting) != 0) sched_yield();
  uint64_t one = 1;
  ssize_t w = write(e->wake_fd, &one, sizeof one);
  (void)w;
  pthread_join(e->thread, NULL); /* it drains the queue and hands over its last batch */
  e->thread_running = false;
  commit_stop_join(e); /* which answers everything */
  if (e->prefault_running) pthread_join(e->prefault_thread, NULL);
  e->prefault_running = false;
  snapshot_reap(e, false);
  snapshot_abandon(e);
  /* A final snapshot only when the log since the last one would make the next start slow:
   * writing gigabytes at shutdown to save replaying a few megabytes is a bad trade. */
  if (e->st.last_seq > 0 && store_log_end(e->store) - e->log_at_snapshot_done >= e->cfg.snapshot_log_bytes / 4) {
    int rc = snapshot_now(e);
    if (rc != 0) LOG_WARN("final snapshot failed: %s", ledger_strerror(rc));
  }
}

void engine_close(engine_t *e) {
  if (!e) return;
  engine_stop(e);
  engine_free(e);
}

int engine_submit(engine_t *e, engine_cmd_t *cmd) {
  LEDGER_ASSERT(cmd->done != NULL);
  atomic_fetch_add(&e->submitting, 1);
  int rc = LEDGER_OK;
  if (atomic_load(&e->stopping)) {
    rc = LEDGER_ESTOPPED;
  } else if (!mpmc_queue_push(e->queue, cmd)) {
    atomic_fetch_add_explicit(&e->rejected_full_total, 1, memory_order_relaxed);
    rc = LEDGER_EFULL;
  } else {
    atomic_thread_fence(memory_order_seq_cst);
    int sleeping = atomic_load(&e->sleeping);
    if (sleeping == SLEEP_ANY || (sleeping == SLEEP_HEAVY && transfer_weight(cmd) >= ENGINE_WAKE_WEIGHT)) {
      uint64_t one = 1;
      ssize_t w = write(e->wake_fd, &one, sizeof one);
      (void)w;
    }
  }
  atomic_fetch_sub(&e->submitting, 1);
  return rc;
}

typedef struct sync_wait {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
} sync_wait_t;

static void sync_done(engine_cmd_t *cmd) {
  sync_wait_t *w = cmd->done_arg;
  pthread_mutex_lock(&w->lock);
  w->done = true;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
}

int engine_run(engine_t *e, engine_cmd_t *cmd) {
  sync_wait_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false};
  cmd->done = sync_done;
  cmd->done_arg = &w;
  int rc = engine_submit(e, cmd);
  if (rc != 0) return rc;
  pthread_mutex_lock(&w.lock);
  while (!w.done) pthread_cond_wait(&w.cond, &w.lock);
  pthread_mutex_unlock(&w.lock);
  return LEDGER_OK;
}

uint16_t engine_region_find(const engine_t *e, const char *name) { return state_region_find(&e->st, name); }

const char *engine_region_name(const engine_t *e, uint16_t region) {
  uint32_t n = atomic_load_explicit(&e->st.region_count, memory_order_acquire);
  if (region == 0 || region > n) return "";
  return e->st.regions[region - 1];
}

int engine_read_extra(engine_t *e, uint64_t pos, uint32_t len, char *buf) {
  return store_log_read(e->store, pos, buf, len);
}

void engine_get_stats(const engine_t *e, engine_stats_t *o) {
  o->batches_total = atomic_load_explicit(&e->batches_total, memory_order_relaxed);
  o->commands_total = atomic_load_explicit(&e->commands_total, memory_order_relaxed);
  o->transfers_total = atomic_load_explicit(&e->transfers_total, memory_order_relaxed);
  o->last_seq = atomic_load_explicit(&e->last_seq, memory_order_relaxed);
  o->queue_depth = mpmc_queue_size_approx(e->queue);
  o->rejected_full_total = atomic_load_explicit(&e->rejected_full_total, memory_order_relaxed);
  o->log_bytes = atomic_load_explicit(&e->log_bytes, memory_order_relaxed);
  o->accounts = atomic_load_explicit(&e->accounts, memory_order_relaxed);
  o->users = atomic_load_explicit(&e->users, memory_order_relaxed);
  o->api_keys = atomic_load_explicit(&e->api_keys, memory_order_relaxed);
  o->fsync_ns_last = atomic_load_explicit(&e->fsync_ns_last, memory_order_relaxed);
  o->rules_version = atomic_load_explicit(&e->rules_version, memory_order_relaxed);
  o->suspicious_total = atomic_load_explicit(&e->suspicious_total, memory_order_relaxed);
  o->settlement_rows = atomic_load_explicit(&e->settlement_rows, memory_order_relaxed);
  o->ready = atomic_load(&e->ready);
  o->snapshots_started = atomic_load_explicit(&e->snapshots_started, memory_order_relaxed);
  o->snapshots_written = atomic_load_explicit(&e->snapshots_written, memory_order_relaxed);
  o->prefault_populated_bytes = atomic_load_explicit(&e->prefault_populated, memory_order_relaxed);
  o->snapshot_bytes = atomic_load_explicit(&e->snapshot_bytes, memory_order_relaxed);
  store_prealloc_stats_t ps;
  store_log_prealloc_stats(e->store, &ps);
  o->log_prealloc_chunks = ps.chunks;
  o->log_prealloc_slow_appends = ps.slow_appends;
  o->batch_commands = &e->hist_batch_commands;
  o->fsync_ns = &e->hist_fsync_ns;
}
