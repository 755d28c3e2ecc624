/*
 * api_batch.c — transfer bodies: one transfer object (api_transfer_from_json, also used by
 * the single-transfer routes), a batch body through its cJSON tree (api_batch_parse_json), and
 * the batch endpoint's fast path: the common shape of a batch body parsed without building a
 * cJSON tree (api_batch_parse_fast), and the same for one transfer object, the body of
 * POST /v1/transfers (api_transfer_parse_fast).
 *
 * A batch body is ~800 KB of 8,190 small objects; cJSON makes ~50,000 nodes of it, runs strtod
 * for every number and strcmp for every member, and that was the largest share of the net
 * threads' time per batched transfer (docs/performance.md). This scanner accepts only a strict
 * subset of JSON:
 *   - the top level is an object with "transfers" (an array of 1..8,190 objects) and
 *     optionally "atomic" (true or false), each at most once;
 *   - each item's members are among the transfer fields, each at most once, and each value is
 *     a string of printable ASCII without escapes, an integer of 1 to 15 digits without sign,
 *     fraction or exponent, true, or false;
 *   - whitespace is JSON's (space, tab, CR, LF).
 * Each item's values are laid out as cJSON nodes on the stack, one per field (string values
 * as NUL-terminated copies, numbers with the double strtod would give: every integer of up to
 * 15 digits is exact), and go through the same checks as the cJSON path's
 * api_transfer_from_json (transfer_from_fields, without its member-name lookup). Anything
 * else (an escape, a null, metadata, a fraction, an unknown or repeated member, an item the
 * checks refuse, a malformed body) makes it decline, and the caller parses the body with
 * cJSON: errors and every unusual body take the one path that has always served them.
 * tests/unit/test_api_batch.c and fuzz/fuzz_batch.c hold the two paths to the same results.
 * Threads: any (no shared state).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"

/* The most members an item can have (the transfer fields), and the bytes of string values one
 * item may carry through this path (descriptions are at most API_DESCRIPTION_BYTES_MAX). */
#define FAST_MEMBERS_MAX 8u
#define FAST_STRING_BYTES (API_DESCRIPTION_BYTES_MAX + 256u)
#define FAST_DIGITS_MAX 15u

typedef struct cursor {
  const char *p, *end;
} cursor_t;

/* The scanners below are inlined (always_inline): quick_item keeps its cursor in registers
 * through them (49.5 -> 44 ns an item in a throwaway loop over an 8,190-item body). */

static inline __attribute__((always_inline)) void skip_ws(cursor_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static inline __attribute__((always_inline)) bool eat(cursor_t *c, char ch) {
  skip_ws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return true;
  }
  return false;
}

/* A string without escapes, of printable ASCII: *s, *n are its bytes (not copied). */
static inline __attribute__((always_inline)) bool plain_string(cursor_t *c, const char **s, size_t *n) {
  skip_ws(c);
  if (c->p >= c->end || *c->p != '"') return false;
  const char *start = ++c->p;
  while (c->p < c->end) {
    unsigned char ch = (unsigned char)*c->p;
    if (ch == '"') {
      *s = start;
      *n = (size_t)(c->p - start);
      c->p++;
      return true;
    }
    if (ch < 0x20 || ch > 0x7e || ch == '\\') return false;
    c->p++;
  }
  return false;
}

static bool literal(cursor_t *c, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return false;
  c->p += n;
  return true;
}

/* An integer of 1 to FAST_DIGITS_MAX digits, no sign, no leading zero, not followed by a
 * fraction or an exponent (those are left to cJSON and strtod): *v is exact (< 10^15 < 2^53). */
static inline __attribute__((always_inline)) bool plain_integer(cursor_t *c, uint64_t *v) {
  uint64_t x = 0;
  size_t digits = 0;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
    if (++digits > FAST_DIGITS_MAX) return false;
    x = x * 10 + (uint64_t)(*c->p - '0');
    c->p++;
  }
  if (digits == 0 || (digits > 1 && c->p[-(long)digits] == '0') ||
      (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E')))
    return false;
  *v = x;
  return true;
}

enum { F_DEBIT, F_CREDIT, F_AMOUNT, F_CURRENCY, F_PENDING, F_TIMEOUT, F_DESC, F_META, F_COUNT };
const char *const api_transfer_fields[F_COUNT + 1] = {"debit_account_id", "credit_account_id", "amount",
                                                      "currency", "pending", "timeout_s", "description",
                                                      "metadata", NULL};

/* Which transfer field the bytes name (-1: none): by length first, so most keys cost one
 * memcmp (8,190 items of 3-8 members per batch body). */
static int transfer_field_index(const char *s, size_t n) {
  int i;
  switch (n) {
    case 16: i = F_DEBIT; break;
    case 17: i = F_CREDIT; break;
    case 6: i = F_AMOUNT; break;
    case 8: i = s[0] == 'c' ? F_CURRENCY : F_META; break;
    case 7: i = F_PENDING; break;
    case 9: i = F_TIMEOUT; break;
    case 11: i = F_DESC; break;
    default: return -1;
  }
  return memcmp(api_transfer_fields[i], s, n) == 0 ? i : -1;
}

/* One transfer object into value nodes: slots[F_*] the member of each field, NULL where
 * absent, as json_fields fills them from a cJSON object. */
static bool flat_object(cursor_t *c, cJSON *members, char *strings, const cJSON **slots) {
  if (!eat(c, '{')) return false;
  size_t count = 0, used = 0;
  unsigned seen = 0;
  for (unsigned i = 0; i < F_COUNT; i++) slots[i] = NULL;
  skip_ws(c);
  if (c->p < c->end && *c->p == '}') return false; /* {} : the cJSON path says what is missing */
  for (;;) {
    const char *key;
    size_t key_len;
    if (!plain_string(c, &key, &key_len)) return false;
    int idx = transfer_field_index(key, key_len);
    if (idx < 0 || (seen & (1u << idx)) || count == FAST_MEMBERS_MAX) return false;
    seen |= 1u << idx;
    if (!eat(c, ':')) return false;
    cJSON *m = &members[count];
    memset(m, 0, sizeof *m); /* no name: the checks take it from the field, not the node */
    slots[idx] = m;
    skip_ws(c);
    if (c->p >= c->end) return false;
    char ch = *c->p;
    if (ch == '"') {
      const char *s;
      size_t n;
      if (!plain_string(c, &s, &n) || used + n + 1 > FAST_STRING_BYTES) return false;
      memcpy(strings + used, s, n);
      strings[used + n] = '\0';
      m->type = cJSON_String;
      m->valuestring = strings + used;
      used += n + 1;
    } else if (ch >= '0' && ch <= '9') {
      uint64_t v;
      if (!plain_integer(c, &v)) return false;
      m->type = cJSON_Number;
      m->valuedouble = (double)v; /* exact: v < 10^15 < 2^53 */
      m->valueint = v > (uint64_t)INT32_MAX ? INT32_MAX : (int)v;
    } else if (literal(c, "true")) {
      m->type = cJSON_True;
      m->valueint = 1;
    } else if (literal(c, "false")) {
      m->type = cJSON_False;
    } else {
      return false; /* null, a negative number, an object, an array, anything else */
    }
    count++;
    if (eat(c, ',')) continue;
    if (eat(c, '}')) break;
    return false;
  }
  return true;
}

/* The usual item, {"debit_account_id":D,"credit_account_id":C,"amount":"A"} with an optional
 * "currency":"CUR", members in any order, straight into `in` (in->extra left NULL): the
 * result transfer_from_fields gives through flat_object, without the value nodes, copies and
 * per-field checks of that way (~120 ns an item, the net threads' largest user-space cost in
 * the batch benchmark; ~44 ns this way, docs/performance.md), with the same scanners. It
 * accepts a strict subset of what flat_object + transfer_from_fields accept, with the same checks on each value (ids of 1 to
 * 15 digits without a leading zero, an amount money_parse_decimal takes and that is positive,
 * a currency ledger_currency_find knows). Anything else returns false with the cursor where it
 * was, and the caller takes the item that way, which decides: a refused value gets the same
 * answer as before. tests/unit/test_api_batch.c and fuzz/fuzz_batch.c compare the paths. */
static bool quick_item(cursor_t *c, engine_transfer_in_t *in) {
  cursor_t q = *c;
  uint64_t ids[2] = {0, 0};
  const char *amount = NULL, *code = NULL;
  size_t amount_len = 0, code_len = 0;
  unsigned seen = 0;
  if (!eat(&q, '{')) return false;
  do {
    if (!eat(&q, '"')) return false;
    /* The key and its closing quote, compared as one literal (a constant-length memcmp the
     * compiler inlines); a key with an escape or any other byte matches none. */
    int idx;
    size_t left = (size_t)(q.end - q.p), klen;
#define KEY_IS(lit) (klen = sizeof(lit) - 1, left >= klen && memcmp(q.p, lit, sizeof(lit) - 1) == 0)
    if (KEY_IS("debit_account_id\"")) idx = F_DEBIT;
    else if (KEY_IS("credit_account_id\"")) idx = F_CREDIT;
    else if (KEY_IS("amount\"")) idx = F_AMOUNT;
    else if (KEY_IS("currency\"")) idx = F_CURRENCY;
    else return false;
#undef KEY_IS
    if (seen & (1u << idx)) return false;
    seen |= 1u << idx;
    q.p += klen;
    if (!eat(&q, ':')) return false;
    skip_ws(&q);
    if (idx == F_DEBIT || idx == F_CREDIT) {
      if (!plain_integer(&q, &ids[idx == F_CREDIT]) || ids[idx == F_CREDIT] == 0) return false;
    } else if (!plain_string(&q, idx == F_AMOUNT ? &amount : &code, idx == F_AMOUNT ? &amount_len : &code_len)) {
      return false;
    }
  } while (eat(&q, ','));
  if (!eat(&q, '}')) return false;
  const unsigned required = (1u << F_DEBIT) | (1u << F_CREDIT) | (1u << F_AMOUNT);
  int64_t digits;
  uint8_t scale, currency = 0;
  if ((seen & required) != required || money_parse_decimal(amount, amount_len, &digits, &scale) != 0 || digits <= 0)
    return false;
  if (code && (currency = ledger_currency_find(code, code_len)) == 0) return false;
  memset(in, 0, sizeof *in);
  in->kind = ENGINE_KIND_TRANSFER;
  in->debit_account_id = ids[0];
  in->credit_account_id = ids[1];
  in->amount_digits = digits;
  in->amount_scale = scale;
  in->currency = currency;
  *c = q;
  return true;
}

/* The shortest item this path can accept: the three required members with one-character
 * values, {"debit_account_id":1,"credit_account_id":1,"amount":"1"}. A body of len bytes holds
 * fewer than len / FAST_ITEM_BYTES_MIN + 1 of them, which sizes the arrays without a first pass
 * over the body; a body with more items than that is not of this path's shape anyway. */
#define FAST_ITEM_BYTES_MIN 57u

enum { M_ACCOUNT, M_AMOUNT, M_CURRENCY, M_DESC, M_META, M_COUNT };

/* The members of one transfer object, by field (F_* for a transfer, M_* for a deposit or a
 * withdrawal; NULL where absent), into `in`. */
static bool transfer_from_fields(const cJSON *const *f, unsigned kind, engine_transfer_in_t *in, char *extra,
                                 api_error_t *e) {
  memset(in, 0, sizeof *in);
  in->kind = (uint8_t)kind;
  bool transfer = kind == ENGINE_KIND_TRANSFER;
  const cJSON *amount = f[transfer ? F_AMOUNT : M_AMOUNT], *currency = f[transfer ? F_CURRENCY : M_CURRENCY];
  const cJSON *desc = f[transfer ? F_DESC : M_DESC], *meta = f[transfer ? F_META : M_META];
  if (transfer) {
    if (!json_id_of(f[F_DEBIT], "debit_account_id", true, &in->debit_account_id, e) ||
        !json_id_of(f[F_CREDIT], "credit_account_id", true, &in->credit_account_id, e))
      return false;
    bool pending = false;
    if (!json_bool_of(f[F_PENDING], "pending", &pending, e)) return false;
    in->pending = pending;
    const cJSON *t = f[F_TIMEOUT];
    if (t) {
      double d = t->valuedouble;
      if (!cJSON_IsNumber(t) || !isfinite(d) || d < 0 || d > ENGINE_PENDING_TIMEOUT_S_MAX || floor(d) != d) {
        api_err(e, 400, "invalid_request", "'timeout_s' must be an integer from 0 to %u", ENGINE_PENDING_TIMEOUT_S_MAX);
        return false;
      }
      if (d > 0 && !pending) {
        api_err(e, 400, "invalid_request", "'timeout_s' applies only to pending transfers");
        return false;
      }
      in->timeout_s = (uint32_t)d;
    }
  } else {
    uint64_t id;
    if (!json_id_of(f[M_ACCOUNT], "account_id", true, &id, e)) return false;
    if (kind == ENGINE_KIND_DEPOSIT) in->credit_account_id = id;
    else in->debit_account_id = id;
  }
  if (!json_amount_of(amount, "amount", true, &in->amount_digits, &in->amount_scale, e)) return false;
  if (!json_currency_of(currency, "currency", false, &in->currency, e)) return false;
  if (extra && !json_extra_of(desc, meta, extra, &in->extra_len, e)) return false;
  in->extra = extra;
  return true;
}

/* One transfer object (single or batch item) into `in`; kind fixed by the route. */
bool api_transfer_from_json(const cJSON *o, unsigned kind, engine_transfer_in_t *in, char *extra,
                            api_error_t *e) {
  static const char *const money_fields[M_COUNT + 1] = {"account_id", "amount", "currency", "description",
                                                        "metadata", NULL};
  const cJSON *f[F_COUNT];
  if (!json_fields(o, kind == ENGINE_KIND_TRANSFER ? api_transfer_fields : money_fields, f, e)) return false;
  return transfer_from_fields(f, kind, in, extra, e);
}

bool api_batch_parse_json(const cJSON *body, size_t body_len, api_batch_t *out, api_error_t *e) {
  static const char *const fields[] = {"transfers", "atomic", NULL};
  memset(out, 0, sizeof *out);
  if (!json_check_fields(body, fields, e)) return false;
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(body, "transfers");
  bool atomic = false;
  if (!json_get_bool(body, "atomic", &atomic, e)) return false;
  if (!cJSON_IsArray(list)) {
    api_err(e, 400, "invalid_request", "'transfers' must be an array");
    return false;
  }
  int n = cJSON_GetArraySize(list);
  if (n < 1 || n > (int)API_BATCH_TRANSFERS_MAX) {
    api_err(e, 400, "invalid_request", "'transfers' must hold 1 to %u items", API_BATCH_TRANSFERS_MAX);
    return false;
  }
  out->items = calloc((size_t)n, sizeof *out->items);
  out->results = calloc((size_t)n, sizeof *out->results);
  /* Stored extras are never longer than their JSON in the body plus the member names. */
  size_t extra_cap = body_len + (size_t)n * 64u;
  out->extra = malloc(extra_cap);
  if (!out->items || !out->results || !out->extra) {
    api_batch_free(out);
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  size_t extra_used = 0;
  int i = 0;
  for (const cJSON *it = list->child; it; it = it->next, i++) {
    char extra[LEDGER_EXTRA_BYTES_MAX];
    api_error_t item_err;
    if (!api_transfer_from_json(it, ENGINE_KIND_TRANSFER, &out->items[i], extra, &item_err)) {
      api_batch_free(out);
      api_err(e, item_err.status == 422 ? 400 : item_err.status, item_err.code, "transfers[%d]: %s", i, item_err.message);
      return false;
    }
    uint32_t len = out->items[i].extra_len;
    if (extra_used + len > extra_cap) {
      api_batch_free(out);
      api_err(e, 413, "payload_too_large", "descriptions and metadata too large in total");
      return false;
    }
    memcpy(out->extra + extra_used, extra, len);
    out->items[i].extra = out->extra + extra_used;
    extra_used += len;
  }
  out->count = (uint32_t)n;
  out->atomic = atomic;
  return true;
}

void api_batch_free(api_batch_t *b) {
  free(b->items);
  free(b->results);
  free(b->extra);
  memset(b, 0, sizeof *b);
}

bool api_batch_parse_fast(const char *body, size_t len, api_batch_t *out) {
  memset(out, 0, sizeof *out);
  if (len > LEDGER_BODY_BYTES_MAX) return false;
  cursor_t c = {body, body + len};
  size_t most = len / FAST_ITEM_BYTES_MIN + 1;
  uint32_t cap = most < API_BATCH_TRANSFERS_MAX ? (uint32_t)most : API_BATCH_TRANSFERS_MAX;
  out->items = calloc(cap, sizeof *out->items);
  out->results = calloc(cap, sizeof *out->results);
  /* The cJSON path's bound: stored extras are never longer than their JSON plus names. */
  size_t extra_cap = len + (size_t)cap * 64u, extra_used = 0;
  out->extra = malloc(extra_cap);
  if (!out->items || !out->results || !out->extra) goto decline;
  if (!eat(&c, '{')) goto decline;
  bool seen_transfers = false, seen_atomic = false;
  for (;;) {
    const char *key;
    size_t key_len;
    if (!plain_string(&c, &key, &key_len) || !eat(&c, ':')) goto decline;
    if (key_len == 6 && memcmp(key, "atomic", 6) == 0 && !seen_atomic) {
      seen_atomic = true;
      skip_ws(&c);
      if (literal(&c, "true")) out->atomic = true;
      else if (!literal(&c, "false")) goto decline;
    } else if (key_len == 9 && memcmp(key, "transfers", 9) == 0 && !seen_transfers) {
      seen_transfers = true;
      if (!eat(&c, '[')) goto decline;
      for (;;) {
        if (out->count == cap) goto decline;
        cJSON members[FAST_MEMBERS_MAX];
        const cJSON *slots[F_COUNT];
        char strings[FAST_STRING_BYTES];
        char extra[LEDGER_EXTRA_BYTES_MAX];
        api_error_t err;
        engine_transfer_in_t *in = &out->items[out->count];
        if (!quick_item(&c, in)) {
          if (!flat_object(&c, members, strings, slots) ||
              !transfer_from_fields(slots, ENGINE_KIND_TRANSFER, in, extra, &err) ||
              extra_used + in->extra_len > extra_cap)
            goto decline;
          memcpy(out->extra + extra_used, extra, in->extra_len);
        }
        in->extra = out->extra + extra_used;
        extra_used += in->extra_len;
        out->count++;
        if (eat(&c, ',')) continue;
        if (eat(&c, ']')) break;
        goto decline;
      }
    } else {
      goto decline;
    }
    if (eat(&c, ',')) continue;
    if (eat(&c, '}')) break;
    goto decline;
  }
  skip_ws(&c);
  if (c.p != c.end || !seen_transfers || out->count == 0) goto decline;
  return true;
decline:
  api_batch_free(out);
  return false;
}

bool api_transfer_parse_fast(const char *body, size_t len, engine_transfer_in_t *in, char *extra) {
  if (len > API_BODY_BYTES_MAX) return false; /* the cJSON path answers 413 */
  cursor_t c = {body, body + len};
  cJSON members[FAST_MEMBERS_MAX];
  const cJSON *slots[F_COUNT];
  char strings[FAST_STRING_BYTES];
  api_error_t err;
  if (quick_item(&c, in)) { /* trailing bytes after it fail the general way too */
    in->extra = extra;
    skip_ws(&c);
    return c.p == c.end;
  }
  if (!flat_object(&c, members, strings, slots)) return false;
  skip_ws(&c);
  return c.p == c.end && transfer_from_fields(slots, ENGINE_KIND_TRANSFER, in, extra, &err);
}

bool api_batch_parse_body(const char *body, size_t len, api_batch_t *out) {
  api_error_t e;
  memset(out, 0, sizeof *out);
  cJSON *root = json_parse_body(body, len, &e);
  bool ok = root && api_batch_parse_json(root, len, out, &e);
  cJSON_Delete(root);
  return ok;
}

bool api_transfer_parse_body(const char *body, size_t len, engine_transfer_in_t *in, char *extra) {
  api_error_t e;
  cJSON *root = json_parse_body(body, len, &e);
  bool ok = root && api_transfer_from_json(root, ENGINE_KIND_TRANSFER, in, extra, &e);
  cJSON_Delete(root);
  return ok;
}
