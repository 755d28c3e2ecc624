/*
 * test_auth.c — the token hash memo (auth_token_hash_memo, src/auth/auth.c): it always gives
 * what auth_token_hash gives, for tokens seen before (from the memo) and new ones, when tokens
 * share a slot, and when more tokens come than it has slots.
 */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "check.h"

/* A token of len visible characters, different for every (seed, len). */
static void token_make(char *out, size_t len, uint32_t seed) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  uint64_t x = (uint64_t)seed * 0x9e3779b97f4a7c15u + len;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = alphabet[x % 64u];
  }
  out[len] = '\0';
}

/* Checks one lookup against the plain hash. */
static void check_one(auth_memo_t *m, const char *t) {
  uint8_t want[32], got[32];
  auth_token_hash(t, strlen(t), want);
  memset(got, 0, sizeof got);
  auth_token_hash_memo(m, t, strlen(t), got);
  CHECK(memcmp(want, got, 32) == 0);
}

static void test_same_as_plain(void) {
  auth_memo_t m;
  auth_memo_init(&m);
  char t[AUTH_TOKEN_TEXT_BYTES];
  /* every length, twice each: first a miss, then a hit, both the plain hash */
  for (size_t len = 1; len < AUTH_TOKEN_TEXT_BYTES; len++) {
    token_make(t, len, 7);
    uint64_t misses = m.misses, hits = m.hits;
    check_one(&m, t);
    CHECK_EQ(m.misses, misses + 1); /* new: computed */
    check_one(&m, t);
    CHECK_EQ(m.hits, hits + 1); /* then from the memo */
  }
  /* A token repeated right away is always a hit. */
  token_make(t, 47, 1);
  check_one(&m, t);
  uint64_t hits = m.hits;
  check_one(&m, t);
  CHECK_EQ(m.hits, hits + 1);
  auth_memo_clear(&m);
}

/* Far more tokens than slots, in rounds: each answer is right whatever was evicted, and tokens
 * that share a slot (there must be many: 4,096 tokens in 64 slots) never get each other's. */
static void test_many_tokens(void) {
  auth_memo_t m;
  auth_memo_init(&m);
  enum { TOKENS = 4096 };
  char t[AUTH_TOKEN_TEXT_BYTES];
  for (int round = 0; round < 3; round++) {
    for (uint32_t i = 0; i < TOKENS; i++) {
      token_make(t, 47, i);
      check_one(&m, t);
      check_one(&m, t); /* now in its slot */
    }
  }
  CHECK(m.hits >= 3u * TOKENS);
  CHECK(m.misses >= 3u * TOKENS); /* every round evicts everything from before */
  /* Slots come from the tag under the memo's own key. Tokens A and B that share a slot
   * under that key (found here with the key) push each other out on every turn; C, alone in
   * its slot, misses once: A B C A B C ... 100 times is 100 + 100 + 1 misses. A memo that
   * used any other key (or none) would put A and B apart, nearly always. */
  auth_memo_t small;
  auth_memo_init(&small);
  char ta[AUTH_TOKEN_TEXT_BYTES] = "a", tb[AUTH_TOKEN_TEXT_BYTES] = "b", tc[AUTH_TOKEN_TEXT_BYTES] = "c";
  uint32_t seen_seed[AUTH_MEMO_SLOTS];
  bool seen[AUTH_MEMO_SLOTS] = {false};
  bool pair = false, alone = false;
  unsigned pair_slot = 0;
  for (uint32_t seed = 100000; !(pair && alone) && seed < 200000; seed++) {
    uint8_t tag[16];
    uint32_t at;
    token_make(t, 47, seed);
    crypto_shorthash_siphashx24(tag, (const unsigned char *)t, strlen(t), small.key);
    memcpy(&at, tag, sizeof at);
    unsigned slot = at & (AUTH_MEMO_SLOTS - 1u);
    if (!pair && seen[slot]) {
      token_make(ta, 47, seen_seed[slot]);
      memcpy(tb, t, sizeof t);
      pair = true;
      pair_slot = slot;
    } else if (pair && !alone && slot != pair_slot) {
      memcpy(tc, t, sizeof t);
      alone = true;
    }
    seen[slot] = true;
    seen_seed[slot] = seed;
  }
  CHECK(pair && alone);
  for (int r = 0; r < 100; r++) {
    check_one(&small, ta);
    check_one(&small, tb);
    check_one(&small, tc);
  }
  CHECK_EQ(small.misses, 201u);
  CHECK_EQ(small.hits, 99u);
  auth_memo_clear(&m);
  auth_memo_clear(&small);
}

/* Tokens that differ in one character, or are prefixes of each other, are told apart. */
static void test_near_tokens(void) {
  auth_memo_t m;
  auth_memo_init(&m);
  char t[AUTH_TOKEN_TEXT_BYTES];
  token_make(t, 47, 3);
  for (int r = 0; r < 2; r++) {
    for (size_t i = 0; i < 47; i++) {
      char saved = t[i];
      t[i] = saved == 'A' ? 'B' : 'A';
      check_one(&m, t);
      t[i] = saved;
      check_one(&m, t);
    }
    for (size_t len = 1; len <= 47; len++) {
      char p[AUTH_TOKEN_TEXT_BYTES];
      memcpy(p, t, len);
      p[len] = '\0';
      check_one(&m, p);
    }
  }
  auth_memo_clear(&m);
}

/* Each memo draws its own key; clearing wipes it. */
static void test_keys(void) {
  auth_memo_t a, b;
  auth_memo_init(&a);
  auth_memo_init(&b);
  CHECK(memcmp(a.key, b.key, sizeof a.key) != 0);
  check_one(&a, "lds_token");
  auth_memo_clear(&a);
  static const uint8_t zero[sizeof a] = {0};
  CHECK(memcmp(&a, zero, sizeof a) == 0);
}

int main(void) {
  if (auth_init() != 0) {
    fprintf(stderr, "test_auth: sodium_init failed\n");
    return 1;
  }
  test_same_as_plain();
  test_many_tokens();
  test_near_tokens();
  test_keys();
  return check_report("test_auth");
}
