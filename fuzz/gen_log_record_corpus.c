/*
 * gen_log_record_corpus.c — writes the seed corpus of fuzz_log_record: real record payloads
 * (batch header + commands) encoded by the engine's own codec, one file per record. Each
 * seed is self-contained on a fresh state (it opens the accounts it uses), so it is
 * meaningful whichever inputs ran before it.
 *
 * Not part of the build (run once; the outputs are committed):
 *   cmake --build build-test --target ledger_engine
 *   cc -std=c17 -D_GNU_SOURCE -Isrc fuzz/gen_log_record_corpus.c build-test/libledger_engine.a \
 *      build-test/libledger_store.a build-test/libledger_obs.a build-test/libledger_base.a \
 *      -lxxhash -lpthread -fsanitize=address,undefined -o /tmp/gen && /tmp/gen fuzz/corpus/fuzz_log_record
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_state.h"
#include "store/store.h"

#define BUF_BYTES (1u << 20)
#define T0_MS 1700000000000ll

static uint8_t buf[BUF_BYTES];
static encoder_t enc = {buf, BUF_BYTES, 0};
static uint32_t count;

static void begin(void) {
  enc.len = STORE_RECORD_HEADER_BYTES + ENGINE_BATCH_HEADER_BYTES;
  count = 0;
}

static void add(const engine_cmd_t *c) {
  (void)codec_encode_cmd(&enc, c);
  count++;
}

static void finish(const char *dir, const char *name) {
  uint8_t *p = buf + STORE_RECORD_HEADER_BYTES;
  uint64_t seq = 1;
  int64_t t = T0_MS;
  uint32_t zero = 0;
  memcpy(p, &seq, 8);
  memcpy(p + 8, &t, 8);
  memcpy(p + 16, &count, 4);
  memcpy(p + 20, &zero, 4);
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, enc.len - STORE_RECORD_HEADER_BYTES, f) != enc.len - STORE_RECORD_HEADER_BYTES) {
    perror(path);
    exit(1);
  }
  fclose(f);
}

static engine_cmd_t cmd(uint8_t kind) {
  engine_cmd_t c;
  memset(&c, 0, sizeof c);
  c.kind = kind;
  return c;
}

static void account(uint8_t currency, bool overdraft, const char *region, const char *extra) {
  engine_cmd_t c = cmd(ENGINE_CMD_ACCOUNT_CREATE);
  c.u.account_create.owner_id = 7;
  c.u.account_create.currency = currency;
  c.u.account_create.allow_overdraft = overdraft;
  c.u.account_create.region = region;
  c.u.account_create.extra = extra;
  c.u.account_create.extra_len = extra ? (uint32_t)strlen(extra) : 0;
  add(&c);
}

static engine_transfer_in_t item(uint8_t kind, uint64_t dr, uint64_t cr, int64_t digits, uint8_t scale) {
  engine_transfer_in_t in;
  memset(&in, 0, sizeof in);
  in.kind = kind;
  in.debit_account_id = dr;
  in.credit_account_id = cr;
  in.amount_digits = digits;
  in.amount_scale = scale;
  return in;
}

static void transfer(engine_transfer_in_t in, bool keyed) {
  engine_cmd_t c = cmd(ENGINE_CMD_TRANSFER);
  c.u.transfer = in;
  if (keyed) {
    c.has_idempotency = true;
    c.idempotency_key = (ledger_hash128_t){0x1234, 0x5678};
    c.body_hash = (ledger_hash128_t){0x9abc, 0xdef0};
  }
  add(&c);
}

static void settle(bool post, uint64_t no, int64_t digits, uint8_t scale) {
  engine_cmd_t c = cmd(post ? ENGINE_CMD_TRANSFER_POST : ENGINE_CMD_TRANSFER_VOID);
  c.u.settle.no = no;
  c.u.settle.created_ms = T0_MS; /* the fuzz target keeps times near the seed's */
  c.u.settle.amount_digits = digits;
  c.u.settle.amount_scale = scale;
  add(&c);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  /* Accounts 11 (USD), 12 (USD), 13 (JPY, overdraft): deposits, transfers, a withdrawal. */
  begin();
  account(1, false, "default", NULL);
  account(1, false, "eu-west", "{\"name\":\"alice\"}");
  account(4, true, "default", NULL);
  transfer(item(ENGINE_KIND_DEPOSIT, 0, 11, 100000, 2), false);
  transfer(item(ENGINE_KIND_TRANSFER, 11, 12, 2550, 2), false);
  engine_transfer_in_t described = item(ENGINE_KIND_TRANSFER, 12, 11, 5, 1);
  described.extra = "{\"description\":\"rent\"}";
  described.extra_len = (uint32_t)strlen(described.extra);
  transfer(described, true);
  transfer(item(ENGINE_KIND_WITHDRAWAL, 11, 0, 1, 0), false);
  transfer(item(ENGINE_KIND_TRANSFER, 13, 10, 500, 0), false); /* JPY overdraft -> cash CNY: mismatch */
  finish(dir, "seed-accounts-transfers");

  /* Two-phase: pendings with and without timeout, post partial, void, an expired one. */
  begin();
  account(1, false, "default", NULL);
  account(1, false, "default", NULL);
  transfer(item(ENGINE_KIND_DEPOSIT, 0, 11, 10000, 2), false);
  engine_transfer_in_t p = item(ENGINE_KIND_TRANSFER, 11, 12, 3000, 2);
  p.pending = 1;
  transfer(p, false); /* no 2 */
  p.timeout_s = 1;
  transfer(p, false); /* no 3 */
  p.timeout_s = 0;
  transfer(p, false); /* no 4 */
  settle(true, 2, 1000, 2);
  settle(false, 3, 0, 0);
  settle(true, 4, 0, 0);
  settle(true, 4, 0, 0); /* not pending any more */
  finish(dir, "seed-two-phase");

  /* Batches: atomic failing (rolled back, with a pending timeout), non-atomic, keyed. */
  begin();
  account(5, false, "default", NULL); /* BHD */
  account(5, false, "default", NULL);
  transfer(item(ENGINE_KIND_DEPOSIT, 0, 11, 1005, 3), false);
  engine_transfer_in_t items[3] = {item(ENGINE_KIND_TRANSFER, 11, 12, 300, 3),
                                   item(ENGINE_KIND_TRANSFER, 11, 12, 200, 3),
                                   item(ENGINE_KIND_TRANSFER, 11, 12, 999999, 3)};
  items[1].pending = 1;
  items[1].timeout_s = 5;
  items[0].extra = "ab";
  items[0].extra_len = 2;
  engine_cmd_t b = cmd(ENGINE_CMD_TRANSFER_BATCH);
  b.u.batch.items = items;
  b.u.batch.item_count = 3;
  b.u.batch.atomic = true;
  add(&b);
  b.u.batch.atomic = false;
  b.has_idempotency = true;
  b.idempotency_key = (ledger_hash128_t){42, 43};
  b.body_hash = (ledger_hash128_t){44, 45};
  add(&b);
  finish(dir, "seed-batches");

  /* Freeze, transfer while frozen, unfreeze; freeze of a system account. */
  begin();
  account(2, false, "default", NULL); /* EUR */
  account(2, true, "default", NULL);
  engine_cmd_t f = cmd(ENGINE_CMD_ACCOUNT_FREEZE);
  f.u.account.account_id = 11;
  add(&f);
  transfer(item(ENGINE_KIND_TRANSFER, 12, 11, 100, 2), false);
  f.kind = ENGINE_CMD_ACCOUNT_UNFREEZE;
  add(&f);
  transfer(item(ENGINE_KIND_TRANSFER, 12, 11, 100, 2), false);
  f.kind = ENGINE_CMD_ACCOUNT_FREEZE;
  f.u.account.account_id = 2;
  add(&f);
  finish(dir, "seed-freeze");

  /* A batch header with no commands (an expiry-only batch). */
  begin();
  finish(dir, "seed-empty-batch");
  return 0;
}
