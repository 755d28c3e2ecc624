/*
 * uring_batch.h — submits the operations queued on an io_uring and waits for every one of them.
 *
 * Why: ledgerd's net threads (src/http/http_uring.c) and ledger-bench (cmd/ledger-bench.c) use
 * a ring the same way, synchronously: a batch of socket operations is queued with user data
 * 0..n-1, submitted with one io_uring_enter, and complete when uring_batch_run returns, so no
 * buffer is left in the kernel's hands. This is that submit-and-reap loop, written once.
 * Header-only: liburing is linked by its two users, not by ledger_base.
 *
 * Threads: the caller's ring, used by the caller's thread only.
 */
#ifndef LEDGER_URING_BATCH_H
#define LEDGER_URING_BATCH_H

#include <errno.h>
#include <liburing.h>
#include <sched.h>
#include <stdbool.h>

#include "base/base.h"

/* Opens a ring of `entries` for batches of socket operations (IORING_SETUP_SINGLE_ISSUER and
 * COOP_TASKRUN where the kernel has them). 0, or a negative errno: -ENOSYS, -EPERM
 * (io_uring_disabled, seccomp), -ENOMEM..., or -EOPNOTSUPP where the kernel lacks RECV, SEND
 * or SENDMSG, or is older than 5.19: RECV and SEND came in 5.6, but only later kernels complete
 * a MSG_DONTWAIT socket operation with -EAGAIN instead of arming a poll and waiting (which
 * would stall uring_batch_run); IORING_OP_SOCKET (5.19) stands for "recent enough". */
static inline int uring_batch_open(struct io_uring *ring, unsigned entries) {
  int err = io_uring_queue_init(entries, ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN);
  if (err == -EINVAL) err = io_uring_queue_init(entries, ring, 0); /* older kernel */
  if (err != 0) return err;
  struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
  bool ok = probe != NULL && io_uring_opcode_supported(probe, IORING_OP_RECV) &&
            io_uring_opcode_supported(probe, IORING_OP_SEND) &&
            io_uring_opcode_supported(probe, IORING_OP_SENDMSG) &&
            io_uring_opcode_supported(probe, IORING_OP_SOCKET);
  if (probe != NULL) io_uring_free_probe(probe);
  if (!ok) {
    io_uring_queue_exit(ring);
    return -EOPNOTSUPP;
  }
  return 0;
}

/* Consecutive io_uring_enter failures (-EAGAIN/-EBUSY/-ENOMEM: the kernel short of memory)
 * tolerated, with no completion in between, before giving up. */
#define URING_BATCH_RETRIES_MAX 100000

/* Submits what is queued on ring (n operations, user data 0..n-1) and waits until all n have
 * completed: res[i] = operation i's result. 0, or the negative errno of an io_uring_enter
 * failure that is not transient (or still transient after URING_BATCH_RETRIES_MAX tries):
 * the operations not completed then are still queued and point at the caller's buffers, so
 * the caller cannot carry on. */
static inline int uring_batch_run(struct io_uring *ring, unsigned n, int *res) {
  unsigned done = 0, failures = 0;
  while (done < n) {
    int r = io_uring_submit_and_wait(ring, n - done);
    if (r < 0 && r != -EINTR) {
      if ((r != -EAGAIN && r != -EBUSY && r != -ENOMEM) || ++failures > URING_BATCH_RETRIES_MAX) return r;
      (void)sched_yield();
    }
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
      uint64_t i = io_uring_cqe_get_data64(cqe);
      LEDGER_ASSERT(i < n);
      res[i] = cqe->res;
      seen++;
    }
    io_uring_cq_advance(ring, seen);
    done += seen;
    if (seen > 0) failures = 0;
  }
  return 0;
}

#endif
