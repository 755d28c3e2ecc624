/*
 * auth.c — Argon2id hashing pool and credential tokens (see auth.h).
 */
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"

auth_params_t auth_params_default(void) {
  return (auth_params_t){crypto_pwhash_OPSLIMIT_INTERACTIVE, crypto_pwhash_MEMLIMIT_INTERACTIVE};
}

int auth_init(void) { return sodium_init() < 0 ? LEDGER_EIO : LEDGER_OK; }

void auth_token_hash(const char *text, size_t len, uint8_t hash_out[32]) {
  crypto_hash_sha256(hash_out, (const unsigned char *)text, len);
}

void auth_memo_init(auth_memo_t *m) {
  sodium_memzero(m, sizeof *m);
  randombytes_buf(m->key, sizeof m->key);
}

void auth_memo_clear(auth_memo_t *m) { sodium_memzero(m, sizeof *m); }

void auth_token_hash_memo(auth_memo_t *m, const char *text, size_t len, uint8_t hash_out[32]) {
  _Static_assert(crypto_shorthash_siphashx24_BYTES == 16 && crypto_shorthash_siphashx24_KEYBYTES == 16,
                 "SipHash-128 tag and key sizes");
  _Static_assert((AUTH_MEMO_SLOTS & (AUTH_MEMO_SLOTS - 1)) == 0, "AUTH_MEMO_SLOTS is a power of two");
  uint8_t tag[16];
  crypto_shorthash_siphashx24(tag, (const unsigned char *)text, len, m->key);
  uint32_t at;
  memcpy(&at, tag, sizeof at);
  auth_memo_slot_t *s = &m->slot[at & (AUTH_MEMO_SLOTS - 1u)];
  if (s->used && sodium_memcmp(s->tag, tag, sizeof tag) == 0) {
    memcpy(hash_out, s->hash, 32);
    m->hits++;
    return;
  }
  auth_token_hash(text, len, hash_out);
  memcpy(s->tag, tag, sizeof tag);
  memcpy(s->hash, hash_out, 32);
  s->used = true;
  m->misses++;
}

void auth_token_new(const char *prefix, char text_out[AUTH_TOKEN_TEXT_BYTES], uint8_t hash_out[32]) {
  unsigned char raw[AUTH_TOKEN_RANDOM_BYTES];
  randombytes_buf(raw, sizeof raw);
  size_t plen = strlen(prefix);
  LEDGER_ASSERT(plen + 1 + sodium_base64_ENCODED_LEN(sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING) <=
                AUTH_TOKEN_TEXT_BYTES);
  memcpy(text_out, prefix, plen);
  text_out[plen] = '_';
  sodium_bin2base64(text_out + plen + 1, AUTH_TOKEN_TEXT_BYTES - plen - 1, raw, sizeof raw,
                    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  sodium_memzero(raw, sizeof raw);
  auth_token_hash(text_out, strlen(text_out), hash_out);
}

int auth_password_hash(const auth_params_t *p, const char *password, size_t len, char out[AUTH_PWHASH_BYTES]) {
  static_assert(AUTH_PWHASH_BYTES >= crypto_pwhash_STRBYTES, "encoded hash fits");
  return crypto_pwhash_str_alg(out, password, len, p->opslimit, p->memlimit_bytes, crypto_pwhash_ALG_ARGON2ID13) == 0
             ? LEDGER_OK
             : LEDGER_ENOMEM;
}

bool auth_password_verify(const char *pwhash, const char *password, size_t len) {
  return crypto_pwhash_str_verify(pwhash, password, len) == 0;
}

struct auth_pool {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  auth_job_t *head, *tail;
  unsigned queued;
  bool stopping;
  auth_params_t params;
  char dummy_hash[AUTH_PWHASH_BYTES]; /* unknown users are verified against this: same cost */
  unsigned threads;
  bool hashing; /* created with params: HASH and VERIFY jobs allowed */
  pthread_t tids[8];
};

static void run_job(auth_pool_t *p, auth_job_t *j) {
  if (j->op == AUTH_JOB_CALL) {
    j->call(j);
  } else if (j->op == AUTH_JOB_HASH) {
    j->ok = auth_password_hash(&p->params, j->password, j->password_len, j->pwhash) == 0;
  } else {
    bool known = j->pwhash[0] != '\0';
    bool match = auth_password_verify(known ? j->pwhash : p->dummy_hash, j->password, j->password_len);
    j->ok = known && match;
  }
  sodium_memzero(j->password, sizeof j->password);
  j->password_len = 0;
  j->done(j);
}

static void *pool_main(void *arg) {
  auth_pool_t *p = arg;
  (void)pthread_setname_np(pthread_self(), p->hashing ? "ledger-auth" : "ledger-worker");
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (!p->head && !p->stopping) pthread_cond_wait(&p->cond, &p->lock);
    if (!p->head) break; /* stopping and drained */
    auth_job_t *j = p->head;
    p->head = j->next;
    if (!p->head) p->tail = NULL;
    p->queued--;
    pthread_mutex_unlock(&p->lock);
    run_job(p, j);
    pthread_mutex_lock(&p->lock);
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

int auth_pool_create(unsigned threads, const auth_params_t *params, auth_pool_t **out) {
  if (threads < 1 || threads > 8) return LEDGER_EINVAL;
  auth_pool_t *p = calloc(1, sizeof *p);
  if (!p) return LEDGER_ENOMEM;
  if (params) { /* a hashing pool: unknown users are verified against a dummy hash */
    p->params = *params;
    p->hashing = true;
    char random_pw[33];
    randombytes_buf(random_pw, sizeof random_pw - 1);
    random_pw[32] = '\0';
    if (auth_password_hash(&p->params, random_pw, 32, p->dummy_hash) != 0) {
      free(p);
      return LEDGER_ENOMEM;
    }
  }
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->cond, NULL);
  for (unsigned i = 0; i < threads; i++) {
    if (pthread_create(&p->tids[i], NULL, pool_main, p) != 0) break;
    p->threads++;
  }
  if (p->threads == 0) {
    auth_pool_destroy(p);
    return LEDGER_ENOMEM;
  }
  *out = p;
  return LEDGER_OK;
}

int auth_pool_submit(auth_pool_t *p, auth_job_t *j) {
  LEDGER_ASSERT(j->done && j->password_len <= AUTH_PASSWORD_BYTES_MAX && (j->op != AUTH_JOB_CALL || j->call) &&
                (j->op == AUTH_JOB_CALL || p->hashing));
  pthread_mutex_lock(&p->lock);
  if (p->stopping || p->queued >= AUTH_POOL_QUEUE_MAX) {
    pthread_mutex_unlock(&p->lock);
    return p->stopping ? LEDGER_ESTOPPED : LEDGER_EFULL;
  }
  j->next = NULL;
  if (p->tail) p->tail->next = j;
  else p->head = j;
  p->tail = j;
  p->queued++;
  pthread_cond_signal(&p->cond);
  pthread_mutex_unlock(&p->lock);
  return LEDGER_OK;
}

void auth_pool_stop(auth_pool_t *p) {
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  p->stopping = true;
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  for (unsigned i = 0; i < p->threads; i++) pthread_join(p->tids[i], NULL);
  p->threads = 0;
}

void auth_pool_destroy(auth_pool_t *p) {
  if (!p) return;
  auth_pool_stop(p);
  pthread_mutex_destroy(&p->lock);
  pthread_cond_destroy(&p->cond);
  free(p);
}
