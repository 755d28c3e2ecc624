/*
 * engine_snapshot.c — checkpoints of the whole state, so recovery replays only the log tail.
 *
 * snapshot_write runs in a forked child (copy-on-write gives it a frozen copy of the state at
 * a batch boundary while the engine goes on), so it uses only system calls (open, mmap for
 * its staging buffer, write, fsync, rename) and no malloc. The file is written to snapshot.tmp, fsynced, renamed, and the directory
 * fsynced: a crash leaves either the old snapshot or the complete new one.
 *
 * Layout: header (below) | regions | accounts | their extra fields | transfers | their forward
 * history links | the transfers' side entries | their stamps | live idempotency entries |
 * pending heap | the used part of the batch-codes ring | users | API keys | live credentials |
 * the audit ring (oldest first) | the rule set | suspicious entries | settlement rows |
 * velocity windows (when a velocity rule was ever in force) | crc32c u32 of all before it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/engine_state.h"
#include "store/store.h"

/* "LGDGSNP8": 64-byte account records and their extra fields; 48-byte transfer records, a
 * side table and a stamp table (4: 120-byte transfer records with their links; 5: 112-byte
 * records and a links table; 6: 5 + each account's side of its newest entry; 7: 64-byte
 * records and a side table). */
#define SNAP_MAGIC 0x38504e534744474cull
/* The first 7 bytes, "LGDGSNP": a header with them and another last byte is another version. */
#define SNAP_MAGIC_FAMILY_MASK 0x00ffffffffffffffull

typedef struct snap_header {
  uint64_t magic;
  uint64_t seq;
  int64_t time_ms;
  uint64_t log_pos;
  uint64_t account_count;
  uint64_t transfer_count;
  uint64_t idem_count;
  uint64_t pending_count;
  uint64_t codes_total;
  uint64_t codes_saved;
  uint64_t region_count;
  uint64_t user_count;
  uint64_t key_count;
  uint64_t audit_count; /* total; the ring's newest min(count, ring) are saved */
  uint64_t cred_count;
  uint64_t suspicious_count;
  uint64_t settle_count;
  uint64_t vel_accounts; /* accounts whose velocity windows follow (0: none saved) */
  uint64_t side_count;   /* transfer side entries */
  uint64_t stamp_count;  /* transfer stamps */
} snap_header_t;

typedef struct sink {
  int fd;
  uint32_t crc;
  int rc;
  uint64_t written; /* bytes handed to the file so far (the snapshot's length at the end) */
  /* O_DIRECT: bytes are gathered in buf (page aligned, mmap'd) and written in whole blocks. */
  uint8_t *buf;
  size_t used;
} sink_t;

/* Buffered fallback: written back in steps, so that the file system never holds gigabytes
 * of the snapshot's dirty pages: ext4 would flush them inside the log's next fdatasync (a
 * journal commit), stalling every write for seconds. */
#define SNAPSHOT_WRITEBACK_BYTES (8u * 1024u * 1024u)
/* Direct I/O: the staging buffer (one write each), and the block size writes are padded to.
 * The log's fdatasync waits behind the write the child has in the device: with 8 MiB
 * writes it took 5-17 ms per batch while a snapshot ran, with 1 MiB 4-9 ms (session 6,
 * docs/storage.md). */
#define SNAPSHOT_DIRECT_BUF_BYTES (1u * 1024u * 1024u)
#define SNAPSHOT_DIRECT_ALIGN 4096u

static void sink_flush_direct(sink_t *s, bool last) {
  size_t n = s->used;
  if (last) {
    size_t padded = (n + SNAPSHOT_DIRECT_ALIGN - 1) & ~(size_t)(SNAPSHOT_DIRECT_ALIGN - 1);
    memset(s->buf + n, 0, padded - n); /* cut off again by ftruncate */
    n = padded;
  }
  if (s->rc == 0 && n > 0) s->rc = store_write_all(s->fd, s->buf, n);
  s->used = 0;
}

/* Adds bytes to the snapshot (not to its CRC: the caller does that). */
static void sink_raw(sink_t *s, const void *p, size_t n) {
  const char *c = p;
  while (s->rc == 0 && n > 0) {
    if (s->buf) {
      size_t room = SNAPSHOT_DIRECT_BUF_BYTES - s->used, step = n < room ? n : room;
      memcpy(s->buf + s->used, c, step);
      s->used += step;
      if (s->used == SNAPSHOT_DIRECT_BUF_BYTES) sink_flush_direct(s, false);
      s->written += step;
      c += step;
      n -= step;
      continue;
    }
    size_t step = n < SNAPSHOT_WRITEBACK_BYTES ? n : SNAPSHOT_WRITEBACK_BYTES;
    s->rc = store_write_all(s->fd, c, step);
    if (s->rc == 0 &&
        sync_file_range(s->fd, (off_t)s->written, (off_t)step,
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
      s->rc = LEDGER_EIO;
    s->written += step;
    c += step;
    n -= step;
  }
}

static void sink_put(sink_t *s, const void *p, size_t n) {
  if (s->rc != 0 || n == 0) return;
  s->crc = crc32c(s->crc, p, n);
  sink_raw(s, p, n);
}

/* Opens the snapshot file for direct I/O where the file system allows it: the snapshot then
 * goes from memory to the disk without passing through the page cache. Through the page
 * cache, the child's write() copies every byte into pages the kernel must first allocate and
 * zero (gigabytes: seconds of CPU, on the CPU the engine runs on, and as much memory again)
 * and leaves them cached. Falls back to buffered writes (tmpfs refuses O_DIRECT). Only
 * system calls: safe in a forked child. */
static void sink_open(sink_t *s, const char *tmp_path, bool direct) {
  *s = (sink_t){.fd = -1};
  int fd = direct ? open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0600) : -1;
  if (fd >= 0) {
    void *buf = mmap(NULL, SNAPSHOT_DIRECT_BUF_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf != MAP_FAILED) {
      s->fd = fd;
      s->buf = buf;
      return;
    }
    close(fd);
  }
  s->fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (s->fd < 0) s->rc = LEDGER_EIO;
}

/* Writes what is left, cuts the padding off, fsyncs and closes. */
static void sink_close(sink_t *s) {
  if (s->buf) {
    sink_flush_direct(s, true);
    if (s->rc == 0 && ftruncate(s->fd, (off_t)s->written) != 0) s->rc = LEDGER_EIO;
    munmap(s->buf, SNAPSHOT_DIRECT_BUF_BYTES);
    s->buf = NULL;
  }
  if (s->fd >= 0) {
    if (s->rc == 0 && fsync(s->fd) != 0) s->rc = LEDGER_EIO;
    close(s->fd);
    s->fd = -1;
  }
}

static uint64_t codes_saved(const engine_state_t *st) {
  return st->codes_total < ENGINE_CODES_RING_BYTES ? st->codes_total : ENGINE_CODES_RING_BYTES;
}

static int snapshot_write_once(const engine_state_t *st, const char *tmp_path, const char *final_path,
                               uint64_t log_pos, bool direct, bool *was_direct) {
  sink_t s;
  sink_open(&s, tmp_path, direct);
  *was_direct = s.buf != NULL;
  if (s.rc != 0) return s.rc;
  uint64_t idem_count = 0;
  for (uint64_t i = 0; i < st->idem_slots && st->idem_used; i++)
    idem_count += (st->idem[i].key.lo | st->idem[i].key.hi) != 0;
  uint64_t cred_count = 0;
  for (uint64_t i = 0; i < st->cred_slots; i++) {
    const uint8_t *hsh = st->creds[i].hash;
    uint8_t acc = 0;
    for (int k = 0; k < 32; k++) acc |= hsh[k];
    cred_count += acc != 0;
  }
  snap_header_t h = {SNAP_MAGIC, st->last_seq, st->last_time_ms, log_pos, st->account_count,
                     st->transfer_count, idem_count, st->pending_count, st->codes_total,
                     codes_saved(st), atomic_load(&st->region_count), st->user_count, st->key_count,
                     st->audit_count, cred_count, st->suspicious_count, st->settle_count,
                     st->vel_used ? st->account_count : 0, st->side_count, st->stamp_count};
  sink_put(&s, &h, sizeof h);
  sink_put(&s, st->regions, h.region_count * sizeof st->regions[0]);
  sink_put(&s, st->accounts, h.account_count * sizeof(account_rec_t));
  sink_put(&s, st->account_extra, h.account_count * sizeof(account_extra_t));
  sink_put(&s, st->transfers, h.transfer_count * sizeof(transfer_rec_t));
  sink_put(&s, st->next, h.transfer_count * sizeof(engine_next_t));
  sink_put(&s, st->side, h.side_count * sizeof(transfer_side_t));
  sink_put(&s, st->stamps, h.stamp_count * sizeof(transfer_stamp_t));
  idem_entry_t chunk[1024];
  size_t n = 0;
  for (uint64_t i = 0; i < st->idem_slots && idem_count; i++) {
    if ((st->idem[i].key.lo | st->idem[i].key.hi) == 0) continue;
    chunk[n++] = st->idem[i];
    if (n == LEDGER_ARRAY_LEN(chunk)) {
      sink_put(&s, chunk, n * sizeof chunk[0]);
      n = 0;
    }
  }
  sink_put(&s, chunk, n * sizeof chunk[0]);
  sink_put(&s, st->pending, h.pending_count * sizeof(pending_slot_t));
  /* Ring bytes in position order, oldest first. */
  for (uint64_t pos = st->codes_total - h.codes_saved; pos < st->codes_total;) {
    uint64_t at = pos % ENGINE_CODES_RING_BYTES;
    uint64_t run = ENGINE_CODES_RING_BYTES - at;
    if (run > st->codes_total - pos) run = st->codes_total - pos;
    sink_put(&s, st->codes + at, run);
    pos += run;
  }
  sink_put(&s, st->users, h.user_count * sizeof(engine_user_t));
  sink_put(&s, st->keys, h.key_count * sizeof(engine_api_key_t));
  for (uint64_t i = 0; i < st->cred_slots; i++) {
    const uint8_t *hsh = st->creds[i].hash;
    uint8_t acc = 0;
    for (int k = 0; k < 32; k++) acc |= hsh[k];
    if (acc) sink_put(&s, &st->creds[i], sizeof(cred_entry_t));
  }
  uint64_t audit_saved = h.audit_count < ENGINE_AUDIT_RING_EVENTS ? h.audit_count : ENGINE_AUDIT_RING_EVENTS;
  for (uint64_t seq = h.audit_count - audit_saved; seq < h.audit_count; seq++)
    sink_put(&s, &st->audit[seq % ENGINE_AUDIT_RING_EVENTS], sizeof(engine_audit_event_t));
  sink_put(&s, &st->rules, sizeof st->rules);
  sink_put(&s, st->rule_names, (size_t)st->rules.version * sizeof st->rule_names[0]);
  sink_put(&s, st->suspicious, h.suspicious_count * sizeof(engine_suspicious_t));
  sink_put(&s, st->settle_rows, h.settle_count * sizeof(engine_settlement_t));
  sink_put(&s, st->vel, h.vel_accounts * ENGINE_VELOCITY_RULES_MAX * sizeof(vel_slot_t));
  uint32_t crc = s.crc;
  sink_raw(&s, &crc, sizeof crc);
  sink_close(&s);
  if (s.rc == 0 && rename(tmp_path, final_path) != 0) s.rc = LEDGER_EIO;
  if (s.rc != 0) unlink(tmp_path);
  return s.rc;
}

int snapshot_write(const engine_state_t *st, const char *tmp_path, const char *final_path, uint64_t log_pos,
                   bool direct) {
  bool was_direct = false;
  int rc = snapshot_write_once(st, tmp_path, final_path, log_pos, direct, &was_direct);
  /* A file system may open with O_DIRECT and still refuse the writes (alignment it does not
   * support): once through the page cache, so that such a system still gets snapshots. */
  if (rc != 0 && was_direct) rc = snapshot_write_once(st, tmp_path, final_path, log_pos, false, &was_direct);
  return rc;
}

/* The reader's step: its own size, not the writer's block (1 MiB steps made a restart from a
 * 0.9 GB snapshot ~0.3 s slower, and the first one after the snapshot was written 1-2 s
 * slower: session 6). */
#define SNAPSHOT_READ_BYTES (8u * 1024u * 1024u)

/* The reader: the file is read in SNAPSHOT_READ_BYTES steps into one page-aligned
 * buffer and copied from there; each step's pages are dropped from the page cache once read
 * (POSIX_FADV_DONTNEED). A gigabyte snapshot read whole through the cache would fill that
 * many fresh cache pages (on the benchmark VM fresh memory costs ~2 ns a byte the first time)
 * besides the state's own memory; this way the cache reuses the same few megabytes, and the
 * kernel's readahead still overlaps the disk with the copying. */
typedef struct source {
  int fd;
  uint32_t crc;
  int rc;
  uint8_t *buf;
  size_t have, at; /* bytes in buf, next unread byte */
  uint64_t offset;  /* file offset after buf's bytes */
  bool eof;
} source_t;

static void src_open(source_t *s, const char *path) {
  memset(s, 0, sizeof *s);
  s->fd = -1;
  s->buf = mmap(NULL, SNAPSHOT_READ_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (s->buf == MAP_FAILED) {
    s->buf = NULL;
    s->rc = LEDGER_ENOMEM;
    return;
  }
  s->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (s->fd < 0) s->rc = LEDGER_EIO;
  else (void)posix_fadvise(s->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
}

static void src_close(source_t *s) {
  if (s->fd >= 0 && s->have > 0)
    (void)posix_fadvise(s->fd, (off_t)(s->offset - s->have), (off_t)s->have, POSIX_FADV_DONTNEED);
  if (s->fd >= 0) close(s->fd);
  if (s->buf) munmap(s->buf, SNAPSHOT_READ_BYTES);
}

/* Refills buf; at the end of the file have stays 0 and eof is set. */
static void src_fill(source_t *s) {
  if (s->have > 0) /* the previous step is copied out: its cache pages can go */
    (void)posix_fadvise(s->fd, (off_t)(s->offset - s->have), (off_t)s->have, POSIX_FADV_DONTNEED);
  s->have = s->at = 0;
  while (s->have < SNAPSHOT_READ_BYTES) {
    ssize_t n = read(s->fd, s->buf + s->have, SNAPSHOT_READ_BYTES - s->have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      s->rc = LEDGER_EIO;
      return;
    }
    if (n == 0) { /* only 0 is the end: a short read may just be short */
      s->eof = true;
      return;
    }
    s->have += (size_t)n;
    s->offset += (uint64_t)n;
  }
}

/* n bytes into p (copied, not checksummed): false at the end of the file or on an error. */
static bool src_read(source_t *s, void *p, size_t n) {
  uint8_t *out = p;
  while (n > 0 && s->rc == 0) {
    if (s->at == s->have) {
      if (s->eof) return false;
      src_fill(s);
      if (s->have == 0) return false;
    }
    size_t step = s->have - s->at < n ? s->have - s->at : n;
    memcpy(out, s->buf + s->at, step);
    s->at += step;
    out += step;
    n -= step;
  }
  return s->rc == 0;
}

static void src_get(source_t *s, void *p, size_t n) {
  if (s->rc != 0 || n == 0) return;
  if (!src_read(s, p, n)) {
    if (s->rc == 0) s->rc = LEDGER_ECORRUPT;
    return;
  }
  s->crc = crc32c(s->crc, p, n);
}

int snapshot_load(engine_state_t *st, const char *path, uint64_t *log_pos_out) {
  source_t s;
  src_open(&s, path);
  if (s.rc != 0) {
    int rc = s.rc;
    src_close(&s);
    return rc;
  }
  snap_header_t h;
  src_get(&s, &h, sizeof h);
  if (s.rc == 0 && h.magic != SNAP_MAGIC &&
      (h.magic & SNAP_MAGIC_FAMILY_MASK) == (SNAP_MAGIC & SNAP_MAGIC_FAMILY_MASK))
    s.rc = LEDGER_EVERSION;
  if (s.rc == 0 && (h.magic != SNAP_MAGIC || h.account_count > ENGINE_ACCOUNTS_MAX ||
                    h.transfer_count > ENGINE_TRANSFERS_MAX || h.idem_count > ENGINE_IDEMPOTENCY_KEYS_MAX ||
                    h.pending_count > ENGINE_PENDING_MAX || h.codes_saved > ENGINE_CODES_RING_BYTES ||
                    h.codes_saved > h.codes_total || h.region_count > ENGINE_REGIONS_MAX ||
                    h.region_count < 2 || h.account_count < ledger_currency_count() ||
                    h.user_count > ENGINE_USERS_MAX || h.key_count > ENGINE_API_KEYS_MAX ||
                    h.cred_count > ENGINE_CREDENTIALS_MAX * 2u || h.suspicious_count > ENGINE_SUSPICIOUS_MAX ||
                    h.settle_count > ENGINE_SETTLEMENT_ROWS_MAX || h.vel_accounts > h.account_count ||
                    h.side_count > h.transfer_count || h.stamp_count > h.transfer_count))
    s.rc = LEDGER_ECORRUPT;
  if (s.rc == 0) {
    src_get(&s, st->regions, h.region_count * sizeof st->regions[0]);
    src_get(&s, st->accounts, h.account_count * sizeof(account_rec_t));
    src_get(&s, st->account_extra, h.account_count * sizeof(account_extra_t));
    src_get(&s, st->transfers, h.transfer_count * sizeof(transfer_rec_t));
    src_get(&s, st->next, h.transfer_count * sizeof(engine_next_t));
    src_get(&s, st->side, h.side_count * sizeof(transfer_side_t));
    src_get(&s, st->stamps, h.stamp_count * sizeof(transfer_stamp_t));
    /* The state is fresh from state_init: the table is empty and grows as entries return. */
    for (uint64_t i = 0; i < h.idem_count && s.rc == 0; i++) {
      idem_entry_t e;
      src_get(&s, &e, sizeof e);
      if (s.rc == 0 && ((e.key.lo | e.key.hi) == 0 || !state_idem_restore(st, &e))) s.rc = LEDGER_ECORRUPT;
    }
    src_get(&s, st->pending, h.pending_count * sizeof(pending_slot_t));
    for (uint64_t pos = h.codes_total - h.codes_saved; pos < h.codes_total && s.rc == 0;) {
      uint64_t at = pos % ENGINE_CODES_RING_BYTES;
      uint64_t run = ENGINE_CODES_RING_BYTES - at;
      if (run > h.codes_total - pos) run = h.codes_total - pos;
      src_get(&s, st->codes + at, run);
      pos += run;
    }
    src_get(&s, st->users, h.user_count * sizeof(engine_user_t));
    src_get(&s, st->keys, h.key_count * sizeof(engine_api_key_t));
    for (uint64_t i = 0; i < h.cred_count && s.rc == 0; i++) {
      cred_entry_t e;
      src_get(&s, &e, sizeof e);
      if (s.rc == 0 && !auth_cred_restore(st, &e)) s.rc = LEDGER_ECORRUPT;
    }
    uint64_t audit_saved = h.audit_count < ENGINE_AUDIT_RING_EVENTS ? h.audit_count : ENGINE_AUDIT_RING_EVENTS;
    for (uint64_t seq = h.audit_count - audit_saved; seq < h.audit_count && s.rc == 0; seq++)
      src_get(&s, &st->audit[seq % ENGINE_AUDIT_RING_EVENTS], sizeof(engine_audit_event_t));
    src_get(&s, &st->rules, sizeof st->rules);
    if (st->rules.version > ENGINE_RULE_VERSIONS_MAX) s.rc = LEDGER_ECORRUPT;
    src_get(&s, st->rule_names, (size_t)st->rules.version * sizeof st->rule_names[0]);
    src_get(&s, st->suspicious, h.suspicious_count * sizeof(engine_suspicious_t));
    src_get(&s, st->settle_rows, h.settle_count * sizeof(engine_settlement_t));
    src_get(&s, st->vel, h.vel_accounts * ENGINE_VELOCITY_RULES_MAX * sizeof(vel_slot_t));
  }
  uint32_t want = s.crc, got = 0;
  if (s.rc == 0 && (!src_read(&s, &got, sizeof got) || got != want)) s.rc = LEDGER_ECORRUPT;
  uint8_t more;
  if (s.rc == 0 && src_read(&s, &more, 1)) s.rc = LEDGER_ECORRUPT; /* the file ends with its CRC */
  int rc = s.rc;
  src_close(&s);
  if (rc != 0) return rc;
  st->account_count = h.account_count;
  st->transfer_count = h.transfer_count;
  st->side_count = h.side_count;
  st->stamp_count = h.stamp_count;
  char problem[160];
  if (state_tables_check(st, problem, sizeof problem) != LEDGER_OK) return LEDGER_ECORRUPT; /* CRC-valid, yet wrong */
  st->pending_count = h.pending_count;
  st->codes_total = h.codes_total;
  atomic_store(&st->region_count, (uint32_t)h.region_count);
  for (uint64_t i = 0; i < h.region_count; i++) st->regions[i][API_REGION_BYTES_MAX] = '\0';
  st->user_count = h.user_count;
  st->key_count = h.key_count;
  st->audit_count = h.audit_count;
  st->suspicious_count = h.suspicious_count;
  st->settle_count = h.settle_count;
  st->vel_used = h.vel_accounts != 0;
  if (!auth_user_index_rebuild(st)) return LEDGER_ENOMEM;
  if (!risk_settle_index_rebuild(st)) return LEDGER_ECORRUPT;
  st->last_seq = h.seq;
  st->last_time_ms = h.time_ms;
  *log_pos_out = h.log_pos;
  return LEDGER_OK;
}
