/*
 * http_conn.c — one HTTP/1.1 connection: bytes in, libhttp-parser callbacks, the request
 * object, the handler call, the response bytes out, timeouts and close.
 *
 * Why: this is the whole protocol state machine; http_server.c only owns sockets and the
 * loop. Parsing is libhttp-parser's; this file only copies the pieces the API needs.
 *
 * Invariants:
 *  - at most one request per connection is with the handler (in_handler); the parser is
 *    paused at each message end and only resumed after http_respond, so pipelined requests
 *    are dispatched, and answered, in order;
 *  - parser callbacks only append to req_buf; the handler is called outside
 *    http_parser_execute, so http_respond never re-enters the parser;
 *  - a connection is freed only from the loop's event/ready/sweep paths or from
 *    http_respond on a dead connection, never while its parse loop runs (in_process);
 *  - every buffer is bounded: in by HTTP_IN_PENDING_BYTES_MAX, req_buf by the header, path
 *    and body limits, out by HTTP_OUT_BYTES_MAX;
 *  - TLS connections (ssl != NULL) differ only in: the handshake before the first read
 *    (conn_tls_on_event), the read/write calls (one branch each, http_tls.c), the extra
 *    epoll interest OpenSSL asks for (conn_tls_events), a read only with room for a whole
 *    record, and close_notify before the socket closes. The plain path is unchanged.
 *
 * Threads: everything here runs on the owning loop's thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "http_internal.h"

#define HTTP_ERR_SILENT (-1) /* err_status: close without an answer (allocation failed) */

static const struct {
  const char *name;
  size_t len;
} kept_headers[HTTP_HDR_COUNT] = {
    [HTTP_HDR_AUTHORIZATION] = {"authorization", 13},
    [HTTP_HDR_IDEMPOTENCY_KEY] = {"idempotency-key", 15},
    [HTTP_HDR_CONTENT_TYPE] = {"content-type", 12},
    [HTTP_HDR_COOKIE] = {"cookie", 6},
    [HTTP_HDR_EXPECT] = {"expect", 6},
};

/* ---------------------------------------------------------------- buffers */

static bool buf_reserve(http_buf_t *b, size_t extra, size_t cap_initial) {
  size_t need = b->len + extra;
  if (need <= b->cap) return true;
  size_t cap = b->cap ? b->cap : cap_initial;
  while (cap < need) cap *= 2;
  char *data = realloc(b->data, cap);
  if (data == NULL) return false;
  b->data = data;
  b->cap = cap;
  return true;
}

static bool buf_append(http_buf_t *b, const void *src, size_t len, size_t cap_initial) {
  if (!buf_reserve(b, len, cap_initial)) return false;
  if (len > 0) memcpy(b->data + b->len, src, len);
  b->len += len;
  return true;
}

static void buf_free(http_buf_t *b) {
  free(b->data);
  *b = (http_buf_t){0};
}

/* Called when a buffer's live part is empty: rewind, and drop it if it grew large. */
static void buf_rewind(http_buf_t *b) {
  HTTP_ASSERT(b->off == b->len);
  b->off = b->len = 0;
  if (b->cap > HTTP_BUF_KEEP_BYTES_MAX) buf_free(b);
}

static size_t buf_pending(const http_buf_t *b) {
  HTTP_ASSERT(b->off <= b->len && b->len <= b->cap);
  return b->len - b->off;
}

/* ---------------------------------------------------------------- lists */

static void ready_push(http_loop_t *loop, http_conn_t *c) {
  if (c->in_ready) return;
  c->in_ready = true;
  c->ready_next = NULL;
  c->ready_prev = loop->ready_tail;
  if (loop->ready_tail) loop->ready_tail->ready_next = c;
  else loop->ready_head = c;
  loop->ready_tail = c;
}

static void ready_remove(http_loop_t *loop, http_conn_t *c) {
  if (!c->in_ready) return;
  if (c->ready_prev) c->ready_prev->ready_next = c->ready_next;
  else loop->ready_head = c->ready_next;
  if (c->ready_next) c->ready_next->ready_prev = c->ready_prev;
  else loop->ready_tail = c->ready_prev;
  c->in_ready = false;
  c->ready_prev = c->ready_next = NULL;
}

static void conns_unlink(http_loop_t *loop, http_conn_t *c) {
  if (c->prev) c->prev->next = c->next;
  else loop->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* ---------------------------------------------------------------- close */

static void conn_close_fd(http_conn_t *c) {
  if (c->fd < 0) return;
  if (c->ssl != NULL) http__tls_conn_close(c);
  /* Deregister explicitly: close() removes the registration only when no other descriptor
   * (e.g. in a forked snapshot child) refers to the socket, and a stale registration would
   * keep reporting events for a freed connection. */
  (void)epoll_ctl(c->loop->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  unsigned open_before = atomic_fetch_sub_explicit(&c->loop->server->connections_open, 1,
                                                   memory_order_relaxed);
  HTTP_ASSERT(open_before > 0);
}

static void conn_destroy(http_conn_t *c) {
  http_loop_t *loop = c->loop;
  conn_close_fd(c);
  ready_remove(loop, c);
  conns_unlink(loop, c);
  buf_free(&c->in);
  buf_free(&c->req_buf);
  buf_free(&c->out);
  free(c->tls_client_subject);
  c->tls_client_subject = NULL;
  HTTP_ASSERT(!c->buried);
  c->buried = true;
  c->grave_next = loop->graveyard;
  loop->graveyard = c;
}

void http__loop_bury(http_loop_t *loop) {
  while (loop->graveyard != NULL) {
    http_conn_t *c = loop->graveyard;
    loop->graveyard = c->grave_next;
    free(c);
  }
}

/* Closes and frees; the request must not be with the handler. */
static void conn_close(http_conn_t *c) {
  HTTP_ASSERT(!c->in_handler);
  HTTP_ASSERT(!c->in_process);
  conn_destroy(c);
}

/* The peer is gone. A request with the handler keeps its memory until http_respond. */
static void conn_peer_gone(http_conn_t *c) {
  if (!c->in_handler) {
    conn_close(c);
    return;
  }
  conn_close_fd(c);
  c->dead = true;
  c->deadline_ms = 0;
  buf_free(&c->in);
  buf_free(&c->out);
}

/* ---------------------------------------------------------------- responses */

static char *put(char *p, const char *s, size_t len) {
  memcpy(p, s, len);
  return p + len;
}
#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

/* Sends the response whose head alone is in c->out (from offset 0) and whose body is still
 * in the handler's buffer, with one sendmsg of both, and copies to c->out only what the socket
 * did not take. A batch answer is ~630 KB: it used to be copied whole into c->out first. A
 * send error counts as nothing sent: conn_flush meets it again and handles it. */
static bool conn_send_direct(http_conn_t *c, const char *body, size_t body_len) {
  HTTP_ASSERT(c->out.off == 0 && c->ssl == NULL);
  size_t head = c->out.len;
  struct iovec iov[2] = {{c->out.data, head}, {(void *)(uintptr_t)body, body_len}};
  struct msghdr msg = {.msg_iov = iov, .msg_iovlen = body_len ? 2 : 1};
  ssize_t n;
  do {
    n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  size_t sent = n > 0 ? (size_t)n : 0;
  if (sent < head) {
    c->out.off = sent;
    return buf_append(&c->out, body, body_len, HTTP_OUT_BUF_BYTES_INITIAL);
  }
  c->out.off = c->out.len = 0;
  size_t body_sent = sent - head;
  return body_sent == body_len ||
         buf_append(&c->out, body + body_sent, body_len - body_sent, HTTP_OUT_BUF_BYTES_INITIAL);
}

/* Appends one complete response to c->out, or sends it at once when nothing is queued before
 * it (plain TCP, a keep-alive answer with a body: conn_send_direct). False when it would pass
 * HTTP_OUT_BYTES_MAX or memory ran out; the caller then closes the connection. */
static bool conn_append_response(http_conn_t *c, int status, const char *content_type,
                                 const char *headers_extra, const char *body, size_t body_len,
                                 bool closing) {
  HTTP_ASSERT(status >= 100 && status <= 999);
  HTTP_ASSERT(body != NULL || body_len == 0);
  const char *reason = http_status_text(status);
  size_t reason_len = strlen(reason);
  size_t type_len = content_type ? strlen(content_type) : 0;
  size_t extra_len = headers_extra ? strlen(headers_extra) : 0;
  size_t body_sent = c->is_head ? 0 : body_len;
  size_t head_max = 64 + reason_len + type_len + extra_len + 64;
  if (buf_pending(&c->out) + head_max + body_sent > HTTP_OUT_BYTES_MAX) return false;
  bool direct = c->ssl == NULL && !closing && body_sent >= HTTP_DIRECT_BODY_BYTES_MIN && buf_pending(&c->out) == 0;
  if (direct) c->out.off = c->out.len = 0;
  if (!buf_reserve(&c->out, head_max + (direct ? 0 : body_sent), HTTP_OUT_BUF_BYTES_INITIAL)) return false;

  char *p = c->out.data + c->out.len;
  p = PUT_LIT(p, "HTTP/1.1 ");
  p += u64_format(p, (uint64_t)status);
  *p++ = ' ';
  p = put(p, reason, reason_len);
  if (content_type) {
    p = PUT_LIT(p, "\r\nContent-Type: ");
    p = put(p, content_type, type_len);
  }
  p = PUT_LIT(p, "\r\nContent-Length: ");
  p += u64_format(p, body_len);
  p = PUT_LIT(p, "\r\n");
  if (extra_len) p = put(p, headers_extra, extra_len);
  if (closing) p = PUT_LIT(p, "Connection: close\r\n");
  else if (c->http10) p = PUT_LIT(p, "Connection: keep-alive\r\n");
  p = PUT_LIT(p, "\r\n");
  if (body_sent && !direct) p = put(p, body, body_sent);
  size_t added = (size_t)(p - (c->out.data + c->out.len));
  HTTP_ASSERT(added <= head_max + body_sent);
  c->out.len += added;
  return !direct || conn_send_direct(c, body, body_sent);
}

static void conn_answer_error(http_conn_t *c, int status) {
  static const struct {
    int status;
    const char *body;
  } errors[] = {
      {413, "{\"error\":{\"code\":\"payload_too_large\","
            "\"message\":\"request body is larger than the server accepts\"}}"},
      {431, "{\"error\":{\"code\":\"headers_too_large\","
            "\"message\":\"request headers are larger than the server accepts\"}}"},
      {414, "{\"error\":{\"code\":\"uri_too_long\","
            "\"message\":\"request target is longer than the server accepts\"}}"},
      {417, "{\"error\":{\"code\":\"expectation_failed\","
            "\"message\":\"the only expectation this server meets is Expect: 100-continue\"}}"},
      {400, "{\"error\":{\"code\":\"bad_request\",\"message\":\"malformed HTTP request\"}}"},
  };
  const char *body = errors[4].body;
  for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
    if (errors[i].status == status) body = errors[i].body;
  }
  if (status != 413 && status != 431 && status != 414 && status != 417) status = 400;
  http__stat_inc(&c->loop->stat_protocol_errors);
  c->is_head = false;
  c->closing = true;
  c->linger_after = true;
  if (!conn_append_response(c, status, "application/json", NULL, body, strlen(body), true)) {
    c->out.off = c->out.len = 0; /* closing anyway; nothing more can be said */
  }
}

/* ---------------------------------------------------------------- parser callbacks */

static int parse_fail(http_conn_t *c, int status) {
  if (c->err_status == 0) c->err_status = status;
  return -1;
}

static int on_message_begin(http_parser *p) {
  http_conn_t *c = p->data;
  HTTP_ASSERT(!c->in_handler);
  c->req_buf.off = c->req_buf.len = 0;
  c->msg = (http_msg_t){.hdr_cur = HTTP_HDR_NONE, .last_was_value = true};
  c->msg_active = true;
  if (c->idle) { /* header timeout runs from the first byte of a keep-alive request */
    c->idle = false;
    c->deadline_ms = c->loop->now_ms + c->loop->server->config.header_timeout_ms;
  }
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  c->msg.header_bytes += len;
  if (c->msg.url_len + len > HTTP_PATH_BYTES_MAX) return parse_fail(c, 414);
  if (!buf_append(&c->req_buf, at, len, HTTP_REQ_BUF_BYTES_INITIAL)) {
    return parse_fail(c, HTTP_ERR_SILENT);
  }
  c->msg.url_len += len;
  return 0;
}

/* The url is complete: NUL-terminate it and split it with http_parser_parse_url. */
static int url_finish(http_conn_t *c) {
  http_msg_t *m = &c->msg;
  HTTP_ASSERT(!m->url_done);
  m->url_done = true;
  if (!buf_append(&c->req_buf, "", 1, HTTP_REQ_BUF_BYTES_INITIAL)) {
    return parse_fail(c, HTTP_ERR_SILENT);
  }
  struct http_parser_url u;
  http_parser_url_init(&u);
  char *url = c->req_buf.data;
  if (http_parser_parse_url(url, m->url_len, c->parser.method == HTTP_CONNECT, &u) != 0) {
    return parse_fail(c, 400);
  }
  m->has_path = (u.field_set & (1u << UF_PATH)) != 0;
  m->has_query = (u.field_set & (1u << UF_QUERY)) != 0;
  if (m->has_path) {
    m->path_off = u.field_data[UF_PATH].off;
    m->path_len = u.field_data[UF_PATH].len;
  }
  if (m->has_query) {
    m->query_off = u.field_data[UF_QUERY].off;
    m->query_len = u.field_data[UF_QUERY].len;
  }
  /* The byte after each piece is '?', '#' or the terminator: overwrite with NUL, in order. */
  if (m->has_path) url[m->path_off + m->path_len] = '\0';
  if (m->has_query) url[m->query_off + m->query_len] = '\0';
  return 0;
}

/* The value of a kept header is complete: NUL-terminate it. */
static int header_value_end(http_conn_t *c) {
  http_msg_t *m = &c->msg;
  if (m->hdr_cur == HTTP_HDR_NONE) return 0;
  if (!buf_append(&c->req_buf, "", 1, HTTP_REQ_BUF_BYTES_INITIAL)) {
    return parse_fail(c, HTTP_ERR_SILENT);
  }
  m->hdr_set[m->hdr_cur] = true;
  m->hdr_cur = HTTP_HDR_NONE;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  http_msg_t *m = &c->msg;
  if (!m->url_done && url_finish(c) != 0) return -1;
  m->header_bytes += len;
  if (m->last_was_value) { /* a new header line */
    if (header_value_end(c) != 0) return -1;
    m->last_was_value = false;
    m->hdr_name_len = 0;
    m->header_bytes += HTTP_HEADER_LINE_OVERHEAD_BYTES;
  }
  if (m->header_bytes > HTTP_HEADER_BYTES_MAX) return parse_fail(c, 431);
  if (m->hdr_name_len + len < sizeof m->hdr_name) {
    memcpy(m->hdr_name + m->hdr_name_len, at, len);
    m->hdr_name_len += len;
  } else {
    m->hdr_name_len = sizeof m->hdr_name; /* too long to be a kept header */
  }
  return 0;
}

static int header_match(const http_msg_t *m) {
  for (int i = 0; i < HTTP_HDR_COUNT; i++) {
    if (m->hdr_name_len == kept_headers[i].len &&
        strncasecmp(m->hdr_name, kept_headers[i].name, m->hdr_name_len) == 0) {
      return i;
    }
  }
  return HTTP_HDR_NONE;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  http_msg_t *m = &c->msg;
  m->header_bytes += len;
  if (m->header_bytes > HTTP_HEADER_BYTES_MAX) return parse_fail(c, 431);
  if (!m->last_was_value) { /* first piece of this value */
    m->last_was_value = true;
    m->hdr_cur = header_match(m);
    /* A credential or an idempotency key given twice is ambiguous: which one did the client
     * mean, and which one would a proxy have checked? Refuse (400). Other kept headers: the
     * last one wins. */
    if ((m->hdr_cur == HTTP_HDR_AUTHORIZATION || m->hdr_cur == HTTP_HDR_IDEMPOTENCY_KEY) &&
        m->hdr_set[m->hdr_cur])
      return parse_fail(c, 400);
    /* Two Expect fields are one list (RFC 9110, 5.3): refused whole by expect_check, rather
     * than the last one deciding for both. */
    if (m->hdr_cur == HTTP_HDR_EXPECT && m->hdr_set[m->hdr_cur]) m->expect_twice = true;
    if (m->hdr_cur != HTTP_HDR_NONE) {
      m->hdr_off[m->hdr_cur] = c->req_buf.len;
      m->hdr_len[m->hdr_cur] = 0;
      m->hdr_set[m->hdr_cur] = false;
    }
  }
  if (m->hdr_cur == HTTP_HDR_NONE) return 0;
  if (!buf_append(&c->req_buf, at, len, HTTP_REQ_BUF_BYTES_INITIAL)) {
    return parse_fail(c, HTTP_ERR_SILENT);
  }
  m->hdr_len[m->hdr_cur] += len;
  return 0;
}

static http_method_t method_of(unsigned method);

/* Expect (RFC 9110, 10.1.1): a client that sends "Expect: 100-continue" waits for an interim
 * "100 Continue" before it sends the body (curl for bodies over 1 MiB, .NET and many Java
 * clients for any body), and without one it waits out its own timeout (curl: 1 s) on every
 * such request. So once the head is accepted (a body over the limit got its 413 before this,
 * without the client sending it), the interim answer goes out ahead of the body. Nothing is
 * sent when no body follows. HTTP/1.0 requests' Expect is ignored, as the RFC requires; any
 * other expectation, or Expect given twice, is refused with 417 and the connection closed
 * (its body may follow). */
static int expect_check(http_conn_t *c, const http_parser *p, bool body_follows) {
  const http_msg_t *m = &c->msg;
  if (!m->hdr_set[HTTP_HDR_EXPECT] || (p->http_major == 1 && p->http_minor == 0)) return 0;
  if (m->expect_twice) return parse_fail(c, 417);
  const char *v = c->req_buf.data + m->hdr_off[HTTP_HDR_EXPECT];
  size_t len = m->hdr_len[HTTP_HDR_EXPECT];
  while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t')) len--;
  while (len > 0 && (*v == ' ' || *v == '\t')) v++, len--;
  if (len == 0) return 0; /* an empty list expects nothing */
  static const char want[] = "100-continue";
  if (len != sizeof want - 1 || strncasecmp(v, want, len) != 0) return parse_fail(c, 417);
  static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\n";
  if (body_follows && !buf_append(&c->out, interim, sizeof interim - 1, HTTP_OUT_BUF_BYTES_INITIAL))
    return parse_fail(c, HTTP_ERR_SILENT);
  return 0;
}

static int on_headers_complete(http_parser *p) {
  http_conn_t *c = p->data;
  const http_config_t *cfg = &c->loop->server->config;
  if (!c->msg.url_done && url_finish(c) != 0) return -1;
  if (header_value_end(c) != 0) return -1;
  bool has_length = (p->flags & F_CONTENTLENGTH) != 0;
  if (has_length && p->content_length > cfg->body_bytes_max) return parse_fail(c, 413);
  if (has_length && p->content_length > 0 && cfg->body_fits != NULL) {
    const char *path = c->msg.has_path ? c->req_buf.data + c->msg.path_off : "/"; /* as dispatch */
    size_t path_len = c->msg.has_path ? c->msg.path_len : 1;
    if (!cfg->body_fits(method_of(p->method), path, path_len, p->content_length, cfg->handler_ctx))
      return parse_fail(c, 413);
  }
  bool body_follows = (has_length && p->content_length > 0) || (p->flags & F_CHUNKED) != 0;
  if (expect_check(c, p, body_follows) != 0) return -1;
  c->msg.body_off = c->req_buf.len;
  if (has_length && !buf_reserve(&c->req_buf, (size_t)p->content_length + 1,
                                 HTTP_REQ_BUF_BYTES_INITIAL)) {
    return parse_fail(c, HTTP_ERR_SILENT);
  }
  c->deadline_ms = c->loop->now_ms + cfg->idle_timeout_ms; /* body phase */
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  const http_config_t *cfg = &c->loop->server->config;
  if (c->msg.body_len + len > cfg->body_bytes_max) return parse_fail(c, 413);
  if (!buf_append(&c->req_buf, at, len, HTTP_REQ_BUF_BYTES_INITIAL)) {
    return parse_fail(c, HTTP_ERR_SILENT);
  }
  c->msg.body_len += len;
  c->deadline_ms = c->loop->now_ms + cfg->idle_timeout_ms;
  return 0;
}

static int on_message_complete(http_parser *p) {
  http_conn_t *c = p->data;
  if (!buf_append(&c->req_buf, "", 1, HTTP_REQ_BUF_BYTES_INITIAL)) { /* body terminator */
    return parse_fail(c, HTTP_ERR_SILENT);
  }
  c->keep_alive = http_should_keep_alive(p) && !p->upgrade;
  c->http10 = p->http_major == 1 && p->http_minor == 0;
  c->msg_active = false;
  http_parser_pause(p, 1); /* one request at a time: resumed after dispatch */
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---------------------------------------------------------------- dispatch */

static http_method_t method_of(unsigned method) {
  switch (method) {
  case HTTP_GET: return HTTP_METHOD_GET;
  case HTTP_HEAD: return HTTP_METHOD_HEAD;
  case HTTP_POST: return HTTP_METHOD_POST;
  case HTTP_PUT: return HTTP_METHOD_PUT;
  case HTTP_DELETE: return HTTP_METHOD_DELETE;
  case HTTP_PATCH: return HTTP_METHOD_PATCH;
  default: return HTTP_METHOD_OTHER;
  }
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void conn_fill_request(http_conn_t *c) {
  const http_msg_t *m = &c->msg;
  char *base = c->req_buf.data;
  HTTP_ASSERT(base != NULL && m->url_done);
  http_request_t *r = &c->req;
  *r = (http_request_t){0};
  r->method = method_of(c->parser.method);
  r->path = m->has_path ? base + m->path_off : "/";
  r->path_len = m->has_path ? m->path_len : 1;
  r->query = m->has_query ? base + m->query_off : "";
  r->query_len = m->has_query ? m->query_len : 0;
  r->body = base + m->body_off;
  r->body_len = m->body_len;
  HTTP_ASSERT(m->body_off + m->body_len < c->req_buf.len && r->body[r->body_len] == '\0');
  const char **kept[HTTP_HDR_COUNT] = {
      [HTTP_HDR_AUTHORIZATION] = &r->authorization,
      [HTTP_HDR_IDEMPOTENCY_KEY] = &r->idempotency_key,
      [HTTP_HDR_CONTENT_TYPE] = &r->content_type,
      [HTTP_HDR_COOKIE] = &r->cookie,
      [HTTP_HDR_EXPECT] = NULL,
  };
  for (int i = 0; i < HTTP_HDR_COUNT; i++) {
    if (m->hdr_set[i] && kept[i] != NULL) *kept[i] = base + m->hdr_off[i];
  }
  r->remote_addr = c->remote_addr;
  r->received_ns = now_ns();
  r->loop = c->loop;
  r->thread_index = c->loop->thread_index;
  r->tls = c->tls;
  r->tls_client_subject = c->tls_client_subject;
}

static void conn_dispatch(http_conn_t *c) {
  HTTP_ASSERT(!c->in_handler && !c->dead);
  conn_fill_request(c);
  c->is_head = c->req.method == HTTP_METHOD_HEAD;
  c->in_handler = true;
  c->deadline_ms = 0;
  http__stat_inc(&c->loop->stat_requests);
  const http_config_t *cfg = &c->loop->server->config;
  cfg->handler(&c->req, cfg->handler_ctx);
}

/* ---------------------------------------------------------------- input */

static bool conn_may_parse(const http_conn_t *c) {
  return !c->in_handler && !c->closing && buf_pending(&c->out) < HTTP_OUT_PAUSE_BYTES;
}

static void conn_parse_failed(http_conn_t *c, enum http_errno err) {
  int status = c->err_status;
  if (status == HTTP_ERR_SILENT) {
    c->closing = true;
    c->out.off = c->out.len = 0;
    return;
  }
  if (status == 0) status = err == HPE_HEADER_OVERFLOW ? 431 : 400;
  conn_answer_error(c, status);
}

/* Parses and dispatches requests until the data ends or parsing must wait. Returns the bytes
 * consumed. Runs with in_process set, so answers given meanwhile just queue output. */
static size_t conn_parse(http_conn_t *c, const char *data, size_t len) {
  HTTP_ASSERT(c->in_process);
  size_t used = 0;
  while (used < len && conn_may_parse(c)) {
    size_t n = http_parser_execute(&c->parser, &parser_settings, data + used, len - used);
    HTTP_ASSERT(n <= len - used);
    used += n;
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (err == HPE_PAUSED) {
      http_parser_pause(&c->parser, 0);
      conn_dispatch(c);
    } else if (err != HPE_OK || used < len) { /* used < len: an upgrade, which we refuse */
      conn_parse_failed(c, err);
      break;
    }
  }
  return used;
}

/* Parses input kept from earlier reads, if parsing may go on. */
static void conn_drain_in(http_conn_t *c) {
  if (buf_pending(&c->in) == 0) return;
  size_t used = conn_parse(c, c->in.data + c->in.off, buf_pending(&c->in));
  c->in.off += used;
  if (c->closing) c->in.off = c->in.len; /* nothing more will be parsed */
  if (buf_pending(&c->in) == 0) buf_rewind(&c->in);
}

/* Lingering after an error answer: read and drop input until EOF or the limits. */
static bool conn_read_discard(http_conn_t *c) {
  ssize_t n = read(c->fd, c->loop->read_buf, HTTP_READ_BYTES);
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  c->linger_bytes += (size_t)n;
  return n > 0 && c->linger_bytes <= HTTP_LINGER_BYTES_MAX;
}

static bool conn_read(http_conn_t *c);
static bool conn_wants_read(const http_conn_t *c);

/* Parses n bytes read outside the connection's buffer (the loop's read buffer or a batch
 * slot) and keeps what the parser left for later. False when out of memory. */
static bool conn_take_direct(http_conn_t *c, const char *src, size_t n) {
  size_t used = conn_parse(c, src, n);
  return used == n || c->closing || buf_append(&c->in, src + used, n - used, HTTP_READ_BYTES);
}

/* Consumes the read the loop's batch did for this connection (http__loop_pre_read), as the
 * direct branch of conn_read would have done it. */
static bool conn_read_pre(http_conn_t *c) {
  c->pre_read = false;
  /* Only this connection's own event reads or lingers it, and it comes after the batch. */
  HTTP_ASSERT(!c->lingering && buf_pending(&c->in) == 0 && c->ssl == NULL);
  if (c->pre_res == -EAGAIN || c->pre_res == -EINTR) return true;
  if (c->pre_res < 0) return conn_read(c); /* a plain read meets the error (if any) itself */
  if (c->pre_res == 0) return false;
  size_t n = (size_t)c->pre_res;
  if (!conn_take_direct(c, c->pre_data, n)) return false;
  /* A full batch read may have left bytes behind (a large body): one plain read follows,
   * so such a connection still takes up to HTTP_READ_BYTES more per event. */
  if (n == HTTP_PRE_READ_BYTES && !c->closing && conn_wants_read(c)) return conn_read(c);
  return true;
}

/* Reads once. Returns false if the peer is gone (the caller handles that). */
static bool conn_read(http_conn_t *c) {
  http_loop_t *loop = c->loop;
  if (c->pre_read) return conn_read_pre(c);
  if (c->lingering) return conn_read_discard(c);
  bool direct = buf_pending(&c->in) == 0;
  char *dst = loop->read_buf;
  size_t room = HTTP_READ_BYTES;
  if (!direct) { /* parsing waits: keep appending to the connection's own buffer */
    size_t pending = buf_pending(&c->in);
    if (c->in.off > 0) memmove(c->in.data, c->in.data + c->in.off, pending);
    c->in.off = 0;
    c->in.len = pending;
    HTTP_ASSERT(pending < HTTP_IN_PENDING_BYTES_MAX); /* EPOLLIN is off at the limit */
    room = HTTP_IN_PENDING_BYTES_MAX - pending;
    if (!buf_reserve(&c->in, room, HTTP_READ_BYTES)) return false;
    dst = c->in.data + c->in.len;
  }
  ssize_t n = c->ssl == NULL ? read(c->fd, dst, room) : http__tls_read(c, dst, room);
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  if (n == 0) return false;
  if (!direct) {
    c->in.len += (size_t)n;
    conn_drain_in(c);
    return true;
  }
  return conn_take_direct(c, dst, (size_t)n);
}

/* ---------------------------------------------------------------- output and interest */

/* A slow reader making progress is not idle: its deadline moves with each send that took
 * something while output is left. */
static void conn_sent_some(http_conn_t *c) {
  if (buf_pending(&c->out) == 0) return;
  uint64_t deadline_ms = c->loop->now_ms + c->loop->server->config.idle_timeout_ms;
  if (c->deadline_ms != 0 && c->deadline_ms < deadline_ms) c->deadline_ms = deadline_ms;
}

/* Sends what it can. False on a socket error. */
static bool conn_flush(http_conn_t *c) {
  size_t sent_total = 0;
  while (buf_pending(&c->out) > 0) {
    const char *src = c->out.data + c->out.off;
    ssize_t n = c->ssl == NULL ? send(c->fd, src, buf_pending(&c->out), MSG_NOSIGNAL)
                               : http__tls_write(c, src, buf_pending(&c->out));
    if (n > 0) {
      c->out.off += (size_t)n;
      sent_total += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      break;
    } else {
      return false;
    }
  }
  if (buf_pending(&c->out) == 0) buf_rewind(&c->out);
  else if (sent_total > 0) conn_sent_some(c);
  return true;
}

/* Whether input is read now. A TLS connection needs room for a whole record (see
 * HTTP_TLS_RECORD_PLAIN_BYTES_MAX); a plain one reads while any room is left. */
static bool conn_wants_read(const http_conn_t *c) {
  if (c->lingering) return true;
  if (c->closing) return false;
  size_t room_min = c->ssl == NULL ? 1 : HTTP_TLS_RECORD_PLAIN_BYTES_MAX;
  return buf_pending(&c->in) + room_min <= HTTP_IN_PENDING_BYTES_MAX;
}

/* OpenSSL's own needs: the handshake waits for one direction only; a read that must first
 * write (or the reverse) waits for the other direction too. A write waiting for input must
 * not keep EPOLLOUT, which would fire at once, forever. */
static uint32_t conn_tls_events(const http_conn_t *c, uint32_t want) {
  if (c->tls_handshaking) return EPOLLRDHUP | (c->tls_hs_wants_write ? EPOLLOUT : EPOLLIN);
  if (c->lingering) return want; /* raw socket reads only; OpenSSL is done */
  if (c->tls_read_wants_write && (want & EPOLLIN)) want |= EPOLLOUT;
  if (c->tls_write_wants_read && (want & EPOLLOUT)) want = (want & ~(uint32_t)EPOLLOUT) | EPOLLIN;
  return want;
}

static bool conn_update_events(http_conn_t *c) {
  uint32_t want = EPOLLRDHUP;
  if (conn_wants_read(c)) want |= EPOLLIN;
  if (buf_pending(&c->out) > 0) want |= EPOLLOUT;
  if (c->ssl != NULL) want = conn_tls_events(c, want);
  if (want == c->events) return true;
  struct epoll_event ev = {.events = want, .data.ptr = c};
  if (epoll_ctl(c->loop->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) != 0) return false;
  c->events = want;
  return true;
}

static bool conn_linger_start(http_conn_t *c) {
  if (c->ssl != NULL) http__tls_shutdown(c); /* close_notify goes before our FIN */
  if (shutdown(c->fd, SHUT_WR) != 0) return false;
  c->lingering = true;
  c->in.off = c->in.len = 0;
  c->deadline_ms = c->loop->now_ms + HTTP_LINGER_MS;
  return true;
}

/* After input or output work: send, close if done, fix the epoll interest. False if the
 * connection was closed (and freed). */
static bool conn_sync(http_conn_t *c) {
  HTTP_ASSERT(c->fd >= 0 && !c->in_process);
  bool ok = conn_flush(c);
  /* Pipelined input that waited for the output to drain below the pause mark is parsed now:
   * once the output is gone no EPOLLOUT comes, and its bytes were already read, so no
   * EPOLLIN either. (Found as an intermittent stall after a 4 MiB answer in
   * test_http_server: the flush that emptied the buffer left the next request unparsed.) */
  while (ok && !c->lingering && !c->closing && buf_pending(&c->in) > 0 && conn_may_parse(c)) {
    size_t before = buf_pending(&c->in);
    c->in_process = true;
    conn_drain_in(c);
    c->in_process = false;
    ok = conn_flush(c);
    if (buf_pending(&c->in) == before) break; /* a partial request: it waits for more bytes */
  }
  if (ok && c->closing && !c->lingering && buf_pending(&c->out) == 0 && !c->in_handler) {
    ok = c->linger_after && conn_linger_start(c);
  }
  if (ok) ok = conn_update_events(c);
  if (!ok) conn_close(c);
  return ok;
}

/* Parses input that waited (after an answer or after output drained), then syncs. */
static void conn_resume(http_conn_t *c) {
  HTTP_ASSERT(!c->dead);
  c->in_process = true;
  conn_drain_in(c);
  c->in_process = false;
  conn_sync(c);
}

/* ---------------------------------------------------------------- loop entry points */

void http__conn_accepted(http_loop_t *loop, int fd, const struct sockaddr_storage *peer) {
  http_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) {
    close(fd);
    atomic_fetch_sub_explicit(&loop->server->connections_open, 1, memory_order_relaxed);
    return;
  }
  c->loop = loop;
  c->fd = fd;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->deadline_ms = loop->now_ms + loop->server->config.header_timeout_ms;
  const void *ip = peer->ss_family == AF_INET6
                       ? (const void *)&((const struct sockaddr_in6 *)peer)->sin6_addr
                       : (const void *)&((const struct sockaddr_in *)peer)->sin_addr;
  if (inet_ntop(peer->ss_family, ip, c->remote_addr, sizeof c->remote_addr) == NULL) {
    c->remote_addr[0] = '\0';
  }
  c->events = EPOLLIN | EPOLLRDHUP;
  struct epoll_event ev = {.events = c->events, .data.ptr = c};
  c->next = loop->conns;
  if (loop->conns) loop->conns->prev = c;
  loop->conns = c;
  SSL_CTX *tls_ctx = loop->server->tls_ctx;
  if ((tls_ctx != NULL && !http__tls_conn_init(c, tls_ctx)) ||
      epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    conn_close(c);
  }
}

/* Reads on a TLS connection: up to HTTP_TLS_READS_PER_EVENT_MAX records while OpenSSL
 * still holds input (it should not, read_ahead being off; this is the safety net). */
static void conn_tls_read(http_conn_t *c) {
  for (int i = 0; i < HTTP_TLS_READS_PER_EVENT_MAX; i++) {
    c->in_process = true;
    bool alive = conn_read(c);
    c->in_process = false;
    if (!alive) {
      conn_peer_gone(c);
      return;
    }
    if (!conn_sync(c)) return; /* closed */
    HTTP_ASSERT(c->ssl != NULL);
    if (c->lingering || SSL_pending(c->ssl) == 0 || !conn_wants_read(c)) return;
  }
}

/* A TLS connection's event: the handshake first, then as http__conn_on_event, with OpenSSL
 * possibly waiting for the other direction than the one the bytes flow in. */
static void conn_tls_on_event(http_conn_t *c, uint32_t events) {
  if (c->tls_handshaking) {
    int r = http__tls_handshake(c);
    /* Half-closed before the handshake is done: no more handshake bytes will come. */
    if (r < 0 || (r == 0 && (events & EPOLLRDHUP))) {
      http__stat_inc(&c->loop->stat_tls_handshake_errors);
      conn_close(c);
      return;
    }
    if (r == 0) {
      if (!conn_update_events(c)) conn_close(c);
      return;
    }
    /* The handshake had its header_timeout_ms; the first request's header gets its own. */
    c->deadline_ms = c->loop->now_ms + c->loop->server->config.header_timeout_ms;
    events |= EPOLLIN; /* the first request may already be waiting */
  }
  bool readable = (events & EPOLLIN) || ((events & EPOLLOUT) && c->tls_read_wants_write);
  if (readable && conn_wants_read(c)) {
    conn_tls_read(c);
    return;
  }
  if (events & EPOLLRDHUP) { /* half-closed while we are not reading: treat as gone */
    conn_peer_gone(c);
    return;
  }
  if (events & (EPOLLOUT | EPOLLIN)) conn_resume(c); /* EPOLLIN: a write waiting for input */
}

void http__conn_on_event(http_conn_t *c, uint32_t events) {
  /* An event fetched in the same epoll batch as the one that closed this connection. */
  if (c->buried || c->dead || c->fd < 0) return;
  if (events & (EPOLLERR | EPOLLHUP)) {
    if (c->tls_handshaking) http__stat_inc(&c->loop->stat_tls_handshake_errors);
    c->tls_failed = c->tls; /* no close_notify into a dead socket */
    conn_peer_gone(c);
    return;
  }
  if (c->ssl != NULL) {
    conn_tls_on_event(c, events);
    return;
  }
  if ((events & EPOLLIN) && (c->events & EPOLLIN)) {
    c->in_process = true;
    bool alive = conn_read(c);
    c->in_process = false;
    if (!alive) conn_peer_gone(c);
    else if (c->loop->uring != NULL && buf_pending(&c->out) > 0) ready_push(c->loop, c);
    else conn_sync(c);
    return; /* ready_push: answered at once; conn_resume sends it with the loop's batch */
  }
  if (events & EPOLLRDHUP) { /* half-closed while we are not reading: treat as gone */
    conn_peer_gone(c);
    return;
  }
  if (events & EPOLLOUT) conn_resume(c);
}

/* With a ring, the readable connections' reads of one epoll batch go in one submit. */
void http__loop_pre_read(http_loop_t *loop, const struct epoll_event *events, int n) {
  HTTP_ASSERT(loop->uring != NULL && n <= HTTP_IO_BATCH_MAX);
  unsigned k = 0;
  for (int i = 0; i < n; i++) {
    void *tag = events[i].data.ptr;
    if (tag == &loop->listen_fd || tag == &loop->wake_fd) continue;
    http_conn_t *c = tag;
    uint32_t ev = events[i].events;
    if (c->buried || c->dead || c->fd < 0 || c->ssl != NULL || c->lingering || c->pre_read ||
        !(ev & EPOLLIN) || (ev & (EPOLLERR | EPOLLHUP)) || !(c->events & EPOLLIN) ||
        buf_pending(&c->in) > 0) {
      continue; /* the event reads, or not, as without a ring */
    }
    char *slot = loop->pre_buf + (size_t)k * HTTP_PRE_READ_BYTES;
    loop->io_ops[k] = (http_io_t){.fd = c->fd, .send = false, .buf = slot, .len = HTTP_PRE_READ_BYTES};
    loop->io_conns[k++] = c;
  }
  http__uring_run(loop, loop->io_ops, k);
  for (unsigned j = 0; j < k; j++) {
    http_conn_t *c = loop->io_conns[j];
    c->pre_read = true;
    c->pre_res = loop->io_ops[j].res;
    c->pre_data = loop->io_ops[j].buf;
  }
}

/* With a ring, the answers waiting on the ready list are sent in batches before the list
 * is run; conn_resume then finds them sent (or sends the rest, and meets any error). */
static void loop_pre_send(http_loop_t *loop) {
  http_conn_t *c = loop->ready_head;
  while (c != NULL) {
    unsigned k = 0;
    for (; c != NULL && k < HTTP_IO_BATCH_MAX; c = c->ready_next) {
      if (c->fd < 0 || c->dead || c->ssl != NULL || c->lingering || buf_pending(&c->out) == 0) {
        continue;
      }
      loop->io_ops[k] = (http_io_t){.fd = c->fd, .send = true, .buf = c->out.data + c->out.off,
                                    .len = buf_pending(&c->out)};
      loop->io_conns[k++] = c;
    }
    http__uring_run(loop, loop->io_ops, k);
    for (unsigned j = 0; j < k; j++) {
      http_conn_t *d = loop->io_conns[j];
      int res = loop->io_ops[j].res;
      if (res <= 0) continue; /* EAGAIN or an error: conn_flush meets it again */
      HTTP_ASSERT((size_t)res <= buf_pending(&d->out));
      d->out.off += (size_t)res;
      conn_sent_some(d);
    }
  }
}

void http__loop_run_ready(http_loop_t *loop) {
  if (loop->uring != NULL) loop_pre_send(loop);
  while (loop->ready_head != NULL) {
    http_conn_t *c = loop->ready_head;
    ready_remove(loop, c);
    conn_resume(c); /* may answer and queue others; the list drains to empty */
  }
}

void http__loop_sweep(http_loop_t *loop) {
  http_conn_t *next = NULL;
  for (http_conn_t *c = loop->conns; c != NULL; c = next) {
    next = c->next;
    if (c->deadline_ms == 0 || c->deadline_ms > loop->now_ms) continue;
    HTTP_ASSERT(!c->in_handler && !c->dead);
    if (!c->lingering) http__stat_inc(&loop->stat_timeouts);
    conn_close(c);
  }
}

/* Server stop: requests still with a handler are abandoned (see http.h). */
void http__loop_close_all(http_loop_t *loop) {
  while (loop->conns != NULL) conn_destroy(loop->conns);
  HTTP_ASSERT(loop->ready_head == NULL && loop->ready_tail == NULL);
  http__loop_bury(loop);
}

/* ---------------------------------------------------------------- public */

void http_respond(http_request_t *req, int status, const char *content_type,
                  const char *headers_extra, const char *body, size_t body_len) {
  HTTP_ASSERT(req != NULL);
  http_conn_t *c = (http_conn_t *)(void *)((char *)req - offsetof(http_conn_t, req));
  HTTP_ASSERT(c->in_handler);
  c->in_handler = false;
  if (c->dead) { /* the peer left while the handler worked: nothing to send */
    conn_destroy(c);
    return;
  }
  bool closing = !c->keep_alive || c->closing;
  if (!conn_append_response(c, status, content_type, headers_extra, body, body_len, closing)) {
    c->out.off = c->out.len = 0; /* over HTTP_OUT_BYTES_MAX or out of memory: drop the peer */
    closing = true;
  }
  if (c->req_buf.cap > HTTP_BUF_KEEP_BYTES_MAX) buf_free(&c->req_buf); /* after the copy */
  c->closing = closing;
  c->idle = true;
  c->deadline_ms = c->loop->now_ms + c->loop->server->config.idle_timeout_ms;
  if (!c->in_process) ready_push(c->loop, c);
}

const char *http_status_text(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Entity";
  case 428: return "Precondition Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 507: return "Insufficient Storage";
  default: return "Unknown";
  }
}
