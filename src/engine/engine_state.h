/*
 * engine_state.h — private: the in-memory ledger state and the pure functions that change it.
 *
 * Everything here is deterministic: given the same start state and the same sequence of
 * (batch time, command) pairs, it produces the same state byte for byte. No clock, no random,
 * no I/O. The engine thread and the replay (recovery, verify) are its only callers.
 *
 * Tables are flat arrays reserved as virtual memory (MAP_NORESERVE) at their limits and
 * touched as they fill, so nothing is reallocated on the hot path and a snapshot is a dump
 * of their used prefixes.
 */
#ifndef LEDGER_ENGINE_STATE_H
#define LEDGER_ENGINE_STATE_H

#include <stdatomic.h>

#include "engine/engine.h"

typedef struct idem_entry {
  ledger_hash128_t key; /* {0,0} = empty slot */
  ledger_hash128_t body;
  int64_t created_ms;
  uint64_t object;    /* transfer no / account id / batch: first transfer no */
  uint64_t codes_pos; /* batch: position of its per-item codes in the codes ring */
  uint32_t count;     /* batch: item count */
  uint16_t result;
  uint8_t kind;
  uint8_t pad;
} idem_entry_t;
static_assert(sizeof(idem_entry_t) == 64, "idempotency entry size");

typedef struct cred_entry {
  uint8_t hash[32]; /* all zero = empty slot */
  uint64_t principal_id;
  int64_t expires_ms; /* 0 = no expiry */
  uint8_t revoked;
  uint8_t pad[7];
} cred_entry_t;
static_assert(sizeof(cred_entry_t) == 56, "credential entry size");

typedef struct pending_slot {
  int64_t deadline_ms;
  uint64_t no;
} pending_slot_t;

/* The table starts small and doubles (rehash) while under half full, up to 2x the key limit. */
#define ENGINE_IDEM_SLOTS_MIN (64u * 1024u)
#define ENGINE_IDEM_SLOTS_MAX (2u * ENGINE_IDEMPOTENCY_KEYS_MAX)
/* Per-item result codes of batch requests that carried an Idempotency-Key, in a ring. */
#define ENGINE_CODES_RING_BYTES (64u * 1024u * 1024u)

/* An account as the engine keeps it: 64 bytes, one cache line (the table is page aligned).
 * A batch changes two random accounts per transfer among millions, and every line a record
 * spans is a cache miss (a 96-byte record spans two). Account ids and transfer numbers fit 32
 * bits (engine.h). What only the account's view and the new-account rule read (its creation
 * time, the log position of its metadata) is in account_extra. The API gets the whole
 * account as an engine_account_t built by state_account(). */
typedef struct account_rec {
  int64_t balance_minor;
  int64_t pending_debits_minor;
  int64_t pending_credits_minor;
  int64_t updated_ms;
  uint64_t owner_id;
  uint32_t id;
  uint32_t history_first_no; /* first transfer touching it (0 = none) */
  uint32_t history_last_no;  /* newest transfer touching it */
  uint16_t region;
  uint8_t currency;
  uint8_t kind;
  uint8_t status;
  uint8_t flags;
  uint8_t history_last_debit; /* 1: the account is the debit side of history_last_no */
  uint8_t pad[5];
} account_rec_t;
static_assert(sizeof(account_rec_t) == 64, "account record size (memory per account)");

/* The rest of an account, [id - 1]: its creation time and its metadata JSON's log position
 * (0 = none) and length. */
typedef struct account_extra {
  int64_t created_ms;
  uint64_t pos;
  uint32_t len;
  uint32_t pad;
} account_extra_t;

/* A transfer as the engine keeps it: 48 bytes. The table grows by one record per transfer,
 * and on the benchmark machine fresh memory costs ~2-4 ns a byte the first time it is touched
 * (docs/performance.md), so the record holds only what differs from transfer to transfer. Its
 * number is its position (no = index + 1). Its batch, time and rule set are shared by a run
 * of transfers and kept once per run in the stamp table (transfer_stamp_t), found by index.
 * The fields that only two-phase transfers, their settlement entries and transfers with a
 * description use are in the side table (transfer_side_t), found by the flags in
 * TRANSFER_SIDE_FLAGS. The API gets the whole transfer as an engine_transfer_t built by
 * state_transfer(). */
typedef struct transfer_rec {
  int64_t amount_minor; /* requested (for pending: reserved) */
  int64_t debit_balance_after; /* the accounts' balances right after this entry */
  int64_t credit_balance_after;
  uint32_t debit_account_id;
  uint32_t credit_account_id;
  uint32_t prev_debit_no, prev_credit_no; /* history chains of both accounts (backward) */
  uint32_t stamp; /* index in the stamp table: its batch, time and rule set */
  uint8_t kind;
  uint8_t status;
  uint8_t currency;
  uint8_t flags; /* ENGINE_TF_* */
} transfer_rec_t;
static_assert(sizeof(transfer_rec_t) == 48, "transfer record size (memory per transfer)");

/* What a run of consecutive transfers shares: the batch that created them, its time, and the
 * rule set in force (a settlement entry is not judged: it shows its pending transfer's).
 * A new stamp starts with the first transfer of each batch, and within a batch when the rule
 * set changes. Under load a batch holds thousands of transfers, so the table stays small; one
 * transfer a batch (a light load) costs 24 bytes more each. Sorted by first_no, by seq and by
 * created_ms (batch times never go back). */
typedef struct transfer_stamp {
  uint64_t seq;
  int64_t created_ms;
  uint32_t first_no;
  uint32_t rules_version;
} transfer_stamp_t;
static_assert(sizeof(transfer_stamp_t) == 24, "transfer stamp size");

/* A transfer with any of these flags has a side entry. */
#define TRANSFER_SIDE_FLAGS (ENGINE_TF_PENDING | ENGINE_TF_SETTLEMENT | ENGINE_TF_EXTRA)

/* The rarely used fields of a transfer. Entries are appended in transfer order (the table is
 * sorted by no) and found by binary search; a pending transfer's entry changes when it is
 * posted or voided. */
typedef struct transfer_side {
  int64_t posted_minor;       /* pending that was posted: the posted amount */
  int64_t updated_ms;         /* pending: when posted/voided, else created_ms */
  int64_t pending_created_ms; /* settlement entry: the pending transfer's creation (its id) */
  uint64_t extra_pos;         /* log offset of description/metadata JSON, 0 = none */
  uint32_t no;                /* the transfer */
  uint32_t pending_no;        /* settlement entry: the pending transfer it settles */
  uint32_t extra_len;
  uint32_t timeout_s;
} transfer_side_t;
static_assert(sizeof(transfer_side_t) == 48, "transfer side entry size");

/* The forward links of a transfer's two history chains: the next entry of its debit account's
 * chain and of its credit account's (0: none yet). Kept apart from the transfer records
 * because an append writes the previous entry of both accounts, random old entries: in a
 * dense 8-byte table those writes touch 6x fewer pages than in the 48-byte records, and
 * after a snapshot's fork every page the engine writes is copied first (docs/storage.md). */
typedef struct engine_next {
  uint32_t debit_no, credit_no;
} engine_next_t;

typedef struct engine_state {
  account_rec_t *accounts; /* [id - 1] */
  account_extra_t *account_extra; /* [id - 1] */
  uint64_t account_count;
  transfer_rec_t *transfers; /* [no - 1] */
  engine_next_t *next;       /* [no - 1] */
  uint64_t transfer_count;
  transfer_stamp_t *stamps; /* runs of transfers in order (transfer_stamp_t) */
  uint64_t stamp_count;
  transfer_side_t *side; /* in transfer order */
  uint64_t side_count;
  idem_entry_t *idem; /* idem_slots slots (a power of two), linear probing */
  uint64_t idem_slots;
  uint64_t idem_used; /* occupied slots (live or expired) */
  pending_slot_t *pending; /* min-heap on deadline */
  uint64_t pending_count;
  uint8_t *codes; /* ENGINE_CODES_RING_BYTES */
  /* Users (by id), their name index (rebuilt, not saved), credentials (session and key
   * hashes → principal), API keys, and the newest audit events (a ring). */
  engine_user_t *users;
  uint64_t user_count;
  uint64_t *user_index; /* user id or 0; probe by username hash */
  uint64_t user_index_slots;
  struct cred_entry *creds;
  uint64_t cred_slots, cred_used;
  engine_api_key_t *keys;
  uint64_t key_count;
  engine_audit_event_t *audit;
  uint64_t audit_count; /* total ever; the ring keeps the newest ENGINE_AUDIT_RING_EVENTS */
  /* Atomic batches: the touched accounts' updated_ms before each item, restored on abort. */
  struct saved_time {
    uint64_t account_id;
    int64_t updated_ms;
  } *saved_times; /* 2 * ENGINE_BATCH_TRANSFERS_MAX */
  struct saved_vel *saved_vel; /* ENGINE_BATCH_TRANSFERS_MAX: debit accounts' windows */
  uint64_t codes_total;
  char regions[ENGINE_REGIONS_MAX][API_REGION_BYTES_MAX + 1];
  _Atomic uint32_t region_count; /* published with release: readers on other threads */
  uint64_t last_seq;
  int64_t last_time_ms;
  uint64_t idem_retention_ms;
  /* The batch being applied. */
  uint64_t batch_seq;
  int64_t batch_time_ms;
  bool replaying; /* commands come from the log: apply without idempotency lookups */
  /* Risk rules, velocity windows, suspicious activity, settlements (engine_rules.c). */
  engine_rules_t rules;
  /* The rule ids of every version (1..rules.version), so that an idempotent repeat of a
   * rejection names its rule whatever set is in force now. */
  char (*rule_names)[ENGINE_RULES_MAX][ENGINE_RULE_ID_BYTES_MAX + 1];
  struct vel_slot *vel; /* [(account id - 1) * ENGINE_VELOCITY_RULES_MAX + slot] */
  bool vel_used;        /* a velocity rule has been in force: the table is in snapshots */
  engine_suspicious_t *suspicious;
  uint64_t suspicious_count;
  engine_settlement_t *settle_rows;
  uint64_t settle_count;
  uint32_t *settle_index; /* row index + 1, open addressing */
} engine_state_t;

static inline uint64_t transfer_no_of(const engine_state_t *st, const transfer_rec_t *t) {
  return (uint64_t)(t - st->transfers) + 1;
}
/* The entry after t in account_id's history chain (0: t is the newest); t touches account_id. */
static inline uint64_t state_next_no(const engine_state_t *st, const transfer_rec_t *t, uint64_t account_id) {
  const engine_next_t *n = &st->next[t - st->transfers];
  return t->debit_account_id == account_id ? n->debit_no : n->credit_no;
}
static inline uint64_t state_prev_no(const transfer_rec_t *t, uint64_t account_id) {
  return t->debit_account_id == account_id ? t->prev_debit_no : t->prev_credit_no;
}
static inline const transfer_stamp_t *transfer_stamp(const engine_state_t *st, const transfer_rec_t *t) {
  return &st->stamps[t->stamp];
}
static inline int64_t transfer_created_ms(const engine_state_t *st, const transfer_rec_t *t) {
  return st->stamps[t->stamp].created_ms;
}
/* Account a as the API shows it: the record and its metadata position. */
engine_account_t state_account(const engine_state_t *st, const account_rec_t *a);
/* Transfer no's side entry (NULL if it has none); 1 <= no <= transfer_count. */
transfer_side_t *state_side(const engine_state_t *st, uint64_t no);
/* The tables that index each other: account ids and history numbers, the side and stamp
 * tables against the records (state_check; snapshot_load, so that a snapshot whose tables are
 * inconsistent is refused rather than trusted: state_account and the rules index by them). */
int state_tables_check(const engine_state_t *st, char *problem, size_t cap);
/* Transfer no as the API shows it: the record and its side entry; 1 <= no <= transfer_count. */
engine_transfer_t state_transfer(const engine_state_t *st, uint64_t no);
/* The same transfers, with the same links (verify, tests and the fuzz target compare states). */
bool state_transfers_equal(const engine_state_t *a, const engine_state_t *b);

/* Per account and velocity rule: the sliding window's oldest entry and sums (engine_rules.c). */
typedef struct vel_slot {
  uint32_t version; /* rule-set version it was built for; another → rebuilt from history */
  uint32_t count;
  uint64_t start_no; /* oldest history entry still in the window (0: none) */
  engine_wide_t amount;
} vel_slot_t;
typedef struct saved_vel {
  uint64_t account_id;
  uint64_t pad;
  vel_slot_t slots[ENGINE_VELOCITY_RULES_MAX];
} saved_vel_t;
#define ENGINE_SUSPICIOUS_MAX (16u * 1024u * 1024u)
#define ENGINE_RULE_VERSIONS_MAX (1u * 1024u * 1024u) /* rule-set changes over a ledger's life */
#define ENGINE_SETTLE_SLOTS (2u * ENGINE_SETTLEMENT_ROWS_MAX)

/* Reserves a table as virtual memory (MAP_NORESERVE; huge pages advised); NULL on failure. */
void *state_reserve(size_t bytes);
LEDGER_MUST_USE int state_init(engine_state_t *st, uint64_t idem_retention_ms);
void state_free(engine_state_t *st);

/* Starts a batch: stamps, then voids every pending transfer whose deadline <= time.
 * Returns true if that changed the state (the batch must then be logged). */
bool state_begin_batch(engine_state_t *st, uint64_t seq, int64_t time_ms);

/* Applies one write command. extra_pos is the log offset where the command's extra bytes
 * (for a batch: the first item's) will be. Returns true when the command must be logged
 * (it changed state, or it recorded an idempotency key). Fills the command's results. */
bool state_apply(engine_state_t *st, engine_cmd_t *cmd, uint64_t extra_pos);

/* Starts loading what applying cmd (a single transfer, deposit or withdrawal) will touch, so
 * that the cache misses overlap the commands applied before it (engine.c, batch_fill): stage
 * 0 the command itself, 1 its two accounts, 2 their newest history entries (read from the
 * accounts, so only once stage 1's loads are in). A hint: never changes anything, and any
 * command (or none of the above) is fine. */
void state_prefetch(const engine_state_t *st, const engine_cmd_t *cmd, int stage);

/* Answers a read command from the current state. */
void state_read(const engine_state_t *st, engine_cmd_t *cmd);

/* Region interning: returns the id (1..), or 0 when the table is full. */
uint16_t state_region_intern(engine_state_t *st, const char *name);
/* ---- auth (engine_auth.c) ---- */
LEDGER_MUST_USE int auth_state_init(engine_state_t *st);
void auth_state_free(engine_state_t *st);
/* Live only: resolves a BEARER command's credential into principal_id; false if invalid. */
bool auth_resolve(engine_state_t *st, engine_cmd_t *cmd);
/* The role a principal has now (deterministic: from the state). */
uint8_t auth_principal_role(const engine_state_t *st, uint64_t principal_id);
/* Coarse permission of a role for a command kind: ENGINE_OK, UNAUTHENTICATED or FORBIDDEN. */
int auth_permit(uint8_t kind, uint8_t role);
/* Applies the auth write commands. */
int auth_apply(engine_state_t *st, engine_cmd_t *cmd);
/* Answers the auth read commands. */
void auth_read(const engine_state_t *st, engine_cmd_t *cmd);
void auth_audit(engine_state_t *st, uint8_t kind, uint64_t actor, uint64_t subject, uint8_t role,
                const char *detail, const char *addr);
/* Snapshot helpers */
bool auth_cred_restore(engine_state_t *st, const cred_entry_t *e);
bool auth_user_index_rebuild(engine_state_t *st);

/* Snapshot load: re-inserts a saved idempotency entry. False if the table is full. */
bool state_idem_restore(engine_state_t *st, const idem_entry_t *e);
uint16_t state_region_find(const engine_state_t *st, const char *name);

/* ---- risk, settlements, search (engine_rules.c, engine_search.c) ---- */
LEDGER_MUST_USE int risk_state_init(engine_state_t *st);
void risk_state_free(engine_state_t *st);
bool risk_settle_index_rebuild(engine_state_t *st); /* after a snapshot load */
typedef struct risk_verdict {
  uint8_t action;      /* 0: nothing fired */
  uint8_t rule;        /* deciding rule index + 1 */
  uint32_t fired_mask;
  /* The debit account's velocity windows at the batch time, as judged (by velocity slot);
   * risk_record stores them with the transfer added. */
  vel_slot_t windows[ENGINE_VELOCITY_RULES_MAX];
} risk_verdict_t;
/* Judges a fresh transfer about to be applied (accounts resolved, amount in minor units).
 * Moves velocity windows forward (a pure function of time), changes nothing else. */
void risk_judge(engine_state_t *st, const account_rec_t *dr, const account_rec_t *cr, int64_t amount,
                risk_verdict_t *v);
/* Room for what risk_record and settlement_add will need (false: capacity exhausted). */
bool risk_has_room(const engine_state_t *st, const risk_verdict_t *v);
bool settlement_has_room(const engine_state_t *st, const transfer_rec_t *proto, int64_t created_ms);
/* After the transfer was appended: velocity sums and, when a rule fired, its suspicious entry. */
void risk_record(engine_state_t *st, transfer_rec_t *t, const risk_verdict_t *v);
/* Undoes risk_record's suspicious entry for the newest transfer (atomic batch rollback). */
void risk_unrecord(engine_state_t *st, const transfer_rec_t *t);
/* An account's velocity windows, saved before an atomic batch item and restored (newest
 * first) when the batch aborts: judging and recording move them. */
struct vel_slot;
void risk_vel_save(const engine_state_t *st, uint64_t account_id, struct vel_slot *out);
void risk_vel_restore(engine_state_t *st, uint64_t account_id, const struct vel_slot *in);
/* Adds (sign +1) or removes (-1) a posted movement, made at created_ms, to its
 * day/region/currency row. */
void settlement_add(engine_state_t *st, const transfer_rec_t *t, int64_t created_ms, int sign);
/* The region a transfer belongs to: the debit account's, a deposit's credit account's. */
uint16_t transfer_region(const engine_state_t *st, const transfer_rec_t *t);
/* The entry of a transfer with ENGINE_TF_SUSPICIOUS (NULL if none). */
engine_suspicious_t *risk_entry_of(const engine_state_t *st, uint64_t transfer_no);
int risk_apply_rules_set(engine_state_t *st, engine_cmd_t *cmd);
int risk_apply_review(engine_state_t *st, engine_cmd_t *cmd);
void risk_read(const engine_state_t *st, engine_cmd_t *cmd); /* RULES_GET, SUSPICIOUS_LIST, SETTLEMENTS */
void search_read(const engine_state_t *st, engine_cmd_t *cmd);
/* Settles a pending transfer (engine_state.c): post `amount` (0 = all) or void. */
int state_settle(engine_state_t *st, transfer_rec_t *p, bool post, int64_t amount, bool expired,
                 transfer_rec_t **entry_out);
/* Settlement rows equal a recomputation from the transfers; suspicious entries match. */
LEDGER_MUST_USE int risk_check(const engine_state_t *st, char *problem, size_t cap);

/* Invariant checks for verify and tests: zero sum per currency, floors, history chains.
 * Returns 0 or LEDGER_ECORRUPT with a message in problem. */
LEDGER_MUST_USE int state_check(const engine_state_t *st, char *problem, size_t cap);

/* ---- log encoding of commands (engine_codec.c) ---- */
typedef struct encoder {
  uint8_t *buf;
  size_t cap;
  size_t len; /* includes the record header space */
} encoder_t;
#define ENGINE_BATCH_HEADER_BYTES 24u
/* Returns the bytes the command needs in the log (bounded). */
size_t codec_cmd_bytes(const engine_cmd_t *cmd);
/* Encodes at enc->len; returns the offset (within the record payload) of the command's extra
 * bytes. The caller checked capacity with codec_cmd_bytes. */
size_t codec_encode_cmd(encoder_t *enc, const engine_cmd_t *cmd);
/* Decodes the command at p (len bytes left) into cmd, using items as storage for batch
 * items (ENGINE_BATCH_TRANSFERS_MAX entries) and results for their results. Returns bytes
 * consumed, 0 if malformed. extra_off_out: offset of its extra bytes from p. */
size_t codec_decode_cmd(const uint8_t *p, size_t len, engine_cmd_t *cmd,
                        engine_transfer_in_t *items, engine_item_result_t *results,
                        char *region_buf, size_t *extra_off_out);

/* Replays one record payload into the state. Used by recovery and verify. */
typedef struct replay_ctx {
  engine_state_t *st;
  engine_transfer_in_t *items;
  engine_item_result_t *results;
  uint64_t batches;
  uint64_t end_pos; /* log offset just after the last applied record */
  char problem[256];
} replay_ctx_t;
LEDGER_MUST_USE int replay_ctx_init(replay_ctx_t *rc, engine_state_t *st);
void replay_ctx_free(replay_ctx_t *rc);
int replay_record(void *ctx, const uint8_t *payload, uint32_t len, uint64_t payload_pos);

/* ---- snapshots (engine_snapshot.c) ---- */
/* Writes the state to a new snapshot file (tmp + fsync + rename + dir fsync). Uses only
 * system calls: safe in a forked child. log_pos: the log offset the state covers. direct:
 * bypass the page cache (O_DIRECT) where the file system allows it (the engine always asks). */
LEDGER_MUST_USE int snapshot_write(const engine_state_t *st, const char *tmp_path,
                                   const char *final_path, uint64_t log_pos, bool direct);
/* Loads a snapshot into a fresh state; *log_pos_out tells where the log tail starts. */
LEDGER_MUST_USE int snapshot_load(engine_state_t *st, const char *path, uint64_t *log_pos_out);

#endif
