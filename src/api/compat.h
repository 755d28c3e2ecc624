/*
 * compat.h — private to src/api: the compatibility routes (docs/compat.md).
 *
 * compat.c routes and answers the seed systems' documented APIs (microfin, the banking API,
 * the Flask transaction service, the monitoring service) by building ordinary engine
 * commands; compat_json.c reads their bodies with yajl so that JSON-number amounts are
 * taken from their text, exactly. Net threads only.
 */
#ifndef LEDGER_API_COMPAT_H
#define LEDGER_API_COMPAT_H

#include "api/api_internal.h"

/* Limits of a compat body: the seed systems send small flat objects. */
#define COMPAT_BODY_BYTES_MAX API_BODY_BYTES_MAX /* as v1: 64 KiB */
#define COMPAT_FIELDS_MAX 16u                    /* top-level members kept */
#define COMPAT_KEY_BYTES_MAX 64u
#define COMPAT_VALUE_BYTES_MAX 256u /* = AUTH_PASSWORD_BYTES_MAX, the longest value read */
#define COMPAT_DEPTH_MAX 16u        /* nesting inside ignored members */
#define COMPAT_ACCOUNT_NUMBER_DIGITS 12u
static_assert(ENGINE_ACCOUNTS_MAX < 1000000000000ull, "every account id fits a 12-digit account number");

typedef enum {
  COMPAT_JSON_NONE = 0,
  COMPAT_JSON_NULL,
  COMPAT_JSON_BOOL,
  COMPAT_JSON_NUMBER, /* text as written: "-2", "100.50" */
  COMPAT_JSON_STRING, /* unescaped UTF-8 */
  COMPAT_JSON_NESTED, /* an object or array: not kept */
  COMPAT_JSON_TOO_LONG,
} compat_json_type_t;

typedef struct compat_field {
  char key[COMPAT_KEY_BYTES_MAX + 1];
  char text[COMPAT_VALUE_BYTES_MAX + 1];
  uint32_t len;
  uint8_t type;
} compat_field_t;

typedef struct compat_body {
  compat_field_t fields[COMPAT_FIELDS_MAX];
  unsigned count;
  bool seen_root;
} compat_body_t;

typedef struct compat_amount {
  int64_t digits; /* > 0 */
  uint8_t scale;  /* fraction digits, 0..18 */
  bool negative;
} compat_amount_t;

/* A JSON object body into b (400/413 in *e otherwise). b may hold a password: wipe it. */
bool compat_body_parse(const char *text, size_t len, compat_body_t *b, api_error_t *e);
const compat_field_t *compat_body_get(const compat_body_t *b, const char *name); /* NULL: absent */
bool compat_get_string(const compat_body_t *b, const char *name, size_t min, size_t max, const char **out,
                       api_error_t *e);
/* A JSON number amount, exactly: digits and scale (the engine checks the currency's exponent). */
bool compat_get_amount(const compat_body_t *b, const char *name, bool allow_negative, compat_amount_t *out,
                       api_error_t *e);
bool compat_get_id(const compat_body_t *b, const char *name, uint64_t *out, api_error_t *e);
bool compat_get_account_number(const compat_body_t *b, const char *name, uint64_t *out, api_error_t *e);
/* Number text → sign, digits, scale; 0 or LEDGER_EINVAL / LEDGER_ERANGE (as money_parse_decimal). */
int compat_number_decimal(const char *text, size_t len, bool *negative, int64_t *digits, uint8_t *scale);
/* Account numbers: the v1 account id as 12 zero-padded decimal digits. */
bool compat_parse_account_number(const char *s, size_t n, uint64_t *out);
void compat_account_number(uint64_t id, char out[COMPAT_ACCOUNT_NUMBER_DIGITS + 1]);

#endif
