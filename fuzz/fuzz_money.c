/*
 * fuzz_money.c — libFuzzer target for the base module's text parsers: money_parse (exponents
 * 0, 2, 3, 18), money_parse_decimal, time_parse_ms and uuid_parse on arbitrary bytes.
 *
 * Beyond "does not crash": whatever a parser accepts must survive format -> parse unchanged,
 * and the two money parsers must agree with each other (money_parse == money_parse_decimal +
 * money_to_minor, both ways). Any disagreement abort()s, which the fuzzer reports.
 *
 * Replayed in `make test` by fuzz/replay_main.c over fuzz/corpus/fuzz_money; see
 * docs/testing.md for a real libFuzzer run.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(cond)                                                                   \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "fuzz_money: %s failed at line %d\n", #cond, __LINE__);               \
      abort();                                                                               \
    }                                                                                        \
  } while (0)

/* RFC 3339 as time_format_ms writes it covers years 0000-9999 only. */
#define TIME_MS_MIN (-62167219200000ll)
#define TIME_MS_MAX 253402300799999ll

static void fuzz_money(const char *text, size_t len) {
  int64_t digits = -1;
  uint8_t scale = 0;
  int drc = money_parse_decimal(text, len, &digits, &scale);
  if (drc == 0) {
    FUZZ_REQUIRE(digits >= 0 && scale <= 18);
    char buf[MONEY_TEXT_BYTES_MAX];
    size_t n = money_format(digits, scale, buf);
    FUZZ_REQUIRE(n == strlen(buf));
    int64_t d2 = -1;
    uint8_t s2 = 0;
    FUZZ_REQUIRE(money_parse_decimal(buf, n, &d2, &s2) == 0 && d2 == digits && s2 == scale);
  }
  static const uint8_t exps[] = {0, 2, 3, 18};
  for (size_t i = 0; i < sizeof exps; i++) {
    uint8_t e = exps[i];
    int64_t v = -1;
    int rc = money_parse(text, len, e, &v);
    FUZZ_REQUIRE(rc == 0 || rc == LEDGER_EINVAL || rc == LEDGER_ERANGE);
    int64_t via = -1;
    bool via_ok = drc == 0 && money_to_minor(digits, scale, e, &via) == 0;
    FUZZ_REQUIRE((rc == 0) == via_ok);
    if (rc != 0) continue;
    FUZZ_REQUIRE(v >= 0 && v == via);
    char buf[MONEY_TEXT_BYTES_MAX];
    size_t n = money_format(v, e, buf);
    int64_t back = -1;
    FUZZ_REQUIRE(money_parse(buf, n, e, &back) == 0 && back == v);
  }
}

static void fuzz_time(const char *text, size_t len) {
  int64_t t = 0;
  if (time_parse_ms(text, len, &t) != 0) return;
  if (t < TIME_MS_MIN || t > TIME_MS_MAX) return; /* an offset moved it out of 4-digit years */
  char buf[TIME_TEXT_BYTES];
  size_t n = time_format_ms(t, buf);
  int64_t back = 0;
  FUZZ_REQUIRE(time_parse_ms(buf, n, &back) == 0 && back == t);
}

static void fuzz_uuid(const char *text, size_t len) {
  ledger_uuid_t u;
  if (uuid_parse(text, len, &u) != 0) return;
  FUZZ_REQUIRE(len == 36);
  char buf[UUID_TEXT_BYTES];
  uuid_format(&u, buf);
  for (size_t i = 0; i < 36; i++) {
    char c = text[i];
    if (c >= 'A' && c <= 'F') c = (char)(c - 'A' + 'a');
    FUZZ_REQUIRE(buf[i] == c);
  }
  int64_t ms;
  uint64_t no;
  if (uuid_to_transfer(&u, &ms, &no)) {
    ledger_uuid_t again = uuid_from_transfer(ms, no);
    FUZZ_REQUIRE(memcmp(&again, &u, sizeof u) == 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  fuzz_money(text, size);
  fuzz_time(text, size);
  fuzz_uuid(text, size);
  return 0;
}
