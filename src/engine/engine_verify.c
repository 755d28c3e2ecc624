/*
 * engine_verify.c — `ledgerctl verify`: replay the whole log of a stopped server into a fresh
 * state and check it, and check the newest snapshot against the replay at the same point.
 * Also the names of results, kinds and statuses (shared by the API and tools).
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "engine/engine_state.h"
#include "store/store.h"

const char *engine_result_code(int result) {
  static const char *codes[ENGINE_R_COUNT] = {
      [ENGINE_OK] = "ok",
      [ENGINE_R_ACCOUNT_NOT_FOUND] = "account_not_found",
      [ENGINE_R_TRANSFER_NOT_FOUND] = "transfer_not_found",
      [ENGINE_R_INSUFFICIENT_FUNDS] = "insufficient_funds",
      [ENGINE_R_CURRENCY_MISMATCH] = "currency_mismatch",
      [ENGINE_R_SAME_ACCOUNT] = "same_account",
      [ENGINE_R_ACCOUNT_FROZEN] = "account_frozen",
      [ENGINE_R_LIMIT_EXCEEDED] = "limit_exceeded",
      [ENGINE_R_TRANSFER_NOT_PENDING] = "transfer_not_pending",
      [ENGINE_R_AMOUNT_EXCEEDS_PENDING] = "amount_exceeds_pending",
      [ENGINE_R_IDEMPOTENCY_CONFLICT] = "idempotency_conflict",
      [ENGINE_R_BATCH_ABORTED] = "batch_aborted",
      [ENGINE_R_INVALID_OPERATION] = "invalid_operation",
      [ENGINE_R_CAPACITY_EXHAUSTED] = "capacity_exhausted",
      [ENGINE_R_IDEMPOTENCY_EXPIRED] = "idempotency_expired",
      [ENGINE_R_INVALID_AMOUNT] = "invalid_amount",
      [ENGINE_R_UNAUTHENTICATED] = "unauthorized",
      [ENGINE_R_FORBIDDEN] = "forbidden",
      [ENGINE_R_USERNAME_TAKEN] = "username_taken",
      [ENGINE_R_USER_NOT_FOUND] = "user_not_found",
      [ENGINE_R_API_KEY_NOT_FOUND] = "api_key_not_found",
      [ENGINE_R_RULE_REJECTED] = "rule_rejected",
      [ENGINE_R_UNDER_REVIEW] = "under_review",
      [ENGINE_R_SUSPICIOUS_NOT_FOUND] = "not_found",
      [ENGINE_R_ALREADY_REVIEWED] = "already_reviewed",
  };
  if (result < 0 || result >= ENGINE_R_COUNT) return "internal";
  return codes[result];
}

const char *engine_kind_name(unsigned kind) {
  switch (kind) {
    case ENGINE_KIND_DEPOSIT: return "deposit";
    case ENGINE_KIND_WITHDRAWAL: return "withdrawal";
    default: return "transfer";
  }
}

const char *engine_status_name(unsigned status) {
  switch (status) {
    case ENGINE_STATUS_PENDING: return "pending";
    case ENGINE_STATUS_VOIDED: return "voided";
    default: return "posted";
  }
}

typedef struct until_ctx {
  replay_ctx_t *rc;
  uint64_t stop_pos;
} until_ctx_t;

static int replay_until(void *ctx, const uint8_t *payload, uint32_t len, uint64_t pos) {
  until_ctx_t *u = ctx;
  if (pos >= u->stop_pos) return 1; /* reached the snapshot's point */
  return replay_record(u->rc, payload, len, pos);
}

static int compare_with_snapshot(const engine_state_t *replayed, const char *path, char *problem,
                                 size_t cap) {
  engine_state_t snap;
  uint64_t log_pos;
  int rc = state_init(&snap, replayed->idem_retention_ms);
  if (rc != 0) return rc;
  rc = snapshot_load(&snap, path, &log_pos);
  if (rc != 0) {
    snprintf(problem, cap, "snapshot %.160s unreadable: %s", path, ledger_strerror(rc));
  } else if (snap.last_seq != replayed->last_seq || snap.account_count != replayed->account_count ||
             snap.transfer_count != replayed->transfer_count) {
    snprintf(problem, cap, "snapshot seq %llu differs from the log replayed to the same point",
             (unsigned long long)snap.last_seq);
    rc = LEDGER_ECORRUPT;
  } else if (memcmp(snap.accounts, replayed->accounts, snap.account_count * sizeof(account_rec_t)) != 0 ||
             memcmp(snap.account_extra, replayed->account_extra, snap.account_count * sizeof(account_extra_t)) != 0 ||
             !state_transfers_equal(&snap, replayed) ||
             snap.suspicious_count != replayed->suspicious_count || snap.settle_count != replayed->settle_count ||
             memcmp(&snap.rules, &replayed->rules, sizeof snap.rules) != 0 ||
             memcmp(snap.suspicious, replayed->suspicious, snap.suspicious_count * sizeof(engine_suspicious_t)) != 0 ||
             memcmp(snap.settle_rows, replayed->settle_rows, snap.settle_count * sizeof(engine_settlement_t)) != 0) {
    snprintf(problem, cap, "snapshot seq %llu: balances, transfers, rules, suspicious entries or settlements differ from the log",
             (unsigned long long)snap.last_seq);
    rc = LEDGER_ECORRUPT;
  }
  state_free(&snap);
  return rc;
}

int engine_verify(const char *data_dir, engine_verify_report_t *report) {
  memset(report, 0, sizeof *report);
  store_t *store = NULL;
  int rc = store_open(data_dir, true, &store);
  if (rc != 0) {
    snprintf(report->problem, sizeof report->problem, "cannot open %s: %s", data_dir, ledger_strerror(rc));
    return rc;
  }
  engine_state_t st;
  replay_ctx_t rctx;
  if ((rc = state_init(&st, ENGINE_IDEMPOTENCY_RETENTION_MS_DEFAULT)) != 0) goto out_store;
  if ((rc = replay_ctx_init(&rctx, &st)) != 0) goto out_state;
  char snap_path[PATH_MAX];
  uint64_t snap_seq = 0;
  bool torn = false;
  uint64_t resume = 0;
  if (store_snapshot_newest(store, snap_path, sizeof snap_path, &snap_seq) == 0) {
    /* Replay up to the snapshot's seq, compare, then go on to the end. */
    until_ctx_t u = {&rctx, UINT64_MAX};
    engine_state_t probe;
    uint64_t snap_log_pos = 0;
    if ((rc = state_init(&probe, st.idem_retention_ms)) == 0) {
      rc = snapshot_load(&probe, snap_path, &snap_log_pos);
      state_free(&probe);
    }
    if (rc == LEDGER_EVERSION) {
      /* Written by another version (the server refuses it and replays the whole log, and
       * replaces it with its next snapshot): nothing to compare, not damage. */
      report->snapshot_other_version = true;
      goto whole_log;
    }
    if (rc != 0) {
      snprintf(report->problem, sizeof report->problem, "snapshot %.160s unreadable: %s", snap_path, ledger_strerror(rc));
      goto out_ctx;
    }
    u.stop_pos = snap_log_pos + STORE_RECORD_HEADER_BYTES; /* first payload at or past it */
    rc = store_log_scan(store, 0, replay_until, &u, &torn);
    if (rc < 0) goto problem;
    if ((rc = compare_with_snapshot(&st, snap_path, report->problem, sizeof report->problem)) != 0) goto out_ctx;
    resume = rctx.end_pos ? rctx.end_pos : 0;
    if (resume != snap_log_pos) {
      snprintf(report->problem, sizeof report->problem, "snapshot ends at log offset %llu, not on a record boundary (%llu)",
               (unsigned long long)snap_log_pos, (unsigned long long)resume);
      rc = LEDGER_ECORRUPT;
      goto out_ctx;
    }
  }
whole_log:
  rc = store_log_scan(store, resume, replay_record, &rctx, &torn);
  if (rc != 0) goto problem;
  report->torn_tail = torn;
  report->batches = rctx.batches;
  report->transfers = st.transfer_count;
  report->accounts = st.account_count;
  report->last_seq = st.last_seq;
  rc = state_check(&st, report->problem, sizeof report->problem);
  goto out_ctx;
problem:
  if (rctx.problem[0]) snprintf(report->problem, sizeof report->problem, "%s", rctx.problem);
  else snprintf(report->problem, sizeof report->problem, "log scan failed: %s", ledger_strerror(rc));
  rc = LEDGER_ECORRUPT;
out_ctx:
  replay_ctx_free(&rctx);
out_state:
  state_free(&st);
out_store:
  store_close(store);
  return rc;
}
