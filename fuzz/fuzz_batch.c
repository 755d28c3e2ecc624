/*
 * fuzz_batch.c — libFuzzer target for the batch endpoint's two parsers (src/api/api_batch.c):
 * on arbitrary bytes, whatever the fast path accepts, the cJSON path (as the server runs it:
 * the parse, nothing but whitespace after the value, then api_batch_parse_json) must accept
 * too, with the same count, atomic flag, items and extras. A fast path that declines leaves
 * nothing allocated. The same bytes go through the single-transfer fast path
 * (api_transfer_parse_fast, POST /v1/transfers) against cJSON + api_transfer_from_json.
 *
 * Replayed in `make test` by fuzz/replay_main.c over fuzz/corpus/fuzz_batch.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(cond)                                                                   \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "fuzz_batch: %s failed at line %d\n", #cond, __LINE__);               \
      abort();                                                                               \
    }                                                                                        \
  } while (0)

/* POST /v1/transfers: a body the single fast path accepts must give, through cJSON, the same
 * transfer byte for byte. */
static void single(const char *p, size_t size) {
  static char fx[LEDGER_EXTRA_BYTES_MAX], sx[LEDGER_EXTRA_BYTES_MAX];
  engine_transfer_in_t f, s;
  if (!api_transfer_parse_fast(p, size, &f, fx)) return;
  FUZZ_REQUIRE(api_transfer_parse_body(p, size, &s, sx));
  FUZZ_REQUIRE(f.extra_len == s.extra_len);
  FUZZ_REQUIRE(f.extra_len == 0 || memcmp(f.extra, s.extra, f.extra_len) == 0);
  f.extra = s.extra = NULL;
  FUZZ_REQUIRE(memcmp(&f, &s, sizeof f) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 256 * 1024) return 0;
  const char *p = (const char *)data;
  single(p, size);
  api_batch_t f;
  if (!api_batch_parse_fast(p, size, &f)) {
    FUZZ_REQUIRE(f.items == NULL && f.results == NULL && f.extra == NULL && f.count == 0);
    return 0;
  }
  api_batch_t s;
  FUZZ_REQUIRE(api_batch_parse_body(p, size, &s));
  FUZZ_REQUIRE(f.count == s.count && f.atomic == s.atomic && f.count >= 1);
  for (uint32_t i = 0; i < f.count; i++) {
    engine_transfer_in_t x = f.items[i], y = s.items[i];
    FUZZ_REQUIRE(x.extra_len == y.extra_len);
    FUZZ_REQUIRE(x.extra_len == 0 || memcmp(x.extra, y.extra, x.extra_len) == 0);
    x.extra = y.extra = NULL;
    FUZZ_REQUIRE(memcmp(&x, &y, sizeof x) == 0);
  }
  api_batch_free(&f);
  api_batch_free(&s);
  return 0;
}
