/*
 * store_log.c — the append-only log, its recovery scan, the lock and snapshot file names.
 * See store.h for the format. Threads: appends and scans from one thread; reads from any.
 */
#include <dirent.h>
#include <stdatomic.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store.h"

struct store {
  char dir[PATH_MAX];
  int dir_fd;
  int lock_fd;
  int log_fd;
  bool read_only;
  _Atomic uint64_t log_end; /* written by the engine thread, read by readers (pread bound) */
  /* Preallocation (store_log_prealloc_start): [log_end, zero_end) is inside the file and
   * zeros. The filler thread only writes at or past zero_end, the appender only below it
   * unless it holds fill_mu with no chunk in flight: they never write the same bytes. */
  _Atomic uint64_t zero_end;
  _Atomic uint64_t append_end; /* the end of the append in progress, for the filler */
  uint64_t prealloc_bytes; /* 0 = off */
  int fill_fd;             /* O_DIRECT when the file system allows it, else buffered */
  bool fill_running, fill_stop, filling;
  bool want_extend;          /* an append waits to extend the file: the filler holds off */
  _Atomic bool fill_direct;  /* read by the stats call from any thread */
  uint64_t fill_align;       /* O_DIRECT offsets: max(4096, the page size) */
  pthread_t fill_thread;
  pthread_mutex_t fill_mu;
  pthread_cond_t fill_cv;
  uint8_t *fill_zeros; /* STORE_PREALLOC_CHUNK_BYTES of zeros, 4096-aligned */
  _Atomic uint64_t fill_chunks, fill_slow_appends;
  /* Reads (store_log_read) copy from a read-only shared mapping of the log instead of one
   * pread each: a system call costs ~1.1 us on the benchmark VM, and a text search reads up
   * to 20,000 descriptions (docs/performance.md, session 15). The address space is reserved
   * once (STORE_READ_MAP_BYTES, PROT_NONE) and the file is mapped into it in
   * STORE_READ_SEG_BYTES segments (MAP_FIXED) as reads reach them; a segment stays mapped
   * until close, so a reader never meets a mapping that moves. Only below log_end, which the
   * file always covers (the log never shrinks while open). Past the reservation: pread. */
  uint8_t *rmap;                 /* NULL: not reserved (yet, or refused: pread) */
  _Atomic uint64_t rmap_mapped;  /* [0, rmap_mapped) of the file is mapped */
  _Atomic bool rmap_failed;      /* set under rmap_mu; read without it (then: pread, no lock) */
  pthread_mutex_t rmap_mu;
};

static uint32_t load_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

int store_open(const char *dir, bool read_only, store_t **out) {
  if (strlen(dir) >= PATH_MAX - 64) return LEDGER_EINVAL;
  if (!read_only && mkdir(dir, 0700) != 0 && errno != EEXIST) return LEDGER_EIO;
  store_t *s = calloc(1, sizeof *s);
  if (!s) return LEDGER_ENOMEM;
  snprintf(s->dir, sizeof s->dir, "%s", dir);
  s->read_only = read_only;
  s->lock_fd = s->log_fd = s->fill_fd = -1;
  pthread_mutex_init(&s->fill_mu, NULL);
  pthread_mutex_init(&s->rmap_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  (void)pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the filler's timed wait */
  pthread_cond_init(&s->fill_cv, &ca);
  pthread_condattr_destroy(&ca);
  int rc = LEDGER_EIO;
  s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (s->dir_fd < 0) goto fail;
  s->lock_fd = openat(s->dir_fd, STORE_LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (s->lock_fd < 0) goto fail;
  if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    rc = errno == EWOULDBLOCK ? LEDGER_ELOCKED : LEDGER_EIO;
    goto fail;
  }
  s->log_fd = openat(s->dir_fd, STORE_LOG_NAME, (read_only ? O_RDONLY : O_RDWR | O_CREAT) | O_CLOEXEC,
                     0600);
  if (s->log_fd < 0) {
    if (read_only && errno == ENOENT) {
      rc = LEDGER_ENOTFOUND;
    }
    goto fail;
  }
  struct stat st;
  if (fstat(s->log_fd, &st) != 0) goto fail;
  atomic_store(&s->log_end, (uint64_t)st.st_size);
  if (!read_only && fsync(s->dir_fd) != 0) goto fail; /* the log file's directory entry */
  *out = s;
  return LEDGER_OK;
fail:
  store_close(s);
  return rc;
}

void store_close(store_t *s) {
  if (!s) return;
  if (s->fill_running) {
    pthread_mutex_lock(&s->fill_mu);
    s->fill_stop = true;
    pthread_cond_broadcast(&s->fill_cv);
    pthread_mutex_unlock(&s->fill_mu);
    pthread_join(s->fill_thread, NULL);
  }
  if (s->fill_fd >= 0) close(s->fill_fd);
  free(s->fill_zeros);
  pthread_mutex_destroy(&s->fill_mu);
  pthread_cond_destroy(&s->fill_cv);
  if (s->rmap) munmap(s->rmap, STORE_READ_MAP_BYTES);
  pthread_mutex_destroy(&s->rmap_mu);
  if (s->log_fd >= 0) close(s->log_fd);
  if (s->lock_fd >= 0) close(s->lock_fd); /* releases the flock */
  if (s->dir_fd >= 0) close(s->dir_fd);
  free(s);
}

const char *store_dir(const store_t *s) { return s->dir; }
uint64_t store_log_end(const store_t *s) { return atomic_load_explicit(&s->log_end, memory_order_acquire); }

void store_record_seal(void *buf, uint32_t payload_len) {
  LEDGER_ASSERT(payload_len <= STORE_RECORD_PAYLOAD_BYTES_MAX);
  uint8_t *p = buf;
  uint32_t magic = STORE_RECORD_MAGIC, reserved = 0;
  memcpy(p, &magic, 4);
  memcpy(p + 4, &payload_len, 4);
  memcpy(p + 12, &reserved, 4);
  uint32_t crc = crc32c(0, p + 4, 4);
  crc = crc32c(crc, p + 12, 4 + (size_t)payload_len);
  memcpy(p + 8, &crc, 4);
}

int store_write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return LEDGER_EIO;
    }
    p += n;
    len -= (size_t)n;
  }
  return LEDGER_OK;
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t pos) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = pwrite(fd, p, len, (off_t)pos);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return LEDGER_EIO;
    }
    p += n;
    pos += (uint64_t)n;
    len -= (size_t)n;
  }
  return LEDGER_OK;
}

int store_log_append(store_t *s, const void *buf, size_t len, bool sync) {
  LEDGER_ASSERT(!s->read_only && len <= STORE_APPEND_BYTES_MAX);
  uint64_t pos = atomic_load_explicit(&s->log_end, memory_order_relaxed);
  uint64_t end = pos + len;
  if (!s->fill_running || end <= atomic_load_explicit(&s->zero_end, memory_order_acquire)) {
    if (pwrite_all(s->log_fd, buf, len, pos) != 0) return LEDGER_EIO;
  } else {
    /* Past the zeros: hold the filler off, wait for a chunk in flight (it may cover these
     * bytes), then extend the file as a plain append and move zero_end so the filler starts
     * after it. At most one chunk's write is waited for. */
    atomic_fetch_add_explicit(&s->fill_slow_appends, 1, memory_order_relaxed);
    pthread_mutex_lock(&s->fill_mu);
    s->want_extend = true;
    while (s->filling) pthread_cond_wait(&s->fill_cv, &s->fill_mu);
    int rc = pwrite_all(s->log_fd, buf, len, pos);
    if (rc == 0 && end > atomic_load_explicit(&s->zero_end, memory_order_relaxed))
      atomic_store_explicit(&s->zero_end, end, memory_order_release);
    s->want_extend = false;
    pthread_cond_broadcast(&s->fill_cv);
    pthread_mutex_unlock(&s->fill_mu);
    if (rc != 0) return rc;
  }
  if (s->fill_running && end + s->prealloc_bytes / 2 > atomic_load_explicit(&s->zero_end, memory_order_relaxed)) {
    /* Less than half the window left: the filler's turn, now, so that its chunk is written
     * while this append waits in fdatasync rather than after it. Without the mutex: a wake
     * lost to the race costs at most the filler's 50 ms poll; append_end tells it how far
     * the log is about to reach. */
    atomic_store_explicit(&s->append_end, end, memory_order_release);
    pthread_cond_signal(&s->fill_cv);
  }
  if (sync && fdatasync(s->log_fd) != 0) return LEDGER_EIO;
  atomic_store_explicit(&s->log_end, end, memory_order_release);
  return LEDGER_OK;
}

/* pread of [pos, pos+len), bounded by the file only (the recovery scan reads past log_end). */
static int read_raw(const store_t *s, uint64_t pos, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = pread(s->log_fd, p, len, (off_t)pos);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return LEDGER_EIO;
    p += n;
    pos += (uint64_t)n;
    len -= (size_t)n;
  }
  return LEDGER_OK;
}

/* Maps the segments up to `end` (see rmap); false when the reservation or a map failed. */
static bool rmap_cover(store_t *s, uint64_t end) {
  pthread_mutex_lock(&s->rmap_mu);
  if (!s->rmap && !atomic_load(&s->rmap_failed)) {
    void *p = mmap(NULL, STORE_READ_MAP_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) atomic_store(&s->rmap_failed, true);
    else s->rmap = p;
  }
  uint64_t mapped = atomic_load_explicit(&s->rmap_mapped, memory_order_relaxed);
  while (!atomic_load(&s->rmap_failed) && mapped < end) {
    void *want = s->rmap + mapped;
    if (mmap(want, STORE_READ_SEG_BYTES, PROT_READ, MAP_SHARED | MAP_FIXED, s->log_fd, (off_t)mapped) != want) {
      atomic_store(&s->rmap_failed, true); /* the reservation stays as it was: PROT_NONE past `mapped` */
      break;
    }
    mapped += STORE_READ_SEG_BYTES;
    atomic_store_explicit(&s->rmap_mapped, mapped, memory_order_release);
  }
  bool ok = mapped >= end;
  pthread_mutex_unlock(&s->rmap_mu);
  return ok;
}

int store_log_read(const store_t *s, uint64_t pos, void *buf, size_t len) {
  uint64_t end = store_log_end(s);
  if ((len > end || pos > end - len) && !s->read_only) return LEDGER_EINVAL; /* no overflow */
  if (s->read_only || len > STORE_READ_MAP_BYTES || pos > STORE_READ_MAP_BYTES - len ||
      atomic_load_explicit(&s->rmap_failed, memory_order_relaxed))
    return read_raw(s, pos, buf, len);
  if (pos + len > atomic_load_explicit(&s->rmap_mapped, memory_order_acquire) &&
      !rmap_cover((store_t *)s, pos + len)) /* the mapping is the reader's cache, not the log's state */
    return read_raw(s, pos, buf, len);
  memcpy(buf, s->rmap + pos, len);
  return LEDGER_OK;
}

/* ------------------------------------------------------------ preallocation */

static void *fill_main(void *arg) {
  store_t *s = arg;
  thread_start_background("ledger-logfill");
  pthread_mutex_lock(&s->fill_mu);
  while (!s->fill_stop) {
    uint64_t zero_end = atomic_load_explicit(&s->zero_end, memory_order_relaxed);
    uint64_t log_end = atomic_load_explicit(&s->log_end, memory_order_acquire);
    uint64_t appending = atomic_load_explicit(&s->append_end, memory_order_acquire);
    if (appending > log_end) log_end = appending;
    if (s->want_extend || zero_end >= log_end + s->prealloc_bytes) {
      struct timespec t;
      clock_gettime(CLOCK_MONOTONIC, &t);
      t.tv_nsec += 50 * 1000 * 1000;
      if (t.tv_nsec >= 1000000000) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000;
      }
      pthread_cond_timedwait(&s->fill_cv, &s->fill_mu, &t);
      continue;
    }
    uint64_t at = (zero_end + s->fill_align - 1) & ~(s->fill_align - 1);
    s->filling = true;
    pthread_mutex_unlock(&s->fill_mu);
    int rc = pwrite_all(s->fill_fd, s->fill_zeros, STORE_PREALLOC_CHUNK_BYTES, at);
    int err = errno;
    if (rc != 0 && atomic_load(&s->fill_direct) && err == EINVAL) {
      /* The file system took O_DIRECT at open but refuses the write: go through the cache. */
      int fd = openat(s->dir_fd, STORE_LOG_NAME, O_WRONLY | O_CLOEXEC);
      if (fd >= 0) {
        close(s->fill_fd);
        s->fill_fd = fd;
        atomic_store(&s->fill_direct, false);
        rc = pwrite_all(s->fill_fd, s->fill_zeros, STORE_PREALLOC_CHUNK_BYTES, at);
        err = errno;
      }
    }
    if (rc == 0 && fdatasync(s->fill_fd) != 0) {
      rc = LEDGER_EIO;
      err = errno;
    }
    /* Direct writes leave the page cache empty there, and a buffered append into a page that
     * is not cached reads it from the disk first: read the zeros back now, off the engine. */
    if (rc == 0 && atomic_load(&s->fill_direct))
      (void)posix_fadvise(s->fill_fd, (off_t)at, STORE_PREALLOC_CHUNK_BYTES, POSIX_FADV_WILLNEED);
    pthread_mutex_lock(&s->fill_mu);
    s->filling = false;
    if (rc == 0) {
      atomic_store_explicit(&s->zero_end, at + STORE_PREALLOC_CHUNK_BYTES, memory_order_release);
      atomic_fetch_add_explicit(&s->fill_chunks, 1, memory_order_relaxed);
    }
    pthread_cond_broadcast(&s->fill_cv);
    if (rc != 0) {
      LOG_WARN("log preallocation stopped (%s): appends extend the file from now on", strerror(err));
      break;
    }
  }
  pthread_mutex_unlock(&s->fill_mu);
  return NULL;
}

int store_log_prealloc_start(store_t *s, uint64_t bytes) {
  if (s->read_only || bytes == 0 || s->fill_running) return LEDGER_OK;
  if (bytes < 2u * STORE_PREALLOC_CHUNK_BYTES) bytes = 2u * STORE_PREALLOC_CHUNK_BYTES;
  struct stat st;
  if (fstat(s->log_fd, &st) != 0) return LEDGER_EIO;
  uint64_t size = (uint64_t)st.st_size;
  LEDGER_ASSERT(size >= store_log_end(s)); /* after store_log_scan: the rest is zeros */
  long page = sysconf(_SC_PAGESIZE);
  s->fill_align = page > (long)STORE_PREALLOC_ALIGN ? (uint64_t)page : STORE_PREALLOC_ALIGN;
  if (STORE_PREALLOC_CHUNK_BYTES % s->fill_align != 0) return LEDGER_OK; /* pages > 512 KiB: off */
  s->fill_zeros = aligned_alloc(s->fill_align, STORE_PREALLOC_CHUNK_BYTES);
  if (!s->fill_zeros) return LEDGER_ENOMEM;
  memset(s->fill_zeros, 0, STORE_PREALLOC_CHUNK_BYTES);
  atomic_store(&s->fill_direct, true);
  s->fill_fd = openat(s->dir_fd, STORE_LOG_NAME, O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (s->fill_fd < 0) {
    atomic_store(&s->fill_direct, false);
    s->fill_fd = openat(s->dir_fd, STORE_LOG_NAME, O_WRONLY | O_CLOEXEC);
    if (s->fill_fd < 0) return LEDGER_EIO;
  }
  s->prealloc_bytes = bytes;
  atomic_store(&s->zero_end, size);
  if (pthread_create(&s->fill_thread, NULL, fill_main, s) != 0) return LEDGER_ENOMEM;
  s->fill_running = true;
  return LEDGER_OK;
}

void store_log_prealloc_stats(const store_t *s, store_prealloc_stats_t *out) {
  out->enabled = s->fill_running;
  out->direct = atomic_load(&s->fill_direct);
  out->zero_end = atomic_load_explicit(&s->zero_end, memory_order_relaxed);
  out->chunks = atomic_load_explicit(&s->fill_chunks, memory_order_relaxed);
  out->slow_appends = atomic_load_explicit(&s->fill_slow_appends, memory_order_relaxed);
}

/* ------------------------------------------------------------ recovery scan */

/* Reads the log in large chunks; records may span chunks. */
#define SCAN_CHUNK_BYTES (8u * 1024u * 1024u)

static int cut_tail(store_t *s, uint64_t pos, bool *torn_out) {
  *torn_out = true;
  if (!s->read_only) {
    if (ftruncate(s->log_fd, (off_t)pos) != 0 || fdatasync(s->log_fd) != 0) return LEDGER_EIO;
  }
  atomic_store(&s->log_end, pos);
  return LEDGER_OK;
}

/* The offset after the last non-zero byte of [floor, size), or floor. A preallocated log ends
 * in zeros (store_log_prealloc_start); so may a log whose size reached the disk before all of
 * its last write did. Read backwards in small steps: usually the first one finds data. */
static int data_end_of(const store_t *s, uint64_t floor, uint64_t size, uint64_t *out) {
  uint8_t chunk[16384];
  uint64_t end = size;
  while (end > floor) {
    size_t n = end - floor < sizeof chunk ? (size_t)(end - floor) : sizeof chunk;
    uint64_t at = end - n;
    int rc = read_raw(s, at, chunk, n);
    if (rc != 0) return rc;
    for (size_t i = n; i > 0; i--) {
      if (chunk[i - 1] != 0) {
        *out = at + i;
        return LEDGER_OK;
      }
    }
    end = at;
  }
  *out = floor;
  return LEDGER_OK;
}

/* 1 if whole records with good checksums follow one another from `at` to the end of the data
 * (the last one reaching dend), 0 if not, or a negative error. Only records that fit in one
 * append count: that is as far as a torn write reaches. */
static int chain_to_end(const store_t *s, uint64_t at, uint64_t dend, uint64_t size, uint8_t **buf, size_t *cap) {
  while (at < dend) {
    uint8_t hdr[STORE_RECORD_HEADER_BYTES];
    if (size - at < sizeof hdr) return 0;
    int rc = read_raw(s, at, hdr, sizeof hdr);
    if (rc != 0) return rc;
    uint32_t magic = load_u32(hdr), len = load_u32(hdr + 4), crc = load_u32(hdr + 8);
    if (magic != STORE_RECORD_MAGIC || len > STORE_APPEND_BYTES_MAX || len > size - at - sizeof hdr) return 0;
    if ((size_t)len + 4 > *cap) {
      uint8_t *bigger = realloc(*buf, (size_t)len + 4);
      if (!bigger) return LEDGER_ENOMEM;
      *buf = bigger;
      *cap = (size_t)len + 4;
    }
    memcpy(*buf, hdr + 12, 4);
    if ((rc = read_raw(s, at + sizeof hdr, *buf + 4, len)) != 0) return rc;
    if (crc32c(crc32c(0, hdr + 4, 4), *buf, (size_t)len + 4) != crc) return 0;
    at += sizeof hdr + len;
  }
  return 1;
}

/* The most candidate record starts valid_chain_in examines before it gives up and calls the
 * log damaged (refusing is the safe side: nothing is cut). */
#define SCAN_CANDIDATES_MAX 4096u

/* 1 if a chain of whole records (chain_to_end) starts anywhere in (from, dend), 0 if none, or
 * a negative error. Only used on a bad record within one append of the end of the data. */
static int valid_chain_in(const store_t *s, uint64_t from, uint64_t dend, uint64_t size) {
  const uint32_t magic = STORE_RECORD_MAGIC;
  size_t wcap = 1u << 20, bcap = 0;
  uint8_t *win = malloc(wcap + 3), *body = NULL;
  if (!win) return LEDGER_ENOMEM;
  int found = 0;
  unsigned candidates = 0;
  for (uint64_t at = from + 1; at < dend && found == 0;) {
    size_t n = dend - at < wcap ? (size_t)(dend - at) : wcap;
    size_t have = size - at < n + 3 ? (size_t)(size - at) : n + 3; /* a magic across the seam */
    if ((found = read_raw(s, at, win, have)) != 0) break;
    for (size_t i = 0; i < n && i + 4 <= have && found == 0; i++) {
      if (memcmp(win + i, &magic, 4) != 0) continue;
      if (++candidates > SCAN_CANDIDATES_MAX) {
        LOG_ERROR("log: more than %u record-like starts after a bad record: treated as damage", SCAN_CANDIDATES_MAX);
        found = 1;
        break;
      }
      found = chain_to_end(s, at + i, dend, size, &body, &bcap);
    }
    at += n;
  }
  free(body);
  free(win);
  return found;
}

/* A bad record at pos (wrong magic or length, a length past the file, or a bad checksum): is
 * it the torn tail of the last append (cut it), or damage with acknowledged records after it
 * (refuse)? Nothing in its header is trusted. Torn when the data after it fits in one append
 * and no chain of whole records runs from inside it to the end of the data: a crash can
 * persist the pages of one write in any order, so a torn write may show zeros in its middle
 * and data after them, but it cannot contain records written after it. 1 torn, 0 damage, or
 * a negative error. */
static int torn_at(const store_t *s, uint64_t pos, uint64_t dend, uint64_t size) {
  if (dend - pos > STORE_APPEND_BYTES_MAX) return 0;
  int v = valid_chain_in(s, pos, dend, size);
  return v < 0 ? v : !v;
}

int store_log_scan(store_t *s, uint64_t pos, store_record_fn fn, void *ctx, bool *torn_out) {
  *torn_out = false;
  struct stat st;
  if (fstat(s->log_fd, &st) != 0) return LEDGER_EIO;
  const uint64_t size = (uint64_t)st.st_size;
  if (pos > size) return LEDGER_ECORRUPT; /* snapshot claims more log than exists */
  uint64_t dend;
  int rc = data_end_of(s, pos, size, &dend);
  if (rc != 0) return rc;
  size_t cap = SCAN_CHUNK_BYTES;
  uint8_t *buf = malloc(cap);
  if (!buf) return LEDGER_ENOMEM;
  while (pos < dend) {
    if (size - pos < STORE_RECORD_HEADER_BYTES) {
      rc = cut_tail(s, pos, torn_out);
      break;
    }
    uint8_t hdr[STORE_RECORD_HEADER_BYTES];
    if ((rc = read_raw(s, pos, hdr, sizeof hdr)) != 0) break;
    uint32_t magic = load_u32(hdr), len = load_u32(hdr + 4), crc = load_u32(hdr + 8);
    uint64_t end = pos + STORE_RECORD_HEADER_BYTES + len;
    bool bad = magic != STORE_RECORD_MAGIC || len > STORE_RECORD_PAYLOAD_BYTES_MAX || end > size;
    if (!bad) {
      size_t need = STORE_RECORD_HEADER_BYTES + len;
      if (need > cap) {
        uint8_t *bigger = realloc(buf, need);
        if (!bigger) {
          rc = LEDGER_ENOMEM;
          break;
        }
        buf = bigger;
        cap = need;
      }
      if ((rc = read_raw(s, pos, buf, need)) != 0) break;
      uint32_t got = crc32c(0, buf + 4, 4);
      got = crc32c(got, buf + 12, 4 + (size_t)len);
      bad = got != crc;
    }
    if (bad) {
      int t = torn_at(s, pos, dend, size);
      if (t < 0) {
        rc = t;
      } else if (t == 1) {
        rc = cut_tail(s, pos, torn_out);
      } else {
        LOG_ERROR("log: bad record at offset %llu with data up to offset %llu after it",
                  (unsigned long long)pos, (unsigned long long)dend);
        rc = LEDGER_ECORRUPT;
      }
      break;
    }
    rc = fn(ctx, buf + STORE_RECORD_HEADER_BYTES, len, pos + STORE_RECORD_HEADER_BYTES);
    if (rc != 0) break;
    pos = end;
  }
  /* A clean end: the last whole record, with only zeros (preallocated) after it. */
  if (rc == LEDGER_OK && !*torn_out) atomic_store(&s->log_end, pos);
  free(buf);
  return rc;
}

#define SNAP_PREFIX "snapshot-"
#define SNAP_SUFFIX ".snap"

void store_snapshot_paths(const store_t *s, uint64_t seq, char *final_path, char *tmp_path,
                          size_t cap) {
  snprintf(final_path, cap, "%s/" SNAP_PREFIX "%020llu" SNAP_SUFFIX, s->dir, (unsigned long long)seq);
  snprintf(tmp_path, cap, "%s/snapshot.tmp", s->dir);
}

static bool snap_seq(const char *name, uint64_t *seq) {
  size_t n = strlen(name);
  if (n != strlen(SNAP_PREFIX) + 20 + strlen(SNAP_SUFFIX)) return false;
  if (strncmp(name, SNAP_PREFIX, strlen(SNAP_PREFIX)) != 0) return false;
  if (strcmp(name + n - strlen(SNAP_SUFFIX), SNAP_SUFFIX) != 0) return false;
  uint64_t v = 0;
  for (size_t i = strlen(SNAP_PREFIX); i < strlen(SNAP_PREFIX) + 20; i++) {
    if (name[i] < '0' || name[i] > '9') return false;
    v = v * 10 + (uint64_t)(name[i] - '0');
  }
  *seq = v;
  return true;
}

int store_snapshot_newest(const store_t *s, char *buf, size_t cap, uint64_t *seq_out) {
  DIR *d = opendir(s->dir);
  if (!d) return LEDGER_EIO;
  uint64_t best = 0;
  bool found = false;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    uint64_t seq;
    if (snap_seq(e->d_name, &seq) && (!found || seq > best)) {
      best = seq;
      found = true;
    }
  }
  closedir(d);
  if (!found) return LEDGER_ENOTFOUND;
  char tmp[PATH_MAX];
  store_snapshot_paths(s, best, buf, tmp, cap);
  *seq_out = best;
  return LEDGER_OK;
}

void store_snapshot_prune(const store_t *s, uint64_t keep_seq) {
  DIR *d = opendir(s->dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    uint64_t seq;
    if (snap_seq(e->d_name, &seq) && seq < keep_seq) unlinkat(s->dir_fd, e->d_name, 0);
  }
  closedir(d);
}

int store_sync_dir(const store_t *s) { return fsync(s->dir_fd) == 0 ? LEDGER_OK : LEDGER_EIO; }
