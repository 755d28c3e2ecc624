/*
 * test_http_server.c — starts the HTTP server on 127.0.0.1 (port 0, 2 threads) with a small
 * handler and talks to it over plain sockets: keep-alive, pipelining with deferred answers,
 * every limit (413/414/431/400, connections_max), Expect: 100-continue (417 for any other or a
 * repeated one), a route's own body limit (config.body_fits: 413 before the body and before
 * the 100), timeouts, a peer leaving while its answer is pending, 1.5 MiB bodies in and 4 MiB
 * out. Responses are parsed with libhttp-parser.
 *
 * A second server speaks mutual TLS (certificates made with the openssl CLI) with
 * thread_index_base 5: the request's tls flag, client subject and thread index, a deferred
 * answer and a 4 MiB response over TLS, a refused client, and the TLS config errors.
 *
 * Threads: main thread is the client; a worker thread completes deferred requests and wakes
 * the net threads, whose wakeup callbacks answer them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "base/uring_batch.h"
#include "http/http.h"

#define BODY_BYTES_MAX (2 * 1024 * 1024)
#define CONNECTIONS_MAX 16
#define IDLE_TIMEOUT_MS 400
#define HEADER_TIMEOUT_MS 400
#define BIG_RESPONSE_BYTES (4 * 1024 * 1024)
#define CLIENT_RECV_TIMEOUT_S 5

static int failures;
#define CHECK(cond, ...)                                                                      \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      failures++;                                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);               \
      fprintf(stderr, __VA_ARGS__);                                                           \
      fprintf(stderr, "\n");                                                                  \
    }                                                                                         \
  } while (0)

static void sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ deferred answers */

typedef struct job {
  http_request_t *req;
  unsigned thread_index;
  http_loop_t *loop;
  uint64_t due_ms;
  struct job *next;
} job_t;

static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static job_t *jobs_pending;
static job_t *jobs_done[HTTP_THREADS_MAX];
static http_loop_t *loops[HTTP_THREADS_MAX];
static atomic_bool worker_stop;
static int deferred_answered;

static void *worker_main(void *arg) {
  (void)arg;
  while (!worker_stop) {
    bool woke[HTTP_THREADS_MAX] = {false};
    pthread_mutex_lock(&jobs_lock);
    uint64_t now = now_ms();
    for (job_t **pp = &jobs_pending; *pp != NULL;) {
      job_t *j = *pp;
      if (j->due_ms > now) {
        pp = &j->next;
        continue;
      }
      *pp = j->next;
      j->next = jobs_done[j->thread_index];
      jobs_done[j->thread_index] = j;
      woke[j->thread_index] = true;
    }
    pthread_mutex_unlock(&jobs_lock);
    for (unsigned i = 0; i < HTTP_THREADS_MAX; i++) {
      if (woke[i]) http_loop_wake(loops[i]);
    }
    sleep_ms(2);
  }
  return NULL;
}

/* Runs on net thread `index`: answers its finished jobs. */
static void on_wakeup(void *arg) {
  unsigned index = (unsigned)(uintptr_t)arg;
  pthread_mutex_lock(&jobs_lock);
  job_t *list = jobs_done[index];
  jobs_done[index] = NULL;
  pthread_mutex_unlock(&jobs_lock);
  /* The list is newest first; answer order across connections does not matter. */
  while (list != NULL) {
    job_t *j = list;
    list = j->next;
    char body[256];
    int n = snprintf(body, sizeof body, "deferred:%s", j->req->query);
    __atomic_add_fetch(&deferred_answered, 1, __ATOMIC_RELAXED);
    http_respond(j->req, 200, "text/plain", NULL, body, (size_t)n);
    free(j);
  }
}

static void on_thread_start(http_loop_t *loop, unsigned index, void *ctx) {
  (void)ctx;
  loops[index] = loop;
  http_loop_set_wakeup(loop, on_wakeup, (void *)(uintptr_t)index);
}

/* ------------------------------------------------------------ handler */

static char *big_response;

static void handle_defer(http_request_t *req) {
  unsigned delay_ms = 20;
  if (strncmp(req->query, "ms=", 3) == 0) delay_ms = (unsigned)atoi(req->query + 3);
  job_t *j = calloc(1, sizeof *j);
  j->req = req;
  j->thread_index = req->thread_index;
  j->loop = req->loop;
  j->due_ms = now_ms() + delay_ms;
  pthread_mutex_lock(&jobs_lock);
  j->next = jobs_pending;
  jobs_pending = j;
  pthread_mutex_unlock(&jobs_lock);
}

static void handle_info(http_request_t *req) {
  static const char *methods[] = {"OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"};
  char body[1024];
  int n = snprintf(body, sizeof body, "%s|%s|%s|%s|%s|%s|%s|%s", methods[req->method],
                   req->path, req->query, req->authorization ? req->authorization : "-",
                   req->idempotency_key ? req->idempotency_key : "-",
                   req->content_type ? req->content_type : "-", req->cookie ? req->cookie : "-",
                   req->remote_addr);
  http_respond(req, 200, "text/plain", "X-Test: 1\r\n", body, (size_t)n);
}

/* config.body_fits: POST /echo-small takes at most ROUTE_BODY_MAX bytes; everything else up
 * to the transport limit. Counts its calls, and paths it got without their NUL. */
#define ROUTE_BODY_MAX 8
static atomic_int body_fits_calls, body_fits_bad_path;
static bool body_fits(http_method_t method, const char *path, size_t path_len, uint64_t length, void *ctx) {
  (void)ctx;
  atomic_fetch_add(&body_fits_calls, 1);
  if (path[path_len] != '\0') atomic_fetch_add(&body_fits_bad_path, 1);
  if (method == HTTP_METHOD_POST && path_len == 11 && memcmp(path, "/echo-small", 11) == 0)
    return length <= ROUTE_BODY_MAX;
  return true;
}

static void handler(http_request_t *req, void *ctx) {
  (void)ctx;
  if (strcmp(req->path, "/hello") == 0) {
    http_respond(req, 200, "text/plain", NULL, "hello", 5);
  } else if (strcmp(req->path, "/echo") == 0 || strcmp(req->path, "/echo-small") == 0) {
    http_respond(req, 200, "application/octet-stream", NULL, req->body, req->body_len);
  } else if (strcmp(req->path, "/info") == 0) {
    handle_info(req);
  } else if (strcmp(req->path, "/defer") == 0) {
    handle_defer(req);
  } else if (strcmp(req->path, "/tls") == 0) {
    char body[512];
    int n = snprintf(body, sizeof body, "%d|%s|%u", req->tls ? 1 : 0,
                     req->tls_client_subject ? req->tls_client_subject : "-", req->thread_index);
    http_respond(req, 200, "text/plain", NULL, body, (size_t)n);
  } else if (strcmp(req->path, "/big") == 0) {
    http_respond(req, 200, "application/octet-stream", NULL, big_response, BIG_RESPONSE_BYTES);
  } else {
    http_respond(req, 404, "application/json", NULL, "{}", 2);
  }
}

/* ------------------------------------------------------------ client */

typedef struct client {
  int fd;
  char buf[64 * 1024];
  size_t off, len;
  http_parser parser;
} client_t;

typedef struct response {
  int status;
  char *body;
  size_t body_len, body_cap;
  bool conn_close;
  bool done;
  char field[64];
  size_t field_len;
  bool in_value;
  bool head; /* the request was HEAD: the response has no body */
} response_t;

static uint16_t server_port;

/* client_recv_note: a blocking recv on a socket with SO_RCVTIMEO fails with EINTR whatever
 * SA_RESTART says, and this process does get interrupted: ~1 run in 40 failed a "read
 * response" at the start of the second suite with errno 4 (session 15). No signal handler is
 * installed here; the likely source is io_uring's task-work notification after
 * uring_allowed() opened and closed a ring on the main thread at the end of the first suite.
 * The client retries, as any client must. */
static int client_connect(client_t *c) {
  memset(c, 0, sizeof *c);
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(server_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct timeval tv = {.tv_sec = CLIENT_RECV_TIMEOUT_S};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
  http_parser_init(&c->parser, HTTP_RESPONSE);
  return 0;
}

static void client_close(client_t *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
}

static bool send_all(client_t *c, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    len -= (size_t)n;
  }
  return true;
}

static bool send_str(client_t *c, const char *s) { return send_all(c, s, strlen(s)); }

static int rs_on_header_field(http_parser *p, const char *at, size_t len) {
  response_t *r = p->data;
  if (r->in_value) r->field_len = 0;
  r->in_value = false;
  if (r->field_len + len < sizeof r->field) {
    memcpy(r->field + r->field_len, at, len);
    r->field_len += len;
  }
  return 0;
}

static int rs_on_header_value(http_parser *p, const char *at, size_t len) {
  response_t *r = p->data;
  r->in_value = true;
  if (r->field_len == 10 && strncasecmp(r->field, "connection", 10) == 0 && len >= 5 &&
      strncasecmp(at, "close", 5) == 0) {
    r->conn_close = true;
  }
  return 0;
}

static int rs_on_body(http_parser *p, const char *at, size_t len) {
  response_t *r = p->data;
  if (r->body_len + len + 1 > r->body_cap) {
    r->body_cap = (r->body_len + len + 1) * 2;
    r->body = realloc(r->body, r->body_cap);
  }
  memcpy(r->body + r->body_len, at, len);
  r->body_len += len;
  r->body[r->body_len] = '\0';
  return 0;
}

static int rs_on_message_complete(http_parser *p) {
  response_t *r = p->data;
  r->status = p->status_code;
  r->done = true;
  http_parser_pause(p, 1);
  return 0;
}

static int rs_on_headers_complete(http_parser *p) {
  response_t *r = p->data;
  return r->head ? 1 : 0; /* 1: no body follows */
}

static const http_parser_settings rs_settings = {
    .on_headers_complete = rs_on_headers_complete,
    .on_header_field = rs_on_header_field,
    .on_header_value = rs_on_header_value,
    .on_body = rs_on_body,
    .on_message_complete = rs_on_message_complete,
};

static void response_free(response_t *r) { free(r->body); }

/* Reads one response (for a HEAD request pass head=true). Returns false on EOF/timeout. */
static bool read_response_ex(client_t *c, response_t *r, bool head) {
  memset(r, 0, sizeof *r);
  r->body = calloc(1, 1);
  r->body_cap = 1;
  c->parser.data = r;
  r->head = head;
  for (;;) {
    if (c->off < c->len) {
      size_t n = http_parser_execute(&c->parser, &rs_settings, c->buf + c->off, c->len - c->off);
      c->off += n;
      enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
      if (e == HPE_PAUSED) {
        http_parser_pause(&c->parser, 0);
        return true;
      }
      if (e != HPE_OK) return false;
    }
    c->off = c->len = 0;
    ssize_t n;
    do { /* EINTR: see client_recv_note */
      n = recv(c->fd, c->buf, sizeof c->buf, 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    c->len = (size_t)n;
  }
}

static bool read_response(client_t *c, response_t *r) { return read_response_ex(c, r, false); }

/* True when the server closed the connection (EOF or reset) with nothing more to read. */
static bool expect_closed(client_t *c) {
  char b[256];
  ssize_t n;
  do {
    n = recv(c->fd, b, sizeof b, 0);
  } while (n < 0 && errno == EINTR);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

/* One request, one response on a fresh connection. */
static void simple_exchange(const char *request, int status, const char *body) {
  client_t c;
  response_t r;
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, request), "send");
  CHECK(read_response(&c, &r), "read response to %.40s", request);
  CHECK(r.status == status, "status %d want %d for %.40s", r.status, status, request);
  if (body) CHECK(strcmp(r.body, body) == 0, "body '%s' want '%s'", r.body, body);
  response_free(&r);
  client_close(&c);
}

/* ------------------------------------------------------------ tests */

static void test_simple(void) {
  simple_exchange("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 200, "hello");
  simple_exchange("POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde", 200, "abcde");
  simple_exchange("GET /nope HTTP/1.1\r\n\r\n", 404, "{}");
  simple_exchange("POST /info?a=1&b=2 HTTP/1.1\r\nAUTHORIZATION: Bearer t\r\n"
                  "idempotency-key: k2\r\ncontent-TYPE: app/json\r\nContent-Type: app/json\r\n"
                  "Cookie: s=1\r\nX-Other: y\r\nContent-Length: 0\r\n\r\n",
                  200, "POST|/info|a=1&b=2|Bearer t|k2|app/json|s=1|127.0.0.1");
  /* A credential or idempotency key given twice is ambiguous: refused, not "last wins". */
  simple_exchange("POST /info HTTP/1.1\r\nIdempotency-Key: k1\r\nidempotency-key: k2\r\n"
                  "Content-Length: 0\r\n\r\n",
                  400, NULL);
  simple_exchange("GET /info HTTP/1.1\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n",
                  400, NULL);
  simple_exchange("GET /info HTTP/1.1\r\n\r\n", 200, "GET|/info||-|-|-|-|127.0.0.1");
  simple_exchange("DELETE http://h:1/info?q HTTP/1.1\r\n\r\n", 200,
                  "DELETE|/info|q|-|-|-|-|127.0.0.1");
  simple_exchange("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                  200, "abcde");
}

/* Header values split over several reads (and callbacks) are joined. */
static void test_split_header(void) {
  client_t c;
  response_t r;
  CHECK(client_connect(&c) == 0, "connect");
  const char *parts[] = {"GET /info HTTP/1.1\r\nAuthoriz", "ation: Bea", "rer ", "xyz\r\n",
                         "Cookie: a", "=b\r\n\r\n"};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    CHECK(send_str(&c, parts[i]), "send");
    sleep_ms(20);
  }
  CHECK(read_response(&c, &r), "read");
  CHECK(strcmp(r.body, "GET|/info||Bearer xyz|-|-|a=b|127.0.0.1") == 0, "body %s", r.body);
  response_free(&r);
  client_close(&c);
}

static void test_keep_alive_and_head(void) {
  client_t c;
  response_t r;
  CHECK(client_connect(&c) == 0, "connect");
  for (int i = 0; i < 5; i++) {
    CHECK(send_str(&c, "GET /hello HTTP/1.1\r\n\r\n"), "send");
    CHECK(read_response(&c, &r), "read %d", i);
    CHECK(r.status == 200 && !r.conn_close, "status %d close %d", r.status, r.conn_close);
    response_free(&r);
  }
  CHECK(send_str(&c, "HEAD /hello HTTP/1.1\r\n\r\n"), "send");
  CHECK(read_response_ex(&c, &r, true), "read head");
  CHECK(r.status == 200 && r.body_len == 0, "head status %d body %zu", r.status, r.body_len);
  response_free(&r);
  CHECK(send_str(&c, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n"), "send");
  CHECK(read_response(&c, &r), "read close");
  CHECK(r.status == 200 && r.conn_close, "close status %d", r.status);
  response_free(&r);
  CHECK(expect_closed(&c), "server closes after Connection: close");
  client_close(&c);

  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "GET /hello HTTP/1.0\r\n\r\n"), "send");
  CHECK(read_response(&c, &r), "read 1.0");
  CHECK(r.status == 200 && r.conn_close, "1.0 closes");
  response_free(&r);
  CHECK(expect_closed(&c), "server closes HTTP/1.0");
  client_close(&c);
}

static void test_pipelining(void) {
  client_t c;
  response_t r;
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "GET /defer?ms=50 HTTP/1.1\r\n\r\n"
                     "POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"
                     "GET /defer?n=3 HTTP/1.1\r\n\r\n"
                     "GET /hello HTTP/1.1\r\n\r\n"),
        "send");
  const char *want[] = {"deferred:ms=50", "xyz", "deferred:n=3", "hello"};
  for (int i = 0; i < 4; i++) {
    CHECK(read_response(&c, &r), "read %d", i);
    CHECK(r.status == 200 && strcmp(r.body, want[i]) == 0, "pipelined %d: '%s'", i, r.body);
    response_free(&r);
  }
  client_close(&c);
}

/* Expect: 100-continue: the interim answer comes before the body is sent (a client waits for
 * it, curl up to 1 s), then the final one; none when no body follows or for HTTP/1.0; a body
 * over the limit gets its 413 instead; any other expectation a 417. */
static void test_expect_continue(void) {
  client_t c;
  response_t r;
  CHECK(client_connect(&c) == 0, "connect");
  /* Behind a deferred answer on the same connection: the 100 must not overtake it. */
  CHECK(send_str(&c, "GET /defer?ms=50 HTTP/1.1\r\n\r\n"
                     "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"),
        "send heads");
  CHECK(read_response(&c, &r) && r.status == 200 && strcmp(r.body, "deferred:ms=50") == 0,
        "deferred answer first: %d '%s'", r.status, r.body);
  response_free(&r);
  CHECK(read_response(&c, &r) && r.status == 100 && r.body_len == 0, "100 Continue: %d", r.status);
  response_free(&r);
  CHECK(send_str(&c, "abcde"), "send body");
  CHECK(read_response(&c, &r) && r.status == 200 && strcmp(r.body, "abcde") == 0, "echo %d '%s'",
        r.status, r.body);
  response_free(&r);
  /* Case and spaces do not matter; a chunked body is a body too. */
  CHECK(send_str(&c, "POST /echo HTTP/1.1\r\nexpect:   100-Continue \r\n"
                     "Transfer-Encoding: chunked\r\n\r\n"),
        "send chunked head");
  CHECK(read_response(&c, &r) && r.status == 100, "100 for chunked: %d", r.status);
  response_free(&r);
  CHECK(send_str(&c, "3\r\nxyz\r\n0\r\n\r\n"), "send chunks");
  CHECK(read_response(&c, &r) && r.status == 200 && strcmp(r.body, "xyz") == 0, "chunked echo");
  response_free(&r);
  /* No body follows: no interim answer, the final one only. */
  CHECK(send_str(&c, "GET /hello HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"
                     "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"),
        "send bodiless");
  CHECK(read_response(&c, &r) && r.status == 200 && strcmp(r.body, "hello") == 0, "GET: %d",
        r.status);
  response_free(&r);
  CHECK(read_response(&c, &r) && r.status == 200 && r.body_len == 0 && !r.conn_close,
        "empty POST: %d", r.status);
  response_free(&r);
  client_close(&c);

  /* HTTP/1.0 ignores Expect: the body is sent at once and the one answer is the final one. */
  simple_exchange("POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
                  200, "ok");
  /* Over the limit: 413 at once, with no 100 before it and no body sent. */
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n"),
        "send");
  CHECK(read_response(&c, &r) && r.status == 413 && r.conn_close, "413 first: %d", r.status);
  response_free(&r);
  CHECK(expect_closed(&c), "closed after 413");
  client_close(&c);
  /* Any other expectation: 417, and the connection closed (its body may follow). */
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "POST /echo HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n"), "send");
  CHECK(read_response(&c, &r) && r.status == 417 && r.conn_close && strstr(r.body, "expectation_failed"),
        "417: %d %s", r.status, r.body);
  response_free(&r);
  CHECK(expect_closed(&c), "closed after 417");
  client_close(&c);
}

/* config.body_fits: a route's own limit on a declared body is answered 413 before the body,
 * and before any 100 Continue; Expect given twice is refused (417). */
static void test_route_body_limits(void) {
  client_t c;
  response_t r;
  int calls0 = atomic_load(&body_fits_calls);
  /* At the route's limit: the 100, then the body, then the echo. */
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "POST /echo-small HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n"),
        "send head");
  CHECK(read_response(&c, &r) && r.status == 100, "100 within the route's limit: %d", r.status);
  response_free(&r);
  CHECK(send_str(&c, "12345678"), "send body");
  CHECK(read_response(&c, &r) && r.status == 200 && strcmp(r.body, "12345678") == 0, "echo: %d", r.status);
  response_free(&r);
  /* One byte over: 413 at once, no 100 before it, the connection closed. */
  CHECK(send_str(&c, "POST /echo-small HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"),
        "send head over");
  CHECK(read_response(&c, &r) && r.status == 413 && r.conn_close, "413 before any 100: %d", r.status);
  response_free(&r);
  CHECK(expect_closed(&c), "closed after the route's 413");
  client_close(&c);
  /* Without Expect too (the body is already on its way; it is not read). */
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "POST /echo-small HTTP/1.1\r\nContent-Length: 9\r\n\r\n123456789"), "send");
  CHECK(read_response(&c, &r) && r.status == 413 && r.conn_close, "413 without Expect: %d", r.status);
  response_free(&r);
  CHECK(expect_closed(&c), "closed");
  client_close(&c);
  /* The method is the route's too: PUT /echo-small has no such limit here. A chunked body
   * declares no length: the route sees it once read. */
  simple_exchange("PUT /echo-small HTTP/1.1\r\nContent-Length: 9\r\n\r\n123456789", 200, "123456789");
  simple_exchange("POST /echo-small HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n0\r\n\r\n",
                  200, "123456789");
  /* Asked for bodies only: the GET and the empty POST below add no call. */
  int calls1 = atomic_load(&body_fits_calls);
  simple_exchange("GET /hello HTTP/1.1\r\n\r\n", 200, "hello");
  simple_exchange("POST /echo-small HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 200, "");
  CHECK(atomic_load(&body_fits_calls) == calls1, "no call without a body");
  CHECK(calls1 - calls0 == 4, "one call per declared body: %d", calls1 - calls0);
  CHECK(atomic_load(&body_fits_bad_path) == 0, "paths come NUL-terminated");
  /* Expect twice is one list: refused whole, whichever comes last. */
  static const char *const twice[] = {
      "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
      "POST /echo HTTP/1.1\r\nExpect: foo\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof twice / sizeof twice[0]; i++) {
    CHECK(client_connect(&c) == 0, "connect");
    CHECK(send_str(&c, twice[i]), "send");
    CHECK(read_response(&c, &r) && r.status == 417 && r.conn_close, "Expect twice (%zu): %d", i, r.status);
    response_free(&r);
    CHECK(expect_closed(&c), "closed after 417");
    client_close(&c);
  }
}

static void test_limits(void) {
  client_t c;
  response_t r;
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "POST /echo HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n"), "send");
  CHECK(read_response(&c, &r), "read 413");
  CHECK(r.status == 413 && r.conn_close && strstr(r.body, "payload_too_large"), "413: %d %s",
        r.status, r.body);
  response_free(&r);
  CHECK(expect_closed(&c), "closed after 413");
  client_close(&c);

  char *huge = malloc(40 * 1024);
  strcpy(huge, "GET /hello HTTP/1.1\r\nX-Big: ");
  size_t n = strlen(huge);
  memset(huge + n, 'a', 20 * 1024);
  strcpy(huge + n + 20 * 1024, "\r\n\r\n");
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, huge), "send");
  CHECK(read_response(&c, &r), "read 431");
  CHECK(r.status == 431 && strstr(r.body, "headers_too_large"), "431: %d %s", r.status, r.body);
  response_free(&r);
  CHECK(expect_closed(&c), "closed after 431");
  client_close(&c);

  strcpy(huge, "GET /");
  memset(huge + 5, 'p', 3000);
  strcpy(huge + 3005, " HTTP/1.1\r\n\r\n");
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, huge), "send");
  CHECK(read_response(&c, &r), "read 414");
  CHECK(r.status == 414 && strstr(r.body, "uri_too_long"), "414: %d %s", r.status, r.body);
  response_free(&r);
  client_close(&c);
  free(huge);

  simple_exchange("BLAH BLAH BLAH\r\n\r\n", 400, NULL);
  simple_exchange("GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, NULL);
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "\x01\x02garbage\r\n\r\n"), "send");
  CHECK(read_response(&c, &r), "read 400");
  CHECK(r.status == 400 && strstr(r.body, "bad_request") && r.conn_close, "400: %d", r.status);
  response_free(&r);
  CHECK(expect_closed(&c), "closed after 400");
  client_close(&c);

  /* Chunked body over the limit. */
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), "send");
  char *chunk = malloc(BODY_BYTES_MAX / 2 + 64);
  int h = sprintf(chunk, "%x\r\n", BODY_BYTES_MAX / 2);
  memset(chunk + h, 'c', BODY_BYTES_MAX / 2);
  memcpy(chunk + h + BODY_BYTES_MAX / 2, "\r\n", 2);
  bool sent = true;
  for (int i = 0; i < 3 && sent; i++) sent = send_all(&c, chunk, (size_t)h + BODY_BYTES_MAX / 2 + 2);
  CHECK(sent, "the server drains the rest of the body after its 413");
  CHECK(read_response(&c, &r), "read chunked 413");
  CHECK(r.status == 413, "chunked 413: %d", r.status);
  response_free(&r);
  CHECK(expect_closed(&c), "closed after chunked 413");
  client_close(&c);

  /* Declared too large and sent anyway: the 413 must still arrive (no reset). */
  CHECK(client_connect(&c) == 0, "connect");
  char head[128];
  snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n",
           3 * (BODY_BYTES_MAX / 2));
  sent = send_str(&c, head);
  for (int i = 0; i < 3 && sent; i++) sent = send_all(&c, chunk + h, BODY_BYTES_MAX / 2);
  CHECK(sent, "body sent");
  CHECK(read_response(&c, &r), "read declared 413");
  CHECK(r.status == 413 && r.conn_close, "declared 413: %d", r.status);
  response_free(&r);
  CHECK(expect_closed(&c), "closed after declared 413");
  client_close(&c);
  free(chunk);
}

static void test_timeouts(void) {
  client_t c;
  response_t r;
  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "GET /hello HTTP/1.1\r\n\r\n"), "send");
  CHECK(read_response(&c, &r), "read");
  response_free(&r);
  uint64_t t0 = now_ms();
  CHECK(expect_closed(&c), "idle connection closed");
  uint64_t waited_ms = now_ms() - t0;
  CHECK(waited_ms >= IDLE_TIMEOUT_MS - 50 && waited_ms < IDLE_TIMEOUT_MS + 1000, "idle %llu ms",
        (unsigned long long)waited_ms);
  client_close(&c);

  CHECK(client_connect(&c) == 0, "connect");
  CHECK(send_str(&c, "GET /hello HTTP/1.1\r\nX-Slow: "), "send");
  t0 = now_ms();
  CHECK(expect_closed(&c), "header timeout closes");
  waited_ms = now_ms() - t0;
  CHECK(waited_ms < HEADER_TIMEOUT_MS + 1000, "header timeout %llu ms",
        (unsigned long long)waited_ms);
  client_close(&c);

  /* A deferred request is not timed out while it is with the handler. */
  simple_exchange("GET /defer?ms=700 HTTP/1.1\r\n\r\n", 200, "deferred:ms=700");
}

static void test_peer_gone_while_deferred(http_server_t *server) {
  int before = __atomic_load_n(&deferred_answered, __ATOMIC_RELAXED);
  for (int i = 0; i < 4; i++) {
    client_t c;
    CHECK(client_connect(&c) == 0, "connect");
    CHECK(send_str(&c, "GET /defer?ms=200 HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n"), "send");
    if (i % 2) {
      sleep_ms(50); /* let the server see the request before the close */
    }
    client_close(&c);
  }
  sleep_ms(600);
  CHECK(__atomic_load_n(&deferred_answered, __ATOMIC_RELAXED) - before == 4, "answered %d",
        __atomic_load_n(&deferred_answered, __ATOMIC_RELAXED) - before);
  http_stats_t st;
  http_server_stats(server, &st);
  CHECK(st.connections_open == 0, "open after peers left: %llu",
        (unsigned long long)st.connections_open);
  simple_exchange("GET /hello HTTP/1.1\r\n\r\n", 200, "hello");
}

static void test_large_bodies(void) {
  size_t len = 1536 * 1024;
  char *body = malloc(len);
  for (size_t i = 0; i < len; i++) body[i] = (char)('a' + i % 26);
  char head[128];
  snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", len);
  client_t c;
  response_t r;
  CHECK(client_connect(&c) == 0, "connect");
  for (int i = 0; i < 2; i++) { /* twice: buffers are freed and regrown */
    CHECK(send_str(&c, head) && send_all(&c, body, len), "send");
    CHECK(read_response(&c, &r), "read echo");
    CHECK(r.status == 200 && r.body_len == len && memcmp(r.body, body, len) == 0,
          "echo of %zu bytes: got %zu", len, r.body_len);
    response_free(&r);
  }
  /* 4 MiB out, read slowly so the server must buffer and use EPOLLOUT. */
  CHECK(send_str(&c, "GET /big HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n"), "send");
  sleep_ms(100);
  CHECK(read_response(&c, &r), "read big");
  CHECK(r.status == 200 && r.body_len == BIG_RESPONSE_BYTES &&
            memcmp(r.body, big_response, BIG_RESPONSE_BYTES) == 0,
        "big %zu", r.body_len);
  response_free(&r);
  CHECK(read_response(&c, &r) && strcmp(r.body, "hello") == 0, "after big");
  response_free(&r);
  /* Again, read at full speed: the flush that empties the 4 MiB may be the one that takes the
   * output below the pause mark, and the waiting /hello must still be parsed then (a stall
   * here once made this test flaky). */
  for (int i = 0; i < 8; i++) {
    CHECK(send_str(&c, "GET /big HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n"), "send");
    CHECK(read_response(&c, &r) && r.body_len == BIG_RESPONSE_BYTES, "read big %d", i);
    response_free(&r);
    CHECK(read_response(&c, &r) && strcmp(r.body, "hello") == 0, "after big %d", i);
    response_free(&r);
  }
  client_close(&c);
  free(body);
}

static void test_connections_max(http_server_t *server) {
  client_t *cs = calloc(CONNECTIONS_MAX, sizeof *cs);
  response_t r;
  for (int i = 0; i < CONNECTIONS_MAX; i++) {
    CHECK(client_connect(&cs[i]) == 0, "connect %d", i);
    CHECK(send_str(&cs[i], "GET /hello HTTP/1.1\r\n\r\n"), "send");
    CHECK(read_response(&cs[i], &r) && r.status == 200, "conn %d served", i);
    response_free(&r);
  }
  http_stats_t before;
  http_server_stats(server, &before);
  client_t extra;
  CHECK(client_connect(&extra) == 0, "connect extra");
  send_str(&extra, "GET /hello HTTP/1.1\r\n\r\n");
  CHECK(expect_closed(&extra), "connection over the limit is closed");
  client_close(&extra);
  http_stats_t after;
  http_server_stats(server, &after);
  CHECK(after.connections_rejected_total == before.connections_rejected_total + 1,
        "rejected %llu", (unsigned long long)after.connections_rejected_total);
  for (int i = 0; i < CONNECTIONS_MAX; i++) client_close(&cs[i]);
  sleep_ms(100);
  simple_exchange("GET /hello HTTP/1.1\r\n\r\n", 200, "hello");
  free(cs);
}

/* A forked child (ledgerd's snapshot writer) holds copies of every socket. Closing a
 * connection in the server must still deregister it from epoll: otherwise the socket, kept
 * open by the child, reports EPOLLHUP forever for a freed connection and a net thread
 * spins (seen as 100% system CPU, and an assertion). */
static double process_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         (double)ru.ru_stime.tv_usec / 1e6;
}

static void test_fork_holds_sockets(void) {
  client_t cs[4];
  response_t r;
  for (int i = 0; i < 4; i++) {
    CHECK(client_connect(&cs[i]) == 0, "connect %d", i);
    CHECK(send_str(&cs[i], "GET /hello HTTP/1.1\r\n\r\n") && read_response(&cs[i], &r), "hello %d", i);
    response_free(&r);
  }
  pid_t child = fork();
  if (child == 0) { /* holds the server's descriptors, as a snapshot child would */
    for (int i = 0; i < 4; i++) close(cs[i].fd); /* but not the clients': they must close */
    usleep(1500 * 1000);
    _exit(0);
  }
  for (int i = 0; i < 4; i++) client_close(&cs[i]);
  sleep_ms(200); /* the server sees the closes */
  double t0 = process_cpu_s();
  sleep_ms(800);
  double used = process_cpu_s() - t0;
  CHECK(used < 0.3, "server used %.2f s of CPU in 0.8 s of idle after closes (stale epoll events)", used);
  int status;
  waitpid(child, &status, 0);
}

/* ------------------------------------------------------------ TLS */

#define TLS_THREAD_INDEX_BASE 5
static char tls_dir[] = "/tmp/test_http_tls.XXXXXX";
static char tls_path_buf[8][512];

static const char *tls_path(int slot, const char *name) {
  snprintf(tls_path_buf[slot], sizeof tls_path_buf[slot], "%s/%s", tls_dir, name);
  return tls_path_buf[slot];
}

static bool tls_make_certs(void) {
  if (mkdtemp(tls_dir) == NULL) return false;
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "(cd %s && E='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes' && "
           "openssl req -x509 $E -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca "
           "-addext basicConstraints=critical,CA:TRUE && "
           "printf 'subjectAltName=IP:127.0.0.1\n' > srv.ext && "
           "openssl req -new $E -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 && "
           "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
           "-extfile srv.ext -out srv.crt && "
           "openssl req -new $E -keyout cli.key -out cli.csr -subj /O=ledger-test/CN=client-1 && "
           "openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
           "-out cli.crt && echo not-a-certificate > junk.pem) >/dev/null 2>&1",
           tls_dir);
  return system(cmd) == 0;
}

/* One request on a new TLS connection with `Connection: close`; returns the whole answer
 * (malloc'd, NUL-terminated) or NULL if the connection or handshake failed. */
static char *tls_request(uint16_t port, bool with_cert, const char *path, size_t *len_out) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_load_verify_locations(ctx, tls_path(0, "ca.crt"), NULL);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (with_cert) {
    SSL_CTX_use_certificate_file(ctx, tls_path(1, "cli.crt"), SSL_FILETYPE_PEM);
    SSL_CTX_use_PrivateKey_file(ctx, tls_path(2, "cli.key"), SSL_FILETYPE_PEM);
  }
  client_t c;
  server_port = port;
  char *out = NULL;
  size_t len = 0, cap = 0;
  SSL *ssl = NULL;
  bool ok = client_connect(&c) == 0 && (ssl = SSL_new(ctx)) != NULL && SSL_set_fd(ssl, c.fd) == 1 &&
            SSL_connect(ssl) == 1;
  char req[256];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
  ok = ok && SSL_write(ssl, req, n) == n;
  while (ok) {
    if (cap - len < 65536 + 1) out = realloc(out, cap = cap * 2 + 65536 + 1);
    int got = SSL_read(ssl, out + len, 65536);
    if (got <= 0) break;
    len += (size_t)got;
  }
  if (ok && len == 0) ok = false; /* TLS 1.3: a refused certificate shows on the first read */
  if (ok) out[len] = '\0';
  if (!ok) {
    free(out);
    out = NULL;
  }
  *len_out = len;
  SSL_free(ssl);
  client_close(&c);
  SSL_CTX_free(ctx);
  ERR_clear_error();
  return out;
}

static const char *body_of(const char *answer) {
  const char *p = strstr(answer, "\r\n\r\n");
  return p ? p + 4 : "";
}

static void test_tls_config_errors(const http_config_t *base) {
  http_server_t *s = NULL;
  http_config_t c = *base;
  c.tls_client_ca_file = NULL;
  c.tls_key_file = NULL;
  CHECK(http_server_start(&c, &s) == -EINVAL, "cert without key");
  c = *base;
  c.thread_index_base = HTTP_THREADS_MAX - c.threads + 1;
  CHECK(http_server_start(&c, &s) == -EINVAL, "thread_index_base + threads > HTTP_THREADS_MAX");
  c = *base;
  c.tls_cert_file = tls_path(3, "missing.crt");
  CHECK(http_server_start(&c, &s) == -ENOENT, "missing cert file");
  c = *base;
  c.tls_cert_file = tls_path(3, "junk.pem");
  CHECK(http_server_start(&c, &s) == -EBADMSG, "junk cert file");
  c = *base;
  c.tls_key_file = tls_path(3, "cli.key"); /* does not match srv.crt */
  CHECK(http_server_start(&c, &s) == -EBADMSG, "key of another certificate");
  c = *base;
  c.tls_client_ca_file = tls_path(3, "junk.pem");
  CHECK(http_server_start(&c, &s) == -EBADMSG, "junk client CA file");
}

static void test_tls(const http_config_t *plain) {
  if (!tls_make_certs()) {
    CHECK(false, "openssl CLI could not make test certificates in %s", tls_dir);
    return;
  }
  http_config_t cfg = *plain;
  cfg.thread_index_base = TLS_THREAD_INDEX_BASE;
  cfg.tls_cert_file = tls_path(4, "srv.crt");
  cfg.tls_key_file = tls_path(5, "srv.key");
  cfg.tls_client_ca_file = tls_path(6, "ca.crt");
  test_tls_config_errors(&cfg);
  http_server_t *server = NULL;
  int err = http_server_start(&cfg, &server);
  CHECK(err == 0, "TLS server start: %s", strerror(-err));
  if (err != 0) return;
  uint16_t port = http_server_port(server);
  sleep_ms(20); /* on_thread_start has registered loops[5], loops[6] */
  size_t len = 0;
  for (int i = 0; i < 4; i++) { /* the kernel spreads connections over both threads */
    char *a = tls_request(port, true, "/tls", &len);
    CHECK(a != NULL && strncmp(a, "HTTP/1.1 200", 12) == 0, "mTLS request %d", i);
    const char *b = a ? body_of(a) : "";
    CHECK(strcmp(b, "1|CN=client-1,O=ledger-test|5") == 0 ||
              strcmp(b, "1|CN=client-1,O=ledger-test|6") == 0,
          "tls flag, subject, thread index: '%s'", b);
    free(a);
  }
  char *a = tls_request(port, true, "/defer?ms=30", &len);
  CHECK(a != NULL && strcmp(body_of(a), "deferred:ms=30") == 0, "deferred answer over TLS");
  free(a);
  a = tls_request(port, true, "/big", &len);
  const char *b = a ? body_of(a) : NULL;
  CHECK(b != NULL && len - (size_t)(b - a) == BIG_RESPONSE_BYTES &&
            memcmp(b, big_response, BIG_RESPONSE_BYTES) == 0,
        "4 MiB response over TLS (%zu bytes)", len);
  free(a);
  a = tls_request(port, false, "/tls", &len);
  CHECK(a == NULL, "no client certificate: refused");
  free(a);
  /* The client sees the refusal (the server's alert) before the server thread counts it:
   * wait for the count, up to 2 s. */
  http_stats_t st;
  for (int i = 0; i < 200; i++) {
    http_server_stats(server, &st);
    if (st.tls_handshake_errors_total >= 1) break;
    usleep(10 * 1000);
  }
  CHECK(st.tls_handshake_errors_total >= 1, "handshake errors %llu",
        (unsigned long long)st.tls_handshake_errors_total);
  http_server_stop(server);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tls_dir);
  CHECK(system(cmd) == 0, "cleanup");
}

/* Whether this kernel lets this process have an io_uring (else the server falls back to
 * plain system calls, and the batched path cannot be tested here). */
static bool uring_allowed(void) {
  struct io_uring ring;
  if (uring_batch_open(&ring, 4) != 0) return false; /* the server's own test of the kernel */
  io_uring_queue_exit(&ring);
  return true;
}

/* The whole suite against one server: with io_uring batching (the default) or without. */
static void run_suite(bool io_uring_off) {
  printf("test_http_server: suite with io_uring %s\n", io_uring_off ? "off" : "on");
  worker_stop = false;
  http_config_t cfg = {
      .host = "127.0.0.1",
      .port = 0,
      .threads = 2,
      .body_bytes_max = BODY_BYTES_MAX,
      .connections_max = CONNECTIONS_MAX,
      .header_timeout_ms = HEADER_TIMEOUT_MS,
      .idle_timeout_ms = IDLE_TIMEOUT_MS,
      .handler = handler,
      .body_fits = body_fits,
      .on_thread_start = on_thread_start,
      .io_uring_off = io_uring_off,
  };
  http_server_t *server = NULL;
  int err = http_server_start(&cfg, &server);
  if (err != 0) {
    fprintf(stderr, "http_server_start: %s\n", strerror(-err));
    exit(1);
  }
  server_port = http_server_port(server);
  CHECK(server_port != 0, "port");
  sleep_ms(20); /* on_thread_start has registered the loops */
  pthread_t worker;
  pthread_create(&worker, NULL, worker_main, NULL);

  test_simple();
  test_split_header();
  test_keep_alive_and_head();
  test_pipelining();
  test_expect_continue();
  test_route_body_limits();
  test_limits();
  test_timeouts();
  test_peer_gone_while_deferred(server);
  test_large_bodies();
  test_connections_max(server);
  test_fork_holds_sockets();
  uint16_t plain_port = server_port;
  if (!io_uring_off) test_tls(&cfg); /* once: TLS connections never use the ring */
  server_port = plain_port;

  http_stats_t st;
  http_server_stats(server, &st);
  CHECK(st.requests_total > 30 && st.protocol_errors_total >= 7 && st.timeouts_total >= 2,
        "stats: requests %llu errors %llu timeouts %llu", (unsigned long long)st.requests_total,
        (unsigned long long)st.protocol_errors_total, (unsigned long long)st.timeouts_total);

  /* The batched path really ran (every loop has a ring, and reads and sends went through
   * them), or, off, never did. */
  printf("test_http_server: %llu requests, %llu reads and %llu sends through io_uring\n",
         (unsigned long long)st.requests_total, (unsigned long long)st.uring_reads_total,
         (unsigned long long)st.uring_sends_total);
  if (io_uring_off) {
    CHECK(st.uring_loops == 0 && st.uring_reads_total == 0 && st.uring_sends_total == 0,
          "io_uring off: %u loops have a ring", st.uring_loops);
  } else if (!uring_allowed()) {
    printf("test_http_server: this kernel refuses io_uring: the batched path is not tested\n");
    CHECK(st.uring_loops == 0, "no ring possible, yet %u loops have one", st.uring_loops);
  } else {
    CHECK(st.uring_loops == cfg.threads && st.uring_reads_total >= st.requests_total / 2 &&
              st.uring_sends_total >= st.requests_total / 4,
          "io_uring on: %u of %u loops; most reads and many sends should go through it",
          st.uring_loops, cfg.threads);
  }

  worker_stop = true;
  pthread_join(worker, NULL);
  http_server_stop(server);
}

int main(void) {
  big_response = malloc(BIG_RESPONSE_BYTES);
  for (size_t i = 0; i < BIG_RESPONSE_BYTES; i++) big_response[i] = (char)(i * 7);
  run_suite(false);
  run_suite(true);
  free(big_response);
  if (failures) {
    fprintf(stderr, "test_http_server: %d failure(s)\n", failures);
    return 1;
  }
  printf("test_http_server: ok\n");
  return 0;
}
