/*
 * base.h — the small things every module uses: error codes, money, time, ids, checksums,
 * logging. libc only (plus libxxhash behind ledger_hash128). Thread-safe unless noted.
 */
#ifndef LEDGER_BASE_H
#define LEDGER_BASE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/limits.h"

#define LEDGER_MUST_USE __attribute__((warn_unused_result))
#define LEDGER_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Asserts stay on in every build (STYLE.md): an invariant broken in production must stop the
 * process before it writes a wrong balance, not after. */
#define LEDGER_ASSERT(cond)                                                                   \
  do {                                                                                        \
    if (__builtin_expect(!(cond), 0)) ledger_assert_fail(#cond, __FILE__, __LINE__);         \
  } while (0)
_Noreturn void ledger_assert_fail(const char *expr, const char *file, int line);

/* ---- errors: 0 or a negative LEDGER_E* ---- */
enum {
  LEDGER_OK = 0,
  LEDGER_EINVAL = -1,    /* bad argument or input */
  LEDGER_ENOMEM = -2,    /* allocation failed */
  LEDGER_EIO = -3,       /* read/write/fsync failed */
  LEDGER_ECORRUPT = -4,  /* checksum or structure mismatch in stored data */
  LEDGER_EFULL = -5,     /* a bounded queue or table is full */
  LEDGER_ELOCKED = -6,   /* data directory held by another process */
  LEDGER_ERANGE = -7,    /* number out of range / overflow */
  LEDGER_ENOTFOUND = -8, /* no such item */
  LEDGER_ESTOPPED = -9,  /* component is shutting down */
  LEDGER_EVERSION = -10, /* stored data in another format version */
};
const char *ledger_strerror(int err);

/* ---- currencies and money ---- */
typedef struct ledger_currency {
  char code[4];     /* ISO 4217, NUL-terminated */
  uint8_t exponent; /* fraction digits */
} ledger_currency_t;

#define LEDGER_CURRENCIES_MAX 16u
/* Index into the table below; 0 is "none". Stable: the index is stored in the log. */
typedef uint8_t ledger_currency_id_t;
unsigned ledger_currency_count(void); /* valid ids are 1..count */
const ledger_currency_t *ledger_currency_get(ledger_currency_id_t id); /* NULL if invalid */
/* Exact, case-sensitive ("USD"). Returns 0 if unknown. */
ledger_currency_id_t ledger_currency_find(const char *code, size_t len);

/* Parses a positive decimal amount in major units ("1050.25") into minor units. Accepts
 * only [0-9]+(\.[0-9]{1,exponent})?: no sign, exponent, spaces, leading '+', empty parts.
 * Leading zeros are allowed ("0.50"). Zero is accepted here (callers decide); overflow of
 * int64 minor units -> LEDGER_ERANGE; anything else malformed -> LEDGER_EINVAL. */
LEDGER_MUST_USE int money_parse(const char *text, size_t len, uint8_t exponent,
                                int64_t *amount_minor_out);
/* Parses a non-negative decimal ("12.340") into digits and scale without knowing the currency:
 * digits=12340, scale=3. Same grammar as money_parse, at most 18 fraction digits. */
LEDGER_MUST_USE int money_parse_decimal(const char *text, size_t len, int64_t *digits_out,
                                        uint8_t *scale_out);
/* Converts digits*10^-scale to minor units of a currency with `exponent`: LEDGER_EINVAL if
 * scale > exponent, LEDGER_ERANGE on overflow. */
LEDGER_MUST_USE int money_to_minor(int64_t digits, uint8_t scale, uint8_t exponent,
                                   int64_t *amount_minor_out);
/* Writes amount_minor as a decimal with exactly `exponent` fraction digits ("-12.50").
 * buf must hold MONEY_TEXT_BYTES_MAX. Returns the length written (no NUL counted). */
#define MONEY_TEXT_BYTES_MAX 32u
size_t money_format(int64_t amount_minor, uint8_t exponent, char *buf);

/* Checked int64 arithmetic: false on overflow (out untouched). */
static inline bool money_add(int64_t a, int64_t b, int64_t *out) {
  return !__builtin_add_overflow(a, b, out);
}
static inline bool money_sub(int64_t a, int64_t b, int64_t *out) {
  return !__builtin_sub_overflow(a, b, out);
}

/* ---- time ---- */
int64_t time_now_ms(void);   /* CLOCK_REALTIME, ms since the epoch */

/* First call of a background thread: blocks every signal (they go to the main thread) and
 * names the thread (shown by top -H, /proc/PID/task/TID/comm, perf). */
void thread_start_background(const char *name);
uint64_t time_mono_ns(void); /* CLOCK_MONOTONIC */
/* RFC 3339 UTC with milliseconds: "2026-11-22T10:00:00.123Z". buf >= TIME_TEXT_BYTES. */
#define TIME_TEXT_BYTES 32u
size_t time_format_ms(int64_t unix_ms, char *buf);
/* v in decimal at dst (at most 20 digits, no NUL); returns the digits written. */
size_t u64_format(char *dst, uint64_t v);
/* Parses RFC 3339 ("2026-11-22T10:00:00Z", optional fraction, 'Z' or +hh:mm) or a plain
 * date "2026-11-22" (midnight UTC). */
LEDGER_MUST_USE int time_parse_ms(const char *text, size_t len, int64_t *unix_ms_out);

/* ---- transfer ids: UUIDv7 that encode the transfer number ----
 * Layout: 48-bit unix ms | version 7 | 12 bits zero | variant 10 | 62-bit transfer number.
 * The number is the transfer's position in the ledger (1, 2, ...), so a lookup by id needs
 * no index; the timestamp must match the stored one, so a guessed number with the wrong time
 * is simply not found. */
typedef struct ledger_uuid {
  uint8_t bytes[16];
} ledger_uuid_t;
#define UUID_TEXT_BYTES 37u /* 36 + NUL */
ledger_uuid_t uuid_from_transfer(int64_t created_ms, uint64_t transfer_no);
bool uuid_to_transfer(const ledger_uuid_t *id, int64_t *created_ms_out, uint64_t *transfer_no_out);
void uuid_format(const ledger_uuid_t *id, char *buf); /* lowercase, hyphenated, NUL-terminated */
LEDGER_MUST_USE int uuid_parse(const char *text, size_t len, ledger_uuid_t *out);

/* ---- checksums and hashes ---- */
uint32_t crc32c(uint32_t crc, const void *data, size_t len); /* Castagnoli, crc=0 to start */
typedef struct ledger_hash128 {
  uint64_t lo, hi;
} ledger_hash128_t;
ledger_hash128_t ledger_hash128(const void *data, size_t len, uint64_t seed); /* XXH3-128 */

/* ---- logging: one line per event to stderr, never a secret ---- */
typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;
void log_set_level(log_level_t level);
void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOG_INFO(...) log_msg(LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) log_msg(LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* ---- histograms: power-of-two buckets, lock-free (relaxed atomics), any thread ---- */
#define HIST_BUCKETS 40u
typedef struct ledger_hist {
  _Atomic uint64_t buckets[HIST_BUCKETS]; /* bucket i counts values < 2^i (and >= 2^(i-1)) */
  _Atomic uint64_t count;
  _Atomic uint64_t sum;
} ledger_hist_t;
void hist_record(ledger_hist_t *h, uint64_t value);

/* ---- bounded MPSC/MPMC queue of pointers (Vyukov), lock-free ----
 * capacity is a power of two; push fails (false) when full — the caller answers 503. */
typedef struct mpmc_queue mpmc_queue_t;
LEDGER_MUST_USE int mpmc_queue_create(size_t capacity, mpmc_queue_t **out);
void mpmc_queue_destroy(mpmc_queue_t *q);
bool mpmc_queue_push(mpmc_queue_t *q, void *item);
bool mpmc_queue_pop(mpmc_queue_t *q, void **item_out);
/* The item k places behind the next one to pop (k = 0: the next), if it has been pushed;
 * false otherwise. For a queue with ONE consumer, called by that consumer: nobody else can
 * pop the item, so it stays valid (and its contents, written before the push, visible) until
 * this caller pops it. */
bool mpmc_queue_peek(const mpmc_queue_t *q, size_t k, void **item_out);
size_t mpmc_queue_size_approx(const mpmc_queue_t *q);

#endif
