/*
 * compat.c — the compatibility routes (--compat; docs/compat.md): the documented APIs of the
 * five seed systems (API.md "Compatibility routes"), served on the v1 engine.
 *
 * Why here and this way: clients of those systems must work against ledgerd unchanged, but
 * there must be no second ledger and no special case in the engine. Every route below reads
 * its request, builds ordinary engine commands (ACCOUNT_CREATE, ACCOUNT_GET, TRANSFER with
 * kind deposit/withdrawal/transfer, HISTORY, and the v1 sign-up/sign-in path), submits them
 * through api_v1.c's machinery (api_internal.h), and renders the engine's answer in the
 * original system's shape. Amounts are JSON numbers read from their text (compat_json.c).
 *
 * The one place where a compat route does something a v1 customer cannot: a customer's
 * deposit into its own account (microfin /api/deposit/, banking-API positive amounts). The
 * engine forbids customer deposits (they create money), so the route first reads the account
 * AS THE CALLER (ACCOUNT_GET: the engine answers 404 unless the caller owns it, or is an
 * admin/auditor) and refuses anyone but the owner or an admin, then records the deposit as
 * the operator (ENGINE_AUTH_TRUSTED, principal 0) with metadata naming who asked. That is
 * why --compat is opt-in (docs/security.md).
 *
 * Threads: net threads only; each request's steps run on its connection's thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "api/compat.h"
#include "auth/auth.h"

/* ------------------------------------------------------------ routes */

typedef enum { FAM_MICROFIN, FAM_BANKING, FAM_FLASK } family_t;

typedef enum {
  C_NONE = 0,
  C_SIGNUP,
  C_SIGNIN,
  C_ACCOUNT_GEN,
  C_DEPOSIT,
  C_WITHDRAW,
  C_TRANSFER,
  C_USER_GET,
  C_USER_BALANCE,
  C_PROCESS_TXN,
  C_TXN,
  C_BALANCE,
  C_TRANSACTIONS,
  C_SUSPICIOUS,
} croute_t;

typedef struct route_info {
  const char *path;      /* as listed (documented form) */
  const char *methods[2];
  uint8_t family;
  bool open;             /* no credential needed at all (sign-up, sign-in) */
  bool open_with_flag;   /* no credential needed under --compat-open */
  bool write;
} route_info_t;

static const route_info_t routes[] = {
    [C_SIGNUP] = {"/api/signup/", {"POST", NULL}, FAM_MICROFIN, true, false, true},
    [C_SIGNIN] = {"/api/signin/", {"POST", NULL}, FAM_MICROFIN, true, false, true},
    [C_ACCOUNT_GEN] = {"/api/accountGeneration/", {"GET", "POST"}, FAM_MICROFIN, false, false, true},
    [C_DEPOSIT] = {"/api/deposit/", {"POST", NULL}, FAM_MICROFIN, false, false, true},
    [C_WITHDRAW] = {"/api/withdraw/", {"POST", NULL}, FAM_MICROFIN, false, false, true},
    [C_TRANSFER] = {"/api/transfer/", {"POST", NULL}, FAM_MICROFIN, false, false, true},
    [C_USER_GET] = {"/api/users/{id}", {"GET", NULL}, FAM_BANKING, false, true, false},
    [C_USER_BALANCE] = {"/api/users/{id}/balance", {"PUT", NULL}, FAM_BANKING, false, true, true},
    [C_PROCESS_TXN] = {"/process_transaction", {"POST", NULL}, FAM_FLASK, false, true, true},
    [C_TXN] = {"/transaction", {"POST", NULL}, FAM_FLASK, false, true, true},
    [C_BALANCE] = {"/balance/{id}", {"GET", NULL}, FAM_FLASK, false, true, false},
    [C_TRANSACTIONS] = {"/transactions", {"GET", NULL}, FAM_FLASK, false, true, false},
    [C_SUSPICIOUS] = {"/suspicious", {"GET", NULL}, FAM_FLASK, false, true, false},
};
#define C_ROUTES LEDGER_ARRAY_LEN(routes)

void api_print_compat_routes(void *file) {
  for (unsigned rt = 1; rt < C_ROUTES; rt++)
    for (unsigned m = 0; m < 2 && routes[rt].methods[m]; m++)
      fprintf(file, "%s %s %s\n", routes[rt].methods[m], routes[rt].path, routes[rt].open ? "open" : "credential");
}

#define COMPAT_HISTORY_LIMIT_DEFAULT 100u
#define COMPAT_NAME_BYTES_MAX 128u

/* One compat request's state (*api_req_ext): plain data, freed with the request. */
typedef struct compat_req {
  croute_t route;
  uint8_t family;
  uint64_t account_id;   /* the account named by the path or body */
  uint64_t account2_id;  /* transfer: the credit account */
  engine_transfer_in_t in; /* the money command, kept while the ownership check runs */
  bool has_key;          /* an Idempotency-Key was sent */
  char name[COMPAT_NAME_BYTES_MAX + 1]; /* microfin sign-up: echoed, not stored */
  char extra[192];       /* deposit on someone's behalf: {"metadata":{...}} */
  engine_history_row_t rows[]; /* GET /transactions */
} compat_req_t;

static compat_req_t *creq(api_req_t *r) { return *api_req_ext(r); }

static bool path_is(const char *p, size_t n, const char *lit) {
  size_t l = strlen(lit);
  return n == l && memcmp(p, lit, l) == 0;
}

/* Digits after `prefix`, up to the end or "/tail"; false if the shape does not fit. */
static bool path_id(const char *p, size_t n, const char *prefix, const char *tail, uint64_t *id, bool *bad_id) {
  size_t pl = strlen(prefix), tl = tail ? strlen(tail) : 0;
  if (n <= pl || memcmp(p, prefix, pl) != 0) return false;
  const char *s = p + pl;
  size_t sl = n - pl;
  const char *slash = memchr(s, '/', sl);
  if (tail == NULL ? slash != NULL : (slash == NULL || (size_t)(s + sl - slash) != tl || memcmp(slash, tail, tl) != 0))
    return false;
  size_t dl = slash ? (size_t)(slash - s) : sl;
  uint64_t v = 0;
  *bad_id = dl == 0 || dl > 16;
  for (size_t i = 0; !*bad_id && i < dl; i++) {
    *bad_id = s[i] < '0' || s[i] > '9';
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *bad_id = *bad_id || v < 1 || v >= (1ull << 53);
  *id = *bad_id ? 0 : v;
  return true;
}

/* The compat route of a path (a trailing slash is optional everywhere), or C_NONE. */
static croute_t match(const http_request_t *h, uint64_t *id, bool *bad_id) {
  const char *p = h->path;
  size_t n = h->path_len;
  if (n > 1 && p[n - 1] == '/') n--;
  *bad_id = false;
  if (path_is(p, n, "/api/signup")) return C_SIGNUP;
  if (path_is(p, n, "/api/signin")) return C_SIGNIN;
  if (path_is(p, n, "/api/accountGeneration")) return C_ACCOUNT_GEN;
  if (path_is(p, n, "/api/deposit")) return C_DEPOSIT;
  if (path_is(p, n, "/api/withdraw")) return C_WITHDRAW;
  if (path_is(p, n, "/api/transfer")) return C_TRANSFER;
  if (path_is(p, n, "/process_transaction")) return C_PROCESS_TXN;
  if (path_is(p, n, "/transaction")) return C_TXN;
  if (path_is(p, n, "/transactions")) return C_TRANSACTIONS;
  if (path_is(p, n, "/suspicious")) return C_SUSPICIOUS;
  if (path_id(p, n, "/api/users/", NULL, id, bad_id)) return C_USER_GET;
  if (path_id(p, n, "/api/users/", "/balance", id, bad_id)) return C_USER_BALANCE;
  if (path_id(p, n, "/balance/", NULL, id, bad_id)) return C_BALANCE;
  return C_NONE;
}

static bool method_ok(croute_t rt, http_method_t m) {
  for (unsigned i = 0; i < 2 && routes[rt].methods[i]; i++) {
    const char *want = routes[rt].methods[i];
    if ((strcmp(want, "GET") == 0 && (m == HTTP_METHOD_GET || m == HTTP_METHOD_HEAD)) ||
        (strcmp(want, "POST") == 0 && m == HTTP_METHOD_POST) || (strcmp(want, "PUT") == 0 && m == HTTP_METHOD_PUT))
      return true;
  }
  return false;
}

/* ------------------------------------------------------------ answers */

static void jw_amount(jw_t *w, int64_t minor, uint8_t currency) {
  const ledger_currency_t *c = ledger_currency_get(currency);
  char b[MONEY_TEXT_BYTES_MAX];
  size_t n = money_format(minor, c ? c->exponent : 0, b);
  jw_raw(w, b, n); /* a JSON number with the currency's fraction digits, exact */
}

static void jw_uuid_of(jw_t *w, const engine_transfer_t *t) {
  ledger_uuid_t id = uuid_from_transfer(t->created_ms, t->no);
  char text[UUID_TEXT_BYTES];
  uuid_format(&id, text);
  jw_str(w, text, strlen(text));
}

static void jw_account_number(jw_t *w, uint64_t id) {
  char num[COMPAT_ACCOUNT_NUMBER_DIGITS + 1];
  compat_account_number(id, num);
  jw_str(w, num, strlen(num));
}

/* An error in the family's own shape; 401 adds WWW-Authenticate, 503 Retry-After. */
static void compat_fail(api_req_t *r, uint8_t family, int status, const char *message) {
  LEDGER_ASSERT(status >= 400 && status < 600 && message != NULL);
  jw_t *w = api_req_writer(r);
  if (family == FAM_MICROFIN) {
    jw_lit(w, "{\"message\":");
    jw_str(w, message, strlen(message));
    jw_lit(w, "}");
  } else if (family == FAM_BANKING) {
    jw_lit(w, "{\"success\":false,\"error\":{\"message\":");
    jw_str(w, message, strlen(message));
    jw_lit(w, ",\"code\":");
    jw_u64(w, (uint64_t)status);
    jw_lit(w, "}}");
  } else {
    jw_lit(w, "{\"error\":");
    jw_str(w, message, strlen(message));
    jw_lit(w, "}");
  }
  api_req_send(r, status,
               status == 401   ? "WWW-Authenticate: Bearer\r\n"
               : status == 503 ? "Retry-After: 1\r\n"
                               : NULL);
}

static void fail_e(api_req_t *r, uint8_t family, const api_error_t *e) {
  if (e->status == 429 && e->retry_after_s) api_req_limited(r, e->retry_after_s);
  else compat_fail(r, family, e->status, e->message);
}

/* Business rejections are 400 here (the originals had no 422; one answered 500 for
 * insufficient funds): docs/compat.md. */
static int result_status(int res) {
  switch (res) {
    case ENGINE_R_ACCOUNT_NOT_FOUND:
    case ENGINE_R_TRANSFER_NOT_FOUND:
    case ENGINE_R_USER_NOT_FOUND: return 404;
    case ENGINE_R_UNAUTHENTICATED: return 401;
    case ENGINE_R_FORBIDDEN: return 403;
    case ENGINE_R_USERNAME_TAKEN:
    case ENGINE_R_IDEMPOTENCY_CONFLICT:
    case ENGINE_R_IDEMPOTENCY_EXPIRED: return 409;
    case ENGINE_R_CAPACITY_EXHAUSTED: return 503;
    default: return 400;
  }
}

static const char *result_message(int res, uint8_t family) {
  switch (res) {
    case ENGINE_R_ACCOUNT_NOT_FOUND: return family == FAM_BANKING ? "User not found" : "Account not found";
    case ENGINE_R_TRANSFER_NOT_FOUND: return "Transaction not found";
    case ENGINE_R_INSUFFICIENT_FUNDS: return "Insufficient funds";
    case ENGINE_R_CURRENCY_MISMATCH: return "The accounts hold different currencies";
    case ENGINE_R_SAME_ACCOUNT: return "Sender and receiver must differ";
    case ENGINE_R_ACCOUNT_FROZEN: return "The account is frozen";
    case ENGINE_R_LIMIT_EXCEEDED: return "A balance limit would be exceeded";
    case ENGINE_R_INVALID_AMOUNT: return "The amount has more decimal places than the currency allows, or is too large";
    case ENGINE_R_UNAUTHENTICATED: return "Unauthorized";
    case ENGINE_R_FORBIDDEN: return "Forbidden";
    case ENGINE_R_USERNAME_TAKEN: return "User already exists";
    case ENGINE_R_IDEMPOTENCY_CONFLICT: return "This Idempotency-Key was used with another request";
    case ENGINE_R_IDEMPOTENCY_EXPIRED: return "The stored outcome of this Idempotency-Key is no longer available";
    case ENGINE_R_CAPACITY_EXHAUSTED: return "The ledger reached a capacity limit";
    default: return "Rejected";
  }
}

/* The engine's answer when it is not a success: false after answering. */
static bool engine_ok(api_req_t *r) {
  const engine_cmd_t *c = api_req_cmd(r);
  LEDGER_ASSERT(creq(r) != NULL && c->result < ENGINE_R_COUNT);
  uint8_t family = creq(r)->family;
  if (c->result < 0) {
    compat_fail(r, family, 503, "The ledger stopped; the outcome is unknown: retry with the same Idempotency-Key");
    return false;
  }
  if (c->result == ENGINE_OK) return true;
  compat_fail(r, family, result_status(c->result), result_message(c->result, family));
  return false;
}

static const char *replay_header(api_req_t *r) {
  return api_req_cmd(r)->replayed ? "Idempotent-Replayed: true\r\n" : NULL;
}

/* ------------------------------------------------------------ credentials */

/* A token: 1..AUTH_TOKEN_TEXT_BYTES-1 visible ASCII characters (no ';' in a cookie). */
static bool take_token(api_req_t *r, const char *t, size_t n, engine_cmd_t *c) {
  if (n == 0 || n >= AUTH_TOKEN_TEXT_BYTES) return false;
  for (size_t i = 0; i < n; i++)
    if (t[i] <= 0x20 || t[i] >= 0x7f || t[i] == ';') return false;
  api_req_token_hash(r, t, n, c->credential_hash);
  c->auth_mode = ENGINE_AUTH_BEARER;
  return true;
}

/* The sessionId cookie's value, or NULL. */
static const char *cookie_session(const char *cookie, size_t *len) {
  for (const char *p = cookie; p && *p;) {
    while (*p == ' ' || *p == ';') p++;
    const char *end = strchr(p, ';');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n > 10 && memcmp(p, "sessionId=", 10) == 0) {
      *len = n - 10;
      while (*len > 0 && p[10 + *len - 1] == ' ') (*len)--;
      return p + 10;
    }
    p = end;
  }
  return NULL;
}

/* Sets how the engine learns who this is. False: a credential is needed and none usable came. */
static bool authenticate(api_req_t *r, croute_t rt) {
  engine_cmd_t *c = api_req_cmd(r);
  const http_request_t *h = api_req_http(r);
  c->auth_mode = ENGINE_AUTH_TRUSTED;
  c->principal_id = ENGINE_PRINCIPAL_ANONYMOUS;
  if (routes[rt].open) return true;
  if (routes[rt].open_with_flag && api_req_compat_open(r)) {
    c->principal_id = 0; /* the operator (--compat-open: loopback only) */
    return true;
  }
  const char *a = h->authorization;
  if (a && strncasecmp(a, "Bearer ", 7) == 0) return take_token(r, a + 7, strlen(a + 7), c);
  if (a) return false;
  size_t n = 0;
  const char *t = routes[rt].family == FAM_MICROFIN && h->cookie ? cookie_session(h->cookie, &n) : NULL;
  return t && take_token(r, t, n, c);
}

/* Per-address and per-credential limits of the route's class (docs/security.md). */
static uint32_t rate_check(api_req_t *r, croute_t rt) {
  engine_cmd_t *c = api_req_cmd(r);
  const char *addr = c->client_addr;
  bool signin = rt == C_SIGNUP || rt == C_SIGNIN;
  bool read = !routes[rt].write;
  uint32_t wait = api_req_rate(r, signin ? API_RL_SIGNIN_ADDR : read ? API_RL_READ_ADDR : API_RL_WRITE_ADDR, addr,
                               strlen(addr));
  if (wait == 0 && !signin && c->auth_mode == ENGINE_AUTH_BEARER)
    wait = api_req_rate(r, read ? API_RL_READ_CRED : API_RL_WRITE_CRED, c->credential_hash, 32);
  return wait;
}

/* Idempotency-Key (docs/api.md rules), scoped to the compat route and `salt` (the principal a
 * deposit is recorded for; 0 when the engine mixes the caller in itself). */
static bool idempotency(api_req_t *r, uint64_t salt, api_error_t *e) {
  const http_request_t *h = api_req_http(r);
  const char *key = h->idempotency_key;
  if (!key) return true;
  size_t n = strlen(key);
  bool ok = n >= 1 && n <= API_IDEMPOTENCY_KEY_BYTES_MAX;
  for (size_t i = 0; ok && i < n; i++) ok = key[i] >= 0x21 && key[i] <= 0x7e;
  if (!ok) {
    api_err(e, 400, "invalid_idempotency_key", "Idempotency-Key must be 1-%u printable ASCII characters",
            API_IDEMPOTENCY_KEY_BYTES_MAX);
    return false;
  }
  char scope[64];
  int sn = snprintf(scope, sizeof scope, "compat|%d|%llu|", (int)creq(r)->route, (unsigned long long)salt);
  ledger_hash128_t s = ledger_hash128(scope, (size_t)sn, 0);
  ledger_hash128_t k = ledger_hash128(key, n, s.lo ^ s.hi);
  if ((k.lo | k.hi) == 0) k.lo = 1; /* {0,0} marks an empty slot */
  ledger_hash128_t p = ledger_hash128(h->path, h->path_len, 7);
  engine_cmd_t *c = api_req_cmd(r);
  c->has_idempotency = true;
  c->idempotency_key = k;
  c->body_hash = ledger_hash128(h->body, h->body_len, p.lo ^ p.hi);
  return true;
}

/* ------------------------------------------------------------ microfin users */

static void signup_done(api_req_t *r) {
  if (!engine_ok(r)) return;
  const engine_user_t *u = &api_req_cmd(r)->user;
  jw_t *w = api_req_writer(r);
  jw_lit(w, "{\"message\":\"User registered successfully\",\"user\":{\"id\":");
  jw_u64(w, u->id);
  jw_lit(w, ",\"name\":");
  jw_str(w, creq(r)->name, strlen(creq(r)->name));
  jw_lit(w, ",\"email\":");
  jw_str(w, u->username, strlen(u->username));
  jw_lit(w, "}}");
  api_req_send(r, 201, NULL);
}

static void signin_done(api_req_t *r) {
  const engine_cmd_t *c = api_req_cmd(r);
  if (c->kind != ENGINE_CMD_SESSION_CREATE || c->result != ENGINE_OK) {
    if (c->result < 0) engine_ok(r);
    else compat_fail(r, FAM_MICROFIN, 401, "Invalid email or password");
    return;
  }
  const char *token = api_req_token(r);
  char cookie[AUTH_TOKEN_TEXT_BYTES + 80];
  snprintf(cookie, sizeof cookie, "Set-Cookie: sessionId=%s; HttpOnly; SameSite=Strict; Path=/\r\n", token);
  jw_t *w = api_req_writer(r);
  jw_lit(w, "{\"message\":\"Signed in successfully\",\"userId\":");
  jw_u64(w, c->user.id);
  jw_lit(w, ",\"expiresAt\":");
  jw_time(w, c->u.auth.expires_ms);
  jw_lit(w, "}");
  api_req_send(r, 200, cookie);
  sodium_memzero(cookie, sizeof cookie);
}

/* Microfin emails are v1 usernames: lower-cased, 3-64 bytes of [a-z0-9._@-] with an '@'. */
static bool email_username(const compat_body_t *b, char out[ENGINE_USERNAME_BYTES_MAX + 1], api_error_t *e) {
  const char *email;
  if (!compat_get_string(b, "email", 3, ENGINE_USERNAME_BYTES_MAX, &email, e)) return false;
  size_t n = strlen(email);
  bool ok = strchr(email, '@') != NULL;
  for (size_t i = 0; ok && i < n; i++) {
    char ch = email[i] >= 'A' && email[i] <= 'Z' ? (char)(email[i] - 'A' + 'a') : email[i];
    ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-' || ch == '@';
    out[i] = ch;
  }
  out[n] = '\0';
  if (!ok) api_err(e, 400, "invalid_request", "'email' must be an address of letters, digits and . _ - @ (at most 64)");
  return ok;
}

static bool build_signup(api_req_t *r, const compat_body_t *b, api_error_t *e) {
  char username[ENGINE_USERNAME_BYTES_MAX + 1];
  const char *name, *password;
  if (!compat_get_string(b, "name", 1, COMPAT_NAME_BYTES_MAX, &name, e) || !email_username(b, username, e) ||
      !compat_get_string(b, "password", AUTH_PASSWORD_BYTES_MIN, AUTH_PASSWORD_BYTES_MAX, &password, e))
    return false;
  snprintf(creq(r)->name, sizeof creq(r)->name, "%s", name);
  return api_req_signup(r, username, username, password, signup_done, e);
}

static bool build_signin(api_req_t *r, const compat_body_t *b, api_error_t *e) {
  char username[ENGINE_USERNAME_BYTES_MAX + 1];
  const char *password;
  if (!email_username(b, username, e) || !compat_get_string(b, "password", 1, AUTH_PASSWORD_BYTES_MAX, &password, e))
    return false;
  return api_req_signin(r, username, password, signin_done, e);
}

/* ------------------------------------------------------------ money */

static void account_created(api_req_t *r) {
  if (!engine_ok(r)) return;
  const engine_account_t *a = &api_req_cmd(r)->account;
  jw_t *w = api_req_writer(r);
  jw_lit(w, "{\"message\":\"Account created successfully\",\"accountNumber\":");
  jw_account_number(w, a->id);
  jw_lit(w, ",\"balance\":");
  jw_amount(w, a->balance_minor, a->currency);
  jw_lit(w, "}");
  api_req_send(r, 201, replay_header(r));
}

static void render_microfin_money(api_req_t *r, const engine_transfer_t *t) {
  compat_req_t *q = creq(r);
  jw_t *w = api_req_writer(r);
  const char *msg = q->route == C_DEPOSIT    ? "Deposit successful"
                    : q->route == C_WITHDRAW ? "Withdrawal successful"
                                             : "Transfer successful";
  jw_lit(w, "{\"message\":");
  jw_str(w, msg, strlen(msg));
  if (q->route == C_TRANSFER) {
    jw_lit(w, ",\"senderAccountNumber\":");
    jw_account_number(w, t->debit_account_id);
    jw_lit(w, ",\"receiverAccountNumber\":");
    jw_account_number(w, t->credit_account_id);
  } else {
    jw_lit(w, ",\"accountNumber\":");
    jw_account_number(w, q->route == C_DEPOSIT ? t->credit_account_id : t->debit_account_id);
  }
  jw_lit(w, ",\"amount\":");
  jw_amount(w, t->amount_minor, t->currency);
  jw_lit(w, ",\"balance\":"); /* the caller's account after the movement */
  jw_amount(w, q->route == C_DEPOSIT ? t->credit_balance_after : t->debit_balance_after, t->currency);
  jw_lit(w, ",\"transactionId\":");
  jw_uuid_of(w, t);
  jw_lit(w, "}");
  api_req_send(r, 200, replay_header(r));
}

static const char *flask_status(const engine_transfer_t *t);
static void money_done(api_req_t *r) {
  if (!engine_ok(r)) return;
  compat_req_t *q = creq(r);
  const engine_transfer_t *t = &api_req_cmd(r)->transfer;
  jw_t *w;
  switch (q->family) {
    case FAM_MICROFIN: render_microfin_money(r, t); return;
    case FAM_BANKING: {
      bool deposit = t->kind == ENGINE_KIND_DEPOSIT;
      w = api_req_writer(r);
      jw_lit(w, "{\"success\":true,\"data\":{\"id\":");
      jw_u64(w, deposit ? t->credit_account_id : t->debit_account_id);
      jw_lit(w, ",\"balance\":");
      jw_amount(w, deposit ? t->credit_balance_after : t->debit_balance_after, t->currency);
      jw_lit(w, ",\"updatedAt\":");
      jw_time(w, t->created_ms);
      jw_lit(w, "},\"message\":\"Balance updated successfully\"}");
      api_req_send(r, 200, replay_header(r));
      return;
    }
    default:
      w = api_req_writer(r);
      jw_lit(w, "{\"txn_id\":");
      jw_uuid_of(w, t);
      jw_lit(w, ",\"status\":\"");
      jw_lit(w, flask_status(t)); /* "pending" when a risk rule held it (docs/rules.md) */
      jw_lit(w, "\"}");
      api_req_send(r, 200, replay_header(r));
      return;
  }
}

/* Deposit step 2: the caller may see the account (the engine answered ACCOUNT_GET as the
 * caller); only its owner (a customer) or an admin may add money to it. Then the deposit is
 * recorded as the operator, keyed (idempotency) to the caller. */
static void deposit_after_check(api_req_t *r) {
  compat_req_t *q = creq(r);
  engine_cmd_t *c = api_req_cmd(r);
  /* The role first: an auditor gets 403 whether or not the account exists (as on v1). */
  if (c->result >= 0 && c->result != ENGINE_R_UNAUTHENTICATED && c->role != ENGINE_ROLE_CUSTOMER &&
      c->role != ENGINE_ROLE_ADMIN) {
    compat_fail(r, q->family, 403, "Forbidden");
    return;
  }
  if (!engine_ok(r)) return;
  uint64_t caller = c->principal_id;
  LEDGER_ASSERT(c->kind == ENGINE_CMD_ACCOUNT_GET && q->in.kind == ENGINE_KIND_DEPOSIT);
  int n = snprintf(q->extra, sizeof q->extra,
                   "{\"metadata\":{\"compat_route\":\"%s\",\"requested_by\":\"%s:%llu\"}}",
                   q->family == FAM_MICROFIN ? "microfin.deposit" : "banking.balance",
                   (caller & ENGINE_PRINCIPAL_KEY_BIT) ? "api_key" : "user",
                   (unsigned long long)(caller & ~ENGINE_PRINCIPAL_KEY_BIT));
  LEDGER_ASSERT(n > 0 && (size_t)n < sizeof q->extra);
  char addr[sizeof c->client_addr];
  memcpy(addr, c->client_addr, sizeof addr);
  memset(c, 0, sizeof *c);
  memcpy(c->client_addr, addr, sizeof addr);
  c->auth_mode = ENGINE_AUTH_TRUSTED;
  c->principal_id = 0; /* the operator: the engine forbids customer deposits (docs/compat.md) */
  c->kind = ENGINE_CMD_TRANSFER;
  c->u.transfer = q->in;
  c->u.transfer.extra = q->extra;
  c->u.transfer.extra_len = (uint32_t)n;
  api_error_t e;
  if (!idempotency(r, caller | (1ull << 63), &e)) { /* validated before step 1: cannot fail */
    fail_e(r, q->family, &e);
    return;
  }
  api_req_submit(r, money_done);
}

/* Sets q->in to a deposit, withdrawal or transfer and submits it (deposits: after the check). */
static bool submit_money(api_req_t *r, unsigned kind, uint64_t debit, uint64_t credit, const compat_amount_t *amt,
                         api_error_t *e) {
  compat_req_t *q = creq(r);
  engine_cmd_t *c = api_req_cmd(r);
  LEDGER_ASSERT(amt->digits > 0 && kind <= ENGINE_KIND_WITHDRAWAL);
  LEDGER_ASSERT(kind == ENGINE_KIND_DEPOSIT ? debit == 0 && credit != 0 : debit != 0);
  memset(&q->in, 0, sizeof q->in);
  q->in.kind = (uint8_t)kind;
  q->in.debit_account_id = debit;
  q->in.credit_account_id = credit;
  q->in.amount_digits = amt->digits;
  q->in.amount_scale = amt->scale;
  if (!idempotency(r, 0, e)) return false;
  bool as_operator = c->auth_mode == ENGINE_AUTH_TRUSTED && c->principal_id == 0; /* --compat-open */
  if (kind == ENGINE_KIND_DEPOSIT && !as_operator) {
    c->has_idempotency = false; /* the check is a read; the key goes with the deposit */
    c->kind = ENGINE_CMD_ACCOUNT_GET;
    c->u.account.account_id = credit;
    api_req_submit(r, deposit_after_check);
    return true;
  }
  c->kind = ENGINE_CMD_TRANSFER;
  c->u.transfer = q->in;
  api_req_submit(r, money_done);
  return true;
}

static bool build_microfin_money(api_req_t *r, croute_t rt, const compat_body_t *b, api_error_t *e) {
  compat_amount_t amt;
  uint64_t a = 0, a2 = 0;
  if (rt == C_TRANSFER) {
    if (!compat_get_account_number(b, "senderAccountNumber", &a, e) ||
        !compat_get_account_number(b, "receiverAccountNumber", &a2, e))
      return false;
  } else if (!compat_get_account_number(b, "accountNumber", &a, e)) {
    return false;
  }
  if (!compat_get_amount(b, "amount", false, &amt, e)) return false;
  if (rt == C_DEPOSIT) return submit_money(r, ENGINE_KIND_DEPOSIT, 0, a, &amt, e);
  if (rt == C_WITHDRAW) return submit_money(r, ENGINE_KIND_WITHDRAWAL, a, 0, &amt, e);
  return submit_money(r, ENGINE_KIND_TRANSFER, a, a2, &amt, e);
}

/* ------------------------------------------------------------ reads */

static void account_read(api_req_t *r) {
  if (!engine_ok(r)) return;
  const engine_account_t *a = &api_req_cmd(r)->account;
  jw_t *w = api_req_writer(r);
  if (creq(r)->family == FAM_BANKING) {
    jw_lit(w, "{\"success\":true,\"data\":{\"id\":");
    jw_u64(w, a->id);
    jw_lit(w, ",\"balance\":");
    jw_amount(w, a->balance_minor, a->currency);
    jw_lit(w, ",\"createdAt\":");
    jw_time(w, a->created_ms);
    jw_lit(w, ",\"updatedAt\":");
    jw_time(w, a->updated_ms);
    jw_lit(w, "}}");
  } else {
    jw_lit(w, "{\"account_id\":");
    jw_u64(w, a->id);
    jw_lit(w, ",\"balance\":");
    jw_amount(w, a->balance_minor, a->currency);
    jw_lit(w, ",\"cached\":false}"); /* every read is answered by the engine: never a cache */
  }
  api_req_send(r, 200, NULL);
}

static const char *flask_status(const engine_transfer_t *t) {
  return t->status == ENGINE_STATUS_PENDING ? "pending" : t->status == ENGINE_STATUS_VOIDED ? "voided" : "completed";
}

/* One entry of GET /transactions: {"id","from","to","amount","status"} (Flask's shape). */
static void jw_flask_txn(jw_t *w, const engine_transfer_t *t) {
  jw_lit(w, "{\"id\":");
  jw_uuid_of(w, t);
  jw_lit(w, ",\"from\":");
  jw_u64(w, t->debit_account_id);
  jw_lit(w, ",\"to\":");
  jw_u64(w, t->credit_account_id);
  jw_lit(w, ",\"amount\":");
  jw_amount(w, t->amount_minor, t->currency);
  jw_lit(w, ",\"status\":\"");
  jw_lit(w, flask_status(t));
  jw_lit(w, "\"}");
}

static void history_read(api_req_t *r) {
  if (!engine_ok(r)) return;
  const engine_cmd_t *c = api_req_cmd(r);
  const compat_req_t *q = creq(r);
  LEDGER_ASSERT(q->route == C_TRANSACTIONS && c->row_count <= c->u.history.limit);
  jw_t *w = api_req_writer(r);
  jw_lit(w, "[");
  for (uint32_t i = 0; i < c->row_count; i++) {
    if (i) jw_raw(w, ",", 1);
    jw_flask_txn(w, &q->rows[i].transfer);
  }
  jw_lit(w, "]");
  api_req_send(r, 200, NULL);
}

/* GET /transactions without account_id: the newest transfers of the whole ledger (transfer
 * search, no filter: customers see only those touching their accounts). */
static void search_read(api_req_t *r) {
  if (!engine_ok(r)) return;
  const engine_cmd_t *c = api_req_cmd(r);
  LEDGER_ASSERT(c->row_count <= c->u.search.limit);
  jw_t *w = api_req_writer(r);
  jw_lit(w, "[");
  for (uint32_t i = 0; i < c->row_count; i++) {
    if (i) jw_raw(w, ",", 1);
    jw_flask_txn(w, &c->u.search.rows[i]);
  }
  jw_lit(w, "]");
  api_req_send(r, 200, NULL);
}

/* GET /suspicious: the open suspicious-activity entries, newest first (GET /v1/suspicious). */
static void suspicious_read(api_req_t *r) {
  if (!engine_ok(r)) return;
  const engine_cmd_t *c = api_req_cmd(r);
  jw_t *w = api_req_writer(r);
  jw_lit(w, "[");
  for (uint32_t i = 0; i < c->row_count; i++) {
    const engine_suspicious_t *e = &c->u.suspicious.rows[i];
    engine_transfer_t t = {.no = (uint32_t)e->transfer_no, .created_ms = e->transfer_created_ms};
    if (i) jw_raw(w, ",", 1);
    jw_lit(w, "{\"id\":");
    jw_u64(w, e->id);
    jw_lit(w, ",\"txn_id\":");
    jw_uuid_of(w, &t);
    jw_lit(w, ",\"from\":");
    jw_u64(w, e->debit_account_id);
    jw_lit(w, ",\"to\":");
    jw_u64(w, e->credit_account_id);
    jw_lit(w, ",\"amount\":");
    jw_amount(w, e->amount_minor, e->currency);
    jw_lit(w, ",\"rule\":");
    jw_str(w, e->rule_id, strlen(e->rule_id));
    jw_lit(w, ",\"action\":\"");
    jw_lit(w, engine_rule_action_name(e->action));
    jw_lit(w, "\",\"status\":\"");
    jw_lit(w, engine_suspicious_status_name(e->status));
    jw_lit(w, "\"}");
  }
  jw_lit(w, "]");
  api_req_send(r, 200, NULL);
}

/* GET /transactions?account_id=N[&limit=1..1000]: that account's history, newest first. */
static bool query_u64(const http_request_t *h, const char *name, uint64_t max, uint64_t *out, bool *present) {
  char v[32];
  bool too_long;
  *present = query_get(h->query, h->query_len, name, v, sizeof v, &too_long);
  if (!*present) return true;
  size_t n = strlen(v);
  uint64_t x = 0;
  bool ok = !too_long && n >= 1 && n <= 16;
  for (size_t i = 0; ok && i < n; i++) {
    ok = v[i] >= '0' && v[i] <= '9';
    x = x * 10 + (uint64_t)(v[i] - '0');
  }
  *out = x;
  return ok && x >= 1 && x <= max;
}

/* ------------------------------------------------------------ dispatch */

/* Allocates the request's state; rows for a history read. */
static bool state_new(api_req_t *r, croute_t rt, uint32_t rows) {
  LEDGER_ASSERT(rt > C_NONE && rt < C_ROUTES && *api_req_ext(r) == NULL);
  compat_req_t *q = calloc(1, sizeof *q + (size_t)rows * sizeof(engine_history_row_t));
  if (!q) return false;
  q->route = rt;
  q->family = routes[rt].family;
  *api_req_ext(r) = q;
  return true;
}

static bool build_reads(api_req_t *r, croute_t rt, uint64_t path_id, api_error_t *e) {
  engine_cmd_t *c = api_req_cmd(r);
  compat_req_t *q = creq(r);
  if (rt == C_USER_GET || rt == C_BALANCE) {
    c->kind = ENGINE_CMD_ACCOUNT_GET;
    c->u.account.account_id = path_id;
    api_req_submit(r, account_read);
    return true;
  }
  const http_request_t *h = api_req_http(r);
  uint64_t account = 0, limit = COMPAT_HISTORY_LIMIT_DEFAULT;
  bool has_account, has_limit;
  if (!query_u64(h, "account_id", (1ull << 53) - 1, &account, &has_account) ||
      !query_u64(h, "limit", API_PAGE_LIMIT_MAX, &limit, &has_limit)) {
    api_err(e, 400, "invalid_parameter", "account_id must be an account id and limit 1 to %u", API_PAGE_LIMIT_MAX);
    return false;
  }
  if (rt == C_SUSPICIOUS) { /* admin and auditor (the engine refuses customers: 403) */
    c->kind = ENGINE_CMD_SUSPICIOUS_LIST;
    c->u.suspicious.from_ms = INT64_MIN;
    c->u.suspicious.to_ms = INT64_MAX;
    c->u.suspicious.status = ENGINE_SUSPICIOUS_OPEN;
    c->u.suspicious.limit = (uint32_t)limit;
    c->u.suspicious.rows = (engine_suspicious_t *)(void *)q->rows; /* sized for limit history rows */
    static_assert(sizeof(engine_suspicious_t) <= sizeof(engine_history_row_t), "rows fit");
    api_req_submit(r, suspicious_read);
    return true;
  }
  if (!has_account) {
    c->kind = ENGINE_CMD_TRANSFER_SEARCH;
    c->u.search.filter.kind = c->u.search.filter.status = -1;
    c->u.search.filter.flagged = -1;
    c->u.search.filter.from_ms = INT64_MIN;
    c->u.search.filter.to_ms = INT64_MAX;
    c->u.search.limit = (uint32_t)limit;
    c->u.search.rows = (engine_transfer_t *)(void *)q->rows; /* sized for limit history rows */
    static_assert(sizeof(engine_transfer_t) <= sizeof(engine_history_row_t), "rows fit");
    api_req_submit(r, search_read);
    return true;
  }
  c->kind = ENGINE_CMD_HISTORY;
  c->u.history.account_id = account;
  c->u.history.from_ms = INT64_MIN;
  c->u.history.to_ms = INT64_MAX;
  c->u.history.limit = (uint32_t)limit;
  c->u.history.rows = q->rows;
  api_req_submit(r, history_read);
  return true;
}

/* Reads the body, builds the route's first command and hands the request on. */
static bool build(api_req_t *r, croute_t rt, uint64_t path_id, api_error_t *e) {
  const http_request_t *h = api_req_http(r);
  engine_cmd_t *c = api_req_cmd(r);
  if (rt == C_ACCOUNT_GEN) { /* body ignored: the original took none */
    if (!idempotency(r, 0, e)) return false;
    c->kind = ENGINE_CMD_ACCOUNT_CREATE;
    c->u.account_create.currency = ledger_currency_find("USD", 3);
    c->u.account_create.region = "default";
    api_req_submit(r, account_created);
    return true;
  }
  if (!routes[rt].write) return build_reads(r, rt, path_id, e);
  compat_body_t *b = malloc(sizeof *b);
  if (!b) {
    api_err(e, 503, "overloaded", "out of memory");
    return false;
  }
  bool ok = compat_body_parse(h->body, h->body_len, b, e);
  compat_amount_t amt;
  uint64_t from = 0, to = 0;
  if (ok) {
    switch (rt) {
      case C_SIGNUP: ok = build_signup(r, b, e); break;
      case C_SIGNIN: ok = build_signin(r, b, e); break;
      case C_DEPOSIT:
      case C_WITHDRAW:
      case C_TRANSFER: ok = build_microfin_money(r, rt, b, e); break;
      case C_USER_BALANCE:
        ok = compat_get_amount(b, "amount", true, &amt, e) &&
             (amt.negative ? submit_money(r, ENGINE_KIND_WITHDRAWAL, path_id, 0, &amt, e)
                           : submit_money(r, ENGINE_KIND_DEPOSIT, 0, path_id, &amt, e));
        break;
      case C_PROCESS_TXN:
      case C_TXN:
        ok = compat_get_id(b, "from", &from, e) && compat_get_id(b, "to", &to, e) &&
             compat_get_amount(b, "amount", false, &amt, e) &&
             submit_money(r, ENGINE_KIND_TRANSFER, from, to, &amt, e);
        break;
      default: LEDGER_ASSERT(!"not a write route");
    }
  }
  sodium_memzero(b, sizeof *b); /* sign-up / sign-in bodies hold a password */
  free(b);
  return ok;
}

bool compat_handle(api_req_t *r) {
  const http_request_t *h = api_req_http(r);
  uint64_t path_id = 0;
  bool bad_id = false;
  croute_t rt = match(h, &path_id, &bad_id);
  if (rt == C_NONE) return false;
  uint32_t rows = rt == C_TRANSACTIONS || rt == C_SUSPICIOUS ? API_PAGE_LIMIT_MAX : 0;
  if (!state_new(r, rt, rows)) {
    api_req_unavailable(r, "overloaded", "out of memory");
    return true;
  }
  uint8_t family = routes[rt].family;
  if (!method_ok(rt, h->method)) {
    compat_fail(r, family, 405, "Method not allowed");
    return true;
  }
  if (!authenticate(r, rt)) {
    compat_fail(r, family, 401, "Unauthorized");
    return true;
  }
  uint32_t wait = rate_check(r, rt);
  if (wait) {
    api_req_limited(r, wait);
    return true;
  }
  if (bad_id) {
    compat_fail(r, family, 404, family == FAM_BANKING ? "User not found" : "Account not found");
    return true;
  }
  api_error_t e;
  if (!build(r, rt, path_id, &e)) fail_e(r, family, &e);
  return true;
}
