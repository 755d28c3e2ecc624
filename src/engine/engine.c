/*
 * engine.c — the sequencer and committer: the engine thread's loop, recovery at open, the
 * submit path used by net threads, snapshots and verify.
 *
 * Threads: engine_submit from any thread; everything that touches `st` runs on the engine
 * thread (or in engine_open/engine_verify before any thread exists). A snapshot child
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
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/engine_state.h"
#include "store/store.h"

struct engine {
  engine_config_t cfg;
  store_t *store;
  engine_state_t st;
  mpmc_queue_t *queue;
  int wake_fd;
  _Atomic int sleeping;
  _Atomic int stopping;
  _Atomic int submitting;
  pthread_t thread;
  bool thread_running;
  encoder_t enc;
  uint64_t enc_record_pos; /* log offset the batch being built will be written at */
  engine_cmd_t **batch;
  engine_cmd_t *carry; /* taken from the queue but did not fit the previous batch */
  uint64_t log_at_snapshot;      /* log covered by the newest snapshot started */
  uint64_t log_at_snapshot_done; /* ... and by the newest one completed */
  pid_t snapshot_pid;
  uint64_t snapshot_seq;
  _Atomic uint64_t batches_total, commands_total, transfers_total, last_seq, rejected_full_total,
      log_bytes, accounts, users, api_keys, fsync_ns_last, rules_version, suspicious_total, settlement_rows;
  _Atomic bool ready;
  /* Pre-faulting the transfer table ahead of use, at idle priority (see prefault_main). */
  pthread_t prefault_thread;
  bool prefault_running;
  _Atomic uint64_t transfer_count_pub; /* st.transfer_count, published after each batch */
  /* engine_set_batch_done_hook: set once, before commands that rely on it are submitted */
  void (*batch_done_hook)(void *arg);
  void *batch_done_arg;
  _Atomic bool batch_done_set;
  ledger_hist_t hist_batch_commands;
  ledger_hist_t hist_fsync_ns;
};

static bool is_write(const engine_cmd_t *c) { return c->kind < ENGINE_CMD_ACCOUNT_GET; }

static uint32_t transfer_weight(const engine_cmd_t *c) {
  return c->kind == ENGINE_CMD_TRANSFER_BATCH ? c->u.batch.item_count : 1u;
}

/* ------------------------------------------------------------ snapshots */

static void snapshot_reap(engine_t *e, bool wait) {
  if (e->snapshot_pid <= 0) return;
  int status = 0;
  pid_t r = waitpid(e->snapshot_pid, &status, wait ? 0 : WNOHANG);
  if (r == 0) return;
  if (r == e->snapshot_pid && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    e->log_at_snapshot_done = e->log_at_snapshot;
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
 * transfer_count, so the part beyond (populated ahead by the prefault thread, and where new
 * transfers go) is left out of the child: MADV_DONTFORK from the first 2 MiB boundary past
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
  table_tail_advise(st->transfers, st->transfer_count * sizeof(engine_transfer_t),
                    (size_t)ENGINE_TRANSFERS_MAX * sizeof(engine_transfer_t), advice);
  table_tail_advise(st->next, st->transfer_count * sizeof(engine_next_t),
                    (size_t)ENGINE_TRANSFERS_MAX * sizeof(engine_next_t), advice);
}

static void snapshot_start(engine_t *e) {
  char final_path[PATH_MAX], tmp_path[PATH_MAX];
  store_snapshot_paths(e->store, e->st.last_seq, final_path, tmp_path, sizeof final_path);
  uint64_t log_pos = store_log_end(e->store);
  uint64_t t0 = time_mono_ns();
  snapshot_tails_advise(e, MADV_DONTFORK);
  pid_t pid = fork();
  if (pid != 0) snapshot_tails_advise(e, MADV_DOFORK);
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
    _exit(snapshot_write(&e->st, tmp_path, final_path, log_pos, true) == 0 ? 0 : 1);
  }
  LOG_INFO("snapshot at seq %llu started (fork %.1f ms, %llu transfers)", (unsigned long long)e->st.last_seq,
           (double)(time_mono_ns() - t0) / 1e6, (unsigned long long)e->st.transfer_count);
  e->snapshot_pid = pid;
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

static void run_batch(engine_t *e, engine_cmd_t **cmds, size_t n) {
  engine_state_t *st = &e->st;
  int64_t now = time_now_ms() + e->cfg.time_offset_ms;
  int64_t time_ms = now > st->last_time_ms ? now : st->last_time_ms;
  uint64_t seq = st->last_seq + 1;
  uint64_t record_pos = store_log_end(e->store);
  e->enc_record_pos = record_pos;
  uint64_t transfers_before = st->transfer_count;
  e->enc.len = STORE_RECORD_HEADER_BYTES + ENGINE_BATCH_HEADER_BYTES;
  bool changed = state_begin_batch(st, seq, time_ms);
  uint32_t logged = 0;
  for (size_t i = 0; i < n; i++) {
    engine_cmd_t *c = cmds[i];
    c->outcome_unknown = false;
    if (c->auth_mode == ENGINE_AUTH_BEARER && !auth_resolve(st, c)) {
      c->result = ENGINE_R_UNAUTHENTICATED; /* live only: nothing to log */
      c->seq = seq;
      continue;
    }
    if (!is_write(c)) {
      state_read(st, c);
      continue;
    }
    size_t mark = e->enc.len;
    size_t extra_off = codec_encode_cmd(&e->enc, c);
    if (state_apply(st, c, record_pos + STORE_RECORD_HEADER_BYTES + extra_off)) logged++;
    else e->enc.len = mark;
  }
  if (changed || logged > 0) {
    uint8_t *h = e->enc.buf + STORE_RECORD_HEADER_BYTES;
    uint32_t zero = 0;
    memcpy(h, &seq, 8);
    memcpy(h + 8, &time_ms, 8);
    memcpy(h + 16, &logged, 4);
    memcpy(h + 20, &zero, 4);
    store_record_seal(e->enc.buf, (uint32_t)(e->enc.len - STORE_RECORD_HEADER_BYTES));
    uint64_t t0 = time_mono_ns();
    int rc = store_log_append(e->store, e->enc.buf, e->enc.len, e->cfg.fsync);
    if (rc != 0) {
      LOG_ERROR("log append failed (%s): stopping so that recovery decides from the log",
                ledger_strerror(rc));
      abort();
    }
    uint64_t fsync_ns = time_mono_ns() - t0;
    atomic_store_explicit(&e->fsync_ns_last, fsync_ns, memory_order_relaxed);
    hist_record(&e->hist_fsync_ns, fsync_ns);
    st->last_seq = seq;
    st->last_time_ms = time_ms;
    atomic_fetch_add_explicit(&e->batches_total, 1, memory_order_relaxed);
    atomic_store_explicit(&e->last_seq, seq, memory_order_relaxed);
    atomic_store_explicit(&e->log_bytes, store_log_end(e->store), memory_order_relaxed);
  }
  atomic_fetch_add_explicit(&e->commands_total, n, memory_order_relaxed);
  if (n > 0) hist_record(&e->hist_batch_commands, n);
  atomic_fetch_add_explicit(&e->transfers_total, st->transfer_count - transfers_before, memory_order_relaxed);
  atomic_store_explicit(&e->transfer_count_pub, st->transfer_count, memory_order_relaxed);
  atomic_store_explicit(&e->rules_version, st->rules.version, memory_order_relaxed);
  atomic_store_explicit(&e->suspicious_total, st->suspicious_count, memory_order_relaxed);
  atomic_store_explicit(&e->settlement_rows, st->settle_count, memory_order_relaxed);
  atomic_store_explicit(&e->accounts, st->account_count, memory_order_relaxed);
  atomic_store_explicit(&e->users, st->user_count, memory_order_relaxed);
  atomic_store_explicit(&e->api_keys, st->key_count, memory_order_relaxed);
  complete(e, cmds, n);
}

/* Takes waiting commands up to the batch limits. */
static size_t take_batch(engine_t *e) {
  size_t n = 0, bytes = STORE_RECORD_HEADER_BYTES + ENGINE_BATCH_HEADER_BYTES;
  uint64_t transfers = 0;
  while (n < ENGINE_BATCH_COMMANDS_MAX) {
    engine_cmd_t *c = e->carry;
    e->carry = NULL;
    if (!c) {
      void *item;
      if (!mpmc_queue_pop(e->queue, &item)) break;
      c = item;
    }
    size_t need = is_write(c) ? codec_cmd_bytes(c) : 0;
    uint32_t w = transfer_weight(c);
    if (n > 0 && (transfers + w > ENGINE_BATCH_TRANSFERS_MAX || bytes + need > e->enc.cap)) {
      e->carry = c;
      break;
    }
    LEDGER_ASSERT(bytes + need <= e->enc.cap);
    bytes += need;
    transfers += w;
    e->batch[n++] = c;
  }
  return n;
}

static bool expiry_due(const engine_t *e) {
  return e->st.pending_count > 0 && e->st.pending[0].deadline_ms <= time_now_ms() + e->cfg.time_offset_ms;
}

static void wait_for_work(engine_t *e) {
  atomic_store(&e->sleeping, 1);
  atomic_thread_fence(memory_order_seq_cst);
  void *item;
  if (mpmc_queue_pop(e->queue, &item)) { /* raced with a submit: keep it */
    e->carry = item;
  } else if (!atomic_load(&e->stopping)) {
    struct pollfd p = {.fd = e->wake_fd, .events = POLLIN};
    if (poll(&p, 1, ENGINE_TICK_MS) > 0) {
      uint64_t v;
      ssize_t r = read(e->wake_fd, &v, sizeof v);
      (void)r;
    }
  }
  atomic_store(&e->sleeping, 0);
}

/* The transfer table and its links table grow into fresh memory, and the kernel zeroes every
 * new page inside the engine thread's page fault: 20% of its time in the batch benchmark
 * (docs/performance.md); and a fault on a huge page may first compact memory, which can hold
 * the engine for 100 ms or more. This thread runs at SCHED_IDLE (only when a CPU would
 * otherwise idle) and keeps the pages ahead of both tables' ends populated with
 * MADV_POPULATE_WRITE, which fills missing pages with zeros and never changes a page that is
 * present: it cannot race with the engine's writes. Ahead = as much as is already used, at
 * most cfg.prefault_bytes, per table. */
#define PREFAULT_STEP_BYTES HUGE_PAGE_BYTES

typedef struct prefault_table {
  char *base;
  size_t size, record, done;
} prefault_table_t;

/* One step of populating; false when there was nothing to do (or it failed). */
static bool prefault_step(const engine_t *e, prefault_table_t *t, uint64_t count) {
  size_t used = (size_t)count * t->record;
  size_t ahead = used < e->cfg.prefault_bytes ? used : e->cfg.prefault_bytes;
  size_t want = used + ahead < t->size ? used + ahead : t->size;
  if (t->done < used) t->done = used & ~(size_t)(PREFAULT_STEP_BYTES - 1); /* the engine went past */
  if (t->done + PREFAULT_STEP_BYTES > want) return false;
  if (madvise(t->base + t->done, PREFAULT_STEP_BYTES, MADV_POPULATE_WRITE) != 0) {
    LOG_WARN("prefault: madvise(MADV_POPULATE_WRITE): %s; the engine faults its own pages", strerror(errno));
    t->size = 0; /* off for this table */
    return false;
  }
  t->done += PREFAULT_STEP_BYTES;
  return true;
}

static void *prefault_main(void *arg) {
  engine_t *e = arg;
  thread_start_background("ledger-prefault");
  struct sched_param sp = {0};
  (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
  prefault_table_t tables[2] = {
      {(char *)e->st.transfers, (size_t)ENGINE_TRANSFERS_MAX * sizeof(engine_transfer_t), sizeof(engine_transfer_t), 0},
      {(char *)e->st.next, (size_t)ENGINE_TRANSFERS_MAX * sizeof(engine_next_t), sizeof(engine_next_t), 0},
  };
  while (!atomic_load(&e->stopping)) {
    uint64_t count = atomic_load_explicit(&e->transfer_count_pub, memory_order_relaxed);
    bool busy = false;
    for (size_t i = 0; i < LEDGER_ARRAY_LEN(tables); i++) busy |= prefault_step(e, &tables[i], count);
    if (!busy) usleep(2000);
  }
  return NULL;
}

static void *engine_main(void *arg) {
  engine_t *e = arg;
  thread_start_background("ledger-engine");
  for (;;) {
    size_t n = take_batch(e);
    if (n == 0 && !expiry_due(e)) {
      if (atomic_load(&e->stopping) && e->carry == NULL && atomic_load(&e->submitting) == 0 &&
          mpmc_queue_size_approx(e->queue) == 0)
        break;
      wait_for_work(e);
      continue;
    }
    run_batch(e, e->batch, n);
    snapshot_reap(e, false);
    if (e->snapshot_pid == 0 &&
        store_log_end(e->store) - e->log_at_snapshot >= e->cfg.snapshot_log_bytes)
      snapshot_start(e);
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

/* Search reads descriptions: from the log, or, for a transfer made earlier in the batch
 * being built, from the encoder (its bytes are not written yet). Engine thread. */
static int state_read_extra(void *ctx, uint64_t pos, uint32_t len, char *buf) {
  engine_t *e = ctx;
  if (pos >= e->enc_record_pos) {
    uint64_t off = pos - e->enc_record_pos;
    if (off + len > e->enc.len) return LEDGER_EIO;
    memcpy(buf, e->enc.buf + off, len);
    return LEDGER_OK;
  }
  return store_log_read(e->store, pos, buf, len);
}

static void engine_free(engine_t *e) {
  if (!e) return;
  snapshot_reap(e, true);
  state_free(&e->st);
  store_close(e->store);
  mpmc_queue_destroy(e->queue);
  if (e->wake_fd >= 0) close(e->wake_fd);
  free(e->enc.buf);
  free(e->batch);
  free(e);
}

int engine_open(const engine_config_t *config, engine_t **out) {
  engine_t *e = calloc(1, sizeof *e);
  if (!e) return LEDGER_ENOMEM;
  e->cfg = *config;
  e->wake_fd = -1;
  if (e->cfg.snapshot_log_bytes == 0) e->cfg.snapshot_log_bytes = ENGINE_SNAPSHOT_LOG_BYTES_DEFAULT;
  if (e->cfg.idempotency_retention_ms == 0) e->cfg.idempotency_retention_ms = ENGINE_IDEMPOTENCY_RETENTION_MS_DEFAULT;
  int rc = store_open(config->data_dir, false, &e->store);
  if (rc != 0) goto fail;
  if ((rc = state_init(&e->st, e->cfg.idempotency_retention_ms)) != 0) goto fail;
  if ((rc = recover(e)) != 0) goto fail;
  static_assert(ENGINE_BATCH_LOG_BYTES_MAX <= STORE_APPEND_BYTES_MAX, "a batch record is one append");
  if (e->cfg.fsync && (rc = store_log_prealloc_start(e->store, e->cfg.log_prealloc_bytes)) != 0) goto fail;
  e->st.read_extra = state_read_extra;
  e->st.read_extra_ctx = e;
  e->enc_record_pos = UINT64_MAX;
  rc = LEDGER_ENOMEM;
  e->enc.cap = ENGINE_BATCH_LOG_BYTES_MAX;
  e->enc.buf = malloc(e->enc.cap);
  e->batch = calloc(ENGINE_BATCH_COMMANDS_MAX, sizeof *e->batch);
  if (!e->enc.buf || !e->batch) goto fail;
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
  pthread_join(e->thread, NULL); /* it drains the queue, answering everything */
  e->thread_running = false;
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
    if (atomic_load(&e->sleeping)) {
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
  store_prealloc_stats_t ps;
  store_log_prealloc_stats(e->store, &ps);
  o->log_prealloc_chunks = ps.chunks;
  o->log_prealloc_slow_appends = ps.slow_appends;
  o->batch_commands = &e->hist_batch_commands;
  o->fsync_ns = &e->hist_fsync_ns;
}
