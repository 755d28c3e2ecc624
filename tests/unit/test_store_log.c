/*
 * test_store_log.c — the log file and the engine's recovery on top of it, in a mkdtemp
 * directory: append and rescan (payloads and positions), torn tails of every shape cut and
 * appended after, corruption in the middle refused, the directory lock, snapshot file names;
 * then the whole engine: submit, close, reopen (from the snapshot, from the log alone, after
 * a crash without close, with garbage after the last record), and engine_verify.
 *
 * LEDGER_TEST_KEEP=1 keeps the directories for a look after a failure.
 *
 * Threads: the engine tests submit from the main thread and wait on a semaphore that the
 * done callback (engine thread) posts.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "engine/engine.h"
#include "store/store.h"

/* ------------------------------------------------------------ files */

static char root[] = "/tmp/ledger-test-store-XXXXXX";

static void path_in(char *buf, const char *dir, const char *name) {
  int n = snprintf(buf, PATH_MAX, "%s/%s", dir, name);
  if (n < 0 || n >= PATH_MAX) abort(); /* test paths are short */
}

static void make_dir(char *buf, const char *name) {
  snprintf(buf, PATH_MAX, "%s/%s", root, name);
  if (mkdir(buf, 0700) != 0) {
    fprintf(stderr, "mkdir %s: %s\n", buf, strerror(errno));
    exit(2);
  }
}

static int64_t file_size(const char *dir, const char *name) {
  char p[PATH_MAX];
  path_in(p, dir, name);
  struct stat st;
  return stat(p, &st) == 0 ? (int64_t)st.st_size : -1;
}

static void file_truncate(const char *dir, const char *name, int64_t size) {
  char p[PATH_MAX];
  path_in(p, dir, name);
  if (truncate(p, (off_t)size) != 0) exit(2);
}

static void file_append(const char *dir, const char *name, const void *data, size_t len) {
  char p[PATH_MAX];
  path_in(p, dir, name);
  int fd = open(p, O_WRONLY | O_APPEND);
  if (fd < 0 || write(fd, data, len) != (ssize_t)len) exit(2);
  close(fd);
}

static void file_patch(const char *dir, const char *name, int64_t off, const void *data, size_t len) {
  char p[PATH_MAX];
  path_in(p, dir, name);
  int fd = open(p, O_WRONLY);
  if (fd < 0 || pwrite(fd, data, len, (off_t)off) != (ssize_t)len) exit(2);
  close(fd);
}

static uint8_t file_byte(const char *dir, const char *name, int64_t off) {
  char p[PATH_MAX];
  path_in(p, dir, name);
  int fd = open(p, O_RDONLY);
  uint8_t b = 0;
  if (fd < 0 || pread(fd, &b, 1, (off_t)off) != 1) exit(2);
  close(fd);
  return b;
}

static void remove_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  char p[PATH_MAX];
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    path_in(p, dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(p);
    else unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

/* ------------------------------------------------------------ records */

#define RECORDS_MAX 64
#define PAYLOAD_BYTES_MAX 9000

typedef struct scanned {
  uint32_t count;
  uint32_t len[RECORDS_MAX];
  uint64_t pos[RECORDS_MAX];
  uint8_t data[RECORDS_MAX][PAYLOAD_BYTES_MAX];
  int stop_after; /* return 1 after this many records (0 = never) */
} scanned_t;

static int collect(void *ctx, const uint8_t *payload, uint32_t len, uint64_t pos) {
  scanned_t *s = ctx;
  if (s->count < RECORDS_MAX && len <= PAYLOAD_BYTES_MAX) {
    s->len[s->count] = len;
    s->pos[s->count] = pos;
    memcpy(s->data[s->count], payload, len);
  }
  s->count++;
  return s->stop_after && (int)s->count >= s->stop_after ? 1 : 0;
}

/* The payload of record i: a deterministic pattern of a deterministic length. */
static uint32_t payload_len(uint32_t i) {
  static const uint32_t lens[] = {1, 100, 5000, 0, 17, 8192, 3, 64};
  return lens[i % LEDGER_ARRAY_LEN(lens)];
}
static uint8_t payload_byte(uint32_t i, uint32_t k) { return (uint8_t)(i * 31u + k * 7u + 1u); }

static size_t make_record(uint8_t *buf, uint32_t i) {
  uint32_t len = payload_len(i);
  for (uint32_t k = 0; k < len; k++) buf[STORE_RECORD_HEADER_BYTES + k] = payload_byte(i, k);
  store_record_seal(buf, len);
  return STORE_RECORD_HEADER_BYTES + len;
}

/* Appends records first..first+n-1, some as one write of two records. Returns the payload
 * positions through pos (indexed by record number). */
static void append_records(store_t *s, uint32_t first, uint32_t n, uint64_t *pos) {
  static uint8_t buf[2 * (STORE_RECORD_HEADER_BYTES + PAYLOAD_BYTES_MAX)];
  for (uint32_t i = first; i < first + n;) {
    uint64_t at = store_log_end(s);
    size_t len = make_record(buf, i);
    pos[i] = at + STORE_RECORD_HEADER_BYTES;
    uint32_t taken = 1;
    if (i + 1 < first + n && i % 3 == 0) { /* group commit: two records, one append */
      pos[i + 1] = at + len + STORE_RECORD_HEADER_BYTES;
      len += make_record(buf + len, i + 1);
      taken = 2;
    }
    CHECK_EQ(store_log_append(s, buf, len, true), LEDGER_OK);
    CHECK_EQ(store_log_end(s), at + len);
    i += taken;
  }
}

/* Builds dir's log with records 0..n-1 (payload positions through pos), closed. */
static bool plain_log(const char *dir, uint32_t n, uint64_t *pos) {
  store_t *s = NULL;
  if (store_open(dir, false, &s) != 0) {
    CHECK(!"store_open");
    return false;
  }
  append_records(s, 0, n, pos);
  store_close(s);
  return true;
}

static void check_records(const scanned_t *sc, uint32_t n, const uint64_t *pos, int line) {
  int before = check_failures;
  CHECK_EQ(sc->count, n);
  for (uint32_t i = 0; i < n && i < sc->count && i < RECORDS_MAX; i++) {
    CHECK_EQ(sc->len[i], payload_len(i));
    CHECK_EQ(sc->pos[i], pos[i]);
    bool same = true;
    for (uint32_t k = 0; k < sc->len[i] && k < PAYLOAD_BYTES_MAX; k++)
      same = same && sc->data[i][k] == payload_byte(i, k);
    CHECK(same);
  }
  if (check_failures != before) fprintf(stderr, "  (records checked from line %d)\n", line);
}

/* Opens dir, scans everything, closes. */
static int scan_dir(const char *dir, bool read_only, scanned_t *sc, bool *torn, uint64_t *end) {
  store_t *s = NULL;
  memset(sc, 0, sizeof *sc);
  *torn = false;
  int rc = store_open(dir, read_only, &s);
  if (rc != 0) return rc;
  rc = store_log_scan(s, 0, collect, sc, torn);
  *end = store_log_end(s);
  store_close(s);
  return rc;
}

static scanned_t sc; /* big: static */

/* A scan that ends cleanly (no torn tail) at want_end and delivers the n records at pos. */
static void check_scan_clean(const char *dir, bool read_only, unsigned n, const uint64_t *pos, uint64_t want_end,
                             int line) {
  bool torn = true;
  uint64_t end = 0;
  CHECK_EQ(scan_dir(dir, read_only, &sc, &torn, &end), LEDGER_OK);
  CHECK(!torn);
  CHECK_EQ(end, want_end);
  check_records(&sc, n, pos, line);
}

static void test_append_and_scan(void) {
  char dir[PATH_MAX];
  make_dir(dir, "basic");
  uint64_t pos[RECORDS_MAX];
  store_t *s = NULL, *s2 = NULL;
  CHECK_EQ(store_open(dir, false, &s), LEDGER_OK);
  if (!s) return;
  CHECK_EQ(store_log_end(s), 0);
  CHECK_STR(store_dir(s), dir);
  /* The lock: a second open while the first holds the directory. */
  CHECK_EQ(store_open(dir, false, &s2), LEDGER_ELOCKED);
  CHECK_EQ(store_open(dir, true, &s2), LEDGER_ELOCKED);
  append_records(s, 0, 10, pos);
  /* Reads of committed bytes; nothing past the end. */
  uint8_t b[4];
  CHECK_EQ(store_log_read(s, pos[1], b, 4), LEDGER_OK);
  CHECK_EQ(b[0], payload_byte(1, 0));
  CHECK_EQ(b[3], payload_byte(1, 3));
  CHECK_EQ(store_log_read(s, store_log_end(s) - 2, b, 4), LEDGER_EINVAL);
  uint64_t end = store_log_end(s);
  store_close(s);
  CHECK_EQ(file_size(dir, STORE_LOG_NAME), (int64_t)end);

  check_scan_clean(dir, false, 10, pos, end, __LINE__);
  /* Read-only open sees the same; a scan may start at a record boundary. */
  check_scan_clean(dir, true, 10, pos, end, __LINE__);
  bool torn = true;
  uint64_t end2 = 0;
  CHECK_EQ(store_open(dir, false, &s), LEDGER_OK);
  if (s) {
    memset(&sc, 0, sizeof sc);
    CHECK_EQ(store_log_scan(s, pos[5] - STORE_RECORD_HEADER_BYTES, collect, &sc, &torn), LEDGER_OK);
    CHECK_EQ(sc.count, 5);
    CHECK_EQ(sc.pos[0], pos[5]);
    /* fn stops the scan with its value. */
    memset(&sc, 0, sizeof sc);
    sc.stop_after = 3;
    CHECK_EQ(store_log_scan(s, 0, collect, &sc, &torn), 1);
    CHECK_EQ(sc.count, 3);
    /* A start past the end: the snapshot claims more log than exists. */
    CHECK_EQ(store_log_scan(s, end + 100, collect, &sc, &torn), LEDGER_ECORRUPT);
    /* Appends after a reopen continue the log. */
    append_records(s, 10, 3, pos);
    store_close(s);
  }
  CHECK_EQ(scan_dir(dir, false, &sc, &torn, &end2), LEDGER_OK);
  check_records(&sc, 13, pos, __LINE__);
  /* A read-only open of a directory without a log. */
  char empty[PATH_MAX];
  make_dir(empty, "empty");
  CHECK_EQ(store_open(empty, true, &s2), LEDGER_ENOTFOUND);
}

/* Builds dir with n records, then damages the tail with `damage`, then checks that a
 * writable scan cuts exactly back to record n-1's end (or all n when keep_all), reports
 * torn, truncates the file, and that appends work afterwards. */
typedef void (*damage_fn)(const char *dir, int64_t last_record_at, int64_t size);

static void torn_case(const char *name, uint32_t n, damage_fn damage, uint32_t want_records, int line) {
  char dir[PATH_MAX];
  make_dir(dir, name);
  uint64_t pos[RECORDS_MAX];
  if (!plain_log(dir, n, pos)) return;
  store_t *s = NULL;
  int64_t size = file_size(dir, STORE_LOG_NAME);
  int64_t last_at = (int64_t)pos[n - 1] - STORE_RECORD_HEADER_BYTES;
  damage(dir, last_at, size);
  int64_t want_end = want_records == n ? size : (int64_t)pos[want_records] - STORE_RECORD_HEADER_BYTES;

  int before = check_failures;
  /* Read-only: reported torn, nothing changed on disk. */
  int64_t damaged_size = file_size(dir, STORE_LOG_NAME);
  bool torn = false;
  uint64_t end = 0;
  CHECK_EQ(scan_dir(dir, true, &sc, &torn, &end), LEDGER_OK);
  CHECK(torn);
  CHECK_EQ(end, want_end);
  CHECK_EQ(file_size(dir, STORE_LOG_NAME), damaged_size);
  /* Writable: cut. */
  CHECK_EQ(scan_dir(dir, false, &sc, &torn, &end), LEDGER_OK);
  CHECK(torn);
  check_records(&sc, want_records, pos, line);
  CHECK_EQ(end, want_end);
  CHECK_EQ(file_size(dir, STORE_LOG_NAME), want_end);
  /* Appends after the cut are found by the next scan, which is clean. */
  if (store_open(dir, false, &s) == 0) {
    CHECK_EQ(store_log_scan(s, 0, collect, &sc, &torn), LEDGER_OK);
    CHECK_EQ(store_log_end(s), want_end);
    append_records(s, want_records, 2, pos);
    store_close(s);
  }
  CHECK_EQ(scan_dir(dir, false, &sc, &torn, &end), LEDGER_OK);
  CHECK(!torn);
  check_records(&sc, want_records + 2, pos, line);
  if (check_failures != before) fprintf(stderr, "  (torn case \"%s\" from line %d)\n", name, line);
}

static void dmg_mid_payload(const char *dir, int64_t last_at, int64_t size) {
  (void)size;
  file_truncate(dir, STORE_LOG_NAME, last_at + STORE_RECORD_HEADER_BYTES + 3);
}
static void dmg_short_header(const char *dir, int64_t last_at, int64_t size) {
  (void)size;
  file_truncate(dir, STORE_LOG_NAME, last_at + 10);
}
static void dmg_header_only(const char *dir, int64_t last_at, int64_t size) {
  (void)size;
  file_truncate(dir, STORE_LOG_NAME, last_at + STORE_RECORD_HEADER_BYTES);
}
static void dmg_last_byte(const char *dir, int64_t last_at, int64_t size) {
  (void)last_at;
  file_truncate(dir, STORE_LOG_NAME, size - 1);
}
static void dmg_garbage(const char *dir, int64_t last_at, int64_t size) {
  (void)last_at;
  (void)size;
  uint8_t junk[37];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(0xA5 ^ (i * 13));
  file_append(dir, STORE_LOG_NAME, junk, sizeof junk);
}
static void dmg_short_garbage(const char *dir, int64_t last_at, int64_t size) {
  (void)last_at;
  (void)size;
  file_append(dir, STORE_LOG_NAME, "LGD", 3);
}
static void dmg_header_past_end(const char *dir, int64_t last_at, int64_t size) {
  (void)last_at;
  (void)size;
  /* A real header whose payload never made it. */
  uint8_t rec[STORE_RECORD_HEADER_BYTES + 100];
  memset(rec, 0x11, sizeof rec);
  store_record_seal(rec, 100);
  file_append(dir, STORE_LOG_NAME, rec, STORE_RECORD_HEADER_BYTES + 40);
}
static void dmg_flip_last(const char *dir, int64_t last_at, int64_t size) {
  (void)size;
  int64_t off = last_at + STORE_RECORD_HEADER_BYTES + 2;
  uint8_t b = file_byte(dir, STORE_LOG_NAME, off) ^ 0x01;
  file_patch(dir, STORE_LOG_NAME, off, &b, 1);
}

static void test_torn_tails(void) {
  torn_case("torn-mid-payload", 6, dmg_mid_payload, 5, __LINE__);
  torn_case("torn-short-header", 6, dmg_short_header, 5, __LINE__);
  torn_case("torn-header-only", 6, dmg_header_only, 5, __LINE__);
  torn_case("torn-last-byte", 3, dmg_last_byte, 2, __LINE__);
  torn_case("torn-garbage", 6, dmg_garbage, 6, __LINE__);
  torn_case("torn-short-garbage", 6, dmg_short_garbage, 6, __LINE__);
  torn_case("torn-header-past-end", 6, dmg_header_past_end, 6, __LINE__);
  /* A bad crc on the record that reaches the end of the file is a torn write too. */
  torn_case("torn-flip-last", 6, dmg_flip_last, 5, __LINE__);
  torn_case("torn-only-record", 1, dmg_last_byte, 0, __LINE__);
}

/* Damage to a record that has valid records after it is corruption: refused, and the file is
 * left as it was (acknowledged batches are never cut away). */
static void corrupt_case(const char *name, int64_t rel_off, const void *bytes, size_t len, bool xor_flip) {
  char dir[PATH_MAX];
  make_dir(dir, name);
  uint64_t pos[RECORDS_MAX];
  if (!plain_log(dir, 6, pos)) return;
  int64_t off = (int64_t)pos[2] - STORE_RECORD_HEADER_BYTES + rel_off; /* in record 2 of 6 */
  if (xor_flip) {
    uint8_t b = file_byte(dir, STORE_LOG_NAME, off) ^ 0x80;
    file_patch(dir, STORE_LOG_NAME, off, &b, 1);
  } else {
    file_patch(dir, STORE_LOG_NAME, off, bytes, len);
  }
  int64_t size = file_size(dir, STORE_LOG_NAME);
  bool torn = false;
  uint64_t end = 0;
  int before = check_failures;
  int rc = scan_dir(dir, false, &sc, &torn, &end);
  CHECK_EQ(rc, LEDGER_ECORRUPT);
  CHECK(!torn);
  CHECK_EQ(sc.count, 2); /* the records before it were delivered, nothing after */
  CHECK_EQ(file_size(dir, STORE_LOG_NAME), size);
  if (check_failures != before) fprintf(stderr, "  (corrupt case \"%s\")\n", name);
}

static void test_corruption(void) {
  log_set_level(LOG_ERROR + 1); /* the expected "checksum mismatch" lines are noise here */
  corrupt_case("corrupt-payload", STORE_RECORD_HEADER_BYTES + 40, NULL, 0, true);
  corrupt_case("corrupt-crc", 8, NULL, 0, true);
  corrupt_case("corrupt-len-small", 4, NULL, 0, true); /* payload_len 5000 -> 5000^0x80 */
  uint8_t magic[4] = {'X', 'X', 'X', 'X'};
  corrupt_case("corrupt-magic", 0, magic, 4, false);
  /* A zeroed header in the middle of the log (a lost sector) with valid records after it:
   * still corruption, not a torn tail — cutting there would drop acknowledged batches. */
  uint8_t zero[STORE_RECORD_HEADER_BYTES];
  memset(zero, 0, sizeof zero);
  corrupt_case("corrupt-zero-header", 0, zero, sizeof zero, false);
  /* A damaged length is not trusted, however far it claims to reach (past the end of the
   * file, or exactly to the end of the data): the records after it are acknowledged. */
  uint8_t huge[4] = {0x00, 0xff, 0xff, 0x0f}; /* 0x0fffff00: under the payload limit, past the file */
  corrupt_case("corrupt-len-past-file", 4, huge, sizeof huge, false);
  uint8_t over[4] = {0x00, 0xff, 0xff, 0xff}; /* over the payload limit */
  corrupt_case("corrupt-len-over-limit", 4, over, sizeof over, false);
  log_set_level(LOG_INFO);
}

static void test_snapshot_names(void) {
  char dir[PATH_MAX], p[PATH_MAX], tmp[PATH_MAX];
  make_dir(dir, "snapnames");
  store_t *s = NULL;
  if (store_open(dir, false, &s) != 0) {
    CHECK(!"store_open");
    return;
  }
  uint64_t seq = 0;
  CHECK_EQ(store_snapshot_newest(s, p, sizeof p, &seq), LEDGER_ENOTFOUND);
  static const uint64_t seqs[] = {7, 1000, 99, 18446744073709551615ull};
  for (size_t i = 0; i < LEDGER_ARRAY_LEN(seqs); i++) {
    store_snapshot_paths(s, seqs[i], p, tmp, sizeof p);
    int fd = open(p, O_CREAT | O_WRONLY, 0600);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
  }
  store_snapshot_paths(s, 7, p, tmp, sizeof p);
  char want[PATH_MAX + 64];
  snprintf(want, sizeof want, "%s/snapshot-00000000000000000007.snap", dir);
  CHECK_STR(p, want);
  snprintf(want, sizeof want, "%s/snapshot.tmp", dir);
  CHECK_STR(tmp, want);
  /* Files that only look like snapshots are ignored. */
  path_in(p, dir, "snapshot-123.snap");
  close(open(p, O_CREAT | O_WRONLY, 0600));
  path_in(p, dir, "snapshot-0000000000000000000x.snap");
  close(open(p, O_CREAT | O_WRONLY, 0600));
  CHECK_EQ(store_snapshot_newest(s, p, sizeof p, &seq), LEDGER_OK);
  CHECK_EQ(seq, 18446744073709551615ull);
  store_snapshot_prune(s, 1000);
  CHECK_EQ(file_size(dir, "snapshot-00000000000000000007.snap"), -1);
  CHECK_EQ(file_size(dir, "snapshot-00000000000000000099.snap"), -1);
  CHECK_EQ(file_size(dir, "snapshot-00000000000000001000.snap"), 0);
  CHECK_EQ(file_size(dir, "snapshot-123.snap"), 0);
  CHECK_EQ(store_sync_dir(s), LEDGER_OK);
  store_close(s);
}


/* ------------------------------------------------------------ zeros and preallocation */

/* Zeros after the last record (preallocated space, or a file whose size reached the disk
 * before its last write did) are the end of the log: not torn, nothing cut, and the next
 * append lands right after the last record, inside the zeros. */
static void test_zero_tail(void) {
  char dir[PATH_MAX];
  make_dir(dir, "zero-tail");
  uint64_t pos[RECORDS_MAX];
  if (!plain_log(dir, 6, pos)) return;
  store_t *s = NULL;
  int64_t size = file_size(dir, STORE_LOG_NAME);
  static uint8_t z[70000]; /* more than one backward read step of the scan */
  file_append(dir, STORE_LOG_NAME, z, sizeof z);
  check_scan_clean(dir, true, 6, pos, (uint64_t)size, __LINE__);
  check_scan_clean(dir, false, 6, pos, (uint64_t)size, __LINE__);
  bool torn = true;
  uint64_t end = 0;
  CHECK_EQ(file_size(dir, STORE_LOG_NAME), size + (int64_t)sizeof z);
  if (store_open(dir, false, &s) == 0) {
    CHECK_EQ(store_log_scan(s, 0, collect, &sc, &torn), LEDGER_OK);
    append_records(s, 6, 2, pos);
    store_close(s);
  }
  CHECK_EQ(scan_dir(dir, false, &sc, &torn, &end), LEDGER_OK);
  CHECK(!torn);
  check_records(&sc, 8, pos, __LINE__);
  CHECK_EQ(file_size(dir, STORE_LOG_NAME), size + (int64_t)sizeof z); /* written into the zeros */
}

static bool wait_zeros(store_t *s, uint64_t ahead) {
  for (int i = 0; i < 1000; i++) {
    store_prealloc_stats_t ps;
    store_log_prealloc_stats(s, &ps);
    if (ps.zero_end >= store_log_end(s) + ahead) return true;
    usleep(5000);
  }
  return false;
}

/* Counts records and checks each payload: record i of the usual pattern, or (len > 9000) the
 * big pattern. */
typedef struct { uint32_t n, small, bad, big; } verified_t;
static int verify_all(void *ctx, const uint8_t *p, uint32_t len, uint64_t pos) {
  (void)pos;
  verified_t *v = ctx;
  bool ok = true;
  if (len > PAYLOAD_BYTES_MAX) {
    for (uint32_t k = 0; k < len && ok; k++) ok = p[k] == (uint8_t)(k * 13u + 5u);
    v->big++;
  } else {
    ok = len == payload_len(v->small);
    for (uint32_t k = 0; k < len && ok; k++) ok = p[k] == payload_byte(v->small, k);
    v->small++;
  }
  if (!ok) v->bad++;
  v->n++;
  return 0;
}

/* A log written with preallocation on: the filler keeps zeros ahead and never touches a byte
 * of the log, an append bigger than the zeros takes the slow path, and a reopened log ends at
 * the last record with the zeros kept. */
static void test_prealloc(void) {
  char dir[PATH_MAX];
  make_dir(dir, "prealloc");
  store_t *s = NULL;
  if (store_open(dir, false, &s) != 0) {
    CHECK(!"store_open");
    return;
  }
  bool torn = false;
  CHECK_EQ(store_log_scan(s, 0, collect, &sc, &torn), LEDGER_OK);
  const uint64_t window = 2u * STORE_PREALLOC_CHUNK_BYTES;
  CHECK_EQ(store_log_prealloc_start(s, 1), LEDGER_OK); /* raised to two chunks */
  CHECK(wait_zeros(s, window));
  store_prealloc_stats_t ps;
  store_log_prealloc_stats(s, &ps);
  CHECK(ps.enabled);
  CHECK(ps.chunks >= 2);
  CHECK_EQ(ps.slow_appends, 0);
  CHECK(file_size(dir, STORE_LOG_NAME) >= (int64_t)window);
  uint64_t pos[RECORDS_MAX];
  append_records(s, 0, 20, pos); /* ~37 KB: inside the zeros */
  store_log_prealloc_stats(s, &ps);
  CHECK_EQ(ps.slow_appends, 0);
  /* One record longer than the whole window: it must extend the file itself. */
  const uint32_t big = 3u * STORE_PREALLOC_CHUNK_BYTES + 123u;
  uint8_t *rec = malloc(STORE_RECORD_HEADER_BYTES + big);
  CHECK(rec != NULL);
  if (rec) {
    for (uint32_t k = 0; k < big; k++) rec[STORE_RECORD_HEADER_BYTES + k] = (uint8_t)(k * 13u + 5u);
    store_record_seal(rec, big);
    CHECK_EQ(store_log_append(s, rec, STORE_RECORD_HEADER_BYTES + big, true), LEDGER_OK);
    free(rec);
  }
  store_log_prealloc_stats(s, &ps);
  CHECK_EQ(ps.slow_appends, 1);
  CHECK(wait_zeros(s, window)); /* the filler starts again after the big record */
  uint64_t tail[RECORDS_MAX];
  append_records(s, 20, 20, tail);
  uint64_t end = store_log_end(s);
  CHECK(wait_zeros(s, window / 2));
  store_close(s);
  CHECK(file_size(dir, STORE_LOG_NAME) >= (int64_t)(end + window / 2));

  /* Reopened: 41 records, every byte as written, the zeros are the end. */
  if (store_open(dir, false, &s) == 0) {
    verified_t v = {0};
    CHECK_EQ(store_log_scan(s, 0, verify_all, &v, &torn), LEDGER_OK);
    CHECK(!torn);
    CHECK_EQ(v.n, 41);
    CHECK_EQ(v.big, 1);
    CHECK_EQ(v.bad, 0);
    CHECK_EQ(store_log_end(s), end);
    store_close(s);
  }
}

/* Builds a log of n records with preallocation on (zeros after it), closed. */
static void prealloc_log(const char *dir, uint32_t n, uint64_t *pos) {
  store_t *s = NULL;
  if (store_open(dir, false, &s) != 0) {
    CHECK(!"store_open");
    return;
  }
  bool torn = false;
  CHECK_EQ(store_log_scan(s, 0, collect, &sc, &torn), LEDGER_OK);
  CHECK_EQ(store_log_prealloc_start(s, 1), LEDGER_OK);
  CHECK(wait_zeros(s, STORE_PREALLOC_CHUNK_BYTES));
  append_records(s, 0, n, pos);
  store_close(s);
}

/* A crash may persist the pages of the last write in any order. In a preallocated file that
 * leaves zeros inside the last record, or a zero header with its payload after it: both are
 * torn tails, cut at the record. A zero header with a whole record after it is damage. */
static void test_prealloc_torn(void) {
  uint8_t zero[512];
  memset(zero, 0, sizeof zero);
  struct {
    const char *name;
    uint32_t record; /* damaged record of 6 (records 3 and 4 share one append) */
    int64_t rel_off;
    size_t len;
    int want_rc;
  } cases[] = {
      {"prealloc-hole-in-last", 5, STORE_RECORD_HEADER_BYTES + 100, 300, LEDGER_OK},
      {"prealloc-zero-header-last", 5, 0, STORE_RECORD_HEADER_BYTES, LEDGER_OK},
      {"prealloc-zero-header-mid", 2, 0, STORE_RECORD_HEADER_BYTES, LEDGER_ECORRUPT},
      {"prealloc-hole-mid", 2, STORE_RECORD_HEADER_BYTES + 100, 300, LEDGER_ECORRUPT},
  };
  log_set_level(LOG_ERROR + 1);
  /* A length changed so that the bad record claims to end exactly where the data ends (the
   * last record's end): the records in between are acknowledged, so this is damage. */
  {
    char dir[PATH_MAX];
    make_dir(dir, "prealloc-len-to-end");
    uint64_t pos[RECORDS_MAX];
    prealloc_log(dir, 6, pos);
    int64_t at = (int64_t)pos[2] - STORE_RECORD_HEADER_BYTES;
    uint32_t len = (uint32_t)(pos[5] + payload_len(5) - pos[2]);
    file_patch(dir, STORE_LOG_NAME, at + 4, &len, 4);
    int64_t size = file_size(dir, STORE_LOG_NAME);
    bool torn = false;
    uint64_t end = 0;
    CHECK_EQ(scan_dir(dir, false, &sc, &torn, &end), LEDGER_ECORRUPT);
    CHECK(!torn);
    CHECK_EQ(file_size(dir, STORE_LOG_NAME), size);
  }
  /* The last record's payload holds a whole record (a sealed 16-byte header with an empty
   * payload) followed by more payload, and its own header was lost: the record inside does
   * not chain to the end of the data, so this is still a torn tail. */
  {
    char dir[PATH_MAX];
    make_dir(dir, "prealloc-record-inside");
    uint64_t pos[RECORDS_MAX];
    prealloc_log(dir, 5, pos);
    store_t *s = NULL;
    bool torn = false;
    uint64_t last_at = 0;
    if (store_open(dir, false, &s) == 0) {
      CHECK_EQ(store_log_scan(s, 0, collect, &sc, &torn), LEDGER_OK);
      static uint8_t rec[STORE_RECORD_HEADER_BYTES + 3000];
      memset(rec, 0x5a, sizeof rec);
      store_record_seal(rec + STORE_RECORD_HEADER_BYTES + 1000, 0); /* the record inside */
      store_record_seal(rec, 3000);
      last_at = store_log_end(s);
      CHECK_EQ(store_log_append(s, rec, sizeof rec, true), LEDGER_OK);
      store_close(s);
    }
    uint8_t z16[STORE_RECORD_HEADER_BYTES] = {0};
    file_patch(dir, STORE_LOG_NAME, (int64_t)last_at, z16, sizeof z16);
    uint64_t end = 0;
    CHECK_EQ(scan_dir(dir, false, &sc, &torn, &end), LEDGER_OK);
    CHECK(torn);
    CHECK_EQ(end, last_at);
    check_records(&sc, 5, pos, __LINE__);
  }
  for (size_t c = 0; c < LEDGER_ARRAY_LEN(cases); c++) {
    char dir[PATH_MAX];
    make_dir(dir, cases[c].name);
    uint64_t pos[RECORDS_MAX];
    prealloc_log(dir, 6, pos);
    int64_t at = (int64_t)pos[cases[c].record] - STORE_RECORD_HEADER_BYTES;
    file_patch(dir, STORE_LOG_NAME, at + cases[c].rel_off, zero, cases[c].len);
    int64_t size = file_size(dir, STORE_LOG_NAME);
    int before = check_failures;
    bool torn = false;
    uint64_t end = 0;
    CHECK_EQ(scan_dir(dir, false, &sc, &torn, &end), cases[c].want_rc);
    if (cases[c].want_rc == LEDGER_OK) {
      CHECK(torn);
      CHECK_EQ(end, at);
      check_records(&sc, cases[c].record, pos, __LINE__);
      CHECK_EQ(file_size(dir, STORE_LOG_NAME), at);
    } else {
      CHECK(!torn);
      CHECK_EQ(sc.count, cases[c].record);
      CHECK_EQ(file_size(dir, STORE_LOG_NAME), size); /* nothing cut */
    }
    if (check_failures != before) fprintf(stderr, "  (prealloc case \"%s\")\n", cases[c].name);
  }
  log_set_level(LOG_INFO);
}

/* ------------------------------------------------------------ the engine */

static sem_t done_sem;
static void on_done(engine_cmd_t *c) {
  (void)c;
  sem_post(&done_sem);
}

/* Submits and waits for the answer. */
static int run(engine_t *e, engine_cmd_t *c) {
  c->done = on_done;
  int rc = engine_submit(e, c);
  CHECK_EQ(rc, LEDGER_OK);
  if (rc != 0) return -1000 + rc;
  while (sem_wait(&done_sem) != 0 && errno == EINTR) {
  }
  return c->result;
}

static engine_cmd_t cmd(uint8_t kind) {
  engine_cmd_t c;
  memset(&c, 0, sizeof c);
  c.kind = kind;
  return c;
}

static uint64_t e_account(engine_t *e) {
  engine_cmd_t c = cmd(ENGINE_CMD_ACCOUNT_CREATE);
  c.u.account_create.currency = 1; /* USD */
  c.u.account_create.region = "default";
  CHECK_EQ(run(e, &c), ENGINE_OK);
  return c.account.id;
}

static int e_transfer(engine_t *e, uint8_t kind, uint64_t dr, uint64_t cr, int64_t minor, bool is_pending,
                      const char *extra, engine_transfer_t *out) {
  engine_cmd_t c = cmd(ENGINE_CMD_TRANSFER);
  c.u.transfer.kind = kind;
  c.u.transfer.debit_account_id = dr;
  c.u.transfer.credit_account_id = cr;
  c.u.transfer.amount_digits = minor;
  c.u.transfer.amount_scale = 2;
  c.u.transfer.pending = is_pending;
  c.u.transfer.extra = extra;
  c.u.transfer.extra_len = extra ? (uint32_t)strlen(extra) : 0;
  int r = run(e, &c);
  if (out) *out = c.transfer;
  return r;
}

/* n batch items of 0.01 each from the USD system account (overdraft allowed) to account a. */
static void items_to(engine_transfer_in_t *items, unsigned n, uint64_t a) {
  for (unsigned i = 0; i < n; i++) {
    items[i].kind = ENGINE_KIND_TRANSFER;
    items[i].debit_account_id = 1;
    items[i].credit_account_id = a;
    items[i].amount_digits = 1;
    items[i].amount_scale = 2;
  }
}

static engine_account_t e_get(engine_t *e, uint64_t id) {
  engine_cmd_t c = cmd(ENGINE_CMD_ACCOUNT_GET);
  c.u.account.account_id = id;
  CHECK_EQ(run(e, &c), ENGINE_OK);
  return c.account;
}

static engine_t *e_open(const char *dir, int want_rc) {
  /* A tiny interval: the close-time snapshot is written (it needs a quarter of it). */
  engine_config_t cfg = {.data_dir = dir, .fsync = true, .snapshot_log_bytes = 64};
  engine_t *e = NULL;
  int rc = engine_open(&cfg, &e);
  CHECK_EQ(rc, want_rc);
  return rc == 0 ? e : NULL;
}

static bool has_snapshot(const char *dir) {
  DIR *d = opendir(dir);
  bool found = false;
  struct dirent *x;
  while (d && (x = readdir(d)) != NULL) found = found || strncmp(x->d_name, "snapshot-", 9) == 0;
  if (d) closedir(d);
  return found;
}

static void remove_snapshots(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *x;
  char p[PATH_MAX];
  while (d && (x = readdir(d)) != NULL) {
    if (strncmp(x->d_name, "snapshot", 8) != 0) continue;
    path_in(p, dir, x->d_name);
    unlink(p);
  }
  if (d) closedir(d);
}

typedef struct expect {
  uint64_t a, b;
  int64_t a_balance, b_balance, a_pending;
  uint64_t transfers, last_seq;
  engine_transfer_t described; /* carries extra "hello ledger" */
  engine_transfer_t held;      /* pending */
} expect_t;

static void check_engine_state(engine_t *e, const expect_t *x, int line) {
  int before = check_failures;
  engine_account_t a = e_get(e, x->a), b = e_get(e, x->b);
  CHECK_EQ(a.balance_minor, x->a_balance);
  CHECK_EQ(b.balance_minor, x->b_balance);
  CHECK_EQ(a.pending_debits_minor, x->a_pending);
  CHECK_EQ(b.pending_credits_minor, x->a_pending);
  engine_cmd_t g = cmd(ENGINE_CMD_TRANSFER_GET);
  g.u.transfer_get.no = x->held.no;
  g.u.transfer_get.created_ms = x->held.created_ms;
  CHECK_EQ(run(e, &g), ENGINE_OK);
  CHECK_EQ(g.transfer.status, ENGINE_STATUS_PENDING);
  /* The description is read back from the log at its recorded position. */
  g = cmd(ENGINE_CMD_TRANSFER_GET);
  g.u.transfer_get.no = x->described.no;
  g.u.transfer_get.created_ms = x->described.created_ms;
  CHECK_EQ(run(e, &g), ENGINE_OK);
  CHECK_EQ(g.transfer.extra_len, 12);
  char text[32] = {0};
  if (g.transfer.extra_len == 12) {
    CHECK_EQ(engine_read_extra(e, g.transfer.extra_pos, g.transfer.extra_len, text), LEDGER_OK);
    CHECK_STR(text, "hello ledger");
  }
  engine_stats_t st;
  engine_get_stats(e, &st);
  CHECK_EQ(st.last_seq, x->last_seq);
  CHECK(st.ready);
  if (check_failures != before) fprintf(stderr, "  (engine state checked from line %d)\n", line);
}

static void check_verify(const char *dir, int want_rc, const expect_t *x, int line) {
  engine_verify_report_t r;
  int rc = engine_verify(dir, &r);
  int before = check_failures;
  CHECK_EQ(rc, want_rc);
  if (want_rc == 0 && x) {
    CHECK_EQ(r.transfers, x->transfers);
    CHECK_EQ(r.last_seq, x->last_seq);
    CHECK_EQ(r.accounts, ledger_currency_count() + 2);
    CHECK_STR(r.problem, "");
  }
  if (check_failures != before) fprintf(stderr, "  (verify from line %d: %s)\n", line, r.problem);
}

static void test_engine_recovery(void) {
  char dir[PATH_MAX];
  make_dir(dir, "engine");
  sem_init(&done_sem, 0, 0);
  log_set_level(LOG_WARN);
  expect_t x;
  memset(&x, 0, sizeof x);

  /* 1. A fresh directory: accounts, deposit, transfers, a pending one, a description. */
  engine_t *e = e_open(dir, LEDGER_OK);
  if (!e) return;
  x.a = e_account(e);
  x.b = e_account(e);
  CHECK_EQ(e_transfer(e, ENGINE_KIND_DEPOSIT, 0, x.a, 10000, false, NULL, NULL), ENGINE_OK);
  CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, x.a, x.b, 2550, false, "hello ledger", &x.described), ENGINE_OK);
  CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, x.a, x.b, 1000, true, NULL, &x.held), ENGINE_OK);
  CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, x.a, x.b, 999999, false, NULL, NULL), ENGINE_R_INSUFFICIENT_FUNDS);
  x.a_balance = 7450;
  x.b_balance = 2550;
  x.a_pending = 1000;
  x.transfers = 3;
  x.last_seq = 5; /* 2 creates + 3 transfers; the rejection was not logged */
  check_engine_state(e, &x, __LINE__);
  /* The directory is held: a second engine and verify are refused. */
  e_open(dir, LEDGER_ELOCKED);
  check_verify(dir, LEDGER_ELOCKED, NULL, __LINE__);
  engine_close(e);
  CHECK(has_snapshot(dir)); /* written on close */
  check_verify(dir, LEDGER_OK, &x, __LINE__);

  /* 2. Reopen: recovered from the snapshot. A new transfer goes to the log tail. */
  e = e_open(dir, LEDGER_OK);
  if (!e) return;
  check_engine_state(e, &x, __LINE__);
  CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, x.b, x.a, 50, false, NULL, NULL), ENGINE_OK);
  x.a_balance += 50;
  x.b_balance -= 50;
  x.transfers++;
  x.last_seq++;
  /* A submit after stop is refused without calling done. */
  engine_stop(e);
  engine_cmd_t late = cmd(ENGINE_CMD_ACCOUNT_GET);
  late.done = on_done;
  CHECK_EQ(engine_submit(e, &late), LEDGER_ESTOPPED);
  engine_close(e);
  check_verify(dir, LEDGER_OK, &x, __LINE__);

  /* 3. Garbage after the last record (a torn write): cut at open, state intact, appends
   * go on from the cut. */
  int64_t size = file_size(dir, STORE_LOG_NAME);
  static const char junk[] = "\x4c\x47\x44\x4c\xff\xff\x00\x00 torn tail of a batch that never finished";
  file_append(dir, STORE_LOG_NAME, junk, sizeof junk - 1);
  e = e_open(dir, LEDGER_OK);
  if (!e) return;
  CHECK_EQ(file_size(dir, STORE_LOG_NAME), size);
  check_engine_state(e, &x, __LINE__);
  CHECK_EQ(e_transfer(e, ENGINE_KIND_WITHDRAWAL, x.a, 0, 100, false, NULL, NULL), ENGINE_OK);
  x.a_balance -= 100;
  x.transfers++;
  x.last_seq++;
  engine_close(e);
  check_verify(dir, LEDGER_OK, &x, __LINE__);

  /* 4. Without any snapshot: the whole log replays to the same state. */
  remove_snapshots(dir);
  e = e_open(dir, LEDGER_OK);
  if (!e) return;
  check_engine_state(e, &x, __LINE__);
  engine_close(e);

  /* 5. A crash (no close, no final snapshot): a child process writes and _exits. */
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    engine_t *c = e_open(dir, LEDGER_OK);
    if (!c) _exit(3);
    int r = e_transfer(c, ENGINE_KIND_TRANSFER, x.a, x.b, 200, false, NULL, NULL);
    _exit(r == ENGINE_OK ? 0 : 4); /* the batch was fsynced before done() */
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  x.a_balance -= 200;
  x.b_balance += 200;
  x.transfers++;
  x.last_seq++;
  e = e_open(dir, LEDGER_OK);
  if (!e) return;
  check_engine_state(e, &x, __LINE__);
  engine_close(e);
  check_verify(dir, LEDGER_OK, &x, __LINE__);

  /* 6. The snapshot is what recovery starts from: with the first record of the log damaged
   * (and a snapshot past it) the engine still opens with the right state, while verify —
   * which replays the whole log — reports the damage. */
  CHECK(has_snapshot(dir));
  uint8_t b = file_byte(dir, STORE_LOG_NAME, STORE_RECORD_HEADER_BYTES + 30) ^ 0x20;
  file_patch(dir, STORE_LOG_NAME, STORE_RECORD_HEADER_BYTES + 30, &b, 1);
  e = e_open(dir, LEDGER_OK);
  if (e) {
    check_engine_state(e, &x, __LINE__);
    engine_close(e);
  }
  log_set_level(LOG_ERROR + 1);
  check_verify(dir, LEDGER_ECORRUPT, NULL, __LINE__);
  /* And without the snapshot, recovery refuses rather than start from a corrupt log. */
  remove_snapshots(dir);
  e_open(dir, LEDGER_ECORRUPT);
  log_set_level(LOG_INFO);
  sem_destroy(&done_sem);
}

/* The engine thread applies one batch while its committer writes the one before, and an engine
 * batch holds at most ENGINE_BATCH_TRANSFERS_MAX transfers: the command that does not fit is
 * carried over to open the next batch. 24 batch commands of 8,190 transfers (three engine
 * batches' worth), each followed by a balance read, are submitted at once: every command is
 * answered, in the order submitted, each read sees exactly the batches before it, and the
 * engine's batches-per-command histogram shows a batch of 8 commands (the 9th carried over).
 * Before the fix, a carried command waited forever when the next batch's slot still held
 * the count of the batch written two turns before. */
#define PIPE_COMMANDS 24u
#define PIPE_ITEMS 8190u

static sem_t pipe_sem;
static _Atomic unsigned pipe_next;
static unsigned pipe_order[2 * PIPE_COMMANDS];

static void pipe_done(engine_cmd_t *c) {
  pipe_order[atomic_fetch_add(&pipe_next, 1)] = (unsigned)(uintptr_t)c->done_arg;
  sem_post(&pipe_sem);
}

static void test_engine_pipeline(void) {
  char dir[PATH_MAX];
  make_dir(dir, "pipeline");
  sem_init(&done_sem, 0, 0);
  sem_init(&pipe_sem, 0, 0);
  log_set_level(LOG_WARN);
  engine_t *e = e_open(dir, LEDGER_OK);
  if (!e) return;
  uint64_t a = e_account(e);
  engine_transfer_in_t *items = calloc(PIPE_ITEMS, sizeof *items);
  engine_item_result_t *results = calloc((size_t)PIPE_COMMANDS * PIPE_ITEMS, sizeof *results);
  engine_cmd_t *cmds = calloc(2 * PIPE_COMMANDS, sizeof *cmds);
  CHECK(items && results && cmds);
  if (!items || !results || !cmds) return;
  items_to(items, PIPE_ITEMS, a);
  for (unsigned k = 0; k < 2 * PIPE_COMMANDS; k++) {
    engine_cmd_t *c = &cmds[k];
    if (k % 2 == 0) {
      c->kind = ENGINE_CMD_TRANSFER_BATCH;
      c->u.batch.items = items;
      c->u.batch.results = results + (size_t)(k / 2) * PIPE_ITEMS;
      c->u.batch.item_count = PIPE_ITEMS;
    } else {
      c->kind = ENGINE_CMD_ACCOUNT_GET;
      c->u.account.account_id = a;
    }
    c->done = pipe_done;
    c->done_arg = (void *)(uintptr_t)k;
  }
  for (unsigned k = 0; k < 2 * PIPE_COMMANDS; k++) CHECK_EQ(engine_submit(e, &cmds[k]), LEDGER_OK);
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 120;
  unsigned answered = 0;
  while (answered < 2 * PIPE_COMMANDS) {
    if (sem_timedwait(&pipe_sem, &deadline) == 0) answered++;
    else if (errno != EINTR) break;
  }
  CHECK_EQ(answered, 2 * PIPE_COMMANDS);
  if (answered != 2 * PIPE_COMMANDS) {
    fprintf(stderr, "test_engine_pipeline: %u of %u commands answered in 120 s: the engine is stuck\n", answered,
            2 * PIPE_COMMANDS);
    exit(1); /* engine_close would wait for it forever */
  }
  unsigned in_order = 0, posted = 0, reads_exact = 0;
  for (unsigned k = 0; k < 2 * PIPE_COMMANDS; k++) {
    in_order += pipe_order[k] == k;
    if (k % 2 == 0) {
      CHECK_EQ(cmds[k].result, ENGINE_OK);
      for (unsigned i = 0; i < PIPE_ITEMS; i++) posted += cmds[k].u.batch.results[i].result == ENGINE_OK;
    } else {
      CHECK_EQ(cmds[k].result, ENGINE_OK);
      reads_exact += cmds[k].account.balance_minor == (int64_t)((k + 1) / 2) * PIPE_ITEMS;
    }
  }
  CHECK_EQ(in_order, 2 * PIPE_COMMANDS);
  CHECK_EQ(posted, PIPE_COMMANDS * PIPE_ITEMS);
  CHECK_EQ(reads_exact, PIPE_COMMANDS);
  CHECK_EQ(e_get(e, a).balance_minor, (int64_t)PIPE_COMMANDS * PIPE_ITEMS);
  engine_stats_t st;
  engine_get_stats(e, &st);
  /* Bucket b holds batches of [2^(b-1), 2^b) commands: 8 batch commands + their 8 reads (or 7
   * and 8) make 15 or 16. A batch of at least 8 commands of 8,190 means the limit was met. */
  uint64_t big = 0;
  for (unsigned b = 4; b < HIST_BUCKETS; b++) big += atomic_load(&st.batch_commands->buckets[b]);
  CHECK(big > 0);
  engine_close(e);
  check_verify(dir, LEDGER_OK, NULL, __LINE__);
  free(items);
  free(results);
  free(cmds);
  log_set_level(LOG_INFO);
  sem_destroy(&pipe_sem);
  sem_destroy(&done_sem);
}

/* --commit-interval-us (engine_config_t.commit_interval_ns): a batch is held until the interval
 * has passed since the last one was closed, but only when commands come concurrently. A
 * client sending one command at a time never waits: 5 transfers in a row take far less than
 * one interval. 64 transfers submitted at once right after a write wait about one interval.
 * Both bounds have a wide margin: only a broken hold (or a missing one) crosses them. */
#define HOLD_NS 2000000000ull
#define HOLD_CONCURRENT 64u
static sem_t hold_sem;
static void hold_done(engine_cmd_t *c) {
  (void)c;
  sem_post(&hold_sem);
}

static void test_engine_commit_interval(void) {
  char dir[PATH_MAX];
  make_dir(dir, "interval");
  sem_init(&done_sem, 0, 0);
  sem_init(&hold_sem, 0, 0);
  log_set_level(LOG_WARN);
  engine_config_t cfg = {.data_dir = dir, .fsync = true, .snapshot_log_bytes = 64, .commit_interval_ns = HOLD_NS};
  engine_t *e = NULL;
  CHECK_EQ(engine_open(&cfg, &e), LEDGER_OK);
  if (!e) return;
  uint64_t a = e_account(e);
  uint64_t t0 = time_mono_ns();
  for (int i = 0; i < 5; i++) CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, 1, a, 1, false, NULL, NULL), ENGINE_OK);
  uint64_t sequential_ns = time_mono_ns() - t0;
  CHECK(sequential_ns < HOLD_NS * 9 / 10);
  static engine_cmd_t cmds[HOLD_CONCURRENT];
  for (unsigned k = 0; k < HOLD_CONCURRENT; k++) {
    cmds[k] = cmd(ENGINE_CMD_TRANSFER);
    cmds[k].u.transfer.kind = ENGINE_KIND_TRANSFER;
    cmds[k].u.transfer.debit_account_id = 1;
    cmds[k].u.transfer.credit_account_id = a;
    cmds[k].u.transfer.amount_digits = 1;
    cmds[k].u.transfer.amount_scale = 2;
    cmds[k].done = hold_done;
  }
  CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, 1, a, 1, false, NULL, NULL), ENGINE_OK); /* a write just now */
  t0 = time_mono_ns();
  for (unsigned k = 0; k < HOLD_CONCURRENT; k++) CHECK_EQ(engine_submit(e, &cmds[k]), LEDGER_OK);
  for (unsigned k = 0; k < HOLD_CONCURRENT; k++)
    while (sem_wait(&hold_sem) != 0 && errno == EINTR) {
    }
  uint64_t concurrent_ns = time_mono_ns() - t0;
  CHECK(concurrent_ns > HOLD_NS * 8 / 10);
  unsigned ok = 0;
  for (unsigned k = 0; k < HOLD_CONCURRENT; k++) ok += cmds[k].result == ENGINE_OK;
  CHECK_EQ(ok, HOLD_CONCURRENT);
  CHECK_EQ(e_get(e, a).balance_minor, (int64_t)(6 + HOLD_CONCURRENT));
  if (sequential_ns >= HOLD_NS * 9 / 10 || concurrent_ns <= HOLD_NS * 8 / 10)
    fprintf(stderr, "test_engine_commit_interval: 5 in a row took %.3f s, %u at once %.3f s (interval %.1f s)\n",
            (double)sequential_ns / 1e9, HOLD_CONCURRENT, (double)concurrent_ns / 1e9, (double)HOLD_NS / 1e9);
  /* Stopping does not wait out an interval: a batch held now is written at once. 8 writes
   * submitted together: if the first goes out alone, the others (two or more, queued during
   * its fdatasync) make the next batch, which is held. */
  for (unsigned k = 0; k < 8; k++) CHECK_EQ(engine_submit(e, &cmds[k]), LEDGER_OK);
  t0 = time_mono_ns();
  engine_close(e);
  CHECK(time_mono_ns() - t0 < HOLD_NS * 9 / 10);
  for (unsigned k = 0; k < 8; k++)
    while (sem_wait(&hold_sem) != 0 && errno == EINTR) {
    }
  ok = 0;
  for (unsigned k = 0; k < 8; k++) ok += cmds[k].result == ENGINE_OK;
  CHECK_EQ(ok, 8u);
  check_verify(dir, LEDGER_OK, NULL, __LINE__);
  log_set_level(LOG_INFO);
  sem_destroy(&hold_sem);
  sem_destroy(&done_sem);
}

/* Waits (up to 10 s) until no background snapshot is in progress; the engine reaps a
 * finished child at its next batch or idle tick (100 ms). */
static void snapshots_idle(engine_t *e, engine_stats_t *st) {
  for (int i = 0; i < 10000; i++) {
    engine_get_stats(e, st);
    if (st->snapshots_started == st->snapshots_written) return;
    usleep(1000);
  }
}

static int64_t newest_snapshot_bytes(const char *dir) {
  DIR *d = opendir(dir);
  unsigned long long best = 0;
  char name[300] = "";
  struct dirent *x;
  while (d && (x = readdir(d)) != NULL) {
    unsigned long long seq;
    if (sscanf(x->d_name, "snapshot-%20llu.snap", &seq) == 1 && seq >= best) {
      best = seq;
      snprintf(name, sizeof name, "%s", x->d_name);
    }
  }
  if (d) closedir(d);
  return name[0] ? file_size(dir, name) : -1;
}

typedef struct spacing {
  uint64_t started;      /* background snapshots started */
  uint64_t first_bytes;  /* the first one's size */
  uint64_t log_first;    /* the log's end when the first one was seen started */
  uint64_t log_first_before; /* ... after the transfer before that (the engine's answer to a
                              * transfer can come before it starts the snapshot that batch
                              * triggered: it covers the log from one of the two) */
  uint64_t log_second;   /* ... when the second one started (0: none did) */
  uint64_t log_before;   /* ... after the transfer before that */
  uint64_t reopened_bytes; /* engine_stats_t.snapshot_bytes after a reopen */
  int64_t file_bytes;      /* the newest snapshot file's size then */
} spacing_t;

/* `transfers` single transfers one batch each, every one waited for and followed by the end
 * of any snapshot it started, so that the spacing is exact up to one batch: a snapshot starts
 * at the first batch after which max(64 bytes, pct % of the newest snapshot's size, in whole
 * hundredths) of log is not covered. */
static void snapshot_spacing(uint32_t growth_pct, int transfers, spacing_t *out) {
  char dir[PATH_MAX];
  char name[32];
  snprintf(name, sizeof name, "spacing-%u", growth_pct);
  make_dir(dir, name);
  memset(out, 0, sizeof *out);
  engine_config_t cfg = {.data_dir = dir, .fsync = true, .snapshot_log_bytes = 64, .snapshot_growth_pct = growth_pct};
  engine_t *e = NULL;
  CHECK_EQ(engine_open(&cfg, &e), LEDGER_OK);
  if (!e) return;
  uint64_t a = e_account(e), prev_log = 0;
  engine_stats_t st;
  for (int i = 0; i <= transfers; i++) {
    if (i > 0) CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, 1, a, 1, false, NULL, NULL), ENGINE_OK);
    snapshots_idle(e, &st);
    if (st.snapshots_started >= 1 && out->first_bytes == 0) {
      out->first_bytes = st.snapshot_bytes;
      out->log_first = st.log_bytes;
      out->log_first_before = prev_log;
    }
    if (st.snapshots_started >= 2 && out->log_second == 0) {
      out->log_second = st.log_bytes;
      out->log_before = prev_log;
    }
    prev_log = st.log_bytes;
  }
  out->started = st.snapshots_started;
  CHECK_EQ(st.snapshots_written, st.snapshots_started);
  engine_close(e); /* writes a final snapshot */
  /* Reopened, the interval counts from the loaded snapshot's size. */
  e = NULL;
  CHECK_EQ(engine_open(&cfg, &e), LEDGER_OK);
  if (!e) return;
  engine_get_stats(e, &st);
  out->reopened_bytes = st.snapshot_bytes;
  out->file_bytes = newest_snapshot_bytes(dir);
  engine_close(e);
}

static void test_engine_snapshot_growth(void) {
  sem_init(&done_sem, 0, 0);
  log_set_level(LOG_WARN);
  spacing_t fixed, grown, huge;
  /* A fixed 64-byte interval: a snapshot after every batch or two (a transfer's record is
   * ~40-60 bytes). */
  snapshot_spacing(0, 20, &fixed);
  CHECK(fixed.started >= 10);
  /* 100 %: the second waits until the log has grown by the first one's size (~15 KB: the
   * currencies' system accounts, the rules), and starts at the batch that gets there. */
  snapshot_spacing(100, 600, &grown);
  CHECK(grown.first_bytes > 1000);
  CHECK(grown.started >= 2);
  CHECK(grown.log_second != 0 && grown.log_second - grown.log_first_before >= grown.first_bytes / 100 * 100);
  CHECK(grown.log_before - grown.log_first < grown.first_bytes);
  CHECK(grown.started < 6); /* not after every batch */
  CHECK(grown.reopened_bytes > 0 && (int64_t)grown.reopened_bytes == grown.file_bytes);
  /* 1000 %: 150 transfers (~6 KB of log) are far from 10x the first snapshot. */
  snapshot_spacing(1000, 150, &huge);
  CHECK_EQ(huge.started, 1);
  if (check_failures)
    fprintf(stderr,
            "test_engine_snapshot_growth: started %llu / %llu / %llu; 100%%: first %llu bytes at log %llu, second at "
            "log %llu (before: %llu); reopened %llu, file %lld\n",
            (unsigned long long)fixed.started, (unsigned long long)grown.started, (unsigned long long)huge.started,
            (unsigned long long)grown.first_bytes, (unsigned long long)grown.log_first,
            (unsigned long long)grown.log_second, (unsigned long long)grown.log_before,
            (unsigned long long)grown.reopened_bytes, (long long)grown.file_bytes);
  log_set_level(LOG_INFO);
  sem_destroy(&done_sem);
}

/* A snapshot holds the prefault thread (engine.c, snapshot_may_start) and must let it go:
 * with a snapshot after every batch, the transfer table is still populated ahead of use.
 * After 20 batches (7.5 MiB of 48-byte records) the thread has populated the table up to
 * 14 MiB at most (used + 8 MiB, the cap here, in whole 2 MiB steps); after 40 (15.0 MiB) it
 * must reach 22 MiB, so it populates at least 8 MiB more in between, however far it fell
 * behind (it skips to the engine's position and counts only what it populates). Without the
 * release it stops at the first snapshot. */
#define PREFAULT_BATCHES 40u
#define PREFAULT_ITEMS 8190u
/* The pre-fault thread turns itself off where MADV_POPULATE_WRITE is refused (Linux < 5.14). */
static bool can_populate(void) {
  void *probe = mmap(NULL, 2u << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  bool ok = probe != MAP_FAILED && madvise(probe, 2u << 20, MADV_POPULATE_WRITE) == 0;
  if (probe != MAP_FAILED) munmap(probe, 2u << 20);
  return ok;
}

static void test_engine_prefault_after_snapshot(void) {
  if (!can_populate()) { /* then there is nothing to hold */
    fprintf(stderr, "test_engine_prefault_after_snapshot: skipped, MADV_POPULATE_WRITE refused here\n");
    return;
  }
  char dir[PATH_MAX];
  make_dir(dir, "prefault-hold");
  sem_init(&done_sem, 0, 0);
  log_set_level(LOG_WARN);
  engine_config_t cfg = {.data_dir = dir, .fsync = true, .snapshot_log_bytes = 64, .prefault_bytes = 8u << 20};
  engine_t *e = NULL;
  CHECK_EQ(engine_open(&cfg, &e), LEDGER_OK);
  if (!e) return;
  uint64_t a = e_account(e);
  engine_transfer_in_t *items = calloc(PREFAULT_ITEMS, sizeof *items);
  engine_item_result_t *results = calloc(PREFAULT_ITEMS, sizeof *results);
  CHECK(items && results);
  engine_stats_t st;
  uint64_t mid = 0;
  for (unsigned k = 0; items && results && k < PREFAULT_BATCHES; k++) {
    if (k == 0) items_to(items, PREFAULT_ITEMS, a);
    engine_cmd_t c = cmd(ENGINE_CMD_TRANSFER_BATCH);
    c.u.batch.items = items;
    c.u.batch.results = results;
    c.u.batch.item_count = PREFAULT_ITEMS;
    CHECK_EQ(run(e, &c), ENGINE_OK);
    snapshots_idle(e, &st); /* the next batch starts the next snapshot */
    if (k + 1 == PREFAULT_BATCHES / 2) mid = st.prefault_populated_bytes;
  }
  uint64_t want = mid + (8u << 20);
  for (int i = 0; i < 1000; i++) { /* the thread naps 2-20 ms between rounds: up to 10 s */
    engine_get_stats(e, &st);
    if (st.prefault_populated_bytes >= want) break;
    usleep(10000);
  }
  CHECK(st.snapshots_started >= PREFAULT_BATCHES / 2);
  CHECK(st.prefault_populated_bytes >= want);
  if (check_failures)
    fprintf(stderr, "test_engine_prefault_after_snapshot: %llu snapshots, %llu bytes populated, %llu at batch %u\n",
            (unsigned long long)st.snapshots_started, (unsigned long long)st.prefault_populated_bytes,
            (unsigned long long)mid, PREFAULT_BATCHES / 2);
  engine_close(e);
  free(items);
  free(results);
  log_set_level(LOG_INFO);
  sem_destroy(&done_sem);
}

/* How far ahead the pre-fault thread populates (engine_prefault_ahead): a quarter of what a
 * table uses, at least 8 MiB, at most --prefault-mb. Then the thread itself, with the default
 * 256 MiB cap, after 100 batches of 8,190 (37.5 MiB of 48-byte transfer records, 6.2 MiB of
 * 8-byte links): once it settles, it has populated at least the transfer table's runway (less
 * a step) and no more than each table's used part plus its runway plus a step, and a step of
 * the account stage. Populating as far ahead as is used (before session 14) would put the
 * total ~21 MiB over that bound. */
#define AHEAD_BATCHES 100u
#define AHEAD_STEP (2u * 1024u * 1024u)
static void test_engine_prefault_ahead(void) {
  const size_t mib = 1024u * 1024u;
  CHECK_EQ(engine_prefault_ahead(256 * mib, 0), 8 * mib);
  CHECK_EQ(engine_prefault_ahead(256 * mib, 32 * mib), 8 * mib);
  CHECK_EQ(engine_prefault_ahead(256 * mib, 100 * mib), 25 * mib);
  CHECK_EQ(engine_prefault_ahead(256 * mib, 1024 * mib), 256 * mib);
  CHECK_EQ(engine_prefault_ahead(256 * mib, 4096 * mib), 256 * mib);
  CHECK_EQ(engine_prefault_ahead(4 * mib, 0), 4 * mib);
  CHECK_EQ(engine_prefault_ahead(4 * mib, 400 * mib), 4 * mib);
  CHECK_EQ(engine_prefault_ahead(0, 400 * mib), 0);

  if (!can_populate()) {
    fprintf(stderr, "test_engine_prefault_ahead: thread part skipped, MADV_POPULATE_WRITE refused here\n");
    return;
  }
  char dir[PATH_MAX];
  make_dir(dir, "prefault-ahead");
  sem_init(&done_sem, 0, 0);
  engine_config_t cfg = {.data_dir = dir, .fsync = true, .snapshot_log_bytes = 1u << 30, .prefault_bytes = 256 * mib};
  engine_t *e = NULL;
  CHECK_EQ(engine_open(&cfg, &e), LEDGER_OK);
  if (!e) return;
  uint64_t a = e_account(e);
  engine_transfer_in_t *items = calloc(PREFAULT_ITEMS, sizeof *items);
  engine_item_result_t *results = calloc(PREFAULT_ITEMS, sizeof *results);
  CHECK(items && results);
  if (items) items_to(items, PREFAULT_ITEMS, a);
  for (unsigned k = 0; items && results && k < AHEAD_BATCHES; k++) {
    engine_cmd_t c = cmd(ENGINE_CMD_TRANSFER_BATCH);
    c.u.batch.items = items;
    c.u.batch.results = results;
    c.u.batch.item_count = PREFAULT_ITEMS;
    CHECK_EQ(run(e, &c), ENGINE_OK);
  }
  engine_stats_t st;
  engine_get_stats(e, &st);
  uint64_t transfers = st.transfers_total, last = ~0ull;
  for (int i = 0; i < 34; i++) { /* settled: no new step in 300 ms (up to 10 s) */
    usleep(300000);
    engine_get_stats(e, &st);
    if (st.prefault_populated_bytes == last) break;
    last = st.prefault_populated_bytes;
  }
  size_t used_t = (size_t)transfers * 48u, used_n = (size_t)transfers * 8u;
  size_t most = used_t + engine_prefault_ahead(256 * mib, used_t) + AHEAD_STEP +
                used_n + engine_prefault_ahead(256 * mib, used_n) + AHEAD_STEP + AHEAD_STEP;
  size_t least = engine_prefault_ahead(256 * mib, used_t) - AHEAD_STEP;
  CHECK(transfers >= (uint64_t)AHEAD_BATCHES * PREFAULT_ITEMS);
  CHECK(st.prefault_populated_bytes <= most);
  CHECK(st.prefault_populated_bytes >= least);
  if (check_failures)
    fprintf(stderr, "test_engine_prefault_ahead: %llu transfers, %llu bytes populated, bounds %zu..%zu\n",
            (unsigned long long)transfers, (unsigned long long)st.prefault_populated_bytes, least, most);
  engine_close(e);
  free(items);
  free(results);
  sem_destroy(&done_sem);
}

/* voluntary_ctxt_switches of this process's thread named `name` (/proc), -1 if none. */
static long thread_switches(const char *name) {
  DIR *d = opendir("/proc/self/task");
  long found = -1;
  struct dirent *x;
  while (d && found < 0 && (x = readdir(d)) != NULL) {
    if (x->d_name[0] == '.') continue;
    char path[300], comm[64] = "", line[256];
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", x->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    if (!fgets(comm, sizeof comm, f)) comm[0] = '\0';
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    if (strcmp(comm, name) != 0) continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/status", x->d_name);
    if (!(f = fopen(path, "r"))) continue;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "voluntary_ctxt_switches: %ld", &found) == 1) break;
    fclose(f);
  }
  if (d) closedir(d);
  return found;
}

/* With nothing to populate, the pre-fault thread naps up to 20 ms (engine.c, prefault_main):
 * on an idle engine it wakes ~50 times a second; the 2 ms poll it had before session 14 woke
 * it ~500 times. Counted over ~1 s (timed) after it has populated its first runway: at most
 * 120 wake-ups a second, and at least one in the window (it still looks; at idle priority
 * on a loaded CPU it may look rarely). */
static void test_engine_prefault_naps(void) {
  char dir[PATH_MAX];
  make_dir(dir, "prefault-naps");
  engine_config_t cfg = {.data_dir = dir, .fsync = true, .snapshot_log_bytes = 1u << 30, .prefault_bytes = 256u << 20};
  engine_t *e = NULL;
  CHECK_EQ(engine_open(&cfg, &e), LEDGER_OK);
  if (!e) return;
  usleep(500000);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long before = thread_switches("ledger-prefault");
  usleep(1000000);
  long after = thread_switches("ledger-prefault");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  if (before < 0 || after < 0) {
    fprintf(stderr, "test_engine_prefault_naps: skipped, no ledger-prefault thread in /proc/self/task\n");
  } else {
    CHECK((double)(after - before) <= 120.0 * secs);
    CHECK(after - before >= 1);
    if (check_failures) fprintf(stderr, "test_engine_prefault_naps: %ld wake-ups in %.2f s\n", after - before, secs);
  }
  engine_close(e);
}

/* A slow write + fdatasync is logged, at most one line a second, the next line counting those
 * in between (engine.c, commit_batch). With a 1 ns threshold every commit is slow: the first of
 * five transfers is logged, the other four are counted, and a sixth a second later is logged
 * with "4 more". stderr goes to a file meanwhile. */
static void test_engine_slow_commit_log(void) {
  char dir[PATH_MAX], path[PATH_MAX + 16];
  make_dir(dir, "slow-commit");
  snprintf(path, sizeof path, "%s/stderr.txt", dir);
  sem_init(&done_sem, 0, 0);
  engine_config_t cfg = {.data_dir = dir, .fsync = true, .snapshot_log_bytes = 1u << 30, .slow_commit_ns = 1};
  engine_t *e = NULL;
  CHECK_EQ(engine_open(&cfg, &e), LEDGER_OK);
  if (!e) return;
  uint64_t a = e_account(e); /* logged too: the lines below are counted from here on */
  fflush(stderr);
  int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  CHECK(saved >= 0 && fd >= 0);
  if (saved < 0 || fd < 0) return;
  sleep(1); /* past the account's line */
  dup2(fd, 2);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < 5; i++) CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, 1, a, 1, false, NULL, NULL), ENGINE_OK);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  usleep(1100 * 1000);
  CHECK_EQ(e_transfer(e, ENGINE_KIND_TRANSFER, 1, a, 1, false, NULL, NULL), ENGINE_OK);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(fd);
  engine_close(e);
  bool quick = (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) < 900000000L;
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  char line[512];
  int lines = 0, counted = 0;
  while (f && fgets(line, sizeof line, f)) {
    if (!strstr(line, "slow commit:")) continue;
    lines++;
    if (strstr(line, "(4 more over")) counted++;
  }
  if (f) fclose(f);
  if (quick) { /* five fsync'd commits in under 0.9 s: always, but for a stalled machine */
    CHECK_EQ(lines, 2);
    CHECK_EQ(counted, 1);
  } else {
    CHECK(lines >= 2);
  }
  sem_destroy(&done_sem);
}

/* Reads come from a mapping of the log, segment by segment (STORE_READ_SEG_BYTES): reads inside
 * the first segment, across the boundary into the second, of bytes appended after their
 * segment was mapped, and at the end; read-only stores read with pread. Every byte is checked
 * against what was written. The filler writes zeros past the end meanwhile (O_DIRECT). */
static uint8_t mapped_byte(uint64_t pos) { return (uint8_t)(pos * 7u + (pos >> 13) + 3u); }

static bool mapped_check(store_t *s, uint64_t pos, size_t len, uint8_t *buf) {
  if (store_log_read(s, pos, buf, len) != LEDGER_OK) return false;
  for (size_t i = 0; i < len; i++)
    if (buf[i] != mapped_byte(pos + i)) return false;
  return true;
}

static uint64_t mapped_append(store_t *s, uint32_t payload) {
  uint8_t *rec = malloc(STORE_RECORD_HEADER_BYTES + payload);
  if (!rec) return 0;
  uint64_t at = store_log_end(s) + STORE_RECORD_HEADER_BYTES;
  for (uint32_t k = 0; k < payload; k++) rec[STORE_RECORD_HEADER_BYTES + k] = mapped_byte(at + k);
  store_record_seal(rec, payload);
  CHECK_EQ(store_log_append(s, rec, STORE_RECORD_HEADER_BYTES + payload, true), LEDGER_OK);
  free(rec);
  return at;
}

/* Whether this process maps a ledger.log read-only and shared (/proc/self/maps). */
static bool log_mapped(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return false;
  char line[1024];
  bool found = false;
  while (!found && fgets(line, sizeof line, f))
    found = strstr(line, " r--s ") && strstr(line, "/mapped/" STORE_LOG_NAME);
  fclose(f);
  return found;
}

static void test_mapped_reads(void) {
  char dir[PATH_MAX];
  make_dir(dir, "mapped");
  store_t *s = NULL;
  if (store_open(dir, false, &s) != 0) {
    CHECK(!"store_open");
    return;
  }
  CHECK_EQ(store_log_prealloc_start(s, 4u * STORE_PREALLOC_CHUNK_BYTES), LEDGER_OK);
  static uint8_t buf[1 << 20];
  const uint64_t seg = STORE_READ_SEG_BYTES;
  uint64_t a = mapped_append(s, 4096);
  CHECK(!log_mapped());
  CHECK(mapped_check(s, a, 4096, buf));   /* maps the first segment */
  CHECK(log_mapped());                    /* (a pread fallback would pass the byte checks) */
  uint64_t b = mapped_append(s, 100000);  /* written after its segment was mapped */
  CHECK(mapped_check(s, b, 100000, buf));
  CHECK(mapped_check(s, b + 99990, 10, buf));
  /* Past the first segment: two records of ~40 MiB. */
  uint64_t c = mapped_append(s, 40u << 20);
  uint64_t d = mapped_append(s, 40u << 20);
  CHECK(c < seg && d + (40u << 20) > seg);
  CHECK(mapped_check(s, seg - 600, 1200, buf));         /* across the boundary */
  CHECK(mapped_check(s, seg - (512u << 10), sizeof buf, buf)); /* 1 MiB across it */
  CHECK(mapped_check(s, d + (40u << 20) - 4096, 4096, buf));   /* the last bytes */
  CHECK(mapped_check(s, c, 1, buf));
  CHECK_EQ(store_log_read(s, store_log_end(s) - 10, buf, 11), LEDGER_EINVAL);
  uint64_t e = mapped_append(s, 5000); /* and after the second segment was mapped */
  CHECK(mapped_check(s, e, 5000, buf));
  uint64_t end = store_log_end(s);
  store_close(s);
  if (store_open(dir, true, &s) == 0) { /* read-only: pread */
    CHECK(mapped_check(s, seg - 600, 1200, buf));
    CHECK(mapped_check(s, e, 5000, buf));
    CHECK_EQ(store_log_end(s) >= end, true);
    store_close(s);
  } else {
    CHECK(!"store_open read-only");
  }
}

int main(void) {
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    return 2;
  }
  test_append_and_scan();
  test_torn_tails();
  test_corruption();
  test_zero_tail();
  test_prealloc();
  test_prealloc_torn();
  test_mapped_reads();
  test_snapshot_names();
  test_engine_recovery();
  test_engine_pipeline();
  test_engine_commit_interval();
  test_engine_snapshot_growth();
  test_engine_prefault_after_snapshot();
  test_engine_prefault_ahead();
  test_engine_prefault_naps();
  test_engine_slow_commit_log();
  int rc = check_report("test_store_log");
  if (getenv("LEDGER_TEST_KEEP")) fprintf(stderr, "test_store_log: files kept in %s\n", root);
  else remove_tree(root);
  return rc;
}
