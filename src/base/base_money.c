/*
 * base_money.c — currencies and exact decimal money. Never a float: amounts are int64 minor
 * units; text is parsed digit by digit with overflow checks.
 */
#include <string.h>

#include "base/base.h"

/* Order is part of the log format (the index is stored): append only. */
static const ledger_currency_t currencies[] = {
    {"USD", 2}, {"EUR", 2}, {"GBP", 2}, {"JPY", 0}, {"BHD", 3},
    {"CHF", 2}, {"CAD", 2}, {"AUD", 2}, {"KWD", 3}, {"CNY", 2},
};
static_assert(LEDGER_ARRAY_LEN(currencies) < LEDGER_CURRENCIES_MAX, "currency table bound");

unsigned ledger_currency_count(void) { return (unsigned)LEDGER_ARRAY_LEN(currencies); }

const ledger_currency_t *ledger_currency_get(ledger_currency_id_t id) {
  if (id == 0 || id > LEDGER_ARRAY_LEN(currencies)) return NULL;
  return &currencies[id - 1];
}

ledger_currency_id_t ledger_currency_find(const char *code, size_t len) {
  if (len != 3) return 0;
  for (unsigned i = 0; i < LEDGER_ARRAY_LEN(currencies); i++) {
    if (memcmp(currencies[i].code, code, 3) == 0) return (ledger_currency_id_t)(i + 1);
  }
  return 0;
}

static bool digit(char c) { return c >= '0' && c <= '9'; }

int money_parse(const char *text, size_t len, uint8_t exponent, int64_t *amount_minor_out) {
  LEDGER_ASSERT(exponent <= 18);
  if (text == NULL || len == 0 || len > 64) return LEDGER_EINVAL;
  size_t i = 0;
  int64_t value = 0;
  size_t int_digits = 0;
  for (; i < len && digit(text[i]); i++, int_digits++) {
    if (__builtin_mul_overflow(value, 10, &value) ||
        __builtin_add_overflow(value, text[i] - '0', &value))
      return LEDGER_ERANGE;
  }
  if (int_digits == 0) return LEDGER_EINVAL;
  size_t frac_digits = 0;
  if (i < len) {
    if (text[i] != '.') return LEDGER_EINVAL;
    i++;
    for (; i < len && digit(text[i]); i++, frac_digits++) {
      if (frac_digits >= exponent) return LEDGER_EINVAL; /* more digits than the currency has */
      if (__builtin_mul_overflow(value, 10, &value) ||
          __builtin_add_overflow(value, text[i] - '0', &value))
        return LEDGER_ERANGE;
    }
    if (frac_digits == 0 || i != len) return LEDGER_EINVAL;
  }
  for (; frac_digits < exponent; frac_digits++) {
    if (__builtin_mul_overflow(value, 10, &value)) return LEDGER_ERANGE;
  }
  *amount_minor_out = value;
  return LEDGER_OK;
}

int money_parse_decimal(const char *text, size_t len, int64_t *digits_out, uint8_t *scale_out) {
  if (text == NULL || len == 0 || len > 64) return LEDGER_EINVAL;
  const char *dot = memchr(text, '.', len);
  size_t scale = dot ? len - (size_t)(dot - text) - 1 : 0;
  if (scale > 18) return LEDGER_EINVAL;
  int rc = money_parse(text, len, (uint8_t)scale, digits_out);
  if (rc == 0 && dot && scale == 0) return LEDGER_EINVAL;
  *scale_out = (uint8_t)scale;
  return rc;
}

int money_to_minor(int64_t digits, uint8_t scale, uint8_t exponent, int64_t *amount_minor_out) {
  if (scale > exponent) return LEDGER_EINVAL;
  int64_t v = digits;
  for (uint8_t i = scale; i < exponent; i++) {
    if (__builtin_mul_overflow(v, 10, &v)) return LEDGER_ERANGE;
  }
  *amount_minor_out = v;
  return LEDGER_OK;
}

size_t money_format(int64_t amount_minor, uint8_t exponent, char *buf) {
  LEDGER_ASSERT(exponent <= 18);
  char digits[24];
  size_t n = 0;
  /* Work in uint64 so INT64_MIN prints correctly. */
  uint64_t mag = amount_minor < 0 ? (uint64_t)0 - (uint64_t)amount_minor : (uint64_t)amount_minor;
  do {
    digits[n++] = (char)('0' + mag % 10);
    mag /= 10;
  } while (mag != 0);
  while (n <= exponent) digits[n++] = '0'; /* at least one integer digit */
  size_t out = 0;
  if (amount_minor < 0) buf[out++] = '-';
  for (size_t k = n; k > 0; k--) {
    if (k == exponent && exponent > 0) buf[out++] = '.';
    buf[out++] = digits[k - 1];
  }
  buf[out] = '\0';
  LEDGER_ASSERT(out < MONEY_TEXT_BYTES_MAX);
  return out;
}
