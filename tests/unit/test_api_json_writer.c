/*
 * test_api_json_writer.c — the response writer (src/api/api_json.c): jw_str copies runs of
 * bytes that need no escaping 8 at a time, so it is checked against a plain byte-by-byte
 * reference for every byte value at every position of strings of every length up to 40
 * (each starting at every alignment), for random strings, and for strings that cJSON must
 * parse back to the input. jw_key, jw_money and jw_time write in one piece: checked for their
 * exact text, their commas, and the writer's bound (overflow, never a write past it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "check.h"

/* The plain escaper jw_str must match: '"' and '\\' escaped with a backslash, bytes below
 * 0x20 as \u00XX (lowercase hex), every other byte as it is. */
static size_t ref_str(const unsigned char *s, size_t n, char *out) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  out[o++] = '"';
  for (size_t i = 0; i < n; i++) {
    unsigned char c = s[i];
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c < 0x20) {
      out[o++] = '\\';
      out[o++] = 'u';
      out[o++] = '0';
      out[o++] = '0';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    } else {
      out[o++] = (char)c;
    }
  }
  out[o++] = '"';
  out[o] = '\0';
  return o;
}

static int mismatches;

static void check_one(const unsigned char *s, size_t n) {
  char want[6 * 64 + 3];
  size_t wn = ref_str(s, n, want);
  jw_t w = {0};
  jw_str(&w, (const char *)s, n);
  if (w.overflow || w.len != wn || memcmp(w.buf, want, wn) != 0 || w.buf[w.len] != '\0') {
    if (mismatches++ < 5) {
      fprintf(stderr, "jw_str mismatch, n=%zu: got %.*s want %s\n", n, (int)w.len, w.buf ? w.buf : "", want);
    }
  }
  free(w.buf);
}

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void test_str_every_byte_everywhere(void) {
  unsigned char raw[64 + 8];
  for (size_t align = 0; align < 8; align++) {
    unsigned char *s = raw + align;
    for (size_t n = 0; n <= 40; n++) {
      for (size_t pos = 0; pos < (n ? n : 1); pos++) {
        for (unsigned v = 0; v < 256; v++) {
          memset(s, 'a', n);
          if (n) s[pos] = (unsigned char)v;
          check_one(s, n);
        }
      }
    }
  }
  CHECK_EQ(mismatches, 0);
}

/* Random bytes, biased toward the ones that matter (and toward runs of clean bytes). */
static void test_str_random(void) {
  static const unsigned char special[] = {'"', '\\', 0x00, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x5b, 0x5c,
                                          0x5d, 0x7f, 0x80, 0x9f, 0xa2, 0xdc, 0xe2, 0xff};
  unsigned char s[64];
  for (int round = 0; round < 200000; round++) {
    size_t n = (size_t)(next() % 64);
    unsigned clean_bias = (unsigned)(next() % 4);
    for (size_t i = 0; i < n; i++) {
      uint64_t r = next();
      if (r % 4 < clean_bias) s[i] = (unsigned char)('a' + r % 26);
      else if (r % 3 == 0) s[i] = special[(r >> 8) % sizeof special];
      else s[i] = (unsigned char)(r >> 16);
    }
    check_one(s, n);
  }
  CHECK_EQ(mismatches, 0);
}

/* What the writer writes is JSON that gives back the input (valid UTF-8 input only: cJSON
 * keeps bytes as they are). */
static void test_str_round_trip(void) {
  const char *cases[] = {"", "plain", "quote \" in", "back\\slash", "tab\tnew\nline\r", "\x01\x02\x1f end",
                         "caf\xc3\xa9 \xe2\x82\xac 12", "eight!!!\"eight!!!", "0123456789abcdef\\"};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    jw_t w = {0};
    jw_str(&w, cases[i], strlen(cases[i]));
    cJSON *j = cJSON_ParseWithLength(w.buf, w.len);
    CHECK(cJSON_IsString(j));
    if (cJSON_IsString(j)) CHECK_STR(j->valuestring, cases[i]);
    cJSON_Delete(j);
    free(w.buf);
  }
}

static void test_key_money_time(void) {
  jw_t w = {0};
  jw_open(&w, '{');
  jw_key(&w, "id");
  jw_u64(&w, 7);
  jw_key(&w, "amount");
  jw_money(&w, -12345, 2);
  jw_key(&w, "list");
  jw_open(&w, '[');
  jw_close(&w, ']');
  jw_key_str(&w, "currency", "USD");
  jw_key(&w, "created_at");
  jw_time(&w, 1795348800123);
  jw_key(&w, "obj");
  jw_open(&w, '{');
  jw_key(&w, "inner");
  jw_lit(&w, "true");
  jw_close(&w, '}');
  jw_close(&w, '}');
  CHECK(!w.overflow);
  CHECK_STR(w.buf, "{\"id\":7,\"amount\":\"-123.45\",\"list\":[],\"currency\":\"USD\","
                   "\"created_at\":\"2026-11-22T12:00:00.123Z\",\"obj\":{\"inner\":true}}");
  CHECK_EQ(strlen(w.buf), w.len);
  free(w.buf);
}

/* At the bound: with every amount of room from 0 to 90 bytes left under API_RESPONSE_BYTES_MAX,
 * each writer either writes all of its text (and the NUL) inside the buffer or sets overflow
 * and writes nothing (jw_key_str, two writes, may write its key before the value overflows). The buffer is exactly its capacity (realloc), so a byte past it is a
 * heap overflow for AddressSanitizer (make test builds with it). */
static void test_bound(void) {
  jw_t w = {0};
  char *filler = calloc(1, API_RESPONSE_BYTES_MAX);
  if (!filler) {
    CHECK(filler != NULL);
    return;
  }
  memset(filler, 'x', API_RESPONSE_BYTES_MAX - 1);
  jw_raw(&w, filler, API_RESPONSE_BYTES_MAX - 1); /* grows to the bound, exactly */
  CHECK(!w.overflow);
  CHECK_EQ(w.cap, API_RESPONSE_BYTES_MAX);
  free(filler);
  int wrote[5] = {0}, refused[5] = {0};
  for (int which = 0; which < 5; which++) {
    for (size_t room = 0; room <= 90; room++) {
      w.len = API_RESPONSE_BYTES_MAX - 1 - room; /* room bytes, then the NUL */
      w.buf[w.len] = '\0';
      w.overflow = false;
      size_t before = w.len;
      switch (which) {
        case 0: jw_key(&w, "a_key_of_twenty_bytes"); break;
        case 1: jw_money(&w, -123456789, 2); break;
        case 2: jw_time(&w, 1795348800123); break;
        case 3: jw_str(&w, "\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x1f", 10); break; /* 62 bytes, the most */
        default: jw_key_str(&w, "k", "v"); break;
      }
      CHECK(w.len < w.cap);
      CHECK_EQ(w.buf[w.len], '\0');
      if (w.overflow) {
        refused[which]++;
        if (which < 4) CHECK_EQ(w.len, before); /* all or nothing (jw_key_str is two writes) */
      } else {
        wrote[which]++;
        CHECK(w.len > before);
      }
    }
    CHECK(wrote[which] > 0 && refused[which] > 0); /* both sides of the bound were reached */
  }
  free(w.buf);
}

int main(void) {
  test_str_every_byte_everywhere();
  test_str_random();
  test_str_round_trip();
  test_key_money_time();
  test_bound();
  return check_report("test_api_json_writer");
}
