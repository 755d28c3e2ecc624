/*
 * engine.h — the ledger: a deterministic state machine over an ordered log, run by one thread.
 *
 * Design (DESIGN.md): net threads build engine_cmd_t objects and engine_submit() them into a
 * bounded lock-free queue. The engine thread takes every waiting command (up to the batch
 * limits), stamps the batch with a gap-free sequence number and a time, applies each command
 * in order to the in-memory state and encodes the batch's log record. The committer thread
 * appends the record to the log with one write and one fdatasync, and only then completes
 * every command of the batch (cmd->done); meanwhile the engine thread applies the next batch
 * (one batch in the write, one being built). Batches are written and answered in order. Reads
 * are commands too: they are answered after the batch they were in is durable (and so every
 * batch before it), so every read sees every acknowledged write (linearizable), and no lock
 * is ever taken on the state.
 *
 * Ownership: a submitted command belongs to the engine until its done callback runs (on the
 * committer thread); the submitter must not touch it in between. Arrays the command points to
 * (batch items, result rows, extra text) are owned by the submitter and must stay valid
 * until done.
 *
 * State owned only by the engine thread; engine_open/engine_close are called by one thread
 * before/after; engine_submit by any thread.
 */
#ifndef LEDGER_ENGINE_H
#define LEDGER_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "base/base.h"

/* ---- results: 0 = ok, else a rejection that changed nothing ---- */
typedef enum {
  ENGINE_OK = 0,
  ENGINE_R_ACCOUNT_NOT_FOUND,
  ENGINE_R_TRANSFER_NOT_FOUND,
  ENGINE_R_INSUFFICIENT_FUNDS,
  ENGINE_R_CURRENCY_MISMATCH,
  ENGINE_R_SAME_ACCOUNT,
  ENGINE_R_ACCOUNT_FROZEN,
  ENGINE_R_LIMIT_EXCEEDED,
  ENGINE_R_TRANSFER_NOT_PENDING,
  ENGINE_R_AMOUNT_EXCEEDS_PENDING,
  ENGINE_R_IDEMPOTENCY_CONFLICT,
  ENGINE_R_BATCH_ABORTED,
  ENGINE_R_INVALID_OPERATION,
  ENGINE_R_CAPACITY_EXHAUSTED,
  ENGINE_R_IDEMPOTENCY_EXPIRED,
  ENGINE_R_INVALID_AMOUNT, /* more fraction digits than the currency has, or overflow */
  ENGINE_R_UNAUTHENTICATED,  /* no valid credential (401; never says which part failed) */
  ENGINE_R_FORBIDDEN,        /* authenticated, but the role may not do this (403) */
  ENGINE_R_USERNAME_TAKEN,   /* 409 */
  ENGINE_R_USER_NOT_FOUND,   /* 404 */
  ENGINE_R_API_KEY_NOT_FOUND, /* 404 */
  ENGINE_R_RULE_REJECTED,     /* 422: a risk rule with action reject fired */
  ENGINE_R_UNDER_REVIEW,      /* 422: a held transfer is settled by its review only */
  ENGINE_R_SUSPICIOUS_NOT_FOUND, /* 404 */
  ENGINE_R_ALREADY_REVIEWED,  /* 409 */
  ENGINE_R_COUNT
} engine_result_t;
/* Stable machine code for a result ("insufficient_funds"). */
const char *engine_result_code(int result);

typedef enum {
  ENGINE_KIND_TRANSFER = 0,
  ENGINE_KIND_DEPOSIT = 1,
  ENGINE_KIND_WITHDRAWAL = 2,
} engine_transfer_kind_t;
const char *engine_kind_name(unsigned kind);

typedef enum {
  ENGINE_STATUS_POSTED = 0,
  ENGINE_STATUS_PENDING = 1,
  ENGINE_STATUS_VOIDED = 2,
} engine_transfer_status_t;
const char *engine_status_name(unsigned status);

/* Transfer flags */
#define ENGINE_TF_PENDING 0x01u    /* created as a pending (two-phase) transfer */
#define ENGINE_TF_SETTLEMENT 0x02u /* the post/void entry of a pending transfer */
#define ENGINE_TF_EXPIRED 0x04u    /* voided by its timeout */
#define ENGINE_TF_SUSPICIOUS 0x08u /* a risk rule fired: it has a suspicious-activity entry */
#define ENGINE_TF_HELD 0x10u       /* a rule held it for review (created pending) */
#define ENGINE_TF_PENDING_ASKED 0x20u /* held, and the client had asked for two-phase itself */
#define ENGINE_TF_EXTRA 0x40u      /* has a description or metadata (its bytes are in the log) */

/* Account */
#define ENGINE_ACCOUNT_KIND_CUSTOMER 0u
#define ENGINE_ACCOUNT_KIND_SYSTEM 1u
#define ENGINE_ACCOUNT_OPEN 0u
#define ENGINE_ACCOUNT_FROZEN 1u
#define ENGINE_AF_OVERDRAFT 0x01u

typedef struct engine_account {
  uint64_t id;
  uint64_t owner_id;
  int64_t balance_minor;
  int64_t pending_debits_minor;
  int64_t pending_credits_minor;
  int64_t created_ms;
  int64_t updated_ms;
  uint64_t history_first_no; /* first transfer touching it (0 = none) */
  uint64_t history_last_no;  /* newest transfer touching it */
  uint64_t extra_pos;        /* log offset of its metadata JSON, 0 = none */
  uint32_t extra_len;
  uint16_t region;
  uint8_t currency;
  uint8_t kind;
  uint8_t status;
  uint8_t flags;
  uint8_t history_last_debit; /* 1: the account is the debit side of history_last_no */
  uint8_t pad;
} engine_account_t;
static_assert(sizeof(engine_account_t) == 96, "account view size");

/* A transfer as the engine answers with it: every field, whether the transfer uses it or not.
 * `no` is its position (1, 2, ...) and, with created_ms, its id (uuid_from_transfer).
 * Transfer numbers and account ids fit 32 bits (ENGINE_TRANSFERS_MAX, ENGINE_ACCOUNTS_MAX).
 * The engine does not keep this struct: it keeps a 48-byte record per transfer, with its
 * batch, time and rule set once per run of transfers in a stamp table and the fields only
 * some transfers need (two-phase, settlement entries, descriptions) in a side table
 * (engine_state.h, transfer_rec_t), and builds this view when it answers. */
typedef struct engine_transfer {
  uint64_t seq;                /* batch that created it */
  int64_t amount_minor;        /* requested (for pending: reserved) */
  int64_t posted_minor;        /* pending that was posted: the posted amount */
  int64_t created_ms;
  int64_t updated_ms;          /* when posted/voided (pending), else created_ms */
  int64_t debit_balance_after; /* the accounts' balances right after this entry */
  int64_t credit_balance_after;
  int64_t pending_created_ms; /* settlement entry: the pending transfer's creation (its id) */
  uint64_t extra_pos;         /* log offset of description/metadata JSON, 0 = none */
  uint32_t no;
  uint32_t debit_account_id;
  uint32_t credit_account_id;
  uint32_t prev_debit_no, prev_credit_no; /* history chains of both accounts (backward) */
  uint32_t pending_no; /* settlement entry: the pending transfer it settles */
  uint32_t extra_len;
  uint32_t timeout_s;
  uint32_t rules_version; /* the rule set that judged it (0: none) */
  uint8_t kind;
  uint8_t status;
  uint8_t currency;
  uint8_t flags;
} engine_transfer_t;
static_assert(sizeof(engine_transfer_t) == 112, "no padding: views are compared with memcmp (tests)");
static_assert(ENGINE_TRANSFERS_MAX <= UINT32_MAX && ENGINE_ACCOUNTS_MAX <= UINT32_MAX,
              "transfer numbers and account ids are stored in 32 bits");

/* ---- principals: who a command runs as ----
 * Users sign in with a password and get a session token; services use API keys. Both are
 * credentials: 256 random bits, of which the engine keeps only the SHA-256. A command either
 * carries a credential hash (the engine resolves it, live only), or a principal the trusted
 * API code set (sign-in flows, ledgerctl, --no-auth). The log stores the resolved
 * principal id, and replay derives the role from the state at that point. */
typedef enum {
  ENGINE_ROLE_NONE = 0, /* anonymous */
  ENGINE_ROLE_ADMIN = 1,
  ENGINE_ROLE_AUDITOR = 2,
  ENGINE_ROLE_CUSTOMER = 3,
} engine_role_t;
const char *engine_role_name(unsigned role);
unsigned engine_role_find(const char *name); /* 0 if unknown */

/* principal ids: 0 = the operator (admin: ledgerctl, --no-auth); a user id; or an API key. */
#define ENGINE_PRINCIPAL_KEY_BIT (1ull << 62)
#define ENGINE_PRINCIPAL_ANONYMOUS (~0ull)

typedef enum {
  ENGINE_AUTH_TRUSTED = 0, /* principal_id set by trusted code */
  ENGINE_AUTH_BEARER = 1,  /* resolve credential_hash */
} engine_auth_mode_t;

#define ENGINE_USERNAME_BYTES_MAX 64u
#define ENGINE_EMAIL_BYTES_MAX 128u
#define ENGINE_PWHASH_BYTES_MAX 128u /* crypto_pwhash_STRBYTES */
#define ENGINE_KEY_NAME_BYTES_MAX 64u

typedef struct engine_user {
  uint64_t id;
  int64_t created_ms;
  int64_t updated_ms;
  uint8_t role;
  uint8_t pad[7];
  char username[ENGINE_USERNAME_BYTES_MAX + 1];
  char email[ENGINE_EMAIL_BYTES_MAX + 1];
  char pwhash[ENGINE_PWHASH_BYTES_MAX];
} engine_user_t;

typedef struct engine_api_key {
  uint64_t id;
  uint8_t key_hash[32]; /* SHA-256 of the key; the key itself is shown once and never kept */
  uint64_t created_by; /* principal id */
  int64_t created_ms;
  int64_t revoked_ms; /* 0 = live */
  uint8_t role;
  uint8_t pad[7];
  char name[ENGINE_KEY_NAME_BYTES_MAX + 1];
} engine_api_key_t;

/* Security events for the audit trail (API.md "Events and audit"). */
typedef enum {
  ENGINE_AUDIT_USER_CREATED = 1,
  ENGINE_AUDIT_SIGNIN_OK = 2,
  ENGINE_AUDIT_SIGNIN_FAILED = 3,
  ENGINE_AUDIT_SIGNOUT = 4,
  ENGINE_AUDIT_KEY_CREATED = 5,
  ENGINE_AUDIT_KEY_REVOKED = 6,
  ENGINE_AUDIT_ROLE_CHANGED = 7,
  ENGINE_AUDIT_ACCOUNT_FROZEN = 8,
  ENGINE_AUDIT_ACCOUNT_UNFROZEN = 9,
  ENGINE_AUDIT_SUSPICIOUS_REVIEWED = 10, /* subject: the entry; detail: the decision */
  ENGINE_AUDIT_RULES_CHANGED = 11,       /* subject: the new rule-set version */
} engine_audit_kind_t;
const char *engine_audit_name(unsigned kind);

typedef struct engine_audit_event {
  uint64_t seq;          /* gap-free audit sequence, 1.. */
  uint64_t batch_seq;    /* the durable batch it was written in */
  int64_t time_ms;
  uint64_t actor_id;     /* principal that did it (ENGINE_PRINCIPAL_ANONYMOUS for failures) */
  uint64_t subject_id;   /* user / key / account concerned */
  uint8_t kind;
  uint8_t role;          /* role change: the new role */
  uint8_t pad[6];
  char detail[ENGINE_USERNAME_BYTES_MAX + 1]; /* e.g. the username of a failed sign-in */
  char addr[47];         /* client address, when known */
} engine_audit_event_t;

/* ---- risk rules (engine_rules.c; docs/rules.md) ----
 * A rule set is plain data: parsed from the configuration file by ledgerd, handed to the
 * engine in one RULES_SET command (logged whole, so replay judges with the same rules), and
 * swapped in between two commands: no transfer is ever judged by a half-loaded set. */
typedef enum {
  ENGINE_RULE_AMOUNT = 1,      /* amount >= threshold */
  ENGINE_RULE_VELOCITY = 2,    /* out of one account in a sliding window: count > N or sum > X */
  ENGINE_RULE_NEW_ACCOUNT = 3, /* debit account younger than age and amount >= threshold */
  ENGINE_RULE_BLOCKLIST = 4,   /* debit or credit account listed */
} engine_rule_type_t;
typedef enum {
  ENGINE_ACTION_FLAG = 1,   /* allow and mark */
  ENGINE_ACTION_HOLD = 2,   /* create as pending, awaiting review */
  ENGINE_ACTION_REJECT = 3, /* 422 rule_rejected */
} engine_rule_action_t;
const char *engine_rule_type_name(unsigned type);
const char *engine_rule_action_name(unsigned action);

#define ENGINE_RULES_MAX 32u
#define ENGINE_RULE_ID_BYTES_MAX 31u
#define ENGINE_VELOCITY_RULES_MAX 4u
#define ENGINE_BLOCKLIST_MAX 1024u /* account ids over all blocklist rules of a set */
#define ENGINE_RULE_WINDOW_MS_MAX (31ll * 24 * 3600 * 1000)
#define ENGINE_THRESHOLD_NONE INT64_MAX /* no threshold for that currency */

typedef struct engine_rule {
  char id[ENGINE_RULE_ID_BYTES_MAX + 1];
  uint8_t type;     /* engine_rule_type_t */
  uint8_t action;   /* engine_rule_action_t */
  uint8_t currency; /* 0 = every currency */
  uint8_t vel_slot; /* velocity: its slot 0..3 in the per-account window state */
  uint32_t count_max; /* velocity: fires when the count, with this one, is > count_max (0: unused) */
  int64_t window_ms;  /* velocity: window; new_account: age */
  /* amount / new_account: fires at amount >= threshold; velocity: at sum > threshold.
   * Minor units per currency id; ENGINE_THRESHOLD_NONE = not set. */
  int64_t threshold_minor[LEDGER_CURRENCIES_MAX];
  uint32_t block_first, block_count; /* blocklist: its ids in engine_rules_t.blocklist */
} engine_rule_t;

typedef struct engine_rules {
  uint32_t version; /* set by the engine: 1, 2, ... for each change; 0 = never set */
  uint32_t count;
  uint32_t block_count;
  uint32_t pad;
  char default_region[API_REGION_BYTES_MAX + 8]; /* NUL-terminated; "" = "default" (no padding) */
  engine_rule_t rules[ENGINE_RULES_MAX];
  uint64_t blocklist[ENGINE_BLOCKLIST_MAX]; /* each rule's range sorted ascending */
} engine_rules_t;
static_assert(sizeof(engine_rule_t) == 184 && sizeof(engine_rules_t) == 56 + 32 * 184 + 8 * 1024,
              "rule sets are logged and compared byte for byte: no padding");

/* Parses a configuration file's text (docs/rules.md). Returns 0, or LEDGER_EINVAL with
 * "line N: reason" in err. Pure; any thread. */
LEDGER_MUST_USE int engine_rules_parse(const char *text, size_t len, engine_rules_t *out, char *err, size_t cap);
/* The set used when no configuration file is given: amount >= 10,000.00 → flag. */
void engine_rules_default(engine_rules_t *out);

/* A suspicious-activity entry: one per transfer a rule flagged or held. */
#define ENGINE_SUSPICIOUS_OPEN 0u
#define ENGINE_SUSPICIOUS_CLEARED 1u
#define ENGINE_SUSPICIOUS_CONFIRMED 2u
const char *engine_suspicious_status_name(unsigned status);
typedef struct engine_suspicious {
  uint64_t id; /* 1.. in transfer order */
  uint64_t transfer_no;
  int64_t transfer_created_ms; /* with transfer_no: the transfer id */
  uint64_t debit_account_id, credit_account_id;
  int64_t amount_minor;
  int64_t reviewed_ms; /* 0 = not reviewed */
  uint64_t reviewer_id;
  uint32_t rules_version;
  uint32_t fired_mask; /* every rule (by index) that fired */
  uint8_t action;      /* the deciding action: flag or hold */
  uint8_t status;
  uint8_t currency;
  uint8_t pad[5];
  char rule_id[ENGINE_RULE_ID_BYTES_MAX + 1]; /* the deciding rule */
} engine_suspicious_t;
static_assert(sizeof(engine_suspicious_t) == 112, "suspicious entry size");

/* Settlement aggregate: per (UTC day, region, currency). Sums are 128-bit: they cannot wrap. */
__extension__ typedef __int128 engine_wide_t;
typedef struct engine_settlement {
  int32_t day; /* days since 1970-01-01 */
  uint16_t region;
  uint8_t currency;
  uint8_t pad;
  uint64_t count;
  engine_wide_t volume, deposits, withdrawals;
} engine_settlement_t;
#define ENGINE_SETTLEMENT_ROWS_MAX (1u * 1024u * 1024u)

/* Search filter (GET /v1/transfers). */
typedef struct engine_search {
  uint64_t account_id; /* 0 = any */
  int16_t kind;        /* -1 = any */
  int16_t status;      /* -1 = any */
  int8_t flagged;      /* -1 = any, 0, 1 */
  bool has_region;
  uint16_t region;     /* with has_region (0: an unknown name → nothing matches) */
  bool has_min, has_max;
  int64_t min_digits, max_digits;
  uint8_t min_scale, max_scale;
  int64_t from_ms, to_ms; /* [from, to) */
  char q[API_QUERY_TEXT_CHARS_MAX * 4 + 1]; /* UTF-8, up to 64 characters; "" = any */
} engine_search_t;

/* A text search's candidate: a transfer that passed every filter but q, and where its
 * description and metadata are in the log. */
typedef struct engine_search_cand {
  uint64_t no;
  uint64_t extra_pos;
  uint32_t extra_len;
} engine_search_cand_t;

/* The text part of a search (GET /v1/transfers?q=), run on any thread but the engine's: reads
 * each candidate's description and metadata with read(ctx, ...) in order and keeps the
 * numbers of the first `limit` whose text contains q (case-insensitive for ASCII letters) in
 * nos. *next_cursor is the first match past the page, else walk_cursor (where the walk
 * stopped; 0 = the end). A candidate whose text cannot be read does not match. Returns how
 * many were kept. */
uint32_t engine_search_texts(const engine_search_cand_t *cands, uint32_t n, const char *q, uint32_t limit,
                             uint64_t walk_cursor, int (*read)(void *ctx, uint64_t pos, uint32_t len, char *buf),
                             void *ctx, uint64_t *nos, uint64_t *next_cursor);

/* ---- commands ---- */
typedef enum {
  ENGINE_CMD_NONE = 0,
  /* writes (logged) */
  ENGINE_CMD_ACCOUNT_CREATE = 1,
  ENGINE_CMD_TRANSFER = 2,
  ENGINE_CMD_TRANSFER_POST = 3,
  ENGINE_CMD_TRANSFER_VOID = 4,
  ENGINE_CMD_ACCOUNT_FREEZE = 5,
  ENGINE_CMD_ACCOUNT_UNFREEZE = 6,
  ENGINE_CMD_TRANSFER_BATCH = 7,
  ENGINE_CMD_USER_CREATE = 8,
  ENGINE_CMD_SESSION_CREATE = 9,
  ENGINE_CMD_SESSION_REVOKE = 10,
  ENGINE_CMD_API_KEY_CREATE = 11,
  ENGINE_CMD_API_KEY_REVOKE = 12,
  ENGINE_CMD_SIGNIN_FAILED = 13,
  ENGINE_CMD_USER_ROLE_SET = 14,
  ENGINE_CMD_RULES_SET = 15,         /* admin: swap in a new rule set */
  ENGINE_CMD_SUSPICIOUS_REVIEW = 16, /* admin: clear or confirm an entry */
  /* reads (never logged) */
  ENGINE_CMD_ACCOUNT_GET = 64,
  ENGINE_CMD_ACCOUNT_LIST = 65,
  ENGINE_CMD_TRANSFER_GET = 66,
  ENGINE_CMD_HISTORY = 67,
  ENGINE_CMD_WHOAMI = 68,      /* resolves the credential: principal, user, key */
  ENGINE_CMD_USER_LOOKUP = 69, /* by username, for sign-in (trusted) */
  ENGINE_CMD_AUDIT_LIST = 70,
  ENGINE_CMD_RULES_GET = 71,
  ENGINE_CMD_SUSPICIOUS_LIST = 72,
  ENGINE_CMD_SETTLEMENTS = 73,
  ENGINE_CMD_TRANSFER_SEARCH = 74,
  ENGINE_CMD_TRANSFER_ROWS = 75, /* a text search's page, by transfer number (after SEARCH) */
} engine_cmd_kind_t;

/* One transfer request (single, or one item of a batch). Fixed layout: stored in the log. */
typedef struct engine_transfer_in {
  uint64_t debit_account_id;  /* 0 for a deposit: the cash account of the credit's currency */
  uint64_t credit_account_id; /* 0 for a withdrawal: the cash account of the debit's currency */
  /* The amount as the client wrote it: amount_digits * 10^-amount_scale major units. The
   * engine turns it into minor units with the currency's exponent (only it knows the
   * accounts' currency), so "1.005" USD is rejected there as ENGINE_R_INVALID_AMOUNT. */
  int64_t amount_digits; /* > 0 */
  uint32_t timeout_s;    /* pending only; 0 = none */
  uint32_t extra_len;    /* bytes of `extra` (description/metadata JSON) */
  uint8_t currency;      /* 0 = take it from the accounts */
  uint8_t kind;          /* engine_transfer_kind_t */
  uint8_t pending;       /* 1 = two-phase */
  uint8_t amount_scale;  /* fraction digits written, 0..18 */
  uint8_t pad[4];
  const char *extra; /* not stored as a pointer: the bytes follow in the log */
} engine_transfer_in_t;

typedef struct engine_item_result {
  uint16_t result;
  uint8_t status;
  uint8_t rule; /* rule_rejected: the rule's index + 1 (its id in cmd->rule_ids) */
  uint8_t pad[4];
  uint64_t no;
  int64_t created_ms;
} engine_item_result_t;

typedef struct engine_history_row {
  engine_transfer_t transfer;
  int64_t balance_after_minor;
} engine_history_row_t;

typedef struct engine_cmd engine_cmd_t;
typedef void (*engine_done_fn)(engine_cmd_t *cmd);

struct engine_cmd {
  /* ---- set by the submitter ---- */
  uint8_t kind;
  bool has_idempotency;
  ledger_hash128_t idempotency_key; /* hash of principal + route + key */
  ledger_hash128_t body_hash;       /* hash of route + body: a different body -> 409 */
  uint8_t auth_mode;         /* engine_auth_mode_t */
  uint8_t credential_hash[32]; /* BEARER: SHA-256 of the presented token */
  uint64_t principal_id;       /* TRUSTED: who; BEARER: set by the engine */
  char client_addr[47];        /* for audit events */
  union {
    struct {
      uint64_t owner_id;
      uint8_t currency;
      uint8_t allow_overdraft;
      const char *region; /* NUL-terminated, validated */
      const char *extra;  /* metadata JSON or NULL */
      uint32_t extra_len;
    } account_create;
    engine_transfer_in_t transfer;
    struct {
      uint64_t no;
      int64_t created_ms;
      int64_t amount_digits; /* post: 0 = the whole pending amount */
      uint8_t amount_scale;
    } settle;               /* POST and VOID */
    struct {
      uint64_t account_id;
    } account; /* FREEZE, UNFREEZE, GET */
    struct {
      engine_transfer_in_t *items;
      engine_item_result_t *results; /* item_count entries, filled by the engine */
      uint32_t item_count;
      bool atomic;
    } batch;
    struct {
      uint64_t no;
      int64_t created_ms;
    } transfer_get;
    struct {
      const char *username; /* USER_CREATE, USER_LOOKUP, SIGNIN_FAILED */
      const char *email;    /* USER_CREATE, may be "" */
      const char *pwhash;   /* USER_CREATE: Argon2id encoded string */
      uint8_t role;         /* USER_CREATE, USER_ROLE_SET */
      uint64_t user_id;     /* SESSION_CREATE, USER_ROLE_SET */
      uint8_t token_hash[32]; /* SESSION_CREATE, API_KEY_CREATE */
      int64_t expires_ms;   /* SESSION_CREATE */
      const char *name;     /* API_KEY_CREATE */
      uint64_t key_id;      /* API_KEY_REVOKE */
    } auth;
    struct {
      uint64_t after_seq;
      uint32_t limit;
      engine_audit_event_t *rows;
    } audit;
    struct {
      uint64_t owner_id; /* with has_owner */
      bool has_owner;
      uint16_t region;   /* 0 = any; interned id from engine_region_find */
      const char *region_name;
      uint8_t currency; /* 0 = any */
      bool ascending;
      uint64_t cursor_id; /* 0 = start */
      uint32_t limit;
      engine_account_t *rows; /* limit entries */
    } list;
    struct {
      uint64_t account_id;
      uint64_t cursor_no; /* 0 = start */
      int64_t from_ms, to_ms; /* [from, to), INT64_MIN/INT64_MAX = open */
      bool ascending;
      uint32_t limit;
      engine_history_row_t *rows; /* limit entries */
    } history;
    struct {
      const engine_rules_t *set; /* RULES_SET */
      engine_rules_t *out;       /* RULES_GET */
    } rules;
    struct {
      uint64_t id;
      uint8_t decision; /* ENGINE_SUSPICIOUS_CLEARED or _CONFIRMED */
    } review;
    struct {
      int64_t from_ms, to_ms; /* [from, to) of created_ms */
      int16_t status;         /* -1 = any */
      char rule_id[ENGINE_RULE_ID_BYTES_MAX + 1]; /* "" = any */
      bool ascending;
      uint64_t cursor_id; /* 0 = start */
      uint32_t limit;
      engine_suspicious_t *rows;
    } suspicious;
    struct {
      int32_t day_from, day_to; /* inclusive */
      bool has_region;
      uint16_t region; /* with has_region; 0 = unknown name: nothing */
      uint8_t currency; /* 0 = any */
      uint32_t cap;
      engine_settlement_t *rows; /* cap entries; unsorted */
      bool truncated;            /* more rows than cap */
    } settlements;
    struct {
      engine_search_t filter;
      bool ascending;
      uint64_t cursor_no; /* 0 = start */
      uint32_t limit;
      engine_transfer_t *rows;
      /* With filter.q: the engine reads no description. It fills cands[0..row_count) with the
       * transfers that pass every other filter and have a description or metadata (at most
       * cands_max; next_cursor is then the first that did not fit), and rows is not used:
       * engine_search_texts matches them off the engine thread, then TRANSFER_ROWS fetches
       * the page. */
      engine_search_cand_t *cands;
      uint32_t cands_max;
      uint32_t steps_max; /* in: transfers the walk may visit, 0 = ENGINE_SCAN_STEPS_MAX */
      uint32_t steps;     /* out: transfers it visited */
    } search;
    struct {
      const uint64_t *nos; /* transfer numbers (a text search's matches), in page order */
      uint32_t n;          /* <= API_PAGE_LIMIT_MAX */
      engine_transfer_t *rows;
      uint64_t next_cursor; /* handed back as next_cursor */
      int16_t status;       /* the search's status filter, checked again (-1 = any) */
    } transfer_rows;
  } u;
  engine_done_fn done;
  void *done_arg;

  /* ---- set by the engine before done() ---- */
  int16_t result;     /* engine_result_t */
  bool replayed;      /* an idempotent repeat: the original outcome */
  bool outcome_unknown; /* engine stopped before the batch was durable */
  uint64_t seq;
  int64_t time_ms;
  uint8_t role;               /* the resolved principal's role */
  engine_user_t user;         /* USER_*, WHOAMI (when a user), USER_LOOKUP */
  engine_api_key_t api_key;   /* API_KEY_*, WHOAMI (when a key) */
  engine_account_t account;   /* ACCOUNT_* and GET */
  engine_transfer_t transfer; /* TRANSFER*, TRANSFER_GET */
  engine_suspicious_t suspicious; /* SUSPICIOUS_REVIEW */
  uint8_t reject_rule;        /* RULE_REJECTED (single transfer): the rule's index + 1 */
  uint32_t rules_version;     /* RULE_REJECTED; RULES_SET: the version now in force */
  bool rules_changed;         /* RULES_SET: false when the set was identical */
  char rule_ids[ENGINE_RULES_MAX][ENGINE_RULE_ID_BYTES_MAX + 1]; /* filled on RULE_REJECTED */
  uint32_t row_count;         /* LIST, HISTORY, SUSPICIOUS_LIST, SETTLEMENTS, SEARCH */
  uint64_t next_cursor;       /* LIST, HISTORY: 0 = no more */
  engine_cmd_t *next;         /* engine's intrusive list; also free for the submitter after done */
};

typedef struct engine engine_t;

typedef struct engine_config {
  const char *data_dir;
  uint64_t idempotency_retention_ms;
  uint64_t snapshot_log_bytes; /* checkpoint after this many log bytes; 0 = default */
  uint32_t snapshot_growth_pct; /* ... and after this % of the newest snapshot's size in log
                                 * bytes, whichever is more (engine.c); 0 = the fixed interval */
  bool fsync;                  /* false only for tests that measure CPU */
  uint32_t queue_commands_max; /* power of two, 2..ENGINE_QUEUE_COMMANDS_MAX; 0 = that */
  int64_t time_offset_ms;      /* tests only: the engine clock is the wall clock + this (>= 0) */
  uint64_t prefault_bytes;     /* most populated ahead of the transfer and link tables' use (engine.c, prefault_main); 0 = off */
  uint64_t log_prealloc_bytes; /* zeros kept written ahead of the log (store.h); 0 = off */
  uint64_t commit_interval_ns; /* least time between two batch writes' starts (engine.c); 0 = none;
                                * at most ENGINE_COMMIT_INTERVAL_NS_MAX (larger is clamped) */
  uint64_t slow_commit_ns;     /* a batch write + fdatasync this long or longer is logged (at most
                                * one line a second); 0 = ENGINE_SLOW_COMMIT_MS */
} engine_config_t;

/* Opens (or creates) the data directory, takes its lock, recovers state from the newest
 * snapshot plus the log tail (cutting a torn last record), and starts the engine and
 * committer threads.
 * Errors: LEDGER_ELOCKED, LEDGER_ECORRUPT (a bad record that is not the last), LEDGER_EIO. */
LEDGER_MUST_USE int engine_open(const engine_config_t *config, engine_t **out);
/* Stops taking commands (engine_submit answers LEDGER_ESTOPPED), lets the engine thread
 * apply and answer everything already queued, joins it and writes a final snapshot. The
 * state stays readable (regions, extras) until engine_close. Idempotent. */
void engine_stop(engine_t *engine);
/* engine_stop, then frees everything. */
void engine_close(engine_t *engine);

/* Any thread. Returns 0, or LEDGER_EFULL when the queue is full (answer 503 + Retry-After), or
 * LEDGER_ESTOPPED during shutdown. On error the command was not taken and done is not called. */
LEDGER_MUST_USE int engine_submit(engine_t *engine, engine_cmd_t *cmd);

/* Called on the committer thread after the done callbacks of each batch: where a caller whose
 * done callbacks only queue their answers wakes each thread it queued to, once per batch
 * instead of once per command. Set once, before any command that relies on it is submitted. */
void engine_set_batch_done_hook(engine_t *engine, void (*hook)(void *arg), void *arg);

/* Submits and waits for the answer (start-up and tools, never a net thread). Returns the
 * submit error, else 0 with the outcome in cmd->result. cmd->done is set here. */
LEDGER_MUST_USE int engine_run(engine_t *engine, engine_cmd_t *cmd);

/* Region names: interned by the engine; the read side looks them up. Thread-safe (the table
 * only grows and entries are published with release stores). */
uint16_t engine_region_find(const engine_t *engine, const char *name); /* 0 = unknown */
const char *engine_region_name(const engine_t *engine, uint16_t region); /* never NULL */

/* Reads the log bytes [pos, pos+len) (metadata/description of a committed record). Any
 * thread; pos must come from a completed command. Returns 0 or LEDGER_EIO. */
LEDGER_MUST_USE int engine_read_extra(engine_t *engine, uint64_t pos, uint32_t len, char *buf);

typedef struct engine_stats {
  uint64_t batches_total;
  uint64_t commands_total;
  uint64_t transfers_total;
  uint64_t last_seq;
  uint64_t queue_depth;
  uint64_t rejected_full_total;
  uint64_t log_bytes;
  uint64_t accounts;
  uint64_t users;
  uint64_t api_keys;
  uint64_t fsync_ns_last;
  uint64_t rules_version;    /* the risk rule set in force */
  uint64_t suspicious_total; /* suspicious-activity entries ever made (flagged or held) */
  uint64_t settlement_rows;
  bool ready;
  uint64_t snapshots_started;  /* background snapshots forked since start */
  uint64_t snapshots_written;  /* ... and completed */
  uint64_t snapshot_bytes;     /* size of the newest snapshot written or loaded (0: none) */
  uint64_t log_prealloc_chunks;        /* chunks of zeros written ahead of the log */
  uint64_t log_prealloc_slow_appends;  /* appends that outran them and extended the file */
  uint64_t prefault_populated_bytes;   /* populated ahead of use by the prefault thread, all tables,
                                        * in whole 2 MiB steps (some pages of a step may have been present) */
  const ledger_hist_t *batch_commands; /* commands per batch */
  const ledger_hist_t *fsync_ns;       /* write + fdatasync per batch */
} engine_stats_t;
void engine_get_stats(const engine_t *engine, engine_stats_t *out);

/* ---- verification (ledgerctl verify) ---- */
typedef struct engine_verify_report {
  uint64_t batches;
  uint64_t transfers;
  uint64_t accounts;
  uint64_t last_seq;
  bool torn_tail; /* a torn last record was found (and not applied) */
  bool snapshot_other_version; /* the newest snapshot is in another format: not compared */
  char problem[256]; /* empty when everything checked out */
} engine_verify_report_t;
/* Replays the whole log of a stopped server's directory from the start into a fresh state,
 * then checks: every record's checksum, gap-free seqs, zero sum per currency, no floored
 * account below zero available, every history chain's balances, and that the state equals
 * the newest snapshot where they overlap. Returns 0 when all hold, LEDGER_ECORRUPT with
 * report->problem set otherwise, LEDGER_ELOCKED if a server holds the directory. */
LEDGER_MUST_USE int engine_verify(const char *data_dir, engine_verify_report_t *report);

/* How far ahead of a table's used bytes the pre-fault thread populates: a quarter of them, at
 * least ENGINE_PREFAULT_AHEAD_MIN_BYTES, at most prefault_bytes (engine_config_t). */
#define ENGINE_PREFAULT_AHEAD_MIN_BYTES (8u * 1024u * 1024u)
size_t engine_prefault_ahead(uint64_t prefault_bytes, size_t used);

#endif
