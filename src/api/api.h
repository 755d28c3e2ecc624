/*
 * api.h — the v1 HTTP API: JSON in, engine commands, JSON out.
 *
 * Handlers never see the wire (they get http_request_t) and never touch storage (they build
 * engine_cmd_t and read the results the engine copied into it). A write is answered from
 * the engine's completion, after its batch is durable: the committer thread pushes completed
 * commands onto the owning net thread's completion stack and wakes that loop, which renders
 * the response on its own thread.
 *
 * Principals: a request carries a bearer credential (session token or API key); the net
 * thread hashes it and the engine resolves it, checks the role and, for customers, the
 * ownership of every account touched (docs/security.md). --no-auth makes every request the
 * operator: for local use and benchmarks only.
 */
#ifndef LEDGER_API_H
#define LEDGER_API_H

#include "engine/engine.h"
#include "http/http.h"

typedef struct api api_t;
struct auth_pool;

/* Rate-limit rules (token buckets; docs/security.md). Scopes: per client address, and per
 * credential (signin: per username). Classes: signin (POST /v1/sessions and /v1/users),
 * write (every other POST and DELETE), read (GET). */
typedef enum {
  API_RL_SIGNIN_ADDR = 0,
  API_RL_SIGNIN_USER,
  API_RL_WRITE_ADDR,
  API_RL_WRITE_CRED,
  API_RL_READ_ADDR,
  API_RL_READ_CRED,
  API_RL_COUNT
} api_rl_rule_t;
typedef struct api_rate_rule {
  double rate_per_s;
  double burst;
} api_rate_rule_t;
extern const char *const api_rl_rule_names[API_RL_COUNT]; /* "signin.addr", ... */
void api_rate_defaults(api_rate_rule_t rules[API_RL_COUNT]);

typedef struct api_config {
  engine_t *engine;
  bool rate_limits_off;              /* benchmarks only */
  api_rate_rule_t rates[API_RL_COUNT];
  struct auth_pool *hash_pool; /* Argon2id workers (src/auth) */
  struct auth_pool *search_pool; /* text searches' reads (AUTH_JOB_CALL); NULL: hash_pool */
  bool no_auth;                /* every request runs as the operator (local use, benchmarks) */
  bool compat;      /* serve the seed systems' routes (docs/compat.md) */
  bool compat_open; /* with compat: the banking-API and Flask routes need no credential (loopback only) */
  uint32_t session_ttl_s;
  const char *rules_path;  /* --config FILE: risk rules (docs/rules.md); NULL = built-in */
  int64_t time_offset_ms;  /* tests only: the engine's clock offset (for "today") */
} api_config_t;

/* Reads and parses a rules file (NULL: the built-in rules). Returns 0, or LEDGER_EINVAL /
 * LEDGER_EIO with a one-line reason in err ("FILE: line N: ..."). Any thread; blocking I/O. */
LEDGER_MUST_USE int api_rules_read(const char *path, engine_rules_t *out, char *err, size_t cap);
/* Hands a rule set to the engine as the operator and waits (main thread: start-up, SIGHUP).
 * Returns 0 with the version in force and whether it changed, else an error. */
LEDGER_MUST_USE int api_rules_apply(engine_t *engine, const engine_rules_t *rules, uint32_t *version, bool *changed);

LEDGER_MUST_USE int api_create(const api_config_t *config, api_t **out);
/* Route table, for `ledgerd --list-routes` and the authorization-matrix test: one line per
 * route, "METHOD PATH AUTH" (AUTH: none | any | ...). */
void api_print_routes(void *file);
/* The same for the compatibility routes (ledgerd --compat --list-routes). */
void api_print_compat_routes(void *file);
/* On a ledger with no users and no API keys: creates the admin API key "bootstrap" and writes
 * it to DATA_DIR/bootstrap-admin-key (0600); path_out gets that path ("" when nothing was
 * needed). Main thread, after engine_open. */
LEDGER_MUST_USE int api_bootstrap(engine_t *engine, const char *data_dir, char *path_out, size_t path_cap);
/* Set once the HTTP server exists, for its counters in /metrics. */
void api_set_http(api_t *api, http_server_t *http);
void api_destroy(api_t *api);
/* http_config_t.handler / on_thread_start, with ctx = the api_t. */
void api_handle(http_request_t *req, void *ctx);
/* http_config_t.body_fits, with ctx = the api_t: a declared body length a route takes. Bodies
 * up to API_BODY_BYTES_MAX (64 KiB) fit every route; POST /v1/transfers/batch takes up to
 * LEDGER_BODY_BYTES_MAX (2 MiB). So a client is told 413 before it sends a body that its
 * route would refuse once read (with Expect: 100-continue, before it sends a byte of it).
 * With --compat, a path no v1 route has is let through: the compat routes answer their own
 * 413, in their seed systems' error shapes, once the body is read. */
bool api_body_fits(http_method_t method, const char *path, size_t path_len, uint64_t length, void *ctx);
void api_thread_start(http_loop_t *loop, unsigned thread_index, void *ctx);
/* Requests handed to the engine and not yet answered. */
uint64_t api_in_flight(const api_t *api);

#endif
