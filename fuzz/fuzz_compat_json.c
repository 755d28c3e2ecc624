/*
 * fuzz_compat_json.c — libFuzzer target for the compat routes' body parser (src/api/
 * compat_json.c): compat_body_parse on arbitrary bytes, then every accessor on what it kept,
 * and compat_number_decimal on the raw bytes.
 *
 * Oracles beyond "does not crash": a parsed body keeps at most COMPAT_FIELDS_MAX members with
 * non-empty, NUL-free, distinct names and NUL-terminated values of the recorded length; an
 * amount accepted from a number's text survives format -> parse unchanged (exactness: no
 * rounding anywhere); an accepted account number prints back as the same 12 digits.
 *
 * Replayed in `make test` by fuzz/replay_main.c over fuzz/corpus/fuzz_compat_json.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/compat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(cond)                                                                   \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "fuzz_compat_json: %s failed at line %d\n", #cond, __LINE__);         \
      abort();                                                                               \
    }                                                                                        \
  } while (0)

/* An accepted number's (digits, scale) must print and parse back to itself. */
static void check_number(const char *text, size_t len) {
  bool neg = false;
  int64_t digits = -1;
  uint8_t scale = 0;
  int rc = compat_number_decimal(text, len, &neg, &digits, &scale);
  FUZZ_REQUIRE(rc == 0 || rc == LEDGER_EINVAL || rc == LEDGER_ERANGE);
  if (rc != 0) return;
  FUZZ_REQUIRE(digits >= 0 && scale <= 18);
  char buf[MONEY_TEXT_BYTES_MAX + 1];
  size_t n = money_format(digits, scale, buf);
  bool neg2 = true;
  int64_t d2 = -1;
  uint8_t s2 = 0;
  FUZZ_REQUIRE(compat_number_decimal(buf, n, &neg2, &d2, &s2) == 0 && !neg2);
  /* the printed form drops zeros at the end of the fraction, as the parser does */
  while (scale > 0 && digits % 10 == 0) {
    digits /= 10;
    scale--;
  }
  FUZZ_REQUIRE(d2 == digits && s2 == scale);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static compat_body_t body; /* ~5 KB: not on the stack */
  api_error_t e;
  check_number((const char *)data, size);
  if (!compat_body_parse((const char *)data, size, &body, &e)) {
    FUZZ_REQUIRE(e.status == 400 || e.status == 413 || e.status == 503);
    return 0;
  }
  FUZZ_REQUIRE(body.count <= COMPAT_FIELDS_MAX && body.seen_root);
  for (unsigned i = 0; i < body.count; i++) {
    const compat_field_t *f = &body.fields[i];
    size_t klen = strlen(f->key);
    FUZZ_REQUIRE(klen >= 1 && klen <= COMPAT_KEY_BYTES_MAX);
    FUZZ_REQUIRE(f->len <= COMPAT_VALUE_BYTES_MAX && f->text[f->len] == '\0' && strlen(f->text) == f->len);
    for (unsigned j = 0; j < i; j++) FUZZ_REQUIRE(strcmp(body.fields[j].key, f->key) != 0);
    FUZZ_REQUIRE(compat_body_get(&body, f->key) == f);
    if (f->type == COMPAT_JSON_NUMBER) check_number(f->text, f->len);
    compat_amount_t amt;
    if (compat_get_amount(&body, f->key, true, &amt, &e)) FUZZ_REQUIRE(amt.digits > 0 && amt.scale <= 18);
    uint64_t id;
    if (compat_get_id(&body, f->key, &id, &e)) FUZZ_REQUIRE(id >= 1 && id < (1ull << 53));
    if (compat_get_account_number(&body, f->key, &id, &e)) {
      char num[COMPAT_ACCOUNT_NUMBER_DIGITS + 1];
      compat_account_number(id, num);
      FUZZ_REQUIRE(strcmp(num, f->text) == 0);
    }
    const char *s;
    if (compat_get_string(&body, f->key, 0, COMPAT_VALUE_BYTES_MAX, &s, &e)) FUZZ_REQUIRE(s == f->text);
  }
  return 0;
}
