/*
 * ratelimit.h — token-bucket rate limiter shared by every net thread (429 + Retry-After).
 *
 * What: a bucket per 64-bit key (the caller hashes e.g. route class + client address, or
 * route class + credential). A bucket holds up to `burst` tokens and refills at `rate_per_s`;
 * a request takes `cost` tokens or is refused with the seconds to wait.
 *
 * Why one shared limiter: a client's connections land on different net threads, so a
 * per-thread limiter would multiply its limit by the number of threads. One table, split into
 * RATELIMIT_SHARDS shards each behind its own mutex, keeps the limit exact whatever the
 * number of connections, and the unthrottled path costs one uncontended lock and a probe of
 * at most RATELIMIT_PROBE_SLOTS slots (two cache lines).
 *
 * Exactness: tokens are integers of 1e-12 token and rates integers of 0.001 token/s, so the
 * refill of an elapsed time in ns is an exact product (ns x milli-token/s = pico-token): no
 * rounding drifts however often a key is polled, and a test with an injected clock gets exact
 * decisions. The rule's rate is rounded to the nearest 0.001/s, burst and cost to 1e-12.
 *
 * Bounded memory: every bucket is allocated by ratelimit_create (32 bytes each) and the
 * table never grows. A key may live only in the RATELIMIT_PROBE_SLOTS slots after its hash
 * position within its shard (its probe window). A new key takes, in this order: an empty slot
 * of its window; else the bucket of the window that is full again soonest. A bucket that has
 * refilled to its burst is equivalent to an absent one, so reusing it changes no decision and
 * is not counted. Otherwise the chosen bucket still owed tokens: that is a lossy eviction
 * (evictions_total), and the evicted key starts again from a full bucket.
 *
 * Guarantee: a bucket B is evicted only by a new key whose probe window holds no empty slot
 * and no bucket that will be full earlier than B. Hence a throttled key — one that has spent
 * more of its burst than other keys have of theirs, as time-to-full — keeps its bucket
 * through any number of new keys that each spent less (a flood of idle or light clients
 * evicts only each other). A key can lose its bucket only when RATELIMIT_PROBE_SLOTS keys of
 * its window are each at least as far from full as it is.
 *
 * Degradation (deliberate): under an attack with more distinct, each-exhausted keys than
 * capacity, lossy evictions hand evicted keys a fresh bucket, so the limiter degrades toward
 * allowing. The alternative — refusing new keys when the table is full — lets whoever floods
 * the table with cheap keys (spoofed ids, an IPv6 /64) lock out every honest client, turning
 * the limiter itself into the denial of service. The limiter is a fairness layer; the hard
 * bounds on work stay elsewhere (ENGINE_QUEUE_COMMANDS_MAX answers 503 when full,
 * NET_CONNECTIONS_MAX). Watch evictions_total: steadily rising means capacity is too small.
 * Preferring "full soonest" over least-recently-used is on purpose: LRU would evict a
 * throttled key that paused while others flooded, resetting its throttle.
 *
 * Threads: every function except create/destroy may be called from any thread at once.
 * create and destroy must not race with any other call on the same limiter.
 * Ownership: ratelimit_create returns a limiter the caller owns and frees with
 * ratelimit_destroy; the limiter keeps no pointer the caller passed (rule is read during the
 * call only). No allocation after create.
 */
#ifndef LEDGER_API_RATELIMIT_H
#define LEDGER_API_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

/* ---- limits ---- */
/* Shards: 64 mutexes make two net threads meet on one lock only 1/64 of the time (distinct
 * keys), and cost 64 x 128 bytes. A power of two. */
#define RATELIMIT_SHARDS 64u
/* Slots a key may occupy: 8 x 32 bytes = two cache lines per lookup. Larger windows make
 * lossy evictions rarer under a flood but every miss scans them all. */
#define RATELIMIT_PROBE_SLOTS 8u
/* Buckets at most: 4 Mi x 32 bytes = 128 MiB. Capacity is rounded up to RATELIMIT_SHARDS
 * shards of a power of two >= RATELIMIT_PROBE_SLOTS buckets each (see buckets_max). */
#define RATELIMIT_CAPACITY_MAX (4u * 1024u * 1024u)
/* Rules come from configuration, not requests: a rule outside these stops the process
 * (assert). The bounds keep every product in 64 bits and Retry-After within 32 bits:
 * burst / rate <= 1e6 / 0.001 s = 1e9 s < UINT32_MAX. */
#define RATELIMIT_RATE_PER_S_MIN 0.001
#define RATELIMIT_RATE_PER_S_MAX 1000000.0
#define RATELIMIT_BURST_MIN 1.0
#define RATELIMIT_BURST_MAX 1000000.0

typedef struct ratelimit ratelimit_t;

typedef struct ratelimit_rule {
  double rate_per_s; /* tokens added per second, in [RATE_PER_S_MIN, RATE_PER_S_MAX] */
  double burst;      /* bucket size in tokens, in [BURST_MIN, BURST_MAX] */
} ratelimit_rule_t;

/* Takes up to `cost` tokens, as many as there are, and never refuses: a penalty (a failed
 * sign-in) that empties the bucket even when it holds less than the penalty. Thread-safe. */
void ratelimit_drain(ratelimit_t *rl, uint64_t key, const ratelimit_rule_t *rule, double cost, uint64_t now_ns);

typedef struct ratelimit_stats {
  uint64_t allowed_total;   /* takes answered 0 */
  uint64_t limited_total;   /* takes refused (429) */
  uint64_t evictions_total; /* buckets dropped while still owing tokens (lossy) */
  uint64_t buckets_in_use;  /* slots holding a bucket; refilled ones stay until reused, so
                               under churn this reaches buckets_max and stays: expected */
  uint64_t buckets_max;     /* slots allocated (capacity after rounding) */
} ratelimit_stats_t;

/* Allocates a limiter of at least `capacity` buckets (rounded up, see
 * RATELIMIT_CAPACITY_MAX). Errors: LEDGER_EINVAL if capacity is 0 or above
 * RATELIMIT_CAPACITY_MAX; LEDGER_ENOMEM. On error *out is untouched. */
LEDGER_MUST_USE int ratelimit_create(size_t capacity, ratelimit_t **out);
/* Frees everything; NULL is a no-op. */
void ratelimit_destroy(ratelimit_t *rl);

/* Takes `cost` tokens from the bucket of `key` (any value, 0 included) under `rule`.
 * Returns 0 when allowed (tokens taken), else the whole seconds until `cost` tokens will be
 * available (>= 1, rounded up): the Retry-After value. A refusal takes nothing.
 * cost must be > 0 (assert); a cost above the burst is charged as the burst, so such a
 * request passes only on a full bucket instead of never. now_ns is CLOCK_MONOTONIC
 * (time_mono_ns(); injected so tests are exact). Threads read the clock before the lock, so
 * now_ns may be slightly older than a bucket's last update: that time is not refilled twice
 * nor taken back. The rule of a key should not change between calls; if it does, the
 * bucket keeps its tokens, capped at the new burst. */
uint32_t ratelimit_take(ratelimit_t *rl, uint64_t key, const ratelimit_rule_t *rule, double cost,
                        uint64_t now_ns);

/* Counters since create, for /metrics. Each is read atomically, not all together. */
void ratelimit_stats(const ratelimit_t *rl, ratelimit_stats_t *out);

#endif
