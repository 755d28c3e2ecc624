/*
 * api_v1.c — routing and the v1 handlers: validate, build an engine command, submit; render
 * the engine's answer on the net thread when it completes.
 *
 * Threads: api_handle and the completion callback run on net threads; api_done runs on the
 * engine thread and only pushes the request onto its thread's lock-free completion stack.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
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
  R_METHOD_NOT_ALLOWED,
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
    [R_METHOD_NOT_ALLOWED] = "method_not_allowed",
};

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
    "not_ready", "not_implemented", "internal"};
#define ERROR_SLOTS LEDGER_ARRAY_LEN(error_codes)

typedef struct completion_stack {
  _Alignas(64) _Atomic(struct api_req *) head;
} completion_stack_t;

typedef struct out_slot {
  _Alignas(64) jw_t w; /* the response being written on one net thread */
} out_slot_t;

struct api {
  engine_t *engine;
  out_slot_t out[HTTP_THREADS_MAX];
  http_server_t *http;
  completion_stack_t done[HTTP_THREADS_MAX];
  http_loop_t *loops[HTTP_THREADS_MAX];
  _Atomic uint64_t in_flight;
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
  api_principal_t principal;
  engine_cmd_t cmd;
  engine_transfer_in_t *items;   /* batch */
  engine_item_result_t *results; /* batch */
  void *rows;                    /* list / history */
  char region[API_REGION_BYTES_MAX + 1];
  char extra[LEDGER_EXTRA_BYTES_MAX];
  char *batch_extra; /* batch: all items' extras */
  struct api_req *next;
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
  free(r->items);
  free(r->results);
  free(r->rows);
  free(r->batch_extra);
  free(r);
}

/* Sends and frees the request. */
static void finish(api_req_t *r, int status, const char *headers, const char *body, size_t len) {
  api_t *api = r->api;
  http_respond(r->http, status, "application/json; charset=utf-8", headers, body, len);
  atomic_fetch_add_explicit(&api->requests[r->route][status_slot(status)], 1, memory_order_relaxed);
  hist_record(&api->latency_ns, time_mono_ns() - r->started_ns);
  req_free(r);
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
  finish_json(r, status, status == 503 || status == 429 ? "Retry-After: 1\r\n" : NULL);
}

static void fail_err(api_req_t *r, const api_error_t *e) { fail(r, e->status, e->code, e->message); }

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
  jw_key(w, "currency");
  jw_lit(w, "\"");
  jw_lit(w, ledger_currency_get(a->currency)->code);
  jw_lit(w, "\"");
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

static void jw_uuid(jw_t *w, uint64_t no, int64_t created_ms) {
  ledger_uuid_t id = uuid_from_transfer(created_ms, no);
  char text[UUID_TEXT_BYTES];
  uuid_format(&id, text);
  jw_str(w, text, strlen(text));
}

static void render_transfer(api_t *api, jw_t *w, const engine_transfer_t *t, bool with_extra) {
  uint8_t x = exponent_of(t->currency);
  jw_open(w, '{');
  jw_key(w, "id");
  jw_uuid(w, t->no, t->created_ms);
  jw_key(w, "status");
  jw_lit(w, "\"");
  jw_lit(w, engine_status_name(t->status));
  jw_lit(w, "\"");
  jw_key(w, "kind");
  jw_lit(w, "\"");
  jw_lit(w, engine_kind_name(t->kind));
  jw_lit(w, "\"");
  jw_key(w, "debit_account_id");
  jw_u64(w, t->debit_account_id);
  jw_key(w, "credit_account_id");
  jw_u64(w, t->credit_account_id);
  jw_key(w, "amount");
  jw_money(w, t->amount_minor, x);
  jw_key(w, "currency");
  jw_lit(w, "\"");
  jw_lit(w, ledger_currency_get(t->currency)->code);
  jw_lit(w, "\"");
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
  if (with_extra) splice_extra(api, w, t->extra_pos, t->extra_len);
  jw_close(w, '}');
}

/* ------------------------------------------------------------ submit and complete */

static void api_done(engine_cmd_t *cmd) {
  api_req_t *r = cmd->done_arg;
  completion_stack_t *s = &r->api->done[r->http->thread_index];
  api_req_t *head = atomic_load_explicit(&s->head, memory_order_relaxed);
  do {
    r->next = head;
  } while (!atomic_compare_exchange_weak_explicit(&s->head, &head, r, memory_order_release,
                                                  memory_order_relaxed));
  if (head == NULL) http_loop_wake(r->api->loops[r->http->thread_index]); /* one wake per drain */
}

static void submit(api_req_t *r) {
  r->cmd.done = api_done;
  r->cmd.done_arg = r;
  r->cmd.principal_id = r->principal.user_id;
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
    default: return "rejected";
  }
}

static const char *cursor_prefix(route_t route) { return route == R_ACCOUNTS_LIST ? "a" : "h"; }

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
    case R_TRANSFER_VOID: render_transfer(api, w, &c->transfer, true); break;
    case R_TRANSFERS_BATCH: {
      jw_lit(w, "{\"results\":[");
      for (uint32_t i = 0; i < c->u.batch.item_count; i++) {
        const engine_item_result_t *it = &c->u.batch.results[i];
        if (i) jw_raw(w, ",", 1);
        jw_lit(w, "{\"index\":");
        jw_u64(w, i);
        if (it->result == ENGINE_OK) {
          jw_lit(w, ",\"status\":\"");
          jw_lit(w, engine_status_name(it->status));
          jw_lit(w, "\",\"id\":");
          jw_uuid(w, it->no, it->created_ms);
        } else {
          jw_lit(w, ",\"status\":\"error\",\"error\":{\"code\":\"");
          jw_lit(w, engine_result_code(it->result));
          jw_lit(w, "\"}");
        }
        jw_lit(w, "}");
      }
      jw_lit(w, "]}");
      break;
    }
    case R_ACCOUNTS_LIST: {
      const engine_account_t *rows = r->rows;
      jw_lit(w, "{\"data\":[");
      for (uint32_t i = 0; i < c->row_count; i++) {
        if (i) jw_raw(w, ",", 1);
        render_account(api, w, &rows[i]);
      }
      render_page_end(r, c->next_cursor);
      break;
    }
    case R_ACCOUNT_HISTORY: {
      const engine_history_row_t *rows = r->rows;
      jw_lit(w, "{\"data\":[");
      for (uint32_t i = 0; i < c->row_count; i++) {
        if (i) jw_raw(w, ",", 1);
        jw_lit(w, "{\"transfer\":");
        render_transfer(api, w, &rows[i].transfer, false);
        jw_lit(w, ",\"balance_after\":");
        jw_money(w, rows[i].balance_after_minor, exponent_of(rows[i].transfer.currency));
        jw_lit(w, "}");
      }
      render_page_end(r, c->next_cursor);
      break;
    }
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
    complete(fifo);
    atomic_fetch_sub_explicit(&api->in_flight, 1, memory_order_relaxed);
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
  /* Scoped to principal and route; the body hash covers the full path and the body. */
  char scope[64];
  int sn = snprintf(scope, sizeof scope, "%llu|%d|", (unsigned long long)r->principal.user_id, (int)r->route);
  ledger_hash128_t s = ledger_hash128(scope, (size_t)sn, 0);
  ledger_hash128_t k = ledger_hash128(key, n, s.lo ^ s.hi);
  if ((k.lo | k.hi) == 0) k.lo = 1; /* {0,0} marks an empty slot */
  ledger_hash128_t p = ledger_hash128(r->http->path, r->http->path_len, 7);
  r->cmd.has_idempotency = true;
  r->cmd.idempotency_key = k;
  r->cmd.body_hash = ledger_hash128(r->http->body, r->http->body_len, p.lo ^ p.hi);
  return true;
}

static cJSON *parse_body(api_req_t *r, api_error_t *e) {
  const http_request_t *h = r->http;
  size_t max = r->route == R_TRANSFERS_BATCH ? LEDGER_BODY_BYTES_MAX : API_BODY_BYTES_MAX;
  if (h->body_len > max) {
    api_err(e, 413, "payload_too_large", "the body is larger than %zu bytes", max);
    return NULL;
  }
  /* Content-Type is not checked: the body must be JSON whatever it says (curl -d sends a
   * form type by default; refusing that helps nobody). */
  /* cJSON turns \u0000 into a NUL that would silently cut a string short: refuse it. */
  if (memmem(h->body, h->body_len, "\\u0000", 6) != NULL) {
    api_err(e, 400, "invalid_json", "strings must not contain NUL (\\u0000)");
    return NULL;
  }
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(h->body, h->body_len, &end, false);
  if (!root) {
    api_err(e, 400, "invalid_json", "the body is not valid JSON");
    return NULL;
  }
  /* Only whitespace may follow the value. */
  for (const char *p = end; p && p < h->body + h->body_len; p++) {
    if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
      cJSON_Delete(root);
      api_err(e, 400, "invalid_json", "unexpected data after the JSON value");
      return NULL;
    }
  }
  return root;
}

/* One transfer object (single or batch item) into `in`; kind fixed by the route. */
static bool transfer_from_json(const cJSON *o, unsigned kind, engine_transfer_in_t *in, char *extra,
                               api_error_t *e) {
  static const char *const transfer_fields[] = {"debit_account_id", "credit_account_id", "amount", "currency",
                                                "pending", "timeout_s", "description", "metadata", NULL};
  static const char *const money_fields[] = {"account_id", "amount", "currency", "description", "metadata", NULL};
  memset(in, 0, sizeof *in);
  in->kind = (uint8_t)kind;
  if (!json_check_fields(o, kind == ENGINE_KIND_TRANSFER ? transfer_fields : money_fields, e)) return false;
  if (kind == ENGINE_KIND_TRANSFER) {
    if (!json_get_id(o, "debit_account_id", true, &in->debit_account_id, e) ||
        !json_get_id(o, "credit_account_id", true, &in->credit_account_id, e))
      return false;
    bool pending = false;
    if (!json_get_bool(o, "pending", &pending, e)) return false;
    in->pending = pending;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "timeout_s");
    if (t) {
      double d = t->valuedouble;
      if (!cJSON_IsNumber(t) || !isfinite(d) || d < 0 || d > ENGINE_PENDING_TIMEOUT_S_MAX || floor(d) != d) {
        api_err(e, 400, "invalid_request", "'timeout_s' must be an integer from 0 to %u", ENGINE_PENDING_TIMEOUT_S_MAX);
        return false;
      }
      if (d > 0 && !pending) {
        api_err(e, 400, "invalid_request", "'timeout_s' applies only to pending transfers");
        return false;
      }
      in->timeout_s = (uint32_t)d;
    }
  } else {
    uint64_t id;
    if (!json_get_id(o, "account_id", true, &id, e)) return false;
    if (kind == ENGINE_KIND_DEPOSIT) in->credit_account_id = id;
    else in->debit_account_id = id;
  }
  if (!json_get_amount(o, "amount", true, &in->amount_digits, &in->amount_scale, e)) return false;
  if (!json_get_currency(o, "currency", false, &in->currency, e)) return false;
  if (extra && !json_get_extra(o, extra, &in->extra_len, e)) return false;
  in->extra = extra;
  return true;
}

static bool build_transfer(api_req_t *r, const cJSON *body, unsigned kind, api_error_t *e) {
  r->cmd.kind = ENGINE_CMD_TRANSFER;
  return transfer_from_json(body, kind, &r->cmd.u.transfer, r->extra, e);
}

static bool build_batch(api_req_t *r, const cJSON *body, api_error_t *e) {
  static const char *const fields[] = {"transfers", "atomic", NULL};
  if (!json_check_fields(body, fields, e)) return false;
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(body, "transfers");
  bool atomic = false;
  if (!json_get_bool(body, "atomic", &atomic, e)) return false;
  if (!cJSON_IsArray(list)) {
    api_err(e, 400, "invalid_request", "'transfers' must be an array");
    return false;
  }
  int n = cJSON_GetArraySize(list);
  if (n < 1 || n > (int)API_BATCH_TRANSFERS_MAX) {
    api_err(e, 400, "invalid_request", "'transfers' must hold 1 to %u items", API_BATCH_TRANSFERS_MAX);
    return false;
  }
  r->items = calloc((size_t)n, sizeof *r->items);
  r->results = calloc((size_t)n, sizeof *r->results);
  /* Stored extras are never longer than their JSON in the body plus the member names. */
  size_t extra_cap = r->http->body_len + (size_t)n * 64u;
  r->batch_extra = malloc(extra_cap);
  if (!r->items || !r->results || !r->batch_extra) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  size_t extra_used = 0;
  int i = 0;
  for (const cJSON *it = list->child; it; it = it->next, i++) {
    char extra[LEDGER_EXTRA_BYTES_MAX];
    api_error_t item_err;
    if (!transfer_from_json(it, ENGINE_KIND_TRANSFER, &r->items[i], extra, &item_err)) {
      api_err(e, item_err.status == 422 ? 400 : item_err.status, item_err.code, "transfers[%d]: %s", i, item_err.message);
      return false;
    }
    uint32_t len = r->items[i].extra_len;
    if (extra_used + len > extra_cap) {
      api_err(e, 413, "payload_too_large", "descriptions and metadata too large in total");
      return false;
    }
    memcpy(r->batch_extra + extra_used, extra, len);
    r->items[i].extra = r->batch_extra + extra_used;
    extra_used += len;
  }
  r->cmd.kind = ENGINE_CMD_TRANSFER_BATCH;
  r->cmd.u.batch.items = r->items;
  r->cmd.u.batch.results = r->results;
  r->cmd.u.batch.item_count = (uint32_t)n;
  r->cmd.u.batch.atomic = atomic;
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
    strcpy(r->region, "default");
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

/* An account id in a path: digits (1..2^53-1) or the alias cash:<CUR>. */
static bool parse_account_ref(seg_t s, uint64_t *id) {
  if (s.n == 8 && memcmp(s.p, "cash:", 5) == 0) {
    ledger_currency_id_t c = ledger_currency_find(s.p + 5, 3);
    *id = c; /* system accounts have id == currency id (docs/api.md) */
    return c != 0;
  }
  if (s.n == 0 || s.n > 16) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < s.n; i++) {
    if (s.p[i] < '0' || s.p[i] > '9') return false;
    v = v * 10 + (uint64_t)(s.p[i] - '0');
  }
  *id = v;
  return v >= 1 && v < (1ull << 53);
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
#define PICK(g, p) (get && (g) != R_NOT_FOUND ? (g) : post && (p) != R_NOT_FOUND ? (p) : R_METHOD_NOT_ALLOWED)
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
    return R_NOT_FOUND;
  }
  if (n == 2 && seg_is(segs[1], "deposits")) return PICK(R_NOT_FOUND, R_DEPOSITS);
  if (n == 2 && seg_is(segs[1], "withdrawals")) return PICK(R_NOT_FOUND, R_WITHDRAWALS);
#undef PICK
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
  if (query_get(h->query, h->query_len, "currency", v, sizeof v, &too_long)) {
    c->u.list.currency = too_long ? 0 : ledger_currency_find(v, strlen(v));
    if (!c->u.list.currency) {
      api_err(e, 400, "invalid_currency", "'currency' must be a supported ISO 4217 code");
      return false;
    }
  }
  if (query_get(h->query, h->query_len, "region", r->region, sizeof r->region, &too_long)) {
    if (too_long || !valid_region(r->region)) {
      api_err(e, 400, "invalid_parameter", "'region' must be 1-%u characters of a-z, 0-9 and '-'", API_REGION_BYTES_MAX);
      return false;
    }
    c->u.list.region_name = r->region;
    c->u.list.region = engine_region_find(r->api->engine, r->region); /* 0: matches nothing */
    if (c->u.list.region == 0) c->u.list.region = UINT16_MAX;
  }
  r->rows = calloc(c->u.list.limit, sizeof(engine_account_t));
  if (!r->rows) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
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
  r->rows = calloc(c->u.history.limit, sizeof(engine_history_row_t));
  if (!r->rows) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  c->u.history.rows = r->rows;
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
  obs_header(&b, "ledger_engine_batches_total", "counter", "Durable batches written (one write + fdatasync each).");
  obs_value(&b, "ledger_engine_batches_total", "", es.batches_total);
  obs_header(&b, "ledger_engine_commands_total", "counter", "Commands applied by the engine.");
  obs_value(&b, "ledger_engine_commands_total", "", es.commands_total);
  obs_header(&b, "ledger_engine_transfers_total", "counter", "Ledger entries created.");
  obs_value(&b, "ledger_engine_transfers_total", "", es.transfers_total);
  obs_header(&b, "ledger_engine_batch_commands", "histogram", "Commands per engine batch.");
  obs_hist(&b, "ledger_engine_batch_commands", "", es.batch_commands, 1.0);
  obs_header(&b, "ledger_engine_fsync_seconds", "histogram", "Log write + fdatasync per batch.");
  obs_hist(&b, "ledger_engine_fsync_seconds", "", es.fsync_ns, 1e-9);
  obs_header(&b, "ledger_engine_queue_depth", "gauge", "Commands waiting for the engine.");
  obs_value(&b, "ledger_engine_queue_depth", "", es.queue_depth);
  obs_header(&b, "ledger_engine_queue_rejections_total", "counter", "Commands refused because the queue was full (503).");
  obs_value(&b, "ledger_engine_queue_rejections_total", "", es.rejected_full_total);
  obs_header(&b, "ledger_engine_last_seq", "gauge", "Sequence number of the newest durable batch.");
  obs_value(&b, "ledger_engine_last_seq", "", es.last_seq);
  obs_header(&b, "ledger_log_bytes", "gauge", "Size of the log.");
  obs_value(&b, "ledger_log_bytes", "", es.log_bytes);
  obs_header(&b, "ledger_accounts", "gauge", "Accounts, system accounts included.");
  obs_value(&b, "ledger_accounts", "", es.accounts);
  obs_header(&b, "ledger_requests_in_flight", "gauge", "Requests handed to the engine and not yet answered.");
  obs_value(&b, "ledger_requests_in_flight", "", atomic_load(&api->in_flight));
  if (api->http) {
    http_stats_t hs;
    http_server_stats(api->http, &hs);
    obs_header(&b, "ledger_http_connections_open", "gauge", "Open client connections.");
    obs_value(&b, "ledger_http_connections_open", "", hs.connections_open);
    obs_header(&b, "ledger_http_connections_rejected_total", "counter", "Connections closed at once: over the limit.");
    obs_value(&b, "ledger_http_connections_rejected_total", "", hs.connections_rejected_total);
    obs_header(&b, "ledger_http_protocol_errors_total", "counter", "Requests refused by the HTTP layer (400/413/414/431).");
    obs_value(&b, "ledger_http_protocol_errors_total", "", hs.protocol_errors_total);
    obs_header(&b, "ledger_http_timeouts_total", "counter", "Connections closed by header or idle timeouts.");
    obs_value(&b, "ledger_http_timeouts_total", "", hs.timeouts_total);
  }
  http_respond(r->http, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b.data, b.len);
  atomic_fetch_add_explicit(&api->requests[r->route][status_slot(200)], 1, memory_order_relaxed);
  free(b.data);
  req_free(r);
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
    case R_WITHDRAWALS: return true;
    default: return false;
  }
}

/* Builds the engine command for a route; false with *e set on a client error. */
static bool build(api_req_t *r, const seg_t *segs, api_error_t *e) {
  cJSON *body = NULL;
  bool ok = false;
  uint64_t id = 0;
  if (is_write_route(r->route)) {
    bool empty_ok = r->route == R_ACCOUNT_FREEZE || r->route == R_ACCOUNT_UNFREEZE || r->route == R_TRANSFER_VOID ||
                    r->route == R_TRANSFER_POST;
    if (!(empty_ok && r->http->body_len == 0)) {
      if (!(body = parse_body(r, e))) return false;
    }
    if (!idempotency(r, e)) goto out;
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
    case R_TRANSFERS_CREATE: ok = build_transfer(r, body, ENGINE_KIND_TRANSFER, e); break;
    case R_DEPOSITS: ok = build_transfer(r, body, ENGINE_KIND_DEPOSIT, e); break;
    case R_WITHDRAWALS: ok = build_transfer(r, body, ENGINE_KIND_WITHDRAWAL, e); break;
    case R_TRANSFERS_BATCH: ok = build_batch(r, body, e); break;
    case R_TRANSFER_GET:
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
      if (r->route == R_TRANSFER_GET) {
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
    default: LEDGER_ASSERT(!"unrouted");
  }
out:
  cJSON_Delete(body);
  return ok;
}

void api_handle(http_request_t *h, void *ctx) {
  api_t *api = ctx;
  api_req_t *r = calloc(1, sizeof *r);
  if (!r) {
    http_respond(h, 503, "application/json", "Retry-After: 1\r\n",
                 "{\"error\":{\"code\":\"overloaded\",\"message\":\"out of memory\"}}", 58);
    return;
  }
  r->api = api;
  r->http = h;
  r->started_ns = h->received_ns ? h->received_ns : time_mono_ns();
  /* Authentication is its own issue: until then every caller is the operator (docs/api.md). */
  r->principal = (api_principal_t){0, API_ROLE_ADMIN};
  seg_t segs[PATH_SEGMENTS_MAX];
  size_t nseg;
  r->route = route_of(h, segs, &nseg);
  switch (r->route) {
    case R_NOT_FOUND: fail(r, 404, "not_found", "no such route"); return;
    case R_METHOD_NOT_ALLOWED: fail(r, 405, "method_not_allowed", "this route does not take that method"); return;
    case R_HEALTHZ: handle_simple(r, false); return;
    case R_READYZ: handle_simple(r, true); return;
    case R_METRICS: handle_metrics(r); return;
    case R_TRANSFERS_SEARCH:
      fail(r, 501, "not_implemented", "transfer search is not built yet; use /v1/accounts/{id}/transfers");
      return;
    default: break;
  }
  api_error_t e;
  if (!build(r, segs, &e)) {
    fail_err(r, &e);
    return;
  }
  submit(r);
}

int api_create(engine_t *engine, api_t **out) {
  api_t *api = aligned_alloc(64, (sizeof(api_t) + 63) / 64 * 64);
  if (!api) return LEDGER_ENOMEM;
  memset(api, 0, sizeof *api);
  api->engine = engine;
  *out = api;
  return LEDGER_OK;
}

void api_set_http(api_t *api, http_server_t *http) { api->http = http; }

void api_destroy(api_t *api) {
  if (!api) return;
  for (unsigned i = 0; i < HTTP_THREADS_MAX; i++) free(api->out[i].w.buf);
  free(api);
}

uint64_t api_in_flight(const api_t *api) { return atomic_load(&api->in_flight); }
