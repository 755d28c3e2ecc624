/*
 * ceiling.c — the machine's ceiling for a ledger: what the simplest design that keeps every
 * promise can do here, so ledgerd's figures have something honest to be compared with.
 *
 * The design measured (DESIGN.md, "Storage"): in-memory balances plus an append-only log with
 * group commit. 1 M account balances in an array; each transfer picks two distinct accounts
 * (fixed-seed random), checks funds, updates both balances, and appends a 64-byte record with a
 * crc32c to a buffer; every ENGINE-like batch (10,000 transfers by default) the buffer is
 * written with one write() and made durable with one fdatasync(). No HTTP, no JSON, no ids,
 * no idempotency, no history: ledgerd does strictly more work per transfer than this.
 *
 * Two figures: with the log on disk (the ceiling of a durable ledger here), and the same loop
 * without any I/O (the CPU cost of the state machine alone).
 *
 * Log files are segments of CEILING_SEGMENT_BYTES in a fresh temporary directory; a full
 * segment is closed and deleted so a long run does not fill the disk. Everything is removed at
 * the end. Single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/base.h"

#define CEILING_ACCOUNTS_DEFAULT (1u << 20)
#define CEILING_BATCH_DEFAULT 10000u
#define CEILING_BATCH_MAX 1000000u
#define CEILING_SYNCS_MAX 1000000u /* fdatasync latencies kept for the percentiles */
#define CEILING_SEGMENT_BYTES (256ull * 1024u * 1024u)
#define CEILING_BALANCE_START_MINOR 100000000000ll /* 1e9.00 USD in cents */

/* One log record: what a durable transfer needs to be replayed and checked. */
typedef struct ceil_record {
  uint64_t seq;
  uint64_t debit_id;
  uint64_t credit_id;
  int64_t amount_minor;
  int64_t debit_balance_after_minor;
  int64_t credit_balance_after_minor;
  uint32_t currency;
  uint32_t flags;
  uint32_t reserved;
  uint32_t crc; /* crc32c of the 60 bytes before it */
} ceil_record_t;
static_assert(sizeof(ceil_record_t) == 64, "records are 64 bytes");

typedef struct ceiling {
  int64_t *balances_minor;
  uint32_t accounts;
  ceil_record_t *buf;
  uint32_t batch;
  uint32_t buf_n;
  uint64_t seq;
  uint64_t rejected;
  /* log */
  const char *dir;
  int fd;
  unsigned segment;
  uint64_t segment_bytes;
  uint64_t *sync_ns;
  size_t syncs;
  uint64_t bytes_written;
  /* --keep-records: every record also stays in an in-memory table, as a ledger's transfers
   * must (lookups by id, idempotent retries); NULL = balances only. */
  ceil_record_t *table;
  uint64_t table_cap;
} ceiling_t;

static uint64_t ceil_rng_state = 42;
static uint64_t ceil_rng_next(void) {
  uint64_t x = ceil_rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  ceil_rng_state = x;
  return x * 2685821657736338717ull;
}

static void ceil_die(const char *what) {
  fprintf(stderr, "ledger-ceiling: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void ceil_segment_open(ceiling_t *c) {
  char path[4096];
  snprintf(path, sizeof path, "%s/log.%06u", c->dir, c->segment);
  c->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (c->fd < 0) ceil_die("open log segment");
  c->segment_bytes = 0;
}

static void ceil_segment_close_and_delete(ceiling_t *c) {
  char path[4096];
  snprintf(path, sizeof path, "%s/log.%06u", c->dir, c->segment);
  close(c->fd);
  c->fd = -1;
  if (unlink(path) != 0) ceil_die("unlink log segment");
}

/* One group commit: one write() of the batch, one fdatasync(). */
static void ceil_log_commit(ceiling_t *c) {
  if (c->buf_n == 0) return;
  size_t len = (size_t)c->buf_n * sizeof(ceil_record_t);
  c->buf_n = 0;
  if (c->dir == NULL) return; /* pure-CPU run */
  const char *p = (const char *)c->buf;
  size_t off = 0;
  while (off < len) {
    ssize_t w = write(c->fd, p + off, len - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      ceil_die("write");
    }
    off += (size_t)w;
  }
  uint64_t t0 = time_mono_ns();
  if (fdatasync(c->fd) != 0) ceil_die("fdatasync");
  if (c->syncs < CEILING_SYNCS_MAX) c->sync_ns[c->syncs++] = time_mono_ns() - t0;
  c->bytes_written += len;
  c->segment_bytes += len;
  if (c->segment_bytes >= CEILING_SEGMENT_BYTES) {
    ceil_segment_close_and_delete(c);
    c->segment++;
    ceil_segment_open(c);
  }
}

static void ceil_apply_transfer(ceiling_t *c) {
  uint32_t d = (uint32_t)(ceil_rng_next() % c->accounts);
  uint32_t k = (uint32_t)(ceil_rng_next() % (c->accounts - 1u));
  if (k >= d) k++;
  int64_t amount_minor = (int64_t)(ceil_rng_next() % 10000u) + 1;
  int64_t db, cb;
  if (c->balances_minor[d] < amount_minor || !money_sub(c->balances_minor[d], amount_minor, &db) ||
      !money_add(c->balances_minor[k], amount_minor, &cb)) {
    c->rejected++; /* a rejection is logged nowhere and changes nothing */
    return;
  }
  c->balances_minor[d] = db;
  c->balances_minor[k] = cb;
  ceil_record_t *r = &c->buf[c->buf_n++];
  r->seq = ++c->seq;
  r->debit_id = d + 1u;
  r->credit_id = k + 1u;
  r->amount_minor = amount_minor;
  r->debit_balance_after_minor = db;
  r->credit_balance_after_minor = cb;
  r->currency = 1;
  r->flags = 0;
  r->reserved = 0;
  r->crc = crc32c(0, r, offsetof(ceil_record_t, crc));
  if (c->table) c->table[(c->seq - 1) % c->table_cap] = *r;
  if (c->buf_n == c->batch) ceil_log_commit(c);
}

static int ceil_cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Runs transfers until `count` were attempted or `seconds` passed (checked per batch). */
static double ceil_run(ceiling_t *c, uint64_t count, double seconds, uint64_t *done_out) {
  uint64_t t0 = time_mono_ns();
  uint64_t deadline = seconds > 0 ? t0 + (uint64_t)(seconds * 1e9) : UINT64_MAX;
  uint64_t done = 0;
  while ((count == 0 || done < count) && time_mono_ns() < deadline) {
    uint64_t n = c->batch;
    if (count && count - done < n) n = count - done;
    for (uint64_t i = 0; i < n; i++) ceil_apply_transfer(c);
    done += n;
  }
  ceil_log_commit(c);
  *done_out = done;
  return (double)(time_mono_ns() - t0) / 1e9;
}

static void ceil_check_sum(const ceiling_t *c) {
  /* Double entry: money only moves, so the total is what we started with. */
  int64_t sum = 0;
  for (uint32_t i = 0; i < c->accounts; i++) LEDGER_ASSERT(money_add(sum, c->balances_minor[i], &sum));
  LEDGER_ASSERT(sum == (int64_t)c->accounts * CEILING_BALANCE_START_MINOR);
}

/* --touch-mb: what fresh memory costs on this machine. Maps N MiB the way the engine maps its
 * tables (anonymous, MAP_NORESERVE, transparent huge pages advised), writes one byte per
 * 4 KiB page and times it; then unmaps, maps again and repeats on memory the kernel has just
 * freed. On a VM whose host backs guest memory lazily (and takes freed memory back), the first
 * figure is the host's cost, paid by every table that grows into new memory. */
static void ceil_touch(size_t mb) {
  size_t bytes = mb << 20;
  double ns_per_byte[2];
  for (int round = 0; round < 2; round++) {
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) ceil_die("mmap");
    (void)madvise(p, bytes, MADV_HUGEPAGE);
    uint64_t t0 = time_mono_ns();
    for (size_t i = 0; i < bytes; i += 4096) p[i] = 1;
    ns_per_byte[round] = (double)(time_mono_ns() - t0) / (double)bytes;
    if (munmap(p, bytes) != 0) ceil_die("munmap");
  }
  printf("touch mb=%zu first_ns_per_byte=%.3f again_ns_per_byte=%.3f\n", mb, ns_per_byte[0], ns_per_byte[1]);
  fflush(stdout);
}

/* --sync-pair N: are slow fdatasyncs a property of one file or of the device? Two threads,
 * each on its own file (32 MiB written with zeros first, so no metadata changes), each do N
 * times a 2 KiB pwrite + fdatasync. Then: how many syncs of each file took over 4 ms, and
 * how many slow syncs of the first overlapped in time with a slow sync of the second. If
 * nearly all do, a second log file (or a second disk queue on the same device) would stall
 * at the same moments and cannot hide the tail. */
#define SYNC_PAIR_SLOW_NS 4000000ull
#define SYNC_PAIR_FILE_BYTES (32u << 20)
typedef struct sync_pair {
  char path[4096 + 16];
  uint32_t n;
  uint64_t *start_ns, *lat_ns;
} sync_pair_t;

static void *ceil_sync_pair_thread(void *arg) {
  sync_pair_t *a = arg;
  int fd = open(a->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) ceil_die("open sync-pair file");
  static const char zeros[1 << 16];
  for (uint32_t off = 0; off < SYNC_PAIR_FILE_BYTES; off += sizeof zeros)
    if (pwrite(fd, zeros, sizeof zeros, off) != (ssize_t)sizeof zeros) ceil_die("pwrite zeros");
  if (fsync(fd) != 0) ceil_die("fsync");
  char buf[2048];
  memset(buf, 'x', sizeof buf);
  off_t pos = 0;
  for (uint32_t i = 0; i < a->n; i++) {
    uint64_t t0 = time_mono_ns();
    if (pwrite(fd, buf, sizeof buf, pos) != (ssize_t)sizeof buf) ceil_die("pwrite");
    if (fdatasync(fd) != 0) ceil_die("fdatasync");
    a->start_ns[i] = t0;
    a->lat_ns[i] = time_mono_ns() - t0;
    pos = (pos + (off_t)sizeof buf) % SYNC_PAIR_FILE_BYTES;
  }
  close(fd);
  if (unlink(a->path) != 0) ceil_die("unlink");
  return NULL;
}

static void ceil_sync_pair(const char *parent, uint32_t n) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/ledger-ceiling.XXXXXX", parent);
  if (mkdtemp(dir) == NULL) ceil_die("mkdtemp");
  sync_pair_t a[2];
  pthread_t t[2];
  for (int k = 0; k < 2; k++) {
    snprintf(a[k].path, sizeof a[k].path, "%s/pair.%d", dir, k);
    a[k].n = n;
    a[k].start_ns = malloc((size_t)n * sizeof(uint64_t));
    a[k].lat_ns = malloc((size_t)n * sizeof(uint64_t));
    if (!a[k].start_ns || !a[k].lat_ns) ceil_die("malloc");
    if (pthread_create(&t[k], NULL, ceil_sync_pair_thread, &a[k]) != 0) ceil_die("pthread_create");
  }
  for (int k = 0; k < 2; k++) pthread_join(t[k], NULL);
  if (rmdir(dir) != 0) ceil_die("rmdir");
  uint32_t slow[2] = {0, 0}, overlapping = 0;
  for (int k = 0; k < 2; k++)
    for (uint32_t i = 0; i < n; i++) slow[k] += a[k].lat_ns[i] > SYNC_PAIR_SLOW_NS;
  /* Both arrays are in time order: one sweep over the second file's syncs. */
  uint32_t j = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (a[0].lat_ns[i] <= SYNC_PAIR_SLOW_NS) continue;
    uint64_t s = a[0].start_ns[i], e = s + a[0].lat_ns[i];
    while (j < n && a[1].start_ns[j] + a[1].lat_ns[j] < s) j++;
    for (uint32_t m = j; m < n && a[1].start_ns[m] < e; m++) {
      if (a[1].lat_ns[m] > SYNC_PAIR_SLOW_NS) {
        overlapping++;
        break;
      }
    }
  }
  printf("sync_pair syncs_each=%u slow_first=%u slow_second=%u slow_first_overlapping_slow_second=%u"
         " slow_ms=%.0f dir=%s\n",
         n, slow[0], slow[1], overlapping, SYNC_PAIR_SLOW_NS / 1e6, parent);
  fflush(stdout);
  for (int k = 0; k < 2; k++) {
    free(a[k].start_ns);
    free(a[k].lat_ns);
  }
}

/* --host-pause SECONDS: does the host pause this VM when it does I/O? A thread on CPU 0 spins
 * on the monotonic clock and records every gap over HOST_PAUSE_GAP_NS (a time it did not run),
 * while a thread on CPU 1 does 2 KiB pwrite + fdatasync at a fixed rate: none, then 500, 1,000
 * and 2,000 a second, then as fast as it can, SECONDS each. A guest's own scheduler cannot take
 * CPU 0 from a thread alone on it for ms at a time; a host can. On the benchmark VM the gaps
 * come only with the syncs, ~10 ms every 100 ms from ~2,000 syncs a second on (a CPU quota of
 * the VM, with its I/O counted in: docs/performance.md, "The p99 and the host"). */
#define HOST_PAUSE_GAP_NS 2000000ull
#define HOST_PAUSE_GAPS_MAX 4096u
typedef struct host_pause {
  _Atomic int stop;
  double seconds;
  uint32_t rate; /* syncs a second; UINT32_MAX = no pacing */
  int fd;
  uint64_t syncs;
  uint32_t gaps;
  uint64_t gap_at[HOST_PAUSE_GAPS_MAX], gap_ns[HOST_PAUSE_GAPS_MAX];
} host_pause_t;

static void ceil_pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) ceil_die("sched_setaffinity");
}

static void *ceil_host_pause_spin(void *arg) {
  host_pause_t *h = arg;
  ceil_pin(0);
  uint64_t t0 = time_mono_ns(), last = t0, end = t0 + (uint64_t)(h->seconds * 1e9);
  while (last < end) {
    uint64_t t = time_mono_ns();
    if (t - last > HOST_PAUSE_GAP_NS && h->gaps < HOST_PAUSE_GAPS_MAX) {
      h->gap_at[h->gaps] = last - t0;
      h->gap_ns[h->gaps++] = t - last;
    }
    last = t;
  }
  atomic_store(&h->stop, 1);
  return NULL;
}

static void *ceil_host_pause_sync(void *arg) {
  host_pause_t *h = arg;
  ceil_pin(1);
  char buf[2048];
  memset(buf, 'x', sizeof buf);
  off_t pos = 0;
  uint64_t next = time_mono_ns(), step = h->rate == UINT32_MAX ? 0 : 1000000000ull / h->rate;
  while (!atomic_load(&h->stop)) {
    if (pwrite(h->fd, buf, sizeof buf, pos) != (ssize_t)sizeof buf) ceil_die("pwrite");
    if (fdatasync(h->fd) != 0) ceil_die("fdatasync");
    h->syncs++;
    pos = (pos + (off_t)sizeof buf) % SYNC_PAIR_FILE_BYTES;
    if (step == 0) continue;
    next += step;
    uint64_t now = time_mono_ns();
    if (next > now) {
      struct timespec ts = {.tv_sec = (time_t)((next - now) / 1000000000u), .tv_nsec = (long)((next - now) % 1000000000u)};
      nanosleep(&ts, NULL);
    }
  }
  return NULL;
}

/* A fresh directory under parent holding one file of `bytes` zeros, written and fsynced, so
 * that later writes into it change neither its size nor its blocks. Returns the open file
 * (read-write); dir and path get the two names for the caller to remove. */
static int ceil_zero_file(const char *parent, const char *name, uint32_t bytes, char dir[4096],
                          char path[4096 + 16]) {
  snprintf(dir, 4096, "%s/ledger-ceiling.XXXXXX", parent);
  if (mkdtemp(dir) == NULL) ceil_die("mkdtemp");
  snprintf(path, 4096 + 16, "%s/%s", dir, name);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) ceil_die("open zero-filled file");
  static const char zeros[1 << 16];
  for (uint32_t off = 0; off < bytes; off += sizeof zeros)
    if (pwrite(fd, zeros, sizeof zeros, off) != (ssize_t)sizeof zeros) ceil_die("pwrite zeros");
  if (fsync(fd) != 0) ceil_die("fsync");
  return fd;
}

static void ceil_host_pause(const char *parent, double seconds) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
    printf("host_pause skipped: needs two CPUs\n");
    return;
  }
  char dir[4096], path[4096 + 16];
  int fd = ceil_zero_file(parent, "pause", SYNC_PAIR_FILE_BYTES, dir, path);
  static const uint32_t rates[] = {0, 500, 1000, 2000, UINT32_MAX};
  static host_pause_t h; /* big: not on the stack */
  for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++) {
    memset(&h, 0, sizeof h);
    h.seconds = seconds;
    h.rate = rates[r];
    h.fd = fd;
    pthread_t spin, sync;
    if (pthread_create(&spin, NULL, ceil_host_pause_spin, &h) != 0) ceil_die("pthread_create");
    bool syncing = rates[r] != 0 && pthread_create(&sync, NULL, ceil_host_pause_sync, &h) == 0;
    pthread_join(spin, NULL);
    if (syncing) pthread_join(sync, NULL);
    uint64_t total = 0, max = 0, near_100ms = 0;
    for (uint32_t i = 0; i < h.gaps; i++) {
      total += h.gap_ns[i];
      if (h.gap_ns[i] > max) max = h.gap_ns[i];
      /* periodic: the gap starts 90-110 ms after the one before */
      if (i > 0 && h.gap_at[i] - h.gap_at[i - 1] >= 90000000u && h.gap_at[i] - h.gap_at[i - 1] <= 110000000u) near_100ms++;
    }
    char rate[24];
    if (rates[r] == UINT32_MAX) snprintf(rate, sizeof rate, "max");
    else snprintf(rate, sizeof rate, "%u", rates[r]);
    printf("host_pause sync_rate=%s syncs_per_s=%.0f gaps_over_2ms=%u gap_ms_total=%.1f gap_ms_max=%.1f"
           " gaps_100ms_after_the_last=%" PRIu64 " seconds=%.1f\n",
           rate, (double)h.syncs / seconds, h.gaps, (double)total / 1e6, (double)max / 1e6, near_100ms, seconds);
    fflush(stdout);
  }
  close(fd);
  if (unlink(path) != 0 || rmdir(dir) != 0) ceil_die("unlink");
}

/* --open-loop RATE: the device's floor for goal 2's p99. Requests "arrive" at a fixed rate
 * (the i-th at t0 + i / RATE, as ledger-bench -r schedules them). A single writer commits
 * whatever has arrived with one pwrite of 64 bytes a request and one fdatasync, into a 16 MiB
 * file written with zeros first and then overwritten round and round (no write changes the
 * file's size or blocks, as ledgerd keeps zeros written ahead of its log). It holds a commit
 * until --commit-interval-us after the last one started when requests come concurrently
 * (ledgerd's rule, engine.c commit_hold_ns). A request's latency is the end of the fdatasync
 * that covered it minus its scheduled time. No network, no HTTP, no state: what any server
 * that answers only once a request is durable on this device cannot beat at this rate.
 * Percentiles from a 1 µs histogram up to OPEN_LOOP_HIST_US (slower requests count in its
 * last bucket). Prints "open_loop_ready" once the file is written, before the first request
 * is due. */
#define OPEN_LOOP_HIST_US 1000000u
#define OPEN_LOOP_FILE_BYTES (16u << 20) /* written ahead, then overwritten round and round */
#define OPEN_LOOP_RATE_MAX 10000000u
#define OPEN_LOOP_GROUP_MAX 65536u

static uint64_t open_loop_pct(const uint32_t *hist, uint64_t n, double pct) {
  uint64_t want = (uint64_t)((double)n * pct / 100.0);
  if (want >= n) want = n - 1;
  uint64_t seen = 0;
  for (uint32_t us = 0; us < OPEN_LOOP_HIST_US; us++) {
    seen += hist[us];
    if (seen > want) return us;
  }
  return OPEN_LOOP_HIST_US;
}

static void ceil_open_loop(const char *parent, uint32_t rate, double seconds, uint64_t interval_us) {
  char dir[4096], path[4096 + 16];
  int fd = ceil_zero_file(parent, "open-loop", OPEN_LOOP_FILE_BYTES, dir, path);
  printf("open_loop_ready file_mb=%u\n", OPEN_LOOP_FILE_BYTES >> 20);
  fflush(stdout);
  uint32_t *hist = calloc(OPEN_LOOP_HIST_US + 1u, sizeof *hist);
  char *buf = malloc((size_t)OPEN_LOOP_GROUP_MAX * 64u);
  if (!hist || !buf) ceil_die("malloc");
  memset(buf, 'x', (size_t)OPEN_LOOP_GROUP_MAX * 64u);
  uint64_t total = (uint64_t)(seconds * rate), done = 0, syncs = 0, slow = 0, max_ns = 0;
  uint64_t t0 = time_mono_ns() + 1000000u, last_close = 0, interval_ns = interval_us * 1000u;
  uint32_t last_n = 0;
  off_t pos = 0;
  /* i <= 600 s x OPEN_LOOP_RATE_MAX: i x 1e9 and (now - t0) x rate stay below 2^64 */
#define OPEN_LOOP_AT(i) (t0 + (i) * 1000000000ull / rate)
  while (done < total) {
    uint64_t now = time_mono_ns();
    uint64_t arrived = now < t0 ? 0 : (now - t0) * rate / 1000000000ull + 1u;
    if (arrived > total) arrived = total;
    uint64_t n = arrived - done;
    uint64_t wake = 0;
    if (n == 0) wake = OPEN_LOOP_AT(done);
    else if (interval_ns > 0 && (n >= 2 || last_n >= 2) && now < last_close + interval_ns && n < OPEN_LOOP_GROUP_MAX)
      wake = last_close + interval_ns;
    if (wake > now) {
      struct timespec ts = {.tv_sec = (time_t)(wake / 1000000000u), .tv_nsec = (long)(wake % 1000000000u)};
      while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
      }
      continue;
    }
    if (n > OPEN_LOOP_GROUP_MAX) n = OPEN_LOOP_GROUP_MAX;
    last_close = now;
    last_n = (uint32_t)n;
    size_t len = (size_t)n * 64u;
    if (pos + (off_t)len > (off_t)OPEN_LOOP_FILE_BYTES) pos = 0;
    if (pwrite(fd, buf, len, pos) != (ssize_t)len) ceil_die("pwrite");
    uint64_t s0 = time_mono_ns();
    if (fdatasync(fd) != 0) ceil_die("fdatasync");
    uint64_t end = time_mono_ns();
    syncs++;
    if (end - s0 > 4000000u) slow++;
    if (end - s0 > max_ns) max_ns = end - s0;
    pos += (off_t)len;
    for (uint64_t i = done; i < done + n; i++) {
      uint64_t us = (end - OPEN_LOOP_AT(i)) / 1000u;
      hist[us < OPEN_LOOP_HIST_US ? us : OPEN_LOOP_HIST_US]++;
    }
    done += n;
  }
#undef OPEN_LOOP_AT
  close(fd);
  if (unlink(path) != 0 || rmdir(dir) != 0) ceil_die("unlink");
  printf("open_loop rate=%u requests=%" PRIu64 " commit_interval_us=%" PRIu64 " p50_ms=%.3f p99_ms=%.3f"
         " p999_ms=%.3f max_ms=%.3f fdatasyncs=%" PRIu64 " fdatasyncs_over_4ms=%" PRIu64
         " fdatasync_max_ms=%.1f seconds=%.1f dir=%s\n",
         rate, done, interval_us, (double)open_loop_pct(hist, done, 50) / 1e3, (double)open_loop_pct(hist, done, 99) / 1e3,
         (double)open_loop_pct(hist, done, 99.9) / 1e3, (double)open_loop_pct(hist, done, 100) / 1e3, syncs, slow,
         (double)max_ns / 1e6, seconds, parent);
  fflush(stdout);
  free(hist);
  free(buf);
}

static void ceil_usage(FILE *f) {
  fprintf(f,
          "usage: ledger-ceiling [-n TRANSFERS] [-d SECONDS] [-a ACCOUNTS] [-b BATCH]\n"
          "                      [--dir DIR] [--cpu N] [--no-io] [--cpu-only-seconds S]\n"
          "                      [--keep-records]  (each record also kept in memory)\n"
          "                      [--touch-mb MB]   (only: the cost of fresh memory)\n"
          "                      [--sync-pair N]   (only: are slow fdatasyncs per file or per device)\n"
          "                      [--host-pause S]  (only: does the host pause this VM when it syncs)\n"
          "                      [--open-loop RATE [--commit-interval-us US]]  (only: the device's\n"
          "                        floor for an open-loop p99: requests at RATE/s, -d seconds, each\n"
          "                        answered when an fdatasync covered it; US default 1000 as ledgerd)\n"
          "  default: -d 5 with the log in a new directory under $TMPDIR (or /tmp), then\n"
          "  the same loop without I/O for the same time.\n");
}

int main(int argc, char **argv) {
  uint64_t count = 0;
  double seconds = -1, cpu_seconds = -1;
  uint32_t accounts = CEILING_ACCOUNTS_DEFAULT, batch = CEILING_BATCH_DEFAULT;
  const char *parent = getenv("TMPDIR");
  int cpu = -1;
  int io = 1;
  size_t touch_mb = 0;
  uint32_t sync_pair = 0;
  double host_pause = 0;
  int keep = 0;
  uint32_t open_rate = 0;
  uint64_t interval_us = 1000;
  enum { OPT_DIR = 1000, OPT_CPU, OPT_NOIO, OPT_CPUS, OPT_TOUCH, OPT_PAIR, OPT_KEEP, OPT_PAUSE, OPT_OPEN, OPT_INTERVAL };
  static const struct option opts[] = {{"dir", required_argument, 0, OPT_DIR},
                                       {"cpu", required_argument, 0, OPT_CPU},
                                       {"no-io", no_argument, 0, OPT_NOIO},
                                       {"cpu-only-seconds", required_argument, 0, OPT_CPUS},
                                       {"touch-mb", required_argument, 0, OPT_TOUCH},
                                       {"sync-pair", required_argument, 0, OPT_PAIR},
                                       {"keep-records", no_argument, 0, OPT_KEEP},
                                       {"host-pause", required_argument, 0, OPT_PAUSE},
                                       {"open-loop", required_argument, 0, OPT_OPEN},
                                       {"commit-interval-us", required_argument, 0, OPT_INTERVAL},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "n:d:a:b:h", opts, NULL)) != -1) {
    switch (o) {
    case 'n': count = strtoull(optarg, NULL, 10); break;
    case 'd': seconds = strtod(optarg, NULL); break;
    case 'a': accounts = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'b': batch = (uint32_t)strtoul(optarg, NULL, 10); break;
    case OPT_DIR: parent = optarg; break;
    case OPT_CPU: cpu = atoi(optarg); break;
    case OPT_NOIO: io = 0; break;
    case OPT_CPUS: cpu_seconds = strtod(optarg, NULL); break;
    case OPT_TOUCH: touch_mb = strtoull(optarg, NULL, 10); break;
    case OPT_PAIR: sync_pair = (uint32_t)strtoul(optarg, NULL, 10); break;
    case OPT_KEEP: keep = 1; break;
    case OPT_PAUSE: host_pause = strtod(optarg, NULL); break;
    case OPT_OPEN: open_rate = (uint32_t)strtoul(optarg, NULL, 10); break;
    case OPT_INTERVAL: interval_us = strtoull(optarg, NULL, 10); break;
    case 'h': ceil_usage(stdout); return 0;
    default: ceil_usage(stderr); return 2;
    }
  }
  if (optind != argc || accounts < 2 || batch == 0 || batch > CEILING_BATCH_MAX) {
    ceil_usage(stderr);
    return 2;
  }
  if (touch_mb > 0) {
    if (touch_mb > 65536) {
      ceil_usage(stderr);
      return 2;
    }
    ceil_touch(touch_mb);
    return 0;
  }
  if (seconds < 0) seconds = count ? 0 : 5;
  if (cpu_seconds < 0) cpu_seconds = seconds > 0 ? seconds : 0;
  if (parent == NULL || parent[0] == '\0') parent = "/tmp";
  if (host_pause != 0) {
    if (!(host_pause > 0 && host_pause <= 60)) {
      ceil_usage(stderr);
      return 2;
    }
    ceil_host_pause(parent, host_pause);
    return 0;
  }
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) ceil_die("sched_setaffinity");
  }
  if (open_rate > 0) {
    if (open_rate > OPEN_LOOP_RATE_MAX || !(seconds > 0 && seconds <= 600) || interval_us > 100000) {
      ceil_usage(stderr);
      return 2;
    }
    ceil_open_loop(parent, open_rate, seconds, interval_us);
    return 0;
  }
  if (sync_pair > 0) {
    if (sync_pair > 1000000) {
      ceil_usage(stderr);
      return 2;
    }
    ceil_sync_pair(parent, sync_pair);
    return 0;
  }

  ceiling_t c = {.accounts = accounts, .batch = batch, .fd = -1};
  c.balances_minor = malloc((size_t)accounts * sizeof *c.balances_minor);
  c.buf = aligned_alloc(4096, ((size_t)batch * sizeof(ceil_record_t) + 4095u) & ~(size_t)4095u);
  c.sync_ns = malloc(CEILING_SYNCS_MAX * sizeof *c.sync_ns);
  if (!c.balances_minor || !c.buf || !c.sync_ns) ceil_die("malloc");
  for (uint32_t i = 0; i < accounts; i++) c.balances_minor[i] = CEILING_BALANCE_START_MINOR;
  if (keep) {
    /* Mapped as the engine maps its transfer table (anonymous, MAP_NORESERVE, huge pages
     * advised): fresh memory, touched as records arrive. 2^27 records (8 GiB of address
     * space); a longer run wraps around and rewrites warm memory. */
    c.table_cap = 1ull << 27;
    c.table = mmap(NULL, c.table_cap * sizeof(ceil_record_t), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (c.table == MAP_FAILED) ceil_die("mmap");
    (void)madvise(c.table, c.table_cap * sizeof(ceil_record_t), MADV_HUGEPAGE);
  }

  char dir[4096];
  if (io) {
    snprintf(dir, sizeof dir, "%s/ledger-ceiling.XXXXXX", parent);
    if (mkdtemp(dir) == NULL) ceil_die("mkdtemp");
    c.dir = dir;
    ceil_segment_open(&c);
    uint64_t done;
    double s = ceil_run(&c, count, seconds, &done);
    ceil_segment_close_and_delete(&c);
    if (rmdir(dir) != 0) ceil_die("rmdir");
    c.dir = NULL;
    uint64_t p50 = 0, p99 = 0, pmax = 0;
    if (c.syncs) {
      qsort(c.sync_ns, c.syncs, sizeof *c.sync_ns, ceil_cmp_u64);
      p50 = c.sync_ns[(c.syncs - 1) / 2];
      p99 = c.sync_ns[(c.syncs * 99 - 1) / 100];
      pmax = c.sync_ns[c.syncs - 1];
    }
    printf("%s transfers_per_s=%.0f fdatasync_p50_us=%.1f fdatasync_p99_us=%.1f"
           " fdatasync_max_us=%.1f fdatasyncs=%zu transfers=%" PRIu64 " seconds=%.3f"
           " batch=%u accounts=%u log_mb_per_s=%.1f dir=%s\n",
           keep ? "ceiling_kept" : "ceiling", (double)done / s, (double)p50 / 1e3, (double)p99 / 1e3, (double)pmax / 1e3, c.syncs,
           done, s, batch, accounts, (double)c.bytes_written / s / 1e6, parent);
    fflush(stdout);
  }
  uint64_t cpu_count = cpu_seconds > 0 ? 0 : count;
  if (cpu_seconds > 0 || cpu_count > 0) {
    uint64_t done;
    double s = ceil_run(&c, cpu_count, cpu_seconds, &done);
    printf("%s transfers_per_s=%.0f transfers=%" PRIu64 " seconds=%.3f accounts=%u"
           " rejected=%" PRIu64 "\n",
           keep ? "ceiling_kept_cpu" : "ceiling_cpu", (double)done / s, done, s, accounts, c.rejected);
  }
  ceil_check_sum(&c);
  free(c.balances_minor);
  free(c.buf);
  free(c.sync_ns);
  if (c.table) munmap(c.table, c.table_cap * sizeof(ceil_record_t));
  return 0;
}
