/*
 * api_rules.c — loading the risk-rule file (docs/rules.md) for start-up, SIGHUP and
 * POST /v1/rules/reload. The engine owns the rules; this only reads the file and hands the
 * parsed set over in one command.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

#define RULES_FILE_BYTES_MAX (1u * 1024u * 1024u)

int api_rules_read(const char *path, engine_rules_t *out, char *err, size_t cap) {
  if (!path) {
    engine_rules_default(out);
    err[0] = '\0';
    return LEDGER_OK;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, cap, "%.100s: %s", path, strerror(errno));
    return LEDGER_EIO;
  }
  char *text = malloc(RULES_FILE_BYTES_MAX + 1);
  size_t n = text ? fread(text, 1, RULES_FILE_BYTES_MAX + 1, f) : 0;
  bool read_error = ferror(f) != 0;
  fclose(f);
  if (!text || read_error || n > RULES_FILE_BYTES_MAX) {
    snprintf(err, cap, "%.100s: %s", path, !text ? "out of memory" : read_error ? "read error" : "larger than 1 MiB");
    free(text);
    return text ? LEDGER_EINVAL : LEDGER_ENOMEM;
  }
  char why[128];
  int rc = engine_rules_parse(text, n, out, why, sizeof why);
  free(text);
  if (rc != 0) snprintf(err, cap, "%.100s: %s", path, why);
  else err[0] = '\0';
  return rc;
}

int api_rules_apply(engine_t *engine, const engine_rules_t *rules, uint32_t *version, bool *changed) {
  engine_cmd_t *cmd = calloc(1, sizeof *cmd);
  if (!cmd) return LEDGER_ENOMEM;
  cmd->kind = ENGINE_CMD_RULES_SET;
  cmd->auth_mode = ENGINE_AUTH_TRUSTED;
  cmd->principal_id = 0; /* the operator */
  cmd->u.rules.set = rules;
  int rc = engine_run(engine, cmd);
  if (rc == 0 && cmd->result != ENGINE_OK) rc = LEDGER_EINVAL;
  if (rc == 0) {
    *version = cmd->rules_version;
    *changed = cmd->rules_changed;
  }
  free(cmd);
  return rc;
}
