/*
 * engine_auth.c — users, credentials (session tokens and API keys, kept only as SHA-256),
 * roles, the audit trail of security events, and the permission rules every command passes.
 *
 * Part of the deterministic state machine (engine_state.h): engine thread or replay only.
 * Password hashing and token generation happen outside (src/auth, net threads and the
 * hashing pool); the engine only stores what they produced.
 *
 * Permission model (docs/security.md): admin does everything; auditor reads everything and
 * writes nothing; customer reads and moves only its own accounts (others answer "not found",
 * exactly as missing ones); anonymous may only sign up and sign in.
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/engine_state.h"

#define CRED_SLOTS_MIN (16u * 1024u)
#define CRED_SLOTS_MAX (2u * ENGINE_CREDENTIALS_MAX)
#define USER_INDEX_SLOTS_MIN (16u * 1024u)

#define reserve state_reserve

const char *engine_role_name(unsigned role) {
  switch (role) {
    case ENGINE_ROLE_ADMIN: return "admin";
    case ENGINE_ROLE_AUDITOR: return "auditor";
    case ENGINE_ROLE_CUSTOMER: return "customer";
    default: return "anonymous";
  }
}

unsigned engine_role_find(const char *name) {
  if (strcmp(name, "admin") == 0) return ENGINE_ROLE_ADMIN;
  if (strcmp(name, "auditor") == 0) return ENGINE_ROLE_AUDITOR;
  if (strcmp(name, "customer") == 0) return ENGINE_ROLE_CUSTOMER;
  return 0;
}

const char *engine_audit_name(unsigned kind) {
  switch (kind) {
    case ENGINE_AUDIT_USER_CREATED: return "user.created";
    case ENGINE_AUDIT_SIGNIN_OK: return "user.signin";
    case ENGINE_AUDIT_SIGNIN_FAILED: return "user.signin_failed";
    case ENGINE_AUDIT_SIGNOUT: return "user.signout";
    case ENGINE_AUDIT_KEY_CREATED: return "api_key.created";
    case ENGINE_AUDIT_KEY_REVOKED: return "api_key.revoked";
    case ENGINE_AUDIT_ROLE_CHANGED: return "user.role_changed";
    case ENGINE_AUDIT_ACCOUNT_FROZEN: return "account.frozen";
    case ENGINE_AUDIT_ACCOUNT_UNFROZEN: return "account.unfrozen";
    case ENGINE_AUDIT_SUSPICIOUS_REVIEWED: return "suspicious.reviewed";
    case ENGINE_AUDIT_RULES_CHANGED: return "rules.changed";
    default: return "unknown";
  }
}

int auth_state_init(engine_state_t *st) {
  st->users = reserve((size_t)ENGINE_USERS_MAX * sizeof(engine_user_t));
  st->keys = reserve((size_t)ENGINE_API_KEYS_MAX * sizeof(engine_api_key_t));
  st->audit = reserve((size_t)ENGINE_AUDIT_RING_EVENTS * sizeof(engine_audit_event_t));
  st->user_index_slots = USER_INDEX_SLOTS_MIN;
  st->user_index = reserve(st->user_index_slots * sizeof(uint64_t));
  st->cred_slots = CRED_SLOTS_MIN;
  st->creds = reserve(st->cred_slots * sizeof(cred_entry_t));
  if (!st->users || !st->keys || !st->audit || !st->user_index || !st->creds) return LEDGER_ENOMEM;
  return LEDGER_OK;
}

void auth_state_free(engine_state_t *st) {
  if (st->users) munmap(st->users, (size_t)ENGINE_USERS_MAX * sizeof(engine_user_t));
  if (st->keys) munmap(st->keys, (size_t)ENGINE_API_KEYS_MAX * sizeof(engine_api_key_t));
  if (st->audit) munmap(st->audit, (size_t)ENGINE_AUDIT_RING_EVENTS * sizeof(engine_audit_event_t));
  if (st->user_index) munmap(st->user_index, st->user_index_slots * sizeof(uint64_t));
  if (st->creds) munmap(st->creds, st->cred_slots * sizeof(cred_entry_t));
}

/* ------------------------------------------------------------ users by name */

static uint64_t name_hash(const char *name) { return ledger_hash128(name, strlen(name), 11).lo; }

static uint64_t user_find(const engine_state_t *st, const char *username) {
  uint64_t mask = st->user_index_slots - 1;
  for (uint64_t i = name_hash(username) & mask;; i = (i + 1) & mask) {
    uint64_t id = st->user_index[i];
    if (id == 0) return 0;
    if (strcmp(st->users[id - 1].username, username) == 0) return id;
  }
}

static void user_index_put(engine_state_t *st, uint64_t id) {
  uint64_t mask = st->user_index_slots - 1;
  uint64_t i = name_hash(st->users[id - 1].username) & mask;
  while (st->user_index[i] != 0) i = (i + 1) & mask;
  st->user_index[i] = id;
}

bool auth_user_index_rebuild(engine_state_t *st) {
  uint64_t slots = USER_INDEX_SLOTS_MIN;
  while (slots < 2 * (st->user_count + 1)) slots *= 2;
  uint64_t *fresh = reserve(slots * sizeof(uint64_t));
  if (!fresh) return false;
  munmap(st->user_index, st->user_index_slots * sizeof(uint64_t));
  st->user_index = fresh;
  st->user_index_slots = slots;
  for (uint64_t id = 1; id <= st->user_count; id++) user_index_put(st, id);
  return true;
}

/* ------------------------------------------------------------ credentials */

static bool hash_zero(const uint8_t h[32]) {
  uint8_t acc = 0;
  for (int i = 0; i < 32; i++) acc |= h[i];
  return acc == 0;
}

static uint64_t hash_slot(const uint8_t h[32], uint64_t mask) {
  uint64_t v;
  memcpy(&v, h, 8);
  return v & mask;
}

static bool cred_live(const engine_state_t *st, const cred_entry_t *e) {
  return !hash_zero(e->hash) && !e->revoked && (e->expires_ms == 0 || e->expires_ms > st->batch_time_ms);
}

static cred_entry_t *cred_find(const engine_state_t *st, const uint8_t h[32]) {
  uint64_t mask = st->cred_slots - 1;
  for (uint64_t i = hash_slot(h, mask), n = 0; n < st->cred_slots; i = (i + 1) & mask, n++) {
    cred_entry_t *e = &st->creds[i];
    if (hash_zero(e->hash)) return NULL;
    if (memcmp(e->hash, h, 32) == 0) return e;
  }
  return NULL;
}

/* Rebuilds the table with room, dropping dead (expired or revoked) credentials. */
static bool cred_rebuild(engine_state_t *st) {
  uint64_t live = 0;
  for (uint64_t i = 0; i < st->cred_slots; i++) live += cred_live(st, &st->creds[i]);
  uint64_t slots = CRED_SLOTS_MIN;
  while (slots < 4 * (live + 1) && slots < CRED_SLOTS_MAX) slots *= 2;
  if (2 * (live + 1) > slots) return false;
  cred_entry_t *fresh = reserve(slots * sizeof(cred_entry_t));
  if (!fresh) return false;
  uint64_t mask = slots - 1;
  for (uint64_t i = 0; i < st->cred_slots; i++) {
    const cred_entry_t *e = &st->creds[i];
    if (!cred_live(st, e)) continue;
    uint64_t j = hash_slot(e->hash, mask);
    while (!hash_zero(fresh[j].hash)) j = (j + 1) & mask;
    fresh[j] = *e;
  }
  munmap(st->creds, st->cred_slots * sizeof(cred_entry_t));
  st->creds = fresh;
  st->cred_slots = slots;
  st->cred_used = live;
  return true;
}

static bool cred_insert(engine_state_t *st, const cred_entry_t *e) {
  if (cred_find(st, e->hash)) return true; /* a 256-bit collision: treat as present */
  if (2 * (st->cred_used + 1) > st->cred_slots && !cred_rebuild(st)) return false;
  uint64_t mask = st->cred_slots - 1, j = hash_slot(e->hash, mask);
  while (!hash_zero(st->creds[j].hash)) j = (j + 1) & mask;
  st->creds[j] = *e;
  st->cred_used++;
  return true;
}

bool auth_cred_restore(engine_state_t *st, const cred_entry_t *e) { return cred_insert(st, e); }

bool auth_resolve(engine_state_t *st, engine_cmd_t *cmd) {
  const cred_entry_t *e = cred_find(st, cmd->credential_hash);
  if (!e || !cred_live(st, e)) return false;
  cmd->principal_id = e->principal_id;
  return true;
}

uint8_t auth_principal_role(const engine_state_t *st, uint64_t principal_id) {
  if (principal_id == 0) return ENGINE_ROLE_ADMIN; /* the operator */
  if (principal_id == ENGINE_PRINCIPAL_ANONYMOUS) return ENGINE_ROLE_NONE;
  if (principal_id & ENGINE_PRINCIPAL_KEY_BIT) {
    uint64_t id = principal_id & ~ENGINE_PRINCIPAL_KEY_BIT;
    if (id == 0 || id > st->key_count || st->keys[id - 1].revoked_ms) return ENGINE_ROLE_NONE;
    return st->keys[id - 1].role;
  }
  if (principal_id > st->user_count) return ENGINE_ROLE_NONE;
  return st->users[principal_id - 1].role;
}

/* ------------------------------------------------------------ permissions */

int auth_permit(uint8_t kind, uint8_t role) {
  switch (kind) {
    /* Open to anyone: sign-up (role checked in apply) and the trusted sign-in steps. */
    case ENGINE_CMD_USER_CREATE:
    case ENGINE_CMD_USER_LOOKUP:
    case ENGINE_CMD_SIGNIN_FAILED:
    case ENGINE_CMD_SESSION_CREATE: return ENGINE_OK;
    default: break;
  }
  if (role == ENGINE_ROLE_NONE) return ENGINE_R_UNAUTHENTICATED;
  switch (kind) {
    case ENGINE_CMD_ACCOUNT_GET:
    case ENGINE_CMD_ACCOUNT_LIST:
    case ENGINE_CMD_TRANSFER_GET:
    case ENGINE_CMD_HISTORY:
    case ENGINE_CMD_TRANSFER_SEARCH:
    case ENGINE_CMD_TRANSFER_ROWS:
    case ENGINE_CMD_WHOAMI:
    case ENGINE_CMD_SESSION_REVOKE: return ENGINE_OK; /* customers: filtered by ownership */
    case ENGINE_CMD_AUDIT_LIST:
    case ENGINE_CMD_RULES_GET:
    case ENGINE_CMD_SUSPICIOUS_LIST:
    case ENGINE_CMD_SETTLEMENTS: return role == ENGINE_ROLE_CUSTOMER ? ENGINE_R_FORBIDDEN : ENGINE_OK;
    case ENGINE_CMD_ACCOUNT_CREATE:
    case ENGINE_CMD_TRANSFER:
    case ENGINE_CMD_TRANSFER_POST:
    case ENGINE_CMD_TRANSFER_VOID:
    case ENGINE_CMD_TRANSFER_BATCH: return role == ENGINE_ROLE_AUDITOR ? ENGINE_R_FORBIDDEN : ENGINE_OK;
    case ENGINE_CMD_ACCOUNT_FREEZE:
    case ENGINE_CMD_ACCOUNT_UNFREEZE:
    case ENGINE_CMD_API_KEY_CREATE:
    case ENGINE_CMD_API_KEY_REVOKE:
    case ENGINE_CMD_USER_ROLE_SET:
    case ENGINE_CMD_RULES_SET:
    case ENGINE_CMD_SUSPICIOUS_REVIEW: return role == ENGINE_ROLE_ADMIN ? ENGINE_OK : ENGINE_R_FORBIDDEN;
    default: return ENGINE_R_FORBIDDEN;
  }
}

/* ------------------------------------------------------------ audit */

void auth_audit(engine_state_t *st, uint8_t kind, uint64_t actor, uint64_t subject, uint8_t role,
                const char *detail, const char *addr) {
  engine_audit_event_t *e = &st->audit[st->audit_count % ENGINE_AUDIT_RING_EVENTS];
  memset(e, 0, sizeof *e);
  e->seq = ++st->audit_count;
  e->batch_seq = st->batch_seq;
  e->time_ms = st->batch_time_ms;
  e->actor_id = actor;
  e->subject_id = subject;
  e->kind = kind;
  e->role = role;
  if (detail) snprintf(e->detail, sizeof e->detail, "%s", detail);
  if (addr) snprintf(e->addr, sizeof e->addr, "%s", addr);
}

/* ------------------------------------------------------------ commands */

static int user_create(engine_state_t *st, engine_cmd_t *c, uint8_t role) {
  const char *name = c->u.auth.username;
  uint8_t new_role = c->u.auth.role ? c->u.auth.role : ENGINE_ROLE_CUSTOMER;
  if (new_role != ENGINE_ROLE_CUSTOMER && role != ENGINE_ROLE_ADMIN) return ENGINE_R_FORBIDDEN;
  if (!engine_role_find(engine_role_name(new_role))) return ENGINE_R_INVALID_OPERATION;
  if (strlen(name) == 0 || strlen(name) > ENGINE_USERNAME_BYTES_MAX || strlen(c->u.auth.email) > ENGINE_EMAIL_BYTES_MAX ||
      strlen(c->u.auth.pwhash) >= ENGINE_PWHASH_BYTES_MAX)
    return ENGINE_R_INVALID_OPERATION;
  if (user_find(st, name)) return ENGINE_R_USERNAME_TAKEN;
  if (st->user_count >= ENGINE_USERS_MAX) return ENGINE_R_CAPACITY_EXHAUSTED;
  if (2 * (st->user_count + 1) > st->user_index_slots) {
    if (!auth_user_index_rebuild(st)) return ENGINE_R_CAPACITY_EXHAUSTED;
  }
  engine_user_t *u = &st->users[st->user_count++];
  memset(u, 0, sizeof *u);
  u->id = st->user_count;
  u->created_ms = u->updated_ms = st->batch_time_ms;
  u->role = new_role;
  snprintf(u->username, sizeof u->username, "%s", name);
  snprintf(u->email, sizeof u->email, "%s", c->u.auth.email);
  snprintf(u->pwhash, sizeof u->pwhash, "%s", c->u.auth.pwhash);
  user_index_put(st, u->id);
  auth_audit(st, ENGINE_AUDIT_USER_CREATED, c->principal_id, u->id, u->role, u->username, c->client_addr);
  c->user = *u;
  return ENGINE_OK;
}

static int session_create(engine_state_t *st, engine_cmd_t *c) {
  uint64_t uid = c->u.auth.user_id;
  if (uid == 0 || uid > st->user_count || c->principal_id != uid) return ENGINE_R_FORBIDDEN;
  cred_entry_t e = {.principal_id = uid, .expires_ms = c->u.auth.expires_ms};
  memcpy(e.hash, c->u.auth.token_hash, 32);
  if (hash_zero(e.hash)) return ENGINE_R_INVALID_OPERATION;
  if (!cred_insert(st, &e)) return ENGINE_R_CAPACITY_EXHAUSTED;
  auth_audit(st, ENGINE_AUDIT_SIGNIN_OK, uid, uid, 0, st->users[uid - 1].username, c->client_addr);
  c->user = st->users[uid - 1];
  return ENGINE_OK;
}

static int session_revoke(engine_state_t *st, engine_cmd_t *c) {
  cred_entry_t *e = cred_find(st, c->u.auth.token_hash);
  /* Only a session may be signed out, and only by its own principal; an API key is revoked
   * with DELETE /v1/api-keys/{id} instead. */
  if (e && !e->revoked && (e->principal_id & ENGINE_PRINCIPAL_KEY_BIT)) return ENGINE_R_INVALID_OPERATION;
  if (!e || e->revoked || e->principal_id != c->principal_id) return ENGINE_R_UNAUTHENTICATED;
  e->revoked = 1;
  auth_audit(st, ENGINE_AUDIT_SIGNOUT, c->principal_id, c->principal_id, 0, NULL, c->client_addr);
  return ENGINE_OK;
}

static int key_create(engine_state_t *st, engine_cmd_t *c) {
  uint8_t role = c->u.auth.role;
  if (role != ENGINE_ROLE_ADMIN && role != ENGINE_ROLE_AUDITOR) return ENGINE_R_INVALID_OPERATION;
  if (st->key_count >= ENGINE_API_KEYS_MAX) return ENGINE_R_CAPACITY_EXHAUSTED;
  engine_api_key_t *k = &st->keys[st->key_count];
  memset(k, 0, sizeof *k);
  k->id = st->key_count + 1;
  memcpy(k->key_hash, c->u.auth.token_hash, 32);
  cred_entry_t e = {.principal_id = k->id | ENGINE_PRINCIPAL_KEY_BIT};
  memcpy(e.hash, c->u.auth.token_hash, 32);
  if (hash_zero(e.hash)) return ENGINE_R_INVALID_OPERATION;
  if (!cred_insert(st, &e)) return ENGINE_R_CAPACITY_EXHAUSTED;
  st->key_count++;
  k->created_by = c->principal_id;
  k->created_ms = st->batch_time_ms;
  k->role = role;
  snprintf(k->name, sizeof k->name, "%s", c->u.auth.name ? c->u.auth.name : "");
  auth_audit(st, ENGINE_AUDIT_KEY_CREATED, c->principal_id, k->id, role, k->name, c->client_addr);
  c->api_key = *k;
  return ENGINE_OK;
}

static int key_revoke(engine_state_t *st, engine_cmd_t *c) {
  uint64_t id = c->u.auth.key_id;
  if (id == 0 || id > st->key_count) return ENGINE_R_API_KEY_NOT_FOUND;
  engine_api_key_t *k = &st->keys[id - 1];
  if (!k->revoked_ms) {
    k->revoked_ms = st->batch_time_ms;
    cred_entry_t *e = cred_find(st, k->key_hash);
    if (e) e->revoked = 1;
    auth_audit(st, ENGINE_AUDIT_KEY_REVOKED, c->principal_id, id, k->role, k->name, c->client_addr);
  }
  c->api_key = *k;
  return ENGINE_OK;
}

static int role_set(engine_state_t *st, engine_cmd_t *c) {
  uint64_t id = c->u.auth.user_id;
  if (id == 0 || id > st->user_count) return ENGINE_R_USER_NOT_FOUND;
  if (!engine_role_find(engine_role_name(c->u.auth.role))) return ENGINE_R_INVALID_OPERATION;
  engine_user_t *u = &st->users[id - 1];
  if (u->role != c->u.auth.role) {
    u->role = c->u.auth.role;
    u->updated_ms = st->batch_time_ms;
    auth_audit(st, ENGINE_AUDIT_ROLE_CHANGED, c->principal_id, id, u->role, u->username, c->client_addr);
  }
  c->user = *u;
  return ENGINE_OK;
}

int auth_apply(engine_state_t *st, engine_cmd_t *c) {
  switch (c->kind) {
    case ENGINE_CMD_USER_CREATE: return user_create(st, c, c->role);
    case ENGINE_CMD_SESSION_CREATE: return session_create(st, c);
    case ENGINE_CMD_SESSION_REVOKE: return session_revoke(st, c);
    case ENGINE_CMD_API_KEY_CREATE: return key_create(st, c);
    case ENGINE_CMD_API_KEY_REVOKE: return key_revoke(st, c);
    case ENGINE_CMD_USER_ROLE_SET: return role_set(st, c);
    case ENGINE_CMD_SIGNIN_FAILED:
      auth_audit(st, ENGINE_AUDIT_SIGNIN_FAILED, ENGINE_PRINCIPAL_ANONYMOUS, 0, 0, c->u.auth.username, c->client_addr);
      return ENGINE_OK;
    default: LEDGER_ASSERT(!"not an auth command");
  }
  return ENGINE_R_INVALID_OPERATION;
}

void auth_read(const engine_state_t *st, engine_cmd_t *c) {
  c->result = ENGINE_OK;
  switch (c->kind) {
    case ENGINE_CMD_WHOAMI: {
      uint64_t p = c->principal_id;
      if (p != 0 && (p & ENGINE_PRINCIPAL_KEY_BIT)) c->api_key = st->keys[(p & ~ENGINE_PRINCIPAL_KEY_BIT) - 1];
      else if (p != 0 && p <= st->user_count) c->user = st->users[p - 1];
      break;
    }
    case ENGINE_CMD_USER_LOOKUP: {
      uint64_t id = user_find(st, c->u.auth.username);
      if (id) c->user = st->users[id - 1];
      else c->result = ENGINE_R_USER_NOT_FOUND;
      break;
    }
    case ENGINE_CMD_AUDIT_LIST: {
      uint64_t oldest = st->audit_count > ENGINE_AUDIT_RING_EVENTS ? st->audit_count - ENGINE_AUDIT_RING_EVENTS : 0;
      uint64_t seq = c->u.audit.after_seq < oldest ? oldest : c->u.audit.after_seq;
      uint32_t n = 0;
      while (seq < st->audit_count && n < c->u.audit.limit) {
        c->u.audit.rows[n++] = st->audit[seq % ENGINE_AUDIT_RING_EVENTS];
        seq++;
      }
      c->row_count = n;
      c->next_cursor = seq < st->audit_count ? seq : 0;
      break;
    }
    default: LEDGER_ASSERT(!"not an auth read");
  }
}
