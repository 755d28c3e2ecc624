/*
 * store_log.c — the append-only log, its recovery scan, the lock and snapshot file names.
 * See store.h for the format. Threads: appends and scans from one thread; reads from any.
 */
#include <dirent.h>
#include <stdatomic.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
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
  s->lock_fd = s->log_fd = -1;
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

int store_log_append(store_t *s, const void *buf, size_t len, bool sync) {
  LEDGER_ASSERT(!s->read_only);
  const char *p = buf;
  uint64_t pos = atomic_load_explicit(&s->log_end, memory_order_relaxed);
  size_t left = len;
  while (left > 0) {
    ssize_t n = pwrite(s->log_fd, p, left, (off_t)pos);
    if (n < 0) {
      if (errno == EINTR) continue;
      return LEDGER_EIO;
    }
    p += n;
    pos += (uint64_t)n;
    left -= (size_t)n;
  }
  if (sync && fdatasync(s->log_fd) != 0) return LEDGER_EIO;
  atomic_store_explicit(&s->log_end, pos, memory_order_release);
  return LEDGER_OK;
}

int store_log_read(const store_t *s, uint64_t pos, void *buf, size_t len) {
  if (pos + len > store_log_end(s) && !s->read_only) return LEDGER_EINVAL;
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

/* 1 if every byte of [pos, size) is zero, 0 if not, or a negative error. */
static int zeros_to_end(const store_t *s, uint64_t pos, uint64_t size) {
  uint8_t chunk[4096];
  while (pos < size) {
    size_t n = size - pos < sizeof chunk ? (size_t)(size - pos) : sizeof chunk;
    int rc = store_log_read(s, pos, chunk, n);
    if (rc != 0) return rc;
    for (size_t i = 0; i < n; i++)
      if (chunk[i] != 0) return 0;
    pos += n;
  }
  return 1;
}

int store_log_scan(store_t *s, uint64_t pos, store_record_fn fn, void *ctx, bool *torn_out) {
  *torn_out = false;
  struct stat st;
  if (fstat(s->log_fd, &st) != 0) return LEDGER_EIO;
  const uint64_t size = (uint64_t)st.st_size;
  if (pos > size) return LEDGER_ECORRUPT; /* snapshot claims more log than exists */
  size_t cap = SCAN_CHUNK_BYTES;
  uint8_t *buf = malloc(cap);
  if (!buf) return LEDGER_ENOMEM;
  int rc = LEDGER_OK;
  while (pos < size) {
    if (size - pos < STORE_RECORD_HEADER_BYTES) {
      rc = cut_tail(s, pos, torn_out);
      break;
    }
    uint8_t hdr[STORE_RECORD_HEADER_BYTES];
    if ((rc = store_log_read(s, pos, hdr, sizeof hdr)) != 0) break;
    uint32_t magic = load_u32(hdr), len = load_u32(hdr + 4), crc = load_u32(hdr + 8);
    uint64_t end = pos + STORE_RECORD_HEADER_BYTES + len;
    if (magic != STORE_RECORD_MAGIC || len > STORE_RECORD_PAYLOAD_BYTES_MAX) {
      /* Garbage header: torn only if nothing valid can follow: it claims to reach the end,
       * or everything from here on is zeros (blocks allocated but never written). */
      int z = zeros_to_end(s, pos, size);
      if (z < 0) {
        rc = z;
        break;
      }
      rc = end >= size || z == 1 ? cut_tail(s, pos, torn_out) : LEDGER_ECORRUPT;
      if (rc == LEDGER_ECORRUPT) LOG_ERROR("log: bad record header at offset %llu", (unsigned long long)pos);
      break;
    }
    if (end > size) {
      rc = cut_tail(s, pos, torn_out);
      break;
    }
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
    if ((rc = store_log_read(s, pos, buf, need)) != 0) break;
    uint32_t got = crc32c(0, buf + 4, 4);
    got = crc32c(got, buf + 12, 4 + (size_t)len);
    if (got != crc) {
      if (end == size) {
        rc = cut_tail(s, pos, torn_out);
      } else {
        LOG_ERROR("log: checksum mismatch at offset %llu with %llu bytes after it",
                  (unsigned long long)pos, (unsigned long long)(size - end));
        rc = LEDGER_ECORRUPT;
      }
      break;
    }
    rc = fn(ctx, buf + STORE_RECORD_HEADER_BYTES, len, pos + STORE_RECORD_HEADER_BYTES);
    if (rc != 0) break;
    pos = end;
  }
  if (rc == LEDGER_OK && !*torn_out) atomic_store(&s->log_end, size);
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
