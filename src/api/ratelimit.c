/*
 * ratelimit.c — the sharded token-bucket table behind ratelimit.h (design, guarantees and
 * limits are documented there). Any thread; see ratelimit.h.
 *
 * Layout: RATELIMIT_SHARDS shards, each a mutex, counters and an open-addressing table of a
 * power-of-two number of 32-byte buckets. A key's hash picks the shard (bits 32..37) and a
 * start slot (low bits); the key may only live in the RATELIMIT_PROBE_SLOTS slots from there.
 *
 * Invariants (per shard, under its lock):
 * - a slot is empty iff tokens_pico == RATELIMIT__EMPTY; slots are never emptied again, only
 *   reused, so a lookup may stop at the first empty slot of the window: a key placed past it
 *   would have taken it;
 * - a key occupies at most one slot of its window;
 * - tokens_pico <= the burst of the key's rule as of its last take; full_ns is the first
 *   time the bucket is full again (rounded up, so "refilled" is never judged early).
 * Counters are written only under the shard lock (load + store, no locked instruction) and
 * read by ratelimit_stats with relaxed atomic loads from any thread.
 */
#include "api/ratelimit.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define RATELIMIT__PICO_PER_TOKEN 1000000000000ull /* token amounts are integers of 1e-12 */
#define RATELIMIT__MILLI_PER_TOKEN 1000u           /* rates are integers of 0.001 token/s */
#define RATELIMIT__NS_PER_S 1000000000ull
#define RATELIMIT__EMPTY UINT64_MAX /* tokens_pico of a slot that never held a bucket */

static_assert((RATELIMIT_SHARDS & (RATELIMIT_SHARDS - 1)) == 0, "shards: a power of two");
static_assert(RATELIMIT_SHARDS <= 64u, "shard index uses 6 hash bits (32..37)");
static_assert((RATELIMIT_PROBE_SLOTS & (RATELIMIT_PROBE_SLOTS - 1)) == 0, "window: power of 2");
static_assert(RATELIMIT_CAPACITY_MAX / RATELIMIT_SHARDS <= (1ull << 32),
              "start slot uses the low 32 hash bits");
/* burst_pico < EMPTY, and Retry-After = burst / rate at most fits uint32. */
static_assert((uint64_t)RATELIMIT_BURST_MAX < UINT64_MAX / RATELIMIT__PICO_PER_TOKEN,
              "burst in pico-tokens fits 64 bits");
static_assert((uint64_t)RATELIMIT_BURST_MAX * RATELIMIT__MILLI_PER_TOKEN <= UINT32_MAX,
              "burst / RATE_PER_S_MIN (0.001) seconds fits Retry-After's uint32");
/* rate_milli * NS_PER_S (pico-tokens per second) fits 64 bits. */
static_assert((uint64_t)RATELIMIT_RATE_PER_S_MAX * RATELIMIT__MILLI_PER_TOKEN <
                  UINT64_MAX / RATELIMIT__NS_PER_S,
              "rate in pico-tokens per second fits 64 bits");

typedef struct ratelimit__bucket {
  uint64_t key;
  uint64_t tokens_pico; /* at updated_ns; RATELIMIT__EMPTY if the slot is free */
  uint64_t updated_ns;  /* last refill; never moves backwards */
  uint64_t full_ns;     /* when the bucket holds its burst again (eviction order) */
} ratelimit__bucket_t;
static_assert(sizeof(ratelimit__bucket_t) == 32, "two buckets per cache line");

typedef struct ratelimit__shard {
  _Alignas(64) pthread_mutex_t lock; /* own cache line(s): no false sharing between shards */
  ratelimit__bucket_t *buckets;      /* slots_per_shard, inside ratelimit.buckets */
  _Atomic uint64_t allowed_total;
  _Atomic uint64_t limited_total;
  _Atomic uint64_t evictions_total;
  _Atomic uint64_t buckets_in_use;
} ratelimit__shard_t;

struct ratelimit {
  ratelimit__shard_t shards[RATELIMIT_SHARDS];
  ratelimit__bucket_t *buckets; /* one allocation: RATELIMIT_SHARDS * slots_per_shard */
  size_t slots_per_shard;       /* power of two >= RATELIMIT_PROBE_SLOTS */
};

/* A rule and cost in the integer units of the table. */
typedef struct ratelimit__params {
  uint64_t burst_pico;
  uint64_t cost_pico;
  uint64_t rate_milli_per_s; /* = pico-tokens per ns */
} ratelimit__params_t;

typedef enum {
  RATELIMIT__FOUND,      /* the key's bucket */
  RATELIMIT__EMPTY_SLOT, /* never used */
  RATELIMIT__REUSED,     /* a refilled bucket: equivalent to absent */
  RATELIMIT__EVICTED,    /* a bucket still owing tokens: lossy */
} ratelimit__slot_kind_t;

/* Written only under the shard lock, so a plain load + store (no locked instruction). */
static void ratelimit__bump(_Atomic uint64_t *counter) {
  atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + 1,
                        memory_order_relaxed);
}

/* MurmurHash3's 64-bit finalizer: callers pass hashes, but a weak one (sequential ids, 0)
 * must still spread over shards and slots. */
static uint64_t ratelimit__mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static uint64_t ratelimit__ceil_div(uint64_t a, uint64_t b) {
  LEDGER_ASSERT(b > 0);
  return a / b + (a % b != 0);
}

static uint64_t ratelimit__round(double x) {
  LEDGER_ASSERT(x >= 0 && x < 18e18);
  return (uint64_t)(x + 0.5);
}

static ratelimit__params_t ratelimit__params(const ratelimit_rule_t *rule, double cost) {
  /* Rules are configuration: out of range is a programmer error (NaN fails these too). */
  LEDGER_ASSERT(rule->rate_per_s >= RATELIMIT_RATE_PER_S_MIN);
  LEDGER_ASSERT(rule->rate_per_s <= RATELIMIT_RATE_PER_S_MAX);
  LEDGER_ASSERT(rule->burst >= RATELIMIT_BURST_MIN && rule->burst <= RATELIMIT_BURST_MAX);
  LEDGER_ASSERT(cost > 0);
  if (cost > rule->burst) cost = rule->burst; /* else it could never pass */
  ratelimit__params_t p = {
      .burst_pico = ratelimit__round(rule->burst * (double)RATELIMIT__PICO_PER_TOKEN),
      .cost_pico = ratelimit__round(cost * (double)RATELIMIT__PICO_PER_TOKEN),
      .rate_milli_per_s = ratelimit__round(rule->rate_per_s * RATELIMIT__MILLI_PER_TOKEN),
  };
  if (p.cost_pico == 0) p.cost_pico = 1;
  LEDGER_ASSERT(p.rate_milli_per_s >= 1 && p.burst_pico < RATELIMIT__EMPTY);
  LEDGER_ASSERT(p.cost_pico <= p.burst_pico);
  return p;
}

/* The key's bucket, or the slot to give it: the first empty slot of the window, else the
 * bucket that is full again soonest. One pass over at most RATELIMIT_PROBE_SLOTS slots. */
static ratelimit__bucket_t *ratelimit__find(ratelimit__bucket_t *buckets, size_t mask,
                                            uint64_t start, uint64_t key, uint64_t now_ns,
                                            ratelimit__slot_kind_t *kind_out) {
  ratelimit__bucket_t *victim = NULL;
  for (size_t i = 0; i < RATELIMIT_PROBE_SLOTS; i++) {
    ratelimit__bucket_t *b = &buckets[(start + i) & mask];
    if (b->tokens_pico == RATELIMIT__EMPTY) {
      *kind_out = RATELIMIT__EMPTY_SLOT;
      return b;
    }
    if (b->key == key) {
      *kind_out = RATELIMIT__FOUND;
      return b;
    }
    if (victim == NULL || b->full_ns < victim->full_ns) victim = b;
  }
  LEDGER_ASSERT(victim != NULL);
  *kind_out = victim->full_ns <= now_ns ? RATELIMIT__REUSED : RATELIMIT__EVICTED;
  return victim;
}

/* Adds the tokens of the time since the last update: exact (ns x pico-token/ns). */
static void ratelimit__refill(ratelimit__bucket_t *b, const ratelimit__params_t *p,
                              uint64_t now_ns) {
  if (b->tokens_pico > p->burst_pico) b->tokens_pico = p->burst_pico; /* rule shrank */
  if (now_ns <= b->updated_ns) return; /* another thread read a later clock first */
  uint64_t elapsed_ns = now_ns - b->updated_ns;
  uint64_t missing_pico = p->burst_pico - b->tokens_pico;
  uint64_t add_pico;
  if (__builtin_mul_overflow(elapsed_ns, p->rate_milli_per_s, &add_pico) ||
      add_pico >= missing_pico) {
    b->tokens_pico = p->burst_pico;
  } else {
    b->tokens_pico += add_pico;
  }
  b->updated_ns = now_ns;
  LEDGER_ASSERT(b->tokens_pico <= p->burst_pico);
}

/* Gives the slot to key with a full bucket, counting what happened to its old content. */
static void ratelimit__claim(ratelimit__shard_t *sh, ratelimit__bucket_t *b,
                             ratelimit__slot_kind_t kind, uint64_t key,
                             const ratelimit__params_t *p, uint64_t now_ns) {
  LEDGER_ASSERT(kind != RATELIMIT__FOUND);
  if (kind == RATELIMIT__EMPTY_SLOT) ratelimit__bump(&sh->buckets_in_use);
  if (kind == RATELIMIT__EVICTED) ratelimit__bump(&sh->evictions_total);
  b->key = key;
  b->tokens_pico = p->burst_pico;
  b->updated_ns = now_ns;
}

/* Finds (or claims) key's bucket, refilled to now, with its shard locked. */
static ratelimit__bucket_t *ratelimit__acquire(ratelimit_t *rl, uint64_t key, const ratelimit__params_t *p,
                                               uint64_t now_ns, ratelimit__shard_t **shard_out) {
  const uint64_t hash = ratelimit__mix(key);
  ratelimit__shard_t *sh = &rl->shards[(hash >> 32) & (RATELIMIT_SHARDS - 1)];
  int rc = pthread_mutex_lock(&sh->lock);
  LEDGER_ASSERT(rc == 0);
  ratelimit__slot_kind_t kind;
  ratelimit__bucket_t *b = ratelimit__find(sh->buckets, rl->slots_per_shard - 1, hash, key, now_ns, &kind);
  if (kind == RATELIMIT__FOUND) ratelimit__refill(b, p, now_ns);
  else ratelimit__claim(sh, b, kind, key, p, now_ns);
  *shard_out = sh;
  return b;
}

/* Records when the bucket will be full again (eviction order) and unlocks its shard. */
static void ratelimit__release(ratelimit__shard_t *sh, ratelimit__bucket_t *b, const ratelimit__params_t *p) {
  uint64_t to_full_ns = ratelimit__ceil_div(p->burst_pico - b->tokens_pico, p->rate_milli_per_s);
  if (__builtin_add_overflow(b->updated_ns, to_full_ns, &b->full_ns)) b->full_ns = UINT64_MAX;
  int rc = pthread_mutex_unlock(&sh->lock);
  LEDGER_ASSERT(rc == 0);
}

uint32_t ratelimit_take(ratelimit_t *rl, uint64_t key, const ratelimit_rule_t *rule, double cost,
                        uint64_t now_ns) {
  LEDGER_ASSERT(rl != NULL && rule != NULL);
  const ratelimit__params_t p = ratelimit__params(rule, cost);
  ratelimit__shard_t *sh;
  ratelimit__bucket_t *b = ratelimit__acquire(rl, key, &p, now_ns, &sh);
  uint32_t retry_s = 0;
  if (b->tokens_pico >= p.cost_pico) {
    b->tokens_pico -= p.cost_pico;
    ratelimit__bump(&sh->allowed_total);
  } else {
    /* Whole seconds until the deficit refills; <= burst / RATE_PER_S_MIN (static_assert). */
    uint64_t per_s_pico = p.rate_milli_per_s * RATELIMIT__NS_PER_S;
    uint64_t wait_s = ratelimit__ceil_div(p.cost_pico - b->tokens_pico, per_s_pico);
    LEDGER_ASSERT(wait_s >= 1 && wait_s <= UINT32_MAX);
    retry_s = (uint32_t)wait_s;
    ratelimit__bump(&sh->limited_total);
  }
  ratelimit__release(sh, b, &p);
  return retry_s;
}

void ratelimit_drain(ratelimit_t *rl, uint64_t key, const ratelimit_rule_t *rule, double cost, uint64_t now_ns) {
  LEDGER_ASSERT(rl != NULL && rule != NULL);
  const ratelimit__params_t p = ratelimit__params(rule, cost);
  ratelimit__shard_t *sh;
  ratelimit__bucket_t *b = ratelimit__acquire(rl, key, &p, now_ns, &sh);
  b->tokens_pico -= b->tokens_pico < p.cost_pico ? b->tokens_pico : p.cost_pico;
  ratelimit__release(sh, b, &p);
}

int ratelimit_create(size_t capacity, ratelimit_t **out) {
  LEDGER_ASSERT(out != NULL);
  if (capacity == 0 || capacity > RATELIMIT_CAPACITY_MAX) return LEDGER_EINVAL;
  size_t per_shard = RATELIMIT_PROBE_SLOTS;
  while (per_shard * RATELIMIT_SHARDS < capacity) per_shard *= 2; /* bounded: <= 2^16 */
  const size_t total = per_shard * RATELIMIT_SHARDS;

  ratelimit_t *rl = aligned_alloc(_Alignof(ratelimit_t), sizeof *rl);
  if (rl == NULL) return LEDGER_ENOMEM;
  rl->slots_per_shard = per_shard;
  rl->buckets = malloc(total * sizeof(ratelimit__bucket_t));
  if (rl->buckets == NULL) {
    free(rl);
    return LEDGER_ENOMEM;
  }
  for (size_t i = 0; i < total; i++) {
    rl->buckets[i] = (ratelimit__bucket_t){.tokens_pico = RATELIMIT__EMPTY};
  }
  for (size_t s = 0; s < RATELIMIT_SHARDS; s++) {
    ratelimit__shard_t *sh = &rl->shards[s];
    /* Default mutexes cannot fail to initialise on Linux (no resources allocated). */
    int rc = pthread_mutex_init(&sh->lock, NULL);
    LEDGER_ASSERT(rc == 0);
    sh->buckets = rl->buckets + s * per_shard;
    atomic_init(&sh->allowed_total, 0);
    atomic_init(&sh->limited_total, 0);
    atomic_init(&sh->evictions_total, 0);
    atomic_init(&sh->buckets_in_use, 0);
  }
  *out = rl;
  return LEDGER_OK;
}

void ratelimit_destroy(ratelimit_t *rl) {
  if (rl == NULL) return;
  for (size_t s = 0; s < RATELIMIT_SHARDS; s++) {
    int rc = pthread_mutex_destroy(&rl->shards[s].lock);
    LEDGER_ASSERT(rc == 0); /* EBUSY: destroyed while another thread was inside */
  }
  free(rl->buckets);
  free(rl);
}

void ratelimit_stats(const ratelimit_t *rl, ratelimit_stats_t *out) {
  LEDGER_ASSERT(rl != NULL && out != NULL);
  *out = (ratelimit_stats_t){.buckets_max = (uint64_t)rl->slots_per_shard * RATELIMIT_SHARDS};
  for (size_t s = 0; s < RATELIMIT_SHARDS; s++) {
    const ratelimit__shard_t *sh = &rl->shards[s];
    out->allowed_total += atomic_load_explicit(&sh->allowed_total, memory_order_relaxed);
    out->limited_total += atomic_load_explicit(&sh->limited_total, memory_order_relaxed);
    out->evictions_total += atomic_load_explicit(&sh->evictions_total, memory_order_relaxed);
    out->buckets_in_use += atomic_load_explicit(&sh->buckets_in_use, memory_order_relaxed);
  }
  LEDGER_ASSERT(out->buckets_in_use <= out->buckets_max);
}
