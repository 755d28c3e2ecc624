/*
 * limits.h — every limit of ledgerd in one place, with the reason beside it (SQLite habit).
 *
 * A limit is a promise: nothing in the process grows past it. Changing one changes memory use
 * or the wire contract, so each says which. Relations between limits are static_asserts at the
 * bottom.
 */
#ifndef LEDGER_LIMITS_H
#define LEDGER_LIMITS_H

#include <assert.h>

/* ---- wire ---- */
/* Batch endpoint: 8,190 transfers of ~110 bytes of JSON each fit in 1 MiB; 2 MiB leaves room
 * for descriptions. Other routes take far smaller bodies (see API_BODY_BYTES_MAX). */
#define LEDGER_BODY_BYTES_MAX (2u * 1024u * 1024u)
/* Any single-object route: an account or a transfer with 16 metadata pairs fits in 16 KiB. */
#define API_BODY_BYTES_MAX (64u * 1024u)
#define API_BATCH_TRANSFERS_MAX 8190u /* API.md: "up to 8190" */
#define API_PAGE_LIMIT_DEFAULT 50u
#define API_PAGE_LIMIT_MAX 1000u
#define API_IDEMPOTENCY_KEY_BYTES_MAX 128u /* API.md: 1-128 printable ASCII */
#define API_DESCRIPTION_BYTES_MAX 512u
#define API_METADATA_PAIRS_MAX 16u
#define API_METADATA_KEY_BYTES_MAX 64u
#define API_METADATA_VALUE_BYTES_MAX 256u
/* Extra per transfer/account kept in the log: description + metadata as compact JSON. */
#define LEDGER_EXTRA_BYTES_MAX 8192u
#define API_REGION_BYTES_MAX 32u
#define API_QUERY_TEXT_CHARS_MAX 64u /* search q: characters (UTF-8) */
/* Responses: a page of 1000 history entries of ~400 bytes. */
#define API_RESPONSE_BYTES_MAX (8u * 1024u * 1024u)

/* ---- net ---- */
#define NET_CONNECTIONS_MAX 20000u /* fds are cheap; 256 KiB of buffers each worst case */
#define NET_HEADER_TIMEOUT_MS 10000u
#define NET_IDLE_TIMEOUT_MS 60000u

/* ---- engine ---- */
/* Commands waiting for the engine. Full -> 503 + Retry-After. 64 Ki commands is ~65 ms of work
 * at 1 M/s: longer queues only add latency. A batch request counts as one command. */
#define ENGINE_QUEUE_COMMANDS_MAX 65536u
/* Commands applied and made durable together. Bounds the group-commit buffer and latency. */
#define ENGINE_BATCH_COMMANDS_MAX 4096u
/* Transfers (including the members of batch requests) per engine batch. */
#define ENGINE_BATCH_TRANSFERS_MAX 65536u
/* Bytes of log written per engine batch (one write, one fdatasync). */
#define ENGINE_BATCH_LOG_BYTES_MAX (64u * 1024u * 1024u)
/* In-memory tables. Reserved as virtual memory up front, touched as they fill; a create past
 * the limit is refused with 503 capacity_exhausted, never a crash. */
#define ENGINE_ACCOUNTS_MAX (32u * 1024u * 1024u)
#define ENGINE_TRANSFERS_MAX (256ull * 1024u * 1024u)
/* Idempotency keys remembered at once (open addressing, 2x slots). Keys older than the
 * retention are dropped; a full table answers 503 rather than forgetting a live key. */
#define ENGINE_IDEMPOTENCY_KEYS_MAX (8u * 1024u * 1024u)
#define ENGINE_IDEMPOTENCY_RETENTION_MS_DEFAULT (24ull * 3600u * 1000u)
/* Pending (two-phase) transfers alive at once. */
#define ENGINE_PENDING_MAX (4u * 1024u * 1024u)
#define ENGINE_PENDING_TIMEOUT_S_MAX (30u * 24u * 3600u)
/* Users, API keys, live credentials (sessions + keys) and the in-memory audit window. */
#define ENGINE_USERS_MAX (1u * 1024u * 1024u)
#define ENGINE_API_KEYS_MAX (64u * 1024u)
#define ENGINE_CREDENTIALS_MAX (4u * 1024u * 1024u)
#define ENGINE_AUDIT_RING_EVENTS (1u * 1024u * 1024u) /* older events stay in the log */
#define AUTH_SESSION_TTL_S_DEFAULT (12u * 3600u)
/* Regions are interned: a short, bounded list configured by use. */
#define ENGINE_REGIONS_MAX 256u
/* Records a list or history read may step over on the engine thread before it answers with
 * a short page and a cursor (~1 ms of work): reads never stall the writer for long. */
#define ENGINE_SCAN_STEPS_MAX 100000u
/* A text search (q) matches at most this many candidates' descriptions per request (then a
 * short page and a cursor). The engine only collects them (24 bytes each); the reads and the
 * matching run off the engine thread (api_v1.c), at most API_TEXT_SEARCHES_MAX at a time. */
#define ENGINE_SEARCH_TEXT_CANDIDATES_MAX 20000u
#define API_TEXT_SEARCHES_MAX 32u
/* The engine wakes at least this often to expire pending transfers. */
#define ENGINE_TICK_MS 100u
/* A batch's write + fdatasync above this is logged (engine.c, commit_batch), at most once a
 * second with the count of the ones not logged: a stall of the whole server is then in its
 * log, with the commit that saw it (docs/storage.md). */
#define ENGINE_SLOW_COMMIT_MS 100u
#define ENGINE_SNAPSHOT_GROWTH_PCT_MAX 1000u /* engine_config_t.snapshot_growth_pct, ledgerd --snapshot-growth-pct */
#define ENGINE_COMMIT_INTERVAL_NS_MAX 10000000000ull /* engine_config_t.commit_interval_ns (ledgerd: 100 ms) */
/* A checkpoint (snapshot) is taken after this many log bytes since the last one, or more with
 * engine_config_t.snapshot_growth_pct (ledgerd --snapshot-growth-pct). */
#define ENGINE_SNAPSHOT_LOG_BYTES_DEFAULT (256ull * 1024u * 1024u)

static_assert(API_BATCH_TRANSFERS_MAX <= ENGINE_BATCH_TRANSFERS_MAX,
              "one batch request must fit in one engine batch");
static_assert(API_BODY_BYTES_MAX <= LEDGER_BODY_BYTES_MAX, "route limit within the wire limit");

#endif
