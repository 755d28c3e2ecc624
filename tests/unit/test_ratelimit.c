/*
 * test_ratelimit.c — the token-bucket limiter with an injected clock, exactly: burst then
 * refusal, Retry-After values, refill (including no drift under frequent polling), costs,
 * independent keys, capacity eviction (what it guarantees and how it degrades), a 4-thread
 * hammer on one key that must admit exactly `burst`, and ns/op of ratelimit_take (printed,
 * not asserted: numbers under ASan are not the release numbers).
 *
 * Threads only in test_hammer_one_key and the benchmark. Keys are fixed: a failure
 * reproduces.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/ratelimit.h"
#include "base/base.h"
#include "check.h"

#define NS_PER_S 1000000000ull
#define T0_NS (1000ull * NS_PER_S) /* an arbitrary monotonic "now" */

static ratelimit_t *make(size_t capacity) {
  ratelimit_t *rl = NULL;
  int rc = ratelimit_create(capacity, &rl);
  CHECK_EQ(rc, LEDGER_OK);
  LEDGER_ASSERT(rl != NULL);
  return rl;
}

/* Takes cost from key n times at now; returns how many were allowed. */
static unsigned take_n(ratelimit_t *rl, uint64_t key, const ratelimit_rule_t *r, double cost,
                       unsigned n, uint64_t now_ns) {
  unsigned allowed = 0;
  for (unsigned i = 0; i < n; i++) allowed += ratelimit_take(rl, key, r, cost, now_ns) == 0;
  return allowed;
}

static void test_create(void) {
  ratelimit_t *rl = (ratelimit_t *)&rl; /* must stay untouched on error */
  CHECK_EQ(ratelimit_create(0, &rl), LEDGER_EINVAL);
  CHECK_EQ(ratelimit_create(RATELIMIT_CAPACITY_MAX + 1u, &rl), LEDGER_EINVAL);
  CHECK(rl == (ratelimit_t *)&rl);
  ratelimit_destroy(NULL);

  rl = make(1);
  ratelimit_stats_t st;
  ratelimit_stats(rl, &st);
  CHECK_EQ(st.buckets_max, RATELIMIT_SHARDS * RATELIMIT_PROBE_SLOTS);
  CHECK_EQ(st.allowed_total + st.limited_total + st.evictions_total + st.buckets_in_use, 0);
  ratelimit_destroy(rl);
  rl = make(100000); /* 100000 / 64 = 1563 -> 2048 per shard */
  ratelimit_stats(rl, &st);
  CHECK_EQ(st.buckets_max, 64u * 2048u);
  ratelimit_destroy(rl);
  rl = make(RATELIMIT_CAPACITY_MAX);
  ratelimit_stats(rl, &st);
  CHECK_EQ(st.buckets_max, RATELIMIT_CAPACITY_MAX);
  ratelimit_destroy(rl);
}

static void test_burst_then_refusal(void) {
  ratelimit_t *rl = make(1024);
  const ratelimit_rule_t r = {.rate_per_s = 1, .burst = 5};
  for (int i = 0; i < 5; i++) CHECK_EQ(ratelimit_take(rl, 42, &r, 1, T0_NS), 0);
  CHECK_EQ(ratelimit_take(rl, 42, &r, 1, T0_NS), 1);
  /* A refusal takes nothing: still 1 s, however often it is asked. */
  for (int i = 0; i < 100; i++) CHECK_EQ(ratelimit_take(rl, 42, &r, 1, T0_NS), 1);
  /* now = 0 is a valid clock value too. */
  CHECK_EQ(take_n(rl, 7, &r, 1, 10, 0), 5);
  ratelimit_stats_t st;
  ratelimit_stats(rl, &st);
  CHECK_EQ(st.allowed_total, 10);
  CHECK_EQ(st.limited_total, 106);
  CHECK_EQ(st.buckets_in_use, 2);
  CHECK_EQ(st.evictions_total, 0);
  ratelimit_destroy(rl);
}

static void test_retry_after(void) {
  ratelimit_t *rl = make(1024);
  const ratelimit_rule_t slow = {.rate_per_s = 0.1, .burst = 1};
  CHECK_EQ(ratelimit_take(rl, 1, &slow, 1, T0_NS), 0);
  CHECK_EQ(ratelimit_take(rl, 1, &slow, 1, T0_NS), 10);
  CHECK_EQ(ratelimit_take(rl, 1, &slow, 1, T0_NS + 1), 10); /* 9.999999999 s rounds up */
  CHECK_EQ(ratelimit_take(rl, 1, &slow, 1, T0_NS + 9 * NS_PER_S), 1);
  CHECK_EQ(ratelimit_take(rl, 1, &slow, 1, T0_NS + 10 * NS_PER_S - 1), 1);
  CHECK_EQ(ratelimit_take(rl, 1, &slow, 1, T0_NS + 10 * NS_PER_S), 0); /* exactly on time */

  const ratelimit_rule_t r = {.rate_per_s = 1, .burst = 5};
  CHECK_EQ(take_n(rl, 2, &r, 1, 5, T0_NS), 5);
  CHECK_EQ(ratelimit_take(rl, 2, &r, 1, T0_NS + NS_PER_S / 2), 1); /* 0.5 s -> 1 */
  CHECK_EQ(ratelimit_take(rl, 2, &r, 1, T0_NS + NS_PER_S), 0);

  const ratelimit_rule_t third = {.rate_per_s = 0.3, .burst = 1}; /* 3.33 s -> 4 */
  CHECK_EQ(ratelimit_take(rl, 3, &third, 1, T0_NS), 0);
  CHECK_EQ(ratelimit_take(rl, 3, &third, 1, T0_NS), 4);
  CHECK_EQ(ratelimit_take(rl, 3, &third, 1, T0_NS + 3 * NS_PER_S), 1);
  CHECK_EQ(ratelimit_take(rl, 3, &third, 1, T0_NS + 3333333333ull), 1);
  CHECK_EQ(ratelimit_take(rl, 3, &third, 1, T0_NS + 3333333334ull), 0);

  /* The largest wait a rule allows: burst / rate_min. */
  const ratelimit_rule_t extreme = {.rate_per_s = RATELIMIT_RATE_PER_S_MIN,
                                    .burst = RATELIMIT_BURST_MAX};
  CHECK_EQ(ratelimit_take(rl, 4, &extreme, RATELIMIT_BURST_MAX, T0_NS), 0);
  CHECK_EQ(ratelimit_take(rl, 4, &extreme, RATELIMIT_BURST_MAX, T0_NS), 1000000000u);
  ratelimit_destroy(rl);
}

static void test_refill(void) {
  ratelimit_t *rl = make(1024);
  const ratelimit_rule_t r = {.rate_per_s = 1, .burst = 5};
  CHECK_EQ(take_n(rl, 9, &r, 1, 5, T0_NS), 5);
  CHECK_EQ(take_n(rl, 9, &r, 1, 10, T0_NS + 2 * NS_PER_S), 2);
  CHECK_EQ(ratelimit_take(rl, 9, &r, 1, T0_NS + 2 * NS_PER_S), 1);
  CHECK_EQ(take_n(rl, 9, &r, 1, 10, T0_NS + 1000 * NS_PER_S), 5); /* capped at burst */

  /* A rate that is no whole number of ns per token: 3/s, boundary at 333333333.3 ns. */
  const ratelimit_rule_t r3 = {.rate_per_s = 3, .burst = 3};
  CHECK_EQ(take_n(rl, 10, &r3, 1, 10, T0_NS), 3);
  CHECK_EQ(ratelimit_take(rl, 10, &r3, 1, T0_NS + 333333333ull), 1);
  CHECK_EQ(ratelimit_take(rl, 10, &r3, 1, T0_NS + 333333334ull), 0);

  /* Polling every 1 ms must not lose the sub-token refill of each poll: at 0.5/s exactly
   * one token arrives at +2 s, not later. */
  const ratelimit_rule_t half = {.rate_per_s = 0.5, .burst = 1};
  CHECK_EQ(ratelimit_take(rl, 11, &half, 1, T0_NS), 0);
  unsigned allowed = 0;
  uint64_t first_ok_ns = 0;
  for (uint64_t t = T0_NS + 1000000; t <= T0_NS + 4 * NS_PER_S; t += 1000000) {
    if (ratelimit_take(rl, 11, &half, 1, t) == 0 && allowed++ == 0) first_ok_ns = t;
  }
  CHECK_EQ(first_ok_ns, T0_NS + 2 * NS_PER_S);
  CHECK_EQ(allowed, 2); /* at +2 s and +4 s */

  /* A clock read before another thread's later one: no refill, no credit taken back. */
  CHECK_EQ(take_n(rl, 12, &r, 1, 5, T0_NS + 10 * NS_PER_S), 5);
  CHECK_EQ(ratelimit_take(rl, 12, &r, 1, T0_NS + 9 * NS_PER_S), 1);
  CHECK_EQ(ratelimit_take(rl, 12, &r, 1, T0_NS + 11 * NS_PER_S), 0);

  /* A rule that shrinks caps the tokens already held. */
  const ratelimit_rule_t small = {.rate_per_s = 1, .burst = 2};
  CHECK_EQ(take_n(rl, 13, &r, 1, 1, T0_NS), 1); /* 4 left under burst 5 */
  CHECK_EQ(take_n(rl, 13, &small, 1, 10, T0_NS), 2);
  ratelimit_destroy(rl);
}

static void test_cost(void) {
  ratelimit_t *rl = make(1024);
  const ratelimit_rule_t r = {.rate_per_s = 2, .burst = 10};
  CHECK_EQ(take_n(rl, 5, &r, 3, 10, T0_NS), 3);      /* 9 of 10 */
  CHECK_EQ(ratelimit_take(rl, 5, &r, 3, T0_NS), 1);  /* 2 missing at 2/s */
  CHECK_EQ(ratelimit_take(rl, 5, &r, 1, T0_NS), 0);  /* the 1 left */
  CHECK_EQ(ratelimit_take(rl, 5, &r, 10, T0_NS), 5); /* 10 missing at 2/s */
  CHECK_EQ(take_n(rl, 6, &r, 0.5, 100, T0_NS), 20);  /* fractional cost */
  /* Cost above the burst is charged as the burst: passes on a full bucket only. */
  const ratelimit_rule_t r5 = {.rate_per_s = 1, .burst = 5};
  CHECK_EQ(ratelimit_take(rl, 8, &r5, 8, T0_NS), 0);
  CHECK_EQ(ratelimit_take(rl, 8, &r5, 8, T0_NS), 5);
  CHECK_EQ(ratelimit_take(rl, 8, &r5, 8, T0_NS + 4 * NS_PER_S), 1);
  CHECK_EQ(ratelimit_take(rl, 8, &r5, 8, T0_NS + 5 * NS_PER_S), 0);
  ratelimit_destroy(rl);
}

static void test_independent_keys(void) {
  ratelimit_t *rl = make(4096);
  const ratelimit_rule_t r = {.rate_per_s = 1, .burst = 3};
  CHECK_EQ(take_n(rl, 0, &r, 1, 10, T0_NS), 3);
  CHECK_EQ(take_n(rl, UINT64_MAX, &r, 1, 10, T0_NS), 3);
  CHECK_EQ(take_n(rl, 1, &r, 1, 10, T0_NS), 3);
  CHECK_EQ(ratelimit_take(rl, 0, &r, 1, T0_NS), 1); /* still its own, still empty */
  unsigned allowed = 0;
  for (uint64_t k = 2; k < 1002; k++) allowed += take_n(rl, k, &r, 1, 4, T0_NS);
  CHECK_EQ(allowed, 3000u);
  ratelimit_stats_t st;
  ratelimit_stats(rl, &st);
  CHECK_EQ(st.buckets_in_use, 1003);
  CHECK_EQ(st.evictions_total, 0); /* 1003 keys in 4096 slots: no window overflowed */
  ratelimit_destroy(rl);
}

/*
 * Capacity. Guaranteed (ratelimit.h): a bucket is evicted only for a new key whose window
 * has no empty slot and no bucket full again earlier than it. So a throttled key survives a
 * flood of any size of keys that each owe less than it does; keys that refill before they
 * are displaced are replaced without a lossy eviction; and when the flood's keys each owe
 * more, the limiter degrades toward allowing (documented, checked here so it stays known).
 */
static void test_eviction(void) {
  ratelimit_t *rl = make(1); /* 512 slots */
  ratelimit_stats_t st;
  ratelimit_stats(rl, &st);
  const uint64_t slots = st.buckets_max;
  const ratelimit_rule_t r = {.rate_per_s = 1, .burst = 5};
  const uint64_t active = 0xA11CE;
  CHECK_EQ(take_n(rl, active, &r, 1, 6, T0_NS), 5);
  /* 10x capacity idle keys, one request each, at the same time and half a second later. */
  uint64_t flood_allowed = 0;
  for (uint64_t k = 1; k <= 10 * slots; k++) {
    flood_allowed += ratelimit_take(rl, k << 20, &r, 1, T0_NS + (k & 1) * NS_PER_S / 2) == 0;
  }
  CHECK_EQ(flood_allowed, 10 * slots); /* each new key starts full */
  CHECK_EQ(ratelimit_take(rl, active, &r, 1, T0_NS + NS_PER_S / 2), 1); /* still throttled */
  ratelimit_stats(rl, &st);
  CHECK_EQ(st.buckets_in_use, slots);
  CHECK(st.evictions_total > 0); /* the flood displaced its own, owing, buckets */
  CHECK(st.evictions_total < 10 * slots);
  ratelimit_destroy(rl);

  /* Churn of keys that refill before their slot is needed: no lossy eviction at all. */
  rl = make(1);
  const ratelimit_rule_t quick = {.rate_per_s = 1000, .burst = 1}; /* full again after 1 ms */
  for (uint64_t k = 0; k < 10 * slots; k++) {
    CHECK_EQ(ratelimit_take(rl, k, &quick, 1, T0_NS + k * 1000000), 0);
  }
  ratelimit_stats(rl, &st);
  CHECK_EQ(st.evictions_total, 0);
  CHECK_EQ(st.buckets_in_use, slots);
  ratelimit_destroy(rl);

  /* Degradation: a flood of keys each owing more (exhausted 100-token buckets) displaces the
   * throttled key, which then starts again full: the limiter errs toward allowing. */
  rl = make(1);
  const ratelimit_rule_t big = {.rate_per_s = 1, .burst = 100};
  CHECK_EQ(take_n(rl, active, &r, 1, 6, T0_NS), 5);
  for (uint64_t k = 1; k <= 10 * slots; k++) (void)ratelimit_take(rl, k << 20, &big, 100, T0_NS);
  CHECK_EQ(ratelimit_take(rl, active, &r, 1, T0_NS), 0);
  ratelimit_stats(rl, &st);
  CHECK(st.evictions_total >= 9 * slots);
  ratelimit_destroy(rl);
}

/* ---- threads ---- */
typedef struct worker {
  ratelimit_t *rl;
  pthread_barrier_t *start;
  const ratelimit_rule_t *rule;
  uint64_t key_base; /* keys key_base + (i % keys) */
  uint64_t keys;
  uint64_t ops;
  bool fixed_clock; /* T0_NS for every take, else a virtual clock advancing 1 ns per take */
  uint64_t allowed;
  uint64_t elapsed_ns;
} worker_t;

static void *worker_run(void *arg) {
  worker_t *w = arg;
  (void)pthread_barrier_wait(w->start);
  uint64_t begin_ns = time_mono_ns();
  uint64_t allowed = 0;
  for (uint64_t i = 0; i < w->ops; i++) {
    uint64_t now_ns = w->fixed_clock ? T0_NS : T0_NS + i;
    allowed += ratelimit_take(w->rl, w->key_base + i % w->keys, w->rule, 1, now_ns) == 0;
  }
  w->elapsed_ns = time_mono_ns() - begin_ns;
  w->allowed = allowed;
  return NULL;
}

/* Runs n workers at once; returns the allowed total and the slowest thread's ns/op. */
static uint64_t run_workers(worker_t *w, unsigned n, double *ns_per_op_out) {
  pthread_barrier_t start;
  int rc = pthread_barrier_init(&start, NULL, n);
  LEDGER_ASSERT(rc == 0);
  pthread_t tid[8];
  LEDGER_ASSERT(n <= LEDGER_ARRAY_LEN(tid));
  for (unsigned i = 0; i < n; i++) {
    w[i].start = &start;
    rc = pthread_create(&tid[i], NULL, worker_run, &w[i]);
    LEDGER_ASSERT(rc == 0);
  }
  uint64_t allowed = 0, slowest_ns = 0;
  for (unsigned i = 0; i < n; i++) {
    rc = pthread_join(tid[i], NULL);
    LEDGER_ASSERT(rc == 0);
    allowed += w[i].allowed;
    if (w[i].elapsed_ns > slowest_ns) slowest_ns = w[i].elapsed_ns;
  }
  (void)pthread_barrier_destroy(&start);
  if (ns_per_op_out) *ns_per_op_out = (double)slowest_ns / (double)w[0].ops;
  return allowed;
}

static void test_hammer_one_key(void) {
  ratelimit_t *rl = make(1024);
  const ratelimit_rule_t r = {.rate_per_s = 10, .burst = 1000};
  worker_t w[4];
  for (unsigned i = 0; i < 4; i++) {
    w[i] = (worker_t){
        .rl = rl, .rule = &r, .key_base = 77, .keys = 1, .ops = 50000, .fixed_clock = true};
  }
  CHECK_EQ(run_workers(w, 4, NULL), 1000); /* exactly burst across threads */
  ratelimit_stats_t st;
  ratelimit_stats(rl, &st);
  CHECK_EQ(st.allowed_total, 1000);
  CHECK_EQ(st.limited_total, 4 * 50000 - 1000);
  ratelimit_destroy(rl);
}

/* ns per ratelimit_take, per thread (the slowest), with 4096 keys per thread. */
static void bench(void) {
  ratelimit_t *rl = make(65536);
  const ratelimit_rule_t open = {.rate_per_s = RATELIMIT_RATE_PER_S_MAX,
                                 .burst = RATELIMIT_BURST_MAX};
  const uint64_t ops = 2000000;
  worker_t w[2];
  double ns1, ns2d, ns2s;
  /* Unthrottled: 4096 keys share 1e6 tokens + 1e6/s each; never refused. */
  w[0] = (worker_t){.rl = rl, .rule = &open, .key_base = 1u << 20, .keys = 4096, .ops = ops};
  CHECK_EQ(run_workers(w, 1, &ns1), ops);
  for (unsigned i = 0; i < 2; i++) {
    w[i] = (worker_t){
        .rl = rl, .rule = &open, .key_base = (i + 1ull) << 32, .keys = 4096, .ops = ops};
  }
  CHECK_EQ(run_workers(w, 2, &ns2d), 2 * ops);
  for (unsigned i = 0; i < 2; i++) {
    w[i] = (worker_t){.rl = rl, .rule = &open, .key_base = 5, .keys = 1, .ops = ops};
  }
  /* One bucket for both: 1e6 tokens plus 1e6/s of a virtual clock that advances 1 ns per
   * take of each thread, so most of the second million are refused (same work per take). */
  uint64_t same_allowed = run_workers(w, 2, &ns2s);
  CHECK(same_allowed >= 1000000 && same_allowed <= 1000000 + 2 * ops / 1000 + 1);
  printf("ratelimit_take ns/op: 1 thread %.1f | 2 threads distinct keys %.1f | "
         "2 threads same key %.1f (per thread; %s)\n",
         ns1, ns2d, ns2s,
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
         "sanitizer build"
#else
         "no sanitizers"
#endif
  );
  ratelimit_destroy(rl);
}

int main(void) {
  test_create();
  test_burst_then_refusal();
  test_retry_after();
  test_refill();
  test_cost();
  test_independent_keys();
  test_eviction();
  test_hammer_one_key();
  bench();
  return check_report("test_ratelimit");
}
