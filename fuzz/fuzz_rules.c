/*
 * fuzz_rules.c — libFuzzer target for the risk-rules file parser (engine_rules_parse).
 *
 * Beyond "does not crash": a file the parser accepts must be a set the engine accepts
 * (RULES_SET on a fresh state answers ENGINE_OK and bumps the version), parsing is
 * deterministic (the same bytes give the same set, byte for byte), and the set keeps its
 * shape: at most 32 rules, ids valid and distinct, velocity slots 0.. in order, every
 * blocklist range inside the list and sorted. A refused file must say which line.
 *
 * Replayed in `make test` by fuzz/replay_main.c over fuzz/corpus/fuzz_rules.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(cond)                                                                   \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "fuzz_rules: %s failed at line %d\n", #cond, __LINE__);               \
      abort();                                                                               \
    }                                                                                        \
  } while (0)

static engine_state_t st;
static bool ready;
static uint64_t seq;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ready) {
    if (state_init(&st, 1000) != 0) abort();
    ready = true;
  }
  static engine_rules_t a, b;
  char err[200], err2[200];
  int rc = engine_rules_parse((const char *)data, size, &a, err, sizeof err);
  int rc2 = engine_rules_parse((const char *)data, size, &b, err2, sizeof err2);
  FUZZ_REQUIRE(rc == rc2 && memcmp(&a, &b, sizeof a) == 0 && strcmp(err, err2) == 0);
  if (rc != 0) {
    FUZZ_REQUIRE(rc == LEDGER_EINVAL && strncmp(err, "line ", 5) == 0);
    return 0;
  }
  FUZZ_REQUIRE(a.version == 0 && a.count <= ENGINE_RULES_MAX && a.block_count <= ENGINE_BLOCKLIST_MAX);
  unsigned slots = 0;
  for (unsigned i = 0; i < a.count; i++) {
    const engine_rule_t *r = &a.rules[i];
    FUZZ_REQUIRE(r->id[0] != '\0' && strlen(r->id) <= ENGINE_RULE_ID_BYTES_MAX);
    for (unsigned j = 0; j < i; j++) FUZZ_REQUIRE(strcmp(a.rules[j].id, r->id) != 0);
    FUZZ_REQUIRE(r->action >= ENGINE_ACTION_FLAG && r->action <= ENGINE_ACTION_REJECT);
    if (r->type == ENGINE_RULE_VELOCITY) FUZZ_REQUIRE(r->vel_slot == slots++);
    FUZZ_REQUIRE((uint64_t)r->block_first + r->block_count <= a.block_count);
    for (uint32_t k = 1; k < r->block_count; k++)
      FUZZ_REQUIRE(a.blocklist[r->block_first + k - 1] <= a.blocklist[r->block_first + k]);
  }
  /* The engine takes what the parser gave: a new version, or "unchanged" for the same set. */
  engine_cmd_t cmd;
  memset(&cmd, 0, sizeof cmd);
  cmd.kind = ENGINE_CMD_RULES_SET;
  cmd.auth_mode = ENGINE_AUTH_TRUSTED;
  cmd.u.rules.set = &a;
  uint32_t before = st.rules.version;
  if (before + 1 >= ENGINE_RULE_VERSIONS_MAX) return 0;
  (void)state_begin_batch(&st, ++seq, 1700000000000ll);
  (void)state_apply(&st, &cmd, 0);
  st.last_seq = seq;
  st.last_time_ms = 1700000000000ll;
  FUZZ_REQUIRE(cmd.result == ENGINE_OK);
  FUZZ_REQUIRE(st.rules.version == before + (cmd.rules_changed ? 1u : 0u));
  a.version = st.rules.version;
  FUZZ_REQUIRE(memcmp(&a, &st.rules, sizeof a) == 0);
  return 0;
}
