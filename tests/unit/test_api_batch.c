/*
 * test_api_batch.c — the batch endpoint's two parsers (src/api/api_batch.c): the fast path
 * and the cJSON path must give the same items for every body the fast path accepts, and the
 * fast path must accept the common shape (else it would be a path that never runs).
 *
 * Bodies come from a seeded generator: items with the transfer fields in random order, with
 * random whitespace, and, in "unusual" bodies, the things the fast path leaves to cJSON
 * (escapes, non-ASCII, null, metadata, fractions, exponents, signs, leading zeros, 16-digit
 * numbers, unknown or repeated members, empty arrays, trailing bytes, truncation). For each:
 *   - fast accepted -> the cJSON path accepted, with the same count, atomic flag, items
 *     (byte for byte but the extra pointer) and extras;
 *   - a usual body -> the fast path accepted exactly when the cJSON path did.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "check.h"

/* CHECK with a message (printed when it fails). */
#define CHECKM(cond, ...)                                                                    \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      check_failures++;                                                                      \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);              \
      fprintf(stderr, __VA_ARGS__);                                                          \
      fputc('\n', stderr);                                                                   \
    }                                                                                        \
  } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}
static unsigned pick(unsigned n) { return (unsigned)(next() % n); }

typedef struct buf {
  char *p;
  size_t len, cap;
} buf_t;

static void put(buf_t *b, const char *s) {
  size_t n = strlen(s);
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2;
    b->p = realloc(b->p, b->cap);
    if (!b->p) exit(2);
  }
  memcpy(b->p + b->len, s, n + 1);
  b->len += n;
}

static void ws(buf_t *b) {
  static const char *const w[] = {"", "", "", " ", "\n", "\t", "\r\n  "};
  put(b, w[pick(7)]);
}

/* A value for member f; *unusual set when it is a shape the fast path leaves to cJSON. */
static void value(buf_t *b, int f, bool allow_unusual, bool *unusual) {
  char t[800];
  bool odd = allow_unusual && pick(40) == 0;
  if (odd) *unusual = true;
  switch (f) {
    case 0:
    case 1: { /* ids */
      static const char *const weird[] = {"1.0", "1e3", "-5", "0012", "1234567890123456", "null", "\"7\"", "2.5E1"};
      if (odd) put(b, weird[pick(8)]);
      else {
        uint64_t v = pick(4) == 0 ? 1 + next() % 999999999999999ull : 1 + pick(1000);
        if (pick(300) == 0) v = 0; /* out of range: both refuse */
        snprintf(t, sizeof t, "%llu", (unsigned long long)v);
        put(b, t);
      }
      break;
    }
    case 2: { /* amount */
      static const char *const usual[] = {"\"0.01\"", "\"10\"", "\"12.345\"", "\"1000000.00\"", "\"abc\"", "\"0\"", "\"-1\"", "12"};
      static const char *const weird[] = {"\"1\\u0030\"", "1.5", "null", "\"\\u00e9\""};
      put(b, odd ? weird[pick(4)] : usual[pick(100) == 0 ? 4 + pick(4) : pick(4)]); /* 4..7: refused */
      break;
    }
    case 3: { /* currency */
      static const char *const usual[] = {"\"USD\"", "\"EUR\"", "\"JPY\"", "\"XXX\"", "\"usd\"", "7"};
      static const char *const weird[] = {"\"U\\u0053D\"", "null", "\"\xc3\xa9\""};
      put(b, odd ? weird[pick(3)] : usual[pick(100) == 0 ? 3 + pick(3) : pick(3)]); /* 3..5: refused */
      break;
    }
    case 4: { /* pending */
      static const char *const usual[] = {"true", "false", "1", "\"true\""};
      put(b, odd ? "null" : usual[pick(100) == 0 ? 2 + pick(2) : pick(2)]); /* 2, 3: refused */
      break;
    }
    case 5: { /* timeout_s */
      static const char *const usual[] = {"0", "30", "86400", "99999999", "7"};
      static const char *const weird[] = {"1.5", "-1", "3e2", "null"};
      put(b, odd ? weird[pick(4)] : usual[pick(100) == 0 ? 1 + pick(4) : 0]); /* > 0: pending only */
      break;
    }
    case 6: { /* description */
      if (odd) {
        static const char *const weird[] = {"\"a\\\"b\"", "\"caf\xc3\xa9\"", "\"tab\\there\"", "null", "\"\\u0041\""};
        put(b, weird[pick(5)]);
      } else {
        size_t n = pick(20) == 0 ? 400 + pick(300) : pick(40); /* past 512 bytes: both refuse */
        t[0] = '"';
        for (size_t i = 0; i < n; i++) t[1 + i] = (char)(' ' + (char)pick(95));
        for (size_t i = 0; i < n; i++)
          if (t[1 + i] == '"' || t[1 + i] == '\\') t[1 + i] = 'x';
        t[1 + n] = '"';
        t[2 + n] = '\0';
        put(b, t);
      }
      break;
    }
    default: /* metadata: always an object, left to cJSON */
      *unusual = true;
      put(b, pick(2) ? "{\"k\":\"v\"}" : "{}");
      break;
  }
}

static const char *const names[] = {"debit_account_id", "credit_account_id", "amount", "currency",
                                    "pending", "timeout_s", "description", "metadata"};

static void item(buf_t *b, bool allow_unusual, bool *unusual) {
  /* The three required members and a random subset of the optional ones, in random order. */
  int order[8], members = 0;
  order[members++] = 0;
  order[members++] = 1;
  order[members++] = 2;
  for (int f = 3; f < 8; f++)
    if (pick(3) == 0 && (f != 7 || allow_unusual)) order[members++] = f;
  if (pick(50) == 0) members--; /* sometimes without one: both refuse */
  for (int i = members - 1; i > 0; i--) {
    int j = (int)pick((unsigned)i + 1), x = order[i];
    order[i] = order[j];
    order[j] = x;
  }
  put(b, "{");
  for (int k = 0; k < members; k++) {
    int f = order[k];
    if (k) {
      ws(b);
      put(b, ",");
    }
    ws(b);
    put(b, "\"");
    if (allow_unusual && pick(40) == 0) {
      put(b, pick(2) ? "debit_account_idx" : "amount\\u0020");
      *unusual = true;
    } else {
      put(b, names[f]);
    }
    put(b, "\"");
    ws(b);
    put(b, ":");
    ws(b);
    value(b, f, allow_unusual, unusual);
  }
  if (allow_unusual && pick(30) == 0) { /* a repeated member */
    put(b, ",\"amount\":\"1\"");
    *unusual = true;
  }
  ws(b);
  put(b, "}");
}

static void body(buf_t *b, bool allow_unusual, bool *unusual) {
  b->len = 0;
  put(b, "");
  *unusual = false;
  ws(b);
  put(b, "{");
  ws(b);
  int atomic = (int)pick(3); /* 0 none, 1 before, 2 after */
  static const char *const atomics[] = {"true", "false"};
  if (atomic == 1) {
    put(b, "\"atomic\":");
    ws(b);
    put(b, atomics[pick(2)]);
    ws(b);
    put(b, ",");
    ws(b);
  }
  put(b, "\"transfers\"");
  ws(b);
  put(b, ":");
  ws(b);
  put(b, "[");
  unsigned n = 1 + pick(pick(10) == 0 ? 300 : 12);
  if (allow_unusual && pick(40) == 0) {
    n = 0;
    *unusual = true;
  }
  for (unsigned i = 0; i < n; i++) {
    if (i) {
      ws(b);
      put(b, ",");
    }
    ws(b);
    item(b, allow_unusual, unusual);
  }
  ws(b);
  put(b, "]");
  if (atomic == 2) {
    ws(b);
    put(b, ",\"atomic\":");
    put(b, allow_unusual && pick(10) == 0 ? "null" : atomics[pick(2)]);
  }
  ws(b);
  put(b, "}");
  ws(b);
  if (allow_unusual && pick(25) == 0) {
    put(b, pick(2) ? "x" : "{}");
    *unusual = true;
  }
  if (allow_unusual && pick(25) == 0 && b->len > 2) {
    b->len -= 1 + pick((unsigned)(b->len - 1)); /* truncated */
    b->p[b->len] = '\0';
    *unusual = true;
  }
}


/* Byte for byte but the extra pointer (the extras themselves compared). */
static bool same_single(const engine_transfer_in_t *a, const engine_transfer_in_t *b) {
  engine_transfer_in_t x = *a, y = *b;
  if (x.extra_len != y.extra_len || (x.extra_len && memcmp(x.extra, y.extra, x.extra_len) != 0)) return false;
  x.extra = y.extra = NULL;
  return memcmp(&x, &y, sizeof x) == 0;
}

static bool same(const api_batch_t *a, const api_batch_t *b) {
  if (a->count != b->count || a->atomic != b->atomic) return false;
  for (uint32_t i = 0; i < a->count; i++)
    if (!same_single(&a->items[i], &b->items[i])) return false;
  return true;
}

static void test_fixed(void) {
  static const char *const accepted[] = {
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"}]}",
      " {\n \"atomic\" : true , \"transfers\" : [ {\"amount\":\"5\",\"credit_account_id\":2,\"debit_account_id\":3,"
      "\"currency\":\"USD\",\"description\":\"rent, May\",\"pending\":true,\"timeout_s\":60} ] } \r\n",
      /* The usual items (quick_item): any order, whitespace, the largest id it takes, and an
       * item of another shape between two of them. */
      "{\"transfers\":[ { \"currency\" : \"EUR\" , \"amount\":\"12.345\",\"credit_account_id\":999999999999999,"
      " \"debit_account_id\" :7 } ,{\"debit_account_id\":1,\"credit_account_id\":2,\"amount\":\"3\",\"pending\":false},"
      "{\"debit_account_id\":\t10,\"credit_account_id\":20,\"amount\":\"0.5\"}\n]}",
  };
  static const char *const declined[] = {
      "{\"transfers\":[]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"}],\"x\":1}",
      "{\"transfers\":[{\"debit_account_id\":1e1,\"credit_account_id\":12,\"amount\":\"0.01\"}]}",
      "{\"transfers\":[{\"debit_account_id\":011,\"credit_account_id\":12,\"amount\":\"0.01\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\",\"metadata\":{}}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\",\"description\":\"\\u0041\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"abc\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"}]} x",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\",\"amount\":\"1\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"}],\"transfers\":[]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"}",
      "{\"atomic\":null,\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"}]}",
      /* Near misses of the usual item: each is refused, or left to cJSON, by both paths. */
      "{\"transfers\":[{\"debit_account_id\":0,\"credit_account_id\":12,\"amount\":\"0.01\"}]}",
      "{\"transfers\":[{\"debit_account_id\":1234567890123456,\"credit_account_id\":12,\"amount\":\"0.01\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11.0,\"credit_account_id\":12,\"amount\":\"0.01\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":-12,\"amount\":\"0.01\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"-1\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\",\"currency\":\"usd\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\",\"currency\":\"U\\u0053D\"}]}",
      "{\"transfers\":[{\"debit\\u005faccount_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"1\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"1\x7f\"}]}",
      "{\"transfers\":[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":1}]}",
  };
  for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
    api_batch_t f, s;
    bool fa = api_batch_parse_fast(accepted[i], strlen(accepted[i]), &f);
    bool sa = api_batch_parse_body(accepted[i], strlen(accepted[i]), &s);
    CHECKM(fa && sa && same(&f, &s), "fixed body %zu: fast %d, cJSON %d, same", i, fa, sa);
    api_batch_free(&f);
    api_batch_free(&s);
  }
  for (size_t i = 0; i < sizeof declined / sizeof declined[0]; i++) {
    api_batch_t f;
    CHECKM(!api_batch_parse_fast(declined[i], strlen(declined[i]), &f), "fixed unusual body %zu declined", i);
    CHECKM(f.items == NULL && f.results == NULL && f.extra == NULL, "nothing left allocated");
  }
}

static void test_generated(void) {
  buf_t b = {0};
  unsigned fast_ok = 0, both_ok = 0, usual = 0, mismatched = 0, unequal = 0;
  for (int round = 0; round < 4000; round++) {
    bool unusual = false, allow = round % 2 == 1;
    body(&b, allow, &unusual);
    api_batch_t f, s;
    bool fa = api_batch_parse_fast(b.p, b.len, &f);
    bool sa = api_batch_parse_body(b.p, b.len, &s);
    if (fa) {
      fast_ok++;
      if (!sa || !same(&f, &s)) {
        if (unequal++ < 3) fprintf(stderr, "fast accepted but cJSON %s: %s\n", sa ? "differs" : "refused", b.p);
      }
    }
    if (!unusual) {
      usual++;
      both_ok += fa && sa;
      if (fa != sa && mismatched++ < 3) fprintf(stderr, "usual body, fast %d cJSON %d: %.300s\n", fa, sa, b.p);
    }
    api_batch_free(&f);
    api_batch_free(&s);
  }
  free(b.p);
  CHECKM(unequal == 0, "%u bodies the fast path accepted differ from the cJSON path", unequal);
  CHECKM(mismatched == 0, "%u usual bodies where the two paths disagree on acceptance", mismatched);
  CHECKM(both_ok > usual / 4, "the fast path accepted %u of %u usual bodies", both_ok, usual);
  printf("batch bodies: 4000 generated, %u usual, %u accepted by the fast path\n", usual, fast_ok);
}

/* POST /v1/transfers: one object through api_transfer_parse_fast and through the cJSON path
 * as the server runs it (api_transfer_parse_body). */

static void test_single(void) {
  static char fx[LEDGER_EXTRA_BYTES_MAX], sx[LEDGER_EXTRA_BYTES_MAX];
  engine_transfer_in_t f, sl;
  static const char *const declined[] = {
      "{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"} x",
      "{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"",
      "{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\",\"transfers\":[]}",
      "{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"abc\"}", /* the checks refuse it */
      "{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\",\"description\":\"\\u0041\"}",
      "[{\"debit_account_id\":11,\"credit_account_id\":12,\"amount\":\"0.01\"}]",
  };
  for (size_t i = 0; i < sizeof declined / sizeof declined[0]; i++)
    CHECKM(!api_transfer_parse_fast(declined[i], strlen(declined[i]), &f, fx), "fixed single body %zu declined", i);
  const char *ok = " {\"amount\":\"12.5\",\"credit_account_id\":2,\"debit_account_id\":3,\"description\":\"rent\"}\n";
  CHECKM(api_transfer_parse_fast(ok, strlen(ok), &f, fx) && api_transfer_parse_body(ok, strlen(ok), &sl, sx) && same_single(&f, &sl),
         "fixed single body accepted by both, the same");

  buf_t b = {0};
  unsigned fast_ok = 0, usual = 0, mismatched = 0, unequal = 0;
  for (int round = 0; round < 4000; round++) {
    bool unusual = false, allow = round % 2 == 1;
    b.len = 0;
    put(&b, "");
    ws(&b);
    item(&b, allow, &unusual);
    ws(&b);
    bool fa = api_transfer_parse_fast(b.p, b.len, &f, fx);
    bool sa = api_transfer_parse_body(b.p, b.len, &sl, sx);
    if (fa) {
      fast_ok++;
      if ((!sa || !same_single(&f, &sl)) && unequal++ < 3)
        fprintf(stderr, "single: fast accepted but cJSON %s: %s\n", sa ? "differs" : "refused", b.p);
    }
    if (!unusual) {
      usual++;
      if (fa != sa && mismatched++ < 3) fprintf(stderr, "usual single body, fast %d cJSON %d: %.300s\n", fa, sa, b.p);
    }
  }
  free(b.p);
  CHECKM(unequal == 0, "%u single bodies the fast path accepted differ from the cJSON path", unequal);
  CHECKM(mismatched == 0, "%u usual single bodies where the two paths disagree on acceptance", mismatched);
  CHECKM(fast_ok > usual / 4, "the fast path accepted %u of %u usual single bodies", fast_ok, usual);
  printf("single bodies: 4000 generated, %u usual, %u accepted by the fast path\n", usual, fast_ok);
}

int main(void) {
  test_fixed();
  test_generated();
  test_single();
  return check_report("test_api_batch");
}
