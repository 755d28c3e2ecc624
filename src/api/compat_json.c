/*
 * compat_json.c — request bodies of the compatibility routes (docs/compat.md), parsed with yajl.
 *
 * Why yajl and not cJSON (which the v1 routes use): the seed systems send amounts as JSON
 * numbers (`{"amount": 100.50}`), and cJSON keeps a number only as a double, so 0.1 or
 * 100000000000000.01 would already be rounded before we saw them. yajl's number callback
 * hands over the number's text; we turn that text into (digits, scale) with the same
 * money_parse_decimal as v1's decimal strings and let the engine decide whether the
 * currency holds it exactly. Nothing here ever goes through a double.
 *
 * The bodies are flat objects. Only top-level members are kept (COMPAT_FIELDS_MAX of them,
 * keys and values bounded); nested values are noted as such and never kept; nesting deeper
 * than COMPAT_DEPTH_MAX, duplicate keys, NUL in strings, trailing data → 400.
 * Net threads only; no state outside the caller's compat_body_t.
 */
#include <stdio.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "api/compat.h"

typedef struct parse_ctx {
  compat_body_t *b;
  unsigned depth;      /* 1 = inside the top-level object */
  compat_field_t *cur; /* the top-level member whose value comes next, or NULL */
  const char *why;     /* set when a callback cancels the parse */
} parse_ctx_t;

/* A top-level value: stores it into the member its key named. */
static int put_value(parse_ctx_t *p, uint8_t type, const char *text, size_t len) {
  if (p->depth == 0) {
    p->why = "the body must be a JSON object";
    return 0;
  }
  if (p->depth > 1) return 1; /* inside a nested value: not kept */
  compat_field_t *f = p->cur;
  LEDGER_ASSERT(f != NULL);
  p->cur = NULL;
  f->type = type;
  if (len > COMPAT_VALUE_BYTES_MAX) {
    f->type = COMPAT_JSON_TOO_LONG; /* a field that is read answers 400; an ignored one is fine */
    return 1;
  }
  if (memchr(text, '\0', len) != NULL) {
    p->why = "strings must not contain NUL (\\u0000)";
    return 0;
  }
  memcpy(f->text, text, len);
  f->text[len] = '\0';
  f->len = (uint32_t)len;
  return 1;
}

static int cb_null(void *ctx) { return put_value(ctx, COMPAT_JSON_NULL, "", 0); }
static int cb_bool(void *ctx, int v) { return put_value(ctx, COMPAT_JSON_BOOL, v ? "true" : "false", v ? 4 : 5); }
static int cb_number(void *ctx, const char *s, size_t n) { return put_value(ctx, COMPAT_JSON_NUMBER, s, n); }
static int cb_string(void *ctx, const unsigned char *s, size_t n) {
  return put_value(ctx, COMPAT_JSON_STRING, (const char *)s, n);
}

static int cb_open(void *ctx) {
  parse_ctx_t *p = ctx;
  if (p->depth >= COMPAT_DEPTH_MAX) {
    p->why = "the body nests too deeply";
    return 0;
  }
  if (p->depth == 1) { /* a nested value of a top-level member */
    p->cur->type = COMPAT_JSON_NESTED;
    p->cur = NULL;
  }
  p->depth++;
  return 1;
}

static int cb_start_map(void *ctx) {
  parse_ctx_t *p = ctx;
  if (p->depth == 0 && p->b->seen_root) return 0;
  p->b->seen_root = true;
  return cb_open(ctx);
}

static int cb_start_array(void *ctx) {
  parse_ctx_t *p = ctx;
  if (p->depth == 0) {
    p->why = "the body must be a JSON object";
    return 0;
  }
  return cb_open(ctx);
}

static int cb_close(void *ctx) {
  parse_ctx_t *p = ctx;
  LEDGER_ASSERT(p->depth > 0);
  p->depth--;
  return 1;
}

static int cb_key(void *ctx, const unsigned char *k, size_t n) {
  parse_ctx_t *p = ctx;
  if (p->depth > 1) return 1;
  compat_body_t *b = p->b;
  if (n == 0 || n > COMPAT_KEY_BYTES_MAX || memchr(k, '\0', n) != NULL) {
    p->why = "a member name is empty, too long or holds NUL";
    return 0;
  }
  for (unsigned i = 0; i < b->count; i++) {
    if (strlen(b->fields[i].key) == n && memcmp(b->fields[i].key, k, n) == 0) {
      p->why = "a member appears twice";
      return 0;
    }
  }
  if (b->count == COMPAT_FIELDS_MAX) {
    p->why = "the body has too many members";
    return 0;
  }
  compat_field_t *f = &b->fields[b->count++];
  memset(f, 0, sizeof *f);
  memcpy(f->key, k, n);
  f->key[n] = '\0';
  p->cur = f;
  return 1;
}

static const yajl_callbacks callbacks = {
    .yajl_null = cb_null,
    .yajl_boolean = cb_bool,
    .yajl_number = cb_number, /* the number's text: no yajl_integer / yajl_double */
    .yajl_string = cb_string,
    .yajl_start_map = cb_start_map,
    .yajl_map_key = cb_key,
    .yajl_end_map = cb_close,
    .yajl_start_array = cb_start_array,
    .yajl_end_array = cb_close,
};

bool compat_body_parse(const char *text, size_t len, compat_body_t *b, api_error_t *e) {
  memset(b, 0, sizeof *b);
  if (len > COMPAT_BODY_BYTES_MAX) {
    api_err(e, 413, "payload_too_large", "the body is larger than %u bytes", COMPAT_BODY_BYTES_MAX);
    return false;
  }
  if (len == 0) {
    api_err(e, 400, "invalid_json", "a JSON object body is required");
    return false;
  }
  parse_ctx_t p = {.b = b};
  yajl_handle h = yajl_alloc(&callbacks, NULL, &p);
  if (h == NULL) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  /* Defaults are strict JSON: no comments, UTF-8 checked, one value, no trailing garbage. */
  yajl_status st = yajl_parse(h, (const unsigned char *)text, len);
  if (st == yajl_status_ok) st = yajl_complete_parse(h);
  yajl_free(h);
  if (st != yajl_status_ok || !b->seen_root || p.depth != 0) {
    api_err(e, 400, "invalid_json", "%s", p.why ? p.why : "the body is not valid JSON");
    return false;
  }
  return true;
}

const compat_field_t *compat_body_get(const compat_body_t *b, const char *name) {
  for (unsigned i = 0; i < b->count; i++)
    if (strcmp(b->fields[i].key, name) == 0) return &b->fields[i];
  return NULL;
}

bool compat_get_string(const compat_body_t *b, const char *name, size_t min, size_t max, const char **out,
                       api_error_t *e) {
  const compat_field_t *f = compat_body_get(b, name);
  *out = NULL;
  if (f == NULL) {
    api_err(e, 400, "invalid_request", "'%s' is required", name);
    return false;
  }
  if (f->type != COMPAT_JSON_STRING || f->len < min || f->len > max) {
    api_err(e, 400, "invalid_request", "'%s' must be a string of %zu to %zu bytes", name, min, max);
    return false;
  }
  *out = f->text;
  return true;
}

/* "-?digits(.digits)?" → sign, digits, scale. Exponents, a leading '+', spaces: refused (yajl
 * already refused what JSON forbids). Trailing zeros of the fraction are exact to drop
 * ("100.500" is 100.5): they are, so that a client printing "1.000" for a USD amount is not
 * refused for digits that carry no value. */
int compat_number_decimal(const char *text, size_t len, bool *negative, int64_t *digits, uint8_t *scale) {
  *negative = len > 0 && text[0] == '-';
  if (*negative) {
    text++;
    len--;
  }
  if (len == 0 || memchr(text, 'e', len) || memchr(text, 'E', len) || memchr(text, '+', len)) return LEDGER_EINVAL;
  const char *dot = memchr(text, '.', len);
  if (dot) {
    size_t int_len = (size_t)(dot - text);
    while (len > int_len + 1 && text[len - 1] == '0') len--;
    if (len == int_len + 1) len = int_len; /* "100.00" → "100" */
  }
  return money_parse_decimal(text, len, digits, scale);
}

bool compat_get_amount(const compat_body_t *b, const char *name, bool allow_negative, compat_amount_t *out,
                       api_error_t *e) {
  const compat_field_t *f = compat_body_get(b, name);
  memset(out, 0, sizeof *out);
  if (f == NULL) {
    api_err(e, 400, "invalid_request", "'%s' is required", name);
    return false;
  }
  if (f->type != COMPAT_JSON_NUMBER) {
    api_err(e, 400, "invalid_amount", "'%s' must be a JSON number such as 100.50", name);
    return false;
  }
  int rc = compat_number_decimal(f->text, f->len, &out->negative, &out->digits, &out->scale);
  if (rc != 0 || out->digits == 0 || (out->negative && !allow_negative)) {
    api_err(e, 400, "invalid_amount", "'%s' must be a %s number in plain decimal notation (no exponent)%s", name,
            allow_negative ? "non-zero" : "positive", rc == LEDGER_ERANGE ? ", and not that large" : "");
    return false;
  }
  return true;
}

bool compat_get_id(const compat_body_t *b, const char *name, uint64_t *out, api_error_t *e) {
  const compat_field_t *f = compat_body_get(b, name);
  *out = 0;
  if (f == NULL) {
    api_err(e, 400, "invalid_request", "'%s' is required", name);
    return false;
  }
  bool ok = f->type == COMPAT_JSON_NUMBER && f->len >= 1 && f->len <= 16;
  uint64_t v = 0;
  for (uint32_t i = 0; ok && i < f->len; i++) {
    ok = f->text[i] >= '0' && f->text[i] <= '9';
    v = v * 10 + (uint64_t)(f->text[i] - '0');
  }
  if (!ok || v < 1 || v >= (1ull << 53)) {
    api_err(e, 400, "invalid_id", "'%s' must be an integer id between 1 and 2^53-1", name);
    return false;
  }
  *out = v;
  return true;
}

bool compat_parse_account_number(const char *s, size_t n, uint64_t *out) {
  if (n != COMPAT_ACCOUNT_NUMBER_DIGITS) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = v;
  return v >= 1;
}

bool compat_get_account_number(const compat_body_t *b, const char *name, uint64_t *out, api_error_t *e) {
  const compat_field_t *f = compat_body_get(b, name);
  *out = 0;
  if (f == NULL) {
    api_err(e, 400, "invalid_request", "'%s' is required", name);
    return false;
  }
  if (f->type != COMPAT_JSON_STRING || !compat_parse_account_number(f->text, f->len, out)) {
    api_err(e, 400, "invalid_request", "'%s' must be a 12-digit account number string such as \"000000000011\"",
            name);
    return false;
  }
  return true;
}

void compat_account_number(uint64_t id, char out[COMPAT_ACCOUNT_NUMBER_DIGITS + 1]) {
  LEDGER_ASSERT(id >= 1 && id < 1000000000000ull);
  snprintf(out, COMPAT_ACCOUNT_NUMBER_DIGITS + 1, "%012llu", (unsigned long long)id);
}
