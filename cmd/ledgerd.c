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
#include "engine/engine.h"
#include "http/http.h"

static void usage(void) {
  fprintf(stderr,
          "usage: ledgerd --listen HOST:PORT --data-dir DIR [--threads N]\n"
          "               [--idempotency-retention-s S] [--snapshot-log-mb MB] [--engine-queue N]\n"
          "  --listen 127.0.0.1:0 picks a free port; the line 'listening on http://ADDR:PORT'\n"
          "  is printed once ready. Authentication is not built yet: listen on loopback only.\n");
}

static bool parse_u64(const char *s, uint64_t max, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || s[0] < '0' || s[0] > '9' || v > max) return false;
  *out = v;
  return true;
}

int main(int argc, char **argv) {
  const char *listen = "127.0.0.1:8080", *data_dir = NULL;
  uint64_t queue_max = ENGINE_QUEUE_COMMANDS_MAX;
  uint64_t threads = 0, retention_s = ENGINE_IDEMPOTENCY_RETENTION_MS_DEFAULT / 1000, snapshot_mb = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    bool ok = true;
    if (strcmp(a, "--listen") == 0 && v) listen = v;
    else if (strcmp(a, "--data-dir") == 0 && v) data_dir = v;
    else if (strcmp(a, "--threads") == 0 && v) ok = parse_u64(v, HTTP_THREADS_MAX, &threads) && threads > 0;
    else if (strcmp(a, "--idempotency-retention-s") == 0 && v) ok = parse_u64(v, 90ull * 86400, &retention_s) && retention_s > 0;
    else if (strcmp(a, "--snapshot-log-mb") == 0 && v) ok = parse_u64(v, 1u << 20, &snapshot_mb);
    else if (strcmp(a, "--engine-queue") == 0 && v)
      ok = parse_u64(v, ENGINE_QUEUE_COMMANDS_MAX, &queue_max) && queue_max >= 2 && (queue_max & (queue_max - 1)) == 0;
    else if (strcmp(a, "--config") == 0 || strcmp(a, "--compat") == 0 || strcmp(a, "--compat-open") == 0) {
      fprintf(stderr, "ledgerd: %s is not supported yet (see docs/api.md)\n", a);
      return 2;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
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
  if (threads == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    threads = n > 1 ? (uint64_t)n : 1;
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
  pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
  signal(SIGPIPE, SIG_IGN);

  engine_config_t ec = {.data_dir = data_dir,
                        .idempotency_retention_ms = retention_s * 1000,
                        .snapshot_log_bytes = snapshot_mb * 1024 * 1024,
                        .fsync = true,
                        .queue_commands_max = (uint32_t)queue_max};
  engine_t *engine = NULL;
  int rc = engine_open(&ec, &engine);
  if (rc != 0) {
    fprintf(stderr, "ledgerd: cannot open %s: %s\n", data_dir, ledger_strerror(rc));
    return 1;
  }
  api_t *api = NULL;
  if ((rc = api_create(engine, &api)) != 0) {
    fprintf(stderr, "ledgerd: %s\n", ledger_strerror(rc));
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
                      .on_thread_start = api_thread_start};
  http_server_t *http = NULL;
  if ((rc = http_server_start(&hc, &http)) != 0) {
    fprintf(stderr, "ledgerd: cannot listen on %s: %s\n", listen, strerror(-rc));
    api_destroy(api);
    engine_close(engine);
    return 1;
  }
  api_set_http(api, http);
  printf("listening on http://%s:%u\n", host, (unsigned)http_server_port(http));
  fflush(stdout);
  LOG_INFO("ledgerd ready: %s, data dir %s, %u net threads", listen, data_dir, (unsigned)threads);

  int sig = 0;
  sigwait(&stop_set, &sig);
  LOG_INFO("signal %d: shutting down", sig);
  engine_stop(engine); /* answers everything it accepted */
  for (int i = 0; i < 5000 && api_in_flight(api) > 0; i++) usleep(1000);
  http_server_stop(http);
  api_destroy(api);
  engine_close(engine);
  LOG_INFO("ledgerd stopped");
  return 0;
}
