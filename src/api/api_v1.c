/*
 * api_v1.c — routing and the v1 handlers: validate, build an engine command, submit; render
 * the engine's answer on the net thread when it completes.
 *
 * Threads: api_handle and the completion callback run on net threads; api_done runs on the
 * engine's committer thread and only pushes the request onto its thread's lock-free completion stack.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "api/api_internal.h"
#include "api/ratelimit.h"
#include "auth/auth.h"
#include "obs/obs.h"

/* ------------------------------------------------------------ routes */

typedef enum {
  R_NOT_FOUND = 0,
  R_HEALTHZ,
  R_READYZ,
  R_METRICS,
  R_ACCOUNTS_CREATE,
  R_ACCOUNTS_LIST,
  R_ACCOUNT_GET,
  R_ACCOUNT_FREEZE,
  R_ACCOUNT_UNFREEZE,
  R_ACCOUNT_HISTORY,
  R_TRANSFERS_CREATE,
  R_TRANSFERS_SEARCH,
  R_TRANSFERS_BATCH,
  R_TRANSFER_GET,
  R_TRANSFER_POST,
  R_TRANSFER_VOID,
  R_DEPOSITS,
  R_WITHDRAWALS,
  R_USERS_CREATE,
  R_USER_ROLE,
  R_SESSIONS_CREATE,
  R_SESSION_DELETE,
  R_ME,
  R_API_KEYS_CREATE,
  R_API_KEY_DELETE,
  R_AUDIT,
  R_TRANSFER_RECEIPT,
  R_RULES_GET,
  R_RULES_RELOAD,
  R_SUSPICIOUS_LIST,
  R_SUSPICIOUS_REVIEW,
  R_SETTLEMENTS,
  R_SETTLEMENTS_CSV,
  R_METHOD_NOT_ALLOWED,
  R_COMPAT, /* every compatibility route (src/api/compat.c); not listed with the v1 routes */
  R_COUNT
} route_t;

static const char *const route_names[R_COUNT] = {
    [R_NOT_FOUND] = "not_found",
    [R_HEALTHZ] = "GET /healthz",
    [R_READYZ] = "GET /readyz",
    [R_METRICS] = "GET /metrics",
    [R_ACCOUNTS_CREATE] = "POST /v1/accounts",
    [R_ACCOUNTS_LIST] = "GET /v1/accounts",
    [R_ACCOUNT_GET] = "GET /v1/accounts/{id}",
    [R_ACCOUNT_FREEZE] = "POST /v1/accounts/{id}/freeze",
    [R_ACCOUNT_UNFREEZE] = "POST /v1/accounts/{id}/unfreeze",
    [R_ACCOUNT_HISTORY] = "GET /v1/accounts/{id}/transfers",
    [R_TRANSFERS_CREATE] = "POST /v1/transfers",
    [R_TRANSFERS_SEARCH] = "GET /v1/transfers",
    [R_TRANSFERS_BATCH] = "POST /v1/transfers/batch",
    [R_TRANSFER_GET] = "GET /v1/transfers/{id}",
    [R_TRANSFER_POST] = "POST /v1/transfers/{id}/post",
    [R_TRANSFER_VOID] = "POST /v1/transfers/{id}/void",
    [R_DEPOSITS] = "POST /v1/deposits",
    [R_WITHDRAWALS] = "POST /v1/withdrawals",
    [R_USERS_CREATE] = "POST /v1/users",
    [R_USER_ROLE] = "POST /v1/users/{id}/role",
    [R_SESSIONS_CREATE] = "POST /v1/sessions",
    [R_SESSION_DELETE] = "DELETE /v1/sessions/current",
    [R_ME] = "GET /v1/me",
    [R_API_KEYS_CREATE] = "POST /v1/api-keys",
    [R_API_KEY_DELETE] = "DELETE /v1/api-keys/{id}",
    [R_AUDIT] = "GET /v1/audit",
    [R_TRANSFER_RECEIPT] = "GET /v1/transfers/{id}/receipt",
    [R_RULES_GET] = "GET /v1/rules",
    [R_RULES_RELOAD] = "POST /v1/rules/reload",
    [R_SUSPICIOUS_LIST] = "GET /v1/suspicious",
    [R_SUSPICIOUS_REVIEW] = "POST /v1/suspicious/{id}/review",
    [R_SETTLEMENTS] = "GET /v1/settlements",
    [R_SETTLEMENTS_CSV] = "GET /v1/reports/settlements.csv",
    [R_METHOD_NOT_ALLOWED] = "method_not_allowed",
    [R_COMPAT] = "compat",
};

/* Routes anyone may call without a credential. Every other route needs one (401 without). */
static bool route_is_open(route_t rt) {
  return rt == R_HEALTHZ || rt == R_READYZ || rt == R_USERS_CREATE || rt == R_SESSIONS_CREATE ||
         rt == R_NOT_FOUND || rt == R_METHOD_NOT_ALLOWED;
}

void api_print_routes(void *file) {
  for (unsigned rt = 1; rt < R_METHOD_NOT_ALLOWED; rt++)
    fprintf(file, "%s %s\n", route_names[rt], route_is_open((route_t)rt) ? "open" : "credential");
}

/* Statuses counted per route in /metrics. */
static const int tracked_statuses[] = {200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 501, 503};
#define STATUS_SLOTS (LEDGER_ARRAY_LEN(tracked_statuses) + 1)

/* Error codes counted in /metrics (rejections by code). */
static const char *const error_codes[] = {
    "invalid_json", "invalid_request", "unknown_field", "invalid_amount", "invalid_currency",
    "invalid_id", "invalid_idempotency_key", "invalid_cursor", "invalid_parameter", "not_found",
    "method_not_allowed", "payload_too_large", "account_not_found",
    "transfer_not_found", "insufficient_funds", "currency_mismatch", "same_account", "account_frozen",
    "limit_exceeded", "transfer_not_pending", "amount_exceeds_pending", "idempotency_conflict",
    "batch_aborted", "invalid_operation", "capacity_exhausted", "idempotency_expired", "overloaded",
    "not_ready", "not_implemented", "internal", "unauthorized", "forbidden", "username_taken",
    "user_not_found", "api_key_not_found", "rate_limited", "rule_rejected", "under_review", "already_reviewed",
    "invalid_rules", "result_too_large"};
#define ERROR_SLOTS LEDGER_ARRAY_LEN(error_codes)

typedef struct completion_stack {
  _Alignas(64) _Atomic(struct api_req *) head;
} completion_stack_t;

typedef struct out_slot {
  _Alignas(64) jw_t w; /* the response being written on one net thread */
  auth_memo_t memo;    /* that thread's presented tokens' SHA-256s (api_req_token_hash: v1 and compat) */
} out_slot_t;

struct api {
  engine_t *engine;
  ratelimit_t *rl; /* NULL: limits off */
  ratelimit_rule_t rules[API_RL_COUNT];
  auth_pool_t *hash_pool;
  auth_pool_t *search_pool; /* text searches (api_config_t.search_pool, else hash_pool) */
  bool no_auth;
  bool compat, compat_open; /* --compat, --compat-open (src/api/compat.c) */
  uint32_t session_ttl_s;
  const char *rules_path; /* --config, NULL = built-in rules */
  int64_t time_offset_ms;
  out_slot_t out[HTTP_THREADS_MAX];
  http_server_t *http;
  completion_stack_t done[HTTP_THREADS_MAX];
  http_loop_t *loops[HTTP_THREADS_MAX];
  _Atomic uint64_t in_flight;
  _Atomic uint32_t text_searches; /* requests holding a candidate buffer (API_TEXT_SEARCHES_MAX) */
  _Atomic uint64_t requests[R_COUNT][STATUS_SLOTS];
  _Atomic uint64_t errors[ERROR_SLOTS];
  ledger_hist_t latency_ns;
};

/* One request in flight. Owned by its net thread, except between engine_submit and done. */
typedef struct api_req {
  api_t *api;
  http_request_t *http;
  route_t route;
  uint64_t started_ns;
  engine_cmd_t cmd;
  void (*resume)(struct api_req *r); /* next step on the net thread; NULL = answer the command */
  auth_job_t *job;                   /* sign-up / sign-in: the hashing job */
  char username[ENGINE_USERNAME_BYTES_MAX + 1];
  char email[ENGINE_EMAIL_BYTES_MAX + 1];
  char name[ENGINE_KEY_NAME_BYTES_MAX + 1];
  char token[AUTH_TOKEN_TEXT_BYTES]; /* a new credential, shown once; wiped on free */
  engine_audit_event_t *audit_rows;
  engine_transfer_in_t *items;   /* batch */
  engine_item_result_t *results; /* batch */
  void *rows;                    /* list / history */
  char region[API_REGION_BYTES_MAX + 1];
  char *batch_extra; /* batch: all items' extras */
  engine_rules_t *rules; /* rules reload / get */
  /* A text search (q): the walk's candidates, then the matches' numbers (one allocation). */
  engine_search_cand_t *cands;
  uint64_t *match_nos;
  uint32_t cand_count, match_count;
  uint64_t walk_cursor, match_cursor;
  uint32_t cands_used, steps_used; /* over the request's rounds (search_text_round) */
  bool walk_full;                  /* the last round's walk stopped on its candidate room */
  bool text_search;                /* counted in api->text_searches */
  void (*then)(struct api_req *r); /* compat: answers instead of the v1 rendering */
  void *ext;                       /* compat: its per-request state (freed with the request) */
  struct api_req *next;
  /* Last, and not zeroed (api_handle): 8 KiB that only a request with an extra (metadata or
   * description) writes, and that is read only up to the length written. */
  char extra[LEDGER_EXTRA_BYTES_MAX];
} api_req_t;


static unsigned status_slot(int status) {
  for (unsigned i = 0; i < LEDGER_ARRAY_LEN(tracked_statuses); i++)
    if (tracked_statuses[i] == status) return i;
  return (unsigned)LEDGER_ARRAY_LEN(tracked_statuses);
}

static void count_error(api_t *api, const char *code) {
  for (unsigned i = 0; i < ERROR_SLOTS; i++) {
    if (strcmp(error_codes[i], code) == 0) {
      atomic_fetch_add_explicit(&api->errors[i], 1, memory_order_relaxed);
      return;
    }
  }
  LEDGER_ASSERT(!"error code missing from the metrics table");
}

static void req_free(api_req_t *r) {
  if (r->job) {
    sodium_memzero(r->job, sizeof *r->job);
    free(r->job);
  }
  sodium_memzero(r->token, sizeof r->token);
  free(r->audit_rows);
  free(r->items);
  free(r->results);
  free(r->rows);
  free(r->batch_extra);
  free(r->rules);
  free(r->cands);
  if (r->text_search) atomic_fetch_sub_explicit(&r->api->text_searches, 1, memory_order_relaxed);
  free(r->ext); /* compat state: plain data, no secrets (compat wipes its bodies itself) */
  free(r);
}

/* Sends and frees the request. */
static void finish_typed(api_req_t *r, int status, const char *ctype, const char *headers, const char *body,
                         size_t len) {
  api_t *api = r->api;
  http_respond(r->http, status, ctype, headers, body, len);
  atomic_fetch_add_explicit(&api->requests[r->route][status_slot(status)], 1, memory_order_relaxed);
  hist_record(&api->latency_ns, time_mono_ns() - r->started_ns);
  req_free(r);
}

static void finish(api_req_t *r, int status, const char *headers, const char *body, size_t len) {
  finish_typed(r, status, "application/json; charset=utf-8", headers, body, len);
}

static void finish_json(api_req_t *r, int status, const char *headers) {
  if (r->api->out[r->http->thread_index].w.overflow) {
    jw_reset(&r->api->out[r->http->thread_index].w);
    jw_lit(&r->api->out[r->http->thread_index].w, "{\"error\":{\"code\":\"internal\",\"message\":\"response too large\"}}");
    status = 500;
  }
  finish(r, status, headers, r->api->out[r->http->thread_index].w.buf, r->api->out[r->http->thread_index].w.len);
}

static void fail(api_req_t *r, int status, const char *code, const char *message) {
  count_error(r->api, code);
  jw_t *w = &r->api->out[r->http->thread_index].w;
  jw_reset(w);
  jw_lit(w, "{\"error\":{\"code\":");
  jw_str(w, code, strlen(code));
  jw_lit(w, ",\"message\":");
  jw_str(w, message, strlen(message));
  jw_lit(w, "}}");
  finish_json(r, status,
              status == 503 || status == 429 ? "Retry-After: 1\r\n"
              : status == 401            ? "WWW-Authenticate: Bearer\r\n"
                                         : NULL);
}

static void fail_limited(api_req_t *r, uint32_t retry_s);

static void fail_err(api_req_t *r, const api_error_t *e) {
  if (e->status == 429 && e->retry_after_s) fail_limited(r, e->retry_after_s);
  else fail(r, e->status, e->code, e->message);
}

/* ------------------------------------------------------------ rate limits */

const char *const api_rl_rule_names[API_RL_COUNT] = {"signin.addr", "signin.user", "write.addr",
                                                      "write.cred",  "read.addr",   "read.cred"};

void api_rate_defaults(api_rate_rule_t rules[API_RL_COUNT]) {
  /* Sign-in is strict: 10 tries at once, then one every 10 s per address and per username
   * (a failure also drains up to 4 more). Money and reads are generous: they stop floods. */
  rules[API_RL_SIGNIN_ADDR] = (api_rate_rule_t){0.1, 10};
  rules[API_RL_SIGNIN_USER] = (api_rate_rule_t){0.1, 5};
  rules[API_RL_WRITE_ADDR] = (api_rate_rule_t){50000, 100000};
  rules[API_RL_WRITE_CRED] = (api_rate_rule_t){20000, 40000};
  rules[API_RL_READ_ADDR] = (api_rate_rule_t){50000, 100000};
  rules[API_RL_READ_CRED] = (api_rate_rule_t){20000, 40000};
}

static uint64_t rl_key(api_rl_rule_t rule, const void *id, size_t len) {
  return ledger_hash128(id, len, 0x5241544cu + (uint64_t)rule).lo;
}

/* Takes `cost` from the rule's bucket for `id`; returns Retry-After seconds or 0. */
static uint32_t rl_take(api_req_t *r, api_rl_rule_t rule, const void *id, size_t len, double cost) {
  if (!r->api->rl) return 0;
  return ratelimit_take(r->api->rl, rl_key(rule, id, len), &r->api->rules[rule], cost, time_mono_ns());
}

static void fail_limited(api_req_t *r, uint32_t retry_s) {
  count_error(r->api, "rate_limited");
  char headers[48];
  snprintf(headers, sizeof headers, "Retry-After: %u\r\n", retry_s);
  const char body[] = "{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many requests; retry later\"}}";
  finish(r, 429, headers, body, sizeof body - 1);
}

/* Per-address and per-credential limits of the route's class. */
static uint32_t rate_check(api_req_t *r) {
  const char *addr = r->cmd.client_addr;
  size_t alen = strlen(addr);
  bool signin = r->route == R_SESSIONS_CREATE || r->route == R_USERS_CREATE;
  bool read = r->http->method == HTTP_METHOD_GET || r->http->method == HTTP_METHOD_HEAD;
  api_rl_rule_t by_addr = signin ? API_RL_SIGNIN_ADDR : read ? API_RL_READ_ADDR : API_RL_WRITE_ADDR;
  uint32_t wait = rl_take(r, by_addr, addr, alen, 1.0);
  if (wait == 0 && !signin && r->cmd.auth_mode == ENGINE_AUTH_BEARER)
    wait = rl_take(r, read ? API_RL_READ_CRED : API_RL_WRITE_CRED, r->cmd.credential_hash, 32, 1.0);
  return wait;
}

/* ------------------------------------------------------------ rendering */

static uint8_t exponent_of(uint8_t currency) {
  const ledger_currency_t *c = ledger_currency_get(currency);
  return c ? c->exponent : 0;
}

static void splice_extra(api_t *api, jw_t *w, uint64_t pos, uint32_t len) {
  if (len < 2) return;
  char *buf = malloc(len);
  if (buf && engine_read_extra(api->engine, pos, len, buf) == 0 && buf[0] == '{' && buf[len - 1] == '}') {
    jw_comma_if(w);
    jw_raw(w, buf + 1, len - 2); /* the stored object's members, written by json_get_extra */
  }
  free(buf);
}

static void render_account(api_t *api, jw_t *w, const engine_account_t *a) {
  uint8_t x = exponent_of(a->currency);
  jw_open(w, '{');
  jw_key(w, "id");
  jw_u64(w, a->id);
  jw_key(w, "owner_id");
  jw_u64(w, a->owner_id);
  jw_key_str(w, "currency", ledger_currency_get(a->currency)->code);
  jw_key(w, "region");
  const char *region = engine_region_name(api->engine, a->region);
  jw_str(w, region, strlen(region));
  jw_key(w, "kind");
  jw_lit(w, a->kind == ENGINE_ACCOUNT_KIND_SYSTEM ? "\"system\"" : "\"customer\"");
  if (a->kind == ENGINE_ACCOUNT_KIND_SYSTEM) {
    jw_key(w, "name");
    jw_lit(w, "\"cash:");
    jw_lit(w, ledger_currency_get(a->currency)->code);
    jw_lit(w, "\"");
  }
  jw_key(w, "balance");
  jw_money(w, a->balance_minor, x);
  jw_key(w, "pending_debits");
  jw_money(w, a->pending_debits_minor, x);
  jw_key(w, "pending_credits");
  jw_money(w, a->pending_credits_minor, x);
  jw_key(w, "available");
  jw_money(w, a->balance_minor - a->pending_debits_minor, x);
  jw_key(w, "allow_overdraft");
  jw_lit(w, (a->flags & ENGINE_AF_OVERDRAFT) ? "true" : "false");
  jw_key(w, "status");
  jw_lit(w, a->status == ENGINE_ACCOUNT_FROZEN ? "\"frozen\"" : "\"open\"");
  jw_key(w, "created_at");
  jw_time(w, a->created_ms);
  jw_key(w, "updated_at");
  jw_time(w, a->updated_ms);
  splice_extra(api, w, a->extra_pos, a->extra_len);
  jw_close(w, '}');
}

/* One accepted item of a batch answer, {"index":I,"status":"S","id":"UUID"} (after a comma
 * unless first), written in one piece: 8,190 of them per answer, and the general writers cost
 * a length, a room check and a copy per fragment. Ids and status names need no escaping. */
static void batch_item_ok(jw_t *w, uint32_t i, const engine_item_result_t *it) {
  const char *status = engine_status_name(it->status);
  size_t status_len = strlen(status);
  char *o = jw_reserve(w, 96 + status_len); /* 77 + the status at most */
  if (!o) return;
  char *start = o;
  if (i) *o++ = ',';
  memcpy(o, "{\"index\":", 9);
  o += 9;
  o += u64_format(o, i);
  memcpy(o, ",\"status\":\"", 11);
  o += 11;
  memcpy(o, status, status_len);
  o += status_len;
  memcpy(o, "\",\"id\":\"", 8);
  o += 8;
  ledger_uuid_t id = uuid_from_transfer(it->created_ms, it->no);
  uuid_format(&id, o); /* 36 characters and a NUL, which the next bytes overwrite */
  o += UUID_TEXT_BYTES - 1;
  memcpy(o, "\"}", 2);
  o += 2;
  jw_wrote(w, (size_t)(o - start));
}

/* A transfer's id, quoted (ids need no escaping), in one piece. */
static void jw_uuid(jw_t *w, uint64_t no, int64_t created_ms) {
  ledger_uuid_t id = uuid_from_transfer(created_ms, no);
  char *o = jw_quoted_begin(w, UUID_TEXT_BYTES);
  if (!o) return;
  uuid_format(&id, o); /* 36 characters and a NUL, which the closing quote overwrites */
  jw_quoted_end(w, UUID_TEXT_BYTES - 1);
}

static void render_transfer(api_t *api, jw_t *w, const engine_transfer_t *t, bool with_extra,
                            const engine_suspicious_t *risk) {
  uint8_t x = exponent_of(t->currency);
  jw_open(w, '{');
  jw_key(w, "id");
  jw_uuid(w, t->no, t->created_ms);
  jw_key_str(w, "status", engine_status_name(t->status));
  jw_key_str(w, "kind", engine_kind_name(t->kind));
  jw_key(w, "debit_account_id");
  jw_u64(w, t->debit_account_id);
  jw_key(w, "credit_account_id");
  jw_u64(w, t->credit_account_id);
  jw_key(w, "amount");
  jw_money(w, t->amount_minor, x);
  jw_key_str(w, "currency", ledger_currency_get(t->currency)->code);
  if (t->flags & ENGINE_TF_SETTLEMENT) {
    jw_key(w, "pending_id");
    jw_uuid(w, t->pending_no, t->pending_created_ms);
  }
  if ((t->flags & ENGINE_TF_PENDING) && t->status == ENGINE_STATUS_POSTED) {
    jw_key(w, "posted_amount");
    jw_money(w, t->posted_minor, x);
  }
  if ((t->flags & ENGINE_TF_PENDING) && t->timeout_s) {
    jw_key(w, "timeout_s");
    jw_u64(w, t->timeout_s);
    jw_key(w, "expires_at");
    jw_time(w, t->created_ms + (int64_t)t->timeout_s * 1000);
  }
  if (t->flags & ENGINE_TF_EXPIRED) {
    jw_key(w, "expired");
    jw_lit(w, "true");
  }
  jw_key(w, "created_at");
  jw_time(w, t->created_ms);
  if (t->flags & ENGINE_TF_PENDING) {
    jw_key(w, "updated_at");
    jw_time(w, t->updated_ms);
  }
  jw_key(w, "seq");
  jw_u64(w, t->seq);
  if (!(t->flags & ENGINE_TF_SETTLEMENT)) {
    jw_key(w, "rules_version");
    jw_u64(w, t->rules_version);
  }
  if (t->flags & ENGINE_TF_SUSPICIOUS) {
    jw_key(w, "flags");
    jw_lit(w, (t->flags & ENGINE_TF_HELD) ? "[\"suspicious\",\"held\"]" : "[\"suspicious\"]");
  }
  if (risk && risk->id && risk->transfer_no == t->no) { /* what fired; its review: /v1/suspicious */
    jw_key(w, "risk");
    jw_lit(w, "{\"suspicious_id\":");
    jw_u64(w, risk->id);
    jw_lit(w, ",\"rule\":");
    jw_str(w, risk->rule_id, strlen(risk->rule_id));
    jw_lit(w, ",\"action\":\"");
    jw_lit(w, engine_rule_action_name(risk->action));
    jw_lit(w, "\"}");
  }
  if (with_extra) splice_extra(api, w, t->extra_pos, t->extra_len);
  jw_close(w, '}');
}

static void render_user(jw_t *w, const engine_user_t *u) {
  jw_open(w, '{');
  jw_key(w, "id");
  jw_u64(w, u->id);
  jw_key(w, "username");
  jw_str(w, u->username, strlen(u->username));
  if (u->email[0]) {
    jw_key(w, "email");
    jw_str(w, u->email, strlen(u->email));
  }
  jw_key_str(w, "role", engine_role_name(u->role));
  jw_key(w, "created_at");
  jw_time(w, u->created_ms);
  jw_close(w, '}');
}

static void render_key(jw_t *w, const engine_api_key_t *k, const char *key_text) {
  jw_open(w, '{');
  jw_key(w, "id");
  jw_u64(w, k->id);
  if (key_text) {
    jw_key(w, "key");
    jw_str(w, key_text, strlen(key_text));
  }
  jw_key(w, "name");
  jw_str(w, k->name, strlen(k->name));
  jw_key_str(w, "role", engine_role_name(k->role));
  jw_key(w, "kind");
  jw_lit(w, "\"api_key\"");
  jw_key(w, "created_at");
  jw_time(w, k->created_ms);
  if (k->revoked_ms) {
    jw_key(w, "revoked_at");
    jw_time(w, k->revoked_ms);
  }
  jw_close(w, '}');
}

static void jw_principal(jw_t *w, uint64_t id) {
  char b[40];
  if (id == ENGINE_PRINCIPAL_ANONYMOUS) snprintf(b, sizeof b, "anonymous");
  else if (id == 0) snprintf(b, sizeof b, "operator");
  else if (id & ENGINE_PRINCIPAL_KEY_BIT) snprintf(b, sizeof b, "api_key:%llu", (unsigned long long)(id & ~ENGINE_PRINCIPAL_KEY_BIT));
  else snprintf(b, sizeof b, "user:%llu", (unsigned long long)id);
  jw_str(w, b, strlen(b));
}

static void render_audit(jw_t *w, const engine_audit_event_t *e) {
  jw_open(w, '{');
  jw_key(w, "seq");
  jw_u64(w, e->seq);
  jw_key_str(w, "type", engine_audit_name(e->kind));
  jw_key(w, "time");
  jw_time(w, e->time_ms);
  jw_key(w, "actor");
  jw_principal(w, e->actor_id);
  jw_key(w, "subject_id");
  jw_u64(w, e->subject_id);
  if (e->kind == ENGINE_AUDIT_ROLE_CHANGED || e->kind == ENGINE_AUDIT_KEY_CREATED || e->kind == ENGINE_AUDIT_USER_CREATED) {
    jw_key_str(w, "role", engine_role_name(e->role));
  }
  if (e->detail[0]) {
    jw_key(w, "detail");
    jw_str(w, e->detail, strlen(e->detail));
  }
  if (e->addr[0]) {
    jw_key(w, "client_addr");
    jw_str(w, e->addr, strlen(e->addr));
  }
  jw_key(w, "batch_seq");
  jw_u64(w, e->batch_seq);
  jw_close(w, '}');
}

/* ------------------------------------------------------------ submit and complete */

/* Pushes r onto its net thread's completion stack; true if the stack was empty (the thread
 * then needs a wake: one per drain). */
static bool push_done(api_req_t *r) {
  completion_stack_t *s = &r->api->done[r->http->thread_index];
  api_req_t *head = atomic_load_explicit(&s->head, memory_order_relaxed);
  do {
    r->next = head;
  } while (!atomic_compare_exchange_weak_explicit(&s->head, &head, r, memory_order_release,
                                                  memory_order_relaxed));
  return head == NULL;
}

/* Any thread (engine, hashing pool): hands the request back to its net thread. */
static void post_back(api_req_t *r) {
  http_loop_t *loop = r->api->loops[r->http->thread_index]; /* before the push: r may be freed after it */
  if (push_done(r)) http_loop_wake(loop);
}

/* The engine's answers (given on its committer thread): each is queued at once, but the net
 * threads it went to are woken once, when the whole batch is answered (api_batch_done). A wake
 * in the middle of a batch would let the woken thread, sharing a CPU with the engine, preempt it,
 * drain what is there and need another wake for the rest: ~5 eventfd writes per batch instead
 * of one per net thread (docs/performance.md). */
static _Thread_local http_loop_t *wake_later[HTTP_THREADS_MAX];
static _Thread_local unsigned wake_later_n;

static void api_done(engine_cmd_t *cmd) {
  api_req_t *r = cmd->done_arg;
  /* Read before the push: once r is on the stack its net thread may take it and free it
   * (a wake already on its way for an earlier answer). */
  http_loop_t *loop = r->api->loops[r->http->thread_index];
  if (!push_done(r)) return; /* the thread has a wake coming for what is already there */
  for (unsigned i = 0; i < wake_later_n; i++)
    if (wake_later[i] == loop) return;
  if (wake_later_n < HTTP_THREADS_MAX) wake_later[wake_later_n++] = loop;
  else http_loop_wake(loop);
}

static void api_batch_done(void *arg) {
  (void)arg; /* the list is the committer thread's own, whichever api queued to it */
  for (unsigned i = 0; i < wake_later_n; i++) http_loop_wake(wake_later[i]);
  wake_later_n = 0;
}
static void job_done(auth_job_t *job) { post_back(job->arg); }

static void submit(api_req_t *r) {
  r->cmd.done = api_done;
  r->cmd.done_arg = r;
  atomic_fetch_add_explicit(&r->api->in_flight, 1, memory_order_relaxed);
  int rc = engine_submit(r->api->engine, &r->cmd);
  if (rc == 0) return;
  atomic_fetch_sub_explicit(&r->api->in_flight, 1, memory_order_relaxed);
  if (rc == LEDGER_EFULL) fail(r, 503, "overloaded", "the ledger is busy; retry with the same Idempotency-Key");
  else fail(r, 503, "not_ready", "the ledger is shutting down; retry with the same Idempotency-Key");
}

static int result_status(int result) {
  switch (result) {
    case ENGINE_OK: return 200;
    case ENGINE_R_ACCOUNT_NOT_FOUND:
    case ENGINE_R_TRANSFER_NOT_FOUND: return 404;
    case ENGINE_R_IDEMPOTENCY_CONFLICT:
    case ENGINE_R_IDEMPOTENCY_EXPIRED: return 409;
    case ENGINE_R_CAPACITY_EXHAUSTED: return 503;
    case ENGINE_R_INVALID_AMOUNT: return 400;
    case ENGINE_R_UNAUTHENTICATED: return 401;
    case ENGINE_R_FORBIDDEN: return 403;
    case ENGINE_R_USERNAME_TAKEN: return 409;
    case ENGINE_R_USER_NOT_FOUND:
    case ENGINE_R_SUSPICIOUS_NOT_FOUND:
    case ENGINE_R_API_KEY_NOT_FOUND: return 404;
    case ENGINE_R_ALREADY_REVIEWED: return 409;
    default: return 422;
  }
}

static const char *result_message(int result) {
  switch (result) {
    case ENGINE_R_ACCOUNT_NOT_FOUND: return "no such account";
    case ENGINE_R_TRANSFER_NOT_FOUND: return "no such transfer";
    case ENGINE_R_INSUFFICIENT_FUNDS: return "the debit account's available balance is too low";
    case ENGINE_R_CURRENCY_MISMATCH: return "the accounts (and currency, if given) must share one currency";
    case ENGINE_R_SAME_ACCOUNT: return "debit and credit account must differ";
    case ENGINE_R_ACCOUNT_FROZEN: return "a frozen account neither sends nor receives";
    case ENGINE_R_LIMIT_EXCEEDED: return "a balance or table limit would be exceeded";
    case ENGINE_R_TRANSFER_NOT_PENDING: return "the transfer is not pending";
    case ENGINE_R_AMOUNT_EXCEEDS_PENDING: return "the amount exceeds the pending amount";
    case ENGINE_R_IDEMPOTENCY_CONFLICT: return "this Idempotency-Key was used with another request";
    case ENGINE_R_BATCH_ABORTED: return "an item of the atomic batch failed";
    case ENGINE_R_INVALID_OPERATION: return "the operation is not allowed on this object";
    case ENGINE_R_CAPACITY_EXHAUSTED: return "the ledger reached a configured capacity limit";
    case ENGINE_R_IDEMPOTENCY_EXPIRED: return "the stored outcome of this Idempotency-Key is no longer available";
    case ENGINE_R_INVALID_AMOUNT: return "the amount has more fraction digits than the currency, or is too large";
    case ENGINE_R_UNAUTHENTICATED: return "missing or invalid credentials";
    case ENGINE_R_FORBIDDEN: return "your role may not do this";
    case ENGINE_R_USERNAME_TAKEN: return "that username is taken";
    case ENGINE_R_USER_NOT_FOUND: return "no such user";
    case ENGINE_R_API_KEY_NOT_FOUND: return "no such API key";
    case ENGINE_R_RULE_REJECTED: return "a risk rule rejected this transfer";
    case ENGINE_R_UNDER_REVIEW: return "the transfer is held for review: its review decides it";
    case ENGINE_R_SUSPICIOUS_NOT_FOUND: return "no such suspicious-activity entry";
    case ENGINE_R_ALREADY_REVIEWED: return "this entry was already reviewed";
    default: return "rejected";
  }
}

static const char *cursor_prefix(route_t route) {
  switch (route) {
    case R_ACCOUNTS_LIST: return "a";
    case R_AUDIT: return "e";
    case R_SUSPICIOUS_LIST: return "s";
    case R_TRANSFERS_SEARCH: return "t";
    default: return "h";
  }
}

static void render_page_end(api_req_t *r, uint64_t next) {
  jw_t *w = &r->api->out[r->http->thread_index].w;
  jw_lit(w, "],\"next_cursor\":");
  if (next) {
    char c[40];
    snprintf(c, sizeof c, "%s%llx", cursor_prefix(r->route), (unsigned long long)next);
    jw_str(w, c, strlen(c));
  } else {
    jw_lit(w, "null");
  }
  jw_lit(w, "}");
}

/* ------------------------------------------------------------ risk, settlements, receipts */

static void fail_rule(api_req_t *r) {
  engine_cmd_t *c = &r->cmd;
  count_error(r->api, "rule_rejected");
  jw_t *w = &r->api->out[r->http->thread_index].w;
  jw_reset(w);
  jw_lit(w, "{\"error\":{\"code\":\"rule_rejected\",\"message\":");
  const char *msg = result_message(ENGINE_R_RULE_REJECTED);
  jw_str(w, msg, strlen(msg));
  if (c->reject_rule && c->reject_rule <= ENGINE_RULES_MAX && c->rule_ids[c->reject_rule - 1][0]) {
    jw_lit(w, ",\"rule\":");
    jw_str(w, c->rule_ids[c->reject_rule - 1], strlen(c->rule_ids[c->reject_rule - 1]));
  }
  jw_lit(w, ",\"rules_version\":");
  jw_u64(w, c->rules_version);
  jw_lit(w, "}}");
  finish_json(r, 422, c->replayed ? "Idempotent-Replayed: true\r\n" : NULL);
}

static void render_rules(jw_t *w, const engine_rules_t *rs) {
  jw_lit(w, "{\"version\":");
  jw_u64(w, rs->version);
  jw_key_str(w, "default_region", rs->default_region[0] ? rs->default_region : "default");
  jw_lit(w, ",\"rules\":[");
  for (unsigned i = 0; i < rs->count && i < ENGINE_RULES_MAX; i++) {
    const engine_rule_t *ru = &rs->rules[i];
    if (i) jw_raw(w, ",", 1);
    jw_open(w, '{');
    jw_key_str(w, "id", ru->id);
    jw_key_str(w, "type", engine_rule_type_name(ru->type));
    jw_key_str(w, "action", engine_rule_action_name(ru->action));
    if (ru->currency) jw_key_str(w, "currency", ledger_currency_get(ru->currency)->code);
    if (ru->type == ENGINE_RULE_VELOCITY || ru->type == ENGINE_RULE_NEW_ACCOUNT) {
      jw_key(w, ru->type == ENGINE_RULE_VELOCITY ? "window_ms" : "age_ms");
      jw_u64(w, (uint64_t)ru->window_ms);
    }
    if (ru->count_max) {
      jw_key(w, "count");
      jw_u64(w, ru->count_max);
    }
    if (ru->type != ENGINE_RULE_BLOCKLIST) {
      bool any = false;
      for (unsigned c = 1; c <= ledger_currency_count(); c++) {
        if (ru->threshold_minor[c] == ENGINE_THRESHOLD_NONE) continue;
        if (!any) {
          jw_key(w, ru->type == ENGINE_RULE_VELOCITY ? "amounts" : "thresholds");
          jw_open(w, '{');
          any = true;
        }
        jw_key(w, ledger_currency_get((ledger_currency_id_t)c)->code);
        jw_money(w, ru->threshold_minor[c], exponent_of((uint8_t)c));
      }
      if (any) jw_close(w, '}');
    } else {
      jw_key(w, "accounts");
      jw_open(w, '[');
      for (uint32_t k = 0; k < ru->block_count && ru->block_first + k < ENGINE_BLOCKLIST_MAX; k++) {
        if (k) jw_raw(w, ",", 1);
        jw_u64(w, rs->blocklist[ru->block_first + k]);
      }
      jw_close(w, ']');
    }
    jw_close(w, '}');
  }
  jw_lit(w, "]}");
}

static void render_suspicious(jw_t *w, const engine_suspicious_t *e, bool close) {
  jw_open(w, '{');
  jw_key(w, "id");
  jw_u64(w, e->id);
  jw_key(w, "transfer_id");
  jw_uuid(w, e->transfer_no, e->transfer_created_ms);
  jw_key_str(w, "rule", e->rule_id);
  jw_key(w, "rules_version");
  jw_u64(w, e->rules_version);
  jw_key_str(w, "action", engine_rule_action_name(e->action));
  jw_key_str(w, "status", engine_suspicious_status_name(e->status));
  jw_key(w, "amount");
  jw_money(w, e->amount_minor, exponent_of(e->currency));
  jw_key_str(w, "currency", ledger_currency_get(e->currency)->code);
  jw_key(w, "debit_account_id");
  jw_u64(w, e->debit_account_id);
  jw_key(w, "credit_account_id");
  jw_u64(w, e->credit_account_id);
  jw_key(w, "created_at");
  jw_time(w, e->transfer_created_ms);
  jw_key(w, "reviewed_by");
  if (e->reviewed_ms) jw_principal(w, e->reviewer_id);
  else jw_lit(w, "null");
  jw_key(w, "reviewed_at");
  if (e->reviewed_ms) jw_time(w, e->reviewed_ms);
  else jw_lit(w, "null");
  if (close) jw_close(w, '}');
}

/* A 128-bit count of minor units as a decimal string with `exponent` fraction digits. */
static size_t format_wide(engine_wide_t v, uint8_t exponent, char *buf) {
  __extension__ unsigned __int128 u = v < 0 ? -(unsigned __int128)v : (unsigned __int128)v;
  char rev[64];
  size_t n = 0;
  do {
    rev[n++] = (char)('0' + (int)(u % 10));
    u /= 10;
  } while (u != 0 || n <= exponent);
  size_t k = 0;
  if (v < 0) buf[k++] = '-';
  while (n > 0) {
    buf[k++] = rev[--n];
    if (n == exponent && exponent > 0) buf[k++] = '.';
  }
  buf[k] = '\0';
  return k;
}

static size_t format_day(int32_t day, char *buf) {
  char t[TIME_TEXT_BYTES];
  time_format_ms((int64_t)day * 86400000, t);
  memcpy(buf, t, 10);
  buf[10] = '\0';
  return 10;
}

static int settlement_cmp(const void *a, const void *b, void *ctx) {
  const engine_settlement_t *x = a, *y = b;
  engine_t *engine = ctx;
  if (x->day != y->day) return x->day < y->day ? -1 : 1;
  int c = strcmp(engine_region_name(engine, x->region), engine_region_name(engine, y->region));
  if (c) return c;
  return strcmp(ledger_currency_get(x->currency)->code, ledger_currency_get(y->currency)->code);
}

static void render_settlements(api_req_t *r) {
  engine_cmd_t *c = &r->cmd;
  jw_t *w = &r->api->out[r->http->thread_index].w;
  engine_settlement_t *rows = r->rows;
  qsort_r(rows, c->row_count, sizeof *rows, settlement_cmp, r->api->engine);
  bool csv = r->route == R_SETTLEMENTS_CSV;
  jw_reset(w);
  if (csv) jw_lit(w, "date,region,currency,count,volume,deposits,withdrawals\r\n");
  else jw_lit(w, "{\"data\":[");
  for (uint32_t i = 0; i < c->row_count; i++) {
    const engine_settlement_t *row = &rows[i];
    uint8_t x = exponent_of(row->currency);
    char date[16], vol[64], dep[64], wd[64], count[24];
    format_day(row->day, date);
    format_wide(row->volume, x, vol);
    format_wide(row->deposits, x, dep);
    format_wide(row->withdrawals, x, wd);
    snprintf(count, sizeof count, "%llu", (unsigned long long)row->count);
    const char *region = engine_region_name(r->api->engine, row->region);
    const char *cur = ledger_currency_get(row->currency)->code;
    if (csv) {
      const char *cells[7] = {date, region, cur, count, vol, dep, wd};
      for (int k = 0; k < 7; k++) {
        if (k) jw_raw(w, ",", 1);
        jw_lit(w, cells[k]); /* none needs quoting: digits, '.', '-', a-z and A-Z only */
      }
      jw_lit(w, "\r\n");
    } else {
      if (i) jw_raw(w, ",", 1);
      jw_open(w, '{');
      jw_key_str(w, "date", date);
      jw_key_str(w, "region", region);
      jw_key_str(w, "currency", cur);
      jw_key(w, "count");
      jw_lit(w, count);
      jw_key_str(w, "volume", vol);
      jw_key_str(w, "deposits", dep);
      jw_key_str(w, "withdrawals", wd);
      jw_close(w, '}');
    }
  }
  if (!csv) jw_lit(w, "]}");
}

static void html_text(jw_t *w, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    switch (s[i]) {
      case '&': jw_lit(w, "&amp;"); break;
      case '<': jw_lit(w, "&lt;"); break;
      case '>': jw_lit(w, "&gt;"); break;
      case '"': jw_lit(w, "&quot;"); break;
      case '\'': jw_lit(w, "&#39;"); break;
      default:
        /* Control characters (but tab and newline) print as U+FFFD: never raw in the page. */
        if (((unsigned char)s[i] < 0x20 && s[i] != '\t' && s[i] != '\n') || s[i] == 0x7f) jw_lit(w, "&#xFFFD;");
        else jw_raw(w, &s[i], 1);
    }
  }
}

/* The description, from the transfer's stored extra (NUL-terminated into buf; "" if none). */
static void transfer_description(api_t *api, const engine_transfer_t *t, char *buf, size_t cap) {
  buf[0] = '\0';
  if (t->extra_len < 2) return;
  char *raw = malloc(t->extra_len);
  if (raw && engine_read_extra(api->engine, t->extra_pos, t->extra_len, raw) == 0) {
    cJSON *o = cJSON_ParseWithLength(raw, t->extra_len);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "description");
    if (cJSON_IsString(d)) snprintf(buf, cap, "%s", d->valuestring);
    cJSON_Delete(o);
    json_arena_end();
  }
  free(raw);
}

/* GET /v1/transfers/{id}/receipt: a printable HTML page, every field escaped. */
static void render_receipt(api_req_t *r) {
  const engine_transfer_t *t = &r->cmd.transfer;
  jw_t *w = &r->api->out[r->http->thread_index].w;
  char id[UUID_TEXT_BYTES], amount[MONEY_TEXT_BYTES_MAX + 1], created[TIME_TEXT_BYTES + 1], dr[24], cr[24], seq[24];
  ledger_uuid_t u = uuid_from_transfer(t->created_ms, t->no);
  uuid_format(&u, id);
  size_t an = money_format(t->amount_minor, exponent_of(t->currency), amount);
  amount[an] = '\0';
  size_t tn = time_format_ms(t->created_ms, created);
  created[tn] = '\0';
  snprintf(dr, sizeof dr, "%llu", (unsigned long long)t->debit_account_id);
  snprintf(cr, sizeof cr, "%llu", (unsigned long long)t->credit_account_id);
  snprintf(seq, sizeof seq, "%llu", (unsigned long long)t->seq);
  char desc[API_DESCRIPTION_BYTES_MAX + 1];
  transfer_description(r->api, t, desc, sizeof desc);
  const char *cur = ledger_currency_get(t->currency)->code;
  const char *labels[] = {"Transfer id", "Amount", "Currency", "Status", "Kind", "From account",
                          "To account", "Created", "Ledger sequence", "Description"};
  const char *values[] = {id, amount, cur, engine_status_name(t->status), engine_kind_name(t->kind), dr, cr,
                          created, seq, desc};
  /* The digest covers the fields as printed, one per line. */
  crypto_hash_sha256_state hs;
  crypto_hash_sha256_init(&hs);
  for (size_t i = 0; i < LEDGER_ARRAY_LEN(values); i++) {
    crypto_hash_sha256_update(&hs, (const unsigned char *)values[i], strlen(values[i]));
    crypto_hash_sha256_update(&hs, (const unsigned char *)"\n", 1);
  }
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&hs, digest);
  char hex[crypto_hash_sha256_BYTES * 2 + 1];
  sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
  jw_reset(w);
  jw_lit(w, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Receipt ");
  html_text(w, id, strlen(id));
  jw_lit(w, "</title><style>body{font-family:sans-serif;max-width:42em;margin:2em auto;color:#111}"
            "table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4em;border-bottom:1px solid #ccc}"
            ".digest{font-family:monospace;word-break:break-all}</style></head><body>\n<h1>Transfer receipt</h1>\n<table>\n");
  for (size_t i = 0; i < LEDGER_ARRAY_LEN(values); i++) {
    jw_lit(w, "<tr><th>");
    jw_lit(w, labels[i]);
    jw_lit(w, "</th><td>");
    html_text(w, values[i], strlen(values[i]));
    jw_lit(w, "</td></tr>\n");
  }
  jw_lit(w, "</table>\n<p>Digest (SHA-256 of the fields above): <span class=\"digest\">");
  jw_lit(w, hex);
  jw_lit(w, "</span></p>\n<p>ledgerd has no audit hash chain yet: the digest identifies this receipt's content; "
            "it is not a proof against the ledger.</p>\n</body></html>\n");
  if (w->overflow) {
    fail(r, 500, "internal", "response too large");
    return;
  }
  finish_typed(r, 200, "text/html; charset=utf-8",
               "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\nX-Content-Type-Options: nosniff\r\n",
               w->buf, w->len);
}

/* A page of a list route: {"data":[rows...],"next_cursor":...}, one renderer per row. */
typedef void (*row_fn)(api_t *api, jw_t *w, const void *row);
static void row_account(api_t *api, jw_t *w, const void *row) { render_account(api, w, row); }
static void row_audit(api_t *api, jw_t *w, const void *row) { (void)api; render_audit(w, row); }
static void row_transfer(api_t *api, jw_t *w, const void *row) { render_transfer(api, w, row, true, NULL); }
static void row_suspicious(api_t *api, jw_t *w, const void *row) { (void)api; render_suspicious(w, row, true); }
static void row_history(api_t *api, jw_t *w, const void *row) {
  const engine_history_row_t *h = row;
  jw_lit(w, "{\"transfer\":");
  render_transfer(api, w, &h->transfer, false, NULL);
  jw_lit(w, ",\"balance_after\":");
  jw_money(w, h->balance_after_minor, exponent_of(h->transfer.currency));
  jw_lit(w, "}");
}

static void render_page(api_req_t *r, const void *rows, size_t row_size, row_fn fn) {
  jw_t *w = &r->api->out[r->http->thread_index].w;
  jw_lit(w, "{\"data\":[");
  for (uint32_t i = 0; i < r->cmd.row_count; i++) {
    if (i) jw_raw(w, ",", 1);
    fn(r->api, w, (const char *)rows + (size_t)i * row_size);
  }
  render_page_end(r, r->cmd.next_cursor);
}

static void complete_ok(api_req_t *r) {
  api_t *api = r->api;
  jw_t *w = &r->api->out[r->http->thread_index].w;
  engine_cmd_t *c = &r->cmd;
  jw_reset(w);
  int status = 200;
  switch (r->route) {
    case R_ACCOUNTS_CREATE: status = 201; /* fall through */
    case R_ACCOUNT_GET:
    case R_ACCOUNT_FREEZE:
    case R_ACCOUNT_UNFREEZE: render_account(api, w, &c->account); break;
    case R_TRANSFERS_CREATE:
    case R_DEPOSITS:
    case R_WITHDRAWALS: status = 201; /* fall through */
    case R_TRANSFER_GET:
    case R_TRANSFER_POST:
    case R_TRANSFER_VOID: render_transfer(api, w, &c->transfer, true, &c->suspicious); break;
    case R_TRANSFERS_BATCH: {
      jw_lit(w, "{\"results\":[");
      for (uint32_t i = 0; i < c->u.batch.item_count; i++) {
        const engine_item_result_t *it = &c->u.batch.results[i];
        if (it->result == ENGINE_OK) {
          batch_item_ok(w, i, it);
          continue;
        }
        if (i) jw_raw(w, ",", 1);
        jw_lit(w, "{\"index\":");
        jw_u64(w, i);
        jw_lit(w, ",\"status\":\"error\",\"error\":{\"code\":\"");
        jw_lit(w, engine_result_code(it->result));
        jw_lit(w, "\"");
        if (it->rule && it->rule <= ENGINE_RULES_MAX && c->rule_ids[it->rule - 1][0]) {
          jw_lit(w, ",\"rule\":");
          jw_str(w, c->rule_ids[it->rule - 1], strlen(c->rule_ids[it->rule - 1]));
        }
        jw_lit(w, "}}");
      }
      jw_lit(w, "]}");
      break;
    }
    case R_ACCOUNTS_LIST: render_page(r, r->rows, sizeof(engine_account_t), row_account); break;
    case R_ACCOUNT_HISTORY: render_page(r, r->rows, sizeof(engine_history_row_t), row_history); break;
    case R_USERS_CREATE: status = 201; /* fall through */
    case R_USER_ROLE: render_user(w, &c->user); break;
    case R_ME:
      if (c->principal_id != 0 && (c->principal_id & ENGINE_PRINCIPAL_KEY_BIT)) render_key(w, &c->api_key, NULL);
      else if (c->principal_id == 0) jw_lit(w, "{\"id\":0,\"username\":\"operator\",\"role\":\"admin\",\"kind\":\"operator\"}");
      else render_user(w, &c->user);
      break;
    case R_SESSIONS_CREATE: {
      int64_t expires = c->u.auth.expires_ms;
      jw_lit(w, "{\"token\":");
      jw_str(w, r->token, strlen(r->token));
      jw_lit(w, ",\"expires_at\":");
      jw_time(w, expires);
      jw_lit(w, ",\"user_id\":");
      jw_u64(w, c->user.id);
      jw_lit(w, "}");
      status = 201;
      break;
    }
    case R_API_KEYS_CREATE: render_key(w, &c->api_key, r->token); status = 201; break;
    case R_SESSION_DELETE:
    case R_API_KEY_DELETE: finish(r, 204, NULL, "", 0); return;
    case R_AUDIT: render_page(r, r->audit_rows, sizeof(engine_audit_event_t), row_audit); break;
    case R_TRANSFERS_SEARCH: render_page(r, r->rows, sizeof(engine_transfer_t), row_transfer); break;
    case R_TRANSFER_RECEIPT: render_receipt(r); return;
    case R_RULES_GET: render_rules(w, r->rules); break;
    case R_RULES_RELOAD:
      jw_lit(w, "{\"version\":");
      jw_u64(w, c->rules_version);
      jw_lit(w, c->rules_changed ? ",\"changed\":true}" : ",\"changed\":false}");
      break;
    case R_SUSPICIOUS_LIST: render_page(r, r->rows, sizeof(engine_suspicious_t), row_suspicious); break;
    case R_SUSPICIOUS_REVIEW:
      render_suspicious(w, &c->suspicious, false);
      jw_key(w, "transfer");
      render_transfer(api, w, &c->transfer, false, &c->suspicious);
      jw_close(w, '}');
      break;
    case R_SETTLEMENTS:
    case R_SETTLEMENTS_CSV:
      if (c->u.settlements.truncated) {
        fail(r, 422, "result_too_large", "more settlement rows than one answer holds: narrow the range or filter");
        return;
      }
      render_settlements(r);
      if (r->route == R_SETTLEMENTS_CSV) {
        finish_typed(r, 200, "text/csv; charset=utf-8",
                     "Content-Disposition: attachment; filename=\"settlements.csv\"\r\n", w->buf, w->len);
        return;
      }
      break;
    case R_METRICS: LEDGER_ASSERT(!"metrics are answered by their resume step"); break;
    default: LEDGER_ASSERT(!"route without an engine command");
  }
  finish_json(r, status, c->replayed ? "Idempotent-Replayed: true\r\n" : NULL);
}

static void complete(api_req_t *r) {
  engine_cmd_t *c = &r->cmd;
  if (c->result < 0) {
    fail(r, 503, "not_ready", "the ledger stopped; the outcome is unknown: retry with the same Idempotency-Key");
  } else if (c->result == ENGINE_OK || (r->route == R_TRANSFERS_BATCH && c->result == ENGINE_R_BATCH_ABORTED)) {
    complete_ok(r); /* a batch always answers 200 with per-item results */
  } else if (c->result == ENGINE_R_RULE_REJECTED) {
    fail_rule(r);
  } else {
    const char *code = engine_result_code(c->result);
    if (c->replayed) {
      /* The original rejection, answered the same way, marked as a replay. */
      count_error(r->api, code);
      jw_t *w = &r->api->out[r->http->thread_index].w;
      jw_reset(w);
      jw_lit(w, "{\"error\":{\"code\":");
      jw_str(w, code, strlen(code));
      jw_lit(w, ",\"message\":");
      jw_str(w, result_message(c->result), strlen(result_message(c->result)));
      jw_lit(w, "}}");
      finish_json(r, result_status(c->result), "Idempotent-Replayed: true\r\n");
    } else {
      fail(r, result_status(c->result), code, result_message(c->result));
    }
  }
}

/* Net thread: the loop's wakeup. Takes everything completed for this thread. */
static void api_wakeup(void *arg) {
  completion_stack_t *s = arg;
  api_req_t *list = atomic_exchange_explicit(&s->head, NULL, memory_order_acquire);
  api_req_t *fifo = NULL; /* reverse: answer in completion order */
  while (list) {
    api_req_t *n = list->next;
    list->next = fifo;
    fifo = list;
    list = n;
  }
  while (fifo) {
    api_req_t *n = fifo->next;
    api_t *api = fifo->api;
    void (*step)(api_req_t *) = fifo->resume;
    fifo->resume = NULL;
    atomic_fetch_sub_explicit(&api->in_flight, 1, memory_order_relaxed);
    if (step) step(fifo); /* a further stage: it answers or hands the request on again */
    else if (fifo->then) fifo->then(fifo); /* a compat route renders its own answer */
    else complete(fifo);
    fifo = n;
  }
}

void api_thread_start(http_loop_t *loop, unsigned thread_index, void *ctx) {
  api_t *api = ctx;
  LEDGER_ASSERT(thread_index < HTTP_THREADS_MAX);
  api->loops[thread_index] = loop;
  http_loop_set_wakeup(loop, api_wakeup, &api->done[thread_index]);
}

/* ------------------------------------------------------------ request side */

static bool idempotency(api_req_t *r, api_error_t *e) {
  const char *key = r->http->idempotency_key;
  if (!key) return true;
  size_t n = strlen(key);
  if (n == 0 || n > API_IDEMPOTENCY_KEY_BYTES_MAX) {
    api_err(e, 400, "invalid_idempotency_key", "Idempotency-Key must be 1-%u printable ASCII characters",
            API_IDEMPOTENCY_KEY_BYTES_MAX);
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    if (key[i] < 0x21 || key[i] > 0x7e) {
      api_err(e, 400, "invalid_idempotency_key", "Idempotency-Key must be printable ASCII without spaces");
      return false;
    }
  }
  /* Scoped to the route here and to the principal by the engine (which alone knows who a
   * bearer is); the body hash covers the full path and the body. */
  char scope[64];
  int sn = snprintf(scope, sizeof scope, "route|%d|", (int)r->route);
  ledger_hash128_t s = ledger_hash128(scope, (size_t)sn, 0);
  ledger_hash128_t k = ledger_hash128(key, n, s.lo ^ s.hi);
  if ((k.lo | k.hi) == 0) k.lo = 1; /* {0,0} marks an empty slot */
  ledger_hash128_t p = ledger_hash128(r->http->path, r->http->path_len, 7);
  r->cmd.has_idempotency = true;
  r->cmd.idempotency_key = k;
  r->cmd.body_hash = ledger_hash128(r->http->body, r->http->body_len, p.lo ^ p.hi);
  return true;
}

/* The largest body a route takes: checked on the declared length before the body is read
 * (api_body_fits) and on the body itself, which a chunked request declares no length for. */
static size_t route_body_max(route_t route) {
  return route == R_TRANSFERS_BATCH ? LEDGER_BODY_BYTES_MAX : API_BODY_BYTES_MAX;
}

static cJSON *parse_body(api_req_t *r, api_error_t *e) {
  const http_request_t *h = r->http;
  size_t max = route_body_max(r->route);
  if (h->body_len > max) {
    api_err(e, 413, "payload_too_large", "the body is larger than %zu bytes", max);
    return NULL;
  }
  /* Content-Type is not checked: the body must be JSON whatever it says (curl -d sends a
   * form type by default; refusing that helps nobody). */
  json_arena_begin(); /* ended in build(), after the tree is deleted */
  return json_parse_body(h->body, h->body_len, e);
}

static bool build_transfer(api_req_t *r, const cJSON *body, unsigned kind, api_error_t *e) {
  r->cmd.kind = ENGINE_CMD_TRANSFER;
  return api_transfer_from_json(body, kind, &r->cmd.u.transfer, r->extra, e);
}

/* A batch body: the fast path when it has the common shape, else through its cJSON tree. */
static void batch_into_cmd(api_req_t *r, api_batch_t *b) {
  r->items = b->items;
  r->results = b->results;
  r->batch_extra = b->extra;
  r->cmd.kind = ENGINE_CMD_TRANSFER_BATCH;
  r->cmd.u.batch.items = r->items;
  r->cmd.u.batch.results = r->results;
  r->cmd.u.batch.item_count = b->count;
  r->cmd.u.batch.atomic = b->atomic;
}

static bool build_batch(api_req_t *r, const cJSON *body, api_error_t *e) {
  api_batch_t b;
  if (!api_batch_parse_json(body, r->http->body_len, &b, e)) return false;
  batch_into_cmd(r, &b);
  return true;
}

/* The common shape of a batch body, without a cJSON tree (api_batch.c); false: use cJSON. */
static bool build_transfer_fast(api_req_t *r) {
  r->cmd.kind = ENGINE_CMD_TRANSFER;
  return api_transfer_parse_fast(r->http->body, r->http->body_len, &r->cmd.u.transfer, r->extra);
}

static bool build_batch_fast(api_req_t *r) {
  api_batch_t b;
  if (!api_batch_parse_fast(r->http->body, r->http->body_len, &b)) return false;
  batch_into_cmd(r, &b);
  return true;
}

static bool valid_region(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > API_REGION_BYTES_MAX) return false;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-')) return false;
  return true;
}

static bool build_account_create(api_req_t *r, const cJSON *body, api_error_t *e) {
  static const char *const fields[] = {"currency", "region", "owner_id", "allow_overdraft", "metadata", NULL};
  if (!json_check_fields(body, fields, e)) return false;
  uint8_t currency;
  uint64_t owner = 0;
  bool overdraft = false;
  if (!json_get_currency(body, "currency", true, &currency, e) || !json_get_id(body, "owner_id", false, &owner, e) ||
      !json_get_bool(body, "allow_overdraft", &overdraft, e))
    return false;
  const cJSON *region = cJSON_GetObjectItemCaseSensitive(body, "region");
  if (region) {
    if (!cJSON_IsString(region) || !valid_region(region->valuestring)) {
      api_err(e, 400, "invalid_request", "'region' must be 1-%u characters of a-z, 0-9 and '-'", API_REGION_BYTES_MAX);
      return false;
    }
    strcpy(r->region, region->valuestring);
  } else {
    r->region[0] = '\0'; /* the engine's default region (docs/rules.md: default_region) */
  }
  if (!json_get_extra(body, r->extra, &r->cmd.u.account_create.extra_len, e)) return false;
  r->cmd.kind = ENGINE_CMD_ACCOUNT_CREATE;
  r->cmd.u.account_create.currency = currency;
  r->cmd.u.account_create.owner_id = owner;
  r->cmd.u.account_create.allow_overdraft = overdraft;
  r->cmd.u.account_create.region = r->region;
  r->cmd.u.account_create.extra = r->extra;
  return true;
}

/* ------------------------------------------------------------ paths and queries */

/* Splits "/v1/accounts/12/transfers" into segments; returns the count (bounded). */
#define PATH_SEGMENTS_MAX 6
typedef struct seg {
  const char *p;
  size_t n;
} seg_t;

static size_t split_path(const char *path, size_t len, seg_t *segs) {
  size_t count = 0, i = 0;
  if (len == 0 || path[0] != '/') return 0;
  while (i < len) {
    i++; /* skip '/' */
    size_t start = i;
    while (i < len && path[i] != '/') i++;
    if (count == PATH_SEGMENTS_MAX) return PATH_SEGMENTS_MAX + 1;
    segs[count++] = (seg_t){path + start, i - start};
  }
  if (count > 0 && segs[count - 1].n == 0) count--; /* trailing slash */
  return count;
}

static bool seg_is(seg_t s, const char *lit) { return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0; }

/* A positive id in a path: 1..2^53-1, digits only. */
static bool parse_u53(seg_t s, uint64_t *out) {
  if (s.n == 0 || s.n > 16) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < s.n; i++) {
    if (s.p[i] < '0' || s.p[i] > '9') return false;
    v = v * 10 + (uint64_t)(s.p[i] - '0');
  }
  *out = v;
  return v >= 1 && v < (1ull << 53);
}

/* An account id in a path: digits (1..2^53-1) or the alias cash:<CUR>. */
static bool parse_account_ref(seg_t s, uint64_t *id) {
  if (s.n == 8 && memcmp(s.p, "cash:", 5) == 0) {
    ledger_currency_id_t c = ledger_currency_find(s.p + 5, 3);
    *id = c; /* system accounts have id == currency id (docs/api.md) */
    return c != 0;
  }
  return parse_u53(s, id);
}

/* -1: not a UUID; 0: a UUID this ledger never issued; 1: ok. */
static int parse_transfer_ref(seg_t s, uint64_t *no, int64_t *created_ms) {
  ledger_uuid_t u;
  if (uuid_parse(s.p, s.n, &u) != 0) return -1;
  return uuid_to_transfer(&u, created_ms, no) ? 1 : 0;
}

static route_t route_of(const http_request_t *h, seg_t *segs, size_t *nseg) {
  size_t n = split_path(h->path, h->path_len, segs);
  *nseg = n;
  bool get = h->method == HTTP_METHOD_GET || h->method == HTTP_METHOD_HEAD;
  bool post = h->method == HTTP_METHOD_POST;
  bool del = h->method == HTTP_METHOD_DELETE;
#define PICK(g, p) (get && (g) != R_NOT_FOUND ? (g) : post && (p) != R_NOT_FOUND ? (p) : R_METHOD_NOT_ALLOWED)
#define PICK_DEL(d) (del ? (d) : R_METHOD_NOT_ALLOWED)
  if (n == 1 && seg_is(segs[0], "healthz")) return PICK(R_HEALTHZ, R_NOT_FOUND);
  if (n == 1 && seg_is(segs[0], "readyz")) return PICK(R_READYZ, R_NOT_FOUND);
  if (n == 1 && seg_is(segs[0], "metrics")) return PICK(R_METRICS, R_NOT_FOUND);
  if (n < 2 || !seg_is(segs[0], "v1")) return R_NOT_FOUND;
  if (seg_is(segs[1], "accounts")) {
    if (n == 2) return PICK(R_ACCOUNTS_LIST, R_ACCOUNTS_CREATE);
    if (n == 3) return PICK(R_ACCOUNT_GET, R_NOT_FOUND);
    if (n == 4 && seg_is(segs[3], "freeze")) return PICK(R_NOT_FOUND, R_ACCOUNT_FREEZE);
    if (n == 4 && seg_is(segs[3], "unfreeze")) return PICK(R_NOT_FOUND, R_ACCOUNT_UNFREEZE);
    if (n == 4 && seg_is(segs[3], "transfers")) return PICK(R_ACCOUNT_HISTORY, R_NOT_FOUND);
    return R_NOT_FOUND;
  }
  if (seg_is(segs[1], "transfers")) {
    if (n == 2) return PICK(R_TRANSFERS_SEARCH, R_TRANSFERS_CREATE);
    if (n == 3 && seg_is(segs[2], "batch")) return PICK(R_NOT_FOUND, R_TRANSFERS_BATCH);
    if (n == 3) return PICK(R_TRANSFER_GET, R_NOT_FOUND);
    if (n == 4 && seg_is(segs[3], "post")) return PICK(R_NOT_FOUND, R_TRANSFER_POST);
    if (n == 4 && seg_is(segs[3], "void")) return PICK(R_NOT_FOUND, R_TRANSFER_VOID);
    if (n == 4 && seg_is(segs[3], "receipt")) return PICK(R_TRANSFER_RECEIPT, R_NOT_FOUND);
    return R_NOT_FOUND;
  }
  if (n == 2 && seg_is(segs[1], "rules")) return PICK(R_RULES_GET, R_NOT_FOUND);
  if (n == 3 && seg_is(segs[1], "rules") && seg_is(segs[2], "reload")) return PICK(R_NOT_FOUND, R_RULES_RELOAD);
  if (n == 2 && seg_is(segs[1], "suspicious")) return PICK(R_SUSPICIOUS_LIST, R_NOT_FOUND);
  if (n == 4 && seg_is(segs[1], "suspicious") && seg_is(segs[3], "review")) return PICK(R_NOT_FOUND, R_SUSPICIOUS_REVIEW);
  if (n == 2 && seg_is(segs[1], "settlements")) return PICK(R_SETTLEMENTS, R_NOT_FOUND);
  if (n == 3 && seg_is(segs[1], "reports") && seg_is(segs[2], "settlements.csv")) return PICK(R_SETTLEMENTS_CSV, R_NOT_FOUND);
  if (n == 2 && seg_is(segs[1], "users")) return PICK(R_NOT_FOUND, R_USERS_CREATE);
  if (n == 4 && seg_is(segs[1], "users") && seg_is(segs[3], "role")) return PICK(R_NOT_FOUND, R_USER_ROLE);
  if (n == 2 && seg_is(segs[1], "sessions")) return PICK(R_NOT_FOUND, R_SESSIONS_CREATE);
  if (n == 3 && seg_is(segs[1], "sessions") && seg_is(segs[2], "current")) return PICK_DEL(R_SESSION_DELETE);
  if (n == 2 && seg_is(segs[1], "me")) return PICK(R_ME, R_NOT_FOUND);
  if (n == 2 && seg_is(segs[1], "api-keys")) return PICK(R_NOT_FOUND, R_API_KEYS_CREATE);
  if (n == 3 && seg_is(segs[1], "api-keys")) return PICK_DEL(R_API_KEY_DELETE);
  if (n == 2 && seg_is(segs[1], "audit")) return PICK(R_AUDIT, R_NOT_FOUND);
  if (n == 2 && seg_is(segs[1], "deposits")) return PICK(R_NOT_FOUND, R_DEPOSITS);
  if (n == 2 && seg_is(segs[1], "withdrawals")) return PICK(R_NOT_FOUND, R_WITHDRAWALS);
#undef PICK
#undef PICK_DEL
  return R_NOT_FOUND;
}

/* limit, cursor and order shared by the list routes. */
static bool page_params(const http_request_t *h, route_t route, uint32_t *limit, uint64_t *cursor, bool *asc,
                        api_error_t *e) {
  char v[64];
  bool too_long;
  *limit = API_PAGE_LIMIT_DEFAULT;
  *cursor = 0;
  *asc = false;
  if (query_get(h->query, h->query_len, "limit", v, sizeof v, &too_long)) {
    char *end;
    unsigned long n = strtoul(v, &end, 10);
    if (too_long || *end || v[0] < '0' || v[0] > '9' || n < 1 || n > API_PAGE_LIMIT_MAX) {
      api_err(e, 400, "invalid_parameter", "'limit' must be 1 to %u", API_PAGE_LIMIT_MAX);
      return false;
    }
    *limit = (uint32_t)n;
  }
  if (query_get(h->query, h->query_len, "order", v, sizeof v, &too_long)) {
    if (too_long || (strcmp(v, "asc") != 0 && strcmp(v, "desc") != 0)) {
      api_err(e, 400, "invalid_parameter", "'order' must be asc or desc");
      return false;
    }
    *asc = strcmp(v, "asc") == 0;
  }
  if (query_get(h->query, h->query_len, "cursor", v, sizeof v, &too_long)) {
    const char *prefix = cursor_prefix(route);
    char *end;
    if (too_long || v[0] != prefix[0] || v[1] == '\0' || strlen(v) > 17) {
      api_err(e, 400, "invalid_cursor", "the cursor is not one this server gave out");
      return false;
    }
    *cursor = strtoull(v + 1, &end, 16);
    if (*end || *cursor == 0) {
      api_err(e, 400, "invalid_cursor", "the cursor is not one this server gave out");
      return false;
    }
  }
  return true;
}

static bool time_param(const http_request_t *h, const char *name, int64_t *out, api_error_t *e) {
  char v[64];
  bool too_long;
  if (!query_get(h->query, h->query_len, name, v, sizeof v, &too_long)) return true;
  if (too_long || time_parse_ms(v, strlen(v), out) != 0) {
    api_err(e, 400, "invalid_parameter", "'%s' must be an RFC 3339 time or a date (YYYY-MM-DD)", name);
    return false;
  }
  return true;
}

static bool alloc_rows(api_req_t *r, uint32_t n, size_t size, api_error_t *e) {
  r->rows = calloc(n, size);
  if (!r->rows) api_err(e, 503, "overloaded", "out of memory");
  return r->rows != NULL;
}

/* ?currency=: 1 and *out set, 0 absent, -1 bad (e set). */
static int currency_param(const http_request_t *h, uint8_t *out, api_error_t *e) {
  char v[64];
  bool too_long;
  if (!query_get(h->query, h->query_len, "currency", v, sizeof v, &too_long)) return 0;
  *out = too_long ? 0 : ledger_currency_find(v, strlen(v));
  if (*out) return 1;
  api_err(e, 400, "invalid_currency", "'currency' must be a supported ISO 4217 code");
  return -1;
}

/* ?region=: 1 with r->region set, 0 absent, -1 bad (e set). */
static int region_param(api_req_t *r, api_error_t *e) {
  const http_request_t *h = r->http;
  bool too_long;
  if (!query_get(h->query, h->query_len, "region", r->region, sizeof r->region, &too_long)) return 0;
  if (!too_long && valid_region(r->region)) return 1;
  api_err(e, 400, "invalid_parameter", "'region' must be 1-%u characters of a-z, 0-9 and '-'", API_REGION_BYTES_MAX);
  return -1;
}

static bool build_list(api_req_t *r, api_error_t *e) {
  const http_request_t *h = r->http;
  engine_cmd_t *c = &r->cmd;
  c->kind = ENGINE_CMD_ACCOUNT_LIST;
  if (!page_params(h, r->route, &c->u.list.limit, &c->u.list.cursor_id, &c->u.list.ascending, e)) return false;
  char v[64];
  bool too_long;
  if (query_get(h->query, h->query_len, "owner_id", v, sizeof v, &too_long)) {
    char *end;
    c->u.list.owner_id = strtoull(v, &end, 10);
    c->u.list.has_owner = true;
    if (too_long || *end || v[0] < '0' || v[0] > '9' || strlen(v) > 16) {
      api_err(e, 400, "invalid_parameter", "'owner_id' must be an integer (0: the system accounts)");
      return false;
    }
  }
  int has_region;
  if (currency_param(h, &c->u.list.currency, e) < 0 || (has_region = region_param(r, e)) < 0) return false;
  if (has_region) {
    c->u.list.region_name = r->region;
    c->u.list.region = engine_region_find(r->api->engine, r->region); /* 0: matches nothing */
    if (c->u.list.region == 0) c->u.list.region = UINT16_MAX;
  }
  if (!alloc_rows(r, c->u.list.limit, sizeof(engine_account_t), e)) return false;
  c->u.list.rows = r->rows;
  return true;
}

static bool build_history(api_req_t *r, uint64_t account_id, api_error_t *e) {
  engine_cmd_t *c = &r->cmd;
  c->kind = ENGINE_CMD_HISTORY;
  c->u.history.account_id = account_id;
  c->u.history.from_ms = INT64_MIN;
  c->u.history.to_ms = INT64_MAX;
  if (!page_params(r->http, r->route, &c->u.history.limit, &c->u.history.cursor_no, &c->u.history.ascending, e) ||
      !time_param(r->http, "from", &c->u.history.from_ms, e) || !time_param(r->http, "to", &c->u.history.to_ms, e))
    return false;
  if (!alloc_rows(r, c->u.history.limit, sizeof(engine_history_row_t), e)) return false;
  c->u.history.rows = r->rows;
  return true;
}

/* ------------------------------------------------------------ search, risk, settlements */

static bool amount_param(const http_request_t *h, const char *name, bool *has, int64_t *digits, uint8_t *scale,
                         api_error_t *e) {
  char v[64];
  bool too_long;
  if (!query_get(h->query, h->query_len, name, v, sizeof v, &too_long)) return true;
  if (too_long || money_parse_decimal(v, strlen(v), digits, scale) != 0) {
    api_err(e, 400, "invalid_amount", "'%s' must be a decimal amount such as 100.00", name);
    return false;
  }
  *has = true;
  return true;
}

/* One of `names` (index returned), or -1 when absent; -2 on a bad value (error set). */
static int enum_param(const http_request_t *h, const char *name, const char *const *names, api_error_t *e) {
  char v[32];
  bool too_long;
  if (!query_get(h->query, h->query_len, name, v, sizeof v, &too_long)) return -1;
  for (int i = 0; names[i] && !too_long; i++)
    if (strcmp(v, names[i]) == 0) return i;
  api_err(e, 400, "invalid_parameter", "'%s' has an unknown value", name);
  return -2;
}

/* ---- a text search (q) in steps: the engine walks and collects candidates (it reads no
 * description: 20,000 reads held every write for ~34 ms, docs/performance.md), in rounds that
 * start small and double; the search pool's thread reads their texts and keeps the page's
 * matches (search_texts_job); the engine fetches those rows (ENGINE_CMD_TRANSFER_ROWS). ---- */

static void pool_submit(api_req_t *r, auth_pool_t *pool, void (*next)(api_req_t *), const char *busy_message);

static int search_read_text(void *ctx, uint64_t pos, uint32_t len, char *buf) {
  return engine_read_extra(ctx, pos, len, buf);
}

static void search_texts_job(auth_job_t *job) { /* pool thread */
  api_req_t *r = job->arg;
  uint32_t want = r->cmd.u.search.limit - r->match_count;
  r->match_count += engine_search_texts(r->cands, r->cand_count, r->cmd.u.search.filter.q, want, r->walk_cursor,
                                        search_read_text, r->api->engine, r->match_nos + r->match_count,
                                        &r->match_cursor);
}

static void search_after_walk(api_req_t *r);

/* Candidates for the next round: the first is small (a common word fills a page from a few
 * dozen), each next one twice the last, within the request's budget. */
static uint32_t search_round_cands(const api_req_t *r, uint32_t last) {
  uint32_t left = ENGINE_SEARCH_TEXT_CANDIDATES_MAX - r->cands_used;
  uint32_t n = last ? 2 * last : 2 * (r->cmd.u.search.limit + 1);
  if (n < 64) n = 64;
  return n < left ? n : left;
}

/* After a round's texts: another round (the page is not full, the walk stopped only because
 * its candidates filled their room, and the request's budgets allow), or the page. */
static void search_after_texts(api_req_t *r) {
  engine_cmd_t *c = &r->cmd;
  /* (a full page is the only way match_cursor leaves walk_cursor: engine_search_texts) */
  bool page_full = r->match_count == c->u.search.limit;
  if (!page_full && r->walk_full && r->cands_used < ENGINE_SEARCH_TEXT_CANDIDATES_MAX &&
      r->steps_used < ENGINE_SCAN_STEPS_MAX) {
    c->kind = ENGINE_CMD_TRANSFER_SEARCH;
    c->u.search.cursor_no = r->walk_cursor; /* != 0: a full walk stopped on a transfer */
    c->u.search.cands_max = search_round_cands(r, c->u.search.cands_max);
    c->u.search.steps_max = ENGINE_SCAN_STEPS_MAX - r->steps_used;
    r->resume = search_after_walk;
    submit(r);
    return;
  }
  if (r->match_count == 0) { /* an empty page (maybe with a cursor): nothing to fetch */
    c->row_count = 0;
    c->next_cursor = r->match_cursor;
    complete(r);
    return;
  }
  int16_t status = c->u.search.filter.status;
  c->kind = ENGINE_CMD_TRANSFER_ROWS;
  c->u.transfer_rows.nos = r->match_nos;
  c->u.transfer_rows.n = r->match_count;
  c->u.transfer_rows.rows = r->rows;
  c->u.transfer_rows.next_cursor = r->match_cursor;
  c->u.transfer_rows.status = status;
  r->resume = NULL; /* answered as the search it is (complete_ok, R_TRANSFERS_SEARCH) */
  submit(r);
}

static void search_after_walk(api_req_t *r) {
  engine_cmd_t *c = &r->cmd;
  if (c->result != ENGINE_OK) {
    complete(r);
    return;
  }
  r->cand_count = c->row_count;
  r->walk_cursor = c->next_cursor;
  r->cands_used += c->row_count;
  r->steps_used += c->u.search.steps;
  /* Full: it stopped on a transfer that did not fit. A walk that filled its room and then
   * met its end has next_cursor 0, and a round from 0 would start over from the top. */
  r->walk_full = c->row_count == c->u.search.cands_max && c->next_cursor != 0;
  if (c->row_count == 0) { /* nothing to read: the walk's end or its step bound */
    r->match_cursor = r->walk_cursor;
    search_after_texts(r);
    return;
  }
  if (!r->job) {
    r->job = calloc(1, sizeof *r->job);
    if (!r->job) {
      fail(r, 503, "overloaded", "out of memory");
      return;
    }
  }
  r->job->op = AUTH_JOB_CALL;
  r->job->call = search_texts_job;
  r->job->done = job_done;
  r->job->arg = r;
  pool_submit(r, r->api->search_pool, search_after_texts, "too many searches in progress; retry shortly");
}

static bool search_text_start(api_req_t *r, api_error_t *e) {
  if (atomic_fetch_add_explicit(&r->api->text_searches, 1, memory_order_relaxed) >= API_TEXT_SEARCHES_MAX) {
    atomic_fetch_sub_explicit(&r->api->text_searches, 1, memory_order_relaxed);
    api_err(e, 503, "overloaded", "too many text searches in progress; retry shortly");
    return false;
  }
  r->text_search = true;
  r->cands = malloc((size_t)ENGINE_SEARCH_TEXT_CANDIDATES_MAX * sizeof *r->cands + API_PAGE_LIMIT_MAX * sizeof *r->match_nos);
  if (!r->cands) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  r->match_nos = (uint64_t *)(void *)(r->cands + ENGINE_SEARCH_TEXT_CANDIDATES_MAX);
  r->cmd.u.search.cands = r->cands;
  r->cmd.u.search.cands_max = search_round_cands(r, 0);
  r->resume = search_after_walk;
  return true;
}

static bool build_search(api_req_t *r, api_error_t *e) {
  const http_request_t *h = r->http;
  engine_cmd_t *c = &r->cmd;
  engine_search_t *f = &c->u.search.filter;
  c->kind = ENGINE_CMD_TRANSFER_SEARCH;
  f->from_ms = INT64_MIN;
  f->to_ms = INT64_MAX;
  static const char *const kinds[] = {"transfer", "deposit", "withdrawal", NULL};
  static const char *const statuses[] = {"posted", "pending", "voided", NULL};
  static const char *const bools[] = {"false", "true", NULL};
  int kind = enum_param(h, "kind", kinds, e), status = enum_param(h, "status", statuses, e),
      flagged = enum_param(h, "flagged", bools, e);
  if (kind == -2 || status == -2 || flagged == -2) return false;
  f->kind = (int16_t)kind; /* the enum's order is engine_transfer_kind_t's */
  f->status = (int16_t)status;
  f->flagged = (int8_t)flagged;
  if (!page_params(h, r->route, &c->u.search.limit, &c->u.search.cursor_no, &c->u.search.ascending, e) ||
      !time_param(h, "from", &f->from_ms, e) || !time_param(h, "to", &f->to_ms, e) ||
      !amount_param(h, "min_amount", &f->has_min, &f->min_digits, &f->min_scale, e) ||
      !amount_param(h, "max_amount", &f->has_max, &f->max_digits, &f->max_scale, e))
    return false;
  char v[64];
  bool too_long;
  if (query_get(h->query, h->query_len, "account_id", v, sizeof v, &too_long)) {
    seg_t sv = {v, strlen(v)};
    if (too_long || !parse_account_ref(sv, &f->account_id)) {
      api_err(e, 400, "invalid_parameter", "'account_id' must be an account id");
      return false;
    }
  }
  int has_region = region_param(r, e);
  if (has_region < 0) return false;
  if (has_region) {
    f->has_region = true;
    f->region = engine_region_find(r->api->engine, r->region); /* 0: matches nothing */
  }
  if (query_get(h->query, h->query_len, "q", f->q, sizeof f->q, &too_long)) {
    size_t chars = 0;
    for (const char *p = f->q; *p; p++) chars += ((unsigned char)*p & 0xC0) != 0x80;
    if (too_long || chars == 0 || chars > API_QUERY_TEXT_CHARS_MAX) {
      api_err(e, 400, "invalid_parameter", "'q' must be 1-%u characters", API_QUERY_TEXT_CHARS_MAX);
      return false;
    }
  }
  if (!alloc_rows(r, c->u.search.limit, sizeof(engine_transfer_t), e)) return false;
  c->u.search.rows = r->rows;
  if (f->q[0] && !search_text_start(r, e)) return false;
  return true;
}

static bool build_suspicious_list(api_req_t *r, api_error_t *e) {
  const http_request_t *h = r->http;
  engine_cmd_t *c = &r->cmd;
  c->kind = ENGINE_CMD_SUSPICIOUS_LIST;
  c->u.suspicious.from_ms = INT64_MIN;
  c->u.suspicious.to_ms = INT64_MAX;
  static const char *const statuses[] = {"open", "cleared", "confirmed", NULL};
  int status = enum_param(h, "status", statuses, e);
  if (status == -2) return false;
  c->u.suspicious.status = (int16_t)status; /* same order as ENGINE_SUSPICIOUS_* */
  if (!page_params(h, r->route, &c->u.suspicious.limit, &c->u.suspicious.cursor_id, &c->u.suspicious.ascending, e) ||
      !time_param(h, "from", &c->u.suspicious.from_ms, e) || !time_param(h, "to", &c->u.suspicious.to_ms, e))
    return false;
  bool too_long;
  if (query_get(h->query, h->query_len, "rule", c->u.suspicious.rule_id, sizeof c->u.suspicious.rule_id, &too_long) &&
      (too_long || c->u.suspicious.rule_id[0] == '\0')) {
    api_err(e, 400, "invalid_parameter", "'rule' must be a rule id (1-%u characters)", ENGINE_RULE_ID_BYTES_MAX);
    return false;
  }
  if (!alloc_rows(r, c->u.suspicious.limit, sizeof(engine_suspicious_t), e)) return false;
  c->u.suspicious.rows = r->rows;
  return true;
}

static bool build_review(api_req_t *r, seg_t id, const cJSON *body, api_error_t *e) {
  static const char *const fields[] = {"decision", NULL};
  engine_cmd_t *c = &r->cmd;
  if (!parse_u53(id, &c->u.review.id)) {
    api_err(e, 404, "not_found", "no such suspicious-activity entry");
    return false;
  }
  if (!json_check_fields(body, fields, e)) return false;
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(body, "decision");
  if (!cJSON_IsString(d) || (strcmp(d->valuestring, "clear") != 0 && strcmp(d->valuestring, "confirm") != 0)) {
    api_err(e, 400, "invalid_request", "'decision' must be \"clear\" or \"confirm\"");
    return false;
  }
  c->kind = ENGINE_CMD_SUSPICIOUS_REVIEW;
  c->u.review.decision = strcmp(d->valuestring, "clear") == 0 ? ENGINE_SUSPICIOUS_CLEARED : ENGINE_SUSPICIOUS_CONFIRMED;
  return true;
}

/* A date "YYYY-MM-DD" (UTC) as days since 1970-01-01. */
static int date_param(const http_request_t *h, const char *name, int32_t *day, api_error_t *e) {
  char v[32];
  bool too_long;
  int64_t ms;
  if (!query_get(h->query, h->query_len, name, v, sizeof v, &too_long)) return 0;
  if (too_long || strlen(v) != 10 || time_parse_ms(v, 10, &ms) != 0 || ms < 0) {
    api_err(e, 400, "invalid_parameter", "'%s' must be a date YYYY-MM-DD (1970 or later)", name);
    return -1;
  }
  *day = (int32_t)(ms / 86400000);
  return 1;
}

#define SETTLEMENT_ROWS_PER_DAY_MAX 4096u   /* one date: regions x currencies */
#define SETTLEMENT_ROWS_PER_REPORT_MAX 50000u /* a CSV answer stays within API_RESPONSE_BYTES_MAX */
#define SETTLEMENT_REPORT_DAYS_MAX 366

static bool build_settlements(api_req_t *r, api_error_t *e) {
  const http_request_t *h = r->http;
  engine_cmd_t *c = &r->cmd;
  c->kind = ENGINE_CMD_SETTLEMENTS;
  if (r->route == R_SETTLEMENTS_CSV) {
    int a = date_param(h, "from", &c->u.settlements.day_from, e);
    if (a < 0) return false;
    int b = date_param(h, "to", &c->u.settlements.day_to, e);
    if (b < 0) return false;
    if (a == 0 || b == 0) {
      api_err(e, 400, "invalid_parameter", "'from' and 'to' (YYYY-MM-DD, inclusive) are required");
      return false;
    }
    if (c->u.settlements.day_to < c->u.settlements.day_from ||
        c->u.settlements.day_to - c->u.settlements.day_from >= SETTLEMENT_REPORT_DAYS_MAX) {
      api_err(e, 400, "invalid_parameter", "'to' must be on or after 'from', at most %d days in all",
              SETTLEMENT_REPORT_DAYS_MAX);
      return false;
    }
    c->u.settlements.cap = SETTLEMENT_ROWS_PER_REPORT_MAX;
  } else {
    int a = date_param(h, "date", &c->u.settlements.day_from, e);
    if (a < 0) return false;
    if (a == 0) c->u.settlements.day_from = (int32_t)((time_now_ms() + r->api->time_offset_ms) / 86400000);
    c->u.settlements.day_to = c->u.settlements.day_from;
    c->u.settlements.cap = SETTLEMENT_ROWS_PER_DAY_MAX;
    int has_region;
    if (currency_param(h, &c->u.settlements.currency, e) < 0 || (has_region = region_param(r, e)) < 0) return false;
    if (has_region) {
      c->u.settlements.has_region = true;
      c->u.settlements.region = engine_region_find(r->api->engine, r->region);
    }
  }
  if (!alloc_rows(r, c->u.settlements.cap, sizeof(engine_settlement_t), e)) return false;
  c->u.settlements.rows = r->rows;
  return true;
}

/* Reload: the caller's role is checked first (a customer learns nothing about the server's
 * files and cannot make it read them), then the file is read and handed to the engine. */
static void rules_after_whoami(api_req_t *r) {
  if (r->cmd.result != ENGINE_OK) {
    fail(r, result_status(r->cmd.result), engine_result_code(r->cmd.result), result_message(r->cmd.result));
    return;
  }
  if (r->cmd.role != ENGINE_ROLE_ADMIN) {
    fail(r, 403, "forbidden", "your role may not do this");
    return;
  }
  if (!r->api->rules_path) {
    fail(r, 422, "invalid_rules", "this server runs the built-in rules: start it with --config FILE to reload");
    return;
  }
  char err[160];
  r->rules = malloc(sizeof *r->rules);
  if (!r->rules) {
    fail(r, 503, "overloaded", "out of memory");
    return;
  }
  if (api_rules_read(r->api->rules_path, r->rules, err, sizeof err) != 0) {
    fail(r, 422, "invalid_rules", err);
    return;
  }
  r->cmd.kind = ENGINE_CMD_RULES_SET;
  r->cmd.u.rules.set = r->rules;
  submit(r);
}

static bool build_rules_reload(api_req_t *r, const cJSON *body, api_error_t *e) {
  static const char *const none[] = {NULL};
  if (body && !json_check_fields(body, none, e)) return false;
  r->cmd.kind = ENGINE_CMD_WHOAMI;
  r->resume = rules_after_whoami;
  return true;
}

/* ------------------------------------------------------------ users, sessions, keys */

static bool valid_username(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > ENGINE_USERNAME_BYTES_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
          c == '-' || c == '@'))
      return false;
  }
  return true;
}

static bool get_string(const cJSON *o, const char *name, bool required, size_t min, size_t max, const char **out,
                       api_error_t *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  *out = NULL;
  if (!v) {
    if (required) api_err(e, 400, "invalid_request", "'%s' is required", name);
    return !required;
  }
  size_t n = cJSON_IsString(v) ? strlen(v->valuestring) : 0;
  if (!cJSON_IsString(v) || n < min || n > max) {
    api_err(e, 400, "invalid_request", "'%s' must be a string of %zu to %zu bytes", name, min, max);
    return false;
  }
  *out = v->valuestring;
  return true;
}

static bool get_role(const cJSON *o, bool required, uint8_t *role, api_error_t *e) {
  const char *s;
  if (!get_string(o, "role", required, 1, 16, &s, e)) return false;
  *role = s ? (uint8_t)engine_role_find(s) : 0;
  if (s && *role == 0) {
    api_err(e, 400, "invalid_request", "'role' must be admin, auditor or customer");
    return false;
  }
  return true;
}

static auth_job_t *new_job(api_req_t *r, auth_job_op_t op, const char *password) {
  r->job = calloc(1, sizeof *r->job);
  if (!r->job) return NULL;
  r->job->op = op;
  r->job->password_len = strlen(password);
  memcpy(r->job->password, password, r->job->password_len);
  r->job->done = job_done;
  r->job->arg = r;
  return r->job;
}

static void pool_submit(api_req_t *r, auth_pool_t *pool, void (*next)(api_req_t *), const char *busy_message) {
  r->resume = next;
  atomic_fetch_add_explicit(&r->api->in_flight, 1, memory_order_relaxed);
  int rc = auth_pool_submit(pool, r->job);
  if (rc != 0) {
    atomic_fetch_sub_explicit(&r->api->in_flight, 1, memory_order_relaxed);
    r->resume = NULL;
    if (rc == LEDGER_ESTOPPED) fail(r, 503, "not_ready", "the server is shutting down; retry shortly");
    else fail(r, 503, "overloaded", busy_message);
  }
}

static void to_pool(api_req_t *r, void (*next)(api_req_t *)) {
  pool_submit(r, r->api->hash_pool, next, "too many sign-ins in progress; retry shortly");
}

static void users_after_hash(api_req_t *r) {
  if (!r->job->ok) {
    fail(r, 503, "overloaded", "could not hash the password; retry shortly");
    return;
  }
  r->cmd.kind = ENGINE_CMD_USER_CREATE;
  r->cmd.u.auth.username = r->username;
  r->cmd.u.auth.email = r->email;
  r->cmd.u.auth.pwhash = r->job->pwhash;
  submit(r);
}

static bool signup_begin(api_req_t *r, const char *username, const char *email, const char *password,
                         api_error_t *e);

static bool build_user_create(api_req_t *r, const cJSON *body, api_error_t *e) {
  static const char *const fields[] = {"username", "password", "email", "role", NULL};
  const char *username, *password, *email;
  uint8_t role = 0;
  if (!json_check_fields(body, fields, e) ||
      !get_string(body, "username", true, 1, ENGINE_USERNAME_BYTES_MAX, &username, e) ||
      !get_string(body, "password", true, AUTH_PASSWORD_BYTES_MIN, AUTH_PASSWORD_BYTES_MAX, &password, e) ||
      !get_string(body, "email", false, 3, ENGINE_EMAIL_BYTES_MAX, &email, e) || !get_role(body, false, &role, e))
    return false;
  r->cmd.u.auth.role = role;
  return signup_begin(r, username, email, password, e);
}

/* Sign-up once the fields are read (also compat's microfin sign-up); the caller then hands
 * the hashing job to the pool (to_pool(r, users_after_hash)). */
static bool signup_begin(api_req_t *r, const char *username, const char *email, const char *password,
                         api_error_t *e) {
  if (!valid_username(username)) {
    api_err(e, 400, "invalid_request", "'username' takes letters, digits and . _ - @");
    return false;
  }
  if (email && !strchr(email, '@')) {
    api_err(e, 400, "invalid_request", "'email' must be an email address");
    return false;
  }
  snprintf(r->username, sizeof r->username, "%s", username);
  snprintf(r->email, sizeof r->email, "%s", email ? email : "");
  if (!new_job(r, AUTH_JOB_HASH, password)) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  return true;
}

static void sessions_after_failure(api_req_t *r) {
  if (r->then) { /* compat sign-in: its own 401 body */
    r->then(r);
    return;
  }
  fail(r, 401, "unauthorized", "missing or invalid credentials");
}

static void sessions_after_verify(api_req_t *r) {
  uint64_t user_id = r->cmd.user.id;
  bool ok = r->job->ok;
  memset(&r->cmd.u, 0, sizeof r->cmd.u);
  r->cmd.auth_mode = ENGINE_AUTH_TRUSTED;
  if (ok) {
    r->cmd.kind = ENGINE_CMD_SESSION_CREATE;
    r->cmd.principal_id = user_id;
    r->cmd.u.auth.user_id = user_id;
    r->cmd.u.auth.expires_ms = time_now_ms() + (int64_t)r->api->session_ttl_s * 1000;
    auth_token_new("lds", r->token, r->cmd.u.auth.token_hash);
  } else {
    /* Repeated failures are throttled harder: each drains up to 4 more tokens, whatever is
     * left, from both sign-in buckets (docs/security.md). */
    if (r->api->rl) {
      uint64_t now = time_mono_ns();
      ratelimit_drain(r->api->rl, rl_key(API_RL_SIGNIN_USER, r->username, strlen(r->username)),
                      &r->api->rules[API_RL_SIGNIN_USER], 4.0, now);
      ratelimit_drain(r->api->rl, rl_key(API_RL_SIGNIN_ADDR, r->cmd.client_addr, strlen(r->cmd.client_addr)),
                      &r->api->rules[API_RL_SIGNIN_ADDR], 4.0, now);
    }
    r->cmd.kind = ENGINE_CMD_SIGNIN_FAILED; /* an audit event; the answer says nothing more */
    r->cmd.principal_id = ENGINE_PRINCIPAL_ANONYMOUS;
    r->cmd.u.auth.username = r->username;
    r->resume = sessions_after_failure;
  }
  submit(r);
}

static void sessions_after_lookup(api_req_t *r) {
  /* Unknown users are verified against a dummy hash: the same work, the same answer. */
  if (r->cmd.result == ENGINE_OK) snprintf(r->job->pwhash, sizeof r->job->pwhash, "%s", r->cmd.user.pwhash);
  else r->job->pwhash[0] = '\0';
  memset(r->cmd.user.pwhash, 0, sizeof r->cmd.user.pwhash);
  r->job->op = AUTH_JOB_VERIFY;
  to_pool(r, sessions_after_verify);
}

static bool signin_begin(api_req_t *r, const char *username, const char *password, api_error_t *e);

static bool build_session_create(api_req_t *r, const cJSON *body, api_error_t *e) {
  static const char *const fields[] = {"username", "password", NULL};
  const char *username, *password;
  if (!json_check_fields(body, fields, e) ||
      !get_string(body, "username", true, 1, ENGINE_USERNAME_BYTES_MAX, &username, e) ||
      !get_string(body, "password", true, 1, AUTH_PASSWORD_BYTES_MAX, &password, e))
    return false;
  return signin_begin(r, username, password, e);
}

/* Sign-in once the fields are read (also compat's microfin sign-in): per-username rate limit,
 * then USER_LOOKUP -> Argon2id verify on the pool -> SESSION_CREATE or SIGNIN_FAILED. */
static bool signin_begin(api_req_t *r, const char *username, const char *password, api_error_t *e) {
  snprintf(r->username, sizeof r->username, "%s", username);
  uint32_t wait = rl_take(r, API_RL_SIGNIN_USER, r->username, strlen(r->username), 1.0);
  if (wait) {
    api_err(e, 429, "rate_limited", "too many sign-ins for this user; retry in %u s", wait);
    e->retry_after_s = wait;
    return false;
  }
  if (!new_job(r, AUTH_JOB_VERIFY, password)) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  r->cmd.kind = ENGINE_CMD_USER_LOOKUP;
  r->cmd.auth_mode = ENGINE_AUTH_TRUSTED;
  r->cmd.principal_id = ENGINE_PRINCIPAL_ANONYMOUS;
  r->cmd.u.auth.username = r->username;
  r->resume = sessions_after_lookup;
  return true;
}

static bool build_key_create(api_req_t *r, const cJSON *body, api_error_t *e) {
  static const char *const fields[] = {"name", "role", NULL};
  const char *name;
  uint8_t role = 0;
  if (!json_check_fields(body, fields, e) || !get_string(body, "name", true, 1, ENGINE_KEY_NAME_BYTES_MAX, &name, e) ||
      !get_role(body, true, &role, e))
    return false;
  if (role == ENGINE_ROLE_CUSTOMER) {
    api_err(e, 400, "invalid_request", "API keys are for services: role admin or auditor");
    return false;
  }
  snprintf(r->name, sizeof r->name, "%s", name);
  r->cmd.kind = ENGINE_CMD_API_KEY_CREATE;
  r->cmd.u.auth.role = role;
  r->cmd.u.auth.name = r->name;
  auth_token_new("ldk", r->token, r->cmd.u.auth.token_hash);
  return true;
}

static bool build_audit(api_req_t *r, api_error_t *e) {
  uint64_t cursor = 0;
  bool asc = false;
  r->cmd.kind = ENGINE_CMD_AUDIT_LIST;
  if (!page_params(r->http, r->route, &r->cmd.u.audit.limit, &cursor, &asc, e)) return false;
  char v[32];
  bool too_long;
  r->cmd.u.audit.after_seq = cursor;
  if (query_get(r->http->query, r->http->query_len, "after", v, sizeof v, &too_long)) {
    char *end;
    r->cmd.u.audit.after_seq = strtoull(v, &end, 10);
    if (too_long || *end || v[0] < '0' || v[0] > '9') {
      api_err(e, 400, "invalid_parameter", "'after' must be an audit seq");
      return false;
    }
  }
  r->audit_rows = calloc(r->cmd.u.audit.limit, sizeof *r->audit_rows);
  if (!r->audit_rows) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  r->cmd.u.audit.rows = r->audit_rows;
  return true;
}

/* ------------------------------------------------------------ operations routes */

static void handle_metrics(api_req_t *r) {
  api_t *api = r->api;
  size_t cap = 256 * 1024;
  obs_buf_t b = {malloc(cap), 0, cap, false};
  if (!b.data) {
    fail(r, 503, "overloaded", "out of memory");
    return;
  }
  char labels[160];
  obs_header(&b, "ledger_http_requests_total", "counter", "HTTP requests by route and status.");
  for (unsigned rt = 0; rt < R_COUNT; rt++) {
    for (unsigned s = 0; s < STATUS_SLOTS; s++) {
      uint64_t v = atomic_load_explicit(&api->requests[rt][s], memory_order_relaxed);
      if (!v) continue;
      snprintf(labels, sizeof labels, "route=\"%s\",status=\"%d\"", route_names[rt],
               s < LEDGER_ARRAY_LEN(tracked_statuses) ? tracked_statuses[s] : 0);
      obs_value(&b, "ledger_http_requests_total", labels, v);
    }
  }
  obs_header(&b, "ledger_http_request_duration_seconds", "histogram", "Time from a complete request to its answer.");
  obs_hist(&b, "ledger_http_request_duration_seconds", "", &api->latency_ns, 1e-9);
  obs_header(&b, "ledger_rejections_total", "counter", "Error answers by code.");
  for (unsigned i = 0; i < ERROR_SLOTS; i++) {
    snprintf(labels, sizeof labels, "code=\"%s\"", error_codes[i]);
    obs_value(&b, "ledger_rejections_total", labels, atomic_load_explicit(&api->errors[i], memory_order_relaxed));
  }
  engine_stats_t es;
  engine_get_stats(api->engine, &es);
  obs_single(&b, "ledger_engine_batches_total", "counter", "Durable batches written (one write + fdatasync each).", es.batches_total);
  obs_single(&b, "ledger_engine_commands_total", "counter", "Commands applied by the engine.", es.commands_total);
  obs_single(&b, "ledger_engine_transfers_total", "counter", "Ledger entries created.", es.transfers_total);
  obs_header(&b, "ledger_engine_batch_commands", "histogram", "Commands per engine batch.");
  obs_hist(&b, "ledger_engine_batch_commands", "", es.batch_commands, 1.0);
  obs_header(&b, "ledger_engine_fsync_seconds", "histogram", "Log write + fdatasync per batch.");
  obs_hist(&b, "ledger_engine_fsync_seconds", "", es.fsync_ns, 1e-9);
  obs_single(&b, "ledger_engine_queue_depth", "gauge", "Commands waiting for the engine.", es.queue_depth);
  obs_single(&b, "ledger_engine_queue_rejections_total", "counter", "Commands refused because the queue was full (503).", es.rejected_full_total);
  obs_single(&b, "ledger_engine_last_seq", "gauge", "Sequence number of the newest durable batch.", es.last_seq);
  obs_single(&b, "ledger_log_bytes", "gauge", "Size of the log.", es.log_bytes);
  obs_single(&b, "ledger_log_prealloc_chunks_total", "counter", "Chunks of zeros written ahead of the log (--log-prealloc-mb).", es.log_prealloc_chunks);
  obs_single(&b, "ledger_log_prealloc_slow_appends_total", "counter", "Log appends that outran the zeros and extended the file.", es.log_prealloc_slow_appends);
  obs_single(&b, "ledger_snapshots_started_total", "counter", "Background snapshots started (docs/storage.md).", es.snapshots_started);
  obs_single(&b, "ledger_snapshots_written_total", "counter", "Background snapshots completed.", es.snapshots_written);
  obs_single(&b, "ledger_snapshot_bytes", "gauge", "Size of the newest snapshot written or loaded.", es.snapshot_bytes);
  obs_single(&b, "ledger_prefault_populated_bytes_total", "counter",
             "Memory the prefault thread populated ahead of use, in whole 2 MiB steps (docs/storage.md).",
             es.prefault_populated_bytes);
  obs_single(&b, "ledger_accounts", "gauge", "Accounts, system accounts included.", es.accounts);
  obs_single(&b, "ledger_rules_version", "gauge", "Version of the risk rule set in force (docs/rules.md).", es.rules_version);
  obs_single(&b, "ledger_suspicious_total", "counter", "Transfers a risk rule flagged or held.", es.suspicious_total);
  obs_single(&b, "ledger_settlement_rows", "gauge", "Settlement rows (day, region, currency).", es.settlement_rows);
  if (api->rl) {
    ratelimit_stats_t rs;
    ratelimit_stats(api->rl, &rs);
    obs_single(&b, "ledger_ratelimit_limited_total", "counter", "Requests answered 429 by the token buckets.", rs.limited_total);
    obs_single(&b, "ledger_ratelimit_evictions_total", "counter", "Buckets dropped while still owing tokens.", rs.evictions_total);
  }
  obs_single(&b, "ledger_requests_in_flight", "gauge", "Requests handed to the engine and not yet answered.", atomic_load(&api->in_flight));
  if (api->http) {
    http_stats_t hs;
    http_server_stats(api->http, &hs);
    obs_single(&b, "ledger_http_connections_open", "gauge", "Open client connections.", hs.connections_open);
    obs_single(&b, "ledger_http_connections_rejected_total", "counter", "Connections closed at once: over the limit.", hs.connections_rejected_total);
    obs_single(&b, "ledger_http_protocol_errors_total", "counter", "Requests refused by the HTTP layer (400/413/414/431).", hs.protocol_errors_total);
    obs_single(&b, "ledger_http_timeouts_total", "counter", "Connections closed by header or idle timeouts.", hs.timeouts_total);
    obs_single(&b, "ledger_http_uring_threads", "gauge", "Net threads batching socket reads and sends through an io_uring (0: plain system calls).", hs.uring_loops);
    obs_single(&b, "ledger_http_uring_reads_total", "counter", "Socket reads done in io_uring batches.", hs.uring_reads_total);
    obs_single(&b, "ledger_http_uring_sends_total", "counter", "Socket sends done in io_uring batches.", hs.uring_sends_total);
  }
  http_respond(r->http, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b.data, b.len);
  atomic_fetch_add_explicit(&api->requests[r->route][status_slot(200)], 1, memory_order_relaxed);
  free(b.data);
  req_free(r);
}

/* /metrics needs a credential of an admin or auditor (it shows traffic patterns). */
static void metrics_after_whoami(api_req_t *r) {
  if (r->cmd.result != ENGINE_OK) {
    fail(r, result_status(r->cmd.result), engine_result_code(r->cmd.result), result_message(r->cmd.result));
    return;
  }
  if (r->cmd.role != ENGINE_ROLE_ADMIN && r->cmd.role != ENGINE_ROLE_AUDITOR) {
    fail(r, 403, "forbidden", "your role may not do this");
    return;
  }
  handle_metrics(r);
}

static void handle_simple(api_req_t *r, bool ready_check) {
  engine_stats_t es;
  engine_get_stats(r->api->engine, &es);
  if (ready_check && !es.ready) {
    fail(r, 503, "not_ready", "the ledger is not ready to take writes");
    return;
  }
  jw_t *w = &r->api->out[r->http->thread_index].w;
  jw_reset(w);
  jw_lit(w, "{\"status\":\"ok\",\"seq\":");
  jw_u64(w, es.last_seq);
  jw_lit(w, "}");
  finish_json(r, 200, NULL);
}

/* ------------------------------------------------------------ dispatch */

/* Sets how the engine learns who this is. False: the route needs a credential and the
 * request has none that is well-formed (401, the same answer as for a wrong one). */
static bool authenticate(api_req_t *r) {
  engine_cmd_t *c = &r->cmd;
  c->auth_mode = ENGINE_AUTH_TRUSTED;
  if (r->api->no_auth) {
    c->principal_id = 0; /* the operator */
    return true;
  }
  c->principal_id = ENGINE_PRINCIPAL_ANONYMOUS;
  const char *a = r->http->authorization;
  bool bearer = false;
  if (a && strncasecmp(a, "Bearer ", 7) == 0) {
    const char *t = a + 7;
    size_t n = strlen(t);
    bearer = n >= 1 && n < AUTH_TOKEN_TEXT_BYTES;
    for (size_t i = 0; bearer && i < n; i++) bearer = t[i] > 0x20 && t[i] < 0x7f;
    if (bearer) {
      api_req_token_hash(r, t, n, c->credential_hash);
      c->auth_mode = ENGINE_AUTH_BEARER;
    }
  }
  if (r->route == R_SESSIONS_CREATE) { /* signing in: a credential presented is ignored */
    c->auth_mode = ENGINE_AUTH_TRUSTED;
    return true;
  }
  return bearer || route_is_open(r->route);
}

static bool is_write_route(route_t rt) {
  switch (rt) {
    case R_ACCOUNTS_CREATE:
    case R_ACCOUNT_FREEZE:
    case R_ACCOUNT_UNFREEZE:
    case R_TRANSFERS_CREATE:
    case R_TRANSFERS_BATCH:
    case R_TRANSFER_POST:
    case R_TRANSFER_VOID:
    case R_DEPOSITS:
    case R_WITHDRAWALS:
    case R_USERS_CREATE:
    case R_USER_ROLE:
    case R_SESSIONS_CREATE:
    case R_API_KEYS_CREATE:
    case R_RULES_RELOAD:
    case R_SUSPICIOUS_REVIEW: return true;
    default: return false;
  }
}

/* Users, sessions and keys are not money: an Idempotency-Key there is accepted and ignored
 * (a repeated sign-up answers 409 username_taken; docs/api.md). */
static bool is_auth_route(route_t rt) {
  return rt == R_USERS_CREATE || rt == R_USER_ROLE || rt == R_SESSIONS_CREATE || rt == R_API_KEYS_CREATE;
}

/* Builds the engine command for a route; false with *e set on a client error. */
static bool build(api_req_t *r, const seg_t *segs, api_error_t *e) {
  cJSON *body = NULL;
  bool ok = false, fast = false;
  uint64_t id = 0;
  if (is_write_route(r->route)) {
    bool empty_ok = r->route == R_ACCOUNT_FREEZE || r->route == R_ACCOUNT_UNFREEZE || r->route == R_TRANSFER_VOID ||
                    r->route == R_TRANSFER_POST || r->route == R_RULES_RELOAD;
    if (r->route == R_TRANSFERS_BATCH) fast = build_batch_fast(r);
    else if (r->route == R_TRANSFERS_CREATE) fast = build_transfer_fast(r);
    if (!fast && !(empty_ok && r->http->body_len == 0)) {
      if (!(body = parse_body(r, e))) {
        json_arena_end();
        return false;
      }
    }
    /* A reload reads the file as it is now: a key could not make a repeat mean anything. */
    if (!is_auth_route(r->route) && r->route != R_RULES_RELOAD && !idempotency(r, e)) goto out;
  }
  switch (r->route) {
    case R_ACCOUNTS_CREATE: ok = build_account_create(r, body, e); break;
    case R_ACCOUNTS_LIST: ok = build_list(r, e); break;
    case R_ACCOUNT_GET:
    case R_ACCOUNT_FREEZE:
    case R_ACCOUNT_UNFREEZE:
    case R_ACCOUNT_HISTORY:
      if (!parse_account_ref(segs[2], &id)) {
        api_err(e, 404, "account_not_found", "no such account");
        break;
      }
      if (body) {
        static const char *const none[] = {NULL};
        if (!json_check_fields(body, none, e)) break;
      }
      if (r->route == R_ACCOUNT_HISTORY) {
        ok = build_history(r, id, e);
        break;
      }
      r->cmd.kind = r->route == R_ACCOUNT_GET      ? ENGINE_CMD_ACCOUNT_GET
                    : r->route == R_ACCOUNT_FREEZE ? ENGINE_CMD_ACCOUNT_FREEZE
                                                   : ENGINE_CMD_ACCOUNT_UNFREEZE;
      r->cmd.u.account.account_id = id;
      ok = true;
      break;
    case R_TRANSFERS_CREATE: ok = fast || build_transfer(r, body, ENGINE_KIND_TRANSFER, e); break;
    case R_DEPOSITS: ok = build_transfer(r, body, ENGINE_KIND_DEPOSIT, e); break;
    case R_WITHDRAWALS: ok = build_transfer(r, body, ENGINE_KIND_WITHDRAWAL, e); break;
    case R_TRANSFERS_BATCH: ok = fast || build_batch(r, body, e); break;
    case R_TRANSFER_GET:
    case R_TRANSFER_RECEIPT:
    case R_TRANSFER_POST:
    case R_TRANSFER_VOID: {
      uint64_t no;
      int64_t created;
      int ref = parse_transfer_ref(segs[2], &no, &created);
      if (ref <= 0) {
        if (ref < 0) api_err(e, 400, "invalid_id", "a transfer id is a UUID such as 01a2035a-5ebf-7000-8000-000000000001");
        else api_err(e, 404, "transfer_not_found", "no such transfer");
        break;
      }
      if (r->route == R_TRANSFER_GET || r->route == R_TRANSFER_RECEIPT) {
        r->cmd.kind = ENGINE_CMD_TRANSFER_GET;
        r->cmd.u.transfer_get.no = no;
        r->cmd.u.transfer_get.created_ms = created;
        ok = true;
        break;
      }
      r->cmd.kind = r->route == R_TRANSFER_POST ? ENGINE_CMD_TRANSFER_POST : ENGINE_CMD_TRANSFER_VOID;
      r->cmd.u.settle.no = no;
      r->cmd.u.settle.created_ms = created;
      if (body) {
        static const char *const post_fields[] = {"amount", NULL};
        static const char *const none[] = {NULL};
        if (!json_check_fields(body, r->route == R_TRANSFER_POST ? post_fields : none, e)) break;
        if (r->route == R_TRANSFER_POST &&
            !json_get_amount(body, "amount", false, &r->cmd.u.settle.amount_digits, &r->cmd.u.settle.amount_scale, e))
          break;
      }
      ok = true;
      break;
    }
    case R_TRANSFERS_SEARCH: ok = build_search(r, e); break;
    case R_RULES_GET:
      r->cmd.kind = ENGINE_CMD_RULES_GET;
      r->rules = malloc(sizeof *r->rules);
      r->cmd.u.rules.out = r->rules;
      ok = r->rules != NULL;
      if (!ok) api_err(e, 503, "overloaded", "out of memory");
      break;
    case R_RULES_RELOAD: ok = build_rules_reload(r, body, e); break;
    case R_SUSPICIOUS_LIST: ok = build_suspicious_list(r, e); break;
    case R_SUSPICIOUS_REVIEW: ok = build_review(r, segs[2], body, e); break;
    case R_SETTLEMENTS:
    case R_SETTLEMENTS_CSV: ok = build_settlements(r, e); break;
    case R_USERS_CREATE: ok = build_user_create(r, body, e); break;
    case R_SESSIONS_CREATE: ok = build_session_create(r, body, e); break;
    case R_API_KEYS_CREATE: ok = build_key_create(r, body, e); break;
    case R_ME: r->cmd.kind = ENGINE_CMD_WHOAMI; ok = true; break;
    case R_AUDIT: ok = build_audit(r, e); break;
    case R_SESSION_DELETE:
      r->cmd.kind = ENGINE_CMD_SESSION_REVOKE;
      memcpy(r->cmd.u.auth.token_hash, r->cmd.credential_hash, 32);
      ok = true;
      break;
    case R_API_KEY_DELETE:
      if (!parse_u53(segs[2], &r->cmd.u.auth.key_id)) {
        api_err(e, 404, "api_key_not_found", "no such API key");
        break;
      }
      r->cmd.kind = ENGINE_CMD_API_KEY_REVOKE;
      ok = true;
      break;
    case R_USER_ROLE: {
      static const char *const fields[] = {"role", NULL};
      if (!parse_u53(segs[2], &r->cmd.u.auth.user_id)) {
        api_err(e, 404, "user_not_found", "no such user");
        break;
      }
      ok = json_check_fields(body, fields, e) && get_role(body, true, &r->cmd.u.auth.role, e);
      r->cmd.kind = ENGINE_CMD_USER_ROLE_SET;
      break;
    }
    default: LEDGER_ASSERT(!"unrouted");
  }
out:
  cJSON_Delete(body);
  json_arena_end();
  return ok;
}

bool api_body_fits(http_method_t method, const char *path, size_t path_len, uint64_t length, void *ctx) {
  const api_t *api = ctx;
  if (length <= API_BODY_BYTES_MAX) return true; /* every route; no routing on the hot path */
  http_request_t h = {.method = method, .path = path, .path_len = path_len};
  seg_t segs[PATH_SEGMENTS_MAX];
  size_t nseg;
  route_t route = route_of(&h, segs, &nseg);
  /* A --compat route answers its own 413, in its seed system's error shape
   * (compat_body_parse): its body is read (up to the 2 MiB transport limit) first. */
  if (route == R_NOT_FOUND && api->compat) return true;
  return length <= route_body_max(route);
}

void api_handle(http_request_t *h, void *ctx) {
  api_t *api = ctx;
  /* Zeroed up to extra: zeroing the whole 11 KB cost ~1 % of the server's CPU per single
   * transfer (perf, docs/performance.md, session 12). */
  api_req_t *r = malloc(sizeof *r);
  if (r) memset(r, 0, offsetof(api_req_t, extra));
  if (!r) {
    http_respond(h, 503, "application/json", "Retry-After: 1\r\n",
                 "{\"error\":{\"code\":\"overloaded\",\"message\":\"out of memory\"}}", 58);
    return;
  }
  r->api = api;
  r->http = h;
  r->started_ns = h->received_ns ? h->received_ns : time_mono_ns();
  seg_t segs[PATH_SEGMENTS_MAX];
  size_t nseg;
  r->route = route_of(h, segs, &nseg);
  if (h->remote_addr) { /* a bounded copy (r is zeroed): no snprintf on every request */
    size_t n = strnlen(h->remote_addr, sizeof r->cmd.client_addr - 1);
    memcpy(r->cmd.client_addr, h->remote_addr, n);
  }
  if (r->route == R_NOT_FOUND && api->compat) { /* --compat: the seed systems' routes */
    r->route = R_COMPAT;
    if (compat_handle(r)) return;
    r->route = R_NOT_FOUND;
  }
  if (!authenticate(r)) {
    fail(r, 401, "unauthorized", "missing or invalid credentials");
    return;
  }
  if (r->route != R_HEALTHZ && r->route != R_READYZ) {
    uint32_t wait = rate_check(r);
    if (wait) {
      fail_limited(r, wait);
      return;
    }
  }
  switch (r->route) {
    case R_NOT_FOUND: fail(r, 404, "not_found", "no such route"); return;
    case R_METHOD_NOT_ALLOWED: fail(r, 405, "method_not_allowed", "this route does not take that method"); return;
    case R_HEALTHZ: handle_simple(r, false); return;
    case R_READYZ: handle_simple(r, true); return;
    case R_METRICS:
      if (api->no_auth) {
        handle_metrics(r);
      } else {
        r->cmd.kind = ENGINE_CMD_WHOAMI;
        r->resume = metrics_after_whoami;
        submit(r);
      }
      return;
    default: break;
  }
  api_error_t e;
  if (!build(r, segs, &e)) {
    fail_err(r, &e);
    return;
  }
  if (r->route == R_USERS_CREATE) to_pool(r, users_after_hash); /* hash first, then the engine */
  else submit(r);
}

int api_create(const api_config_t *config, api_t **out) {
  api_t *api = aligned_alloc(64, (sizeof(api_t) + 63) / 64 * 64);
  if (!api) return LEDGER_ENOMEM;
  memset(api, 0, sizeof *api);
  json_hooks_install();
  api->engine = config->engine;
  api->hash_pool = config->hash_pool;
  api->search_pool = config->search_pool ? config->search_pool : config->hash_pool;
  api->no_auth = config->no_auth;
  api->compat = config->compat;
  api->compat_open = config->compat && config->compat_open;
  api->session_ttl_s = config->session_ttl_s ? config->session_ttl_s : AUTH_SESSION_TTL_S_DEFAULT;
  api->rules_path = config->rules_path;
  api->time_offset_ms = config->time_offset_ms;
  for (unsigned i = 0; i < HTTP_THREADS_MAX; i++) auth_memo_init(&api->out[i].memo);
  for (unsigned i = 0; i < API_RL_COUNT; i++)
    api->rules[i] = (ratelimit_rule_t){config->rates[i].rate_per_s, config->rates[i].burst};
  if (!config->rate_limits_off) {
    int rc = ratelimit_create(256u * 1024u, &api->rl);
    if (rc != 0) {
      free(api);
      return rc;
    }
  }
  if (api->engine) engine_set_batch_done_hook(api->engine, api_batch_done, NULL);
  *out = api;
  return LEDGER_OK;
}

void api_set_http(api_t *api, http_server_t *http) { api->http = http; }

void api_destroy(api_t *api) {
  if (!api) return;
  ratelimit_destroy(api->rl);
  for (unsigned i = 0; i < HTTP_THREADS_MAX; i++) {
    free(api->out[i].w.buf);
    auth_memo_clear(&api->out[i].memo);
  }
  free(api);
}

uint64_t api_in_flight(const api_t *api) { return atomic_load(&api->in_flight); }

/* ------------------------------------------------------------ for the compat module */
/* src/api/compat.c serves the seed systems' routes through the same machinery: these are
 * thin doors into it (api_internal.h documents them); nothing here knows a compat route. */

engine_cmd_t *api_req_cmd(api_req_t *r) { return &r->cmd; }
const http_request_t *api_req_http(const api_req_t *r) { return r->http; }
bool api_req_compat_open(const api_req_t *r) { return r->api->compat_open; }
void **api_req_ext(api_req_t *r) { return &r->ext; }
const char *api_req_token(const api_req_t *r) { return r->token; }

jw_t *api_req_writer(api_req_t *r) {
  jw_t *w = &r->api->out[r->http->thread_index].w;
  jw_reset(w);
  return w;
}

void api_req_token_hash(api_req_t *r, const char *text, size_t len, uint8_t hash_out[32]) {
  auth_token_hash_memo(&r->api->out[r->http->thread_index].memo, text, len, hash_out);
}

void api_req_send(api_req_t *r, int status, const char *headers) { finish_json(r, status, headers); }

void api_req_submit(api_req_t *r, void (*next)(api_req_t *r)) {
  LEDGER_ASSERT(next != NULL); /* compat answers from its own step, never from complete_ok */
  r->resume = next;
  submit(r);
}

uint32_t api_req_rate(api_req_t *r, api_rl_rule_t rule, const void *id, size_t len) {
  return rl_take(r, rule, id, len, 1.0);
}

void api_req_limited(api_req_t *r, uint32_t retry_s) { fail_limited(r, retry_s); }
void api_req_unavailable(api_req_t *r, const char *code, const char *message) { fail(r, 503, code, message); }

bool api_req_signin(api_req_t *r, const char *username, const char *password, void (*then)(api_req_t *r),
                    api_error_t *e) {
  if (!signin_begin(r, username, password, e)) return false;
  r->then = then;
  submit(r);
  return true;
}

bool api_req_signup(api_req_t *r, const char *username, const char *email, const char *password,
                    void (*then)(api_req_t *r), api_error_t *e) {
  r->cmd.u.auth.role = 0; /* a customer */
  if (!signup_begin(r, username, email, password, e)) return false;
  r->then = then;
  to_pool(r, users_after_hash);
  return true;
}
