/*
 * http_server.c — the HTTP server's threads: listeners, one epoll loop per net thread,
 * accept, wakeups, the timeout sweep, start/stop and stats. Connections live in http_conn.c.
 *
 * Why: each net thread owns everything it touches (its SO_REUSEPORT listener, its epoll set,
 * its connections), so the request path takes no lock; the kernel spreads connections over
 * the listeners.
 *
 * Invariants: a loop's connections are touched only by its thread; connections_open counts
 * open sockets over all loops and never passes connections_max for long (over-limit accepts
 * are closed at once); the loop wakes at least every HTTP_SWEEP_INTERVAL_MS to expire
 * timeouts.
 *
 * Threads: http_server_start/stop/port/stats on any non-net thread; http_loop_wake on any
 * thread; http_loop_set_wakeup on the loop's thread; the rest runs on the net threads.
 * A TLS server builds its SSL_CTX (http_tls.c) before any thread starts and frees it after
 * every thread has been joined.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "http_internal.h"

#define HTTP_LISTEN_BACKLOG 4096

void http__assert_fail(const char *expr, const char *file, int line) {
  fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, expr);
  abort();
}

static uint64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---------------------------------------------------------------- sockets */

static int resolve_host(http_server_t *s) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE};
  struct addrinfo *res = NULL;
  if (getaddrinfo(s->host, NULL, &hints, &res) != 0 || res == NULL) return -EINVAL;
  HTTP_ASSERT(res->ai_addrlen <= sizeof s->addr);
  memcpy(&s->addr, res->ai_addr, res->ai_addrlen);
  s->addr_len = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

static void addr_set_port(struct sockaddr_storage *addr, uint16_t port) {
  if (addr->ss_family == AF_INET6) ((struct sockaddr_in6 *)addr)->sin6_port = htons(port);
  else ((struct sockaddr_in *)addr)->sin_port = htons(port);
}

static uint16_t addr_port(const struct sockaddr_storage *addr) {
  if (addr->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
  return ntohs(((const struct sockaddr_in *)addr)->sin_port);
}

/* Binds a listener to s->port; when that is 0, picks a port and records it in s->port. */
static int listener_open(http_server_t *s, int *fd_out) {
  int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  struct sockaddr_storage addr = s->addr;
  addr_set_port(&addr, s->port);
  int err = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
      bind(fd, (struct sockaddr *)&addr, s->addr_len) != 0 ||
      listen(fd, HTTP_LISTEN_BACKLOG) != 0) {
    err = -errno;
  }
  socklen_t len = sizeof addr;
  if (err == 0 && s->port == 0) {
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0) err = -errno;
    else s->port = addr_port(&addr);
  }
  if (err != 0) {
    close(fd);
    return err;
  }
  *fd_out = fd;
  return 0;
}

/* ---------------------------------------------------------------- loops */

static int loop_add_fd(http_loop_t *loop, int fd, void *tag) {
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tag};
  return epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
}

static void loop_free(http_loop_t *loop) {
  if (loop == NULL) return;
  HTTP_ASSERT(loop->conns == NULL);
  if (loop->listen_fd >= 0) close(loop->listen_fd);
  if (loop->wake_fd >= 0) close(loop->wake_fd);
  if (loop->epoll_fd >= 0) close(loop->epoll_fd);
  free(loop->read_buf);
  free(loop->io_ops);
  free(loop->io_conns);
  free(loop->pre_buf);
  free(loop);
}

static int loop_create(http_server_t *s, unsigned index, http_loop_t **out) {
  http_loop_t *loop = calloc(1, sizeof *loop);
  if (loop == NULL) return -ENOMEM;
  loop->server = s;
  loop->index = index;
  loop->thread_index = s->config.thread_index_base + index;
  loop->listen_fd = loop->wake_fd = -1;
  loop->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  loop->read_buf = malloc(HTTP_READ_BYTES);
  int err = 0;
  if (!s->config.io_uring_off) {
    loop->io_ops = calloc(HTTP_IO_BATCH_MAX, sizeof *loop->io_ops);
    loop->io_conns = calloc(HTTP_IO_BATCH_MAX, sizeof *loop->io_conns);
    loop->pre_buf = malloc((size_t)HTTP_IO_BATCH_MAX * HTTP_PRE_READ_BYTES);
  }
  bool io_ok = s->config.io_uring_off ||
               (loop->io_ops != NULL && loop->io_conns != NULL && loop->pre_buf != NULL);
  if (loop->epoll_fd < 0) err = -errno;
  else if (loop->read_buf == NULL || !io_ok) err = -ENOMEM;
  else if ((loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) err = -errno;
  else err = listener_open(s, &loop->listen_fd);
  if (err == 0) err = loop_add_fd(loop, loop->listen_fd, &loop->listen_fd);
  if (err == 0) err = loop_add_fd(loop, loop->wake_fd, &loop->wake_fd);
  if (err != 0) {
    loop_free(loop);
    return err;
  }
  *out = loop;
  return 0;
}

static void loop_accept(http_loop_t *loop) {
  http_server_t *s = loop->server;
  for (int i = 0; i < HTTP_ACCEPTS_PER_EVENT_MAX; i++) {
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    int fd = accept4(loop->listen_fd, (struct sockaddr *)&peer, &peer_len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return; /* EAGAIN, or a transient error (EMFILE...): retried on next event */
    unsigned open_now =
        atomic_fetch_add_explicit(&s->connections_open, 1, memory_order_relaxed) + 1;
    if (open_now > s->config.connections_max) {
      atomic_fetch_sub_explicit(&s->connections_open, 1, memory_order_relaxed);
      http__stat_inc(&loop->stat_rejected);
      close(fd);
      continue;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* best effort */
    http__stat_inc(&loop->stat_accepted);
    http__conn_accepted(loop, fd, &peer);
  }
}

/* Eventfd readable: a wakeup (or stop). Clear the flag before reading the counter so a wake
 * that races with us always leads to one more run. */
static void loop_on_wake(http_loop_t *loop) {
  atomic_store_explicit(&loop->wake_pending, false, memory_order_seq_cst);
  uint64_t count;
  ssize_t n = read(loop->wake_fd, &count, sizeof count);
  (void)n; /* EAGAIN is fine: the counter was already drained */
  if (atomic_load_explicit(&loop->server->stopping, memory_order_acquire)) return;
  if (loop->wakeup_fn != NULL) loop->wakeup_fn(loop->wakeup_arg);
}

static void loop_run(http_loop_t *loop) {
  struct epoll_event events[HTTP_EVENTS_MAX];
  loop->now_ms = monotonic_ms();
  loop->sweep_next_ms = loop->now_ms + HTTP_SWEEP_INTERVAL_MS;
  while (!atomic_load_explicit(&loop->server->stopping, memory_order_acquire)) {
    int n = epoll_wait(loop->epoll_fd, events, HTTP_EVENTS_MAX, HTTP_SWEEP_INTERVAL_MS);
    HTTP_ASSERT(n >= 0 || errno == EINTR);
    loop->now_ms = monotonic_ms();
    if (loop->uring != NULL && n > 0) http__loop_pre_read(loop, events, n);
    for (int i = 0; i < n; i++) {
      void *tag = events[i].data.ptr;
      if (tag == &loop->listen_fd) loop_accept(loop);
      else if (tag == &loop->wake_fd) loop_on_wake(loop);
      else http__conn_on_event(tag, events[i].events);
    }
    http__loop_run_ready(loop);
    if (loop->now_ms >= loop->sweep_next_ms) {
      http__loop_sweep(loop);
      loop->sweep_next_ms = loop->now_ms + HTTP_SWEEP_INTERVAL_MS;
    }
    http__loop_bury(loop);
  }
}

static void *loop_main(void *arg) {
  http_loop_t *loop = arg;
  const http_config_t *cfg = &loop->server->config;
  (void)pthread_setname_np(pthread_self(), "ledger-net");
  if (loop->server->tls_ctx != NULL) {
    /* OpenSSL writes with write(): a peer that reset would raise SIGPIPE. Blocked here, the
     * write fails with EPIPE instead, whatever the program's disposition for SIGPIPE. */
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
  }
  if (!cfg->io_uring_off) {
    int err = http__uring_open(loop); /* here: the ring belongs to the thread that submits */
    if (err != 0) {
      LOG_WARN("http: net thread %u: no io_uring (%s), plain system calls", loop->thread_index,
               strerror(-err));
      free(loop->pre_buf); /* unused without a ring */
      loop->pre_buf = NULL;
    }
    atomic_store_explicit(&loop->uring_on, err == 0, memory_order_relaxed);
  }
  if (cfg->on_thread_start != NULL) {
    cfg->on_thread_start(loop, loop->thread_index, cfg->handler_ctx);
  }
  loop_run(loop);
  http__loop_close_all(loop);
  http__uring_close(loop);
  close(loop->listen_fd);
  loop->listen_fd = -1;
  return NULL;
}

/* ---------------------------------------------------------------- public */

static bool config_valid(const http_config_t *c) {
  if (c == NULL) return false;
  bool tls_ok = (c->tls_cert_file == NULL) == (c->tls_key_file == NULL) &&
                (c->tls_client_ca_file == NULL || c->tls_cert_file != NULL);
  return c->host != NULL && c->handler != NULL && c->threads >= 1 &&
         c->threads <= HTTP_THREADS_MAX && c->thread_index_base <= HTTP_THREADS_MAX - c->threads &&
         c->connections_max >= 1 && c->body_bytes_max >= 1 && c->header_timeout_ms >= 1 &&
         c->idle_timeout_ms >= 1 && tls_ok;
}

static void server_free(http_server_t *s) {
  for (unsigned i = 0; i < HTTP_THREADS_MAX; i++) loop_free(s->loops[i]);
  SSL_CTX_free(s->tls_ctx); /* NULL-safe; no thread uses it any more */
  free(s->host);
  free(s);
}

static void server_stop_threads(http_server_t *s) {
  atomic_store_explicit(&s->stopping, true, memory_order_release);
  for (unsigned i = 0; i < s->config.threads; i++) {
    http_loop_t *loop = s->loops[i];
    if (loop == NULL || !loop->thread_started) continue;
    uint64_t one = 1;
    ssize_t n = write(loop->wake_fd, &one, sizeof one);
    HTTP_ASSERT(n == (ssize_t)sizeof one || errno == EAGAIN);
    pthread_join(loop->thread, NULL);
    loop->thread_started = false;
  }
}

int http_server_start(const http_config_t *config, http_server_t **out) {
  if (!config_valid(config) || out == NULL) return -EINVAL;
  http_server_t *s = calloc(1, sizeof *s);
  if (s == NULL) return -ENOMEM;
  s->config = *config;
  s->host = strdup(config->host);
  s->config.host = s->host;
  /* The file names are read here and never again: do not keep the caller's pointers. */
  s->config.tls_cert_file = s->config.tls_key_file = s->config.tls_client_ca_file = NULL;
  s->port = config->port;
  int err = s->host == NULL ? -ENOMEM : resolve_host(s);
  if (err == 0 && config->tls_cert_file != NULL) err = http__tls_ctx_create(config, &s->tls_ctx);
  if (s->tls_ctx != NULL) s->config.io_uring_off = true; /* TLS connections are never batched */
  for (unsigned i = 0; err == 0 && i < config->threads; i++) err = loop_create(s, i, &s->loops[i]);
  for (unsigned i = 0; err == 0 && i < config->threads; i++) {
    err = -pthread_create(&s->loops[i]->thread, NULL, loop_main, s->loops[i]);
    s->loops[i]->thread_started = err == 0;
  }
  if (err != 0) {
    server_stop_threads(s);
    server_free(s);
    return err;
  }
  *out = s;
  return 0;
}

uint16_t http_server_port(const http_server_t *server) {
  HTTP_ASSERT(server != NULL);
  return server->port;
}

void http_server_stop(http_server_t *server) {
  if (server == NULL) return;
  server_stop_threads(server);
  HTTP_ASSERT(atomic_load(&server->connections_open) == 0);
  server_free(server);
}

void http_loop_set_wakeup(http_loop_t *loop, void (*fn)(void *arg), void *arg) {
  HTTP_ASSERT(loop != NULL);
  loop->wakeup_fn = fn;
  loop->wakeup_arg = arg;
}

void http_loop_wake(http_loop_t *loop) {
  HTTP_ASSERT(loop != NULL);
  if (atomic_exchange_explicit(&loop->wake_pending, true, memory_order_seq_cst)) return;
  uint64_t one = 1;
  ssize_t n = write(loop->wake_fd, &one, sizeof one); /* EAGAIN: counter saturated, still set */
  (void)n;
}

void http_server_stats(const http_server_t *server, http_stats_t *out) {
  HTTP_ASSERT(server != NULL && out != NULL);
  *out = (http_stats_t){0};
  out->connections_open = atomic_load_explicit(&server->connections_open, memory_order_relaxed);
  for (unsigned i = 0; i < server->config.threads; i++) {
    http_loop_t *l = server->loops[i];
    if (l == NULL) continue;
    out->connections_accepted_total += atomic_load_explicit(&l->stat_accepted, memory_order_relaxed);
    out->connections_rejected_total += atomic_load_explicit(&l->stat_rejected, memory_order_relaxed);
    out->requests_total += atomic_load_explicit(&l->stat_requests, memory_order_relaxed);
    out->protocol_errors_total +=
        atomic_load_explicit(&l->stat_protocol_errors, memory_order_relaxed);
    out->timeouts_total += atomic_load_explicit(&l->stat_timeouts, memory_order_relaxed);
    out->tls_handshake_errors_total +=
        atomic_load_explicit(&l->stat_tls_handshake_errors, memory_order_relaxed);
    out->uring_loops += atomic_load_explicit(&l->uring_on, memory_order_relaxed);
    out->uring_reads_total += atomic_load_explicit(&l->stat_uring_reads, memory_order_relaxed);
    out->uring_sends_total += atomic_load_explicit(&l->stat_uring_sends, memory_order_relaxed);
  }
}
