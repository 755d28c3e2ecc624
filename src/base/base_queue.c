/*
 * base_queue.c — bounded lock-free MPMC queue of pointers (Dmitry Vyukov's design, written
 * from its description). Net threads push commands, the engine pops; the bound is the
 * back-pressure: a full queue makes the caller answer 503 instead of growing.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "base/base.h"

typedef struct cell {
  _Atomic size_t seq;
  void *item;
} cell_t;

struct mpmc_queue {
  cell_t *cells;
  size_t mask;
  _Alignas(64) _Atomic size_t head; /* next to push */
  _Alignas(64) _Atomic size_t tail; /* next to pop */
};

int mpmc_queue_create(size_t capacity, mpmc_queue_t **out) {
  if (capacity < 2 || (capacity & (capacity - 1)) != 0) return LEDGER_EINVAL;
  mpmc_queue_t *q = aligned_alloc(64, sizeof *q);
  if (!q) return LEDGER_ENOMEM;
  q->cells = calloc(capacity, sizeof(cell_t));
  if (!q->cells) {
    free(q);
    return LEDGER_ENOMEM;
  }
  for (size_t i = 0; i < capacity; i++) atomic_init(&q->cells[i].seq, i);
  q->mask = capacity - 1;
  atomic_init(&q->head, 0);
  atomic_init(&q->tail, 0);
  *out = q;
  return LEDGER_OK;
}

void mpmc_queue_destroy(mpmc_queue_t *q) {
  if (!q) return;
  free(q->cells);
  free(q);
}

bool mpmc_queue_push(mpmc_queue_t *q, void *item) {
  size_t pos = atomic_load_explicit(&q->head, memory_order_relaxed);
  for (;;) {
    cell_t *c = &q->cells[pos & q->mask];
    size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
    intptr_t dif = (intptr_t)seq - (intptr_t)pos;
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&q->head, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
        c->item = item;
        atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
        return true;
      }
    } else if (dif < 0) {
      return false; /* full */
    } else {
      pos = atomic_load_explicit(&q->head, memory_order_relaxed);
    }
  }
}

bool mpmc_queue_pop(mpmc_queue_t *q, void **item_out) {
  size_t pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
  for (;;) {
    cell_t *c = &q->cells[pos & q->mask];
    size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
    intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&q->tail, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
        *item_out = c->item;
        atomic_store_explicit(&c->seq, pos + q->mask + 1, memory_order_release);
        return true;
      }
    } else if (dif < 0) {
      return false; /* empty */
    } else {
      pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
    }
  }
}

bool mpmc_queue_peek(const mpmc_queue_t *q, size_t k, void **item_out) {
  if (k > q->mask) return false;
  size_t pos = atomic_load_explicit(&q->tail, memory_order_relaxed) + k;
  const cell_t *c = &q->cells[pos & q->mask];
  if (atomic_load_explicit(&c->seq, memory_order_acquire) != pos + 1) return false; /* not pushed yet */
  *item_out = c->item;
  return true;
}

size_t mpmc_queue_size_approx(const mpmc_queue_t *q) {
  size_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
  size_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
  return h >= t ? h - t : 0;
}
