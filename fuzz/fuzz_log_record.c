/*
 * fuzz_log_record.c — libFuzzer target for the log's record decoder and the state machine
 * behind it: arbitrary bytes as one record payload into replay_record (what recovery and
 * verify do with every record that passed its CRC).
 *
 * Oracles: replay_record never crashes, asserts or trips a sanitizer, whatever it is given;
 * after every input — applied, rejected, or applied up to a malformed command — state_check
 * holds (zero sum per currency, floors, history chains); and replay is deterministic: every
 * RESET_INPUTS inputs the same inputs are replayed into a second fresh state, which must come
 * out with the same return codes and the same accounts and transfers byte for byte.
 *
 * To let the fuzzer reach the commands, the batch header is made acceptable unless the low
 * bit of its reserved word is set: seq becomes last_seq + 1, and a time that is not a
 * plausible wall-clock time at or after the last one (as the engine writes them) becomes the
 * last time plus the given one modulo 2^31 ms (int64 overflow of times is not what this
 * target is about). The state is rebuilt every RESET_INPUTS inputs so
 * memory stays bounded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RESET_INPUTS 32u
#define INPUT_BYTES_MAX (1u << 20)
#define IDEM_RETENTION_MS 60000u

typedef struct kept {
  uint8_t *data;
  uint32_t len;
  int rc;
} kept_t;

static engine_state_t st;
static replay_ctx_t rctx;
static bool ready;
static kept_t kept[RESET_INPUTS];
static unsigned kept_count;

static void die(const char *what, const char *detail) {
  fprintf(stderr, "fuzz_log_record: %s: %s\n", what, detail);
  abort();
}

static void check_state(const engine_state_t *s) {
  char problem[256];
  if (state_check(s, problem, sizeof problem) != 0) die("state_check", problem);
}

/* Replays the kept inputs into a fresh state: same codes, same bytes. */
static void check_determinism(void) {
  engine_state_t again;
  replay_ctx_t rc2;
  if (state_init(&again, IDEM_RETENTION_MS) != 0 || replay_ctx_init(&rc2, &again) != 0) die("init", "no memory");
  for (unsigned i = 0; i < kept_count; i++) {
    int rc = replay_record(&rc2, kept[i].data, kept[i].len, 1000u + (uint64_t)i * INPUT_BYTES_MAX);
    if (rc != kept[i].rc) die("determinism", "a replayed record returned another code");
  }
  if (again.account_count != st.account_count || again.transfer_count != st.transfer_count ||
      again.last_seq != st.last_seq ||
      memcmp(again.accounts, st.accounts, st.account_count * sizeof(account_rec_t)) != 0 ||
      memcmp(again.account_extra, st.account_extra, st.account_count * sizeof(account_extra_t)) != 0 ||
      !state_transfers_equal(&again, &st))
    die("determinism", "replaying the same records gave another state");
  replay_ctx_free(&rc2);
  state_free(&again);
}

static void reset(void) {
  if (ready) {
    check_determinism();
    for (unsigned i = 0; i < kept_count; i++) free(kept[i].data);
    kept_count = 0;
    state_free(&st);
  } else if (replay_ctx_init(&rctx, &st) != 0) {
    die("replay_ctx_init", "no memory");
  }
  if (state_init(&st, IDEM_RETENTION_MS) != 0) die("state_init", "no memory");
  rctx.st = &st;
  ready = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > INPUT_BYTES_MAX) return 0;
  if (!ready || kept_count == RESET_INPUTS) reset();
  uint8_t *p = malloc(size ? size : 1);
  if (!p) return 0;
  if (size) memcpy(p, data, size);
  if (size >= ENGINE_BATCH_HEADER_BYTES && !(p[20] & 1)) {
    uint64_t seq = st.last_seq + 1;
    int64_t given;
    memcpy(&given, p + 8, 8);
    int64_t time_ms = given >= st.last_time_ms && given < (INT64_C(1) << 47)
                          ? given
                          : st.last_time_ms + (int64_t)((uint64_t)given & 0x7fffffffu);
    memcpy(p, &seq, 8);
    memcpy(p + 8, &time_ms, 8);
  }
  /* The payload position only sets extra_pos values; any offset is fine but it must be the
   * same in the determinism replay. */
  uint64_t pos = 1000u + (uint64_t)kept_count * INPUT_BYTES_MAX;
  int rc = replay_record(&rctx, p, (uint32_t)size, pos);
  if (rc != 0 && rc != LEDGER_ECORRUPT) die("replay_record", "unexpected return code");
  check_state(&st);
  kept[kept_count].data = p;
  kept[kept_count].len = (uint32_t)size;
  kept[kept_count].rc = rc;
  kept_count++;
  return 0;
}
