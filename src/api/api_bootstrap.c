/*
 * api_bootstrap.c — the first admin credential. No default password exists: on a ledger with
 * no users and no API keys, ledgerd creates one admin API key named "bootstrap" and writes it
 * to DATA_DIR/bootstrap-admin-key (mode 0600, never logged). The operator uses it to create
 * users (POST /v1/users with "role") and then revokes it (DELETE /v1/api-keys/{id}).
 * Main thread, at start-up, after engine_open.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "auth/auth.h"
#include "store/store.h"

int api_bootstrap(engine_t *engine, const char *data_dir, char *path_out, size_t path_cap) {
  engine_stats_t st;
  engine_get_stats(engine, &st);
  path_out[0] = '\0';
  if (st.users > 0 || st.api_keys > 0) return LEDGER_OK; /* not a new ledger */
  engine_cmd_t cmd;
  memset(&cmd, 0, sizeof cmd);
  char key[AUTH_TOKEN_TEXT_BYTES];
  cmd.kind = ENGINE_CMD_API_KEY_CREATE;
  cmd.auth_mode = ENGINE_AUTH_TRUSTED;
  cmd.principal_id = 0; /* the operator */
  cmd.u.auth.role = ENGINE_ROLE_ADMIN;
  cmd.u.auth.name = "bootstrap";
  auth_token_new("ldk", key, cmd.u.auth.token_hash);
  int rc = engine_run(engine, &cmd);
  if (rc == 0 && cmd.result != ENGINE_OK) rc = LEDGER_EIO;
  if (rc == 0) {
    snprintf(path_out, path_cap, "%s/bootstrap-admin-key", data_dir);
    int fd = open(path_out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || fchmod(fd, 0600) != 0 || store_write_all(fd, key, strlen(key)) != 0 ||
        store_write_all(fd, "\n", 1) != 0 || fsync(fd) != 0)
      rc = LEDGER_EIO;
    if (fd >= 0) close(fd);
  }
  memset(key, 0, sizeof key);
  return rc;
}
