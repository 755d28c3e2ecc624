/*
 * http_internal.h — private to src/http: the loop, server and connection structures shared by
 * http_server.c (threads, listeners, epoll loop, timers) and http_conn.c (one connection:
 * parsing with libhttp-parser, dispatch, responses, output buffering).
 *
 * http_tls.c holds the OpenSSL side (the server's SSL_CTX, one SSL per TLS connection); a
 * connection is TLS when conn->ssl != NULL, and every read/write branches once on that.
 *
 * Threads: a loop and its connections are touched only by the loop's thread, except
 * wake_pending/wake_fd (any thread), the stat_* counters (written by the loop's thread, read
 * by http_server_stats) and the server's connections_open/stopping atomics.
 */
#ifndef LEDGER_HTTP_INTERNAL_H
#define LEDGER_HTTP_INTERNAL_H

#include <arpa/inet.h>
#include <assert.h>
#include <http_parser.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "http.h"

/* Invariant checks stay on in every build (STYLE.md), so no NDEBUG-dependent assert. */
#define HTTP_ASSERT(cond)                                                                     \
  do {                                                                                        \
    if (__builtin_expect(!(cond), 0)) http__assert_fail(#cond, __FILE__, __LINE__);         \
  } while (0)
_Noreturn void http__assert_fail(const char *expr, const char *file, int line);

/* ---- limits (why beside each) ---- */
/* One read() per readiness event into the loop's shared buffer: large enough that a 2 MiB
 * body needs ~32 reads, small enough to stay in L2. Shared, so idle connections cost nothing. */
#define HTTP_READ_BYTES (64 * 1024)
/* Unparsed bytes a connection keeps while its parser waits (request in the handler or output
 * backlog). Above this we stop reading and let TCP flow control push back on the client. */
#define HTTP_IN_PENDING_BYTES_MAX (128 * 1024)
/* A client that does not read its responses is closed once unsent output would pass this. */
#define HTTP_OUT_BYTES_MAX (64u * 1024u * 1024u)
/* No new pipelined request is dispatched while this much output is unsent. */
#define HTTP_OUT_PAUSE_BYTES (1024 * 1024)
/* Buffers grown past this (large bodies/responses) are freed once empty, so a connection that
 * once carried 2 MiB does not keep it while idle. */
#define HTTP_BUF_KEEP_BYTES_MAX (64 * 1024)
#define HTTP_REQ_BUF_BYTES_INITIAL 1024 /* url + the four kept header values, typical request */
#define HTTP_OUT_BUF_BYTES_INITIAL 4096 /* headers + a typical JSON answer */
/* Bodies from this size are sent from the handler's buffer when nothing is queued before
 * them (http_conn.c, conn_send_direct); smaller ones are copied, which costs less than a
 * second iovec. */
#define HTTP_DIRECT_BODY_BYTES_MIN (16u * 1024u)
/* After an error answer (413...) the client may still be sending; closing with unread input
 * would reset the connection and could destroy the answer before it is read. So we shut down
 * our side and discard input for at most this long / this much before closing. */
#define HTTP_LINGER_MS 2000
#define HTTP_LINGER_BYTES_MAX (4 * 1024 * 1024)
#define HTTP_SWEEP_INTERVAL_MS 100      /* timeout granularity; the sweep is O(connections) */
#define HTTP_EVENTS_MAX 256             /* epoll events taken per wait */
/* Socket operations per io_uring submit (http_uring.c): one per epoll event, or ready
 * connections in chunks of this many. */
#define HTTP_IO_BATCH_MAX HTTP_EVENTS_MAX
/* A batched read's room per connection. A read that fills it is followed at once by a
 * plain read of up to HTTP_READ_BYTES (large bodies), as if it had been one read. */
#define HTTP_PRE_READ_BYTES (8 * 1024)
#define HTTP_ACCEPTS_PER_EVENT_MAX 64   /* bounded accept burst so one loop does not starve */
#define HTTP_HEADER_NAME_BYTES_MAX 16   /* longest kept header name ("idempotency-key") + 1 */
#define HTTP_HEADER_LINE_OVERHEAD_BYTES 4 /* ": " and CRLF, counted toward the header limit */
/* The largest plaintext one TLS record carries (RFC 8446 5.1). A TLS connection reads only
 * when it has at least this much room, so every SSL_read takes a whole record and OpenSSL
 * keeps no decrypted bytes that the level-triggered epoll could not tell us about. */
#define HTTP_TLS_RECORD_PLAIN_BYTES_MAX (16 * 1024)
/* SSL_reads per readiness event while OpenSSL still holds input (normally one suffices). */
#define HTTP_TLS_READS_PER_EVENT_MAX 4

static_assert(HTTP_PATH_BYTES_MAX < HTTP_HEADER_BYTES_MAX, "the target is part of the header");
static_assert(HTTP_OUT_PAUSE_BYTES < HTTP_OUT_BYTES_MAX, "pause before the hard limit");
static_assert(HTTP_READ_BYTES <= HTTP_IN_PENDING_BYTES_MAX, "a read's leftover must fit");
static_assert(HTTP_PRE_READ_BYTES <= HTTP_READ_BYTES, "a batched read is a short plain read");
static_assert(HTTP_TLS_RECORD_PLAIN_BYTES_MAX <= HTTP_READ_BYTES, "a record fits one read");
static_assert(2 * HTTP_TLS_RECORD_PLAIN_BYTES_MAX <= HTTP_IN_PENDING_BYTES_MAX,
              "a TLS connection still reads while some input waits");
static_assert(SSL3_RT_MAX_PLAIN_LENGTH == HTTP_TLS_RECORD_PLAIN_BYTES_MAX, "OpenSSL agrees");

enum {
  HTTP_HDR_AUTHORIZATION,
  HTTP_HDR_IDEMPOTENCY_KEY,
  HTTP_HDR_CONTENT_TYPE,
  HTTP_HDR_COOKIE,
  HTTP_HDR_EXPECT, /* read by the connection itself (100-continue), not handed on */
  HTTP_HDR_COUNT,
  HTTP_HDR_NONE = -1,
};

/* A byte buffer; [off, len) is the live part (off is only used by in/out buffers). */
typedef struct http_buf {
  char *data;
  size_t off;
  size_t len;
  size_t cap;
} http_buf_t;

typedef struct http_conn http_conn_t;
struct io_uring;

/* One socket operation of a batch (http_uring.c). */
typedef struct http_io {
  int fd;
  bool send; /* send(MSG_NOSIGNAL), else recv */
  void *buf;
  size_t len;
  int res; /* out: bytes, or -errno (-EAGAIN: the socket was not ready) */
} http_io_t;

/* Where the current message's pieces live in req_buf (offsets: req_buf may move). */
typedef struct http_msg {
  size_t url_len; /* the url starts at offset 0 */
  size_t path_off, path_len;
  size_t query_off, query_len;
  size_t body_off, body_len;
  size_t header_bytes;
  size_t hdr_off[HTTP_HDR_COUNT];
  size_t hdr_len[HTTP_HDR_COUNT];
  bool hdr_set[HTTP_HDR_COUNT];
  int hdr_cur; /* HTTP_HDR_* whose value is being appended, or HTTP_HDR_NONE */
  char hdr_name[HTTP_HEADER_NAME_BYTES_MAX];
  size_t hdr_name_len; /* > sizeof hdr_name - 1 means "too long to be one we keep" */
  bool last_was_value;
  bool expect_twice; /* a second Expect header: 417 (expect_check) */
  bool url_done;
  bool has_path, has_query;
} http_msg_t;

struct http_conn {
  http_request_t req; /* handed to the handler; http_respond finds the conn from it */
  http_loop_t *loop;
  http_conn_t *prev, *next;             /* loop->conns, every connection incl. dead ones */
  http_conn_t *ready_prev, *ready_next; /* loop ready list: answered, input to resume */
  http_conn_t *grave_next; /* loop->graveyard: closed, freed after the event batch */
  bool buried;
  bool in_ready;
  int fd;          /* -1 once dead (peer gone while the request was in the handler) */
  uint32_t events; /* current epoll interest */
  http_parser parser;
  http_buf_t in;      /* unparsed input kept while parsing waits */
  http_buf_t req_buf; /* url, kept header values and body of the current request */
  http_buf_t out;     /* unsent response bytes */
  http_msg_t msg;
  uint64_t deadline_ms; /* CLOCK_MONOTONIC ms; 0 = no timeout (request in the handler) */
  int err_status;       /* set by a parser callback before it fails the parse; -1 = no answer */
  bool msg_active;      /* a request has begun and is not complete */
  bool idle;            /* waiting for the next request after an answer (idle timeout) */
  bool keep_alive, http10, is_head;
  bool in_handler; /* the request is with the handler until http_respond */
  bool in_process; /* the parse loop is running for this conn (respond must not recurse) */
  bool closing;    /* close once output is flushed; read and parse no more */
  bool dead;       /* socket closed; free on http_respond */
  bool linger_after; /* an error was answered: linger before closing */
  bool lingering;    /* our side is shut down; input is read and discarded */
  size_t linger_bytes;
  /* A read done ahead in the loop's batch (http__loop_pre_read), consumed by the connection's
   * own event in the same epoll batch: pre_res bytes (or -errno) at pre_data. */
  bool pre_read;
  int pre_res;
  char *pre_data;
  /* TLS only (ssl != NULL); a plain connection never touches these. */
  SSL *ssl;                  /* freed when the socket closes (http__tls_conn_close) */
  bool tls;                  /* accepted by a TLS server; stays set after ssl is freed */
  bool tls_handshaking;      /* SSL_accept has not finished */
  bool tls_hs_wants_write;   /* the handshake waits for the socket to take output */
  bool tls_read_wants_write; /* SSL_read needs EPOLLOUT before it can go on */
  bool tls_write_wants_read; /* SSL_write needs EPOLLIN before it can go on */
  bool tls_failed;           /* a fatal TLS error: no close_notify may be sent */
  bool tls_shutdown_sent;    /* close_notify already sent (lingering) */
  char *tls_client_subject;  /* mTLS: malloc'd subject text, freed with the connection */
  char remote_addr[INET6_ADDRSTRLEN];
};

struct http_loop {
  http_server_t *server;
  unsigned index;        /* 0 .. threads-1, the slot in server->loops */
  unsigned thread_index; /* index + config.thread_index_base, what handlers see */
  int epoll_fd;
  int listen_fd;
  int wake_fd;
  pthread_t thread;
  bool thread_started;
  atomic_bool wake_pending;
  void (*wakeup_fn)(void *arg);
  void *wakeup_arg;
  http_conn_t *conns;
  http_conn_t *ready_head, *ready_tail;
  /* Connections closed while an epoll batch is dispatched: a later event of the same batch
   * may still point at them, so they are freed only when the batch is done. */
  http_conn_t *graveyard;
  uint64_t now_ms;
  uint64_t sweep_next_ms;
  char *read_buf; /* HTTP_READ_BYTES */
  /* io_uring batching (http_uring.c), set up on the loop's thread; NULL = plain system
   * calls (config.io_uring_off, or the kernel refused a ring). */
  struct io_uring *uring;
  http_io_t *io_ops;   /* HTTP_IO_BATCH_MAX */
  http_conn_t **io_conns; /* HTTP_IO_BATCH_MAX: the connection of each op */
  char *pre_buf;       /* HTTP_IO_BATCH_MAX x HTTP_PRE_READ_BYTES */
  _Atomic uint64_t stat_uring_reads, stat_uring_sends;
  atomic_bool uring_on; /* for http_server_stats: uring is set */
  _Atomic uint64_t stat_accepted, stat_rejected, stat_requests, stat_protocol_errors,
      stat_timeouts, stat_tls_handshake_errors;
};

/* Frees the connections closed during the last event batch. */
void http__loop_bury(http_loop_t *loop);

struct http_server {
  http_config_t config;
  char *host;
  struct sockaddr_storage addr;
  socklen_t addr_len;
  uint16_t port;
  atomic_uint connections_open;
  atomic_bool stopping;
  SSL_CTX *tls_ctx; /* NULL = plain HTTP; read-only once the threads run */
  http_loop_t *loops[HTTP_THREADS_MAX];
};

/* Counters have one writer (the loop's thread): a relaxed load+store is enough and costs no
 * locked instruction on the request path. */
static inline void http__stat_add(_Atomic uint64_t *counter, uint64_t n) {
  atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + n,
                        memory_order_relaxed);
}
static inline void http__stat_inc(_Atomic uint64_t *counter) { http__stat_add(counter, 1); }

/* http_conn.c, all on the loop's thread. */
void http__conn_accepted(http_loop_t *loop, int fd, const struct sockaddr_storage *peer);
/* With a ring: reads, in one batch, the connections that events[0..n) says are readable and
 * that would read directly (plain, not lingering, no input kept); their events then use the
 * bytes instead of a read. */
void http__loop_pre_read(http_loop_t *loop, const struct epoll_event *events, int n);
void http__conn_on_event(http_conn_t *conn, uint32_t events);
void http__loop_run_ready(http_loop_t *loop);
void http__loop_sweep(http_loop_t *loop);
void http__loop_close_all(http_loop_t *loop);

/* http_uring.c, on the loop's thread. open: 0, or a negative errno (no ring: the loop uses
 * plain system calls). run: submits ops[0..n) (n <= HTTP_IO_BATCH_MAX) in one call and
 * returns when every one has completed, each res set. */
int http__uring_open(http_loop_t *loop);
void http__uring_close(http_loop_t *loop);
void http__uring_run(http_loop_t *loop, http_io_t *ops, unsigned n);

/* http_tls.c. The context is built on the starting thread; the rest runs on the loop's
 * thread. The I/O calls follow read()/send(): > 0 bytes; 0 = the peer closed the TLS
 * session (read only); -1 with errno EAGAIN (retry on readiness; which readiness is recorded
 * in the tls_*_wants_* flags) or another errno (the connection is broken). They leave
 * OpenSSL's per-thread error queue empty, so the next connection's SSL_get_error is exact. */
__attribute__((warn_unused_result)) int http__tls_ctx_create(const http_config_t *config,
                                                             SSL_CTX **out);
/* Starts a connection's TLS session on c->fd (sets c->ssl). False when out of memory. */
__attribute__((warn_unused_result)) bool http__tls_conn_init(http_conn_t *c, SSL_CTX *ctx);
/* One handshake step: 1 done, 0 wait (see tls_hs_wants_write), -1 failed. */
int http__tls_handshake(http_conn_t *c);
ssize_t http__tls_read(http_conn_t *c, char *dst, size_t len);
ssize_t http__tls_write(http_conn_t *c, const char *src, size_t len);
/* Sends close_notify if the session is healthy and it was not sent yet (best effort, never
 * waits). */
void http__tls_shutdown(http_conn_t *c);
/* Best-effort close_notify, then frees c->ssl (sets it NULL). The socket stays open. */
void http__tls_conn_close(http_conn_t *c);

#endif
