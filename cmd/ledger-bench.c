/*
 * ledger-bench.c — ledgerd's HTTP load generator.
 *
 * Why it exists: the figures in docs/performance.md must come from a command anyone can rerun,
 * and a general tool (wrk) can neither create the accounts a transfer needs nor tell a posted
 * transfer from a rejected one inside a batch. This tool does both, cheaply enough that the
 * client is not the bottleneck on a two-core machine.
 *
 * Shape: one thread, one epoll loop, N keep-alive connections to HOST:PORT. Every request of a
 * run is built before the run starts (a ring of complete HTTP request byte strings), so the
 * hot loop only reads and writes (through io_uring, one submit per epoll batch for the reads
 * and one for the sends, or plain read/writev), finds the status line and Content-Length of each response,
 * and records the latency (request handed to the kernel -> last byte of the response) in a
 * log-linear histogram. No allocation happens during a run.
 * With -T/--token-file every request (account setup included) carries
 * "Authorization: Bearer TOKEN", written into the prebuilt bytes: auth costs the client nothing
 * per request beyond those header bytes.
 *
 * Closed loop (default): each connection keeps `depth` requests in flight (-P, pipelining).
 * Open loop (-r RATE): requests are scheduled at fixed intervals over all connections and the
 * latency is measured from the scheduled time, so a stalled server is charged for the requests
 * it made us hold back (no coordinated omission).
 *
 * Setup (-S N) creates N accounts one POST /v1/accounts at a time and funds them with batch
 * transfers from cash:USD (8190 per request), so 1 M accounts cost ~122 funding requests.
 * Every summary line ends with the client's own CPU use during the run (cpu_s, cpu_util from
 * getrusage): a figure is only the server's if the client was not the one at 100 %.
 *
 * Invariants: per connection, in-flight requests <= depth <= BENCH_DEPTH_MAX; responses arrive
 * in request order (HTTP/1.1), so the oldest start time belongs to the next response.
 * Threads: single-threaded; nothing here is shared.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "base/uring_batch.h"

/* ---- limits ---- */
#define BENCH_CONNS_MAX 4096u         /* one fd each; far above what a 2-core box can use */
#define BENCH_DEPTH_MAX 64u           /* pipelined requests per connection */
#define BENCH_RBUF_BYTES (64u * 1024u) /* per connection; headers + bodies we must parse whole */
#define BENCH_REQ_BYTES_MAX (2u * 1024u * 1024u) /* = the server's batch body limit */
#define BENCH_RING_SINGLE_DEFAULT 16384u /* prebuilt single-transfer requests */
#define BENCH_RING_BATCH_DEFAULT 8u      /* prebuilt batch requests (~0.8 MB each at 8190) */
#define BENCH_DRAIN_TIMEOUT_NS (30ull * 1000000000ull) /* wait for stragglers after -d */
#define BENCH_ERR_SAMPLES_MAX 5u      /* unexpected responses echoed to stderr */
#define BENCH_EVENTS_MAX 256
#define BENCH_BATCH_MAX 8190u         /* API.md */
#define BENCH_DEPOSIT_AMOUNT "1000000000.00"
#define BENCH_CASH_USD_ID 1u            /* cash:USD, the system account funding setup */

/* ---- histogram: log-linear, 32 sub-buckets per power of two (<= 3.1% error) ---- */
#define LAT_HIST_SUB_BITS 5u
#define LAT_HIST_SUB (1u << LAT_HIST_SUB_BITS)
#define LAT_HIST_BUCKETS (64u * LAT_HIST_SUB)

typedef struct lat_hist {
  uint64_t counts[LAT_HIST_BUCKETS];
  uint64_t total;
  uint64_t max_ns;
} lat_hist_t;

static unsigned lat_hist_index(uint64_t v) {
  if (v < LAT_HIST_SUB) return (unsigned)v;
  unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= LAT_HIST_SUB_BITS */
  unsigned sub = (unsigned)(v >> (e - LAT_HIST_SUB_BITS)) & (LAT_HIST_SUB - 1u);
  unsigned idx = (e - LAT_HIST_SUB_BITS + 1u) * LAT_HIST_SUB + sub;
  LEDGER_ASSERT(idx < LAT_HIST_BUCKETS);
  return idx;
}

/* Midpoint of the bucket's range: the value reported for every sample in it. */
static uint64_t lat_hist_value(unsigned idx) {
  if (idx < LAT_HIST_SUB) return idx;
  unsigned e = idx / LAT_HIST_SUB + LAT_HIST_SUB_BITS - 1u;
  uint64_t sub = idx % LAT_HIST_SUB;
  uint64_t width = 1ull << (e - LAT_HIST_SUB_BITS);
  uint64_t low = (1ull << e) + sub * width;
  return low + width / 2u;
}

static void lat_hist_record(lat_hist_t *h, uint64_t v) {
  h->counts[lat_hist_index(v)]++;
  h->total++;
  if (v > h->max_ns) h->max_ns = v;
}

/* per_100k: 50000 = p50, 99000 = p99, 99900 = p99.9 (integers: no float rounding). */
static uint64_t lat_hist_quantile(const lat_hist_t *h, uint64_t per_100k) {
  if (h->total == 0) return 0;
  uint64_t rank = (h->total * per_100k + 99999u) / 100000u; /* ceil, 1-based */
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < LAT_HIST_BUCKETS; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t v = lat_hist_value(i);
      return v < h->max_ns ? v : h->max_ns;
    }
  }
  return h->max_ns;
}

/* ---- deterministic random numbers (xorshift64*): fixed seed -> same requests every run ---- */
static uint64_t bench_rng_state = 42;
static uint64_t bench_rng_next(void) {
  uint64_t x = bench_rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  bench_rng_state = x;
  return x * 2685821657736338717ull;
}
static uint64_t bench_rng_below(uint64_t n) {
  LEDGER_ASSERT(n > 0);
  return bench_rng_next() % n;
}

/* ---- request sets: prebuilt HTTP requests in one arena ---- */
typedef enum { MODE_NONE, MODE_HEALTH, MODE_TRANSFER, MODE_BATCH, MODE_HOT } mode_t_;

typedef struct reqset {
  char *arena;
  size_t arena_len, arena_cap;
  size_t *offs;
  uint32_t *lens;
  size_t count, cap;
  int status_expected;
  uint32_t transfers_per_req; /* 0 for non-transfer routes */
  bool count_posted;          /* batch: count "posted" results in each body */
  bool bench_capture_id;            /* account creation: read "id" from each body */
} reqset_t;

static void *bench_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (q == NULL) {
    fprintf(stderr, "ledger-bench: out of memory (%zu bytes)\n", n);
    exit(2);
  }
  return q;
}

static void reqset_init(reqset_t *rs, size_t cap, int status_expected) {
  memset(rs, 0, sizeof *rs);
  rs->cap = cap;
  rs->offs = bench_xrealloc(NULL, cap * sizeof *rs->offs);
  rs->lens = bench_xrealloc(NULL, cap * sizeof *rs->lens);
  rs->status_expected = status_expected;
}

static void reqset_free(reqset_t *rs) {
  free(rs->arena);
  free(rs->offs);
  free(rs->lens);
  memset(rs, 0, sizeof *rs);
}

static char bench_host_header[128];
/* "Authorization: Bearer TOKEN\r\n" (-T / --token-file), or "": part of every prebuilt request. */
#define BENCH_TOKEN_MAX 512u
static char bench_auth_header[BENCH_TOKEN_MAX + 32u];

/* Appends one request (method, path, optional JSON body) to the set. */
static void reqset_add(reqset_t *rs, const char *method, const char *path, const char *body,
                       size_t body_len) {
  LEDGER_ASSERT(rs->count < rs->cap);
  char head[1024];
  int head_len;
  if (body != NULL) {
    head_len = snprintf(head, sizeof head,
                        "%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n\r\n",
                        method, path, bench_host_header, bench_auth_header, body_len);
  } else {
    head_len = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", method, path,
                        bench_host_header, bench_auth_header);
    body_len = 0;
  }
  LEDGER_ASSERT(head_len > 0 && (size_t)head_len < sizeof head);
  size_t need = (size_t)head_len + body_len;
  LEDGER_ASSERT(need <= UINT32_MAX);
  if (rs->arena_len + need > rs->arena_cap) {
    size_t cap = rs->arena_cap ? rs->arena_cap : 1u << 20;
    while (cap < rs->arena_len + need) cap *= 2u;
    rs->arena = bench_xrealloc(rs->arena, cap);
    rs->arena_cap = cap;
  }
  memcpy(rs->arena + rs->arena_len, head, (size_t)head_len);
  if (body_len) memcpy(rs->arena + rs->arena_len + head_len, body, body_len);
  rs->offs[rs->count] = rs->arena_len;
  rs->lens[rs->count] = (uint32_t)need;
  rs->count++;
  rs->arena_len += need;
}

/* ---- connections ---- */
typedef struct conn {
  int fd;
  bool alive;
  /* requests queued but not fully written: indices into the reqset, oldest first */
  uint32_t sq[BENCH_DEPTH_MAX];
  unsigned sq_head, sq_n;
  size_t sq_off; /* bytes of sq[sq_head] already written */
  /* start time of every request in flight, oldest first (includes the unsent ones) */
  uint64_t start_ns[BENCH_DEPTH_MAX];
  unsigned if_head, if_n;
  /* reading */
  char *rbuf;
  size_t rlen, rpos;
  bool in_body;
  int status;
  size_t body_left;
  unsigned posted_match; /* bytes of "\"posted\"" matched so far, across reads */
  uint64_t posted;       /* "posted" seen in the current body */
} conn_t;

typedef struct stats {
  uint64_t issued, completed;
  uint64_t s2xx, s4xx, s5xx, s_other;
  uint64_t unexpected;   /* status != the one the route should answer */
  uint64_t conn_errors;  /* connection closed/reset or unparsable response */
  uint64_t lost;         /* in flight when a connection died or the drain timed out */
  uint64_t transfers_ok; /* transfers the server says it posted */
  uint64_t backlog_max;  /* open loop: most requests due but not yet sent */
  uint64_t t_start_ns, t_last_ns;
  lat_hist_t hist;
} stats_t;

typedef struct bench {
  conn_t conns[BENCH_CONNS_MAX];
  unsigned nconns;
  unsigned alive;
  unsigned depth;
  int ep;
  /* current run */
  const reqset_t *rs;
  uint64_t requests_max; /* 0 = no count bound */
  uint64_t deadline_ns;  /* 0 = no time bound */
  uint64_t interval_ns;  /* open loop: 0 = closed loop */
  uint64_t next_sched_ns;
  uint64_t inflight;
  unsigned err_samples;
  unsigned rr;  /* open loop: round-robin cursor */
  bool stalled; /* open loop: requests are due but every connection is full */
  uint64_t *ids_out; /* bench_capture_id: ids in completion order */
  size_t ids_n;
  stats_t st;
  /* bench_ring_open: the reads and sends of one epoll batch go through it in one submit each
   * (bench_batch_events); NULL: plain read/writev per connection. */
  struct io_uring *ring;
} bench_t;

static volatile sig_atomic_t interrupted;
static void bench_on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}


static void bench_fail_conn(bench_t *b, conn_t *c, const char *why, int err) {
  if (!c->alive) return;
  if (b->st.conn_errors < BENCH_ERR_SAMPLES_MAX) {
    fprintf(stderr, "ledger-bench: connection %ld: %s%s%s (%u requests in flight)\n",
            (long)(c - b->conns), why, err ? ": " : "", err ? strerror(err) : "", c->if_n);
  }
  b->st.conn_errors++;
  b->st.lost += c->if_n;
  LEDGER_ASSERT(b->inflight >= c->if_n);
  b->inflight -= c->if_n;
  c->if_n = 0;
  c->sq_n = 0;
  (void)epoll_ctl(b->ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  c->alive = false;
  LEDGER_ASSERT(b->alive > 0);
  b->alive--;
}

static int conn_open(bench_t *b, conn_t *c, unsigned index, const struct sockaddr_in *addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP,
                           .data.u32 = index};
  if (epoll_ctl(b->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  memset(c, 0, sizeof *c);
  c->fd = fd;
  c->alive = true;
  c->rbuf = bench_xrealloc(NULL, BENCH_RBUF_BYTES);
  return 0;
}

/* Takes n bytes written off the front of the connection's send queue. */
static void conn_sent(const reqset_t *rs, conn_t *c, size_t n) {
  while (n > 0) {
    LEDGER_ASSERT(c->sq_n > 0);
    uint32_t idx = c->sq[c->sq_head];
    size_t rem = rs->lens[idx] - c->sq_off;
    if (n >= rem) {
      n -= rem;
      c->sq_off = 0;
      c->sq_head = (c->sq_head + 1u) % BENCH_DEPTH_MAX;
      c->sq_n--;
    } else {
      c->sq_off += n;
      n = 0;
    }
  }
}

/* The connection's send queue as iovecs (c->sq_n of them), the first past what is written. */
static void conn_iov(const reqset_t *rs, const conn_t *c, struct iovec *iov) {
  for (unsigned i = 0; i < c->sq_n; i++) {
    uint32_t idx = c->sq[(c->sq_head + i) % BENCH_DEPTH_MAX];
    size_t skip = i == 0 ? c->sq_off : 0;
    iov[i].iov_base = rs->arena + rs->offs[idx] + skip;
    iov[i].iov_len = rs->lens[idx] - skip;
  }
}

/* Writes as much of the connection's send queue as the socket takes. 0 or -errno. */
static int conn_flush(bench_t *b, conn_t *c) {
  const reqset_t *rs = b->rs;
  while (c->sq_n > 0) {
    struct iovec iov[BENCH_DEPTH_MAX];
    conn_iov(rs, c, iov);
    ssize_t w = writev(c->fd, iov, (int)c->sq_n);
    if (w < 0) {
      if (errno == EAGAIN) return 0; /* EPOLLOUT (edge) tells us when to go on */
      if (errno == EINTR) continue;
      return -errno;
    }
    conn_sent(rs, c, (size_t)w);
  }
  return 0;
}

static bool bench_may_issue(const bench_t *b, uint64_t now) {
  if (interrupted) return false;
  if (b->requests_max && b->st.issued >= b->requests_max) return false;
  if (b->deadline_ns && now >= b->deadline_ns) return false;
  return true;
}

/* Queues the next request of the set on c; start_ns is when its latency clock starts. */
static void conn_enqueue(bench_t *b, conn_t *c, uint64_t start_ns) {
  LEDGER_ASSERT(c->alive && c->if_n < b->depth && c->sq_n < b->depth);
  uint32_t idx = (uint32_t)(b->st.issued % b->rs->count);
  c->sq[(c->sq_head + c->sq_n) % BENCH_DEPTH_MAX] = idx;
  c->sq_n++;
  c->start_ns[(c->if_head + c->if_n) % BENCH_DEPTH_MAX] = start_ns;
  c->if_n++;
  b->st.issued++;
  b->inflight++;
}

static void bench_on_response(bench_t *b, conn_t *c, uint64_t now) {
  LEDGER_ASSERT(c->if_n > 0 && b->inflight > 0);
  uint64_t start = c->start_ns[c->if_head];
  c->if_head = (c->if_head + 1u) % BENCH_DEPTH_MAX;
  c->if_n--;
  b->inflight--;
  lat_hist_record(&b->st.hist, now > start ? now - start : 0);
  b->st.completed++;
  b->st.t_last_ns = now;
  int s = c->status;
  if (s >= 200 && s < 300) b->st.s2xx++;
  else if (s >= 400 && s < 500) b->st.s4xx++;
  else if (s >= 500 && s < 600) b->st.s5xx++;
  else b->st.s_other++;
  if (s == b->rs->status_expected) {
    b->st.transfers_ok += b->rs->count_posted ? c->posted : b->rs->transfers_per_req;
  } else {
    b->st.unexpected++;
  }
}

/* Streams the body bytes through a matcher for the JSON string "posted" (batch results). */
static void bench_scan_posted(conn_t *c, const char *p, size_t n) {
  static const char pat[] = "\"posted\"";
  const unsigned pat_len = sizeof pat - 1u;
  unsigned m = c->posted_match;
  for (size_t i = 0; i < n; i++) {
    char ch = p[i];
    if (ch == pat[m]) {
      m++;
      if (m == pat_len) {
        c->posted++;
        m = 0;
      }
    } else {
      m = ch == '"' ? 1u : 0u; /* '"' only opens the pattern */
    }
  }
  c->posted_match = m;
}

static bool bench_parse_u64(const char *p, const char *end, uint64_t *out) {
  uint64_t v = 0;
  const char *q = p;
  while (q < end && *q >= '0' && *q <= '9') {
    if (v > (UINT64_MAX - 9u) / 10u) return false;
    v = v * 10u + (uint64_t)(*q - '0');
    q++;
  }
  if (q == p) return false;
  *out = v;
  return true;
}

static void bench_capture_id(bench_t *b, const char *body, size_t len) {
  const char *end = body + len;
  const char *p = memmem(body, len, "\"id\"", 4);
  uint64_t id = 0;
  if (p != NULL) {
    p += 4;
    while (p < end && (*p == ' ' || *p == ':' || *p == '\t')) p++;
    if (!bench_parse_u64(p, end, &id)) id = 0;
  }
  if (id != 0 && b->ids_out != NULL && b->ids_n < b->requests_max) b->ids_out[b->ids_n++] = id;
}

/* Parses the header block [p, p+hlen). Returns 0, or -1 when it is not a response we read. */
static int bench_parse_head(conn_t *c, const char *p, size_t hlen, size_t *content_length) {
  if (hlen < 16 || memcmp(p, "HTTP/1.", 7) != 0) return -1;
  if (p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
    return -1;
  c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
  bool have_len = false;
  const char *end = p + hlen - 2; /* points at the final CRLF */
  const char *line = memchr(p, '\n', hlen);
  while (line != NULL && ++line < end) {
    const char *eol = memchr(line, '\r', (size_t)(end - line));
    if (eol == NULL) eol = end;
    size_t n = (size_t)(eol - line);
    if (n > 15 && strncasecmp(line, "content-length:", 15) == 0) {
      const char *v = line + 15;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      uint64_t cl;
      if (!bench_parse_u64(v, eol, &cl)) return -1;
      *content_length = cl;
      have_len = true;
    } else if (n > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) {
      return -1; /* ledgerd always sends Content-Length; chunked is not read here */
    }
    line = memchr(eol, '\n', (size_t)(end + 2 - eol));
  }
  if (!have_len) {
    if (c->status == 204 || c->status == 304 || c->status < 200) *content_length = 0;
    else return -1;
  }
  return 0;
}

static void bench_sample_unexpected(bench_t *b, const conn_t *c, const char *p, size_t avail,
                              size_t hlen, size_t cl) {
  if (b->err_samples >= BENCH_ERR_SAMPLES_MAX) return;
  b->err_samples++;
  size_t body = avail - hlen;
  if (body > cl) body = cl;
  if (body > 300) body = 300;
  fprintf(stderr, "ledger-bench: unexpected status %d (wanted %d): %.*s\n", c->status,
          b->rs->status_expected, (int)body, p + hlen);
}

/* Consumes every complete response in the read buffer. 0, or -1 on a protocol error. */
static int conn_parse(bench_t *b, conn_t *c, uint64_t now) {
  const reqset_t *rs = b->rs;
  for (;;) {
    if (!c->in_body) {
      const char *p = c->rbuf + c->rpos;
      size_t avail = c->rlen - c->rpos;
      const char *hend = avail >= 4 ? memmem(p, avail, "\r\n\r\n", 4) : NULL;
      if (hend == NULL) {
        if (c->rpos == 0 && c->rlen == BENCH_RBUF_BYTES) return -1; /* header too large */
        break;
      }
      size_t hlen = (size_t)(hend + 4 - p);
      size_t cl = 0;
      if (c->if_n == 0 || bench_parse_head(c, p, hlen, &cl) != 0) return -1;
      if (c->status != rs->status_expected) bench_sample_unexpected(b, c, p, avail, hlen, cl);
      if (rs->bench_capture_id && cl > BENCH_RBUF_BYTES) return -1;
      c->rpos += hlen;
      c->in_body = true;
      c->body_left = cl;
      c->posted = 0;
      c->posted_match = 0;
    }
    size_t avail = c->rlen - c->rpos;
    if (rs->bench_capture_id) {
      if (avail < c->body_left) break; /* the whole body must be in the buffer */
      if (c->status == rs->status_expected) bench_capture_id(b, c->rbuf + c->rpos, c->body_left);
      c->rpos += c->body_left;
      c->body_left = 0;
    } else {
      size_t take = avail < c->body_left ? avail : c->body_left;
      if (rs->count_posted) bench_scan_posted(c, c->rbuf + c->rpos, take);
      c->rpos += take;
      c->body_left -= take;
      if (c->body_left > 0) break;
    }
    c->in_body = false;
    bench_on_response(b, c, now);
  }
  if (c->rpos == c->rlen) {
    c->rpos = c->rlen = 0;
  } else if (c->rpos > 0) {
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  return 0;
}

/* Reads what the socket has. The socket is edge-triggered, so it must be left empty: a read
 * that fills less than the room it was given has emptied it (anything arriving later raises
 * a new edge), so no second read is made just to be told EAGAIN: that read was a third of
 * the client's system calls per response. Unless the peer hung up (hup: EPOLLRDHUP or
 * EPOLLHUP came with the event), whose end of file only a further read sees. */
static void conn_on_readable(bench_t *b, conn_t *c, bool hup) {
  for (;;) {
    LEDGER_ASSERT(c->rlen < BENCH_RBUF_BYTES);
    size_t room = BENCH_RBUF_BYTES - c->rlen;
    ssize_t r = read(c->fd, c->rbuf + c->rlen, room);
    if (r > 0) {
      c->rlen += (size_t)r;
      if (conn_parse(b, c, time_mono_ns()) != 0) {
        bench_fail_conn(b, c, "unreadable response", 0);
        return;
      }
      if ((size_t)r < room && !hup) return; /* emptied */
      continue;
    }
    if (r == 0) {
      bench_fail_conn(b, c, "closed by the server", 0);
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) bench_fail_conn(b, c, "read", errno);
    return;
  }
}

/* Open loop: hands every request whose scheduled time has come to a connection with room. */
static void bench_issue_scheduled(bench_t *b, uint64_t now) {
  while (b->next_sched_ns <= now && bench_may_issue(b, b->next_sched_ns)) {
    conn_t *c = NULL;
    for (unsigned k = 0; k < b->nconns; k++) {
      conn_t *cand = &b->conns[(b->rr + k) % b->nconns];
      if (cand->alive && cand->if_n < b->depth) {
        c = cand;
        b->rr = (unsigned)((cand - b->conns) + 1) % b->nconns;
        break;
      }
    }
    if (c == NULL) { /* every connection is full: the backlog is charged to latency */
      uint64_t due_until = b->deadline_ns && b->deadline_ns < now ? b->deadline_ns : now;
      uint64_t backlog =
          due_until > b->next_sched_ns ? (due_until - b->next_sched_ns) / b->interval_ns + 1u : 1u;
      if (backlog > b->st.backlog_max) b->st.backlog_max = backlog;
      b->stalled = true; /* wait for a response, not for the (past) schedule */
      return;
    }
    b->stalled = false;
    conn_enqueue(b, c, b->next_sched_ns);
    b->next_sched_ns += b->interval_ns;
    int rc = conn_flush(b, c);
    if (rc != 0) bench_fail_conn(b, c, "write", -rc);
  }
}

/* Closed loop: keep every connection `depth` deep. */
static void conn_top_up(bench_t *b, conn_t *c, uint64_t now) {
  if (!c->alive) return;
  if (b->interval_ns == 0) {
    while (c->if_n < b->depth && bench_may_issue(b, now)) conn_enqueue(b, c, now);
  }
  int rc = conn_flush(b, c);
  if (rc != 0) bench_fail_conn(b, c, "write", -rc);
}

/* ---- batched socket I/O (io_uring) ----
 * The reads of one epoll batch go to the kernel in one io_uring_enter, and so do the sends
 * that follow: a system call costs ~1.1 us on the benchmark VM, about what the TCP work of a
 * small request costs, and a client that pays two or three of them per request is the
 * bottleneck of a /healthz run (docs/performance.md, session 12). Every operation carries
 * MSG_DONTWAIT, so the kernel completes it during the submit, and bench_ring_run waits for
 * every completion: no buffer is left with the kernel. What a batch does not finish (a read
 * that filled its room, a hang-up, a short send) goes on through the plain calls above,
 * which meet it again. --no-io-uring, or a kernel without the operations, keeps the plain
 * path throughout. */

typedef struct bench_op {
  conn_t *c;
  size_t room; /* read: the room offered */
  bool hup;    /* read: the event said the peer hung up */
  int res;
  struct msghdr msg; /* send */
  struct iovec iov[BENCH_DEPTH_MAX];
} bench_op_t;

static bench_op_t bench_ops[BENCH_EVENTS_MAX]; /* one per event of an epoll batch */

/* NULL where the kernel refuses a ring or is not recent enough (uring_batch_open). */
static struct io_uring *bench_ring_open(void) {
  struct io_uring *ring = calloc(1, sizeof *ring);
  if (ring != NULL && uring_batch_open(ring, BENCH_EVENTS_MAX) != 0) {
    free(ring);
    ring = NULL;
  }
  return ring;
}

/* Submits the n operations queued on the ring and waits for all of them: bench_ops[i].res. */
static void bench_ring_run(struct io_uring *ring, unsigned n) {
  int res[BENCH_EVENTS_MAX];
  int r = uring_batch_run(ring, n, res);
  if (r != 0) {
    fprintf(stderr, "ledger-bench: io_uring_enter: %s\n", strerror(-r));
    exit(2);
  }
  for (unsigned i = 0; i < n; i++) bench_ops[i].res = res[i];
}

static struct io_uring_sqe *bench_sqe(struct io_uring *ring, unsigned i) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
  LEDGER_ASSERT(sqe != NULL); /* BENCH_EVENTS_MAX entries, empty between runs */
  io_uring_sqe_set_data64(sqe, i);
  return sqe;
}

/* What the plain loop does per event (read, hang-up, top up and send), for a whole epoll
 * batch: the reads in one submit, then the sends in another. */
static void bench_batch_events(bench_t *b, const struct epoll_event *evs, int n) {
  const unsigned read_ev = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
  const unsigned hup_ev = EPOLLRDHUP | EPOLLHUP | EPOLLERR;
  unsigned nr = 0;
  for (int i = 0; i < n; i++) {
    conn_t *c = &b->conns[evs[i].data.u32];
    if (!c->alive || !(evs[i].events & read_ev)) continue;
    LEDGER_ASSERT(c->rlen < BENCH_RBUF_BYTES);
    bench_op_t *op = &bench_ops[nr];
    op->c = c;
    op->room = BENCH_RBUF_BYTES - c->rlen;
    op->hup = (evs[i].events & hup_ev) != 0;
    io_uring_prep_recv(bench_sqe(b->ring, nr), c->fd, c->rbuf + c->rlen, op->room, MSG_DONTWAIT);
    nr++;
  }
  bench_ring_run(b->ring, nr);
  uint64_t now = time_mono_ns();
  for (unsigned i = 0; i < nr; i++) {
    bench_op_t *op = &bench_ops[i];
    conn_t *c = op->c;
    if (op->res > 0) {
      c->rlen += (size_t)op->res;
      if (conn_parse(b, c, now) != 0) {
        bench_fail_conn(b, c, "unreadable response", 0);
        continue;
      }
      if ((size_t)op->res == op->room || op->hup) conn_on_readable(b, c, op->hup); /* more, or the EOF */
    } else if (op->res == 0) {
      bench_fail_conn(b, c, "closed by the server", 0);
    } else if (op->res == -EAGAIN) {
      if (op->hup) conn_on_readable(b, c, true);
    } else if (op->res == -EINTR) {
      conn_on_readable(b, c, op->hup); /* the plain read retries */
    } else {
      bench_fail_conn(b, c, "read", -op->res);
    }
  }
  unsigned ns = 0;
  now = time_mono_ns();
  for (int i = 0; i < n; i++) {
    conn_t *c = &b->conns[evs[i].data.u32];
    if (c->alive && (evs[i].events & (EPOLLHUP | EPOLLERR))) bench_fail_conn(b, c, "socket error", 0);
    if (!c->alive) continue;
    if (b->interval_ns == 0) {
      while (c->if_n < b->depth && bench_may_issue(b, now)) conn_enqueue(b, c, now);
    }
    if (c->sq_n == 0) continue;
    bench_op_t *op = &bench_ops[ns];
    op->c = c;
    conn_iov(b->rs, c, op->iov);
    op->msg = (struct msghdr){.msg_iov = op->iov, .msg_iovlen = c->sq_n};
    io_uring_prep_sendmsg(bench_sqe(b->ring, ns), c->fd, &op->msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    ns++;
  }
  bench_ring_run(b->ring, ns);
  for (unsigned i = 0; i < ns; i++) {
    bench_op_t *op = &bench_ops[i];
    conn_t *c = op->c;
    if (op->res > 0) {
      conn_sent(b->rs, c, (size_t)op->res);
      int rc = c->sq_n > 0 ? conn_flush(b, c) : 0; /* a short send: the plain path goes on */
      if (rc != 0) bench_fail_conn(b, c, "write", -rc);
    } else if (op->res == -EINTR) { /* still writable: no EPOLLOUT edge would come */
      int rc = conn_flush(b, c);
      if (rc != 0) bench_fail_conn(b, c, "write", -rc);
    } else if (op->res != -EAGAIN) { /* EAGAIN: EPOLLOUT (edge) comes */
      bench_fail_conn(b, c, "write", op->res < 0 ? -op->res : EIO);
    }
  }
}

/* Runs one phase over the open connections with request set rs. Stats land in b->st. */
static void bench_run(bench_t *b, const reqset_t *rs, uint64_t requests_max, double seconds,
                      double rate) {
  LEDGER_ASSERT(rs->count > 0 && b->inflight == 0);
  b->rs = rs;
  memset(&b->st, 0, sizeof b->st);
  b->requests_max = requests_max;
  b->err_samples = 0;
  uint64_t now = time_mono_ns();
  b->st.t_start_ns = now;
  b->st.t_last_ns = now;
  b->deadline_ns = seconds > 0 ? now + (uint64_t)(seconds * 1e9) : 0;
  b->interval_ns = rate > 0 ? (uint64_t)(1e9 / rate) : 0;
  if (rate > 0 && b->interval_ns == 0) b->interval_ns = 1;
  b->next_sched_ns = now;
  b->stalled = false;
  if (b->interval_ns) {
    bench_issue_scheduled(b, now);
  } else {
    for (unsigned i = 0; i < b->nconns; i++) conn_top_up(b, &b->conns[i], now);
  }
  uint64_t stop_ns = 0;
  struct epoll_event evs[BENCH_EVENTS_MAX];
  for (;;) {
    now = time_mono_ns();
    /* Open loop: requests scheduled before the deadline are still owed, even late. */
    bool issuing = bench_may_issue(b, b->interval_ns ? b->next_sched_ns : now);
    if (!issuing && stop_ns == 0) stop_ns = now;
    if (!issuing && b->inflight == 0) break;
    if (b->alive == 0) break;
    if (stop_ns && now - stop_ns > BENCH_DRAIN_TIMEOUT_NS) {
      fprintf(stderr, "ledger-bench: %" PRIu64 " requests unanswered %llu s after the end\n",
              b->inflight, BENCH_DRAIN_TIMEOUT_NS / 1000000000ull);
      for (unsigned i = 0; i < b->nconns; i++) {
        if (b->conns[i].alive && b->conns[i].if_n) bench_fail_conn(b, &b->conns[i], "timeout", 0);
      }
      break;
    }
    uint64_t wake_ns = stop_ns ? stop_ns + BENCH_DRAIN_TIMEOUT_NS : UINT64_MAX;
    if (issuing && b->deadline_ns && b->deadline_ns < wake_ns) wake_ns = b->deadline_ns;
    if (issuing && b->interval_ns && !b->stalled && b->next_sched_ns < wake_ns) wake_ns = b->next_sched_ns;
    struct timespec ts, *tsp = NULL;
    if (wake_ns != UINT64_MAX) {
      uint64_t d = wake_ns > now ? wake_ns - now : 0;
      ts.tv_sec = (time_t)(d / 1000000000u);
      ts.tv_nsec = (long)(d % 1000000000u);
      tsp = &ts;
    }
    int n = epoll_pwait2(b->ep, evs, BENCH_EVENTS_MAX, tsp, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("ledger-bench: epoll_pwait2");
      exit(2);
    }
    if (b->ring != NULL) {
      bench_batch_events(b, evs, n);
      n = 0;
    }
    for (int i = 0; i < n; i++) {
      conn_t *c = &b->conns[evs[i].data.u32];
      if (!c->alive) continue;
      if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        conn_on_readable(b, c, (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0);
      if (c->alive && (evs[i].events & (EPOLLHUP | EPOLLERR))) {
        bench_fail_conn(b, c, "socket error", 0);
        continue;
      }
      if (c->alive) conn_top_up(b, c, time_mono_ns());
    }
    if (b->interval_ns) bench_issue_scheduled(b, time_mono_ns());
  }
}

/* ---- request builders ---- */
static char bench_body_buf[BENCH_REQ_BYTES_MAX];

typedef struct accounts {
  uint64_t *ids;
  size_t n;
} accounts_t;

static int bench_transfer_json(char *out, size_t cap, uint64_t debit, uint64_t credit,
                         const char *amount) {
  int n = snprintf(out, cap,
                   "{\"debit_account_id\":%" PRIu64 ",\"credit_account_id\":%" PRIu64
                   ",\"amount\":\"%s\",\"currency\":\"USD\"}",
                   debit, credit, amount);
  LEDGER_ASSERT(n > 0 && (size_t)n < cap);
  return n;
}

static void bench_pick_pair(const accounts_t *acc, bool hot, uint64_t *debit, uint64_t *credit) {
  LEDGER_ASSERT(acc->n >= 2);
  if (hot) {
    *debit = acc->ids[0];
    *credit = acc->ids[1 + bench_rng_below(acc->n - 1)];
    return;
  }
  size_t d = (size_t)bench_rng_below(acc->n);
  size_t k = (size_t)bench_rng_below(acc->n - 1);
  if (k >= d) k++;
  *debit = acc->ids[d];
  *credit = acc->ids[k];
}

static void bench_build_transfers(reqset_t *rs, size_t ring, const accounts_t *acc, bool hot,
                            const char *amount) {
  reqset_init(rs, ring, 201);
  rs->transfers_per_req = 1;
  for (size_t i = 0; i < ring; i++) {
    uint64_t d, c;
    bench_pick_pair(acc, hot, &d, &c);
    int n = bench_transfer_json(bench_body_buf, sizeof bench_body_buf, d, c, amount);
    reqset_add(rs, "POST", "/v1/transfers", bench_body_buf, (size_t)n);
  }
}

static void bench_build_batches(reqset_t *rs, size_t ring, const accounts_t *acc, unsigned per_req,
                          const char *amount) {
  reqset_init(rs, ring, 200);
  rs->transfers_per_req = per_req;
  rs->count_posted = true;
  for (size_t i = 0; i < ring; i++) {
    size_t len = 0;
    len += (size_t)snprintf(bench_body_buf, sizeof bench_body_buf, "{\"transfers\":[");
    for (unsigned k = 0; k < per_req; k++) {
      uint64_t d, c;
      bench_pick_pair(acc, false, &d, &c);
      if (k) bench_body_buf[len++] = ',';
      LEDGER_ASSERT(len + 256 < sizeof bench_body_buf);
      len += (size_t)bench_transfer_json(bench_body_buf + len, sizeof bench_body_buf - len, d, c, amount);
    }
    LEDGER_ASSERT(len + 2 < sizeof bench_body_buf);
    bench_body_buf[len++] = ']';
    bench_body_buf[len++] = '}';
    reqset_add(rs, "POST", "/v1/transfers/batch", bench_body_buf, len);
  }
}

static double bench_run_seconds(const stats_t *st) {
  uint64_t ns = st->t_last_ns > st->t_start_ns ? st->t_last_ns - st->t_start_ns : 1;
  return (double)ns / 1e9;
}

static int bench_cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Funds every account with BENCH_DEPOSIT_AMOUNT by batch transfers (8190 per request) from the
 * system account cash:USD (id BENCH_CASH_USD_ID, no floor; API.md "Accounts"): ~120 requests
 * for 1 M accounts instead of 1 M deposits. Returns the transfers posted. */
static uint64_t bench_fund_batches(bench_t *b, const accounts_t *acc) {
  size_t n = acc->n, nreq = (n + BENCH_BATCH_MAX - 1u) / BENCH_BATCH_MAX;
  reqset_t rs;
  reqset_init(&rs, nreq, 200);
  rs.transfers_per_req = BENCH_BATCH_MAX;
  rs.count_posted = true;
  for (size_t r = 0; r < nreq; r++) {
    size_t len = (size_t)snprintf(bench_body_buf, sizeof bench_body_buf, "{\"transfers\":[");
    size_t lo = r * BENCH_BATCH_MAX, hi = lo + BENCH_BATCH_MAX < n ? lo + BENCH_BATCH_MAX : n;
    for (size_t i = lo; i < hi; i++) {
      if (i > lo) bench_body_buf[len++] = ',';
      LEDGER_ASSERT(len + 256 < sizeof bench_body_buf);
      len += (size_t)bench_transfer_json(bench_body_buf + len, sizeof bench_body_buf - len,
                                         BENCH_CASH_USD_ID, acc->ids[i], BENCH_DEPOSIT_AMOUNT);
    }
    bench_body_buf[len++] = ']';
    bench_body_buf[len++] = '}';
    reqset_add(&rs, "POST", "/v1/transfers/batch", bench_body_buf, len);
  }
  bench_run(b, &rs, nreq, 0, 0);
  reqset_free(&rs);
  return b->st.unexpected ? 0 : b->st.transfers_ok;
}

/* Creates n USD accounts (one POST /v1/accounts each) and funds each with
 * BENCH_DEPOSIT_AMOUNT (batch transfers from cash:USD; deposits with --fund deposits). 0 or -1. */
static int bench_setup(bench_t *b, size_t n, accounts_t *acc, bool fund_deposits) {
  reqset_t rs;
  uint64_t t0 = time_mono_ns();
  reqset_init(&rs, 1, 201);
  rs.bench_capture_id = true;
  const char *body = "{\"currency\":\"USD\"}";
  reqset_add(&rs, "POST", "/v1/accounts", body, strlen(body));
  acc->ids = bench_xrealloc(NULL, n * sizeof *acc->ids);
  acc->n = 0;
  b->ids_out = acc->ids;
  b->ids_n = 0;
  bench_run(b, &rs, n, 0, 0);
  b->ids_out = NULL;
  acc->n = b->ids_n;
  reqset_free(&rs);
  if (acc->n != n) {
    fprintf(stderr, "ledger-bench: setup created %zu of %zu accounts (%" PRIu64 " unexpected, %"
            PRIu64 " lost)\n", acc->n, n, b->st.unexpected, b->st.lost);
    return -1;
  }
  double create_s = bench_run_seconds(&b->st);
  qsort(acc->ids, acc->n, sizeof *acc->ids, bench_cmp_u64);

  if (fund_deposits) {
    reqset_init(&rs, n, 201);
    for (size_t i = 0; i < n; i++) {
      int len = snprintf(bench_body_buf, sizeof bench_body_buf,
                         "{\"account_id\":%" PRIu64 ",\"amount\":\"" BENCH_DEPOSIT_AMOUNT "\"}",
                         acc->ids[i]);
      reqset_add(&rs, "POST", "/v1/deposits", bench_body_buf, (size_t)len);
    }
    bench_run(b, &rs, n, 0, 0);
    reqset_free(&rs);
    if (b->st.s2xx != n || b->st.unexpected) {
      fprintf(stderr, "ledger-bench: setup deposits: %" PRIu64 " of %zu succeeded\n", b->st.s2xx,
              n);
      return -1;
    }
  } else {
    uint64_t posted = bench_fund_batches(b, acc);
    if (posted != n) {
      fprintf(stderr, "ledger-bench: setup funding from cash:USD: %" PRIu64 " of %zu posted"
              " (try --fund deposits)\n", posted, n);
      return -1;
    }
  }
  double fund_s = bench_run_seconds(&b->st); /* also printed as deposit_s (older scripts) */
  bool contiguous = acc->ids[n - 1] - acc->ids[0] + 1u == n;
  printf("setup accounts=%zu first=%" PRIu64 " last=%" PRIu64
         " contiguous=%d create_s=%.3f fund=%s fund_s=%.3f deposit_s=%.3f seconds=%.3f\n",
         n, acc->ids[0], acc->ids[n - 1], contiguous ? 1 : 0, create_s,
         fund_deposits ? "deposits" : "batch", fund_s, fund_s, (double)(time_mono_ns() - t0) / 1e9);
  fflush(stdout);
  return 0;
}

static const char *bench_mode_name(mode_t_ m) {
  switch (m) {
  case MODE_HEALTH: return "health";
  case MODE_TRANSFER: return "transfer";
  case MODE_BATCH: return "batch";
  case MODE_HOT: return "hot";
  case MODE_NONE: break;
  }
  return "none";
}

/* CPU seconds (user + system) this process has used so far. */
static double bench_cpu_seconds(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* cpu_s: CPU seconds this client used during the measured run; cpu_util = cpu_s / seconds
 * (1.0 = one CPU busy): how close the load generator itself is to being the bottleneck. */
static void bench_print_summary(const bench_t *b, mode_t_ mode, unsigned batch, double rate,
                                double cpu_s) {
  const stats_t *st = &b->st;
  double s = bench_run_seconds(st);
  uint64_t errors = st->unexpected + st->conn_errors + st->lost;
  printf("mode=%s conns=%u depth=%u batch=%u rate=%.0f requests=%" PRIu64 " transfers=%" PRIu64
         " seconds=%.3f req_per_s=%.0f transfers_per_s=%.0f p50_us=%.1f p99_us=%.1f"
         " p999_us=%.1f max_us=%.1f s2xx=%" PRIu64 " s4xx=%" PRIu64 " s5xx=%" PRIu64
         " unexpected=%" PRIu64 " conn_errors=%" PRIu64 " lost=%" PRIu64 " errors=%" PRIu64
         " cpu_s=%.3f cpu_util=%.3f\n",
         bench_mode_name(mode), b->nconns, b->depth, mode == MODE_BATCH ? batch : 0u, rate,
         st->completed, st->transfers_ok, s, (double)st->completed / s,
         (double)st->transfers_ok / s, (double)lat_hist_quantile(&st->hist, 50000) / 1e3,
         (double)lat_hist_quantile(&st->hist, 99000) / 1e3,
         (double)lat_hist_quantile(&st->hist, 99900) / 1e3, (double)st->hist.max_ns / 1e3,
         st->s2xx, st->s4xx, st->s5xx, st->unexpected, st->conn_errors, st->lost, errors, cpu_s,
         cpu_s / s);
  if (st->backlog_max) {
    fprintf(stderr, "ledger-bench: open loop fell behind: up to %" PRIu64 " requests waited"
            " for a free connection\n", st->backlog_max);
  }
  fflush(stdout);
}

static void bench_usage(FILE *f) {
  fprintf(f,
          "usage: ledger-bench -p PORT [options]\n"
          "  -H, --host ADDR        server address (127.0.0.1)\n"
          "  -p, --port PORT        server port (required)\n"
          "  -m, --mode MODE        health | transfer | batch | hot\n"
          "  -c, --conns N          keep-alive connections (64)\n"
          "  -P, --pipeline N       requests in flight per connection (1, max %u)\n"
          "  -d, --duration S       seconds to send for (10 unless -n is given)\n"
          "  -n, --requests N       requests to send (0 = no bound)\n"
          "  -r, --rate R           open loop: R requests/s, latency from the scheduled time\n"
          "  -b, --batch N          transfers per batch request (8190, max %u)\n"
          "  -S, --setup N          create N USD accounts and give each %s (batch transfers\n"
          "                         from cash:USD, 8190 per request)\n"
          "      --fund deposits    fund with one POST /v1/deposits per account instead\n"
          "  -A, --accounts A-B     use existing funded accounts A..B\n"
          "  -w, --warmup S         run S seconds first and discard them (0)\n"
          "      --amount X         transfer amount (0.01)\n"
          "      --ring N           prebuilt requests to cycle through\n"
          "      --seed N           random seed (42)\n"
          "      --cpu N            pin this process to CPU N\n"
          "  -T, --token TOKEN      send 'Authorization: Bearer TOKEN' with every request\n"
          "      --token-file FILE  the same, TOKEN read from FILE (first line)\n"
          "      --no-io-uring      plain read/writev per connection instead of one io_uring\n"
          "                         submit per epoll batch for the reads and one for the sends\n",
          BENCH_DEPTH_MAX, BENCH_BATCH_MAX, BENCH_DEPOSIT_AMOUNT);
}

static uint64_t bench_arg_u64(const char *opt, const char *s) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-') {
    fprintf(stderr, "ledger-bench: %s: not a number: %s\n", opt, s);
    exit(2);
  }
  return v;
}

static double bench_arg_double(const char *opt, const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !(v >= 0)) {
    fprintf(stderr, "ledger-bench: %s: not a non-negative number: %s\n", opt, s);
    exit(2);
  }
  return v;
}

/* Sets bench_auth_header from a token (whitespace around it ignored). 0, or -1 if unusable. */
static int bench_set_token(const char *tok, size_t len) {
  while (len > 0 && (*tok == ' ' || *tok == '\t')) tok++, len--;
  while (len > 0 && (tok[len - 1] == '\n' || tok[len - 1] == '\r' || tok[len - 1] == ' ' ||
                     tok[len - 1] == '\t'))
    len--;
  if (len == 0 || len > BENCH_TOKEN_MAX) return -1;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)tok[i];
    if (ch <= 0x20 || ch >= 0x7f) return -1; /* a header value: visible ASCII only */
  }
  snprintf(bench_auth_header, sizeof bench_auth_header, "Authorization: Bearer %.*s\r\n",
           (int)len, tok);
  return 0;
}

static int bench_read_token_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    fprintf(stderr, "ledger-bench: --token-file %s: %s\n", path, strerror(errno));
    return -1;
  }
  char line[BENCH_TOKEN_MAX + 8u];
  bool got = fgets(line, sizeof line, f) != NULL;
  fclose(f);
  if (!got || bench_set_token(line, strlen(line)) != 0) {
    fprintf(stderr, "ledger-bench: --token-file %s: no usable token on its first line\n", path);
    return -1;
  }
  return 0;
}

static bench_t bench; /* ~1 MB of connection state: static, not on the stack */

int main(int argc, char **argv) {
  const char *host = "127.0.0.1", *amount = "0.01";
  unsigned port = 0, conns = 64, depth = 1, batch = BENCH_BATCH_MAX;
  mode_t_ mode = MODE_NONE;
  double seconds = -1, rate = 0, warmup = 0;
  uint64_t requests = 0, setup_n = 0, first = 0, last = 0, ring = 0;
  int cpu = -1;
  enum { OPT_AMOUNT = 1000, OPT_RING, OPT_SEED, OPT_CPU, OPT_TOKEN_FILE, OPT_FUND, OPT_NO_URING };
  bool fund_deposits = false, no_uring = false;
  static const struct option opts[] = {
      {"host", required_argument, 0, 'H'},     {"port", required_argument, 0, 'p'},
      {"mode", required_argument, 0, 'm'},     {"conns", required_argument, 0, 'c'},
      {"pipeline", required_argument, 0, 'P'}, {"duration", required_argument, 0, 'd'},
      {"requests", required_argument, 0, 'n'}, {"rate", required_argument, 0, 'r'},
      {"batch", required_argument, 0, 'b'},    {"setup", required_argument, 0, 'S'},
      {"accounts", required_argument, 0, 'A'}, {"warmup", required_argument, 0, 'w'},
      {"amount", required_argument, 0, OPT_AMOUNT}, {"ring", required_argument, 0, OPT_RING},
      {"seed", required_argument, 0, OPT_SEED}, {"cpu", required_argument, 0, OPT_CPU},
      {"token", required_argument, 0, 'T'},    {"token-file", required_argument, 0, OPT_TOKEN_FILE},
      {"fund", required_argument, 0, OPT_FUND}, {"no-io-uring", no_argument, 0, OPT_NO_URING},
      {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "H:p:m:c:P:d:n:r:b:S:A:w:T:h", opts, NULL)) != -1) {
    switch (o) {
    case 'H': host = optarg; break;
    case 'p': port = (unsigned)bench_arg_u64("--port", optarg); break;
    case 'm':
      if (strcmp(optarg, "health") == 0) mode = MODE_HEALTH;
      else if (strcmp(optarg, "transfer") == 0) mode = MODE_TRANSFER;
      else if (strcmp(optarg, "batch") == 0) mode = MODE_BATCH;
      else if (strcmp(optarg, "hot") == 0) mode = MODE_HOT;
      else {
        fprintf(stderr, "ledger-bench: unknown mode %s\n", optarg);
        return 2;
      }
      break;
    case 'c': conns = (unsigned)bench_arg_u64("--conns", optarg); break;
    case 'P': depth = (unsigned)bench_arg_u64("--pipeline", optarg); break;
    case 'd': seconds = bench_arg_double("--duration", optarg); break;
    case 'n': requests = bench_arg_u64("--requests", optarg); break;
    case 'r': rate = bench_arg_double("--rate", optarg); break;
    case 'b': batch = (unsigned)bench_arg_u64("--batch", optarg); break;
    case 'S': setup_n = bench_arg_u64("--setup", optarg); break;
    case 'w': warmup = bench_arg_double("--warmup", optarg); break;
    case 'A': {
      char *dash = strchr(optarg, '-');
      if (dash == NULL) {
        fprintf(stderr, "ledger-bench: --accounts wants FIRST-LAST\n");
        return 2;
      }
      *dash = '\0';
      first = bench_arg_u64("--accounts", optarg);
      last = bench_arg_u64("--accounts", dash + 1);
      break;
    }
    case OPT_AMOUNT: amount = optarg; break;
    case OPT_RING: ring = bench_arg_u64("--ring", optarg); break;
    case OPT_SEED: bench_rng_state = bench_arg_u64("--seed", optarg) | 1u; break;
    case OPT_CPU: cpu = (int)bench_arg_u64("--cpu", optarg); break;
    case 'T':
      if (bench_set_token(optarg, strlen(optarg)) != 0) {
        fprintf(stderr, "ledger-bench: --token: empty, too long or not visible ASCII\n");
        return 2;
      }
      break;
    case OPT_FUND:
      if (strcmp(optarg, "deposits") == 0) fund_deposits = true;
      else if (strcmp(optarg, "batch") == 0) fund_deposits = false;
      else {
        fprintf(stderr, "ledger-bench: --fund wants batch or deposits\n");
        return 2;
      }
      break;
    case OPT_TOKEN_FILE:
      if (bench_read_token_file(optarg) != 0) return 2;
      break;
    case OPT_NO_URING: no_uring = true; break;
    case 'h': bench_usage(stdout); return 0;
    default: bench_usage(stderr); return 2;
    }
  }
  if (optind != argc || port == 0 || port > 65535 || conns == 0 || conns > BENCH_CONNS_MAX ||
      depth == 0 || depth > BENCH_DEPTH_MAX || batch == 0 || batch > BENCH_BATCH_MAX ||
      (mode == MODE_NONE && setup_n == 0) || (setup_n && first) || first > last ||
      strlen(amount) > 32) {
    bench_usage(stderr);
    return 2;
  }
  if (seconds < 0) seconds = requests ? 0 : 10;

  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
      perror("ledger-bench: sched_setaffinity");
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = bench_on_sigint};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  snprintf(bench_host_header, sizeof bench_host_header, "%s:%u", host, port);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
    fprintf(stderr, "ledger-bench: --host wants an IPv4 address: %s\n", host);
    return 2;
  }
  bench_t *b = &bench;
  b->ep = epoll_create1(EPOLL_CLOEXEC);
  if (b->ep < 0) {
    perror("ledger-bench: epoll_create1");
    return 2;
  }
  b->depth = depth;
  if (!no_uring && (b->ring = bench_ring_open()) == NULL)
    fprintf(stderr, "ledger-bench: no io_uring here: plain read/writev per connection\n");
  for (unsigned i = 0; i < conns; i++) {
    int rc = conn_open(b, &b->conns[i], i, &addr);
    if (rc != 0) {
      fprintf(stderr, "ledger-bench: connect %s:%u: %s\n", host, port, strerror(-rc));
      return 1;
    }
    b->nconns++;
    b->alive++;
  }

  accounts_t acc = {0};
  if (setup_n) {
    if (setup_n < 2) {
      fprintf(stderr, "ledger-bench: --setup needs at least 2 accounts\n");
      return 2;
    }
    if (bench_setup(b, (size_t)setup_n, &acc, fund_deposits) != 0) {
      free(acc.ids);
      return 1;
    }
  } else if (first) {
    acc.n = (size_t)(last - first + 1u);
    acc.ids = bench_xrealloc(NULL, acc.n * sizeof *acc.ids);
    for (size_t i = 0; i < acc.n; i++) acc.ids[i] = first + i;
  }
  if (mode == MODE_NONE) {
    free(acc.ids);
    return 0;
  }

  reqset_t rs;
  switch (mode) {
  case MODE_HEALTH:
    reqset_init(&rs, 1, 200);
    reqset_add(&rs, "GET", "/healthz", NULL, 0);
    break;
  case MODE_TRANSFER:
  case MODE_HOT:
  case MODE_BATCH:
    if (acc.n < 2) {
      fprintf(stderr, "ledger-bench: mode %s needs --setup N or --accounts FIRST-LAST\n",
              bench_mode_name(mode));
      free(acc.ids);
      return 2;
    }
    if (mode == MODE_BATCH) bench_build_batches(&rs, ring ? ring : BENCH_RING_BATCH_DEFAULT, &acc, batch, amount);
    else bench_build_transfers(&rs, ring ? ring : BENCH_RING_SINGLE_DEFAULT, &acc, mode == MODE_HOT, amount);
    break;
  case MODE_NONE: return 0;
  }
  if (warmup > 0) bench_run(b, &rs, 0, warmup, rate);
  double cpu0 = bench_cpu_seconds();
  bench_run(b, &rs, requests, seconds, rate);
  bench_print_summary(b, mode, batch, rate, bench_cpu_seconds() - cpu0);
  reqset_free(&rs);
  free(acc.ids);
  const stats_t *st = &b->st;
  return st->completed > 0 && st->unexpected + st->conn_errors + st->lost == 0 ? 0 : 1;
}
