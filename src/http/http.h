/*
 * http.h — ledgerd's HTTP/1.1 server: listeners, connections, parsing, protocol only.
 *
 * Why: the API layer must never see the wire format (H2O habit). This module turns bytes into
 * http_request_t objects, hands each to one handler, and turns the handler's answer back into
 * bytes. Parsing is done by libhttp-parser (Debian libhttp-parser-dev), never by hand.
 *
 * Threads: http_server_start() spawns `threads` net threads. Each owns one epoll loop, its own
 * SO_REUSEPORT listening socket and the connections it accepted. A request, its connection and
 * its loop belong to one thread; every function below that takes a request or a loop must be
 * called on that loop's thread, except http_loop_wake(), which any thread may call.
 *
 * Deferred answers: a handler may answer at once (http_respond inside the handler) or later,
 * from a callback that runs on the same loop (see http_loop_set_wakeup). Until
 * http_respond() is called the request stays valid, even if the peer has gone away: the
 * connection is then closed and the request freed only when the handler answers. A connection
 * has at most one request in a handler at a time; pipelined requests wait, parsed in order,
 * and their responses leave in order.
 *
 * Limits (all enforced here, answered without calling the handler):
 *   body larger than body_bytes_max           -> 413, connection closed
 *   declared body the route refuses (config.body_fits) -> 413, connection closed
 *   headers larger than HTTP_HEADER_BYTES_MAX -> 431, connection closed
 *   malformed request                         -> 400, connection closed
 *   Expect other than 100-continue, or given twice (HTTP/1.1) -> 417, connection closed
 *   (Expect: 100-continue gets an interim 100 before a body, once the head passed the above,
 *   so a body either limit refuses by its declared length is never sent)
 *   no complete header within header_timeout_ms, or idle keep-alive longer than
 *   idle_timeout_ms                           -> connection closed
 *   more than connections_max open connections (all threads) -> new ones accepted and closed
 *
 * TLS (optional, OpenSSL 3): a server whose config names tls_cert_file and tls_key_file speaks
 * TLS on every connection it accepts; it never serves plain HTTP. A program that wants both
 * starts two servers (see thread_index_base). TLS 1.2 is the minimum; compression and
 * renegotiation are off. The handshake must finish within header_timeout_ms (and the first
 * request's header then gets header_timeout_ms of its own); a failed handshake (plain HTTP on
 * the TLS port, an old protocol version, a missing or untrusted client certificate) closes the
 * connection without an answer and is counted in http_stats_t.tls_handshake_errors_total.
 * With tls_client_ca_file the server requires a client certificate that verifies against that
 * CA (mutual TLS); the handler sees its subject in http_request_t.tls_client_subject.
 * Net threads of a TLS server block SIGPIPE (OpenSSL writes with write(), not MSG_NOSIGNAL).
 */
#ifndef LEDGER_HTTP_H
#define LEDGER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_HEADER_BYTES_MAX (16 * 1024)  /* request line + headers; 431 above this */
#define HTTP_PATH_BYTES_MAX 2048           /* request target (path + query); 414 above */
#define HTTP_THREADS_MAX 64

typedef enum {
  HTTP_METHOD_OTHER = 0,
  HTTP_METHOD_GET,
  HTTP_METHOD_HEAD,
  HTTP_METHOD_POST,
  HTTP_METHOD_PUT,
  HTTP_METHOD_DELETE,
  HTTP_METHOD_PATCH,
} http_method_t;

typedef struct http_loop http_loop_t;
typedef struct http_server http_server_t;

/* One parsed request. Every pointer is owned by the server and valid until http_respond()
 * returns. Strings are NUL-terminated; lengths exclude the NUL. */
typedef struct http_request {
  http_method_t method;
  const char *path; /* decoded? no: raw path without the query, e.g. "/v1/accounts/12" */
  size_t path_len;
  const char *query; /* raw query string without '?', "" when none */
  size_t query_len;
  const char *body; /* "" when none; may contain NUL bytes, use body_len */
  size_t body_len;
  /* The headers the API layer reads; NULL when absent. Names matched case-insensitively. */
  const char *authorization;
  const char *idempotency_key;
  const char *content_type;
  const char *cookie;
  const char *remote_addr; /* textual peer address, e.g. "127.0.0.1" */
  uint64_t received_ns;    /* CLOCK_MONOTONIC when the request became complete */
  http_loop_t *loop;       /* the loop (thread) this request belongs to */
  unsigned thread_index;   /* thread_index_base .. thread_index_base + threads - 1 */
  void *user;              /* free for the handler's use */
  bool tls;                /* the request came over TLS (the server has tls_cert_file) */
  /* mTLS only (tls_client_ca_file set): the verified client certificate's subject as one
   * line of RFC 2253 text ("CN=client-1,O=Example"); NULL otherwise. Owned by the server,
   * valid until http_respond() returns like every other pointer here. */
  const char *tls_client_subject;
} http_request_t;

/* Called on the loop's thread for each complete request. The handler must call http_respond
 * exactly once, now or later on the same thread. */
typedef void (*http_handler_fn)(http_request_t *req, void *ctx);

typedef struct http_config {
  const char *host; /* "127.0.0.1" */
  uint16_t port;    /* 0 = pick a free port (see http_server_port) */
  unsigned threads; /* net threads, 1..HTTP_THREADS_MAX */
  size_t body_bytes_max;
  unsigned connections_max;
  unsigned header_timeout_ms;
  unsigned idle_timeout_ms;
  http_handler_fn handler;
  void *handler_ctx;
  /* NULL, or the routes' own body limits: called on the net thread once a request's head is
   * complete, when it declares a Content-Length from 1 to body_bytes_max, with the method and
   * the raw path (NUL-terminated); false = the route takes no body that large: 413 before
   * the body is read (and before any 100 Continue), the connection closed. Must be cheap
   * (every request with a body) and must not block. A chunked body declares no length: its
   * route checks it once it is read (body_bytes_max bounds it here). */
  bool (*body_fits)(http_method_t method, const char *path, size_t path_len, uint64_t length,
                    void *ctx);
  /* Called once on each net thread before it serves, e.g. to register a wakeup. May be NULL. */
  void (*on_thread_start)(http_loop_t *loop, unsigned thread_index, void *ctx);
  /* The thread_index given to on_thread_start and in requests is thread_index_base + i for
   * net thread i, so two servers (plain and TLS) can share one handler whose per-thread
   * arrays have HTTP_THREADS_MAX entries: give the second server the first one's `threads`.
   * thread_index_base + threads must not exceed HTTP_THREADS_MAX. 0 for a lone server. */
  unsigned thread_index_base;
  /* TLS: PEM files, read once by http_server_start. Both set = every connection is TLS; both
   * NULL = plain HTTP; one without the other is -EINVAL. tls_cert_file may hold the chain
   * (leaf first). The strings need only live during http_server_start. */
  const char *tls_cert_file;
  const char *tls_key_file;
  /* NULL, or a PEM file of CA certificates: then a client certificate is required and must
   * verify against them, else the handshake fails (mutual TLS). Needs tls_cert_file. */
  const char *tls_client_ca_file;
  /* true: plain read/send system calls only. false (the default): each net thread batches
   * its socket reads and sends through an io_uring (one system call per batch), falling
   * back to plain calls by itself if the kernel refuses a ring (see http_stats_t). A TLS
   * server never batches (OpenSSL does its own reads and writes). */
  bool io_uring_off;
} http_config_t;

/* Creates the sockets and starts the threads. Returns 0 or a negative errno value:
 *   -EINVAL    bad config (limits, thread_index_base + threads > HTTP_THREADS_MAX, TLS
 *              cert without key or the reverse, client CA without cert), or a host that
 *              does not resolve;
 *   -ENOENT, -EACCES...  a TLS file cannot be opened (the errno of fopen);
 *   -EBADMSG   a TLS file was read but OpenSSL refused it (not PEM, key does not match the
 *              certificate, no CA in the client CA file); OpenSSL's reason is logged once
 *              to stderr;
 *   -ENOMEM, or a socket/bind/listen/epoll/thread errno. Nothing is left running on error. */
__attribute__((warn_unused_result)) int http_server_start(const http_config_t *config,
                                                          http_server_t **out);
/* The bound port (useful when config.port was 0). */
uint16_t http_server_port(const http_server_t *server);
/* Stops accepting, closes every connection, joins the threads, frees everything. Requests
 * still waiting for http_respond are abandoned: the caller must first make sure no
 * deferred answer is still coming (ledgerd stops the engine after this returns no more
 * completions). Safe to call from any thread but a net thread. */
void http_server_stop(http_server_t *server);

/* Sends the response. headers_extra is NULL or CRLF-terminated header lines
 * ("Retry-After: 1\r\n"). Content-Length, Date-free minimal headers and keep-alive handling
 * are added here. body is copied; the caller keeps ownership. After this returns `req` must
 * not be touched. */
void http_respond(http_request_t *req, int status, const char *content_type,
                  const char *headers_extra, const char *body, size_t body_len);

/* Registers a callback run on the loop's thread whenever http_loop_wake(loop) was called
 * since the last run (coalesced, eventfd-backed). One per loop; call from on_thread_start. */
void http_loop_set_wakeup(http_loop_t *loop, void (*fn)(void *arg), void *arg);
/* Any thread: schedules the loop's wakeup callback. Async-signal-safe. */
void http_loop_wake(http_loop_t *loop);

/* Status reason phrase ("Not Found"); never NULL. */
const char *http_status_text(int status);

/* Counters for /metrics, summed over threads (relaxed atomics). */
typedef struct http_stats {
  uint64_t connections_open;
  uint64_t connections_accepted_total;
  uint64_t connections_rejected_total; /* over connections_max */
  uint64_t requests_total;
  uint64_t protocol_errors_total; /* 400/413/431/414 answered here */
  uint64_t timeouts_total;
  uint64_t tls_handshake_errors_total; /* handshakes that failed (always 0 on a plain server) */
  unsigned uring_loops;      /* net threads batching through an io_uring */
  uint64_t uring_reads_total; /* socket reads done through the rings */
  uint64_t uring_sends_total; /* socket sends done through the rings */
} http_stats_t;
void http_server_stats(const http_server_t *server, http_stats_t *out);

#endif
