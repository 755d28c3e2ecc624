/*
 * ledgerctl — administration of a stopped server's data directory.
 *   ledgerctl --data-dir DIR verify   replay the whole log and check every invariant
 *   ledgerctl --data-dir DIR user create --username U --password-file F [--role R] [--email E]
 *                                     create a user (the first admin, typically); the password
 *                                     is read from a file so it never shows in `ps` or history
 * Exit status 0 on success, non-zero with a one-line reason otherwise.
 */
#include <stdio.h>
#include <string.h>

#include "auth/auth.h"
#include "engine/engine.h"

static int usage(void) {
  fprintf(stderr,
          "usage: ledgerctl --data-dir DIR verify\n"
          "       ledgerctl --data-dir DIR user create --username U --password-file F [--role admin|auditor|customer]\n"
          "                 [--email E]\n");
  return 2;
}

static int read_password(const char *path, char *buf, size_t cap, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  size_t n = fread(buf, 1, cap, f);
  fclose(f);
  if (n == cap) return -2; /* too long */
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
  buf[n] = '\0';
  *len = n;
  return 0;
}

static int user_create(const char *data_dir, int argc, char **argv) {
  const char *username = NULL, *pwfile = NULL, *role_name = "customer", *email = "";
  for (int i = 0; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--username") == 0) username = argv[i + 1];
    else if (strcmp(argv[i], "--password-file") == 0) pwfile = argv[i + 1];
    else if (strcmp(argv[i], "--role") == 0) role_name = argv[i + 1];
    else if (strcmp(argv[i], "--email") == 0) email = argv[i + 1];
    else return usage();
  }
  if (argc % 2 != 0 || !data_dir || !username || !pwfile) return usage();
  unsigned role = engine_role_find(role_name);
  if (!role) {
    fprintf(stderr, "ledgerctl: --role must be admin, auditor or customer\n");
    return 2;
  }
  if (strlen(username) == 0 || strlen(username) > ENGINE_USERNAME_BYTES_MAX || strlen(email) > ENGINE_EMAIL_BYTES_MAX) {
    fprintf(stderr, "ledgerctl: username 1-%u bytes, email up to %u\n", ENGINE_USERNAME_BYTES_MAX, ENGINE_EMAIL_BYTES_MAX);
    return 2;
  }
  char password[AUTH_PASSWORD_BYTES_MAX + 2];
  size_t plen = 0;
  int prc = read_password(pwfile, password, sizeof password, &plen);
  if (prc != 0 || plen < AUTH_PASSWORD_BYTES_MIN || plen > AUTH_PASSWORD_BYTES_MAX) {
    fprintf(stderr, "ledgerctl: the password file must hold %u to %u bytes%s\n", AUTH_PASSWORD_BYTES_MIN,
            AUTH_PASSWORD_BYTES_MAX, prc == -1 ? " (cannot read it)" : "");
    return 1;
  }
  char pwhash[AUTH_PWHASH_BYTES];
  auth_params_t params = auth_params_default();
  int rc = auth_init();
  if (rc == 0) rc = auth_password_hash(&params, password, plen, pwhash);
  memset(password, 0, sizeof password);
  if (rc != 0) {
    fprintf(stderr, "ledgerctl: password hashing failed: %s\n", ledger_strerror(rc));
    return 1;
  }
  engine_config_t ec = {.data_dir = data_dir, .fsync = true};
  engine_t *e = NULL;
  rc = engine_open(&ec, &e);
  if (rc != 0) {
    fprintf(stderr, "ledgerctl: cannot open %s: %s%s\n", data_dir, ledger_strerror(rc),
            rc == LEDGER_ELOCKED ? " (stop the server first)" : "");
    return 1;
  }
  engine_cmd_t cmd;
  memset(&cmd, 0, sizeof cmd);
  cmd.kind = ENGINE_CMD_USER_CREATE;
  cmd.auth_mode = ENGINE_AUTH_TRUSTED;
  cmd.principal_id = 0; /* the operator */
  cmd.u.auth.username = username;
  cmd.u.auth.email = email;
  cmd.u.auth.pwhash = pwhash;
  cmd.u.auth.role = (uint8_t)role;
  snprintf(cmd.client_addr, sizeof cmd.client_addr, "ledgerctl");
  rc = engine_run(e, &cmd);
  engine_close(e);
  if (rc != 0 || cmd.result != ENGINE_OK) {
    fprintf(stderr, "ledgerctl: user not created: %s\n", rc != 0 ? ledger_strerror(rc) : engine_result_code(cmd.result));
    return 1;
  }
  printf("created user %llu '%s' with role %s\n", (unsigned long long)cmd.user.id, cmd.user.username,
         engine_role_name(cmd.user.role));
  return 0;
}

int main(int argc, char **argv) {
  const char *data_dir = NULL, *command = NULL;
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--data-dir") == 0 && i + 1 < argc) {
      data_dir = argv[++i];
    } else {
      command = argv[i++];
      break;
    }
  }
  if (command && strcmp(command, "user") == 0) {
    if (i < argc && strcmp(argv[i], "create") == 0) return user_create(data_dir, argc - i - 1, argv + i + 1);
    return usage();
  }
  if (i < argc) return usage();
  if (!command) return usage();
  if (strcmp(command, "verify") == 0) {
    if (!data_dir) return usage();
    engine_verify_report_t rep;
    int rc = engine_verify(data_dir, &rep);
    if (rc == LEDGER_ELOCKED) {
      fprintf(stderr, "ledgerctl: %s is in use by a running server; stop it first\n", data_dir);
      return 1;
    }
    if (rc != 0) {
      fprintf(stderr, "ledgerctl: verify FAILED: %s\n", rep.problem[0] ? rep.problem : ledger_strerror(rc));
      return 1;
    }
    printf("verify ok: %llu batches, last seq %llu, %llu accounts, %llu transfers%s; sums zero per currency, "
           "no account below its floor, every history balance consistent%s\n",
           (unsigned long long)rep.batches, (unsigned long long)rep.last_seq, (unsigned long long)rep.accounts,
           (unsigned long long)rep.transfers, rep.torn_tail ? " (a torn last record was ignored)" : "",
           rep.snapshot_other_version ? "; the newest snapshot is in another format version, not compared" : "");
    return 0;
  }
  if (strcmp(command, "backup") == 0 || strcmp(command, "restore") == 0) {
    fprintf(stderr, "ledgerctl: '%s' is not built yet (backups are a later issue)\n", command);
    return 2;
  }
  return usage();
}
