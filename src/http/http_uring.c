/*
 * http_uring.c — one io_uring per net loop, used synchronously to batch the loop's socket
 * reads and sends: a batch is queued, submitted with one io_uring_enter, and complete when
 * http__uring_run returns.
 *
 * Why: on the VMs ledgerd is measured on, a system call's entry and exit cost ~1.1 µs
 * (getppid in a loop), more than the TCP work of a small send or read. A keep-alive request
 * is one read and one send; through the ring a batch of them is one call
 * (docs/performance.md, session 11). The epoll loop, its readiness and every state decision
 * stay as they were: the ring only does, ahead of time and in one call, the read or send the
 * connection code would do next. Anything the batch did not finish (EAGAIN, an error, a
 * short send) is left to the plain path, which meets it again and handles it as before.
 *
 * Invariants: every operation carries MSG_DONTWAIT, so the kernel completes it during the
 * submit (a socket that is not ready answers -EAGAIN instead of being polled); even so
 * http__uring_run waits for every completion, so no buffer is in the kernel's hands after
 * it returns. The ring is empty between runs.
 *
 * Threads: the ring is created, used and freed on its loop's thread (IORING_SETUP_SINGLE_ISSUER
 * where the kernel has it).
 */
#include <errno.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "base/uring_batch.h"
#include "http_internal.h"

int http__uring_open(http_loop_t *loop) {
  HTTP_ASSERT(loop->uring == NULL);
  struct io_uring *ring = calloc(1, sizeof *ring);
  if (ring == NULL) return -ENOMEM;
  int err = uring_batch_open(ring, HTTP_IO_BATCH_MAX); /* probes for a recent enough kernel */
  if (err != 0) {
    free(ring);
    return err;
  }
  loop->uring = ring;
  return 0;
}

void http__uring_close(http_loop_t *loop) {
  if (loop->uring == NULL) return;
  io_uring_queue_exit(loop->uring);
  free(loop->uring);
  loop->uring = NULL;
}

/* A batch is all reads or all sends (the counters count them by the first). */
void http__uring_run(http_loop_t *loop, http_io_t *ops, unsigned n) {
  struct io_uring *ring = loop->uring;
  HTTP_ASSERT(ring != NULL && n <= HTTP_IO_BATCH_MAX);
  if (n == 0) return;
  for (unsigned i = 0; i < n; i++) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    HTTP_ASSERT(sqe != NULL); /* HTTP_IO_BATCH_MAX entries, empty between runs */
    if (ops[i].send) {
      io_uring_prep_send(sqe, ops[i].fd, ops[i].buf, ops[i].len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      io_uring_prep_recv(sqe, ops[i].fd, ops[i].buf, ops[i].len, MSG_DONTWAIT);
    }
    io_uring_sqe_set_data64(sqe, i);
  }
  int res[HTTP_IO_BATCH_MAX];
  int r = uring_batch_run(ring, n, res);
  if (r != 0) {
    fprintf(stderr, "ledgerd: io_uring_enter: %s; cannot continue\n", strerror(-r));
    abort();
  }
  for (unsigned i = 0; i < n; i++) ops[i].res = res[i];
  http__stat_add(ops[0].send ? &loop->stat_uring_sends : &loop->stat_uring_reads, n);
}
