/*
 * base_misc.c — errors, asserts, time, logging, checksums and hashes.
 */
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "base/base.h"

void ledger_assert_fail(const char *expr, const char *file, int line) {
  fprintf(stderr, "ledgerd: assertion failed: %s (%s:%d)\n", expr, file, line);
  abort();
}

const char *ledger_strerror(int err) {
  switch (err) {
    case LEDGER_OK: return "ok";
    case LEDGER_EINVAL: return "invalid argument";
    case LEDGER_ENOMEM: return "out of memory";
    case LEDGER_EIO: return "i/o error";
    case LEDGER_ECORRUPT: return "corrupt data";
    case LEDGER_EFULL: return "full";
    case LEDGER_ELOCKED: return "data directory is locked by another process";
    case LEDGER_ERANGE: return "out of range";
    case LEDGER_ENOTFOUND: return "not found";
    case LEDGER_ESTOPPED: return "stopped";
    case LEDGER_EVERSION: return "written in another format version";
    default: return "unknown error";
  }
}

void thread_start_background(const char *name) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  (void)pthread_setname_np(pthread_self(), name);
}

int64_t time_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t time_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Days from civil (Howard Hinnant's algorithm, public domain description). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

/* "00".."99": two digits per division (a batch answer prints 8,190 indexes). */
static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

size_t u64_format(char *dst, uint64_t v) {
  char tmp[20];
  size_t at = sizeof tmp; /* digits from the right: no printf on the hot paths (responses, headers) */
  while (v >= 100) {
    unsigned pair = (unsigned)(v % 100);
    v /= 100;
    at -= 2;
    memcpy(tmp + at, digit_pairs + 2 * pair, 2);
  }
  if (v >= 10) {
    at -= 2;
    memcpy(tmp + at, digit_pairs + 2 * v, 2);
  } else {
    tmp[--at] = (char)('0' + v);
  }
  size_t n = sizeof tmp - at;
  memcpy(dst, tmp + at, n);
  return n;
}

static char *digits_fixed(char *o, unsigned v, int width) {
  for (int i = width - 1; i >= 0; i--) {
    o[i] = (char)('0' + v % 10);
    v /= 10;
  }
  return o + width;
}

/* Every transfer answer carries a time: written digit by digit from the day number (the
 * proleptic Gregorian calendar, civil_from_days in H. Hinnant's "chrono-compatible low-level
 * date algorithms"), not with gmtime_r (which takes glibc's time zone lock) and snprintf. */
size_t time_format_ms(int64_t unix_ms, char *buf) {
  int64_t secs = unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000;
  unsigned ms = (unsigned)(unix_ms - secs * 1000);
  int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
  unsigned sod = (unsigned)(secs - days * 86400);
  int64_t z = days + 719468; /* days since 0000-03-01 */
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  unsigned doe = (unsigned)(z - era * 146097);                             /* [0, 146096] */
  unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;    /* [0, 399] */
  unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);                  /* [0, 365] */
  unsigned mp = (5 * doy + 2) / 153;                                       /* [0, 11], from March */
  unsigned day = doy - (153 * mp + 2) / 5 + 1;
  unsigned month = mp < 10 ? mp + 3 : mp - 9;
  int64_t year = (int64_t)yoe + era * 400 + (month <= 2);
  if (year < 0 || year > 9999) { /* four digits or more, or a sign: the general path */
    int n = snprintf(buf, TIME_TEXT_BYTES, "%04lld-%02u-%02uT%02u:%02u:%02u.%03uZ", (long long)year, month, day,
                     sod / 3600, sod / 60 % 60, sod % 60, ms);
    LEDGER_ASSERT(n > 0 && (size_t)n < TIME_TEXT_BYTES);
    return (size_t)n;
  }
  char *o = digits_fixed(buf, (unsigned)year, 4);
  *o++ = '-';
  o = digits_fixed(o, month, 2);
  *o++ = '-';
  o = digits_fixed(o, day, 2);
  *o++ = 'T';
  o = digits_fixed(o, sod / 3600, 2);
  *o++ = ':';
  o = digits_fixed(o, sod / 60 % 60, 2);
  *o++ = ':';
  o = digits_fixed(o, sod % 60, 2);
  *o++ = '.';
  o = digits_fixed(o, ms, 3);
  *o++ = 'Z';
  *o = '\0';
  return (size_t)(o - buf);
}

static bool read_num(const char *s, size_t len, size_t *pos, size_t ndigits, unsigned *out) {
  unsigned v = 0;
  for (size_t k = 0; k < ndigits; k++) {
    if (*pos >= len || s[*pos] < '0' || s[*pos] > '9') return false;
    v = v * 10 + (unsigned)(s[*pos] - '0');
    (*pos)++;
  }
  *out = v;
  return true;
}

static bool expect(const char *s, size_t len, size_t *pos, char c) {
  if (*pos >= len || s[*pos] != c) return false;
  (*pos)++;
  return true;
}

int time_parse_ms(const char *s, size_t len, int64_t *unix_ms_out) {
  size_t p = 0;
  unsigned y, mo, d, h = 0, mi = 0, se = 0, ms = 0;
  if (!read_num(s, len, &p, 4, &y) || !expect(s, len, &p, '-') || !read_num(s, len, &p, 2, &mo) ||
      !expect(s, len, &p, '-') || !read_num(s, len, &p, 2, &d))
    return LEDGER_EINVAL;
  static const unsigned mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap ? 1u : 0u)) return LEDGER_EINVAL;
  int64_t offset_min = 0;
  if (p < len) {
    if (s[p] != 'T' && s[p] != 't') return LEDGER_EINVAL;
    p++;
    if (!read_num(s, len, &p, 2, &h) || !expect(s, len, &p, ':') || !read_num(s, len, &p, 2, &mi) ||
        !expect(s, len, &p, ':') || !read_num(s, len, &p, 2, &se))
      return LEDGER_EINVAL;
    if (h > 23 || mi > 59 || se > 60) return LEDGER_EINVAL;
    if (p < len && s[p] == '.') {
      p++;
      unsigned scale = 100, nd = 0;
      while (p < len && s[p] >= '0' && s[p] <= '9' && nd < 9) {
        ms += (unsigned)(s[p] - '0') * scale;
        scale /= 10;
        p++;
        nd++;
      }
      if (nd == 0) return LEDGER_EINVAL;
    }
    if (p < len && (s[p] == 'Z' || s[p] == 'z')) {
      p++;
    } else if (p < len && (s[p] == '+' || s[p] == '-')) {
      int sign = s[p] == '-' ? -1 : 1;
      p++;
      unsigned oh, om;
      if (!read_num(s, len, &p, 2, &oh) || !expect(s, len, &p, ':') || !read_num(s, len, &p, 2, &om))
        return LEDGER_EINVAL;
      if (oh > 23 || om > 59) return LEDGER_EINVAL;
      offset_min = sign * (int64_t)(oh * 60 + om);
    } else {
      return LEDGER_EINVAL;
    }
  }
  if (p != len) return LEDGER_EINVAL;
  int64_t days = days_from_civil((int64_t)y, mo, d);
  int64_t secs = days * 86400 + h * 3600 + mi * 60 + se - offset_min * 60;
  *unix_ms_out = secs * 1000 + ms;
  return LEDGER_OK;
}

static _Atomic int log_level = LOG_INFO;
void log_set_level(log_level_t level) { atomic_store(&log_level, (int)level); }

void log_msg(log_level_t level, const char *fmt, ...) {
  if ((int)level < atomic_load_explicit(&log_level, memory_order_relaxed)) return;
  static const char *names[] = {"debug", "info", "warn", "error"};
  char line[1024];
  char ts[TIME_TEXT_BYTES];
  time_format_ms(time_now_ms(), ts);
  int n = snprintf(line, sizeof line, "%s %s ", ts, names[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof line - 2) len = sizeof line - 2;
  line[len++] = '\n';
  fwrite(line, 1, len, stderr); /* one fwrite per line: lines from threads do not interleave */
}

/* CRC32C, slicing-by-1 table built once; SSE4.2 crc32 instruction when the CPU has it. */
static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[i] = c;
  }
}

#if defined(__x86_64__)
/* a * b modulo the CRC32C polynomial, both in the CRC's reflected bit order (x^0 is the top
 * bit): the shift of a CRC register by a run of zero bytes is a multiplication by x^(8n). */
static uint32_t crc_mulmod(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1) ? (b >> 1) ^ 0x82F63B78u : b >> 1; /* b *= x */
  }
  return product;
}

/* x^(8 * bytes) modulo the polynomial: the register shift over `bytes` zero bytes. */
static uint32_t crc_shift_of(uint64_t bytes) {
  uint32_t result = 1u << 31, power = 1u << 23; /* x^0, x^8 */
  for (; bytes != 0; bytes >>= 1) {
    if (bytes & 1) result = crc_mulmod(result, power);
    power = crc_mulmod(power, power);
  }
  return result;
}

/* The crc32 instruction takes 3 cycles but can start one every cycle, so one serial chain
 * runs at a third of its speed: long buffers are done as three interleaved streams over
 * three CRC_STREAM_BYTES blocks, joined by the register's linearity: the register after
 * A||B is shift(reg after A, |B|) ^ (B's register from 0). The batch record the engine
 * checksums is ~1 MB; crc32c was 4-5 % of a batch benchmark's samples (docs/performance.md). */
#define CRC_STREAM_BYTES 4096u
static _Atomic uint32_t crc_stream_shift; /* crc_shift_of(CRC_STREAM_BYTES), set by crc32c() first */

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p,
                                                              size_t len) {
  uint64_t c = crc;
  uint32_t shift = atomic_load_explicit(&crc_stream_shift, memory_order_relaxed);
  while (len >= 3u * CRC_STREAM_BYTES) {
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < CRC_STREAM_BYTES; i += 8) {
      uint64_t v0, v1, v2;
      memcpy(&v0, p + i, 8);
      memcpy(&v1, p + CRC_STREAM_BYTES + i, 8);
      memcpy(&v2, p + 2u * CRC_STREAM_BYTES + i, 8);
      c = __builtin_ia32_crc32di(c, v0);
      c1 = __builtin_ia32_crc32di(c1, v1);
      c2 = __builtin_ia32_crc32di(c2, v2);
    }
    c = crc_mulmod((uint32_t)c, shift) ^ (uint32_t)c1;
    c = crc_mulmod((uint32_t)c, shift) ^ (uint32_t)c2;
    p += 3u * CRC_STREAM_BYTES;
    len -= 3u * CRC_STREAM_BYTES;
  }
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    len -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif

uint32_t crc32c(uint32_t crc, const void *data, size_t len) {
  const uint8_t *p = data;
  crc = ~crc;
#if defined(__x86_64__)
  static _Atomic int have_hw = -1;
  if (atomic_load_explicit(&have_hw, memory_order_acquire) < 0) {
    __builtin_cpu_init();
    atomic_store_explicit(&crc_stream_shift, crc_shift_of(CRC_STREAM_BYTES), memory_order_relaxed);
    atomic_store_explicit(&have_hw, __builtin_cpu_supports("sse4.2") ? 1 : 0, memory_order_release);
  }
  if (atomic_load_explicit(&have_hw, memory_order_relaxed)) return ~crc32c_hw(crc, p, len);
#endif
  static _Atomic int ready = 0;
  if (!atomic_load(&ready)) {
    crc_init();
    atomic_store(&ready, 1);
  }
  while (len--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

void hist_record(ledger_hist_t *h, uint64_t value) {
  unsigned b = value == 0 ? 0 : 64u - (unsigned)__builtin_clzll(value);
  if (b >= HIST_BUCKETS) b = HIST_BUCKETS - 1;
  atomic_fetch_add_explicit(&h->buckets[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->sum, value, memory_order_relaxed);
}

ledger_hash128_t ledger_hash128(const void *data, size_t len, uint64_t seed) {
  XXH128_hash_t h = XXH3_128bits_withSeed(data, len, seed);
  return (ledger_hash128_t){h.low64, h.high64};
}
