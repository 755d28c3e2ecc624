/*
 * api_json.c — the JSON writer for responses and the validators for request fields.
 * Parsing is cJSON's (Debian libcjson); this file only walks the parsed tree. cJSON keeps
 * numbers as doubles, so amounts travel as strings and ids are range-checked here.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"

/* ------------------------------------------------------------ writer */

static bool jw_grow(jw_t *w, size_t need) {
  if (w->overflow) return false;
  if (w->len + need + 1 <= w->cap) return true;
  size_t cap = w->cap ? w->cap : 4096;
  while (cap < w->len + need + 1) cap *= 2;
  if (cap > API_RESPONSE_BYTES_MAX) {
    w->overflow = true;
    return false;
  }
  char *b = realloc(w->buf, cap);
  if (!b) {
    w->overflow = true;
    return false;
  }
  w->buf = b;
  w->cap = cap;
  return true;
}

void jw_reset(jw_t *w) {
  w->len = 0;
  w->overflow = false;
}

void jw_raw(jw_t *w, const char *s, size_t n) {
  if (!jw_grow(w, n)) return;
  memcpy(w->buf + w->len, s, n);
  w->len += n;
  w->buf[w->len] = '\0';
}

void jw_lit(jw_t *w, const char *s) { jw_raw(w, s, strlen(s)); }

char *jw_reserve(jw_t *w, size_t n) { return jw_grow(w, n) ? w->buf + w->len : NULL; }

void jw_wrote(jw_t *w, size_t n) {
  w->len += n;
  w->buf[w->len] = '\0';
}

/* True when none of the 8 bytes in x needs escaping in a JSON string ('"', '\\', a control
 * character below 0x20). Per lane, (x - 0x20) & ~x has its high bit set exactly when some
 * lane is below 0x20 (borrows only reach lanes above a flagged one, so the "any" is exact);
 * equality is the same test on x XOR the byte. Lanes of 0x80 and up never flag. */
static inline bool clean8(uint64_t x) {
  const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
  uint64_t q = x ^ (ones * (uint8_t)'"'), b = x ^ (ones * (uint8_t)'\\');
  return ((((x - ones * 0x20u) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b)) & high) == 0;
}

void jw_str(jw_t *w, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  if (!jw_grow(w, n * 6 + 2)) return;
  char *o = w->buf + w->len;
  *o++ = '"';
  size_t i = 0;
  for (;;) {
    /* Runs of bytes that need no escaping (nearly all of them) are copied 8 at a time. */
    while (n - i >= 8) {
      uint64_t x;
      memcpy(&x, s + i, 8);
      if (!clean8(x)) break;
      memcpy(o, &x, 8);
      o += 8;
      i += 8;
    }
    if (i == n) break;
    unsigned char c = (unsigned char)s[i++];
    if (c == '"' || c == '\\') {
      *o++ = '\\';
      *o++ = (char)c;
    } else if (c < 0x20) {
      *o++ = '\\';
      *o++ = 'u';
      *o++ = '0';
      *o++ = '0';
      *o++ = hex[c >> 4];
      *o++ = hex[c & 15];
    } else {
      *o++ = (char)c;
    }
  }
  *o++ = '"';
  w->len = (size_t)(o - w->buf);
  w->buf[w->len] = '\0';
}

static bool needs_comma(const jw_t *w) {
  return w->len > 0 && w->buf[w->len - 1] != '{' && w->buf[w->len - 1] != '[';
}

void jw_comma_if(jw_t *w) {
  if (needs_comma(w)) jw_raw(w, ",", 1);
}

/* Keys are the API's own names (literals, currency codes), which need no escaping: written
 * as they are, in one piece. */
void jw_key(jw_t *w, const char *key) {
  size_t n = strlen(key);
  char *o = jw_reserve(w, n + 4);
  if (!o) return;
  char *start = o;
  if (needs_comma(w)) *o++ = ',';
  *o++ = '"';
  memcpy(o, key, n);
  o += n;
  *o++ = '"';
  *o++ = ':';
  jw_wrote(w, (size_t)(o - start));
}

void jw_key_str(jw_t *w, const char *key, const char *value) {
  jw_key(w, key);
  jw_str(w, value, strlen(value));
}

void jw_u64(jw_t *w, uint64_t v) {
  char b[20];
  jw_raw(w, b, u64_format(b, v));
}

char *jw_quoted_begin(jw_t *w, size_t cap) {
  char *o = jw_reserve(w, cap + 2);
  if (!o) return NULL;
  o[0] = '"';
  return o + 1;
}

void jw_quoted_end(jw_t *w, size_t n) {
  w->buf[w->len + 1 + n] = '"';
  jw_wrote(w, n + 2);
}

void jw_money(jw_t *w, int64_t minor, uint8_t exponent) {
  char *o = jw_quoted_begin(w, MONEY_TEXT_BYTES_MAX);
  if (o) jw_quoted_end(w, money_format(minor, exponent, o));
}

void jw_time(jw_t *w, int64_t ms) {
  char *o = jw_quoted_begin(w, TIME_TEXT_BYTES);
  if (o) jw_quoted_end(w, time_format_ms(ms, o));
}

void jw_open(jw_t *w, char c) { jw_raw(w, &c, 1); }
void jw_close(jw_t *w, char c) { jw_raw(w, &c, 1); }

/* ------------------------------------------------------------ validation */

void api_err(api_error_t *e, int status, const char *code, const char *fmt, ...) {
  e->status = status;
  e->code = code;
  e->retry_after_s = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
}

cJSON *json_parse_body(const char *body, size_t len, api_error_t *e) {
  /* cJSON turns \u0000 into a NUL that would silently cut a string short: refuse it. */
  if (memmem(body, len, "\\u0000", 6) != NULL) {
    api_err(e, 400, "invalid_json", "strings must not contain NUL (\\u0000)");
    return NULL;
  }
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
  if (!root) {
    api_err(e, 400, "invalid_json", "the body is not valid JSON");
    return NULL;
  }
  /* Only whitespace may follow the value. */
  for (const char *p = end; p && p < body + len; p++) {
    if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
      cJSON_Delete(root);
      api_err(e, 400, "invalid_json", "unexpected data after the JSON value");
      return NULL;
    }
  }
  return root;
}

bool json_check_fields(const cJSON *obj, const char *const *allowed, api_error_t *e) {
  if (!cJSON_IsObject(obj)) {
    api_err(e, 400, "invalid_request", "the body must be a JSON object");
    return false;
  }
  for (const cJSON *c = obj->child; c; c = c->next) {
    bool ok = false;
    for (const char *const *a = allowed; *a; a++) {
      if (strcmp(c->string, *a) == 0) {
        ok = true;
        break;
      }
    }
    if (!ok) {
      api_err(e, 400, "unknown_field", "unknown field '%.64s'", c->string);
      return false;
    }
    for (const cJSON *d = c->next; d; d = d->next) {
      if (strcmp(c->string, d->string) == 0) {
        api_err(e, 400, "invalid_request", "field '%.64s' appears twice", c->string);
        return false;
      }
    }
  }
  return true;
}

#define ID_MAX ((1ull << 53) - 1)

bool json_fields(const cJSON *obj, const char *const *names, const cJSON **slots, api_error_t *e) {
  if (!cJSON_IsObject(obj)) {
    api_err(e, 400, "invalid_request", "the body must be a JSON object");
    return false;
  }
  size_t n = 0;
  while (names[n]) slots[n++] = NULL;
  for (const cJSON *c = obj->child; c; c = c->next) {
    size_t i = 0;
    while (names[i] && strcmp(c->string, names[i]) != 0) i++;
    if (!names[i]) {
      api_err(e, 400, "unknown_field", "unknown field '%.64s'", c->string);
      return false;
    }
    if (slots[i]) {
      api_err(e, 400, "invalid_request", "field '%.64s' appears twice", c->string);
      return false;
    }
    slots[i] = c;
  }
  return true;
}

bool json_get_id(const cJSON *obj, const char *name, bool required, uint64_t *out, api_error_t *e) {
  return json_id_of(cJSON_GetObjectItemCaseSensitive(obj, name), name, required, out, e);
}

bool json_id_of(const cJSON *v, const char *name, bool required, uint64_t *out, api_error_t *e) {
  if (!v || (cJSON_IsNull(v) && !required)) {
    if (required) api_err(e, 400, "invalid_request", "'%s' is required", name);
    *out = 0;
    return !required;
  }
  double d = v->valuedouble;
  if (!cJSON_IsNumber(v) || !isfinite(d) || d < 1 || d > (double)ID_MAX || floor(d) != d) {
    api_err(e, 400, "invalid_id", "'%s' must be an integer id between 1 and 2^53-1", name);
    return false;
  }
  *out = (uint64_t)d;
  return true;
}

bool json_get_amount(const cJSON *obj, const char *name, bool required, int64_t *digits, uint8_t *scale,
                     api_error_t *e) {
  return json_amount_of(cJSON_GetObjectItemCaseSensitive(obj, name), name, required, digits, scale, e);
}

bool json_amount_of(const cJSON *v, const char *name, bool required, int64_t *digits, uint8_t *scale,
                    api_error_t *e) {
  *digits = 0;
  *scale = 0;
  if (!v) {
    if (required) api_err(e, 400, "invalid_request", "'%s' is required", name);
    return !required;
  }
  if (!cJSON_IsString(v)) {
    api_err(e, 400, "invalid_amount", "'%s' must be a decimal string such as \"10.50\"", name);
    return false;
  }
  int rc = money_parse_decimal(v->valuestring, strlen(v->valuestring), digits, scale);
  if (rc != 0 || *digits <= 0) {
    api_err(e, 400, "invalid_amount", "'%s' must be a positive decimal string such as \"10.50\"%s", name,
            rc == LEDGER_ERANGE ? " (too large)" : "");
    return false;
  }
  return true;
}

bool json_get_bool(const cJSON *obj, const char *name, bool *out, api_error_t *e) {
  return json_bool_of(cJSON_GetObjectItemCaseSensitive(obj, name), name, out, e);
}

bool json_bool_of(const cJSON *v, const char *name, bool *out, api_error_t *e) {
  if (!v) return true;
  if (!cJSON_IsBool(v)) {
    api_err(e, 400, "invalid_request", "'%s' must be true or false", name);
    return false;
  }
  *out = cJSON_IsTrue(v);
  return true;
}

bool json_get_currency(const cJSON *obj, const char *name, bool required, uint8_t *out, api_error_t *e) {
  return json_currency_of(cJSON_GetObjectItemCaseSensitive(obj, name), name, required, out, e);
}

bool json_currency_of(const cJSON *v, const char *name, bool required, uint8_t *out, api_error_t *e) {
  *out = 0;
  if (!v) {
    if (required) api_err(e, 400, "invalid_request", "'%s' is required", name);
    return !required;
  }
  if (!cJSON_IsString(v)) {
    api_err(e, 400, "invalid_request", "'%s' must be a string such as \"USD\"", name);
    return false;
  }
  if ((*out = ledger_currency_find(v->valuestring, strlen(v->valuestring))) == 0) {
    api_err(e, 400, "invalid_currency", "'%s' must be a supported ISO 4217 code such as \"USD\"", name);
    return false;
  }
  return true;
}

static bool append_json_str(char *buf, uint32_t *len, const char *s) {
  jw_t w = {0};
  jw_str(&w, s, strlen(s));
  bool ok = !w.overflow && *len + w.len < LEDGER_EXTRA_BYTES_MAX;
  if (ok) {
    memcpy(buf + *len, w.buf, w.len);
    *len += (uint32_t)w.len;
  }
  free(w.buf);
  return ok;
}

static bool append_raw(char *buf, uint32_t *len, const char *s) {
  size_t n = strlen(s);
  if (*len + n >= LEDGER_EXTRA_BYTES_MAX) return false;
  memcpy(buf + *len, s, n);
  *len += (uint32_t)n;
  return true;
}

bool json_get_extra(const cJSON *obj, char *buf, uint32_t *len_out, api_error_t *e) {
  return json_extra_of(cJSON_GetObjectItemCaseSensitive(obj, "description"),
                       cJSON_GetObjectItemCaseSensitive(obj, "metadata"), buf, len_out, e);
}

bool json_extra_of(const cJSON *desc, const cJSON *meta, char *buf, uint32_t *len_out, api_error_t *e) {
  uint32_t len = 0;
  *len_out = 0;
  if (desc && !cJSON_IsNull(desc)) {
    if (!cJSON_IsString(desc) || strlen(desc->valuestring) > API_DESCRIPTION_BYTES_MAX) {
      api_err(e, 400, "invalid_request", "'description' must be a string of at most %u bytes",
              API_DESCRIPTION_BYTES_MAX);
      return false;
    }
    append_raw(buf, &len, "{\"description\":");
    append_json_str(buf, &len, desc->valuestring);
  }
  if (meta && !cJSON_IsNull(meta)) {
    if (!cJSON_IsObject(meta)) {
      api_err(e, 400, "invalid_request", "'metadata' must be an object of strings");
      return false;
    }
    append_raw(buf, &len, len ? ",\"metadata\":{" : "{\"metadata\":{");
    unsigned pairs = 0;
    for (const cJSON *c = meta->child; c; c = c->next) {
      if (++pairs > API_METADATA_PAIRS_MAX || !cJSON_IsString(c) ||
          strlen(c->string) > API_METADATA_KEY_BYTES_MAX || strlen(c->string) == 0 ||
          strlen(c->valuestring) > API_METADATA_VALUE_BYTES_MAX) {
        api_err(e, 400, "invalid_request",
                "'metadata' takes at most %u string values, keys 1-%u bytes, values up to %u bytes",
                API_METADATA_PAIRS_MAX, API_METADATA_KEY_BYTES_MAX, API_METADATA_VALUE_BYTES_MAX);
        return false;
      }
      for (const cJSON *d = meta->child; d != c; d = d->next) {
        if (strcmp(d->string, c->string) == 0) {
          api_err(e, 400, "invalid_request", "metadata key '%.64s' appears twice", c->string);
          return false;
        }
      }
      if (pairs > 1) append_raw(buf, &len, ",");
      append_json_str(buf, &len, c->string);
      append_raw(buf, &len, ":");
      append_json_str(buf, &len, c->valuestring);
    }
    append_raw(buf, &len, "}");
  }
  if (len) append_raw(buf, &len, "}");
  *len_out = len;
  return true;
}

/* ------------------------------------------------------------ parse arena */

#include <pthread.h>

typedef struct arena {
  char *base;
  size_t used;
  bool active;
} arena_t;

static pthread_key_t arena_key; /* frees a thread's arena when the thread ends */
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;
static _Thread_local arena_t *tl_arena; /* the same, without a pthread_getspecific per node */

static void arena_destroy(void *p) {
  arena_t *a = p;
  free(a->base);
  free(a);
}

static void arena_key_init(void) { (void)pthread_key_create(&arena_key, arena_destroy); }

static void *arena_malloc(size_t n) {
  arena_t *a = tl_arena;
  if (a && a->active) {
    n = (n + 15u) & ~(size_t)15u;
    if (n <= JSON_ARENA_BYTES - a->used) {
      void *p = a->base + a->used;
      a->used += n;
      return p;
    }
  }
  return malloc(n);
}

static void arena_free(void *p) {
  arena_t *a = tl_arena;
  if (a && (char *)p >= a->base && (char *)p < a->base + JSON_ARENA_BYTES) return; /* freed at end */
  free(p);
}

void json_hooks_install(void) {
  pthread_once(&arena_once, arena_key_init);
  cJSON_Hooks hooks = {arena_malloc, arena_free};
  cJSON_InitHooks(&hooks);
}

void json_arena_begin(void) {
  pthread_once(&arena_once, arena_key_init);
  arena_t *a = tl_arena;
  if (!a) {
    a = calloc(1, sizeof *a);
    if (!a) return;
    a->base = malloc(JSON_ARENA_BYTES);
    if (!a->base) {
      free(a);
      return;
    }
    (void)pthread_setspecific(arena_key, a);
    tl_arena = a;
  }
  a->used = 0;
  a->active = true;
}

void json_arena_end(void) {
  arena_t *a = tl_arena;
  if (!a) return;
  a->active = false;
  a->used = 0;
}

/* ------------------------------------------------------------ query strings */

static int hexv(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool query_get(const char *q, size_t qlen, const char *key, char *buf, size_t cap, bool *too_long) {
  size_t klen = strlen(key);
  *too_long = false;
  size_t i = 0;
  while (i < qlen) {
    size_t end = i;
    while (end < qlen && q[end] != '&') end++;
    if (end - i > klen && memcmp(q + i, key, klen) == 0 && q[i + klen] == '=') {
      size_t o = 0;
      for (size_t k = i + klen + 1; k < end; k++) {
        char c = q[k];
        if (c == '+') c = ' ';
        else if (c == '%' && k + 2 < end + 1 && k + 2 <= end - 0 && hexv(q[k + 1]) >= 0 && k + 2 < qlen + 1 &&
                 hexv(q[k + 2]) >= 0) {
          c = (char)(hexv(q[k + 1]) * 16 + hexv(q[k + 2]));
          k += 2;
        }
        if (o + 1 >= cap) {
          *too_long = true;
          return true;
        }
        buf[o++] = c;
      }
      buf[o] = '\0';
      return true;
    }
    i = end + 1;
  }
  return false;
}
