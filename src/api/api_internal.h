/*
 * api_internal.h — private to src/api: the JSON writer, request context and helpers.
 * Net threads only (each request lives on its connection's thread).
 */
#ifndef LEDGER_API_INTERNAL_H
#define LEDGER_API_INTERNAL_H

#include <cjson/cJSON.h>

#include "api/api.h"

/* ---- JSON writer: append-only, bounded by API_RESPONSE_BYTES_MAX ---- */
typedef struct jw {
  char *buf;
  size_t len, cap;
  bool overflow;
} jw_t;
void jw_reset(jw_t *w);
void jw_raw(jw_t *w, const char *s, size_t n);
void jw_lit(jw_t *w, const char *s); /* NUL-terminated raw text */
/* Room for n more bytes (and the NUL): where to write them, NULL on overflow; then jw_wrote. */
char *jw_reserve(jw_t *w, size_t n);
void jw_wrote(jw_t *w, size_t n);
/* A quoted value written in place: room for up to cap bytes (and a NUL) between the quotes,
 * where the caller formats n <= cap bytes; then jw_quoted_end(w, n). NULL on overflow. */
char *jw_quoted_begin(jw_t *w, size_t cap);
void jw_quoted_end(jw_t *w, size_t n);
void jw_str(jw_t *w, const char *s, size_t n); /* quoted, escaped */
void jw_key(jw_t *w, const char *key);         /* "key": (with a leading comma if needed) */
void jw_key_str(jw_t *w, const char *key, const char *value); /* "key":"value" (escaped) */
void jw_u64(jw_t *w, uint64_t v);
void jw_money(jw_t *w, int64_t minor, uint8_t exponent); /* "12.50" as a string */
void jw_time(jw_t *w, int64_t ms);                     /* "2026-...Z" */
void jw_open(jw_t *w, char c);                          /* { or [ */
void jw_close(jw_t *w, char c);
void jw_comma_if(jw_t *w); /* a comma unless right after { or [ */

/* ---- input validation: each returns 0 or fills an error (code, message) ---- */
typedef struct api_error {
  int status;
  const char *code;
  char message[160];
  uint32_t retry_after_s; /* 429: seconds for Retry-After (0: none given) */
} api_error_t;
void api_err(api_error_t *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Fields allowed in an object; unknown or duplicate keys are errors. */
bool json_check_fields(const cJSON *obj, const char *const *allowed, api_error_t *e);
/* A required or optional account id: integer 1..2^53-1. */
bool json_get_id(const cJSON *obj, const char *name, bool required, uint64_t *out, api_error_t *e);
bool json_get_amount(const cJSON *obj, const char *name, bool required, int64_t *digits, uint8_t *scale,
                     api_error_t *e);
bool json_get_bool(const cJSON *obj, const char *name, bool *out, api_error_t *e);
bool json_get_currency(const cJSON *obj, const char *name, bool required, uint8_t *out, api_error_t *e);
/* description/metadata → compact JSON text `{"description":...,"metadata":{...}}` in buf
 * (cap LEDGER_EXTRA_BYTES_MAX); *len_out 0 when neither is present. */
bool json_get_extra(const cJSON *obj, char *buf, uint32_t *len_out, api_error_t *e);
/* One pass over an object's members for hot paths: each member must be one of `names`
 * (NULL-terminated), at most once; slots[i] gets member i or NULL. Same errors as
 * json_check_fields. The *_of functions below check one member found that way (NULL: absent)
 * exactly as the json_get_* ones above do by name. */
bool json_fields(const cJSON *obj, const char *const *names, const cJSON **slots, api_error_t *e);
/* A request body as JSON: one value, nothing but whitespace after it, no \u0000 in strings.
 * NULL with a 400 invalid_json in e otherwise. */
cJSON *json_parse_body(const char *body, size_t len, api_error_t *e);
bool json_id_of(const cJSON *v, const char *name, bool required, uint64_t *out, api_error_t *e);
bool json_amount_of(const cJSON *v, const char *name, bool required, int64_t *digits, uint8_t *scale,
                    api_error_t *e);
bool json_bool_of(const cJSON *v, const char *name, bool *out, api_error_t *e);
bool json_currency_of(const cJSON *v, const char *name, bool required, uint8_t *out, api_error_t *e);
bool json_extra_of(const cJSON *desc, const cJSON *meta, char *buf, uint32_t *len_out, api_error_t *e);

/* A transfer object (single or batch item) into `in`, kind fixed by the route (api_v1.c);
 * api_transfer_fields are its member names, NULL-terminated. */
extern const char *const api_transfer_fields[];
bool api_transfer_from_json(const cJSON *o, unsigned kind, engine_transfer_in_t *in, char *extra,
                            api_error_t *e);

/* The batch endpoint's fast path (api_batch.c): the common shape of a batch body parsed without
 * a cJSON tree, into items, zeroed results and the items' extras (all malloc'd; the caller
 * owns them). Returns false, with nothing allocated, for anything else: the caller then
 * parses the body with cJSON, which gives the same items, or the error. */
typedef struct api_batch {
  engine_transfer_in_t *items;
  engine_item_result_t *results;
  char *extra;
  uint32_t count;
  bool atomic;
} api_batch_t;
bool api_batch_parse_fast(const char *body, size_t len, api_batch_t *out);
/* The same from a parsed body (body_len: the body's bytes, for the extras' bound); false with
 * the error in e (and nothing allocated). */
bool api_batch_parse_json(const cJSON *body, size_t body_len, api_batch_t *out, api_error_t *e);
void api_batch_free(api_batch_t *b);
/* POST /v1/transfers: one transfer object of the same common shape, straight into *in (extra:
 * LEDGER_EXTRA_BYTES_MAX bytes). false = declined, nothing said about the body: parse it with
 * cJSON, whose path gives every error. */
bool api_transfer_parse_fast(const char *body, size_t len, engine_transfer_in_t *in, char *extra);
/* The cJSON paths from the raw body, as the server takes it (json_parse_body: the parse,
 * the NUL-escape check, nothing after the value; then the same checks): the reference the
 * unit test and the fuzz target hold the two fast paths to. false = refused. */
bool api_batch_parse_body(const char *body, size_t len, api_batch_t *out);
bool api_transfer_parse_body(const char *body, size_t len, engine_transfer_in_t *in, char *extra);

/* cJSON's allocations on a net thread come from a per-thread bump arena while a request is
 * being parsed (cJSON_InitHooks): a batch body makes ~50,000 nodes, and malloc/free of each
 * was the largest cost of the batch endpoint. Past the arena (JSON_ARENA_BYTES) it falls back
 * to malloc. Everything taken from the tree must be copied before json_arena_end(). */
#define JSON_ARENA_BYTES (8u * 1024u * 1024u)
void json_hooks_install(void); /* once, before any parse */
void json_arena_begin(void);
void json_arena_end(void);

/* Query strings: finds key, percent-decodes its value into buf. Returns false if absent. */
bool query_get(const char *query, size_t query_len, const char *key, char *buf, size_t cap, bool *too_long);

/* ---- the compat module (src/api/compat*.c), served through the v1 request machinery ----
 * All on the request's net thread. A compat handler either answers now (api_req_send,
 * api_req_limited, api_req_unavailable: each frees the request) or hands it to the engine
 * (api_req_submit) or the password pool (api_req_signin/signup) and answers from `next`/`then`
 * on the same net thread once the engine completed. `*api_req_ext(r)` is the handler's own
 * state: malloc'd by it, freed with the request. */
typedef struct api_req api_req_t;
bool compat_handle(api_req_t *r); /* false: not a compat path (the request is untouched) */
engine_cmd_t *api_req_cmd(api_req_t *r);
const http_request_t *api_req_http(const api_req_t *r);
bool api_req_compat_open(const api_req_t *r);
void **api_req_ext(api_req_t *r);
const char *api_req_token(const api_req_t *r); /* a new session token (sign-in), "" otherwise */
jw_t *api_req_writer(api_req_t *r);            /* this thread's response writer, reset */
/* A presented token's SHA-256, through this net thread's memo (auth_token_hash_memo). */
void api_req_token_hash(api_req_t *r, const char *text, size_t len, uint8_t hash_out[32]);
void api_req_send(api_req_t *r, int status, const char *headers); /* the writer's JSON; frees r */
void api_req_submit(api_req_t *r, void (*next)(api_req_t *r));   /* next != NULL */
uint32_t api_req_rate(api_req_t *r, api_rl_rule_t rule, const void *id, size_t len); /* 0 or Retry-After s */
void api_req_limited(api_req_t *r, uint32_t retry_s);                             /* 429, v1 body */
void api_req_unavailable(api_req_t *r, const char *code, const char *message);   /* 503, v1 body */
/* The v1 sign-in / sign-up paths (same rate limits, Argon2id pool, audit events); `then` runs
 * when the engine has answered the final command: SESSION_CREATE or SIGNIN_FAILED (sign-in),
 * USER_CREATE (sign-up). False with *e set on a client error (nothing submitted). */
bool api_req_signin(api_req_t *r, const char *username, const char *password, void (*then)(api_req_t *r),
                    api_error_t *e);
bool api_req_signup(api_req_t *r, const char *username, const char *email, const char *password,
                    void (*then)(api_req_t *r), api_error_t *e);

#endif
