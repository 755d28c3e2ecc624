/*
 * engine_codec.c — the log's binary encoding of commands, and the replay of a record.
 *
 * Record payload: batch header (seq u64, time_ms i64, command count u32, reserved u32), then
 * each command: len u32 | kind u8 | flags u8 | reserved u16 | principal u64 |
 * [idempotency key 16 | body hash 16] | body by kind (see below). Little-endian, fixed
 * widths, read with memcpy: the format does not depend on struct layout.
 * A transfer item on disk is 40 bytes: debit u64, credit u64, amount i64, timeout_s u32,
 * extra_len u32, currency u8, kind u8, pending u8, 5 zero bytes; its extra bytes follow
 * (for a batch, all items first, then all extras in item order).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_state.h"
#include "store/store.h"

#define CMD_FLAG_IDEM 0x01u
#define CMD_FLAG_ATOMIC 0x02u
#define CMD_HEADER_BYTES 16u
#define ITEM_WIRE_BYTES 40u

static uint8_t *put(uint8_t *p, const void *v, size_t n) {
  memcpy(p, v, n);
  return p + n;
}
static const uint8_t *get(const uint8_t *p, void *v, size_t n) {
  memcpy(v, p, n);
  return p + n;
}

static size_t body_bytes(const engine_cmd_t *c) {
  switch (c->kind) {
    case ENGINE_CMD_ACCOUNT_CREATE:
      return 16 + strlen(c->u.account_create.region) + c->u.account_create.extra_len;
    case ENGINE_CMD_TRANSFER: return ITEM_WIRE_BYTES + c->u.transfer.extra_len;
    case ENGINE_CMD_TRANSFER_POST:
    case ENGINE_CMD_TRANSFER_VOID: return 25;
    case ENGINE_CMD_ACCOUNT_FREEZE:
    case ENGINE_CMD_ACCOUNT_UNFREEZE: return 8;
    case ENGINE_CMD_USER_CREATE:
      return 5 + strlen(c->u.auth.username) + strlen(c->u.auth.email) + strlen(c->u.auth.pwhash) +
             strlen(c->client_addr);
    case ENGINE_CMD_SESSION_CREATE: return 16 + 32 + 1 + strlen(c->client_addr);
    case ENGINE_CMD_SESSION_REVOKE: return 32 + 1 + strlen(c->client_addr);
    case ENGINE_CMD_API_KEY_CREATE: return 1 + 32 + 1 + strlen(c->u.auth.name) + 1 + strlen(c->client_addr);
    case ENGINE_CMD_API_KEY_REVOKE: return 8 + 1 + strlen(c->client_addr);
    case ENGINE_CMD_SIGNIN_FAILED: return 2 + strlen(c->u.auth.username) + strlen(c->client_addr);
    case ENGINE_CMD_USER_ROLE_SET: return 9 + 1 + strlen(c->client_addr);
    case ENGINE_CMD_RULES_SET: return sizeof(engine_rules_t);
    case ENGINE_CMD_SUSPICIOUS_REVIEW: return 9;
    case ENGINE_CMD_TRANSFER_BATCH: {
      size_t n = 8 + (size_t)c->u.batch.item_count * ITEM_WIRE_BYTES;
      for (uint32_t i = 0; i < c->u.batch.item_count; i++) n += c->u.batch.items[i].extra_len;
      return n;
    }
    default: LEDGER_ASSERT(!"not a write command");
  }
  return 0;
}

size_t codec_cmd_bytes(const engine_cmd_t *c) {
  return CMD_HEADER_BYTES + (c->has_idempotency ? 32u : 0u) + body_bytes(c);
}

/* A short string: length byte, then the bytes (no NUL). */
static uint8_t *put_str(uint8_t *p, const char *s) {
  size_t n = strlen(s);
  LEDGER_ASSERT(n <= 255);
  *p++ = (uint8_t)n;
  return put(p, s, n);
}

static const uint8_t *get_str(const uint8_t *p, const uint8_t *end, char *dst, size_t cap) {
  if (p >= end) return NULL;
  size_t n = *p++;
  if (n >= cap || (size_t)(end - p) < n) return NULL;
  memcpy(dst, p, n);
  dst[n] = '\0';
  return p + n;
}

static uint8_t *put_item(uint8_t *p, const engine_transfer_in_t *in) {
  uint8_t tail[8] = {in->currency, in->kind, in->pending, in->amount_scale, 0, 0, 0, 0};
  p = put(p, &in->debit_account_id, 8);
  p = put(p, &in->credit_account_id, 8);
  p = put(p, &in->amount_digits, 8);
  p = put(p, &in->timeout_s, 4);
  p = put(p, &in->extra_len, 4);
  return put(p, tail, 8);
}

static const uint8_t *get_item(const uint8_t *p, engine_transfer_in_t *in) {
  uint8_t tail[8];
  memset(in, 0, sizeof *in);
  p = get(p, &in->debit_account_id, 8);
  p = get(p, &in->credit_account_id, 8);
  p = get(p, &in->amount_digits, 8);
  p = get(p, &in->timeout_s, 4);
  p = get(p, &in->extra_len, 4);
  p = get(p, tail, 8);
  in->currency = tail[0];
  in->kind = tail[1];
  in->pending = tail[2];
  in->amount_scale = tail[3];
  return p;
}

size_t codec_encode_cmd(encoder_t *enc, const engine_cmd_t *c) {
  uint32_t len = (uint32_t)codec_cmd_bytes(c);
  LEDGER_ASSERT(enc->len + len <= enc->cap);
  uint8_t *start = enc->buf + enc->len, *p = start;
  uint8_t flags = (uint8_t)((c->has_idempotency ? CMD_FLAG_IDEM : 0) |
                            (c->kind == ENGINE_CMD_TRANSFER_BATCH && c->u.batch.atomic ? CMD_FLAG_ATOMIC : 0));
  uint8_t hdr[4] = {c->kind, flags, 0, 0};
  p = put(p, &len, 4);
  p = put(p, hdr, 4);
  p = put(p, &c->principal_id, 8);
  if (c->has_idempotency) {
    p = put(p, &c->idempotency_key, 16);
    p = put(p, &c->body_hash, 16);
  }
  size_t extra_off = 0;
  switch (c->kind) {
    case ENGINE_CMD_ACCOUNT_CREATE: {
      size_t rlen = strlen(c->u.account_create.region);
      uint8_t b[4] = {c->u.account_create.currency, c->u.account_create.allow_overdraft, (uint8_t)rlen, 0};
      p = put(p, &c->u.account_create.owner_id, 8);
      p = put(p, b, 4);
      p = put(p, &c->u.account_create.extra_len, 4);
      p = put(p, c->u.account_create.region, rlen);
      extra_off = (size_t)(p - start);
      if (c->u.account_create.extra_len) p = put(p, c->u.account_create.extra, c->u.account_create.extra_len);
      break;
    }
    case ENGINE_CMD_TRANSFER:
      p = put_item(p, &c->u.transfer);
      extra_off = (size_t)(p - start);
      if (c->u.transfer.extra_len) p = put(p, c->u.transfer.extra, c->u.transfer.extra_len);
      break;
    case ENGINE_CMD_TRANSFER_POST:
    case ENGINE_CMD_TRANSFER_VOID:
      p = put(p, &c->u.settle.no, 8);
      p = put(p, &c->u.settle.created_ms, 8);
      p = put(p, &c->u.settle.amount_digits, 8);
      p = put(p, &c->u.settle.amount_scale, 1);
      break;
    case ENGINE_CMD_ACCOUNT_FREEZE:
    case ENGINE_CMD_ACCOUNT_UNFREEZE: p = put(p, &c->u.account.account_id, 8); break;
    case ENGINE_CMD_USER_CREATE:
      *p++ = c->u.auth.role;
      p = put_str(p, c->u.auth.username);
      p = put_str(p, c->u.auth.email);
      p = put_str(p, c->u.auth.pwhash);
      p = put_str(p, c->client_addr);
      break;
    case ENGINE_CMD_SESSION_CREATE:
      p = put(p, &c->u.auth.user_id, 8);
      p = put(p, &c->u.auth.expires_ms, 8);
      p = put(p, c->u.auth.token_hash, 32);
      p = put_str(p, c->client_addr);
      break;
    case ENGINE_CMD_SESSION_REVOKE:
      p = put(p, c->u.auth.token_hash, 32);
      p = put_str(p, c->client_addr);
      break;
    case ENGINE_CMD_API_KEY_CREATE:
      *p++ = c->u.auth.role;
      p = put(p, c->u.auth.token_hash, 32);
      p = put_str(p, c->u.auth.name);
      p = put_str(p, c->client_addr);
      break;
    case ENGINE_CMD_API_KEY_REVOKE:
      p = put(p, &c->u.auth.key_id, 8);
      p = put_str(p, c->client_addr);
      break;
    case ENGINE_CMD_SIGNIN_FAILED:
      p = put_str(p, c->u.auth.username);
      p = put_str(p, c->client_addr);
      break;
    case ENGINE_CMD_USER_ROLE_SET:
      p = put(p, &c->u.auth.user_id, 8);
      *p++ = c->u.auth.role;
      p = put_str(p, c->client_addr);
      break;
    case ENGINE_CMD_RULES_SET: p = put(p, c->u.rules.set, sizeof(engine_rules_t)); break;
    case ENGINE_CMD_SUSPICIOUS_REVIEW:
      p = put(p, &c->u.review.id, 8);
      *p++ = c->u.review.decision;
      break;
    case ENGINE_CMD_TRANSFER_BATCH: {
      uint32_t n = c->u.batch.item_count, zero = 0;
      p = put(p, &n, 4);
      p = put(p, &zero, 4);
      for (uint32_t i = 0; i < n; i++) p = put_item(p, &c->u.batch.items[i]);
      extra_off = (size_t)(p - start);
      for (uint32_t i = 0; i < n; i++) {
        if (c->u.batch.items[i].extra_len) p = put(p, c->u.batch.items[i].extra, c->u.batch.items[i].extra_len);
      }
      break;
    }
    default: LEDGER_ASSERT(!"not a write command");
  }
  LEDGER_ASSERT((size_t)(p - start) == len);
  enc->len += len;
  return (enc->len - len - STORE_RECORD_HEADER_BYTES) + extra_off;
}

size_t codec_decode_cmd(const uint8_t *p0, size_t avail, engine_cmd_t *c, engine_transfer_in_t *items,
                        engine_item_result_t *results, char *region_buf, size_t *extra_off_out) {
  /* Decoded strings of auth commands live here until the next decode (replay is one thread). */
  static _Thread_local struct {
    char username[ENGINE_USERNAME_BYTES_MAX + 1];
    char email[ENGINE_EMAIL_BYTES_MAX + 1];
    char pwhash[ENGINE_PWHASH_BYTES_MAX];
    char name[ENGINE_KEY_NAME_BYTES_MAX + 1];
    engine_rules_t rules;
  } strs;
  const uint8_t *p = p0;
  if (avail < CMD_HEADER_BYTES) return 0;
  uint32_t len;
  uint8_t hdr[4];
  memset(c, 0, sizeof *c);
  p = get(p, &len, 4);
  p = get(p, hdr, 4);
  p = get(p, &c->principal_id, 8);
  if (len > avail || len < CMD_HEADER_BYTES) return 0;
  const uint8_t *end = p0 + len;
  c->kind = hdr[0];
  c->has_idempotency = (hdr[1] & CMD_FLAG_IDEM) != 0;
  if (c->has_idempotency) {
    if (end - p < 32) return 0;
    p = get(p, &c->idempotency_key, 16);
    p = get(p, &c->body_hash, 16);
    if ((c->idempotency_key.lo | c->idempotency_key.hi) == 0) return 0; /* never written */
  }
  *extra_off_out = 0;
  switch (c->kind) {
    case ENGINE_CMD_ACCOUNT_CREATE: {
      uint8_t b[4];
      if (end - p < 16) return 0;
      p = get(p, &c->u.account_create.owner_id, 8);
      p = get(p, b, 4);
      p = get(p, &c->u.account_create.extra_len, 4);
      c->u.account_create.currency = b[0];
      c->u.account_create.allow_overdraft = b[1];
      if (b[2] > API_REGION_BYTES_MAX || end - p < (ptrdiff_t)b[2] + (ptrdiff_t)c->u.account_create.extra_len) return 0;
      memcpy(region_buf, p, b[2]);
      region_buf[b[2]] = '\0';
      c->u.account_create.region = region_buf;
      p += b[2];
      *extra_off_out = (size_t)(p - p0);
      c->u.account_create.extra = (const char *)p;
      p += c->u.account_create.extra_len;
      break;
    }
    case ENGINE_CMD_TRANSFER:
      if (end - p < ITEM_WIRE_BYTES) return 0;
      p = get_item(p, &c->u.transfer);
      if (end - p < (ptrdiff_t)c->u.transfer.extra_len) return 0;
      *extra_off_out = (size_t)(p - p0);
      c->u.transfer.extra = (const char *)p;
      p += c->u.transfer.extra_len;
      break;
    case ENGINE_CMD_TRANSFER_POST:
    case ENGINE_CMD_TRANSFER_VOID:
      if (end - p < 25) return 0;
      p = get(p, &c->u.settle.no, 8);
      p = get(p, &c->u.settle.created_ms, 8);
      p = get(p, &c->u.settle.amount_digits, 8);
      p = get(p, &c->u.settle.amount_scale, 1);
      break;
    case ENGINE_CMD_ACCOUNT_FREEZE:
    case ENGINE_CMD_ACCOUNT_UNFREEZE:
      if (end - p < 8) return 0;
      p = get(p, &c->u.account.account_id, 8);
      break;
    case ENGINE_CMD_USER_CREATE:
      if (end - p < 1) return 0;
      c->u.auth.role = *p++;
      if (!(p = get_str(p, end, strs.username, sizeof strs.username)) ||
          !(p = get_str(p, end, strs.email, sizeof strs.email)) ||
          !(p = get_str(p, end, strs.pwhash, sizeof strs.pwhash)) ||
          !(p = get_str(p, end, c->client_addr, sizeof c->client_addr)))
        return 0;
      c->u.auth.username = strs.username;
      c->u.auth.email = strs.email;
      c->u.auth.pwhash = strs.pwhash;
      break;
    case ENGINE_CMD_SESSION_CREATE:
      if (end - p < 48) return 0;
      p = get(p, &c->u.auth.user_id, 8);
      p = get(p, &c->u.auth.expires_ms, 8);
      p = get(p, c->u.auth.token_hash, 32);
      if (!(p = get_str(p, end, c->client_addr, sizeof c->client_addr))) return 0;
      break;
    case ENGINE_CMD_SESSION_REVOKE:
      if (end - p < 32) return 0;
      p = get(p, c->u.auth.token_hash, 32);
      if (!(p = get_str(p, end, c->client_addr, sizeof c->client_addr))) return 0;
      break;
    case ENGINE_CMD_API_KEY_CREATE:
      if (end - p < 33) return 0;
      c->u.auth.role = *p++;
      p = get(p, c->u.auth.token_hash, 32);
      if (!(p = get_str(p, end, strs.name, sizeof strs.name)) ||
          !(p = get_str(p, end, c->client_addr, sizeof c->client_addr)))
        return 0;
      c->u.auth.name = strs.name;
      break;
    case ENGINE_CMD_API_KEY_REVOKE:
      if (end - p < 8) return 0;
      p = get(p, &c->u.auth.key_id, 8);
      if (!(p = get_str(p, end, c->client_addr, sizeof c->client_addr))) return 0;
      break;
    case ENGINE_CMD_SIGNIN_FAILED:
      if (!(p = get_str(p, end, strs.username, sizeof strs.username)) ||
          !(p = get_str(p, end, c->client_addr, sizeof c->client_addr)))
        return 0;
      c->u.auth.username = strs.username;
      break;
    case ENGINE_CMD_USER_ROLE_SET:
      if (end - p < 9) return 0;
      p = get(p, &c->u.auth.user_id, 8);
      c->u.auth.role = *p++;
      if (!(p = get_str(p, end, c->client_addr, sizeof c->client_addr))) return 0;
      break;
    case ENGINE_CMD_RULES_SET:
      if ((size_t)(end - p) < sizeof(engine_rules_t)) return 0;
      p = get(p, &strs.rules, sizeof strs.rules);
      c->u.rules.set = &strs.rules;
      break;
    case ENGINE_CMD_SUSPICIOUS_REVIEW:
      if (end - p < 9) return 0;
      p = get(p, &c->u.review.id, 8);
      c->u.review.decision = *p++;
      break;
    case ENGINE_CMD_TRANSFER_BATCH: {
      uint32_t n, pad;
      if (end - p < 8) return 0;
      p = get(p, &n, 4);
      p = get(p, &pad, 4);
      if (n == 0 || n > ENGINE_BATCH_TRANSFERS_MAX || (size_t)(end - p) < (size_t)n * ITEM_WIRE_BYTES) return 0;
      for (uint32_t i = 0; i < n; i++) p = get_item(p, &items[i]);
      *extra_off_out = (size_t)(p - p0);
      for (uint32_t i = 0; i < n; i++) {
        if (end - p < (ptrdiff_t)items[i].extra_len) return 0;
        items[i].extra = (const char *)p;
        p += items[i].extra_len;
      }
      c->u.batch.items = items;
      c->u.batch.results = results;
      c->u.batch.item_count = n;
      c->u.batch.atomic = (hdr[1] & CMD_FLAG_ATOMIC) != 0;
      break;
    }
    default: return 0;
  }
  if (p != end) return 0;
  return len;
}

int replay_ctx_init(replay_ctx_t *rc, engine_state_t *st) {
  memset(rc, 0, sizeof *rc);
  rc->st = st;
  rc->items = calloc(ENGINE_BATCH_TRANSFERS_MAX, sizeof *rc->items);
  rc->results = calloc(ENGINE_BATCH_TRANSFERS_MAX, sizeof *rc->results);
  if (!rc->items || !rc->results) {
    replay_ctx_free(rc);
    return LEDGER_ENOMEM;
  }
  return LEDGER_OK;
}

void replay_ctx_free(replay_ctx_t *rc) {
  free(rc->items);
  free(rc->results);
  rc->items = NULL;
  rc->results = NULL;
}

/* Applies one logged batch exactly as the engine did: same stamps, same order, and every
 * command must come out the way it was logged (logged commands are fresh and were kept). */
int replay_record(void *ctx, const uint8_t *payload, uint32_t len, uint64_t payload_pos) {
  replay_ctx_t *rc = ctx;
  engine_state_t *st = rc->st;
  if (len < ENGINE_BATCH_HEADER_BYTES) {
    snprintf(rc->problem, sizeof rc->problem, "record at %llu too short", (unsigned long long)payload_pos);
    return LEDGER_ECORRUPT;
  }
  uint64_t seq;
  int64_t time_ms;
  uint32_t count;
  memcpy(&seq, payload, 8);
  memcpy(&time_ms, payload + 8, 8);
  memcpy(&count, payload + 16, 4);
  /* Times must fit a UUIDv7's 48 bits with room for deadlines (2^47 ms is year 6429). */
  if (seq != st->last_seq + 1 || time_ms < st->last_time_ms || time_ms >= (1ll << 47)) {
    snprintf(rc->problem, sizeof rc->problem, "record at %llu: seq %llu after %llu (gap or reorder)",
             (unsigned long long)payload_pos, (unsigned long long)seq, (unsigned long long)st->last_seq);
    return LEDGER_ECORRUPT;
  }
  st->replaying = true;
  (void)state_begin_batch(st, seq, time_ms);
  size_t off = ENGINE_BATCH_HEADER_BYTES;
  char region[API_REGION_BYTES_MAX + 1];
  for (uint32_t i = 0; i < count; i++) {
    engine_cmd_t cmd;
    size_t extra_off;
    size_t used = codec_decode_cmd(payload + off, len - off, &cmd, rc->items, rc->results, region, &extra_off);
    if (used == 0) {
      snprintf(rc->problem, sizeof rc->problem, "record seq %llu: command %u malformed",
               (unsigned long long)seq, i);
      st->replaying = false;
      return LEDGER_ECORRUPT;
    }
    (void)state_apply(st, &cmd, payload_pos + off + extra_off);
    off += used;
  }
  st->replaying = false;
  if (off != len) {
    snprintf(rc->problem, sizeof rc->problem, "record seq %llu: %zu trailing bytes", (unsigned long long)seq, len - off);
    return LEDGER_ECORRUPT;
  }
  st->last_seq = seq;
  st->last_time_ms = time_ms;
  rc->batches++;
  rc->end_pos = payload_pos + len;
  return 0;
}
