/*
 * engine_search.c — GET /v1/transfers: filtered, keyset-paginated search over the transfers.
 *
 * No index is written on the write path. The search walks one of three orders the state
 * already keeps, picked by the filter (docs/api.md, "Search"):
 *  - account_id: that account's history chain (only its own entries are visited);
 *  - flagged=true: the suspicious-activity entries (only flagged transfers are visited);
 *  - otherwise: the transfer table, which is in time order, so from/to bound the range by
 *    binary search.
 * Every other filter is checked on each visited transfer. A request visits at most
 * ENGINE_SCAN_STEPS_MAX entries before it answers with what it found and a cursor: a page may
 * be short, never wrong.
 *
 * q (text) is not matched here: a description is a read from the log, and 20,000 of them
 * held the engine, and with it every write, for ~34 ms (docs/performance.md, session 15). With
 * q the walk only collects the candidates (at most cands_max) and stops; engine_search_texts
 * matches them on the caller's thread and ENGINE_CMD_TRANSFER_ROWS fetches the page.
 */
#include <string.h>

#include "engine/engine_state.h"

typedef struct bounds {
  engine_wide_t lo[LEDGER_CURRENCIES_MAX], hi[LEDGER_CURRENCIES_MAX];
} bounds_t;

/* digits*10^-scale major units → minor units of `exponent`, rounded up (lower bounds) or down. */
static engine_wide_t to_minor(int64_t digits, uint8_t scale, uint8_t exponent, bool round_up) {
  engine_wide_t v = digits;
  if (scale <= exponent) {
    for (unsigned i = scale; i < exponent; i++) v *= 10;
    return v;
  }
  engine_wide_t div = 1;
  for (unsigned i = exponent; i < scale; i++) div *= 10;
  return v / div + (round_up && v % div != 0 ? 1 : 0);
}

static void make_bounds(const engine_search_t *f, bounds_t *b) {
  for (unsigned c = 0; c < LEDGER_CURRENCIES_MAX; c++) {
    const ledger_currency_t *cur = ledger_currency_get((ledger_currency_id_t)c);
    b->lo[c] = f->has_min && cur ? to_minor(f->min_digits, f->min_scale, cur->exponent, true) : 0;
    b->hi[c] = f->has_max && cur ? to_minor(f->max_digits, f->max_scale, cur->exponent, false) : INT64_MAX;
  }
}

/* ---- q: a case-insensitive substring of the description or of a metadata value ---- */

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c; }

static unsigned hexval(char c) {
  if (c >= '0' && c <= '9') return (unsigned)(c - '0');
  c = lower(c);
  return c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10) : 0;
}

static size_t put_utf8(char *out, unsigned cp) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Decodes the JSON string starting after its opening quote at s[*i], into out (lower-cased
 * ASCII); leaves *i after the closing quote. Returns the decoded length. */
static size_t decode_string(const char *s, size_t len, size_t *i, char *out) {
  size_t n = 0, k = *i;
  while (k < len && s[k] != '"') {
    char c = s[k++];
    if (c != '\\' || k >= len) {
      out[n++] = lower(c);
      continue;
    }
    char e = s[k++];
    switch (e) {
      case 'n': out[n++] = '\n'; break;
      case 't': out[n++] = '\t'; break;
      case 'r': out[n++] = '\r'; break;
      case 'b': out[n++] = '\b'; break;
      case 'f': out[n++] = '\f'; break;
      case 'u': {
        if (k + 4 > len) break;
        unsigned cp = hexval(s[k]) << 12 | hexval(s[k + 1]) << 8 | hexval(s[k + 2]) << 4 | hexval(s[k + 3]);
        k += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && k + 6 <= len && s[k] == '\\' && s[k + 1] == 'u') {
          unsigned lo = hexval(s[k + 2]) << 12 | hexval(s[k + 3]) << 8 | hexval(s[k + 4]) << 4 | hexval(s[k + 5]);
          if (lo >= 0xDC00 && lo < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            k += 6;
          }
        }
        size_t m = put_utf8(out + n, cp);
        if (m == 1) out[n] = lower(out[n]);
        n += m;
        break;
      }
      default: out[n++] = lower(e); break; /* \" \\ \/ */
    }
  }
  *i = k + 1;
  out[n] = '\0';
  return n;
}

/* The extra is the compact JSON the API wrote: {"description":S,"metadata":{K:V,...}}. A
 * string right after ':' is a value. */
static bool extra_matches(const char *json, size_t len, const char *q) {
  char text[LEDGER_EXTRA_BYTES_MAX + 8];
  char prev = 0;
  for (size_t i = 0; i < len;) {
    char c = json[i];
    if (c == '"') {
      bool is_value = prev == ':';
      i++;
      decode_string(json, len, &i, text);
      if (is_value && strstr(text, q)) return true;
      prev = '"';
      continue;
    }
    if (c != ' ') prev = c;
    i++;
  }
  return false;
}

/* ---- the walk ---- */

typedef struct walk {
  const engine_state_t *st;
  engine_cmd_t *cmd;
  const engine_search_t *f;
  bounds_t b;
  const transfer_side_t *side; /* with q: the side entry of the transfer matches() passed */
  uint64_t side_hint;           /* index of the last side entry found (the walk is ordered) */
} walk_t;

/* state_side for a walk: the side table is in transfer order, like every walk, so the entry
 * is most often the one next to the last found; else a binary search. */
static const transfer_side_t *walk_side(walk_t *w, uint64_t no) {
  const engine_state_t *st = w->st;
  if (!(st->transfers[no - 1].flags & TRANSFER_SIDE_FLAGS)) return NULL;
  uint64_t h = w->side_hint;
  for (uint64_t k = h > 0 ? h - 1 : 0; k <= h + 1 && k < st->side_count; k++)
    if (st->side[k].no == no) {
      w->side_hint = k;
      return &st->side[k];
    }
  const transfer_side_t *x = state_side(st, no);
  if (x) w->side_hint = (uint64_t)(x - st->side);
  return x;
}

static bool visible_to(const walk_t *w, uint64_t account_id) {
  return w->cmd->role != ENGINE_ROLE_CUSTOMER || w->st->accounts[account_id - 1].owner_id == w->cmd->principal_id;
}

/* Every filter but q. With q, only a transfer with an extra can match (w->side is then its
 * side entry). */
static bool matches(walk_t *w, uint64_t no, const transfer_rec_t *t) {
  const engine_search_t *f = w->f;
  if (t->flags & ENGINE_TF_SETTLEMENT) return false;
  int64_t created_ms = transfer_created_ms(w->st, t);
  if (created_ms < f->from_ms || created_ms >= f->to_ms) return false;
  if (f->kind >= 0 && t->kind != f->kind) return false;
  if (f->status >= 0 && t->status != f->status) return false;
  if (f->flagged >= 0 && ((t->flags & ENGINE_TF_SUSPICIOUS) != 0) != (f->flagged == 1)) return false;
  if (f->account_id && t->debit_account_id != f->account_id && t->credit_account_id != f->account_id) return false;
  if (t->amount_minor < w->b.lo[t->currency] || t->amount_minor > w->b.hi[t->currency]) return false;
  if (f->has_region && transfer_region(w->st, t) != f->region) return false;
  if (!visible_to(w, t->debit_account_id) && !visible_to(w, t->credit_account_id)) return false;
  if (f->q[0]) {
    const transfer_side_t *x = (t->flags & ENGINE_TF_EXTRA) ? walk_side(w, no) : NULL;
    if (!x || x->extra_len == 0 || x->extra_len > LEDGER_EXTRA_BYTES_MAX) return false;
    w->side = x;
  }
  return true;
}

/* First transfer number whose created_ms >= ms (transfer_count + 1 if none): the first of
 * the first stamp at or after ms (stamps are in time order). */
static uint64_t first_at_or_after(const engine_state_t *st, int64_t ms) {
  uint64_t lo = 0, hi = st->stamp_count;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (st->stamps[mid].created_ms < ms) lo = mid + 1;
    else hi = mid;
  }
  return lo < st->stamp_count ? st->stamps[lo].first_no : st->transfer_count + 1;
}

/* Index of the first suspicious entry with transfer_no >= no. */
static uint64_t suspicious_at(const engine_state_t *st, uint64_t no) {
  uint64_t lo = 0, hi = st->suspicious_count;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (st->suspicious[mid].transfer_no < no) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* The walk's positions are transfer numbers; next() gives the following one (0 = end). */
static uint64_t next_no(const walk_t *w, uint64_t no, uint64_t *sidx) {
  const engine_state_t *st = w->st;
  bool asc = w->cmd->u.search.ascending;
  if (w->f->account_id) {
    const transfer_rec_t *t = &st->transfers[no - 1];
    return asc ? state_next_no(st, t, w->f->account_id) : state_prev_no(t, w->f->account_id);
  }
  if (w->f->flagged == 1) {
    if (asc) {
      if (++*sidx >= st->suspicious_count) return 0;
    } else {
      if (*sidx == 0) return 0;
      --*sidx;
    }
    return st->suspicious[*sidx].transfer_no;
  }
  if (asc) return no < st->transfer_count ? no + 1 : 0;
  return no - 1;
}

void search_read(const engine_state_t *st, engine_cmd_t *cmd) {
  walk_t w = {.st = st, .cmd = cmd, .f = &cmd->u.search.filter};
  make_bounds(w.f, &w.b);
  bool text = w.f->q[0] != '\0';
  LEDGER_ASSERT(!text || cmd->u.search.cands != NULL); /* the engine never reads a description */
  bool asc = cmd->u.search.ascending;
  uint64_t cursor = cmd->u.search.cursor_no;
  uint64_t no = 0, sidx = 0;
  cmd->row_count = 0;
  cmd->next_cursor = 0;
  cmd->u.search.steps = 0;
  cmd->result = ENGINE_OK;
  if (cursor > st->transfer_count) return;
  if (w.f->account_id) {
    if (w.f->account_id > st->account_count || !visible_to(&w, w.f->account_id)) return; /* nothing, no leak */
    const account_rec_t *a = &st->accounts[w.f->account_id - 1];
    no = cursor ? cursor : (asc ? a->history_first_no : a->history_last_no);
    if (no) {
      const transfer_rec_t *t = &st->transfers[no - 1];
      if (t->debit_account_id != a->id && t->credit_account_id != a->id) return; /* another account's cursor */
    }
  } else if (w.f->flagged == 1) {
    if (st->suspicious_count == 0) return;
    if (asc) {
      sidx = suspicious_at(st, cursor ? cursor : first_at_or_after(st, w.f->from_ms));
      if (sidx >= st->suspicious_count) return;
    } else {
      uint64_t end = cursor ? cursor + 1 : first_at_or_after(st, w.f->to_ms);
      sidx = suspicious_at(st, end);
      if (sidx == 0) return;
      sidx--;
    }
    no = st->suspicious[sidx].transfer_no;
  } else if (asc) {
    no = cursor ? cursor : first_at_or_after(st, w.f->from_ms);
    if (no > st->transfer_count) no = 0;
  } else {
    no = cursor ? cursor : first_at_or_after(st, w.f->to_ms) - 1;
  }
  uint32_t n = 0;
  uint64_t steps = 0, steps_max = cmd->u.search.steps_max;
  if (steps_max == 0 || steps_max > ENGINE_SCAN_STEPS_MAX) steps_max = ENGINE_SCAN_STEPS_MAX;
  while (no != 0 && steps++ < steps_max) {
    const transfer_rec_t *t = &st->transfers[no - 1];
    int64_t created_ms = transfer_created_ms(st, t);
    if (asc ? created_ms >= w.f->to_ms : created_ms < w.f->from_ms) {
      no = 0; /* time order: nothing further can match */
      break;
    }
    if (matches(&w, no, t)) {
      if (text) {
        if (n == cmd->u.search.cands_max) break;
        cmd->u.search.cands[n++] = (engine_search_cand_t){.no = no, .extra_pos = w.side->extra_pos, .extra_len = w.side->extra_len};
      } else {
        if (n == cmd->u.search.limit) break;
        cmd->u.search.rows[n++] = state_transfer(st, no);
      }
    }
    no = next_no(&w, no, &sidx);
  }
  cmd->row_count = n;
  cmd->next_cursor = no;
  cmd->u.search.steps = (uint32_t)(steps < steps_max ? steps : steps_max);
}

uint32_t engine_search_texts(const engine_search_cand_t *cands, uint32_t n, const char *q, uint32_t limit,
                             uint64_t walk_cursor, int (*read)(void *ctx, uint64_t pos, uint32_t len, char *buf),
                             void *ctx, uint64_t *nos, uint64_t *next_cursor) {
  char ql[sizeof(((engine_search_t *)0)->q)] = {0};
  for (size_t i = 0; i < sizeof ql - 1 && q[i]; i++) ql[i] = lower(q[i]);
  uint32_t kept = 0;
  for (uint32_t i = 0; i < n; i++) {
    char buf[LEDGER_EXTRA_BYTES_MAX];
    if (cands[i].extra_len > sizeof buf || read(ctx, cands[i].extra_pos, cands[i].extra_len, buf) != 0) continue;
    if (!extra_matches(buf, cands[i].extra_len, ql)) continue;
    if (kept == limit) { /* the first match past the page: the next one starts there */
      *next_cursor = cands[i].no;
      return kept;
    }
    nos[kept++] = cands[i].no;
  }
  *next_cursor = walk_cursor;
  return kept;
}
