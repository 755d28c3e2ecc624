/*
 * engine_rules.c — risk rules, velocity windows, suspicious activity and settlements.
 *
 * All of it is engine state, changed in the same atomic step as the money (DESIGN.md): a rule
 * set arrives as one logged command and is swapped in between two commands; every fresh
 * transfer is judged against the set in force; a settlement row moves with every posted
 * movement. Deterministic like the rest of the state (engine_state.h): replay gives the same
 * decisions, the same entries and the same rows.
 *
 * Velocity windows: per account and velocity rule, the oldest history entry still inside the
 * window and the count and sum of the debits from there on. A new debit adds to them; time
 * moving on walks the start forward along the account's history chain and subtracts what
 * leaves. Amortized O(1) per transfer, exact at the window's edge (docs/rules.md).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/engine_state.h"

/* ---------------------------------------------------------------- names */

const char *engine_rule_type_name(unsigned type) {
  switch (type) {
    case ENGINE_RULE_AMOUNT: return "amount";
    case ENGINE_RULE_VELOCITY: return "velocity";
    case ENGINE_RULE_NEW_ACCOUNT: return "new_account";
    case ENGINE_RULE_BLOCKLIST: return "blocklist";
    default: return "unknown";
  }
}

const char *engine_rule_action_name(unsigned action) {
  switch (action) {
    case ENGINE_ACTION_FLAG: return "flag";
    case ENGINE_ACTION_HOLD: return "hold";
    case ENGINE_ACTION_REJECT: return "reject";
    default: return "none";
  }
}

const char *engine_suspicious_status_name(unsigned status) {
  switch (status) {
    case ENGINE_SUSPICIOUS_CLEARED: return "cleared";
    case ENGINE_SUSPICIOUS_CONFIRMED: return "confirmed";
    default: return "open";
  }
}

/* ---------------------------------------------------------------- parsing */

#define RULES_LINE_BYTES_MAX 8192u
#define RULES_TOKENS_MAX 64u

static int fail_line(char *err, size_t cap, unsigned line, const char *fmt, const char *arg) {
  char what[160];
  snprintf(what, sizeof what, fmt, arg);
  snprintf(err, cap, "line %u: %s", line, what);
  return LEDGER_EINVAL;
}

static bool valid_rule_id(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > ENGINE_RULE_ID_BYTES_MAX) return false;
  for (size_t i = 0; i < n; i++)
    if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-' || s[i] == '_')) return false;
  return true;
}

static bool valid_region_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > API_REGION_BYTES_MAX) return false;
  for (size_t i = 0; i < n; i++)
    if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-')) return false;
  return true;
}

/* "90", "90s", "1500ms", "15m", "24h", "7d" → ms in (0, ENGINE_RULE_WINDOW_MS_MAX]. */
static bool parse_duration(const char *v, int64_t *out) {
  char *end;
  if (!isdigit((unsigned char)v[0])) return false;
  unsigned long long n = strtoull(v, &end, 10);
  int64_t unit;
  if (strcmp(end, "ms") == 0) unit = 1;
  else if (strcmp(end, "s") == 0 || *end == '\0') unit = 1000;
  else if (strcmp(end, "m") == 0) unit = 60000;
  else if (strcmp(end, "h") == 0) unit = 3600000;
  else if (strcmp(end, "d") == 0) unit = 86400000;
  else return false;
  if (n == 0 || n > (unsigned long long)(ENGINE_RULE_WINDOW_MS_MAX / unit)) return false;
  *out = (int64_t)n * unit;
  return true;
}

/* A decimal in major units → minor units of `exponent`, rounded up (thresholds compared with
 * >=: "amount >= 0.5 JPY" is "amount >= 1") or down (sums compared with >). */
static bool parse_minor(const char *v, uint8_t exponent, bool round_up, int64_t *out) {
  int64_t digits;
  uint8_t scale;
  if (money_parse_decimal(v, strlen(v), &digits, &scale) != 0) return false;
  if (scale <= exponent) return money_to_minor(digits, scale, exponent, out) == 0;
  int64_t div = 1;
  for (unsigned i = exponent; i < scale; i++) div *= 10;
  *out = digits / div + (round_up && digits % div != 0 ? 1 : 0);
  return true;
}

/* Applies "threshold=X" (every currency) or "threshold.CUR=X" to a rule. */
static bool set_threshold(engine_rule_t *r, const char *suffix, const char *v, bool round_up) {
  if (*suffix == '\0') {
    for (unsigned c = 1; c <= ledger_currency_count(); c++)
      if (!parse_minor(v, ledger_currency_get((ledger_currency_id_t)c)->exponent, round_up, &r->threshold_minor[c]))
        return false;
    return true;
  }
  if (*suffix != '.') return false;
  ledger_currency_id_t c = ledger_currency_find(suffix + 1, strlen(suffix + 1));
  return c != 0 && parse_minor(v, ledger_currency_get(c)->exponent, round_up, &r->threshold_minor[c]);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int parse_blocklist(engine_rules_t *out, engine_rule_t *r, const char *v, unsigned line, char *err,
                           size_t cap) {
  r->block_first = out->block_count;
  const char *p = v;
  while (*p) {
    char *end;
    if (!isdigit((unsigned char)*p)) return fail_line(err, cap, line, "accounts: '%s' is not a list of ids", v);
    unsigned long long id = strtoull(p, &end, 10);
    if (id == 0 || id >= (1ull << 53)) return fail_line(err, cap, line, "accounts: bad id in '%s'", v);
    if (out->block_count >= ENGINE_BLOCKLIST_MAX)
      return fail_line(err, cap, line, "%s", "more than 1024 blocklisted ids in the file");
    out->blocklist[out->block_count++] = id;
    p = end;
    if (*p == ',' && p[1] != '\0') p++;
    else if (*p) return fail_line(err, cap, line, "accounts: '%s' is not a comma-separated list", v);
  }
  r->block_count = out->block_count - r->block_first;
  if (r->block_count == 0) return fail_line(err, cap, line, "%s", "accounts= is empty");
  qsort(&out->blocklist[r->block_first], r->block_count, sizeof(uint64_t), cmp_u64);
  return LEDGER_OK;
}

static int parse_rule(engine_rules_t *out, char **tok, unsigned ntok, unsigned line, char *err, size_t cap,
                      unsigned *velocity_rules) {
  if (ntok < 3) return fail_line(err, cap, line, "%s", "expected: rule <id> <type> key=value ... action=...");
  if (out->count >= ENGINE_RULES_MAX) return fail_line(err, cap, line, "%s", "more than 32 rules");
  if (!valid_rule_id(tok[1]))
    return fail_line(err, cap, line, "rule id '%.40s' must be 1-31 characters of a-z, 0-9, '-', '_'", tok[1]);
  for (unsigned i = 0; i < out->count; i++)
    if (strcmp(out->rules[i].id, tok[1]) == 0) return fail_line(err, cap, line, "rule id '%s' appears twice", tok[1]);
  engine_rule_t *r = &out->rules[out->count];
  memset(r, 0, sizeof *r);
  strcpy(r->id, tok[1]);
  for (unsigned c = 0; c < LEDGER_CURRENCIES_MAX; c++) r->threshold_minor[c] = ENGINE_THRESHOLD_NONE;
  const char *type = tok[2];
  if (strcmp(type, "amount") == 0) r->type = ENGINE_RULE_AMOUNT;
  else if (strcmp(type, "velocity") == 0) r->type = ENGINE_RULE_VELOCITY;
  else if (strcmp(type, "new_account") == 0) r->type = ENGINE_RULE_NEW_ACCOUNT;
  else if (strcmp(type, "blocklist") == 0) r->type = ENGINE_RULE_BLOCKLIST;
  else return fail_line(err, cap, line, "unknown rule type '%.40s' (amount, velocity, new_account, blocklist)", type);
  for (unsigned i = 3; i < ntok; i++) { /* a key given twice is a mistake, not an override */
    size_t ki = strcspn(tok[i], "=");
    for (unsigned j = 3; j < i; j++)
      if (strcspn(tok[j], "=") == ki && strncmp(tok[i], tok[j], ki) == 0)
        return fail_line(err, cap, line, "key '%.40s' appears twice", tok[i]);
  }
  /* Plain thresholds first, per-currency overrides after, whatever their order on the line. */
  for (int pass = 0; pass < 2; pass++) {
    for (unsigned i = 3; i < ntok; i++) {
      char *eq = strchr(tok[i], '=');
      if (!eq || eq == tok[i] || eq[1] == '\0') return fail_line(err, cap, line, "expected key=value, got '%.60s'", tok[i]);
      *eq = '\0';
      const char *k = tok[i], *v = eq + 1;
      bool ok = true, known = true;
      bool is_override = strchr(k, '.') != NULL;
      if ((strncmp(k, "threshold", 9) == 0 && r->type != ENGINE_RULE_VELOCITY && r->type != ENGINE_RULE_BLOCKLIST) ||
          (strncmp(k, "amount", 6) == 0 && r->type == ENGINE_RULE_VELOCITY)) {
        if (pass == (is_override ? 1 : 0))
          ok = set_threshold(r, k + (k[0] == 't' ? 9 : 6), v, r->type != ENGINE_RULE_VELOCITY);
      } else if (pass == 1) {
        /* nothing else is order dependent */
      } else if (strcmp(k, "action") == 0) {
        if (strcmp(v, "flag") == 0) r->action = ENGINE_ACTION_FLAG;
        else if (strcmp(v, "hold") == 0) r->action = ENGINE_ACTION_HOLD;
        else if (strcmp(v, "reject") == 0) r->action = ENGINE_ACTION_REJECT;
        else ok = false;
      } else if (strcmp(k, "currency") == 0 && r->type != ENGINE_RULE_BLOCKLIST) {
        r->currency = ledger_currency_find(v, strlen(v));
        ok = r->currency != 0;
      } else if (strcmp(k, "window") == 0 && r->type == ENGINE_RULE_VELOCITY) {
        ok = parse_duration(v, &r->window_ms);
      } else if (strcmp(k, "age") == 0 && r->type == ENGINE_RULE_NEW_ACCOUNT) {
        ok = parse_duration(v, &r->window_ms);
      } else if (strcmp(k, "count") == 0 && r->type == ENGINE_RULE_VELOCITY) {
        char *end;
        unsigned long n = isdigit((unsigned char)v[0]) ? strtoul(v, &end, 10) : 0;
        ok = n >= 1 && n <= 1000000000ul && *end == '\0';
        r->count_max = (uint32_t)n;
      } else if (strcmp(k, "accounts") == 0 && r->type == ENGINE_RULE_BLOCKLIST) {
        int rc = parse_blocklist(out, r, v, line, err, cap);
        if (rc != 0) return rc;
      } else {
        known = false;
      }
      *eq = '=';
      if (!known) return fail_line(err, cap, line, "key '%.40s' is not valid for this rule type", tok[i]);
      if (!ok) return fail_line(err, cap, line, "bad value in '%.60s'", tok[i]);
    }
  }
  bool any_threshold = false;
  for (unsigned c = 1; c <= ledger_currency_count(); c++) any_threshold |= r->threshold_minor[c] != ENGINE_THRESHOLD_NONE;
  if (r->action == 0) return fail_line(err, cap, line, "%s", "action=flag|hold|reject is required");
  switch (r->type) {
    case ENGINE_RULE_AMOUNT:
      if (!any_threshold) return fail_line(err, cap, line, "%s", "an amount rule needs threshold=");
      break;
    case ENGINE_RULE_NEW_ACCOUNT:
      if (!any_threshold || r->window_ms == 0) return fail_line(err, cap, line, "%s", "new_account needs age= and threshold=");
      break;
    case ENGINE_RULE_VELOCITY:
      if (r->window_ms == 0 || (r->count_max == 0 && !any_threshold))
        return fail_line(err, cap, line, "%s", "velocity needs window= and count= or amount=");
      if (*velocity_rules >= ENGINE_VELOCITY_RULES_MAX) return fail_line(err, cap, line, "%s", "more than 4 velocity rules");
      r->vel_slot = (uint8_t)(*velocity_rules)++;
      break;
    case ENGINE_RULE_BLOCKLIST:
      if (r->block_count == 0) return fail_line(err, cap, line, "%s", "blocklist needs accounts=");
      break;
    default: break;
  }
  out->count++;
  return LEDGER_OK;
}

int engine_rules_parse(const char *text, size_t len, engine_rules_t *out, char *err, size_t cap) {
  memset(out, 0, sizeof *out);
  err[0] = '\0';
  unsigned velocity_rules = 0, line_no = 0;
  char line[RULES_LINE_BYTES_MAX];
  size_t pos = 0;
  while (pos < len) {
    line_no++;
    size_t end = pos;
    while (end < len && text[end] != '\n') end++;
    size_t n = end - pos;
    if (n >= sizeof line) return fail_line(err, cap, line_no, "%s", "line longer than 8 KiB");
    memcpy(line, text + pos, n);
    line[n] = '\0';
    pos = end + 1;
    if (memchr(line, '\0', n)) return fail_line(err, cap, line_no, "%s", "NUL byte");
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *tok[RULES_TOKENS_MAX];
    unsigned ntok = 0;
    for (char *save = NULL, *t = strtok_r(line, " \t\r", &save); t; t = strtok_r(NULL, " \t\r", &save)) {
      if (ntok == RULES_TOKENS_MAX) return fail_line(err, cap, line_no, "%s", "too many words");
      tok[ntok++] = t;
    }
    if (ntok == 0) continue;
    if (strcmp(tok[0], "default_region") == 0) {
      if (ntok != 2 || !valid_region_name(tok[1]))
        return fail_line(err, cap, line_no, "%s", "expected: default_region <1-32 characters of a-z, 0-9, '-'>");
      strcpy(out->default_region, tok[1]);
    } else if (strcmp(tok[0], "rule") == 0) {
      int rc = parse_rule(out, tok, ntok, line_no, err, cap, &velocity_rules);
      if (rc != 0) return rc;
    } else {
      return fail_line(err, cap, line_no, "unknown directive '%.40s' (rule, default_region)", tok[0]);
    }
  }
  return LEDGER_OK;
}

void engine_rules_default(engine_rules_t *out) {
  static const char text[] = "rule large-amount amount threshold=10000.00 action=flag\n";
  char err[200];
  int rc = engine_rules_parse(text, sizeof text - 1, out, err, sizeof err);
  LEDGER_ASSERT(rc == 0);
}

/* ---------------------------------------------------------------- state */

int risk_state_init(engine_state_t *st) {
  st->vel = state_reserve((size_t)ENGINE_ACCOUNTS_MAX * ENGINE_VELOCITY_RULES_MAX * sizeof(vel_slot_t));
  st->suspicious = state_reserve((size_t)ENGINE_SUSPICIOUS_MAX * sizeof(engine_suspicious_t));
  st->settle_rows = state_reserve((size_t)ENGINE_SETTLEMENT_ROWS_MAX * sizeof(engine_settlement_t));
  st->settle_index = state_reserve((size_t)ENGINE_SETTLE_SLOTS * sizeof(uint32_t));
  st->rule_names = state_reserve((size_t)ENGINE_RULE_VERSIONS_MAX * sizeof *st->rule_names);
  return st->vel && st->suspicious && st->settle_rows && st->settle_index && st->rule_names ? LEDGER_OK
                                                                                              : LEDGER_ENOMEM;
}

void risk_state_free(engine_state_t *st) {
  if (st->vel) munmap(st->vel, (size_t)ENGINE_ACCOUNTS_MAX * ENGINE_VELOCITY_RULES_MAX * sizeof(vel_slot_t));
  if (st->suspicious) munmap(st->suspicious, (size_t)ENGINE_SUSPICIOUS_MAX * sizeof(engine_suspicious_t));
  if (st->settle_rows) munmap(st->settle_rows, (size_t)ENGINE_SETTLEMENT_ROWS_MAX * sizeof(engine_settlement_t));
  if (st->settle_index) munmap(st->settle_index, (size_t)ENGINE_SETTLE_SLOTS * sizeof(uint32_t));
  if (st->rule_names) munmap(st->rule_names, (size_t)ENGINE_RULE_VERSIONS_MAX * sizeof *st->rule_names);
  st->rule_names = NULL;
  st->vel = NULL;
  st->suspicious = NULL;
  st->settle_rows = NULL;
  st->settle_index = NULL;
}

/* ---------------------------------------------------------------- settlements */

static int32_t day_of(int64_t ms) { return (int32_t)(ms / 86400000); }

static uint64_t settle_hash(int32_t day, uint16_t region, uint8_t currency) {
  uint64_t k = ((uint64_t)(uint32_t)day << 24) | ((uint64_t)region << 8) | currency;
  k *= 0x9E3779B97F4A7C15ull;
  return k ^ (k >> 29);
}

/* Finds the row (NULL if absent); *slot_out: where it is or would go. */
static engine_settlement_t *settle_find(const engine_state_t *st, int32_t day, uint16_t region, uint8_t currency,
                                        uint64_t *slot_out) {
  uint64_t mask = ENGINE_SETTLE_SLOTS - 1, i = settle_hash(day, region, currency) & mask;
  for (;; i = (i + 1) & mask) {
    uint32_t at = st->settle_index[i];
    if (at == 0) break;
    engine_settlement_t *r = &st->settle_rows[at - 1];
    if (r->day == day && r->region == region && r->currency == currency) {
      *slot_out = i;
      return r;
    }
  }
  *slot_out = i;
  return NULL;
}

bool risk_settle_index_rebuild(engine_state_t *st) {
  memset(st->settle_index, 0, (size_t)ENGINE_SETTLE_SLOTS * sizeof(uint32_t));
  for (uint64_t k = 0; k < st->settle_count; k++) {
    const engine_settlement_t *r = &st->settle_rows[k];
    uint64_t slot;
    if (settle_find(st, r->day, r->region, r->currency, &slot)) return false; /* duplicate */
    st->settle_index[slot] = (uint32_t)(k + 1);
  }
  return true;
}

uint16_t transfer_region(const engine_state_t *st, const transfer_rec_t *t) {
  uint64_t id = t->kind == ENGINE_KIND_DEPOSIT ? t->credit_account_id : t->debit_account_id;
  return st->accounts[id - 1].region;
}

bool settlement_has_room(const engine_state_t *st, const transfer_rec_t *proto, int64_t created_ms) {
  uint64_t slot;
  return st->settle_count < ENGINE_SETTLEMENT_ROWS_MAX ||
         settle_find(st, day_of(created_ms), transfer_region(st, proto), proto->currency, &slot) != NULL;
}

void settlement_add(engine_state_t *st, const transfer_rec_t *t, int64_t created_ms, int sign) {
  uint16_t region = transfer_region(st, t);
  int32_t day = day_of(created_ms);
  uint64_t slot;
  engine_settlement_t *r = settle_find(st, day, region, t->currency, &slot);
  if (!r) {
    LEDGER_ASSERT(st->settle_count < ENGINE_SETTLEMENT_ROWS_MAX); /* settlement_has_room was asked */
    r = &st->settle_rows[st->settle_count++];
    memset(r, 0, sizeof *r);
    r->day = day;
    r->region = region;
    r->currency = t->currency;
    st->settle_index[slot] = (uint32_t)st->settle_count;
  }
  engine_wide_t amount = (engine_wide_t)t->amount_minor * sign;
  r->count += (uint64_t)(int64_t)sign;
  r->volume += amount;
  if (t->kind == ENGINE_KIND_DEPOSIT) r->deposits += amount;
  if (t->kind == ENGINE_KIND_WITHDRAWAL) r->withdrawals += amount;
  /* An atomic batch rolled back (removals come newest first): a row it opened goes away again,
   * so the state equals a replay of the log, where that batch never ran. Removing the newest
   * key of a linear-probing table breaks no other key's probe. */
  if (r->count == 0 && r == &st->settle_rows[st->settle_count - 1]) {
    LEDGER_ASSERT(r->volume == 0 && st->settle_index[slot] == st->settle_count);
    st->settle_index[slot] = 0;
    st->settle_count--;
  }
}

/* ---------------------------------------------------------------- velocity */

static vel_slot_t *vel_at(const engine_state_t *st, uint64_t account_id, unsigned slot) {
  return &st->vel[(account_id - 1) * ENGINE_VELOCITY_RULES_MAX + slot];
}

/* Transfers out of the account that velocity counts: fresh debits (not post/void entries). */
static bool vel_counts(const transfer_rec_t *t, uint64_t account_id) {
  return t->debit_account_id == account_id && !(t->flags & ENGINE_TF_SETTLEMENT);
}


/* The window of (account, rule) at the batch time, computed into *w from the stored one
 * without changing the state (a judged transfer may still be refused, and a refused one must
 * leave the state as a replay of the log would: untouched). Entries with created_ms > now -
 * window are inside. Built from the history when the stored one is for another rule-set
 * version (a walk back over the window, bounded by ENGINE_SCAN_STEPS_MAX entries: beyond
 * that the oldest are not seen). */
static void vel_window(const engine_state_t *st, const account_rec_t *a, const engine_rule_t *r, vel_slot_t *w) {
  *w = *vel_at(st, a->id, r->vel_slot);
  int64_t edge = st->batch_time_ms - r->window_ms;
  if (w->version != st->rules.version) {
    memset(w, 0, sizeof *w);
    w->version = st->rules.version;
    uint64_t no = a->history_last_no, steps = 0;
    while (no != 0 && steps++ < ENGINE_SCAN_STEPS_MAX) {
      const transfer_rec_t *t = &st->transfers[no - 1];
      if (transfer_created_ms(st, t) <= edge) break;
      if (vel_counts(t, a->id)) {
        w->count++;
        w->amount += t->amount_minor;
      }
      w->start_no = no;
      no = state_prev_no(t, a->id);
    }
    return;
  }
  while (w->start_no != 0) {
    const transfer_rec_t *t = &st->transfers[w->start_no - 1];
    if (transfer_created_ms(st, t) > edge) break;
    if (vel_counts(t, a->id)) {
      w->count--;
      w->amount -= t->amount_minor;
    }
    w->start_no = state_next_no(st, t, a->id);
  }
}

/* ---------------------------------------------------------------- judging */

static bool blocklisted(const engine_rules_t *rs, const engine_rule_t *r, uint64_t id) {
  const uint64_t *p = &rs->blocklist[r->block_first];
  return bsearch(&id, p, r->block_count, sizeof *p, cmp_u64) != NULL;
}

void risk_judge(engine_state_t *st, const account_rec_t *dr, const account_rec_t *cr, int64_t amount,
                risk_verdict_t *v) {
  memset(v, 0, sizeof *v);
  const engine_rules_t *rs = &st->rules;
  for (unsigned i = 0; i < rs->count; i++) {
    const engine_rule_t *r = &rs->rules[i];
    if (r->currency != 0 && r->currency != dr->currency) continue;
    int64_t th = r->threshold_minor[dr->currency];
    bool fire = false;
    switch (r->type) {
      case ENGINE_RULE_AMOUNT: fire = th != ENGINE_THRESHOLD_NONE && amount >= th; break;
      case ENGINE_RULE_NEW_ACCOUNT:
        fire = dr->kind == ENGINE_ACCOUNT_KIND_CUSTOMER && th != ENGINE_THRESHOLD_NONE && amount >= th &&
               st->batch_time_ms - st->account_extra[dr->id - 1].created_ms < r->window_ms;
        break;
      case ENGINE_RULE_VELOCITY: {
        if (dr->kind != ENGINE_ACCOUNT_KIND_CUSTOMER) break;
        vel_slot_t *w = &v->windows[r->vel_slot];
        vel_window(st, dr, r, w);
        fire = (r->count_max != 0 && (uint64_t)w->count + 1 > r->count_max) ||
               (th != ENGINE_THRESHOLD_NONE && w->amount + amount > th);
        break;
      }
      case ENGINE_RULE_BLOCKLIST: fire = blocklisted(rs, r, dr->id) || blocklisted(rs, r, cr->id); break;
      default: break;
    }
    if (!fire) continue;
    v->fired_mask |= 1u << i;
    if (r->action > v->action) {
      v->action = r->action;
      v->rule = (uint8_t)(i + 1);
    }
  }
}

bool risk_has_room(const engine_state_t *st, const risk_verdict_t *v) {
  return v->action == 0 || st->suspicious_count < ENGINE_SUSPICIOUS_MAX;
}

void risk_record(engine_state_t *st, transfer_rec_t *t, const risk_verdict_t *v) {
  const engine_rules_t *rs = &st->rules;
  uint64_t no = transfer_no_of(st, t);
  const account_rec_t *dr = &st->accounts[t->debit_account_id - 1];
  if (dr->kind == ENGINE_ACCOUNT_KIND_CUSTOMER) {
    for (unsigned i = 0; i < rs->count; i++) {
      const engine_rule_t *r = &rs->rules[i];
      if (r->type != ENGINE_RULE_VELOCITY || (r->currency != 0 && r->currency != dr->currency)) continue;
      vel_slot_t w = v->windows[r->vel_slot]; /* judged just before t was appended */
      w.count++;
      w.amount += t->amount_minor;
      if (w.start_no == 0) w.start_no = no;
      *vel_at(st, dr->id, r->vel_slot) = w;
      st->vel_used = true;
    }
  }
  if (v->action == 0) return;
  LEDGER_ASSERT(v->action != ENGINE_ACTION_REJECT && st->suspicious_count < ENGINE_SUSPICIOUS_MAX);
  engine_suspicious_t *s = &st->suspicious[st->suspicious_count++];
  memset(s, 0, sizeof *s);
  s->id = st->suspicious_count;
  s->transfer_no = no;
  s->transfer_created_ms = transfer_created_ms(st, t);
  s->debit_account_id = t->debit_account_id;
  s->credit_account_id = t->credit_account_id;
  s->amount_minor = t->amount_minor;
  s->currency = t->currency;
  s->rules_version = rs->version;
  s->fired_mask = v->fired_mask;
  s->action = v->action;
  s->status = ENGINE_SUSPICIOUS_OPEN;
  strcpy(s->rule_id, rs->rules[v->rule - 1].id);
  t->flags |= ENGINE_TF_SUSPICIOUS;
}

void risk_vel_save(const engine_state_t *st, uint64_t account_id, vel_slot_t *out) {
  memcpy(out, vel_at(st, account_id, 0), ENGINE_VELOCITY_RULES_MAX * sizeof(vel_slot_t));
}

void risk_vel_restore(engine_state_t *st, uint64_t account_id, const vel_slot_t *in) {
  memcpy(vel_at(st, account_id, 0), in, ENGINE_VELOCITY_RULES_MAX * sizeof(vel_slot_t));
}

void risk_unrecord(engine_state_t *st, const transfer_rec_t *t) {
  /* Velocity windows are restored whole by the caller (risk_vel_restore, newest first). */
  if (t->flags & ENGINE_TF_SUSPICIOUS) {
    LEDGER_ASSERT(st->suspicious_count > 0 && st->suspicious[st->suspicious_count - 1].transfer_no == transfer_no_of(st, t));
    st->suspicious_count--;
  }
}

engine_suspicious_t *risk_entry_of(const engine_state_t *st, uint64_t transfer_no) {
  uint64_t lo = 0, hi = st->suspicious_count; /* entries are in transfer order */
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (st->suspicious[mid].transfer_no < transfer_no) lo = mid + 1;
    else hi = mid;
  }
  return lo < st->suspicious_count && st->suspicious[lo].transfer_no == transfer_no ? &st->suspicious[lo] : NULL;
}

/* ---------------------------------------------------------------- commands */

static bool rules_valid(const engine_rules_t *rs) {
  if (rs->count > ENGINE_RULES_MAX || rs->block_count > ENGINE_BLOCKLIST_MAX ||
      memchr(rs->default_region, '\0', sizeof rs->default_region) == NULL ||
      strlen(rs->default_region) > API_REGION_BYTES_MAX)
    return false;
  unsigned slots = 0;
  for (unsigned i = 0; i < rs->count; i++) {
    const engine_rule_t *r = &rs->rules[i];
    if (r->type < ENGINE_RULE_AMOUNT || r->type > ENGINE_RULE_BLOCKLIST || r->action < ENGINE_ACTION_FLAG ||
        r->action > ENGINE_ACTION_REJECT || (r->currency != 0 && !ledger_currency_get(r->currency)) ||
        r->window_ms < 0 || r->window_ms > ENGINE_RULE_WINDOW_MS_MAX ||
        (uint64_t)r->block_first + r->block_count > rs->block_count ||
        memchr(r->id, '\0', sizeof r->id) == NULL)
      return false;
    if (r->type == ENGINE_RULE_VELOCITY && (r->vel_slot != slots++ || r->vel_slot >= ENGINE_VELOCITY_RULES_MAX))
      return false;
  }
  return true;
}

int risk_apply_rules_set(engine_state_t *st, engine_cmd_t *cmd) {
  const engine_rules_t *in = cmd->u.rules.set;
  if (!rules_valid(in)) return ENGINE_R_INVALID_OPERATION;
  engine_rules_t next = *in;
  next.version = st->rules.version;
  cmd->rules_changed = memcmp(&next, &st->rules, sizeof next) != 0;
  if (cmd->rules_changed) {
    if (st->rules.version >= ENGINE_RULE_VERSIONS_MAX) return ENGINE_R_CAPACITY_EXHAUSTED;
    next.version = st->rules.version + 1;
    st->rules = next;
    memset(st->rule_names[next.version - 1], 0, sizeof st->rule_names[0]);
    for (unsigned i = 0; i < next.count; i++) strcpy(st->rule_names[next.version - 1][i], next.rules[i].id);
    auth_audit(st, ENGINE_AUDIT_RULES_CHANGED, cmd->principal_id, next.version, 0, NULL, NULL);
  }
  cmd->rules_version = st->rules.version;
  return ENGINE_OK;
}

int risk_apply_review(engine_state_t *st, engine_cmd_t *cmd) {
  uint64_t id = cmd->u.review.id;
  uint8_t decision = cmd->u.review.decision;
  if (decision != ENGINE_SUSPICIOUS_CLEARED && decision != ENGINE_SUSPICIOUS_CONFIRMED)
    return ENGINE_R_INVALID_OPERATION;
  if (id == 0 || id > st->suspicious_count) return ENGINE_R_SUSPICIOUS_NOT_FOUND;
  engine_suspicious_t *s = &st->suspicious[id - 1];
  transfer_rec_t *t = &st->transfers[s->transfer_no - 1];
  cmd->suspicious = *s;
  cmd->transfer = state_transfer(st, s->transfer_no);
  if (s->status != ENGINE_SUSPICIOUS_OPEN) return ENGINE_R_ALREADY_REVIEWED;
  /* A held transfer is decided by its review: confirm voids it; clear posts it, unless the
   * client had asked for a two-phase transfer, which then stays pending for the client. */
  if ((t->flags & ENGINE_TF_HELD) && t->status == ENGINE_STATUS_PENDING) {
    bool requested_pending = (t->flags & ENGINE_TF_PENDING_ASKED) != 0;
    if (decision == ENGINE_SUSPICIOUS_CONFIRMED || !requested_pending) {
      int res = state_settle(st, t, decision == ENGINE_SUSPICIOUS_CLEARED, 0, false, NULL);
      if (res != ENGINE_OK) return res;
    }
  }
  s->status = decision;
  s->reviewed_ms = st->batch_time_ms;
  s->reviewer_id = cmd->principal_id;
  auth_audit(st, ENGINE_AUDIT_SUSPICIOUS_REVIEWED, cmd->principal_id, id, 0,
             decision == ENGINE_SUSPICIOUS_CLEARED ? "clear" : "confirm", NULL);
  cmd->suspicious = *s;
  cmd->transfer = state_transfer(st, s->transfer_no);
  return ENGINE_OK;
}

/* ---------------------------------------------------------------- reads */

static void read_suspicious(const engine_state_t *st, engine_cmd_t *cmd) {
  bool asc = cmd->u.suspicious.ascending;
  uint64_t id = cmd->u.suspicious.cursor_id ? cmd->u.suspicious.cursor_id : (asc ? 1 : st->suspicious_count);
  uint32_t n = 0;
  uint64_t steps = 0;
  while (id >= 1 && id <= st->suspicious_count && steps++ < ENGINE_SCAN_STEPS_MAX) {
    const engine_suspicious_t *s = &st->suspicious[id - 1];
    bool match = s->transfer_created_ms >= cmd->u.suspicious.from_ms && s->transfer_created_ms < cmd->u.suspicious.to_ms &&
                 (cmd->u.suspicious.status < 0 || s->status == cmd->u.suspicious.status) &&
                 (cmd->u.suspicious.rule_id[0] == '\0' || strcmp(s->rule_id, cmd->u.suspicious.rule_id) == 0);
    if (match) {
      if (n == cmd->u.suspicious.limit) break;
      cmd->u.suspicious.rows[n++] = *s;
    }
    id = asc ? id + 1 : id - 1;
  }
  cmd->row_count = n;
  cmd->next_cursor = (id >= 1 && id <= st->suspicious_count) ? id : 0;
  cmd->result = ENGINE_OK;
}

static void read_settlements(const engine_state_t *st, engine_cmd_t *cmd) {
  uint32_t n = 0;
  cmd->u.settlements.truncated = false;
  for (uint64_t k = 0; k < st->settle_count; k++) {
    const engine_settlement_t *r = &st->settle_rows[k];
    if (r->count == 0 || r->day < cmd->u.settlements.day_from || r->day > cmd->u.settlements.day_to ||
        (cmd->u.settlements.has_region && r->region != cmd->u.settlements.region) ||
        (cmd->u.settlements.currency && r->currency != cmd->u.settlements.currency))
      continue;
    if (n == cmd->u.settlements.cap) {
      cmd->u.settlements.truncated = true;
      break;
    }
    cmd->u.settlements.rows[n++] = *r;
  }
  cmd->row_count = n;
  cmd->result = ENGINE_OK;
}

void risk_read(const engine_state_t *st, engine_cmd_t *cmd) {
  switch (cmd->kind) {
    case ENGINE_CMD_RULES_GET:
      *cmd->u.rules.out = st->rules;
      cmd->result = ENGINE_OK;
      break;
    case ENGINE_CMD_SUSPICIOUS_LIST: read_suspicious(st, cmd); break;
    case ENGINE_CMD_SETTLEMENTS: read_settlements(st, cmd); break;
    default: LEDGER_ASSERT(!"not a risk read");
  }
}

/* ---------------------------------------------------------------- verification */

int risk_check(const engine_state_t *st, char *problem, size_t cap) {
  /* Recompute every settlement row from the transfers into a scratch table, then compare
   * both ways (rows with a zero count are ignored: an atomic batch that was rolled back
   * may leave one). */
  engine_state_t scratch;
  memset(&scratch, 0, sizeof scratch);
  scratch.accounts = st->accounts;
  scratch.settle_rows = state_reserve((size_t)ENGINE_SETTLEMENT_ROWS_MAX * sizeof(engine_settlement_t));
  scratch.settle_index = state_reserve((size_t)ENGINE_SETTLE_SLOTS * sizeof(uint32_t));
  int rc = LEDGER_OK;
  if (!scratch.settle_rows || !scratch.settle_index) {
    snprintf(problem, cap, "out of memory");
    rc = LEDGER_ENOMEM;
  }
  for (uint64_t i = 0; rc == 0 && i < st->transfer_count; i++) {
    const transfer_rec_t *t = &st->transfers[i];
    bool moved = (t->flags & ENGINE_TF_SETTLEMENT) ? t->status == ENGINE_STATUS_POSTED
                                                   : !(t->flags & ENGINE_TF_PENDING) && !(t->flags & ENGINE_TF_HELD);
    if (!moved) continue;
    int64_t created_ms = transfer_created_ms(st, t);
    if (!settlement_has_room(&scratch, t, created_ms)) {
      snprintf(problem, cap, "settlements: more rows than the limit");
      rc = LEDGER_ECORRUPT;
      break;
    }
    settlement_add(&scratch, t, created_ms, 1);
  }
  for (int pass = 0; rc == 0 && pass < 2; pass++) {
    const engine_state_t *a = pass == 0 ? st : &scratch, *b = pass == 0 ? &scratch : st;
    for (uint64_t k = 0; k < a->settle_count; k++) {
      const engine_settlement_t *r = &a->settle_rows[k];
      if (r->count == 0) continue;
      uint64_t slot;
      const engine_settlement_t *o = settle_find(b, r->day, r->region, r->currency, &slot);
      if (!o || o->count != r->count || o->volume != r->volume || o->deposits != r->deposits ||
          o->withdrawals != r->withdrawals) {
        snprintf(problem, cap, "settlement day %d region %u currency %u: the ledger's row differs from a recomputation",
                 (int)r->day, (unsigned)r->region, (unsigned)r->currency);
        rc = LEDGER_ECORRUPT;
        break;
      }
    }
  }
  if (scratch.settle_rows) munmap(scratch.settle_rows, (size_t)ENGINE_SETTLEMENT_ROWS_MAX * sizeof(engine_settlement_t));
  if (scratch.settle_index) munmap(scratch.settle_index, (size_t)ENGINE_SETTLE_SLOTS * sizeof(uint32_t));
  if (rc != 0) return rc;
  /* Suspicious entries point at flagged transfers, in order. */
  for (uint64_t k = 0; k < st->suspicious_count; k++) {
    const engine_suspicious_t *s = &st->suspicious[k];
    if (s->id != k + 1 || s->transfer_no == 0 || s->transfer_no > st->transfer_count ||
        !(st->transfers[s->transfer_no - 1].flags & ENGINE_TF_SUSPICIOUS) ||
        (k > 0 && st->suspicious[k - 1].transfer_no >= s->transfer_no)) {
      snprintf(problem, cap, "suspicious entry %llu: bad record", (unsigned long long)(k + 1));
      return LEDGER_ECORRUPT;
    }
  }
  problem[0] = '\0';
  return LEDGER_OK;
}
