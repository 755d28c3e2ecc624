/*
 * test_base_money.c — the base module's parsers and formatters, exactly: money grammar and
 * int64 boundaries, money_format of every sign and exponent, random format->parse round
 * trips, transfer UUIDs, RFC 3339 times, CRC-32C against a bitwise reference, and the bounded
 * MPMC queue (capacity, FIFO, and a 4-producer/1-consumer run that counts every item).
 *
 * Single-threaded except test_queue_threads. Fixed seeds: a failure reproduces.
 */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "check.h"

/* xorshift64*: fixed-seed pseudo-random numbers for the round trips. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void) {
  uint64_t x = rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_state = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* ------------------------------------------------------------ money_parse */

static int parse(const char *s, uint8_t exponent, int64_t *out) {
  *out = -777;
  return money_parse(s, strlen(s), exponent, out);
}

#define PARSE_OK(s, e, want)                                                                 \
  do {                                                                                       \
    int64_t v_;                                                                              \
    CHECK_EQ(parse(s, e, &v_), LEDGER_OK);                                                   \
    CHECK_EQ(v_, want);                                                                      \
  } while (0)

#define PARSE_ERR(s, e, err)                                                                 \
  do {                                                                                       \
    int64_t v_;                                                                              \
    CHECK_EQ(parse(s, e, &v_), err);                                                         \
    CHECK_EQ(v_, -777); /* untouched on error */                                             \
  } while (0)

static void test_money_parse(void) {
  PARSE_OK("0", 2, 0);
  PARSE_OK("1", 2, 100);
  PARSE_OK("1.5", 2, 150);
  PARSE_OK("1.05", 2, 105);
  PARSE_OK("0.50", 2, 50);
  PARSE_OK("0.01", 2, 1);
  PARSE_OK("007", 2, 700);
  PARSE_OK("00.10", 2, 10);
  PARSE_OK("1050.25", 2, 105025);
  PARSE_OK("7", 0, 7);
  PARSE_OK("1.234", 3, 1234);
  PARSE_OK("1.2", 3, 1200);
  PARSE_OK("0.001", 3, 1);
  /* 64 characters of leading zeros are still a number. */
  PARSE_OK("0000000000000000000000000000000000000000000000000000000000000001", 0, 1);

  /* Too many fraction digits for the currency. */
  PARSE_ERR("1.005", 2, LEDGER_EINVAL);
  PARSE_ERR("1.5", 0, LEDGER_EINVAL);
  PARSE_ERR("1.0", 0, LEDGER_EINVAL);
  PARSE_ERR("1.2345", 3, LEDGER_EINVAL);
  PARSE_ERR("0.0000", 3, LEDGER_EINVAL);
  /* Grammar. */
  PARSE_ERR("", 2, LEDGER_EINVAL);
  PARSE_ERR("1.", 2, LEDGER_EINVAL);
  PARSE_ERR(".5", 2, LEDGER_EINVAL);
  PARSE_ERR(".", 2, LEDGER_EINVAL);
  PARSE_ERR("-1", 2, LEDGER_EINVAL);
  PARSE_ERR("+1", 2, LEDGER_EINVAL);
  PARSE_ERR("-0", 2, LEDGER_EINVAL);
  PARSE_ERR(" 1", 2, LEDGER_EINVAL);
  PARSE_ERR("1 ", 2, LEDGER_EINVAL);
  PARSE_ERR("1 .5", 2, LEDGER_EINVAL);
  PARSE_ERR("1e2", 2, LEDGER_EINVAL);
  PARSE_ERR("1E2", 2, LEDGER_EINVAL);
  PARSE_ERR("1.5e1", 2, LEDGER_EINVAL);
  PARSE_ERR("1..5", 2, LEDGER_EINVAL);
  PARSE_ERR("1.2.3", 3, LEDGER_EINVAL);
  PARSE_ERR("1,50", 2, LEDGER_EINVAL);
  PARSE_ERR("0x10", 2, LEDGER_EINVAL);
  PARSE_ERR("1_000", 2, LEDGER_EINVAL);
  PARSE_ERR("NaN", 2, LEDGER_EINVAL);
  PARSE_ERR("inf", 2, LEDGER_EINVAL);
  PARSE_ERR("00000000000000000000000000000000000000000000000000000000000000001", 0, LEDGER_EINVAL);
  {
    int64_t v = -777;
    CHECK_EQ(money_parse("1\0", 2, 2, &v), LEDGER_EINVAL); /* embedded NUL */
    CHECK_EQ(money_parse("12", 1, 2, &v), LEDGER_OK);      /* only len bytes are read */
    CHECK_EQ(v, 100);
    CHECK_EQ(money_parse(NULL, 0, 2, &v), LEDGER_EINVAL);
  }

  /* int64 boundaries: INT64_MAX minor units exactly, then one more. */
  PARSE_OK("9223372036854775807", 0, INT64_MAX);
  PARSE_ERR("9223372036854775808", 0, LEDGER_ERANGE);
  PARSE_ERR("99999999999999999999", 0, LEDGER_ERANGE);
  PARSE_OK("92233720368547758.07", 2, INT64_MAX);
  PARSE_ERR("92233720368547758.08", 2, LEDGER_ERANGE);
  PARSE_OK("92233720368547758", 2, 9223372036854775800);
  PARSE_ERR("92233720368547759", 2, LEDGER_ERANGE); /* overflows while scaling */
  PARSE_OK("9223372036854775.807", 3, INT64_MAX);
  PARSE_ERR("9223372036854775.808", 3, LEDGER_ERANGE);
  PARSE_ERR("9223372036854776", 3, LEDGER_ERANGE);
  PARSE_OK("9.223372036854775807", 18, INT64_MAX);
  PARSE_ERR("9.223372036854775808", 18, LEDGER_ERANGE);
  PARSE_ERR("10", 18, LEDGER_ERANGE);
  PARSE_OK("0000000000000000000000000000000000000000009223372036854775807", 0, INT64_MAX);
}

/* ------------------------------------------------------------ money_parse_decimal */

#define DEC_OK(s, want_digits, want_scale)                                                   \
  do {                                                                                       \
    int64_t d_ = -1;                                                                         \
    uint8_t sc_ = 99;                                                                        \
    CHECK_EQ(money_parse_decimal(s, strlen(s), &d_, &sc_), LEDGER_OK);                      \
    CHECK_EQ(d_, want_digits);                                                               \
    CHECK_EQ(sc_, want_scale);                                                               \
  } while (0)

#define DEC_ERR(s, err)                                                                      \
  do {                                                                                       \
    int64_t d_ = -1;                                                                         \
    uint8_t sc_ = 99;                                                                        \
    CHECK_EQ(money_parse_decimal(s, strlen(s), &d_, &sc_), err);                            \
  } while (0)

static void test_money_parse_decimal(void) {
  DEC_OK("12.340", 12340, 3);
  DEC_OK("12", 12, 0);
  DEC_OK("0", 0, 0);
  DEC_OK("0.5", 5, 1);
  DEC_OK("1.005", 1005, 3);
  DEC_OK("00.010", 10, 3);
  DEC_OK("0.000000000000000001", 1, 18);
  DEC_OK("9223372036854775807", INT64_MAX, 0);
  DEC_OK("922337203685477580.7", INT64_MAX, 1);
  DEC_OK("9.223372036854775807", INT64_MAX, 18);

  DEC_ERR("0.0000000000000000001", LEDGER_EINVAL); /* 19 fraction digits */
  DEC_ERR("9223372036854775808", LEDGER_ERANGE);
  DEC_ERR("922337203685477580.8", LEDGER_ERANGE);
  DEC_ERR("", LEDGER_EINVAL);
  DEC_ERR("1.", LEDGER_EINVAL);
  DEC_ERR(".5", LEDGER_EINVAL);
  DEC_ERR(".", LEDGER_EINVAL);
  DEC_ERR("-1", LEDGER_EINVAL);
  DEC_ERR("+1", LEDGER_EINVAL);
  DEC_ERR(" 1", LEDGER_EINVAL);
  DEC_ERR("1 ", LEDGER_EINVAL);
  DEC_ERR("1e5", LEDGER_EINVAL);
  DEC_ERR("1.2e5", LEDGER_EINVAL);
  DEC_ERR("1.2.3", LEDGER_EINVAL);
  DEC_ERR("1..2", LEDGER_EINVAL);
  DEC_ERR("abc", LEDGER_EINVAL);
}

/* ------------------------------------------------------------ money_to_minor */

static void test_money_to_minor(void) {
  int64_t v = 0;
  CHECK_EQ(money_to_minor(105, 2, 2, &v), LEDGER_OK);
  CHECK_EQ(v, 105);
  CHECK_EQ(money_to_minor(15, 1, 2, &v), LEDGER_OK);
  CHECK_EQ(v, 150);
  CHECK_EQ(money_to_minor(5, 0, 0, &v), LEDGER_OK);
  CHECK_EQ(v, 5);
  CHECK_EQ(money_to_minor(5, 0, 3, &v), LEDGER_OK);
  CHECK_EQ(v, 5000);
  CHECK_EQ(money_to_minor(1, 0, 18, &v), LEDGER_OK);
  CHECK_EQ(v, 1000000000000000000ll);
  v = -777;
  CHECK_EQ(money_to_minor(1005, 3, 2, &v), LEDGER_EINVAL); /* "1.005" USD */
  CHECK_EQ(money_to_minor(15, 1, 0, &v), LEDGER_EINVAL);   /* "1.5" JPY */
  CHECK_EQ(money_to_minor(10, 0, 18, &v), LEDGER_ERANGE);
  CHECK_EQ(v, -777);
  CHECK_EQ(money_to_minor(INT64_MAX, 0, 0, &v), LEDGER_OK);
  CHECK_EQ(v, INT64_MAX);
  CHECK_EQ(money_to_minor(INT64_MAX, 2, 2, &v), LEDGER_OK);
  CHECK_EQ(v, INT64_MAX);
  CHECK_EQ(money_to_minor(922337203685477580ll, 0, 1, &v), LEDGER_OK);
  CHECK_EQ(v, 9223372036854775800ll);
  CHECK_EQ(money_to_minor(922337203685477581ll, 0, 1, &v), LEDGER_ERANGE);
  CHECK_EQ(money_to_minor(92233720368547758ll, 1, 3, &v), LEDGER_OK);
  CHECK_EQ(v, 9223372036854775800ll);
  CHECK_EQ(money_to_minor(92233720368547759ll, 1, 3, &v), LEDGER_ERANGE);
}

/* ------------------------------------------------------------ money_format */

#define FMT(amount, e, want)                                                                 \
  do {                                                                                       \
    char b_[MONEY_TEXT_BYTES_MAX];                                                           \
    memset(b_, 'x', sizeof b_);                                                              \
    size_t n_ = money_format(amount, e, b_);                                                 \
    CHECK_STR(b_, want);                                                                     \
    CHECK_EQ(n_, strlen(want));                                                              \
  } while (0)

static void test_money_format(void) {
  FMT(0, 2, "0.00");
  FMT(5, 2, "0.05");
  FMT(-5, 2, "-0.05");
  FMT(50, 2, "0.50");
  FMT(100, 2, "1.00");
  FMT(12345, 2, "123.45");
  FMT(-1250, 2, "-12.50");
  FMT(0, 0, "0");
  FMT(7, 0, "7");
  FMT(-7, 0, "-7");
  FMT(1234567, 0, "1234567");
  FMT(1, 3, "0.001");
  FMT(-1, 3, "-0.001");
  FMT(1000, 3, "1.000");
  FMT(-1234567, 3, "-1234.567");
  FMT(INT64_MAX, 0, "9223372036854775807");
  FMT(INT64_MIN, 0, "-9223372036854775808");
  FMT(INT64_MAX, 2, "92233720368547758.07");
  FMT(INT64_MIN, 2, "-92233720368547758.08");
  FMT(INT64_MIN, 3, "-9223372036854775.808");
  FMT(INT64_MAX, 18, "9.223372036854775807");
  FMT(INT64_MIN, 18, "-9.223372036854775808");
  FMT(1, 18, "0.000000000000000001");
  FMT(-1, 18, "-0.000000000000000001");
  FMT(0, 18, "0.000000000000000000");
}

/* format -> parse gives the same value, for random magnitudes of every size. */
static void test_money_round_trip(void) {
  static const uint8_t exps[] = {0, 2, 3, 18};
  for (int i = 0; i < 200000; i++) {
    uint8_t e = exps[rng_next() % LEDGER_ARRAY_LEN(exps)];
    int64_t v = (int64_t)(rng_next() >> (1 + rng_next() % 63)); /* all magnitudes, >= 0 */
    if (rng_next() & 1) v = -v;
    char buf[MONEY_TEXT_BYTES_MAX];
    size_t n = money_format(v, e, buf);
    const char *text = buf;
    size_t len = n;
    if (v < 0) { /* the parser takes magnitudes only */
      CHECK(buf[0] == '-');
      text++;
      len--;
    }
    int64_t back = -1;
    int rc = money_parse(text, len, e, &back);
    CHECK_EQ(rc, LEDGER_OK);
    CHECK_EQ(v < 0 ? -back : back, v);
    /* The decimal parser agrees, and money_to_minor brings it to the same minor units. */
    int64_t digits = -1, minor = -1;
    uint8_t scale = 99;
    CHECK_EQ(money_parse_decimal(text, len, &digits, &scale), LEDGER_OK);
    CHECK_EQ(scale, e);
    CHECK_EQ(money_to_minor(digits, scale, e, &minor), LEDGER_OK);
    CHECK_EQ(minor, back);
    if (rc != LEDGER_OK || (v < 0 ? -back : back) != v) {
      fprintf(stderr, "  round trip of %lld (exponent %u): \"%s\"\n", (long long)v, e, buf);
      break;
    }
  }
}

/* ------------------------------------------------------------ uuid */

static void test_uuid(void) {
  char text[UUID_TEXT_BYTES];
  ledger_uuid_t u = uuid_from_transfer(0x0123456789ABll, 1);
  uuid_format(&u, text);
  CHECK_STR(text, "01234567-89ab-7000-8000-000000000001");
  int64_t ms = 0;
  uint64_t no = 0;
  CHECK(uuid_to_transfer(&u, &ms, &no));
  CHECK_EQ(ms, 0x0123456789ABll);
  CHECK_EQ(no, 1);

  u = uuid_from_transfer((1ll << 48) - 1, (1ull << 62) - 1);
  uuid_format(&u, text);
  CHECK_STR(text, "ffffffff-ffff-7000-bfff-ffffffffffff");
  CHECK(uuid_to_transfer(&u, &ms, &no));
  CHECK_EQ(ms, (1ll << 48) - 1);
  CHECK_EQ(no, (1ull << 62) - 1);

  for (int i = 0; i < 20000; i++) {
    int64_t want_ms = (int64_t)(rng_next() >> 16);
    uint64_t want_no = rng_next() >> 2;
    ledger_uuid_t a = uuid_from_transfer(want_ms, want_no), b;
    uuid_format(&a, text);
    CHECK_EQ(strlen(text), 36);
    CHECK(text[8] == '-' && text[13] == '-' && text[18] == '-' && text[23] == '-');
    CHECK(text[14] == '7');
    CHECK(strchr("89ab", text[19]) != NULL);
    memset(&b, 0, sizeof b);
    CHECK_EQ(uuid_parse(text, 36, &b), LEDGER_OK);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    CHECK(uuid_to_transfer(&b, &ms, &no));
    CHECK_EQ(ms, want_ms);
    CHECK_EQ(no, want_no);
  }

  /* Upper case parses to the same bytes. */
  ledger_uuid_t up;
  CHECK_EQ(uuid_parse("01234567-89AB-7000-8000-00000000000A", 36, &up), LEDGER_OK);
  uuid_format(&up, text);
  CHECK_STR(text, "01234567-89ab-7000-8000-00000000000a");

  static const char *bad[] = {
      "01234567-89ab-7000-8000-00000000000",   /* 35 */
      "01234567-89ab-7000-8000-0000000000001", /* 37 */
      "0123456789ab-7000-8000-000000000001-",  /* hyphens moved */
      "01234567_89ab-7000-8000-000000000001",  /* not a hyphen */
      "01234567-89ab-7000-8000-00000000000g",  /* not hex */
      "0123456 -89ab-7000-8000-000000000001",  /* space */
      "{1234567-89ab-7000-8000-00000000001}",
      "012345678-9ab-7000-8000-000000000001",
      "",
  };
  for (size_t i = 0; i < LEDGER_ARRAY_LEN(bad); i++) {
    ledger_uuid_t x;
    int rc = uuid_parse(bad[i], strlen(bad[i]), &x);
    if (rc != LEDGER_EINVAL) fprintf(stderr, "  uuid_parse accepted \"%s\"\n", bad[i]);
    CHECK_EQ(rc, LEDGER_EINVAL);
  }
  /* Only len bytes are read: a valid id with one byte cut off is rejected. */
  ledger_uuid_t x;
  CHECK_EQ(uuid_parse("01234567-89ab-7000-8000-000000000001", 35, &x), LEDGER_EINVAL);

  /* Not one of ours: wrong version, rand_a bits set, wrong variant. */
  static const char *foreign[] = {
      "01234567-89ab-4000-8000-000000000001",
      "01234567-89ab-7001-8000-000000000001",
      "01234567-89ab-7100-8000-000000000001",
      "01234567-89ab-7000-c000-000000000001",
      "01234567-89ab-7000-0000-000000000001",
  };
  for (size_t i = 0; i < LEDGER_ARRAY_LEN(foreign); i++) {
    ledger_uuid_t f;
    CHECK_EQ(uuid_parse(foreign[i], 36, &f), LEDGER_OK);
    CHECK(!uuid_to_transfer(&f, &ms, &no));
  }
}

/* ------------------------------------------------------------ time */

static int tparse(const char *s, int64_t *out) {
  *out = -777;
  return time_parse_ms(s, strlen(s), out);
}

#define TIME_OK(s, want)                                                                     \
  do {                                                                                       \
    int64_t t_;                                                                              \
    CHECK_EQ(tparse(s, &t_), LEDGER_OK);                                                     \
    CHECK_EQ(t_, want);                                                                      \
  } while (0)

#define TIME_ERR(s)                                                                          \
  do {                                                                                       \
    int64_t t_;                                                                              \
    int rc_ = tparse(s, &t_);                                                                \
    if (rc_ != LEDGER_EINVAL) fprintf(stderr, "  time_parse_ms accepted \"%s\" as %lld\n", s, \
                                      (long long)t_);                                       \
    CHECK_EQ(rc_, LEDGER_EINVAL);                                                            \
  } while (0)

static void test_time(void) {
  char buf[TIME_TEXT_BYTES];
  CHECK_EQ(time_format_ms(0, buf), 24);
  CHECK_STR(buf, "1970-01-01T00:00:00.000Z");
  time_format_ms(1700000000123ll, buf);
  CHECK_STR(buf, "2023-11-14T22:13:20.123Z");
  time_format_ms(-1, buf);
  CHECK_STR(buf, "1969-12-31T23:59:59.999Z");
  time_format_ms(-1000, buf);
  CHECK_STR(buf, "1969-12-31T23:59:59.000Z");
  time_format_ms(-1001, buf);
  CHECK_STR(buf, "1969-12-31T23:59:58.999Z");
  time_format_ms(253402300799999ll, buf);
  CHECK_STR(buf, "9999-12-31T23:59:59.999Z");
  time_format_ms(1709251199000ll, buf);
  CHECK_STR(buf, "2024-02-29T23:59:59.000Z");

  TIME_OK("2026-11-22T10:00:00Z", 1795341600000ll);
  TIME_OK("2026-11-22t10:00:00z", 1795341600000ll);
  TIME_OK("2026-11-22T10:00:00.123Z", 1795341600123ll);
  TIME_OK("2026-11-22T10:00:00.1Z", 1795341600100ll);
  TIME_OK("2026-11-22T10:00:00.12Z", 1795341600120ll);
  TIME_OK("2026-11-22T10:00:00.123456789Z", 1795341600123ll); /* truncated to ms */
  TIME_OK("2026-11-22T10:00:00.999999Z", 1795341600999ll);
  TIME_OK("2026-11-22T11:00:00+01:00", 1795341600000ll);
  TIME_OK("2026-11-22T04:30:00-05:30", 1795341600000ll);
  TIME_OK("2026-11-22T10:00:00.5+00:00", 1795341600500ll);
  TIME_OK("2026-11-22T10:00:00-00:00", 1795341600000ll);
  TIME_OK("2026-11-22", 1795305600000ll);
  TIME_OK("1970-01-01", 0);
  TIME_OK("1970-01-01T00:00:00Z", 0);
  TIME_OK("1969-12-31T23:59:59.999Z", -1);
  TIME_OK("2024-02-29T23:59:59Z", 1709251199000ll);
  TIME_OK("9999-12-31T23:59:59.999Z", 253402300799999ll);

  TIME_ERR("");
  TIME_ERR("2026");
  TIME_ERR("2026-11");
  TIME_ERR("26-11-22");
  TIME_ERR("2026-1-22");
  TIME_ERR("2026/11/22");
  TIME_ERR("2026-13-01");
  TIME_ERR("2026-00-10");
  TIME_ERR("2026-11-00");
  TIME_ERR("2026-11-32");
  TIME_ERR("2026-11-22Z");
  TIME_ERR("2026-11-22T");
  TIME_ERR("2026-11-22T10:00Z");
  TIME_ERR("2026-11-22T10:00:00");      /* no zone */
  TIME_ERR("2026-11-22T24:00:00Z");
  TIME_ERR("2026-11-22T10:60:00Z");
  TIME_ERR("2026-11-22T10:00:61Z");
  TIME_ERR("2026-11-22T10:00:00.Z");    /* empty fraction */
  TIME_ERR("2026-11-22T10:00:00.1234567890Z"); /* more than 9 fraction digits */
  TIME_ERR("2026-11-22T10:00:00+0100");
  TIME_ERR("2026-11-22T10:00:00+01");
  TIME_ERR("2026-11-22T10:00:00+24:00");
  TIME_ERR("2026-11-22T10:00:00+01:60");
  TIME_ERR("2026-11-22T10:00:00Zx");
  TIME_ERR("2026-11-22T10:00:00Z ");
  TIME_ERR(" 2026-11-22");
  TIME_ERR("2026-11-22x");
  TIME_ERR("+2026-11-22");
  TIME_ERR("2026-11-22T1a:00:00Z");
  /* Days that do not exist in their month are not RFC 3339 dates (date-mday depends on the
   * month and year): they must not silently roll over into the next month. */
  TIME_ERR("2026-02-29");
  TIME_ERR("2026-02-30T00:00:00Z");
  TIME_ERR("2026-04-31");
  TIME_ERR("2100-02-29");

  /* The same text as gmtime_r + snprintf (the formatter's first version), years 0000-9999. */
  for (int i = 0; i < 20000; i++) {
    int64_t t = (int64_t)(rng_next() % 253402300800000ull) - (i % 2 ? 62167219200000ll : 0);
    int64_t secs = t >= 0 ? t / 1000 : (t - 999) / 1000;
    time_t tt = (time_t)secs;
    struct tm tm;
    gmtime_r(&tt, &tm);
    char want[64];
    snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(t - secs * 1000));
    size_t n = time_format_ms(t, buf);
    CHECK_EQ(n, strlen(want));
    CHECK_STR(buf, want);
    if (strcmp(buf, want) != 0) break;
  }
  time_format_ms(-62167219200001ll, buf); /* one ms before year 0: the general path */
  CHECK_STR(buf, "-001-12-31T23:59:59.999Z");
  /* Round trip over years 0000-9999. */
  for (int i = 0; i < 50000; i++) {
    int64_t t = (int64_t)(rng_next() % 253402300800000ull);
    if (i % 4 == 0) t -= 62167219200000ll; /* also before 1970, down to year 0 */
    time_format_ms(t, buf);
    int64_t back = 0;
    CHECK_EQ(time_parse_ms(buf, strlen(buf), &back), LEDGER_OK);
    CHECK_EQ(back, t);
    if (back != t) {
      fprintf(stderr, "  time round trip of %lld: %s\n", (long long)t, buf);
      break;
    }
  }
}

/* ------------------------------------------------------------ crc32c */

static uint32_t crc32c_reference(uint32_t crc, const uint8_t *p, size_t len) {
  crc = ~crc;
  for (size_t i = 0; i < len; i++) {
    crc ^= p[i];
    for (int k = 0; k < 8; k++) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

/* u64_format (two digits per step) against printf: the edges of each pair step and random. */
static void test_u64_format(void) {
  const uint64_t fixed[] = {0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 8189, 65535, 1000000, 4294967295u,
                            9999999999999999999ull, 10000000000000000000ull, UINT64_MAX};
  for (int i = 0; i < 20000 + (int)(sizeof fixed / sizeof fixed[0]); i++) {
    uint64_t v = i < (int)(sizeof fixed / sizeof fixed[0]) ? fixed[i] : rng_next() >> (rng_next() % 64);
    char got[24], want[24];
    size_t n = u64_format(got, v);
    got[n] = '\0';
    snprintf(want, sizeof want, "%llu", (unsigned long long)v);
    if (strcmp(got, want) != 0) {
      CHECK_STR(got, want);
      return;
    }
  }
}

static void test_crc32c(void) {
  CHECK_EQ(crc32c(0, "123456789", 9), 0xE3069283u);
  CHECK_EQ(crc32c(0, "", 0), 0);
  /* Incremental equals one shot. */
  CHECK_EQ(crc32c(crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
  /* RFC 3720 B.4 vectors: 32 zero bytes, 32 0xff bytes. */
  uint8_t z[32];
  memset(z, 0, sizeof z);
  CHECK_EQ(crc32c(0, z, sizeof z), 0x8A9136AAu);
  memset(z, 0xff, sizeof z);
  CHECK_EQ(crc32c(0, z, sizeof z), 0x62A8AB43u);
  /* Every length and alignment against the bitwise reference (covers the 8-byte hardware
   * loop and its tail). */
  uint8_t buf[300];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)rng_next();
  for (size_t off = 0; off < 8; off++) {
    for (size_t len = 0; len + off <= sizeof buf; len++) {
      uint32_t want = crc32c_reference(0, buf + off, len);
      uint32_t got = crc32c(0, buf + off, len);
      if (got != want) {
        CHECK_EQ(got, want);
        fprintf(stderr, "  crc32c off %zu len %zu\n", off, len);
        return;
      }
    }
  }
  CHECK_EQ(crc32c(0x12345678u, buf, 100), crc32c_reference(0x12345678u, buf, 100));
  /* Long buffers go as three interleaved streams of 4 KiB blocks joined by a shift: lengths
   * around whole 12 KiB rounds, odd offsets, and a non-zero starting CRC. */
  enum { BIG = 64 * 1024 + 64 };
  uint8_t *big = malloc(BIG);
  CHECK(big != NULL);
  if (!big) return;
  for (size_t i = 0; i < BIG; i++) big[i] = (uint8_t)rng_next();
  const size_t lens[] = {12287, 12288, 12289, 12295, 24576, 24583, 36864 + 5, 65536};
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    for (size_t off = 0; off < 3; off++) {
      uint32_t want = crc32c_reference(0x9e3779b9u, big + off * 7, lens[k]);
      uint32_t got = crc32c(0x9e3779b9u, big + off * 7, lens[k]);
      if (got != want) {
        CHECK_EQ(got, want);
        fprintf(stderr, "  crc32c long: off %zu len %zu\n", off * 7, lens[k]);
        free(big);
        return;
      }
    }
  }
  /* All zeros and all ones too (the shift alone, and the shift of a full register). */
  memset(big, 0, BIG);
  CHECK_EQ(crc32c(0, big, 40000), crc32c_reference(0, big, 40000));
  memset(big, 0xff, BIG);
  CHECK_EQ(crc32c(0, big, 40000), crc32c_reference(0, big, 40000));
  free(big);
}

/* ------------------------------------------------------------ mpmc queue */

static void test_queue_basic(void) {
  mpmc_queue_t *q = NULL;
  CHECK_EQ(mpmc_queue_create(0, &q), LEDGER_EINVAL);
  CHECK_EQ(mpmc_queue_create(1, &q), LEDGER_EINVAL);
  CHECK_EQ(mpmc_queue_create(3, &q), LEDGER_EINVAL);
  CHECK_EQ(mpmc_queue_create(100, &q), LEDGER_EINVAL);
  CHECK_EQ(mpmc_queue_create(8, &q), LEDGER_OK);
  if (!q) return;
  void *item = NULL;
  CHECK(!mpmc_queue_pop(q, &item)); /* empty */
  CHECK(!mpmc_queue_peek(q, 0, &item));
  static int vals[64];
  for (int i = 0; i < 8; i++) CHECK(mpmc_queue_push(q, &vals[i]));
  CHECK(!mpmc_queue_push(q, &vals[8])); /* full at capacity */
  /* peek: the item k behind the next to pop, none past the last pushed, nothing taken */
  for (int k = 0; k < 8; k++) {
    item = NULL;
    CHECK(mpmc_queue_peek(q, (size_t)k, &item));
    CHECK(item == &vals[k]);
  }
  CHECK(!mpmc_queue_peek(q, 8, &item));
  CHECK(!mpmc_queue_peek(q, 1000, &item));
  CHECK_EQ(mpmc_queue_size_approx(q), 8);
  for (int i = 0; i < 8; i++) {
    CHECK(mpmc_queue_pop(q, &item));
    CHECK(item == &vals[i]); /* FIFO */
  }
  CHECK(!mpmc_queue_pop(q, &item));
  CHECK_EQ(mpmc_queue_size_approx(q), 0);
  /* Wrap around many times with a varying fill level. */
  int next_in = 0, next_out = 0;
  for (int round = 0; round < 1000; round++) {
    int k = (int)(rng_next() % 9);
    for (int i = 0; i < k; i++) {
      bool ok = mpmc_queue_push(q, &vals[next_in % 64]);
      if (next_in - next_out < 8) {
        CHECK(ok);
        next_in++;
      } else {
        CHECK(!ok);
      }
    }
    for (int j = 0; j < 9; j++) { /* peek sees exactly the items in the queue, in order */
      bool ok = mpmc_queue_peek(q, (size_t)j, &item);
      CHECK_EQ(ok, j < next_in - next_out);
      if (ok) CHECK(item == &vals[(next_out + j) % 64]);
    }
    int m = (int)(rng_next() % 9);
    for (int i = 0; i < m; i++) {
      bool ok = mpmc_queue_pop(q, &item);
      if (next_out < next_in) {
        CHECK(ok);
        CHECK(item == &vals[next_out % 64]);
        next_out++;
      } else {
        CHECK(!ok);
      }
    }
    CHECK_EQ(mpmc_queue_size_approx(q), next_in - next_out);
  }
  mpmc_queue_destroy(q);
}

#define QUEUE_PRODUCERS 4
#define QUEUE_ITEMS_PER_PRODUCER 50000u

typedef struct producer {
  mpmc_queue_t *q;
  uintptr_t id;
  uint64_t full_retries;
} producer_t;

static void *producer_main(void *arg) {
  producer_t *p = arg;
  for (uintptr_t i = 0; i < QUEUE_ITEMS_PER_PRODUCER; i++) {
    /* Item = producer in the high bits, sequence in the low bits (+1: never NULL). */
    void *item = (void *)((p->id << 32) | (i + 1));
    while (!mpmc_queue_push(p->q, item)) {
      p->full_retries++;
      sched_yield();
    }
  }
  return NULL;
}

static void test_queue_threads(void) {
  mpmc_queue_t *q = NULL;
  CHECK_EQ(mpmc_queue_create(256, &q), LEDGER_OK);
  if (!q) return;
  producer_t prod[QUEUE_PRODUCERS];
  pthread_t th[QUEUE_PRODUCERS];
  for (uintptr_t i = 0; i < QUEUE_PRODUCERS; i++) {
    prod[i] = (producer_t){q, i, 0};
    CHECK(pthread_create(&th[i], NULL, producer_main, &prod[i]) == 0);
  }
  uint64_t got[QUEUE_PRODUCERS] = {0};
  uint64_t total = 0, order_errors = 0, bad_items = 0, peek_errors = 0, peeked = 0;
  while (total < (uint64_t)QUEUE_PRODUCERS * QUEUE_ITEMS_PER_PRODUCER) {
    void *item = NULL, *ahead[4];
    /* The one consumer may look ahead while producers push: what it sees is what it pops. */
    size_t seen = 0;
    while (seen < 4 && mpmc_queue_peek(q, seen, &ahead[seen])) seen++;
    peeked += seen;
    for (size_t k = 0; k < seen; k++) {
      if (!mpmc_queue_pop(q, &item) || item != ahead[k]) peek_errors++;
      if (k + 1 < seen) { /* checked like every popped item, below */
        uintptr_t v = (uintptr_t)item, id = v >> 32, sq = v & 0xffffffffu;
        if (id >= QUEUE_PRODUCERS) bad_items++;
        else {
          if (sq != got[id] + 1) order_errors++;
          got[id] = sq;
        }
        total++;
      }
    }
    if (seen == 0 && !mpmc_queue_pop(q, &item)) {
      sched_yield();
      continue;
    }
    uintptr_t v = (uintptr_t)item;
    uintptr_t id = v >> 32, seq = v & 0xffffffffu;
    if (id >= QUEUE_PRODUCERS) {
      bad_items++;
    } else {
      /* One consumer: each producer's items come out in the order it pushed them. */
      if (seq != got[id] + 1) order_errors++;
      got[id] = seq;
    }
    total++;
  }
  for (int i = 0; i < QUEUE_PRODUCERS; i++) CHECK(pthread_join(th[i], NULL) == 0);
  CHECK_EQ(bad_items, 0);
  CHECK_EQ(order_errors, 0);
  CHECK_EQ(peek_errors, 0);
  CHECK(peeked > 0);
  for (int i = 0; i < QUEUE_PRODUCERS; i++) CHECK_EQ(got[i], QUEUE_ITEMS_PER_PRODUCER);
  void *item;
  CHECK(!mpmc_queue_pop(q, &item)); /* nothing extra */
  mpmc_queue_destroy(q);
}

int main(void) {
  test_money_parse();
  test_money_parse_decimal();
  test_money_to_minor();
  test_money_format();
  test_money_round_trip();
  test_uuid();
  test_time();
  test_u64_format();
  test_crc32c();
  test_queue_basic();
  test_queue_threads();
  return check_report("test_base_money");
}
