/*
 * ledgerd — the server: recovers the ledger from --data-dir, serves the v1 API on --listen,
 * and on SIGTERM/SIGINT shuts down cleanly: the engine applies and answers everything it
 * has accepted, the answers are sent, then the sockets close and a snapshot is written.
 *
 * Threads: main (signals, start-up, shutdown), N net threads (http), one engine thread.
 */
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "auth/auth.h"
#include "engine/engine.h"
#include "http/http.h"

static void usage(void) {
  fprintf(stderr,
          "usage: ledgerd --listen HOST:PORT --data-dir DIR [--threads N]\n"
          "               [--idempotency-retention-s S] [--snapshot-log-mb MB] [--snapshot-growth-pct P]\n"
          "               [--engine-queue N]\n"
          "               [--tls-listen HOST:PORT --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]\n"
          "               [--session-ttl-s S] [--argon2-opslimit N --argon2-memlimit-kib N]\n"
          "               [--no-auth] [--list-routes] [--rate-limit NAME=RATE/BURST | --rate-limit off]\n"
          "               [--config FILE] [--time-offset-s S] [--prefault-mb MB]\n"
          "               [--log-prealloc-mb MB] [--commit-interval-us US]\n"
          "               [--compat [--compat-open]] [--no-io-uring]\n"
          "  rate-limit names: signin.addr signin.user write.addr write.cred read.addr read.cred\n"
          "  --listen 127.0.0.1:0 picks a free port; the line 'listening on http://ADDR:PORT'\n"
          "  is printed once ready. On a new ledger the first admin credential is written to\n"
          "  DIR/bootstrap-admin-key (0600). --no-auth makes every request the operator (loopback\n"
          "  only; benchmarks and local use). --argon2-* lower the password hashing cost (tests).\n"
          "  --tls-listen adds a TLS-only listener (PEM cert chain and key; with --tls-client-ca\n"
          "  a client certificate from that CA is required); it prints 'listening on https://...'\n"
          "  on the line after the http one.\n"
          "  --config FILE: the risk rules and default region (docs/rules.md); without it the\n"
          "  built-in rule flags transfers of 10,000.00 or more. SIGHUP or POST /v1/rules/reload\n"
          "  re-reads it. --time-offset-s (tests only) runs the ledger's clock S seconds ahead.\n"
          "  --prefault-mb MB (default 256, 0 = off): at most this much memory populated ahead of\n"
          "  the transfer and link tables (a quarter of what it uses, at least 8 MiB) by a thread at idle\n"
          "  priority (normal while it is behind), so the engine does not zero fresh pages itself.\n"
          "  --log-prealloc-mb MB (default 16, 0 = off): zeros kept written ahead of the log, so\n"
          "  each commit's fdatasync writes the data alone (docs/storage.md).\n"
          "  --snapshot-log-mb MB (default 256) and --snapshot-growth-pct P (default 100, 0 = off,\n"
          "  max 1000): a snapshot is taken after MB of log, or after P %% of the newest snapshot's\n"
          "  size in log if that is more (docs/storage.md).\n"
          "  --commit-interval-us US (default 1000, 0 = off, max 100000): while requests come\n"
          "  concurrently, at most one log write + fdatasync per US (docs/storage.md).\n"
          "  --compat serves the seed systems' routes (docs/compat.md); --compat-open lets their\n"
          "  banking-API and Flask routes run without a credential, as the operator: UNSAFE,\n"
          "  loopback only. --compat --list-routes lists the compat routes too.\n"
          "  --no-io-uring: plain read/send system calls in the net threads (by default each\n"
          "  batches its socket reads and sends through an io_uring where the kernel allows).\n");
}

/* "off", or NAME=RATE/BURST (rate per second, burst tokens). */
static bool parse_rate(const char *v, api_config_t *ac) {
  if (strcmp(v, "off") == 0) {
    ac->rate_limits_off = true;
    return true;
  }
  const char *eq = strchr(v, '='), *slash = eq ? strchr(eq, '/') : NULL;
  if (!eq || !slash) return false;
  for (unsigned i = 0; i < API_RL_COUNT; i++) {
    if (strlen(api_rl_rule_names[i]) != (size_t)(eq - v) || strncmp(v, api_rl_rule_names[i], (size_t)(eq - v)) != 0)
      continue;
    char *end;
    double rate = strtod(eq + 1, &end);
    if (end != slash || !(rate >= 0.001 && rate <= 1e6)) return false;
    double burst = strtod(slash + 1, &end);
    if (*end || !(burst >= 1 && burst <= 1e6)) return false;
    ac->rates[i] = (api_rate_rule_t){rate, burst};
    return true;
  }
  return false;
}

static bool parse_u64(const char *s, uint64_t max, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || s[0] < '0' || s[0] > '9' || v > max) return false;
  *out = v;
  return true;
}

static bool loopback_host(const char *h) {
  return strcmp(h, "127.0.0.1") == 0 || strcmp(h, "::1") == 0 || strcmp(h, "localhost") == 0;
}

/* ---- the optional TLS listener: a second http server, TLS on every connection, sharing the
 * plain server's handler, context and per-thread state (its thread indexes follow the plain
 * server's, so thread_index_base = plain threads; together at most HTTP_THREADS_MAX). */
typedef struct tls_opts {
  const char *listen, *cert, *key, *client_ca;
  char host[256];
  uint16_t port;
} tls_opts_t;

/* True if `a` is a --tls-* option (its value `v` is then taken). */
static bool tls_opt_take(tls_opts_t *o, const char *a, const char *v) {
  const char **slot = strcmp(a, "--tls-listen") == 0      ? &o->listen
                      : strcmp(a, "--tls-cert") == 0      ? &o->cert
                      : strcmp(a, "--tls-key") == 0       ? &o->key
                      : strcmp(a, "--tls-client-ca") == 0 ? &o->client_ca
                                                          : NULL;
  if (slot == NULL || v == NULL) return false;
  *slot = v;
  return true;
}

/* After parsing: the TLS options make sense together. False after printing why (exit 2). */
static bool tls_opts_check(tls_opts_t *o, uint64_t plain_threads, bool no_auth) {
  if (o->listen == NULL) {
    if (o->cert == NULL && o->key == NULL && o->client_ca == NULL) return true;
    fprintf(stderr, "ledgerd: --tls-cert, --tls-key and --tls-client-ca need --tls-listen\n");
    return false;
  }
  if (o->cert == NULL || o->key == NULL) {
    fprintf(stderr, "ledgerd: --tls-listen needs --tls-cert FILE and --tls-key FILE\n");
    return false;
  }
  const char *colon = strrchr(o->listen, ':');
  uint64_t port;
  if (!colon || colon == o->listen || (size_t)(colon - o->listen) >= sizeof o->host ||
      !parse_u64(colon + 1, 65535, &port)) {
    fprintf(stderr, "ledgerd: --tls-listen must be HOST:PORT, got '%s'\n", o->listen);
    return false;
  }
  memcpy(o->host, o->listen, (size_t)(colon - o->listen));
  o->host[colon - o->listen] = '\0';
  o->port = (uint16_t)port;
  /* The same rule as for --listen: the TLS port must not open --no-auth to the network. */
  if (no_auth && strcmp(o->host, "127.0.0.1") != 0 && strcmp(o->host, "::1") != 0 &&
      strcmp(o->host, "localhost") != 0) {
    fprintf(stderr, "ledgerd: --no-auth serves everyone as the operator: loopback addresses only\n");
    return false;
  }
  if (plain_threads >= HTTP_THREADS_MAX) {
    fprintf(stderr, "ledgerd: --tls-listen needs --threads below %d\n", HTTP_THREADS_MAX);
    return false;
  }
  return true;
}

/* Starts the TLS server with the plain server's settings; prints why it cannot. */
static int tls_server_start(const tls_opts_t *o, const http_config_t *plain, http_server_t **out) {
  http_config_t hc = *plain;
  hc.host = o->host;
  hc.port = o->port;
  hc.thread_index_base = plain->thread_index_base + plain->threads;
  unsigned room = HTTP_THREADS_MAX - hc.thread_index_base;
  hc.threads = plain->threads < room ? plain->threads : room;
  hc.tls_cert_file = o->cert;
  hc.tls_key_file = o->key;
  hc.tls_client_ca_file = o->client_ca;
  int rc = http_server_start(&hc, out);
  if (rc == -EBADMSG) {
    fprintf(stderr, "ledgerd: cannot listen on https %s: TLS certificate, key or CA refused (see above)\n",
            o->listen);
  } else if (rc != 0) {
    fprintf(stderr, "ledgerd: cannot listen on https %s: %s\n", o->listen, strerror(-rc));
  }
  return rc;
}

/* Start-up and SIGHUP: read the rules file and hand it to the engine. */
static int reload_rules(engine_t *engine, const char *path, bool at_start) {
  engine_rules_t *rules = malloc(sizeof *rules);
  if (!rules) return LEDGER_ENOMEM;
  char err[200];
  int rc = api_rules_read(path, rules, err, sizeof err);
  uint32_t version = 0;
  bool changed = false;
  if (rc == 0) rc = api_rules_apply(engine, rules, &version, &changed);
  else fprintf(stderr, "ledgerd: rules not %s: %s\n", at_start ? "loaded" : "reloaded (the old ones stay)", err);
  if (rc == 0)
    LOG_INFO("rules: %s, version %u%s", path ? path : "built-in", (unsigned)version, changed ? " (new)" : " (unchanged)");
  free(rules);
  return rc;
}

int main(int argc, char **argv) {
  const char *listen = "127.0.0.1:8080", *data_dir = NULL;
  uint64_t queue_max = ENGINE_QUEUE_COMMANDS_MAX;
  tls_opts_t tls = {0};
  bool no_auth = false, list_routes = false, no_io_uring = false;
  api_config_t ac = {0};
  api_rate_defaults(ac.rates);
  uint64_t session_ttl_s = AUTH_SESSION_TTL_S_DEFAULT;
  auth_params_t argon = auth_params_default();
  uint64_t argon_ops = argon.opslimit, argon_mem_kib = argon.memlimit_bytes / 1024;
  const char *config_path = NULL;
  uint64_t time_offset_s = 0;
  uint64_t prefault_mb = 256;
  uint64_t log_prealloc_mb = 16; /* store.h: STORE_PREALLOC_BYTES_DEFAULT */
  uint64_t commit_interval_us = 1000;
  uint64_t snapshot_growth_pct = 100;
  uint64_t threads = 0, retention_s = ENGINE_IDEMPOTENCY_RETENTION_MS_DEFAULT / 1000, snapshot_mb = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    bool ok = true;
    if (strcmp(a, "--listen") == 0 && v) listen = v;
    else if (strcmp(a, "--data-dir") == 0 && v) data_dir = v;
    else if (strcmp(a, "--threads") == 0 && v) ok = parse_u64(v, HTTP_THREADS_MAX, &threads) && threads > 0;
    else if (strcmp(a, "--idempotency-retention-s") == 0 && v) ok = parse_u64(v, 90ull * 86400, &retention_s) && retention_s > 0;
    else if (strcmp(a, "--snapshot-log-mb") == 0 && v) ok = parse_u64(v, 1u << 20, &snapshot_mb);
    else if (strcmp(a, "--snapshot-growth-pct") == 0 && v)
      ok = parse_u64(v, ENGINE_SNAPSHOT_GROWTH_PCT_MAX, &snapshot_growth_pct);
    else if (strcmp(a, "--engine-queue") == 0 && v)
      ok = parse_u64(v, ENGINE_QUEUE_COMMANDS_MAX, &queue_max) && queue_max >= 2 && (queue_max & (queue_max - 1)) == 0;
    else if (tls_opt_take(&tls, a, v)) {}
    else if (strcmp(a, "--session-ttl-s") == 0 && v) ok = parse_u64(v, 30ull * 86400, &session_ttl_s) && session_ttl_s > 0;
    else if (strcmp(a, "--argon2-opslimit") == 0 && v) ok = parse_u64(v, 16, &argon_ops) && argon_ops >= 1;
    else if (strcmp(a, "--argon2-memlimit-kib") == 0 && v) ok = parse_u64(v, 1u << 21, &argon_mem_kib) && argon_mem_kib >= 8;
    else if (strcmp(a, "--no-auth") == 0) { no_auth = true; i--; }
    else if (strcmp(a, "--no-io-uring") == 0) { no_io_uring = true; i--; }
    else if (strcmp(a, "--rate-limit") == 0 && v) ok = parse_rate(v, &ac);
    else if (strcmp(a, "--list-routes") == 0) { list_routes = true; i--; }
    else if (strcmp(a, "--compat") == 0) { ac.compat = true; i--; }
    else if (strcmp(a, "--compat-open") == 0) { ac.compat_open = true; i--; }
    else if (strcmp(a, "--config") == 0 && v) config_path = v;
    else if (strcmp(a, "--time-offset-s") == 0 && v) ok = parse_u64(v, 10ull * 366 * 86400, &time_offset_s);
    else if (strcmp(a, "--prefault-mb") == 0 && v) ok = parse_u64(v, 4096, &prefault_mb);
    else if (strcmp(a, "--log-prealloc-mb") == 0 && v) ok = parse_u64(v, 1024, &log_prealloc_mb);
    else if (strcmp(a, "--commit-interval-us") == 0 && v) ok = parse_u64(v, 100000, &commit_interval_us);
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage();
      return 0;
    } else {
      fprintf(stderr, "ledgerd: unknown or incomplete option '%s'\n", a);
      usage();
      return 2;
    }
    if (!ok) {
      fprintf(stderr, "ledgerd: bad value for %s: '%s'\n", a, v);
      return 2;
    }
    i++;
  }
  if (ac.compat_open && !ac.compat) {
    fprintf(stderr, "ledgerd: --compat-open needs --compat\n");
    return 2;
  }
  if (list_routes) {
    api_print_routes(stdout);
    if (ac.compat) api_print_compat_routes(stdout);
    return 0;
  }
  if (!data_dir) {
    fprintf(stderr, "ledgerd: --data-dir is required\n");
    usage();
    return 2;
  }
  char host[256];
  const char *colon = strrchr(listen, ':');
  uint64_t port;
  if (!colon || (size_t)(colon - listen) >= sizeof host || colon == listen || !parse_u64(colon + 1, 65535, &port)) {
    fprintf(stderr, "ledgerd: --listen must be HOST:PORT, got '%s'\n", listen);
    return 2;
  }
  memcpy(host, listen, (size_t)(colon - listen));
  host[colon - listen] = '\0';
  if (no_auth && strcmp(host, "127.0.0.1") != 0 && strcmp(host, "::1") != 0 && strcmp(host, "localhost") != 0) {
    fprintf(stderr, "ledgerd: --no-auth serves everyone as the operator: loopback addresses only\n");
    return 2;
  }
  if (threads == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    threads = n > 1 ? (uint64_t)n : 1;
  }
  if (!tls_opts_check(&tls, threads, no_auth)) return 2;
  /* --compat-open runs the banking-API and Flask routes as the operator, like --no-auth. */
  if (ac.compat_open && (!loopback_host(host) || (tls.listen != NULL && !loopback_host(tls.host)))) {
    fprintf(stderr, "ledgerd: --compat-open serves unauthenticated money routes: loopback addresses only\n");
    return 2;
  }

  /* Each connection is a descriptor: raise the soft limit to the hard one. */
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &nofile);
  }

  /* Signals: handled here by sigwait; every thread created below inherits the mask. */
  sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGTERM);
  sigaddset(&stop_set, SIGINT);
  sigaddset(&stop_set, SIGHUP); /* reload the rules file */
  pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
  signal(SIGPIPE, SIG_IGN);

  engine_config_t ec = {.data_dir = data_dir,
                        .idempotency_retention_ms = retention_s * 1000,
                        .snapshot_log_bytes = snapshot_mb * 1024 * 1024,
                        .snapshot_growth_pct = (uint32_t)snapshot_growth_pct,
                        .fsync = true,
                        .queue_commands_max = (uint32_t)queue_max,
                        .time_offset_ms = (int64_t)time_offset_s * 1000,
                        .prefault_bytes = prefault_mb * 1024 * 1024,
                        .log_prealloc_bytes = log_prealloc_mb * 1024 * 1024,
                        .commit_interval_ns = commit_interval_us * 1000};
  engine_t *engine = NULL;
  int rc = engine_open(&ec, &engine);
  if (rc != 0) {
    fprintf(stderr, "ledgerd: cannot open %s: %s\n", data_dir, ledger_strerror(rc));
    return 1;
  }
  /* The rules in force come from the file (or the built-in set) at every start: a change is
   * logged as a new version; the same content changes nothing. */
  if (reload_rules(engine, config_path, true) != 0) {
    engine_close(engine);
    return 2;
  }
  argon.opslimit = argon_ops;
  argon.memlimit_bytes = (size_t)argon_mem_kib * 1024;
  auth_pool_t *hash_pool = NULL, *search_pool = NULL;
  if ((rc = auth_init()) != 0 || (rc = auth_pool_create(2, &argon, &hash_pool)) != 0 ||
      (rc = auth_pool_create(1, NULL, &search_pool)) != 0) { /* text searches' reads: not behind sign-ins */
    fprintf(stderr, "ledgerd: worker threads: %s\n", ledger_strerror(rc));
    auth_pool_destroy(hash_pool);
    engine_close(engine);
    return 1;
  }
  char bootstrap_path[4096];
  if (!no_auth && (rc = api_bootstrap(engine, data_dir, bootstrap_path, sizeof bootstrap_path)) != 0) {
    fprintf(stderr, "ledgerd: cannot write the bootstrap admin key: %s\n", ledger_strerror(rc));
    auth_pool_destroy(hash_pool);
    auth_pool_destroy(search_pool);
    engine_close(engine);
    return 1;
  }
  if (!no_auth && bootstrap_path[0])
    LOG_INFO("new ledger: the first admin API key is in %s (mode 0600); revoke it once you have admins",
             bootstrap_path);
  ac.engine = engine;
  ac.hash_pool = hash_pool;
  ac.search_pool = search_pool;
  ac.no_auth = no_auth;
  ac.session_ttl_s = (uint32_t)session_ttl_s;
  ac.rules_path = config_path;
  ac.time_offset_ms = (int64_t)time_offset_s * 1000;
  api_t *api = NULL;
  if ((rc = api_create(&ac, &api)) != 0) {
    fprintf(stderr, "ledgerd: %s\n", ledger_strerror(rc));
    auth_pool_destroy(hash_pool);
    auth_pool_destroy(search_pool);
    engine_close(engine);
    return 1;
  }
  http_config_t hc = {.host = host,
                      .port = (uint16_t)port,
                      .threads = (unsigned)threads,
                      .body_bytes_max = LEDGER_BODY_BYTES_MAX,
                      .connections_max = NET_CONNECTIONS_MAX,
                      .header_timeout_ms = NET_HEADER_TIMEOUT_MS,
                      .idle_timeout_ms = NET_IDLE_TIMEOUT_MS,
                      .handler = api_handle,
                      .handler_ctx = api,
                      .body_fits = api_body_fits,
                      .on_thread_start = api_thread_start,
                      .io_uring_off = no_io_uring};
  http_server_t *http = NULL;
  if ((rc = http_server_start(&hc, &http)) != 0) {
    fprintf(stderr, "ledgerd: cannot listen on %s: %s\n", listen, strerror(-rc));
    api_destroy(api);
    auth_pool_destroy(hash_pool);
    auth_pool_destroy(search_pool);
    engine_close(engine);
    return 1;
  }
  api_set_http(api, http);
  http_server_t *https = NULL;
  if (tls.listen != NULL && tls_server_start(&tls, &hc, &https) != 0) {
    engine_stop(engine);
    auth_pool_stop(hash_pool); /* as at shutdown: no job may finish after the net threads */
    auth_pool_stop(search_pool);
    for (int i = 0; i < 5000 && api_in_flight(api) > 0; i++) usleep(1000);
    http_server_stop(http);
    api_destroy(api);
    auth_pool_destroy(hash_pool);
    auth_pool_destroy(search_pool);
    engine_close(engine);
    return 1;
  }
  printf("listening on http://%s:%u\n", host, (unsigned)http_server_port(http));
  if (https != NULL) printf("listening on https://%s:%u\n", tls.host, (unsigned)http_server_port(https));
  fflush(stdout);
  LOG_INFO("ledgerd ready: %s, data dir %s, %u net threads", listen, data_dir, (unsigned)threads);

  int sig = 0;
  while (sigwait(&stop_set, &sig) == 0 && sig == SIGHUP) (void)reload_rules(engine, config_path, false);
  LOG_INFO("signal %d: shutting down", sig);
  engine_stop(engine);        /* answers everything it accepted */
  auth_pool_stop(hash_pool);  /* finishes queued jobs; later submits (net threads) get 503 */
  auth_pool_stop(search_pool);
  for (int i = 0; i < 5000 && api_in_flight(api) > 0; i++) usleep(1000);
  http_server_stop(https); /* NULL-safe */
  http_server_stop(http);
  api_destroy(api);
  auth_pool_destroy(hash_pool); /* no net thread left to submit */
  auth_pool_destroy(search_pool);
  engine_close(engine);
  LOG_INFO("ledgerd stopped");
  return 0;
}
