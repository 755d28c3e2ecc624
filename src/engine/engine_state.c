/*
 * engine_state.c — the ledger state machine: accounts, transfers, two-phase, idempotency,
 * expiry. Pure and deterministic (see engine_state.h); engine thread (or replay) only.
 *
 * Invariants kept after every command (checked by state_check):
 *  - for each currency, the sum of balances is zero and so are pending debits − credits;
 *  - a floored account (customer, no overdraft) never has balance − pending_debits < 0;
 *  - a rejected command changed nothing.
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/engine_state.h"

void *state_reserve(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) return NULL;
  /* Big tables on transparent huge pages: random account updates miss the TLB far less, and
   * filling a table (or loading a snapshot) takes 512x fewer page faults. Advice only. */
  if (bytes >= (2u << 20)) (void)madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

#define reserve state_reserve

int state_init(engine_state_t *st, uint64_t idem_retention_ms) {
  memset(st, 0, sizeof *st);
  st->idem_retention_ms = idem_retention_ms;
  st->accounts = reserve((size_t)ENGINE_ACCOUNTS_MAX * sizeof(account_rec_t));
  st->account_extra = reserve((size_t)ENGINE_ACCOUNTS_MAX * sizeof(account_extra_t));
  st->transfers = reserve((size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_rec_t));
  st->next = reserve((size_t)ENGINE_TRANSFERS_MAX * sizeof(engine_next_t));
  st->side = reserve((size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_side_t));
  st->stamps = reserve((size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_stamp_t));
  st->idem_slots = ENGINE_IDEM_SLOTS_MIN;
  st->idem = reserve((size_t)st->idem_slots * sizeof(idem_entry_t));
  st->pending = reserve((size_t)ENGINE_PENDING_MAX * sizeof(pending_slot_t));
  st->codes = reserve(ENGINE_CODES_RING_BYTES);
  st->saved_times = reserve(2u * ENGINE_BATCH_TRANSFERS_MAX * sizeof *st->saved_times);
  st->saved_vel = reserve(ENGINE_BATCH_TRANSFERS_MAX * sizeof *st->saved_vel);
  if (!st->accounts || !st->account_extra || !st->transfers || !st->next || !st->side || !st->stamps || !st->idem || !st->pending || !st->codes || !st->saved_times ||
      !st->saved_vel ||
      auth_state_init(st) != 0 || risk_state_init(st) != 0) {
    state_free(st);
    return LEDGER_ENOMEM;
  }
  atomic_init(&st->region_count, 0);
  LEDGER_ASSERT(state_region_intern(st, "system") == 1);
  LEDGER_ASSERT(state_region_intern(st, "default") == 2);
  /* Genesis: one system account per currency, ids 1..count (docs/api.md). Not logged: every
   * state starts with them. */
  for (unsigned c = 1; c <= ledger_currency_count(); c++) {
    account_rec_t *a = &st->accounts[st->account_count++];
    a->id = (uint32_t)st->account_count;
    a->currency = (uint8_t)c;
    a->kind = ENGINE_ACCOUNT_KIND_SYSTEM;
    a->region = 1;
    a->flags = ENGINE_AF_OVERDRAFT;
  }
  return LEDGER_OK;
}

void state_free(engine_state_t *st) {
  if (st->accounts) munmap(st->accounts, (size_t)ENGINE_ACCOUNTS_MAX * sizeof(account_rec_t));
  if (st->account_extra) munmap(st->account_extra, (size_t)ENGINE_ACCOUNTS_MAX * sizeof(account_extra_t));
  if (st->transfers) munmap(st->transfers, (size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_rec_t));
  if (st->next) munmap(st->next, (size_t)ENGINE_TRANSFERS_MAX * sizeof(engine_next_t));
  if (st->side) munmap(st->side, (size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_side_t));
  if (st->stamps) munmap(st->stamps, (size_t)ENGINE_TRANSFERS_MAX * sizeof(transfer_stamp_t));
  if (st->idem) munmap(st->idem, (size_t)st->idem_slots * sizeof(idem_entry_t));
  if (st->pending) munmap(st->pending, (size_t)ENGINE_PENDING_MAX * sizeof(pending_slot_t));
  if (st->codes) munmap(st->codes, ENGINE_CODES_RING_BYTES);
  if (st->saved_times) munmap(st->saved_times, 2u * ENGINE_BATCH_TRANSFERS_MAX * sizeof *st->saved_times);
  if (st->saved_vel) munmap(st->saved_vel, ENGINE_BATCH_TRANSFERS_MAX * sizeof *st->saved_vel);
  auth_state_free(st);
  risk_state_free(st);
  memset(st, 0, sizeof *st);
}

/* ---------------------------------------------------------------- regions */

uint16_t state_region_find(const engine_state_t *st, const char *name) {
  uint32_t n = atomic_load_explicit(&st->region_count, memory_order_acquire);
  for (uint32_t i = 0; i < n; i++) {
    if (strcmp(st->regions[i], name) == 0) return (uint16_t)(i + 1);
  }
  return 0;
}

uint16_t state_region_intern(engine_state_t *st, const char *name) {
  uint16_t id = state_region_find(st, name);
  if (id) return id;
  uint32_t n = atomic_load_explicit(&st->region_count, memory_order_relaxed);
  if (n >= ENGINE_REGIONS_MAX || strlen(name) > API_REGION_BYTES_MAX) return 0;
  memcpy(st->regions[n], name, strlen(name) + 1);
  atomic_store_explicit(&st->region_count, n + 1, memory_order_release);
  return (uint16_t)(n + 1);
}

/* ---------------------------------------------------------------- lookups */

static account_rec_t *account_at(const engine_state_t *st, uint64_t id) {
  if (id == 0 || id > st->account_count) return NULL;
  return &st->accounts[id - 1];
}

static transfer_rec_t *transfer_at(const engine_state_t *st, uint64_t no, int64_t created_ms) {
  if (no == 0 || no > st->transfer_count) return NULL;
  transfer_rec_t *t = &st->transfers[no - 1];
  return transfer_created_ms(st, t) == created_ms ? t : NULL;
}

transfer_side_t *state_side(const engine_state_t *st, uint64_t no) {
  if (!(st->transfers[no - 1].flags & TRANSFER_SIDE_FLAGS)) return NULL;
  uint64_t lo = 0, hi = st->side_count;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (st->side[mid].no < no) lo = mid + 1;
    else hi = mid;
  }
  return lo < st->side_count && st->side[lo].no == no ? &st->side[lo] : NULL;
}

engine_transfer_t state_transfer(const engine_state_t *st, uint64_t no) {
  const transfer_rec_t *t = &st->transfers[no - 1];
  const transfer_stamp_t *m = transfer_stamp(st, t);
  engine_transfer_t v = {.seq = m->seq,
                         .amount_minor = t->amount_minor,
                         .created_ms = m->created_ms,
                         .updated_ms = m->created_ms,
                         .debit_balance_after = t->debit_balance_after,
                         .credit_balance_after = t->credit_balance_after,
                         .no = (uint32_t)no,
                         .debit_account_id = t->debit_account_id,
                         .credit_account_id = t->credit_account_id,
                         .prev_debit_no = t->prev_debit_no,
                         .prev_credit_no = t->prev_credit_no,
                         .rules_version = m->rules_version,
                         .kind = t->kind,
                         .status = t->status,
                         .currency = t->currency,
                         .flags = t->flags};
  const transfer_side_t *x = state_side(st, no);
  if (x) {
    v.posted_minor = x->posted_minor;
    v.updated_ms = x->updated_ms;
    v.pending_created_ms = x->pending_created_ms;
    v.extra_pos = x->extra_pos;
    v.pending_no = x->pending_no;
    /* A settlement entry is not judged: it shows the rule set that judged its pending transfer. */
    if ((t->flags & ENGINE_TF_SETTLEMENT) && x->pending_no != 0)
      v.rules_version = transfer_stamp(st, &st->transfers[x->pending_no - 1])->rules_version;
    v.extra_len = x->extra_len;
    v.timeout_s = x->timeout_s;
  }
  return v;
}

/* A side entry for the newest transfer (zeroed but for no and updated_ms); the caller sets
 * the flag of TRANSFER_SIDE_FLAGS that says why it has one. */
static transfer_side_t *side_add(engine_state_t *st, uint64_t no) {
  LEDGER_ASSERT(no == st->transfer_count && st->side_count < st->transfer_count);
  transfer_side_t *x = &st->side[st->side_count++];
  memset(x, 0, sizeof *x);
  x->no = (uint32_t)no;
  x->updated_ms = transfer_created_ms(st, &st->transfers[no - 1]);
  return x;
}

static bool floored(const account_rec_t *a) { return (a->flags & ENGINE_AF_OVERDRAFT) == 0; }

/* ---------------------------------------------------------------- pending heap */

static void heap_swap(pending_slot_t *h, uint64_t i, uint64_t j) {
  pending_slot_t t = h[i];
  h[i] = h[j];
  h[j] = t;
}

static bool heap_less(const pending_slot_t *a, const pending_slot_t *b) {
  return a->deadline_ms < b->deadline_ms || (a->deadline_ms == b->deadline_ms && a->no < b->no);
}

static void heap_push(engine_state_t *st, int64_t deadline_ms, uint64_t no) {
  LEDGER_ASSERT(st->pending_count < ENGINE_PENDING_MAX);
  uint64_t i = st->pending_count++;
  st->pending[i] = (pending_slot_t){deadline_ms, no};
  while (i > 0) {
    uint64_t parent = (i - 1) / 2;
    if (!heap_less(&st->pending[i], &st->pending[parent])) break;
    heap_swap(st->pending, i, parent);
    i = parent;
  }
}

static void heap_pop(engine_state_t *st) {
  LEDGER_ASSERT(st->pending_count > 0);
  st->pending[0] = st->pending[--st->pending_count];
  uint64_t i = 0;
  for (;;) {
    uint64_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < st->pending_count && heap_less(&st->pending[l], &st->pending[m])) m = l;
    if (r < st->pending_count && heap_less(&st->pending[r], &st->pending[m])) m = r;
    if (m == i) break;
    heap_swap(st->pending, i, m);
    i = m;
  }
}

/* ---------------------------------------------------------------- history */

/* Appends a new transfer record touching both accounts, linking it into their histories. */
static transfer_rec_t *transfer_append(engine_state_t *st, account_rec_t *dr, account_rec_t *cr) {
  LEDGER_ASSERT(st->transfer_count < ENGINE_TRANSFERS_MAX);
  transfer_rec_t *t = &st->transfers[st->transfer_count++];
  memset(t, 0, sizeof *t);
  st->next[st->transfer_count - 1] = (engine_next_t){0, 0};
  uint32_t no = (uint32_t)st->transfer_count; /* < ENGINE_TRANSFERS_MAX: fits (engine.h) */
  const transfer_stamp_t *last = st->stamp_count ? &st->stamps[st->stamp_count - 1] : NULL;
  if (!last || last->seq != st->batch_seq || last->created_ms != st->batch_time_ms ||
      last->rules_version != st->rules.version) {
    st->stamps[st->stamp_count++] = (transfer_stamp_t){.seq = st->batch_seq, .created_ms = st->batch_time_ms,
                                                       .first_no = no, .rules_version = st->rules.version};
  }
  t->stamp = (uint32_t)(st->stamp_count - 1);
  t->debit_account_id = (uint32_t)dr->id;
  t->credit_account_id = (uint32_t)cr->id;
  t->currency = dr->currency;
  t->prev_debit_no = (uint32_t)dr->history_last_no;
  t->prev_credit_no = (uint32_t)cr->history_last_no;
  account_rec_t *sides[2] = {dr, cr};
  for (int k = 0; k < 2; k++) {
    account_rec_t *a = sides[k];
    /* Which side of the previous entry to link comes from the account, not from the entry:
     * the store then waits on no load of a random old record. */
    if (a->history_last_no) {
      engine_next_t *link = &st->next[a->history_last_no - 1];
      if (a->history_last_debit) link->debit_no = no;
      else link->credit_no = no;
    } else {
      a->history_first_no = no;
    }
    a->history_last_no = no;
    a->history_last_debit = k == 0;
    a->updated_ms = st->batch_time_ms;
  }
  return t;
}

/* Unlinks the newest record (atomic batch rollback). */
static void transfer_pop(engine_state_t *st) {
  LEDGER_ASSERT(st->transfer_count > 0);
  transfer_rec_t *t = &st->transfers[st->transfer_count - 1];
  uint64_t no = st->transfer_count;
  account_rec_t *dr = account_at(st, t->debit_account_id);
  account_rec_t *cr = account_at(st, t->credit_account_id);
  uint64_t prevs[2] = {t->prev_debit_no, t->prev_credit_no};
  account_rec_t *sides[2] = {dr, cr};
  for (int k = 0; k < 2; k++) {
    account_rec_t *a = sides[k];
    LEDGER_ASSERT(a->history_last_no == no);
    a->history_last_no = (uint32_t)prevs[k];
    a->history_last_debit = 0;
    if (prevs[k]) {
      const transfer_rec_t *prev = &st->transfers[prevs[k] - 1];
      engine_next_t *link = &st->next[prevs[k] - 1];
      a->history_last_debit = prev->debit_account_id == a->id;
      if (a->history_last_debit) link->debit_no = 0;
      else link->credit_no = 0;
    } else {
      a->history_first_no = 0;
    }
  }
  if (t->flags & TRANSFER_SIDE_FLAGS) {
    LEDGER_ASSERT(st->side_count > 0 && st->side[st->side_count - 1].no == no);
    st->side_count--;
  }
  LEDGER_ASSERT(t->stamp == st->stamp_count - 1);
  if (st->stamps[t->stamp].first_no == no) st->stamp_count--;
  st->transfer_count--;
}

/* ---------------------------------------------------------------- transfers */

typedef struct resolved {
  account_rec_t *dr, *cr;
} resolved_t;

/* A customer sees only accounts it owns: any other is "not found", exactly as a missing one. */
static bool visible(const account_rec_t *a, uint8_t role, uint64_t principal) {
  return a && (role != ENGINE_ROLE_CUSTOMER || a->owner_id == principal);
}

static int resolve(engine_state_t *st, const engine_transfer_in_t *in, uint8_t role, uint64_t principal,
                   resolved_t *r) {
  r->dr = account_at(st, in->debit_account_id);
  r->cr = account_at(st, in->credit_account_id);
  /* Customers move money out of their own accounts only. A transfer may credit any existing
   * account: that is what paying someone is. A deposit brings money in from outside (it
   * debits cash:<CUR>): that is the operator's or the payment side's to record, not a
   * customer's. */
  if (in->kind == ENGINE_KIND_DEPOSIT) {
    if (role == ENGINE_ROLE_CUSTOMER) return ENGINE_R_FORBIDDEN;
  } else if (!visible(r->dr, role, principal)) {
    return ENGINE_R_ACCOUNT_NOT_FOUND;
  }
  if (in->kind == ENGINE_KIND_DEPOSIT) {
    if (!r->cr) return ENGINE_R_ACCOUNT_NOT_FOUND;
    r->dr = account_at(st, r->cr->currency); /* cash:<CUR> has id == currency id */
  } else if (in->kind == ENGINE_KIND_WITHDRAWAL) {
    if (!r->dr) return ENGINE_R_ACCOUNT_NOT_FOUND;
    r->cr = account_at(st, r->dr->currency);
  }
  if (!r->dr || !r->cr) return ENGINE_R_ACCOUNT_NOT_FOUND;
  if (r->dr == r->cr) return ENGINE_R_SAME_ACCOUNT;
  if (r->dr->currency != r->cr->currency) return ENGINE_R_CURRENCY_MISMATCH;
  if (in->currency != 0 && in->currency != r->dr->currency) return ENGINE_R_CURRENCY_MISMATCH;
  if (r->dr->status == ENGINE_ACCOUNT_FROZEN || r->cr->status == ENGINE_ACCOUNT_FROZEN)
    return ENGINE_R_ACCOUNT_FROZEN;
  return ENGINE_OK;
}

/* Checks and applies one transfer; on rejection nothing changed. */
static int transfer_apply(engine_state_t *st, const engine_cmd_t *cmd, const engine_transfer_in_t *in,
                          uint64_t extra_pos, transfer_rec_t **out, uint8_t *rule_out) {
  resolved_t r;
  int res = resolve(st, in, cmd->role, cmd->principal_id, &r);
  if (res != ENGINE_OK) return res;
  int64_t amount;
  if (in->amount_digits <= 0 ||
      money_to_minor(in->amount_digits, in->amount_scale, ledger_currency_get(r.dr->currency)->exponent, &amount) != 0)
    return ENGINE_R_INVALID_AMOUNT;
  int64_t avail, new_dr, new_cr;
  if (!money_sub(r.dr->balance_minor, r.dr->pending_debits_minor, &avail) ||
      !money_sub(avail, amount, &avail))
    return ENGINE_R_LIMIT_EXCEEDED;
  if (floored(r.dr) && avail < 0) return ENGINE_R_INSUFFICIENT_FUNDS;
  if (st->transfer_count >= ENGINE_TRANSFERS_MAX) return ENGINE_R_CAPACITY_EXHAUSTED;
  /* Risk rules judge it here, in the same step as the money (docs/rules.md). */
  risk_verdict_t verdict;
  risk_judge(st, r.dr, r.cr, amount, &verdict);
  if (verdict.action == ENGINE_ACTION_REJECT) {
    *rule_out = verdict.rule;
    return ENGINE_R_RULE_REJECTED;
  }
  bool held = verdict.action == ENGINE_ACTION_HOLD;
  bool pending = in->pending || held;
  transfer_rec_t proto = {.debit_account_id = (uint32_t)r.dr->id, .credit_account_id = (uint32_t)r.cr->id, .kind = in->kind,
                          .currency = r.dr->currency};
  if (!risk_has_room(st, &verdict) || (!pending && !settlement_has_room(st, &proto, st->batch_time_ms)))
    return ENGINE_R_CAPACITY_EXHAUSTED;
  if (pending) {
    if (!money_add(r.dr->pending_debits_minor, amount, &new_dr) ||
        !money_add(r.cr->pending_credits_minor, amount, &new_cr))
      return ENGINE_R_LIMIT_EXCEEDED;
    if (in->timeout_s && st->pending_count >= ENGINE_PENDING_MAX) return ENGINE_R_CAPACITY_EXHAUSTED;
    r.dr->pending_debits_minor = new_dr;
    r.cr->pending_credits_minor = new_cr;
  } else {
    if (!money_sub(r.dr->balance_minor, amount, &new_dr) ||
        !money_add(r.cr->balance_minor, amount, &new_cr))
      return ENGINE_R_LIMIT_EXCEEDED;
    r.dr->balance_minor = new_dr;
    r.cr->balance_minor = new_cr;
  }
  transfer_rec_t *t = transfer_append(st, r.dr, r.cr);
  uint64_t no = st->transfer_count;
  t->amount_minor = amount;
  t->kind = in->kind;
  t->status = pending ? ENGINE_STATUS_PENDING : ENGINE_STATUS_POSTED;
  t->flags = pending ? ENGINE_TF_PENDING : 0;
  if (held) t->flags |= ENGINE_TF_HELD | (in->pending ? ENGINE_TF_PENDING_ASKED : 0);
  if (in->extra_len) t->flags |= ENGINE_TF_EXTRA;
  if (pending || in->extra_len) {
    transfer_side_t *x = side_add(st, no);
    x->timeout_s = in->pending ? in->timeout_s : 0;
    x->extra_pos = in->extra_len ? extra_pos : 0;
    x->extra_len = in->extra_len;
  }
  t->debit_balance_after = r.dr->balance_minor;
  t->credit_balance_after = r.cr->balance_minor;
  if (in->pending && in->timeout_s)
    heap_push(st, st->batch_time_ms + (int64_t)in->timeout_s * 1000, no);
  risk_record(st, t, &verdict);
  if (!pending) settlement_add(st, t, st->batch_time_ms, 1);
  *out = t;
  return ENGINE_OK;
}

/* Undo of transfer_apply for the newest transfer (atomic batches). */
static void transfer_undo(engine_state_t *st) {
  transfer_rec_t *t = &st->transfers[st->transfer_count - 1];
  uint64_t no = st->transfer_count;
  account_rec_t *dr = account_at(st, t->debit_account_id);
  account_rec_t *cr = account_at(st, t->credit_account_id);
  risk_unrecord(st, t);
  if (t->status == ENGINE_STATUS_POSTED) settlement_add(st, t, transfer_created_ms(st, t), -1);
  if (t->status == ENGINE_STATUS_PENDING) {
    dr->pending_debits_minor -= t->amount_minor;
    cr->pending_credits_minor -= t->amount_minor;
    const transfer_side_t *x = state_side(st, no);
    if (x && x->timeout_s) {
      /* It was the newest push; remove it wherever the heap moved it. */
      for (uint64_t i = 0; i < st->pending_count; i++) {
        if (st->pending[i].no == no) {
          /* Replace with a past deadline and pop: sifts correctly. */
          st->pending[i].deadline_ms = INT64_MIN;
          uint64_t j = i;
          while (j > 0 && heap_less(&st->pending[j], &st->pending[(j - 1) / 2])) {
            heap_swap(st->pending, j, (j - 1) / 2);
            j = (j - 1) / 2;
          }
          heap_pop(st);
          break;
        }
      }
    }
  } else {
    dr->balance_minor += t->amount_minor;
    cr->balance_minor -= t->amount_minor;
  }
  transfer_pop(st);
}

/* Settles a pending transfer: post `amount` (0 = all) or void. Appends a settlement entry. */
int state_settle(engine_state_t *st, transfer_rec_t *p, bool post, int64_t amount, bool expired,
                 transfer_rec_t **entry_out) {
  if (p->status != ENGINE_STATUS_PENDING) return ENGINE_R_TRANSFER_NOT_PENDING;
  account_rec_t *dr = account_at(st, p->debit_account_id);
  account_rec_t *cr = account_at(st, p->credit_account_id);
  LEDGER_ASSERT(dr && cr);
  if (amount == 0) amount = p->amount_minor;
  int64_t new_dr = dr->balance_minor, new_cr = cr->balance_minor;
  if (post) {
    if (amount < 0) return ENGINE_R_INVALID_OPERATION;
    if (amount > p->amount_minor) return ENGINE_R_AMOUNT_EXCEEDS_PENDING;
    if (dr->status == ENGINE_ACCOUNT_FROZEN || cr->status == ENGINE_ACCOUNT_FROZEN)
      return ENGINE_R_ACCOUNT_FROZEN;
    if (!money_sub(dr->balance_minor, amount, &new_dr) || !money_add(cr->balance_minor, amount, &new_cr))
      return ENGINE_R_LIMIT_EXCEEDED;
  }
  if (st->transfer_count >= ENGINE_TRANSFERS_MAX) return ENGINE_R_CAPACITY_EXHAUSTED;
  transfer_rec_t proto = {.debit_account_id = (uint32_t)dr->id, .credit_account_id = (uint32_t)cr->id, .kind = p->kind,
                          .currency = p->currency};
  if (post && !settlement_has_room(st, &proto, st->batch_time_ms)) return ENGINE_R_CAPACITY_EXHAUSTED;
  dr->pending_debits_minor -= p->amount_minor;
  cr->pending_credits_minor -= p->amount_minor;
  dr->balance_minor = new_dr;
  cr->balance_minor = new_cr;
  LEDGER_ASSERT(dr->pending_debits_minor >= 0 && cr->pending_credits_minor >= 0);
  uint64_t p_no = transfer_no_of(st, p);
  transfer_side_t *px = state_side(st, p_no);
  LEDGER_ASSERT(px != NULL); /* ENGINE_TF_PENDING: it has one */
  p->status = post ? ENGINE_STATUS_POSTED : ENGINE_STATUS_VOIDED;
  px->posted_minor = post ? amount : 0;
  /* An expiry is stamped with the deadline, not the batch time, so the entry is the same
   * whichever batch happened to run it. */
  int64_t p_created_ms = transfer_created_ms(st, p);
  px->updated_ms = expired ? p_created_ms + (int64_t)px->timeout_s * 1000 : st->batch_time_ms;
  if (expired) p->flags |= ENGINE_TF_EXPIRED;
  transfer_rec_t *e = transfer_append(st, dr, cr);
  e->kind = p->kind;
  e->status = p->status;
  e->flags = ENGINE_TF_SETTLEMENT | (expired ? ENGINE_TF_EXPIRED : 0);
  e->amount_minor = post ? amount : p->amount_minor;
  transfer_side_t *ex = side_add(st, st->transfer_count);
  ex->pending_no = (uint32_t)p_no;
  ex->pending_created_ms = p_created_ms;
  e->debit_balance_after = dr->balance_minor;
  e->credit_balance_after = cr->balance_minor;
  if (post) settlement_add(st, e, st->batch_time_ms, 1);
  if (entry_out) *entry_out = e;
  return ENGINE_OK;
}

bool state_begin_batch(engine_state_t *st, uint64_t seq, int64_t time_ms) {
  LEDGER_ASSERT(seq == st->last_seq + 1);
  LEDGER_ASSERT(time_ms >= st->last_time_ms);
  st->batch_seq = seq;
  st->batch_time_ms = time_ms;
  bool changed = false;
  while (st->pending_count > 0 && st->pending[0].deadline_ms <= time_ms) {
    uint64_t no = st->pending[0].no;
    heap_pop(st);
    transfer_rec_t *p = &st->transfers[no - 1];
    if (p->status != ENGINE_STATUS_PENDING) continue; /* posted or voided before */
    if (state_settle(st, p, false, 0, true, NULL) == ENGINE_OK) changed = true;
  }
  return changed;
}

/* ---------------------------------------------------------------- idempotency */

static bool idem_live(const engine_state_t *st, const idem_entry_t *e) {
  return (e->key.lo | e->key.hi) != 0 &&
         e->created_ms + (int64_t)st->idem_retention_ms > st->batch_time_ms;
}

static bool key_eq(ledger_hash128_t a, ledger_hash128_t b) { return a.lo == b.lo && a.hi == b.hi; }

/* Finds a live entry for key; *slot_out is where a new one goes (first free or expired slot). */
static idem_entry_t *idem_find(engine_state_t *st, ledger_hash128_t key, idem_entry_t **slot_out) {
  uint64_t mask = st->idem_slots - 1;
  idem_entry_t *free_slot = NULL;
  for (uint64_t i = key.lo & mask, n = 0; n < st->idem_slots; i = (i + 1) & mask, n++) {
    idem_entry_t *e = &st->idem[i];
    if ((e->key.lo | e->key.hi) == 0) {
      if (!free_slot) free_slot = e;
      break;
    }
    if (key_eq(e->key, key)) {
      if (idem_live(st, e)) return e;
      if (!free_slot) free_slot = e; /* expired: reuse in place */
      continue;
    }
    if (!free_slot && !idem_live(st, e)) free_slot = e;
  }
  *slot_out = free_slot;
  return NULL;
}

/* Rebuilds the table with `slots` slots, dropping expired entries. O(slots): it runs when
 * the table is half full, so its cost is amortised over the inserts that filled it. */
static bool idem_rebuild(engine_state_t *st, uint64_t slots) {
  idem_entry_t *fresh = reserve((size_t)slots * sizeof(idem_entry_t));
  if (!fresh) return false;
  uint64_t mask = slots - 1, live = 0;
  for (uint64_t i = 0; i < st->idem_slots; i++) {
    const idem_entry_t *e = &st->idem[i];
    if ((e->key.lo | e->key.hi) == 0 || !idem_live(st, e)) continue;
    uint64_t j = e->key.lo & mask;
    while ((fresh[j].key.lo | fresh[j].key.hi) != 0) j = (j + 1) & mask;
    fresh[j] = *e;
    live++;
  }
  munmap(st->idem, (size_t)st->idem_slots * sizeof(idem_entry_t));
  st->idem = fresh;
  st->idem_slots = slots;
  st->idem_used = live;
  return true;
}

/* Inserts a previously saved entry (snapshot load), growing the table as needed. */
bool state_idem_restore(engine_state_t *st, const idem_entry_t *e) {
  if (2 * (st->idem_used + 1) > st->idem_slots &&
      (st->idem_slots >= ENGINE_IDEM_SLOTS_MAX || !idem_rebuild(st, st->idem_slots * 2)))
    return false;
  uint64_t mask = st->idem_slots - 1, j = e->key.lo & mask;
  while ((st->idem[j].key.lo | st->idem[j].key.hi) != 0) j = (j + 1) & mask;
  st->idem[j] = *e;
  st->idem_used++;
  return true;
}

static idem_entry_t *idem_slot_for_insert(engine_state_t *st, ledger_hash128_t key) {
  idem_entry_t *slot = NULL;
  idem_entry_t *e = idem_find(st, key, &slot);
  if (e) return e; /* replay of the log: the same key again (cannot happen live) */
  if (!slot || 2 * (st->idem_used + 1) > st->idem_slots) {
    /* Half full: drop the expired, and double if that did not make room. */
    uint64_t live = 0;
    for (uint64_t i = 0; i < st->idem_slots; i++) live += idem_live(st, &st->idem[i]);
    uint64_t slots = st->idem_slots;
    while (2 * (live + 1) > slots / 2 && slots < ENGINE_IDEM_SLOTS_MAX) slots *= 2;
    if (!idem_rebuild(st, slots)) return NULL;
    e = idem_find(st, key, &slot);
    if (e) return e;
    if (!slot || 2 * (st->idem_used + 1) > st->idem_slots) return NULL;
  }
  if ((slot->key.lo | slot->key.hi) == 0) st->idem_used++;
  return slot;
}

/* ---------------------------------------------------------------- commands */

#define BATCH_CODES_PREFIX 4u   /* the batch's rule-set version, before its item codes */
#define BATCH_CODE_RULE 0x80u    /* an item code: rejected by the rule with this index (low bits) */
static_assert(ENGINE_R_COUNT < BATCH_CODE_RULE && ENGINE_RULES_MAX <= BATCH_CODE_RULE, "item code layout");

/* A rejection names its rule: the ids of the set in force go back with the command. */
static void rules_names(const engine_state_t *st, engine_cmd_t *cmd, uint32_t version) {
  cmd->rules_version = version;
  if (version >= 1 && version <= st->rules.version)
    memcpy(cmd->rule_ids, st->rule_names[version - 1], sizeof cmd->rule_ids);
}

/* A flagged or held transfer's suspicious-activity entry goes back with it (its rule). */
static void attach_risk(const engine_state_t *st, engine_cmd_t *cmd) {
  if (!(cmd->transfer.flags & ENGINE_TF_SUSPICIOUS)) return;
  const engine_suspicious_t *e = risk_entry_of(st, cmd->transfer.no);
  if (e) cmd->suspicious = *e;
}

/* The transfer as its creating response showed it (idempotent replays answer this). */
static engine_transfer_t creation_view(const engine_state_t *st, uint64_t no) {
  engine_transfer_t v = state_transfer(st, no);
  if (v.flags & ENGINE_TF_PENDING) {
    v.status = ENGINE_STATUS_PENDING;
    v.posted_minor = 0;
    v.updated_ms = v.created_ms;
    v.flags &= (uint8_t)~ENGINE_TF_EXPIRED;
  }
  return v;
}

engine_account_t state_account(const engine_state_t *st, const account_rec_t *a) {
  const account_extra_t *x = &st->account_extra[a->id - 1];
  return (engine_account_t){.id = a->id,
                            .owner_id = a->owner_id,
                            .balance_minor = a->balance_minor,
                            .pending_debits_minor = a->pending_debits_minor,
                            .pending_credits_minor = a->pending_credits_minor,
                            .created_ms = x->created_ms,
                            .updated_ms = a->updated_ms,
                            .history_first_no = a->history_first_no,
                            .history_last_no = a->history_last_no,
                            .extra_pos = x->pos,
                            .extra_len = x->len,
                            .region = a->region,
                            .currency = a->currency,
                            .kind = a->kind,
                            .status = a->status,
                            .flags = a->flags,
                            .history_last_debit = a->history_last_debit};
}

static engine_account_t account_creation_view(const engine_state_t *st, const account_rec_t *a) {
  engine_account_t v = state_account(st, a);
  v.balance_minor = v.pending_debits_minor = v.pending_credits_minor = 0;
  v.status = ENGINE_ACCOUNT_OPEN;
  v.updated_ms = v.created_ms;
  v.history_first_no = v.history_last_no = 0;
  v.history_last_debit = 0;
  return v;
}

static int apply_account_create(engine_state_t *st, engine_cmd_t *cmd, uint64_t extra_pos) {
  if (st->account_count >= ENGINE_ACCOUNTS_MAX) return ENGINE_R_CAPACITY_EXHAUSTED;
  if (!ledger_currency_get(cmd->u.account_create.currency)) return ENGINE_R_INVALID_OPERATION;
  uint64_t owner = cmd->u.account_create.owner_id;
  if (cmd->role == ENGINE_ROLE_CUSTOMER) { /* owner_id is admin-only: a customer owns what it opens */
    if (owner != 0 && owner != cmd->principal_id) return ENGINE_R_FORBIDDEN;
    if (cmd->u.account_create.allow_overdraft) return ENGINE_R_FORBIDDEN; /* credit is granted, not taken */
    owner = cmd->principal_id;
  }
  const char *region_name = cmd->u.account_create.region;
  if (region_name[0] == '\0') region_name = st->rules.default_region[0] ? st->rules.default_region : "default";
  uint16_t region = state_region_intern(st, region_name);
  if (region == 0) return ENGINE_R_LIMIT_EXCEEDED;
  account_rec_t *a = &st->accounts[st->account_count++];
  memset(a, 0, sizeof *a);
  a->id = (uint32_t)st->account_count; /* <= ENGINE_ACCOUNTS_MAX */
  a->owner_id = owner;
  a->currency = cmd->u.account_create.currency;
  a->region = region;
  a->flags = cmd->u.account_create.allow_overdraft ? ENGINE_AF_OVERDRAFT : 0;
  a->updated_ms = st->batch_time_ms;
  account_extra_t *x = &st->account_extra[a->id - 1];
  x->created_ms = st->batch_time_ms;
  x->len = cmd->u.account_create.extra_len;
  x->pos = x->len ? extra_pos : 0;
  cmd->account = state_account(st, a);
  return ENGINE_OK;
}

static int apply_freeze(engine_state_t *st, engine_cmd_t *cmd, bool freeze) {
  account_rec_t *a = account_at(st, cmd->u.account.account_id);
  if (!a) return ENGINE_R_ACCOUNT_NOT_FOUND;
  if (a->kind == ENGINE_ACCOUNT_KIND_SYSTEM) return ENGINE_R_INVALID_OPERATION;
  if (a->status != (freeze ? ENGINE_ACCOUNT_FROZEN : ENGINE_ACCOUNT_OPEN))
    auth_audit(st, freeze ? ENGINE_AUDIT_ACCOUNT_FROZEN : ENGINE_AUDIT_ACCOUNT_UNFROZEN, cmd->principal_id, a->id, 0,
               NULL, NULL); /* no address: money commands do not log one */
  a->status = freeze ? ENGINE_ACCOUNT_FROZEN : ENGINE_ACCOUNT_OPEN;
  a->updated_ms = st->batch_time_ms;
  cmd->account = state_account(st, a);
  return ENGINE_OK;
}

static int apply_settle(engine_state_t *st, engine_cmd_t *cmd, bool post) {
  transfer_rec_t *p = transfer_at(st, cmd->u.settle.no, cmd->u.settle.created_ms);
  if (!p || (p->flags & ENGINE_TF_SETTLEMENT) ||
      !visible(account_at(st, p->debit_account_id), cmd->role, cmd->principal_id))
    return ENGINE_R_TRANSFER_NOT_FOUND;
  int64_t amount = 0;
  if (post && cmd->u.settle.amount_digits != 0 &&
      (cmd->u.settle.amount_digits < 0 ||
       money_to_minor(cmd->u.settle.amount_digits, cmd->u.settle.amount_scale,
                      ledger_currency_get(p->currency)->exponent, &amount) != 0))
    return ENGINE_R_INVALID_AMOUNT;
  if (p->flags & ENGINE_TF_HELD) {
    const engine_suspicious_t *s = risk_entry_of(st, cmd->u.settle.no);
    if (s && s->status == ENGINE_SUSPICIOUS_OPEN) {
      cmd->transfer = state_transfer(st, cmd->u.settle.no);
      return ENGINE_R_UNDER_REVIEW;
    }
  }
  int res = state_settle(st, p, post, amount, false, NULL);
  cmd->transfer = state_transfer(st, cmd->u.settle.no);
  attach_risk(st, cmd);
  return res;
}

/* Accounts are random among millions, and so are their newest history entries (which
 * transfer_append links to the new transfer). Loads start early so that their cache misses
 * overlap other items' work: an item's accounts ACCOUNTS_AHEAD items before it, then, once
 * those are in cache, the entries their history_last_no names HISTORY_AHEAD items before it
 * (possibly stale by then: a hint, never dereferenced). */
#define BATCH_ACCOUNTS_AHEAD 16u
#define BATCH_HISTORY_AHEAD 8u

/* always_inline: as separate functions GCC finds them free of side effects and drops the calls. */
static inline __attribute__((always_inline)) void prefetch_account(const engine_state_t *st, uint64_t id) {
  if (id - 1 < st->account_count) __builtin_prefetch(&st->accounts[id - 1], 1, 1); /* one line */
}

static inline __attribute__((always_inline)) void prefetch_history(const engine_state_t *st, uint64_t id) {
  if (id - 1 < st->account_count) {
    uint64_t last = st->accounts[id - 1].history_last_no;
    if (last - 1 < st->transfer_count) __builtin_prefetch(&st->next[last - 1], 1, 1);
  }
}

void state_prefetch(const engine_state_t *st, const engine_cmd_t *cmd, int stage) {
  if (stage == 0) {
    __builtin_prefetch(&cmd->kind, 0, 1);
    __builtin_prefetch(&cmd->u.transfer.debit_account_id, 0, 1);
    return;
  }
  if (cmd->kind != ENGINE_CMD_TRANSFER) return;
  const engine_transfer_in_t *in = &cmd->u.transfer;
  if (stage == 1) {
    prefetch_account(st, in->debit_account_id);
    prefetch_account(st, in->credit_account_id);
  } else {
    prefetch_history(st, in->debit_account_id);
    prefetch_history(st, in->credit_account_id);
  }
}

/* A batch request: each item applied in order; atomic = all or none. Successful items get
 * consecutive transfer numbers (nothing else runs in between), which idempotent replays use. */
static int apply_batch(engine_state_t *st, engine_cmd_t *cmd, uint64_t extra_pos) {
  uint32_t n = cmd->u.batch.item_count, failed = 0, saved = 0, saved_v = 0;
  bool vel_used = st->vel_used;
  uint64_t first_no = st->transfer_count + 1;
  LEDGER_ASSERT(n <= ENGINE_BATCH_TRANSFERS_MAX);
  for (uint32_t i = 0; i < n; i++) {
    const engine_transfer_in_t *in = &cmd->u.batch.items[i];
    engine_item_result_t *r = &cmd->u.batch.results[i];
    if (i + BATCH_ACCOUNTS_AHEAD < n) {
      const engine_transfer_in_t *ahead = &cmd->u.batch.items[i + BATCH_ACCOUNTS_AHEAD];
      prefetch_account(st, ahead->debit_account_id);
      prefetch_account(st, ahead->credit_account_id);
    }
    if (i + BATCH_HISTORY_AHEAD < n) {
      const engine_transfer_in_t *ahead = &cmd->u.batch.items[i + BATCH_HISTORY_AHEAD];
      prefetch_history(st, ahead->debit_account_id);
      prefetch_history(st, ahead->credit_account_id);
    }
    transfer_rec_t *t = NULL;
    resolved_t acc;
    if (cmd->u.batch.atomic && resolve(st, in, cmd->role, cmd->principal_id, &acc) == ENGINE_OK) {
      st->saved_times[saved++] = (struct saved_time){acc.dr->id, acc.dr->updated_ms};
      st->saved_times[saved++] = (struct saved_time){acc.cr->id, acc.cr->updated_ms};
      saved_vel_t *sv = &st->saved_vel[saved_v++];
      sv->account_id = acc.dr->id;
      risk_vel_save(st, acc.dr->id, sv->slots);
    }
    uint8_t rule = 0;
    int res = transfer_apply(st, cmd, in, extra_pos, &t, &rule);
    extra_pos += in->extra_len;
    memset(r, 0, sizeof *r);
    r->result = (uint16_t)res;
    r->rule = rule;
    if (rule) rules_names(st, cmd, st->rules.version);
    if (res == ENGINE_OK) {
      r->no = transfer_no_of(st, t);
      r->created_ms = transfer_created_ms(st, t);
      r->status = t->status;
    } else {
      failed++;
    }
  }
  if (cmd->u.batch.atomic && failed > 0) {
    while (st->transfer_count >= first_no) transfer_undo(st);
    while (saved > 0) { /* newest first: each account ends with its time before the batch */
      saved--;
      account_at(st, st->saved_times[saved].account_id)->updated_ms = st->saved_times[saved].updated_ms;
    }
    while (saved_v > 0) { /* newest first: each account ends with its windows before the batch */
      saved_v--;
      risk_vel_restore(st, st->saved_vel[saved_v].account_id, st->saved_vel[saved_v].slots);
    }
    st->vel_used = vel_used;
    for (uint32_t i = 0; i < n; i++) {
      engine_item_result_t *r = &cmd->u.batch.results[i];
      if (r->result == ENGINE_OK) r->result = ENGINE_R_BATCH_ABORTED;
      r->no = 0;
      r->created_ms = 0;
    }
    return ENGINE_R_BATCH_ABORTED;
  }
  return ENGINE_OK;
}

static int apply_fresh(engine_state_t *st, engine_cmd_t *cmd, uint64_t extra_pos) {
  switch (cmd->kind) {
    case ENGINE_CMD_ACCOUNT_CREATE: return apply_account_create(st, cmd, extra_pos);
    case ENGINE_CMD_TRANSFER: {
      transfer_rec_t *t = NULL;
      uint8_t rule = 0;
      int res = transfer_apply(st, cmd, &cmd->u.transfer, extra_pos, &t, &rule);
      if (res == ENGINE_OK) cmd->transfer = state_transfer(st, transfer_no_of(st, t));
      attach_risk(st, cmd);
      cmd->reject_rule = rule;
      if (rule) rules_names(st, cmd, st->rules.version);
      return res;
    }
    case ENGINE_CMD_RULES_SET: return risk_apply_rules_set(st, cmd);
    case ENGINE_CMD_SUSPICIOUS_REVIEW: return risk_apply_review(st, cmd);
    case ENGINE_CMD_TRANSFER_POST: return apply_settle(st, cmd, true);
    case ENGINE_CMD_TRANSFER_VOID: return apply_settle(st, cmd, false);
    case ENGINE_CMD_ACCOUNT_FREEZE: return apply_freeze(st, cmd, true);
    case ENGINE_CMD_ACCOUNT_UNFREEZE: return apply_freeze(st, cmd, false);
    case ENGINE_CMD_TRANSFER_BATCH: return apply_batch(st, cmd, extra_pos);
    case ENGINE_CMD_USER_CREATE:
    case ENGINE_CMD_SESSION_CREATE:
    case ENGINE_CMD_SESSION_REVOKE:
    case ENGINE_CMD_API_KEY_CREATE:
    case ENGINE_CMD_API_KEY_REVOKE:
    case ENGINE_CMD_SIGNIN_FAILED:
    case ENGINE_CMD_USER_ROLE_SET: return auth_apply(st, cmd);
    default: LEDGER_ASSERT(!"not a write command");
  }
  return ENGINE_R_INVALID_OPERATION;
}

/* Answers a repeat from its idempotency entry. */
static void replay_answer(engine_state_t *st, engine_cmd_t *cmd, const idem_entry_t *e) {
  cmd->replayed = true;
  cmd->result = (int16_t)e->result;
  switch (e->kind) {
    case ENGINE_CMD_ACCOUNT_CREATE:
      if (e->result == ENGINE_OK) cmd->account = account_creation_view(st, account_at(st, e->object));
      break;
    case ENGINE_CMD_TRANSFER:
      if (e->result == ENGINE_OK) cmd->transfer = creation_view(st, e->object);
      if (e->result == ENGINE_OK) attach_risk(st, cmd);
      if (e->result == ENGINE_R_RULE_REJECTED) { /* the rule's id, while that rule set is in force */
        cmd->reject_rule = (uint8_t)e->object;
        rules_names(st, cmd, e->count);
      }
      break;
    case ENGINE_CMD_TRANSFER_POST:
    case ENGINE_CMD_TRANSFER_VOID:
      if (e->object) cmd->transfer = state_transfer(st, e->object);
      if (e->object) attach_risk(st, cmd);
      break;
    case ENGINE_CMD_ACCOUNT_FREEZE:
    case ENGINE_CMD_ACCOUNT_UNFREEZE:
      if (e->object) cmd->account = state_account(st, account_at(st, e->object));
      break;
    case ENGINE_CMD_SUSPICIOUS_REVIEW:
      if (e->object) {
        cmd->suspicious = st->suspicious[e->object - 1];
        cmd->transfer = state_transfer(st, cmd->suspicious.transfer_no);
      }
      break;
    case ENGINE_CMD_TRANSFER_BATCH: {
      if (st->codes_total - e->codes_pos > ENGINE_CODES_RING_BYTES ||
          e->count != cmd->u.batch.item_count) {
        cmd->result = ENGINE_R_IDEMPOTENCY_EXPIRED;
        return;
      }
      uint64_t no = e->object;
      uint32_t version = 0;
      for (unsigned k = 0; k < 4; k++)
        version |= (uint32_t)st->codes[(e->codes_pos + k) % ENGINE_CODES_RING_BYTES] << (8 * k);
      bool named = false;
      for (uint32_t i = 0; i < e->count; i++) {
        engine_item_result_t *r = &cmd->u.batch.results[i];
        memset(r, 0, sizeof *r);
        uint8_t code = st->codes[(e->codes_pos + BATCH_CODES_PREFIX + i) % ENGINE_CODES_RING_BYTES];
        r->result = code & BATCH_CODE_RULE ? ENGINE_R_RULE_REJECTED : code;
        if (code & BATCH_CODE_RULE) {
          r->rule = (uint8_t)((code & ~BATCH_CODE_RULE) + 1);
          if (!named) rules_names(st, cmd, version);
          named = true;
        }
        if (r->result == ENGINE_OK) {
          engine_transfer_t v = creation_view(st, no);
          r->no = no++;
          r->created_ms = v.created_ms;
          r->status = v.status;
        }
      }
      break;
    }
    default: break;
  }
}

static void idem_record(engine_state_t *st, idem_entry_t *slot, ledger_hash128_t key, const engine_cmd_t *cmd,
                        uint64_t first_no) {
  memset(slot, 0, sizeof *slot);
  slot->key = key;
  slot->body = cmd->body_hash;
  slot->created_ms = st->batch_time_ms;
  slot->kind = cmd->kind;
  slot->result = (uint16_t)cmd->result;
  switch (cmd->kind) {
    case ENGINE_CMD_ACCOUNT_CREATE:
    case ENGINE_CMD_ACCOUNT_FREEZE:
    case ENGINE_CMD_ACCOUNT_UNFREEZE: slot->object = cmd->account.id; break;
    case ENGINE_CMD_TRANSFER:
    case ENGINE_CMD_TRANSFER_POST:
    case ENGINE_CMD_TRANSFER_VOID:
      slot->object = cmd->transfer.no;
      if (cmd->result == ENGINE_R_RULE_REJECTED) {
        slot->object = cmd->reject_rule;
        slot->count = cmd->rules_version;
      }
      break;
    case ENGINE_CMD_SUSPICIOUS_REVIEW: slot->object = cmd->suspicious.id; break;
    case ENGINE_CMD_TRANSFER_BATCH:
      slot->object = first_no;
      slot->count = cmd->u.batch.item_count;
      /* In the ring: the rule-set version (4 bytes), then one byte per item: its result, or
       * BATCH_CODE_RULE | the rule's index for a rule rejection. */
      slot->codes_pos = st->codes_total;
      for (unsigned k = 0; k < BATCH_CODES_PREFIX; k++)
        st->codes[(st->codes_total + k) % ENGINE_CODES_RING_BYTES] = (uint8_t)(st->rules.version >> (8 * k));
      for (uint32_t i = 0; i < slot->count; i++) {
        const engine_item_result_t *r = &cmd->u.batch.results[i];
        uint8_t code = (uint8_t)r->result;
        if (r->result == ENGINE_R_RULE_REJECTED && r->rule) code = (uint8_t)(BATCH_CODE_RULE | (r->rule - 1));
        st->codes[(st->codes_total + BATCH_CODES_PREFIX + i) % ENGINE_CODES_RING_BYTES] = code;
      }
      st->codes_total += BATCH_CODES_PREFIX + slot->count;
      break;
    default: break;
  }
}

bool state_apply(engine_state_t *st, engine_cmd_t *cmd, uint64_t extra_pos) {
  cmd->replayed = false;
  cmd->seq = st->batch_seq;
  cmd->time_ms = st->batch_time_ms;
  /* The role comes from the state, live and in replay alike: the same log gives the same
   * permissions. A refusal is not remembered under an idempotency key (it changed nothing,
   * and the caller may retry with better credentials). */
  cmd->role = auth_principal_role(st, cmd->principal_id);
  int permit = auth_permit(cmd->kind, cmd->role);
  if (permit != ENGINE_OK) {
    cmd->result = (int16_t)permit;
    return false;
  }
  idem_entry_t *slot = NULL;
  ledger_hash128_t key = {0, 0};
  if (cmd->has_idempotency) {
    /* Keys are per principal: the principal is mixed in here (the log keeps the key as sent
     * and the principal, so replay mixes the same way). */
    key = ledger_hash128(&cmd->principal_id, sizeof cmd->principal_id,
                         cmd->idempotency_key.lo ^ cmd->idempotency_key.hi);
    key.lo ^= cmd->idempotency_key.lo;
    key.hi ^= cmd->idempotency_key.hi;
    if ((key.lo | key.hi) == 0) key.lo = 1;
    if (!st->replaying) {
      /* Logged commands were always fresh: replay skips the lookup, so a changed retention
       * setting can never turn a logged command into a repeat. */
      idem_entry_t *e = idem_find(st, key, &slot);
      if (e) {
        if (!key_eq(e->body, cmd->body_hash) || e->kind != cmd->kind) {
          cmd->result = ENGINE_R_IDEMPOTENCY_CONFLICT;
        } else {
          replay_answer(st, cmd, e);
        }
        return false;
      }
    }
    slot = idem_slot_for_insert(st, key);
    if (!slot) {
      cmd->result = ENGINE_R_CAPACITY_EXHAUSTED;
      return false;
    }
  }
  uint64_t first_no = st->transfer_count + 1;
  uint64_t accounts_before = st->account_count;
  cmd->result = (int16_t)apply_fresh(st, cmd, extra_pos);
  bool changed = st->transfer_count + 1 != first_no || st->account_count != accounts_before ||
                 (cmd->result == ENGINE_OK && (cmd->kind != ENGINE_CMD_RULES_SET || cmd->rules_changed));
  if (slot) {
    /* Capacity is not a business outcome: a retry later must be able to succeed. */
    if (cmd->result == ENGINE_R_CAPACITY_EXHAUSTED || cmd->result == ENGINE_R_INVALID_AMOUNT ||
        cmd->result == ENGINE_R_FORBIDDEN || cmd->result == ENGINE_R_UNAUTHENTICATED)
      return changed;
    idem_record(st, slot, key, cmd, first_no);
    return true;
  }
  return changed;
}

/* ---------------------------------------------------------------- reads */

static void read_history(const engine_state_t *st, engine_cmd_t *cmd) {
  const account_rec_t *a = account_at(st, cmd->u.history.account_id);
  if (!visible(a, cmd->role, cmd->principal_id)) {
    cmd->result = ENGINE_R_ACCOUNT_NOT_FOUND;
    return;
  }
  bool asc = cmd->u.history.ascending;
  uint64_t no = cmd->u.history.cursor_no ? cmd->u.history.cursor_no
                                         : (asc ? a->history_first_no : a->history_last_no);
  if (no > st->transfer_count) no = 0;
  uint32_t n = 0;
  /* Every entry is in time order along the chain, so the walk stops at the window's end.
   * Entries outside the window are skipped at most ENGINE_SCAN_STEPS_MAX per request: a
   * short page and a cursor come back rather than the engine stalling on a long history. */
  uint64_t steps = 0;
  while (no != 0 && steps++ < ENGINE_SCAN_STEPS_MAX) {
    const transfer_rec_t *t = &st->transfers[no - 1];
    bool is_debit = t->debit_account_id == a->id;
    if (!is_debit && t->credit_account_id != a->id) { /* a cursor of another account */
      no = 0;
      break;
    }
    uint64_t next = asc ? state_next_no(st, t, a->id) : state_prev_no(t, a->id);
    int64_t created_ms = transfer_created_ms(st, t);
    if (asc ? created_ms >= cmd->u.history.to_ms : created_ms < cmd->u.history.from_ms) {
      no = 0;
      break;
    }
    bool inside = created_ms >= cmd->u.history.from_ms && created_ms < cmd->u.history.to_ms;
    if (inside) {
      if (n == cmd->u.history.limit) break;
      cmd->u.history.rows[n].transfer = state_transfer(st, no);
      cmd->u.history.rows[n].balance_after_minor =
          is_debit ? t->debit_balance_after : t->credit_balance_after;
      n++;
    }
    no = next;
  }
  cmd->row_count = n;
  cmd->next_cursor = no;
  cmd->result = ENGINE_OK;
}

static void read_list(const engine_state_t *st, engine_cmd_t *cmd) {
  bool asc = cmd->u.list.ascending;
  uint64_t id = cmd->u.list.cursor_id ? cmd->u.list.cursor_id : (asc ? 1 : st->account_count);
  uint32_t n = 0;
  /* Bounded scan: a filter that matches little returns a short page and a cursor. */
  uint64_t scanned = 0, scan_max = ENGINE_SCAN_STEPS_MAX;
  while (id >= 1 && id <= st->account_count && scanned < scan_max) {
    const account_rec_t *a = &st->accounts[id - 1];
    scanned++;
    bool match = visible(a, cmd->role, cmd->principal_id) &&
                 (!cmd->u.list.has_owner || a->owner_id == cmd->u.list.owner_id) &&
                 (!cmd->u.list.currency || a->currency == cmd->u.list.currency) &&
                 (!cmd->u.list.region_name || a->region == cmd->u.list.region);
    if (match) {
      if (n == cmd->u.list.limit) break;
      cmd->u.list.rows[n++] = state_account(st, a);
    }
    id = asc ? id + 1 : id - 1;
  }
  cmd->row_count = n;
  cmd->next_cursor = (id >= 1 && id <= st->account_count) ? id : 0;
  cmd->result = ENGINE_OK;
}

void state_read(const engine_state_t *st, engine_cmd_t *cmd) {
  cmd->replayed = false;
  cmd->seq = st->last_seq;
  cmd->role = auth_principal_role(st, cmd->principal_id);
  int permit = auth_permit(cmd->kind, cmd->role);
  if (permit != ENGINE_OK) {
    cmd->result = (int16_t)permit;
    return;
  }
  switch (cmd->kind) {
    case ENGINE_CMD_ACCOUNT_GET: {
      const account_rec_t *a = account_at(st, cmd->u.account.account_id);
      bool ok = visible(a, cmd->role, cmd->principal_id);
      cmd->result = ok ? ENGINE_OK : ENGINE_R_ACCOUNT_NOT_FOUND;
      if (ok) cmd->account = state_account(st, a);
      break;
    }
    case ENGINE_CMD_WHOAMI:
    case ENGINE_CMD_USER_LOOKUP:
    case ENGINE_CMD_AUDIT_LIST: auth_read(st, cmd); break;
    case ENGINE_CMD_TRANSFER_GET: {
      const transfer_rec_t *t = transfer_at(st, cmd->u.transfer_get.no, cmd->u.transfer_get.created_ms);
      if (t && !visible(account_at(st, t->debit_account_id), cmd->role, cmd->principal_id) &&
          !visible(account_at(st, t->credit_account_id), cmd->role, cmd->principal_id))
        t = NULL;
      cmd->result = t ? ENGINE_OK : ENGINE_R_TRANSFER_NOT_FOUND;
      if (t) cmd->transfer = state_transfer(st, cmd->u.transfer_get.no);
      if (t) attach_risk(st, cmd);
      break;
    }
    case ENGINE_CMD_ACCOUNT_LIST: read_list(st, cmd); break;
    case ENGINE_CMD_RULES_GET:
    case ENGINE_CMD_SUSPICIOUS_LIST:
    case ENGINE_CMD_SETTLEMENTS: risk_read(st, cmd); break;
    case ENGINE_CMD_TRANSFER_SEARCH: search_read(st, cmd); break;
    case ENGINE_CMD_TRANSFER_ROWS: { /* a text search's page: visibility and status checked again */
      uint32_t k = 0;
      for (uint32_t i = 0; i < cmd->u.transfer_rows.n; i++) {
        uint64_t no = cmd->u.transfer_rows.nos[i];
        if (no == 0 || no > st->transfer_count) continue;
        const transfer_rec_t *t = &st->transfers[no - 1];
        if (cmd->u.transfer_rows.status >= 0 && t->status != cmd->u.transfer_rows.status) continue; /* settled since */
        if (!visible(account_at(st, t->debit_account_id), cmd->role, cmd->principal_id) &&
            !visible(account_at(st, t->credit_account_id), cmd->role, cmd->principal_id))
          continue;
        cmd->u.transfer_rows.rows[k++] = state_transfer(st, no);
      }
      cmd->row_count = k;
      cmd->next_cursor = cmd->u.transfer_rows.next_cursor;
      cmd->result = ENGINE_OK;
      break;
    }
    case ENGINE_CMD_HISTORY: read_history(st, cmd); break;
    default: LEDGER_ASSERT(!"not a read command");
  }
}

/* ---------------------------------------------------------------- invariants */

int state_check(const engine_state_t *st, char *problem, size_t cap) {
  /* 128-bit sums: a valid ledger's running sum may pass int64 on the way to zero. */
  __extension__ typedef __int128 wide_t;
  wide_t sum[LEDGER_CURRENCIES_MAX] = {0}, pend[LEDGER_CURRENCIES_MAX] = {0};
  /* First the tables that index each other (account ids and history numbers included): the
   * walks below index by them. */
  int rc = state_tables_check(st, problem, cap);
  if (rc != LEDGER_OK) return rc;
  for (uint64_t i = 0; i < st->account_count; i++) {
    const account_rec_t *a = &st->accounts[i];
    sum[a->currency] += a->balance_minor;
    pend[a->currency] += (wide_t)a->pending_debits_minor - a->pending_credits_minor;
    if (floored(a) && a->balance_minor - a->pending_debits_minor < 0) {
      snprintf(problem, cap, "account %llu below its floor: balance %lld pending debits %lld",
               (unsigned long long)a->id, (long long)a->balance_minor, (long long)a->pending_debits_minor);
      return LEDGER_ECORRUPT;
    }
    if (a->pending_debits_minor < 0 || a->pending_credits_minor < 0) {
      snprintf(problem, cap, "account %llu: negative pending", (unsigned long long)a->id);
      return LEDGER_ECORRUPT;
    }
    /* The newest history entry must show the current balance. */
    if (a->history_last_no) {
      const transfer_rec_t *t = &st->transfers[a->history_last_no - 1];
      int64_t after = t->debit_account_id == a->id ? t->debit_balance_after : t->credit_balance_after;
      if (after != a->balance_minor) {
        snprintf(problem, cap, "account %llu: balance %lld but history ends at %lld",
                 (unsigned long long)a->id, (long long)a->balance_minor, (long long)after);
        return LEDGER_ECORRUPT;
      }
      if (state_next_no(st, t, a->id) != 0 || a->history_last_debit != (t->debit_account_id == a->id)) {
        snprintf(problem, cap, "account %llu: its newest history entry links to a later one, or its side is wrong",
                 (unsigned long long)a->id);
        return LEDGER_ECORRUPT;
      }
    } else if (a->balance_minor != 0) {
      snprintf(problem, cap, "account %llu: balance without history", (unsigned long long)a->id);
      return LEDGER_ECORRUPT;
    }
  }
  for (unsigned c = 1; c <= ledger_currency_count(); c++) {
    if (sum[c] != 0 || pend[c] != 0) {
      snprintf(problem, cap, "currency %s: balances do not sum to zero (or pending debits differ from credits)",
               ledger_currency_get((ledger_currency_id_t)c)->code);
      return LEDGER_ECORRUPT;
    }
  }
  /* Every posted movement changes the two balances by its amount: walk each transfer and
   * check that balance_after equals the previous entry's balance_after +/- the amount. */
  for (uint64_t i = 0; i < st->transfer_count; i++) {
    const transfer_rec_t *t = &st->transfers[i];
    uint64_t t_no = i + 1;
    int64_t moved = 0;
    if (t->flags & ENGINE_TF_SETTLEMENT) moved = t->status == ENGINE_STATUS_POSTED ? t->amount_minor : 0;
    else if (!(t->flags & ENGINE_TF_PENDING)) moved = t->amount_minor;
    const uint64_t prevs[2] = {t->prev_debit_no, t->prev_credit_no};
    const uint64_t ids[2] = {t->debit_account_id, t->credit_account_id};
    const int64_t afters[2] = {t->debit_balance_after, t->credit_balance_after};
    for (int k = 0; k < 2; k++) {
      int64_t before = 0;
      if (prevs[k]) {
        const transfer_rec_t *p = prevs[k] < t_no ? &st->transfers[prevs[k] - 1] : NULL;
        if (p) before = p->debit_account_id == ids[k] ? p->debit_balance_after : p->credit_balance_after;
        if (!p || (p->debit_account_id != ids[k] && p->credit_account_id != ids[k]) ||
            state_next_no(st, p, ids[k]) != t_no) {
          snprintf(problem, cap, "transfer %llu: account %llu's history entry %llu before it does not link to it",
                   (unsigned long long)t_no, (unsigned long long)ids[k], (unsigned long long)prevs[k]);
          return LEDGER_ECORRUPT;
        }
      }
      int64_t expect = k == 0 ? before - moved : before + moved;
      if (expect != afters[k]) {
        snprintf(problem, cap, "transfer %llu: account %llu balance after %lld, expected %lld",
                 (unsigned long long)t_no, (unsigned long long)ids[k], (long long)afters[k], (long long)expect);
        return LEDGER_ECORRUPT;
      }
    }
  }
  return risk_check(st, problem, cap);
}

int state_tables_check(const engine_state_t *st, char *problem, size_t cap) {
  /* Accounts: ids are positions, and the history numbers name transfers (state_account, the
   * rules and the history walks index by them). */
  for (uint64_t i = 0; i < st->account_count; i++) {
    const account_rec_t *a = &st->accounts[i];
    if (a->id != i + 1 || !ledger_currency_get(a->currency) || a->history_last_no > st->transfer_count ||
        a->history_first_no > a->history_last_no) {
      snprintf(problem, cap, "account %llu: bad record", (unsigned long long)(i + 1));
      return LEDGER_ECORRUPT;
    }
  }
  /* Side entries: in transfer order, each for a transfer whose flags say it has one, with
   * sane contents. */
  for (uint64_t k = 0, no = 0; k < st->side_count; k++) {
    const transfer_side_t *x = &st->side[k];
    const transfer_rec_t *t = x->no > no && x->no <= st->transfer_count ? &st->transfers[x->no - 1] : NULL;
    bool settles = t && (t->flags & ENGINE_TF_SETTLEMENT);
    if (!t || !(t->flags & TRANSFER_SIDE_FLAGS) || (x->extra_len != 0) != ((t->flags & ENGINE_TF_EXTRA) != 0) ||
        (settles ? x->pending_no == 0 || x->pending_no >= x->no ||
                       !(st->transfers[x->pending_no - 1].flags & ENGINE_TF_PENDING)
                 : x->pending_no != 0)) {
      snprintf(problem, cap, "transfer side entry %llu: bad record", (unsigned long long)(k + 1));
      return LEDGER_ECORRUPT;
    }
    no = x->no;
  }
  /* Stamps: runs in order, each starting where the one before ended, and each a change of
   * batch, time or rule set. (Batch times never go back in a log the engine wrote; a fuzzed
   * replay that goes on past a malformed record can make them, so that is not required.) */
  if ((st->stamp_count == 0) != (st->transfer_count == 0) || (st->stamp_count && st->stamps[0].first_no != 1)) {
    snprintf(problem, cap, "transfer stamps: %llu for %llu transfers", (unsigned long long)st->stamp_count,
             (unsigned long long)st->transfer_count);
    return LEDGER_ECORRUPT;
  }
  for (uint64_t k = 1; k < st->stamp_count; k++) {
    const transfer_stamp_t *m = &st->stamps[k], *before = &st->stamps[k - 1];
    if (m->first_no <= before->first_no || m->first_no > st->transfer_count ||
        (m->seq == before->seq && m->created_ms == before->created_ms && m->rules_version == before->rules_version)) {
      snprintf(problem, cap, "transfer stamp %llu: bad run", (unsigned long long)(k + 1));
      return LEDGER_ECORRUPT;
    }
  }
  /* One pass over the records: each points at the run it is in, and exactly the flagged ones
   * have a side entry. */
  uint64_t with_side = 0;
  for (uint64_t i = 0, k = 0; i < st->transfer_count; i++) {
    const transfer_rec_t *t = &st->transfers[i];
    if (k + 1 < st->stamp_count && st->stamps[k + 1].first_no == i + 1) k++;
    if (t->stamp != k) {
      snprintf(problem, cap, "transfer %llu: stamp %u, in run %llu", (unsigned long long)(i + 1), t->stamp,
               (unsigned long long)(k + 1));
      return LEDGER_ECORRUPT;
    }
    with_side += (t->flags & TRANSFER_SIDE_FLAGS) != 0;
  }
  if (with_side != st->side_count) {
    snprintf(problem, cap, "transfers: %llu have side fields, %llu side entries", (unsigned long long)with_side,
             (unsigned long long)st->side_count);
    return LEDGER_ECORRUPT;
  }
  return LEDGER_OK;
}

bool state_transfers_equal(const engine_state_t *a, const engine_state_t *b) {
  return a->transfer_count == b->transfer_count && a->side_count == b->side_count &&
         a->stamp_count == b->stamp_count &&
         memcmp(a->stamps, b->stamps, a->stamp_count * sizeof(transfer_stamp_t)) == 0 &&
         memcmp(a->transfers, b->transfers, a->transfer_count * sizeof(transfer_rec_t)) == 0 &&
         memcmp(a->next, b->next, a->transfer_count * sizeof(engine_next_t)) == 0 &&
         memcmp(a->side, b->side, a->side_count * sizeof(transfer_side_t)) == 0;
}
