/*
 * store.h — the embedded storage: one append-only log file of checksummed records, snapshot
 * files beside it, and the data directory's lock.
 *
 * Why: the log is the source of truth and the transfer store (DESIGN.md). Appends are one
 * write() and one fdatasync() per engine batch; nothing is ever rewritten in place except
 * cutting a torn last record at open.
 *
 * Record framing (little-endian):  magic u32 | payload_len u32 | crc32c u32 | reserved u32 |
 * payload. The crc covers payload_len, reserved and the payload, so a torn or flipped record
 * is always detected. The payload's meaning belongs to the engine.
 *
 * Threads: the engine thread appends; any thread may store_log_read() committed bytes.
 */
#ifndef LEDGER_STORE_H
#define LEDGER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

#define STORE_RECORD_MAGIC 0x4c44474cu /* "LGDL" */
#define STORE_RECORD_HEADER_BYTES 16u
#define STORE_RECORD_PAYLOAD_BYTES_MAX (256u * 1024u * 1024u)
#define STORE_LOG_NAME "ledger.log"
/* One append (one engine batch record) is at most this long: a torn write is confined to it. */
#define STORE_APPEND_BYTES_MAX (64u * 1024u * 1024u + 4096u)
/* Preallocation: zeros are written ahead of the log in chunks of this size, at this alignment
 * (or the page size, if larger). */
#define STORE_PREALLOC_CHUNK_BYTES (512u * 1024u)
#define STORE_PREALLOC_ALIGN 4096u
#define STORE_PREALLOC_BYTES_DEFAULT (16u * 1024u * 1024u) /* ledgerd --log-prealloc-mb 16 */
#define STORE_LOCK_NAME "LOCK"
/* Reads map the log (store_log_read): this much address space, reserved once, mapped in
 * segments of this size as reads reach them. A log longer than the reservation is read with
 * pread past it. */
#define STORE_READ_MAP_BYTES (1ull << 40)
#define STORE_READ_SEG_BYTES (64ull * 1024u * 1024u)

typedef struct store store_t;

/* Opens or creates `dir` and its log. With lock=true takes an exclusive flock on DIR/LOCK
 * (LEDGER_ELOCKED if another process has it); verify/backup tools open with lock=true too,
 * so they refuse while a server runs. */
LEDGER_MUST_USE int store_open(const char *dir, bool read_only, store_t **out);
void store_close(store_t *store);
const char *store_dir(const store_t *store);

/* The end of the valid log (after store_log_scan cut any torn tail). */
uint64_t store_log_end(const store_t *store);

/* Fills the 16-byte header in front of a payload that the caller wrote at buf+HEADER. */
void store_record_seal(void *buf, uint32_t payload_len);
/* Appends [buf, buf+len) (one or more sealed records) at the end, then fdatasync when
 * sync. Any failure is returned; the caller must treat it as fatal (fail-stop). */
LEDGER_MUST_USE int store_log_append(store_t *store, const void *buf, size_t len, bool sync);
/* Preallocation (optional, after store_log_scan): a thread keeps up to `bytes` of zeros
 * written (O_DIRECT where the file system allows it) and fdatasync'd past the log's end, so an
 * append overwrites blocks that already exist and its fdatasync writes the data alone: no
 * inode (size) and no block bitmap (docs/storage.md). An append that outruns the zeros extends
 * the file as before. The file is then longer than the log; store_log_scan takes the zeros
 * after the last whole record as the end, not as damage. 0 = off. */
LEDGER_MUST_USE int store_log_prealloc_start(store_t *store, uint64_t bytes);
typedef struct store_prealloc_stats {
  bool enabled, direct;
  uint64_t zero_end;     /* the file's zeros reach here */
  uint64_t chunks;       /* chunks of zeros written */
  uint64_t slow_appends; /* appends that outran the zeros and extended the file */
} store_prealloc_stats_t;
void store_log_prealloc_stats(const store_t *store, store_prealloc_stats_t *out);

/* Committed bytes, copied from a read-only mapping of the log (pread in read-only mode, past
 * the mapping's reservation, or if mapping failed). */
LEDGER_MUST_USE int store_log_read(const store_t *store, uint64_t pos, void *buf, size_t len);

/* Calls fn for each valid record from `pos` on, in order, with the payload and the log offset
 * of the payload's first byte. Zeros after the last whole record are the end (preallocated
 * space). A bad record (wrong magic or length, a length past the file, a bad crc; nothing in
 * its header is trusted) is a torn tail when the data after it fits in one append and no
 * chain of whole records runs from inside it to the end of the data: it is cut off when the
 * store is writable and reported through *torn_out. Otherwise (acknowledged records after
 * it, or more than one append's worth of data) it is LEDGER_ECORRUPT and nothing is cut.
 * The engine appends one record per append, so a torn append never hides a whole record. 
 * fn returning non-zero stops the scan with that value. */
typedef int (*store_record_fn)(void *ctx, const uint8_t *payload, uint32_t len, uint64_t payload_pos);
LEDGER_MUST_USE int store_log_scan(store_t *store, uint64_t pos, store_record_fn fn, void *ctx,
                                   bool *torn_out);

/* ---- snapshot files: DIR/snapshot-<seq 20 digits>.snap ---- */
/* Path of the newest snapshot into buf, or LEDGER_ENOTFOUND. */
LEDGER_MUST_USE int store_snapshot_newest(const store_t *store, char *buf, size_t cap,
                                          uint64_t *seq_out);
/* Builds DIR/snapshot-<seq>.snap and DIR/snapshot.tmp paths. */
void store_snapshot_paths(const store_t *store, uint64_t seq, char *final_path, char *tmp_path,
                          size_t cap);
/* Deletes every snapshot older than keep_seq. */
void store_snapshot_prune(const store_t *store, uint64_t keep_seq);
/* fsync of the directory itself (after a rename). */
LEDGER_MUST_USE int store_sync_dir(const store_t *store);

/* write() everything or fail; async-signal-safe (used in the snapshot child). */
LEDGER_MUST_USE int store_write_all(int fd, const void *buf, size_t len);

#endif
