/*
 * compat_bench.c — ledger-compat-bench: replays the seed systems' load scenarios (issue 5)
 * against `ledgerd --compat` and checks their outcome (docs/compat.md, docs/performance.md
 * "Compatibility scenarios").
 *
 * Why a second load generator: ledger-bench sends prebuilt requests; these scenarios are flows
 * whose next request depends on the previous answer (a session cookie, new account numbers),
 * so each connection here runs one flow at a time and builds its next request from what came
 * back. Written in C so that the client is not the bottleneck (each summary line gives the
 * client's own CPU use).
 *
 *   microfin: open loop at -r iterations/s; an iteration (on one connection, as one user)
 *             signs in, creates 2 accounts, deposits 1000, withdraws 500, transfers 200;
 *             per-step and per-iteration avg/p50/p90/p95/p99 (the iteration from its
 *             scheduled start: a server that falls behind is charged for it).
 *   banking:  -n requests of PUT /api/users/ID/balance {"amount": -2} from -c concurrent
 *             connections against one account holding --balance; counts 200s and 400s.
 *   flask:    closed loop for -d seconds on -c connections: POST /process_transaction
 *             {"from":A,"to":B,"amount":100}, GET /balance/A, GET /transactions?account_id=A.
 * Setup (accounts, funding) goes through v1 with --token-file (an admin credential). Compat
 * routes get the same bearer unless --open (the server runs with --compat-open).
 * Exit status 0 only when every answer was the expected one and the final balances check out.
 * Threads: one; one epoll loop; nothing shared.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CB_CONNS_MAX 4096u
#define CB_WBUF_BYTES 2048u
#define CB_RBUF_BYTES (256u * 1024u) /* a GET /transactions page of 100 entries is ~11 KB */
#define CB_SAMPLES_MAX (1u << 21)    /* latency samples kept per step (µs, uint32) */
#define CB_STEPS_MAX 8u
#define CB_EVENTS_MAX 256
#define CB_TOKEN_BYTES 128u
#define CB_ERR_SAMPLES_MAX 5u
#define CB_SIGNUP_CONNS 64u /* < AUTH_POOL_QUEUE_MAX (256) */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "ledger-compat-bench: %s\n", what);
  exit(2);
}

/* ---- latency samples per step ---- */
typedef struct step_stats {
  const char *name;
  uint32_t *us;
  size_t n, dropped;
  uint64_t sum_us;
} step_stats_t;

static void step_record(step_stats_t *s, uint64_t ns) {
  uint64_t us = ns / 1000u;
  s->sum_us += us;
  if (s->n < CB_SAMPLES_MAX) s->us[s->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
  else s->dropped++;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double step_q_ms(const step_stats_t *s, unsigned per_1000) {
  if (s->n == 0) return 0;
  size_t rank = (s->n * per_1000 + 999u) / 1000u;
  if (rank == 0) rank = 1;
  return (double)s->us[rank - 1] / 1000.0;
}

/* Prints "name avg/p50/p90/p95/p99 ms" and appends key=value pairs to kv. */
static void step_report(step_stats_t *s, char *kv, size_t cap) {
  qsort(s->us, s->n, sizeof *s->us, cmp_u32);
  size_t count = s->n + s->dropped;
  double avg = count ? (double)s->sum_us / (double)count / 1000.0 : 0;
  printf("  %-22s n=%-8zu avg=%8.2f p50=%8.2f p90=%8.2f p95=%8.2f p99=%8.2f max=%8.2f ms\n", s->name, count, avg,
         step_q_ms(s, 500), step_q_ms(s, 900), step_q_ms(s, 950), step_q_ms(s, 990), step_q_ms(s, 1000));
  size_t len = strlen(kv);
  snprintf(kv + len, cap - len, " %s_avg_ms=%.2f %s_p90_ms=%.2f %s_p95_ms=%.2f", s->name, avg, s->name,
           step_q_ms(s, 900), s->name, step_q_ms(s, 950));
}

/* ---- connections and flows ---- */
typedef enum { SC_MICROFIN, SC_BANKING, SC_FLASK } scenario_t;

typedef struct conn {
  int fd;
  bool busy;     /* a flow is running on it */
  bool waiting;  /* a request is out */
  char wbuf[CB_WBUF_BYTES];
  size_t wlen, woff;
  char *rbuf;
  size_t rlen;
  uint64_t sent_ns, flow_start_ns, used_ns;
  unsigned step;
  uint64_t user;
  uint64_t acct[2];
  char cookie[CB_TOKEN_BYTES];
} conn_t;

typedef struct bench {
  scenario_t sc;
  conn_t conns[CB_CONNS_MAX];
  unsigned nconns;
  int ep;
  struct sockaddr_in addr;
  char host[64];
  char auth[CB_TOKEN_BYTES + 32]; /* "Authorization: Bearer ...\r\n" or "" */
  bool open;                      /* compat routes without credential */
  /* run control */
  uint64_t deadline_ns, interval_ns, next_ns, started, started_max, finished, errors;
  unsigned err_samples;
  step_stats_t steps[CB_STEPS_MAX], flow;
  unsigned nsteps;
  uint64_t users;
  uint64_t s200, s400, sother; /* banking */
  uint64_t flask_ok;
  uint64_t acc_a, acc_b; /* flask / banking accounts */
  uint64_t backlog_max;
} bench_t;

static bench_t B;

static void conn_open(conn_t *c) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (const struct sockaddr *)&B.addr, sizeof B.addr) != 0) die("connect failed");
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) die("fcntl failed");
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
  if (epoll_ctl(B.ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl failed");
  c->fd = fd;
  c->used_ns = now_ns();
  if (!c->rbuf && !(c->rbuf = malloc(CB_RBUF_BYTES))) die("out of memory");
  c->rlen = 0;
}

static void conn_flush(conn_t *c) {
  while (c->woff < c->wlen) {
    ssize_t w = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
    if (w < 0) {
      if (errno == EAGAIN) return;
      if (errno == EINTR) continue;
      die("write failed (server gone?)");
    }
    c->woff += (size_t)w;
  }
}

/* The server closes a connection that sent nothing for its header timeout (10 s) or idled past
 * its keep-alive limit: a connection unused for CB_IDLE_REOPEN_NS is reopened before use. */
#define CB_IDLE_REOPEN_NS (5ull * 1000000000ull)
static void conn_reopen(conn_t *c) {
  close(c->fd); /* also leaves the epoll set */
  conn_open(c);
}

/* Queues one request on c. cookie: send the microfin session cookie; bearer: send B.auth. */
static void send_req(conn_t *c, const char *method, const char *path, const char *body, bool bearer) {
  if (now_ns() - c->used_ns > CB_IDLE_REOPEN_NS) conn_reopen(c);
  c->used_ns = now_ns();
  size_t blen = body ? strlen(body) : 0;
  char cookie[CB_TOKEN_BYTES + 16] = "";
  if (c->cookie[0]) snprintf(cookie, sizeof cookie, "Cookie: %s\r\n", c->cookie);
  int n = snprintf(c->wbuf, sizeof c->wbuf,
                   "%s %s HTTP/1.1\r\nHost: %s\r\n%s%sContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                   method, path, B.host, bearer ? B.auth : "", cookie, blen, body ? body : "");
  if (n <= 0 || (size_t)n >= sizeof c->wbuf) die("request too large");
  c->wlen = (size_t)n;
  c->woff = 0;
  c->waiting = true;
  c->sent_ns = now_ns();
  conn_flush(c);
}

static void bad_answer(conn_t *c, int status, const char *body, size_t blen) {
  B.errors++;
  if (B.err_samples++ < CB_ERR_SAMPLES_MAX)
    fprintf(stderr, "ledger-compat-bench: step %u: unexpected %d: %.*s\n", c->step, status, (int)(blen > 200 ? 200 : blen),
            body);
}

/* "key":<number or string> in a JSON body → its text (digits, '.', '-'), or false. */
static bool json_scalar(const char *body, size_t len, const char *key, char *out, size_t cap) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = memmem(body, len, pat, strlen(pat));
  if (!p) return false;
  p += strlen(pat);
  if (p < body + len && *p == '"') p++;
  size_t n = 0;
  while (p + n < body + len && n + 1 < cap && ((p[n] >= '0' && p[n] <= '9') || p[n] == '.' || p[n] == '-')) n++;
  memcpy(out, p, n);
  out[n] = '\0';
  return n > 0;
}

/* ---- microfin: signup (setup) and the iteration ---- */
enum { MF_SIGNIN, MF_GEN1, MF_GEN2, MF_DEPOSIT, MF_WITHDRAW, MF_TRANSFER, MF_STEPS, MF_SIGNUP = 100 };
static const char *const mf_names[MF_STEPS] = {"signin", "account_gen_1", "account_gen_2", "deposit", "withdraw", "transfer"};
#define MF_PASSWORD "compat-bench-password"

static void mf_request(conn_t *c) {
  char body[512];
  switch (c->step) {
    case MF_SIGNUP:
      snprintf(body, sizeof body, "{\"name\":\"Bench %" PRIu64 "\",\"email\":\"bench-%" PRIu64 "@example.com\",\"password\":\"" MF_PASSWORD "\"}",
               c->user, c->user);
      send_req(c, "POST", "/api/signup/", body, false);
      return;
    case MF_SIGNIN:
      c->cookie[0] = '\0';
      snprintf(body, sizeof body, "{\"email\":\"bench-%" PRIu64 "@example.com\",\"password\":\"" MF_PASSWORD "\"}", c->user);
      send_req(c, "POST", "/api/signin/", body, false);
      return;
    case MF_GEN1:
    case MF_GEN2: send_req(c, "POST", "/api/accountGeneration/", NULL, false); return;
    case MF_DEPOSIT:
      snprintf(body, sizeof body, "{\"accountNumber\":\"%012" PRIu64 "\",\"amount\":1000}", c->acct[0]);
      send_req(c, "POST", "/api/deposit/", body, false);
      return;
    case MF_WITHDRAW:
      snprintf(body, sizeof body, "{\"accountNumber\":\"%012" PRIu64 "\",\"amount\":500}", c->acct[0]);
      send_req(c, "POST", "/api/withdraw/", body, false);
      return;
    case MF_TRANSFER:
      snprintf(body, sizeof body,
               "{\"senderAccountNumber\":\"%012" PRIu64 "\",\"receiverAccountNumber\":\"%012" PRIu64 "\",\"amount\":200}",
               c->acct[0], c->acct[1]);
      send_req(c, "POST", "/api/transfer/", body, false);
      return;
    default: die("bad microfin step");
  }
}

static void flow_end(conn_t *c, bool ok) {
  if (ok) step_record(&B.flow, now_ns() - c->flow_start_ns);
  c->busy = false;
  c->cookie[0] = '\0';
  B.finished++;
}

/* Microfin answer: checks it, takes the cookie / account number, sends the next step. */
static void mf_answer(conn_t *c, int status, const char *hdr, size_t hlen, const char *body, size_t blen) {
  if (c->step == MF_SIGNUP) {
    if (status != 201 && status != 409) bad_answer(c, status, body, blen); /* 409: from an earlier run */
    flow_end(c, false);
    return;
  }
  int want = c->step == MF_GEN1 || c->step == MF_GEN2 ? 201 : 200;
  char v[64];
  bool ok = status == want;
  if (ok && c->step == MF_SIGNIN) {
    const char *p = memmem(hdr, hlen, "Set-Cookie: sessionId=", 22);
    const char *end = p ? memchr(p + 12, ';', (size_t)(hdr + hlen - p - 12)) : NULL;
    ok = end && (size_t)(end - p - 12) < sizeof c->cookie;
    if (ok) snprintf(c->cookie, sizeof c->cookie, "%.*s", (int)(end - p - 12), p + 12);
  } else if (ok && (c->step == MF_GEN1 || c->step == MF_GEN2)) {
    ok = json_scalar(body, blen, "accountNumber", v, sizeof v);
    c->acct[c->step - MF_GEN1] = ok ? strtoull(v, NULL, 10) : 0;
  } else if (ok && c->step == MF_TRANSFER) {
    ok = json_scalar(body, blen, "balance", v, sizeof v) && strcmp(v, "300.00") == 0; /* 1000 - 500 - 200 */
  }
  if (!ok) {
    bad_answer(c, status, body, blen);
    flow_end(c, false);
    return;
  }
  if (++c->step == MF_STEPS) {
    flow_end(c, true);
    return;
  }
  mf_request(c);
}

/* ---- banking and flask ---- */
static void bank_request(conn_t *c) {
  char path[64];
  snprintf(path, sizeof path, "/api/users/%" PRIu64 "/balance", B.acc_a);
  send_req(c, "PUT", path, "{\"amount\": -2}", !B.open);
}

enum { FL_PROCESS, FL_BALANCE, FL_TRANSACTIONS, FL_STEPS };
static const char *const fl_names[FL_STEPS] = {"process_transaction", "balance", "transactions"};

static void flask_request(conn_t *c) {
  char path[96], body[128];
  switch (c->step) {
    case FL_PROCESS:
      snprintf(body, sizeof body, "{\"from\":%" PRIu64 ",\"to\":%" PRIu64 ",\"amount\":100}", B.acc_a, B.acc_b);
      send_req(c, "POST", "/process_transaction", body, !B.open);
      return;
    case FL_BALANCE:
      snprintf(path, sizeof path, "/balance/%" PRIu64, B.acc_a);
      send_req(c, "GET", path, NULL, !B.open);
      return;
    default:
      snprintf(path, sizeof path, "/transactions?account_id=%" PRIu64, B.acc_a);
      send_req(c, "GET", path, NULL, !B.open);
      return;
  }
}

static bool may_start(uint64_t now) {
  if (B.started_max && B.started >= B.started_max) return false;
  return B.deadline_ns == 0 || now < B.deadline_ns;
}

static void on_answer(conn_t *c, int status, const char *hdr, size_t hlen, const char *body, size_t blen) {
  uint64_t t = now_ns();
  c->waiting = false;
  if (B.sc == SC_MICROFIN) {
    if (c->step < MF_STEPS) step_record(&B.steps[c->step], t - c->sent_ns);
    mf_answer(c, status, hdr, hlen, body, blen);
    return;
  }
  if (B.sc == SC_BANKING) {
    step_record(&B.steps[0], t - c->sent_ns);
    if (status == 200) B.s200++;
    else if (status == 400 && memmem(body, blen, "Insufficient funds", 18)) B.s400++;
    else {
      B.sother++;
      bad_answer(c, status, body, blen);
    }
    B.finished++;
    if (may_start(t)) {
      B.started++;
      bank_request(c);
    } else {
      c->busy = false;
    }
    return;
  }
  step_record(&B.steps[c->step], t - c->sent_ns);
  if (status != 200) bad_answer(c, status, body, blen);
  else if (c->step == FL_PROCESS) B.flask_ok++;
  B.finished++;
  c->step = (c->step + 1) % FL_STEPS;
  if (c->step != FL_PROCESS || may_start(t)) {
    B.started++;
    flask_request(c);
  } else {
    c->busy = false;
  }
}

/* Parses complete responses in c's buffer (one request in flight per connection). */
static void conn_read(conn_t *c) {
  for (;;) {
    ssize_t r = read(c->fd, c->rbuf + c->rlen, CB_RBUF_BYTES - c->rlen);
    if (r == 0 && !c->waiting) { /* an idle connection closed by the server: fine */
      conn_reopen(c);
      return;
    }
    if (r == 0) die("the server closed a connection with a request in flight");
    if (r < 0) {
      if (errno == EAGAIN) return;
      if (errno == EINTR) continue;
      die("read failed");
    }
    c->rlen += (size_t)r;
    const char *hend = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!hend) {
      if (c->rlen == CB_RBUF_BYTES) die("response header too large");
      continue;
    }
    size_t hlen = (size_t)(hend + 4 - c->rbuf);
    const char *cl = memmem(c->rbuf, hlen, "Content-Length: ", 16);
    size_t blen = cl ? strtoul(cl + 16, NULL, 10) : 0;
    if (hlen + blen > CB_RBUF_BYTES) die("response too large");
    if (c->rlen < hlen + blen) continue;
    if (c->rlen != hlen + blen || !c->waiting) die("unexpected bytes from the server");
    int status = atoi(c->rbuf + 9);
    c->rlen = 0;
    on_answer(c, status, c->rbuf, hlen, c->rbuf + hlen, blen);
  }
}

/* Microfin open loop: every iteration whose time has come starts on a free connection. */
static void schedule(uint64_t now) {
  while (B.next_ns <= now && may_start(B.next_ns)) {
    conn_t *c = NULL;
    for (unsigned i = 0; i < B.nconns && !c; i++)
      if (!B.conns[i].busy) c = &B.conns[i];
    if (!c) {
      uint64_t backlog = (now - B.next_ns) / B.interval_ns + 1;
      if (backlog > B.backlog_max) B.backlog_max = backlog;
      return;
    }
    c->busy = true;
    c->flow_start_ns = B.next_ns; /* from the schedule: no coordinated omission */
    c->user = B.started % B.users;
    c->step = MF_SIGNIN;
    B.started++;
    B.next_ns += B.interval_ns;
    mf_request(c);
  }
}

static volatile sig_atomic_t interrupted;
static void on_signal(int s) {
  (void)s;
  interrupted = 1;
}

/* Runs until every started flow finished and nothing more may start (or 60 s past the end). */
static void loop(void) {
  struct epoll_event ev[CB_EVENTS_MAX];
  for (;;) {
    uint64_t t = now_ns();
    if (B.sc == SC_MICROFIN && B.interval_ns) schedule(t);
    bool active = false;
    for (unsigned i = 0; i < B.nconns && !active; i++) active = B.conns[i].busy;
    bool more = B.interval_ns && may_start(B.next_ns);
    if ((!active && !more) || interrupted) return;
    if (B.deadline_ns && t > B.deadline_ns + 60000000000ull) die("flows still running 60 s after the end");
    int timeout_ms = 1;
    if (!B.interval_ns) timeout_ms = 100;
    int n = epoll_wait(B.ep, ev, CB_EVENTS_MAX, timeout_ms);
    for (int i = 0; i < n; i++) {
      conn_t *c = ev[i].data.ptr;
      if (ev[i].events & EPOLLOUT) conn_flush(c);
      if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) conn_read(c);
    }
  }
}

/* ---- setup through v1 (blocking, on connection 0) ---- */
static int sync_req(const char *method, const char *path, const char *body, bool bearer, char *out, size_t cap) {
  conn_t *c = &B.conns[0];
  send_req(c, method, path, body, bearer);
  while (c->woff < c->wlen) conn_flush(c);
  for (;;) {
    ssize_t r = read(c->fd, c->rbuf + c->rlen, CB_RBUF_BYTES - c->rlen);
    if (r == 0) die("server closed the setup connection");
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        usleep(200);
        continue;
      }
      die("setup read failed");
    }
    c->rlen += (size_t)r;
    const char *hend = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!hend) continue;
    size_t hlen = (size_t)(hend + 4 - c->rbuf);
    const char *cl = memmem(c->rbuf, hlen, "Content-Length: ", 16);
    size_t blen = cl ? strtoul(cl + 16, NULL, 10) : 0;
    if (c->rlen < hlen + blen) continue;
    snprintf(out, cap, "%.*s", (int)blen, c->rbuf + hlen);
    c->rlen = 0;
    c->waiting = false;
    return atoi(c->rbuf + 9);
  }
}

static uint64_t setup_account(void) {
  char out[1024], v[32];
  int st = sync_req("POST", "/v1/accounts", "{\"currency\":\"USD\"}", true, out, sizeof out);
  if (st != 201 || !json_scalar(out, strlen(out), "id", v, sizeof v)) {
    fprintf(stderr, "ledger-compat-bench: POST /v1/accounts: %d %s\n", st, out);
    die("account setup failed (is --token-file an admin credential?)");
  }
  return strtoull(v, NULL, 10);
}

static void setup_deposit(uint64_t id, const char *amount) {
  char out[1024], body[128];
  snprintf(body, sizeof body, "{\"account_id\":%" PRIu64 ",\"amount\":\"%s\"}", id, amount);
  if (sync_req("POST", "/v1/deposits", body, true, out, sizeof out) != 201) die("setup deposit failed");
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void usage(void) {
  fprintf(stderr,
          "usage: ledger-compat-bench -p PORT -s microfin|banking|flask [options]\n"
          "  --token-file F  admin credential for the v1 setup (and compat routes unless --open)\n"
          "  --open          compat routes without a credential (server runs --compat-open)\n"
          "  -c N            connections (microfin: most iterations at once; banking: clients)\n"
          "  -d S            seconds (microfin, flask)\n"
          "  -r R            microfin: iterations started per second (open loop)\n"
          "  -u N            microfin: users signed up first and cycled through (default 200)\n"
          "  -n N            banking: requests (10000)\n"
          "  --balance X     banking: the account's starting balance (10000)\n"
          "  --cpu N         pin to CPU N\n");
  exit(2);
}

static void run_microfin(double seconds, double rate) {
  B.nsteps = MF_STEPS;
  for (unsigned i = 0; i < MF_STEPS; i++) B.steps[i].name = mf_names[i];
  /* sign up the users (closed loop over the connections) */
  uint64_t t0 = now_ns();
  for (uint64_t u = 0; u < B.users;) {
    /* at most CB_SIGNUP_CONNS at once: the server's hashing queue is bounded (503 past it) */
    for (unsigned i = 0; i < B.nconns && i < CB_SIGNUP_CONNS && u < B.users; i++) {
      if (B.conns[i].busy) continue;
      B.conns[i].busy = true;
      B.conns[i].user = u++;
      B.conns[i].step = MF_SIGNUP;
      mf_request(&B.conns[i]);
    }
    B.interval_ns = 0;
    B.deadline_ns = 0;
    struct epoll_event ev[CB_EVENTS_MAX];
    int n = epoll_wait(B.ep, ev, CB_EVENTS_MAX, 100);
    for (int i = 0; i < n; i++) {
      conn_t *c = ev[i].data.ptr;
      if (ev[i].events & EPOLLOUT) conn_flush(c);
      if (ev[i].events & EPOLLIN) conn_read(c);
    }
  }
  loop();
  if (B.errors) die("sign-up failed (fresh data directory?)");
  printf("setup users=%" PRIu64 " seconds=%.3f\n", B.users, (double)(now_ns() - t0) / 1e9);
  B.finished = 0;
  B.interval_ns = (uint64_t)(1e9 / rate);
  B.next_ns = now_ns();
  B.deadline_ns = B.next_ns + (uint64_t)(seconds * 1e9);
}

int main(int argc, char **argv) {
  unsigned port = 0, conns = 64;
  double seconds = 10, rate = 100;
  uint64_t requests = 10000;
  const char *balance = "10000", *scen = NULL, *token_file = NULL;
  int cpu = -1;
  B.users = 200;
  enum { O_TOKEN = 1000, O_OPEN, O_BALANCE, O_CPU };
  static const struct option opts[] = {{"token-file", required_argument, 0, O_TOKEN}, {"open", no_argument, 0, O_OPEN},
                                       {"balance", required_argument, 0, O_BALANCE}, {"cpu", required_argument, 0, O_CPU},
                                       {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "p:s:c:d:r:u:n:", opts, NULL)) != -1) {
    switch (o) {
      case 'p': port = (unsigned)atoi(optarg); break;
      case 's': scen = optarg; break;
      case 'c': conns = (unsigned)atoi(optarg); break;
      case 'd': seconds = atof(optarg); break;
      case 'r': rate = atof(optarg); break;
      case 'u': B.users = strtoull(optarg, NULL, 10); break;
      case 'n': requests = strtoull(optarg, NULL, 10); break;
      case O_TOKEN: token_file = optarg; break;
      case O_OPEN: B.open = true; break;
      case O_BALANCE: balance = optarg; break;
      case O_CPU: cpu = atoi(optarg); break;
      default: usage();
    }
  }
  if (!scen || port == 0 || port > 65535 || conns == 0 || conns > CB_CONNS_MAX || !(seconds > 0) || !(rate > 0) ||
      B.users == 0 || requests == 0)
    usage();
  B.sc = strcmp(scen, "microfin") == 0 ? SC_MICROFIN : strcmp(scen, "banking") == 0 ? SC_BANKING
         : strcmp(scen, "flask") == 0  ? SC_FLASK
                                       : (usage(), SC_FLASK);
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity failed");
  }
  if (token_file) {
    FILE *f = fopen(token_file, "r");
    char tok[CB_TOKEN_BYTES] = "";
    if (!f || !fgets(tok, sizeof tok, f)) die("cannot read --token-file");
    fclose(f);
    tok[strcspn(tok, "\r\n")] = '\0';
    snprintf(B.auth, sizeof B.auth, "Authorization: Bearer %s\r\n", tok);
  }
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &nofile);
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, on_signal);
  B.addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &B.addr.sin_addr);
  snprintf(B.host, sizeof B.host, "127.0.0.1:%u", port);
  if ((B.ep = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1 failed");
  B.nconns = conns;
  for (unsigned i = 0; i < conns; i++) conn_open(&B.conns[i]);
  for (unsigned i = 0; i < CB_STEPS_MAX; i++)
    if (!(B.steps[i].us = malloc(CB_SAMPLES_MAX * sizeof(uint32_t)))) die("out of memory");
  if (!(B.flow.us = malloc(CB_SAMPLES_MAX * sizeof(uint32_t)))) die("out of memory");
  B.flow.name = "iteration";

  if (B.sc == SC_MICROFIN) {
    run_microfin(seconds, rate);
  } else if (B.sc == SC_BANKING) {
    B.nsteps = 1;
    B.steps[0].name = "put_balance";
    B.acc_a = setup_account();
    char path[64], body[64], out[1024];
    snprintf(path, sizeof path, "/api/users/%" PRIu64 "/balance", B.acc_a);
    snprintf(body, sizeof body, "{\"amount\": %s}", balance);
    if (sync_req("PUT", path, body, !B.open, out, sizeof out) != 200) die("banking setup: PUT balance failed");
    B.started_max = requests;
  } else {
    B.nsteps = FL_STEPS;
    for (unsigned i = 0; i < FL_STEPS; i++) B.steps[i].name = fl_names[i];
    B.acc_a = setup_account();
    B.acc_b = setup_account();
    setup_deposit(B.acc_a, "1000000000.00");
    B.deadline_ns = now_ns() + (uint64_t)(seconds * 1e9);
  }
  double cpu0 = cpu_seconds();
  uint64_t t0 = now_ns();
  if (B.sc != SC_MICROFIN) { /* closed loop: every connection starts at once */
    for (unsigned i = 0; i < B.nconns && may_start(t0); i++) {
      B.conns[i].busy = true;
      B.started++;
      if (B.sc == SC_BANKING) bank_request(&B.conns[i]);
      else flask_request(&B.conns[i]);
    }
  }
  loop();
  double secs = (double)(now_ns() - t0) / 1e9, cpu_s = cpu_seconds() - cpu0;
  uint64_t reqs = 0;
  for (unsigned i = 0; i < B.nsteps; i++) reqs += B.steps[i].n + B.steps[i].dropped;
  char kv[2048] = "";
  printf("steps (latency from each request's send; the iteration from its scheduled start):\n");
  for (unsigned i = 0; i < B.nsteps; i++) step_report(&B.steps[i], kv, sizeof kv);
  bool ok = B.errors == 0 && !interrupted;
  char out[1024], v[64] = "";
  if (B.sc == SC_MICROFIN) {
    step_report(&B.flow, kv, sizeof kv);
    ok = ok && B.flow.n == B.finished && B.finished == B.started;
    printf("compat_microfin rate=%.0f iterations=%" PRIu64 " completed=%zu requests=%" PRIu64
           " seconds=%.3f req_per_s=%.0f iter_per_s=%.1f backlog_max=%" PRIu64 " errors=%" PRIu64
           " cpu_util=%.3f%s ok=%d\n",
           rate, B.started, B.flow.n, reqs, secs, (double)reqs / secs, (double)B.flow.n / secs, B.backlog_max, B.errors,
           cpu_s / secs, kv, ok);
  } else if (B.sc == SC_BANKING) {
    snprintf(out, sizeof out, "/api/users/%" PRIu64, B.acc_a);
    sync_req("GET", out, NULL, !B.open, out, sizeof out);
    json_scalar(out, strlen(out), "balance", v, sizeof v);
    uint64_t start = strtoull(balance, NULL, 10), fit = start / 2 < requests ? start / 2 : requests;
    char want[32];
    snprintf(want, sizeof want, "%" PRIu64 ".00", start - 2 * fit);
    ok = ok && B.s200 == fit && B.s400 == requests - fit && strcmp(v, want) == 0; /* exactly */
    printf("compat_banking requests=%" PRIu64 " conns=%u s200=%" PRIu64 " s400=%" PRIu64 " other=%" PRIu64
           " final_balance=%s seconds=%.3f req_per_s=%.0f cpu_util=%.3f%s ok=%d\n",
           reqs, B.nconns, B.s200, B.s400, B.sother, v, secs, (double)reqs / secs, cpu_s / secs, kv, ok);
  } else {
    snprintf(out, sizeof out, "/balance/%" PRIu64, B.acc_b);
    sync_req("GET", out, NULL, !B.open, out, sizeof out);
    json_scalar(out, strlen(out), "balance", v, sizeof v);
    char want[32];
    snprintf(want, sizeof want, "%" PRIu64 ".00", B.flask_ok * 100);
    ok = ok && strcmp(v, want) == 0;
    printf("compat_flask conns=%u requests=%" PRIu64 " transactions=%" PRIu64 " receiver_balance=%s expected=%s"
           " seconds=%.3f req_per_s=%.0f cpu_util=%.3f%s ok=%d\n",
           B.nconns, reqs, B.flask_ok, v, want, secs, (double)reqs / secs, cpu_s / secs, kv, ok);
  }
  return ok ? 0 : 1;
}
