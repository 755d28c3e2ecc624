/*
 * auth.h — password hashing and credentials, with libsodium.
 *
 * Passwords: Argon2id (crypto_pwhash_str, the encoded string carries salt and parameters),
 * verified with crypto_pwhash_str_verify. Hashing costs tens of milliseconds and tens of MiB
 * by design, so it never runs on a net thread or the engine: a small bounded pool of worker
 * threads does it and calls back. A full pool queue is refused (the caller answers 503).
 * A pool made without hashing parameters runs other slow work that must stay off those
 * threads instead (AUTH_JOB_CALL: a text search's description reads, in its own pool).
 *
 * Credentials: 256 bits from the CSPRNG (randombytes_buf), shown once as
 * "<prefix>_<base64url>", stored by the engine only as SHA-256 of that text.
 *
 * Threads: auth_token_* from any thread; auth_pool_submit from any thread; job callbacks run
 * on a pool thread.
 */
#ifndef LEDGER_AUTH_H
#define LEDGER_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

#define AUTH_PASSWORD_BYTES_MIN 12u  /* API.md: password >= 12 chars */
#define AUTH_PASSWORD_BYTES_MAX 256u /* bounds hashing work per request */
#define AUTH_TOKEN_RANDOM_BYTES 32u  /* 256 bits */
#define AUTH_TOKEN_TEXT_BYTES 64u    /* "lds_" + 43 base64url chars + NUL fits */
#define AUTH_PWHASH_BYTES 128u       /* crypto_pwhash_STRBYTES */
#define AUTH_POOL_QUEUE_MAX 256u     /* sign-ins/sign-ups waiting for a hashing thread */

typedef struct auth_params {
  unsigned long long opslimit; /* Argon2id passes */
  size_t memlimit_bytes;       /* Argon2id memory */
} auth_params_t;
/* libsodium's INTERACTIVE limits: 2 passes, 64 MiB (docs/security.md). */
auth_params_t auth_params_default(void);

LEDGER_MUST_USE int auth_init(void); /* sodium_init; call once at start */

/* A new credential: text (NUL-terminated, shown to the client once) and its SHA-256. */
void auth_token_new(const char *prefix, char text_out[AUTH_TOKEN_TEXT_BYTES], uint8_t hash_out[32]);
void auth_token_hash(const char *text, size_t len, uint8_t hash_out[32]);

/* A memo of the SHA-256s of the tokens one thread was shown lately. A client sends the same
 * token with every request, and its SHA-256 (~0.2-0.3 us here) was a few percent of a single
 * transfer's CPU. Each slot holds a token's SHA-256 under a 128-bit tag of the token: SipHash
 * (crypto_shorthash_siphashx24) keyed with 128 bits from the CSPRNG, drawn per memo. Without
 * the key nobody can make a different token with the same tag (a keyed PRF: 2^-128 a try),
 * so a tag that matches stands for the token. The token itself is not kept; the SHA-256 is
 * what the engine keeps of every credential anyway, and the engine still decides whether it
 * names a live credential (revocation and expiry are unchanged). One thread per memo; slots
 * are overwritten by the next token that maps there. */
#define AUTH_MEMO_SLOTS 64u /* a power of two */
typedef struct auth_memo_slot {
  uint8_t tag[16];
  uint8_t hash[32];
  bool used;
} auth_memo_slot_t;
typedef struct auth_memo {
  uint8_t key[16];
  auth_memo_slot_t slot[AUTH_MEMO_SLOTS];
  uint64_t hits, misses;
} auth_memo_t;
void auth_memo_init(auth_memo_t *m);  /* a fresh key; every slot empty */
void auth_memo_clear(auth_memo_t *m); /* wipes the memo (key included) */
/* auth_token_hash's result, from the memo when the token's tag is there. */
void auth_token_hash_memo(auth_memo_t *m, const char *text, size_t len, uint8_t hash_out[32]);

/* Synchronous (ledgerctl; tests). */
LEDGER_MUST_USE int auth_password_hash(const auth_params_t *p, const char *password, size_t len,
                                       char out[AUTH_PWHASH_BYTES]);
bool auth_password_verify(const char *pwhash, const char *password, size_t len);

/* CALL: run call(job) on a pool thread (a text search's reads, api_v1.c), then done. */
typedef enum { AUTH_JOB_HASH = 1, AUTH_JOB_VERIFY = 2, AUTH_JOB_CALL = 3 } auth_job_op_t;

typedef struct auth_job {
  auth_job_op_t op;
  char password[AUTH_PASSWORD_BYTES_MAX + 1]; /* wiped by the pool after use */
  size_t password_len;
  char pwhash[AUTH_PWHASH_BYTES]; /* HASH: out; VERIFY: in ("" = unknown user: a dummy is used) */
  bool ok;                        /* HASH: hashed; VERIFY: matched */
  void (*call)(struct auth_job *job); /* CALL */
  void (*done)(struct auth_job *job); /* on a pool thread */
  void *arg;
  struct auth_job *next;
} auth_job_t;

typedef struct auth_pool auth_pool_t;
/* params NULL: a pool for AUTH_JOB_CALL jobs only (no dummy hash made). */
LEDGER_MUST_USE int auth_pool_create(unsigned threads, const auth_params_t *params, auth_pool_t **out);
/* LEDGER_EFULL when AUTH_POOL_QUEUE_MAX jobs wait; the job is then untouched. */
LEDGER_MUST_USE int auth_pool_submit(auth_pool_t *pool, auth_job_t *job);
/* Finishes queued jobs (their callbacks run) and joins; from then on auth_pool_submit
 * answers LEDGER_ESTOPPED (the pool stays valid for callers still running). Idempotent. */
void auth_pool_stop(auth_pool_t *pool);
/* auth_pool_stop, then frees: only once nothing can submit any more. */
void auth_pool_destroy(auth_pool_t *pool);

#endif
