/*
 * http_tls.c — the OpenSSL side of a TLS server: the server's SSL_CTX (protocol floor,
 * ciphers, certificate chain, key, optional client CA for mutual TLS) and, per connection,
 * the non-blocking handshake, reads, writes and close_notify.
 *
 * Why a file of its own: http_conn.c stays the protocol state machine and only branches once
 * per read/write on conn->ssl; everything that knows OpenSSL's calling rules is here.
 *
 * Invariants:
 *  - OpenSSL's error queue is per thread and SSL_get_error() reads it: every failing call
 *    here empties it before returning, so one connection's error never decides another's;
 *  - read_ahead stays off: OpenSSL takes from the socket only the record it is decoding, and
 *    http_conn.c reads with room for a whole record, so no plaintext waits inside OpenSSL
 *    where the level-triggered epoll could not see it;
 *  - after a fatal error (tls_failed) SSL_shutdown is never called (OpenSSL forbids it);
 *  - writes use SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER because conn->out may be reallocated
 *    between a WANT_WRITE and the retry, which always resends the same unsent bytes first.
 *
 * Threads: http__tls_ctx_create on the thread calling http_server_start; the rest on the
 * connection's loop thread. One SSL_CTX is shared read-only by the server's loops (OpenSSL 3
 * locks its internal shared state, e.g. the session cache).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "base/base.h"
#include "http_internal.h"

/* TLS 1.2 suites: forward secret AEAD only (Mozilla "intermediate", ECDHE part). TLS 1.3
 * keeps OpenSSL's default suites, which are all AEAD. */
#define HTTP_TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"
#define HTTP_TLS_SESSION_CONTEXT "ledgerd-http"

/* ---------------------------------------------------------------- context */

/* An encrypted key must not make OpenSSL prompt on the terminal: refuse any passphrase. */
static int tls_no_passphrase(char *buf, int size, int rwflag, void *userdata) {
  (void)buf, (void)size, (void)rwflag, (void)userdata;
  return 0;
}

static int tls_file_open_check(const char *what, const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    int err = errno;
    LOG_ERROR("http: TLS %s %s: %s", what, path, strerror(err));
    return -err;
  }
  fclose(f);
  return 0;
}

/* Logs OpenSSL's reason (its first queued error, the root cause) once, empties the queue. */
static int tls_refused(const char *what, const char *path) {
  unsigned long e = ERR_get_error();
  char reason[256] = "unknown OpenSSL error";
  if (e != 0) ERR_error_string_n(e, reason, sizeof reason);
  LOG_ERROR("http: TLS %s %s refused: %s", what, path, reason);
  ERR_clear_error();
  return -EBADMSG;
}

static int tls_ctx_set_protocol(SSL_CTX *ctx) {
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) return -EINVAL;
  /* Renegotiation: a client-driven CPU sink and a source of attacks; HTTP/1.1 needs none.
   * Compression: CRIME. Both are already off in OpenSSL 3 builds; say so explicitly. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_set_cipher_list(ctx, HTTP_TLS12_CIPHERS) != 1) return -EINVAL;
  /* PARTIAL_WRITE: SSL_write returns per record, like send(). RELEASE_BUFFERS: an idle
   * keep-alive connection keeps no 34 KiB of record buffers (the http module's rule that
   * idle connections cost nothing). */
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(ctx, 0);
  SSL_CTX_set_default_passwd_cb(ctx, tls_no_passphrase);
  /* Needed for session resumption when client certificates are verified; harmless else. */
  if (SSL_CTX_set_session_id_context(ctx, (const unsigned char *)HTTP_TLS_SESSION_CONTEXT,
                                     sizeof HTTP_TLS_SESSION_CONTEXT - 1) != 1) {
    return -EINVAL;
  }
  return 0;
}

static int tls_ctx_load(SSL_CTX *ctx, const http_config_t *config) {
  if (SSL_CTX_use_certificate_chain_file(ctx, config->tls_cert_file) != 1) {
    return tls_refused("certificate file", config->tls_cert_file);
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, config->tls_key_file, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return tls_refused("key file", config->tls_key_file);
  }
  const char *ca = config->tls_client_ca_file;
  if (ca == NULL) return 0;
  if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) return tls_refused("client CA file", ca);
  /* The CA names sent in CertificateRequest, so a client picks the right certificate. */
  STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
  if (names == NULL) return tls_refused("client CA file", ca);
  SSL_CTX_set_client_CA_list(ctx, names); /* takes ownership */
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  return 0;
}

int http__tls_ctx_create(const http_config_t *config, SSL_CTX **out) {
  HTTP_ASSERT(config != NULL && out != NULL);
  HTTP_ASSERT(config->tls_cert_file != NULL && config->tls_key_file != NULL);
  *out = NULL;
  int err = tls_file_open_check("certificate file", config->tls_cert_file);
  if (err == 0) err = tls_file_open_check("key file", config->tls_key_file);
  if (err == 0 && config->tls_client_ca_file != NULL) {
    err = tls_file_open_check("client CA file", config->tls_client_ca_file);
  }
  if (err != 0) return err;
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    ERR_clear_error();
    return -ENOMEM;
  }
  err = tls_ctx_set_protocol(ctx);
  if (err == 0) err = tls_ctx_load(ctx, config);
  ERR_clear_error();
  if (err != 0) {
    SSL_CTX_free(ctx);
    return err;
  }
  *out = ctx;
  return 0;
}

/* ---------------------------------------------------------------- connections */

bool http__tls_conn_init(http_conn_t *c, SSL_CTX *ctx) {
  HTTP_ASSERT(c->ssl == NULL && c->fd >= 0 && ctx != NULL);
  c->tls = true;
  c->ssl = SSL_new(ctx);
  if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
    SSL_free(c->ssl); /* NULL-safe */
    c->ssl = NULL;
    ERR_clear_error();
    return false;
  }
  SSL_set_accept_state(c->ssl);
  c->tls_handshaking = true;
  return true;
}

/* mTLS: keeps the verified client certificate's subject for the requests. False when it
 * cannot (unverified, or out of memory): the handshake then counts as failed. */
static bool tls_keep_client_subject(http_conn_t *c) {
  X509 *peer = SSL_get0_peer_certificate(c->ssl);
  if (peer == NULL) return true; /* no client CA configured: nothing was asked */
  if (SSL_get_verify_result(c->ssl) != X509_V_OK) return false;
  BIO *bio = BIO_new(BIO_s_mem());
  if (bio == NULL) return false;
  bool ok = false;
  /* RFC 2253 escaping keeps the text one printable line whatever the certificate holds. */
  if (X509_NAME_print_ex(bio, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253) >= 0) {
    char *text = NULL;
    long len = BIO_get_mem_data(bio, &text);
    if (len >= 0 && (c->tls_client_subject = malloc((size_t)len + 1)) != NULL) {
      if (len > 0) memcpy(c->tls_client_subject, text, (size_t)len);
      c->tls_client_subject[len] = '\0';
      ok = true;
    }
  }
  BIO_free(bio);
  return ok;
}

int http__tls_handshake(http_conn_t *c) {
  HTTP_ASSERT(c->ssl != NULL && c->tls_handshaking);
  int r = SSL_do_handshake(c->ssl);
  if (r == 1) {
    c->tls_handshaking = false;
    c->tls_hs_wants_write = false;
    if (tls_keep_client_subject(c)) return 1;
    ERR_clear_error();
    c->tls_failed = true;
    return -1;
  }
  switch (SSL_get_error(c->ssl, r)) {
  case SSL_ERROR_WANT_READ: c->tls_hs_wants_write = false; return 0;
  case SSL_ERROR_WANT_WRITE: c->tls_hs_wants_write = true; return 0;
  default: /* not TLS (plain HTTP), an old version, a bad client certificate, EOF... */
    ERR_clear_error();
    c->tls_failed = true;
    return -1;
  }
}

ssize_t http__tls_read(http_conn_t *c, char *dst, size_t len) {
  HTTP_ASSERT(c->ssl != NULL && !c->tls_handshaking);
  HTTP_ASSERT(len >= HTTP_TLS_RECORD_PLAIN_BYTES_MAX); /* see the read_ahead invariant */
  size_t n = 0;
  if (SSL_read_ex(c->ssl, dst, len, &n) == 1) {
    c->tls_read_wants_write = false;
    return (ssize_t)n;
  }
  switch (SSL_get_error(c->ssl, 0)) {
  case SSL_ERROR_WANT_READ: c->tls_read_wants_write = false; errno = EAGAIN; return -1;
  case SSL_ERROR_WANT_WRITE: c->tls_read_wants_write = true; errno = EAGAIN; return -1;
  case SSL_ERROR_ZERO_RETURN: return 0; /* close_notify: the peer is done */
  default:
    ERR_clear_error();
    c->tls_failed = true;
    errno = ECONNRESET;
    return -1;
  }
}

ssize_t http__tls_write(http_conn_t *c, const char *src, size_t len) {
  HTTP_ASSERT(c->ssl != NULL && !c->tls_handshaking && len > 0);
  size_t n = 0;
  if (SSL_write_ex(c->ssl, src, len, &n) == 1) {
    c->tls_write_wants_read = false;
    return (ssize_t)n;
  }
  switch (SSL_get_error(c->ssl, 0)) {
  case SSL_ERROR_WANT_WRITE: c->tls_write_wants_read = false; errno = EAGAIN; return -1;
  case SSL_ERROR_WANT_READ: c->tls_write_wants_read = true; errno = EAGAIN; return -1;
  default:
    ERR_clear_error();
    c->tls_failed = true;
    errno = EPIPE;
    return -1;
  }
}

void http__tls_shutdown(http_conn_t *c) {
  if (c->ssl == NULL || c->tls_failed || c->tls_handshaking || c->tls_shutdown_sent) return;
  c->tls_shutdown_sent = true;
  (void)SSL_shutdown(c->ssl); /* one non-blocking try: we never wait for the peer's reply */
  ERR_clear_error();
}

void http__tls_conn_close(http_conn_t *c) {
  HTTP_ASSERT(c->ssl != NULL);
  http__tls_shutdown(c);
  SSL_free(c->ssl);
  c->ssl = NULL;
}
