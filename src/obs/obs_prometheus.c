/*
 * obs_prometheus.c — writers for the Prometheus text format (version 0.0.4).
 */
#include <stdio.h>
#include <string.h>

#include "obs/obs.h"

void obs_printf(obs_buf_t *b, const char *fmt, ...) {
  if (b->overflow) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= b->cap - b->len) {
    b->overflow = true;
    b->data[b->len] = '\0';
    return;
  }
  b->len += (size_t)n;
}

void obs_header(obs_buf_t *b, const char *name, const char *type, const char *help) {
  obs_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void obs_value(obs_buf_t *b, const char *name, const char *labels, uint64_t value) {
  if (labels[0]) obs_printf(b, "%s{%s} %llu\n", name, labels, (unsigned long long)value);
  else obs_printf(b, "%s %llu\n", name, (unsigned long long)value);
}

void obs_single(obs_buf_t *b, const char *name, const char *type, const char *help, uint64_t value) {
  obs_header(b, name, type, help);
  obs_value(b, name, "", value);
}

void obs_hist(obs_buf_t *b, const char *name, const char *labels, const ledger_hist_t *h, double unit) {
  uint64_t cum = 0;
  const char *sep = labels[0] ? "," : "";
  /* Skip the empty top buckets to keep the text short; always print +Inf. */
  unsigned last = 0;
  for (unsigned i = 0; i < HIST_BUCKETS; i++)
    if (atomic_load_explicit(&h->buckets[i], memory_order_relaxed)) last = i;
  for (unsigned i = 0; i <= last; i++) {
    cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
    double le = (double)(1ull << i) * unit;
    obs_printf(b, "%s_bucket{%s%sle=\"%.9g\"} %llu\n", name, labels, sep, le, (unsigned long long)cum);
  }
  uint64_t count = atomic_load_explicit(&h->count, memory_order_relaxed);
  obs_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)count);
  double sum = (double)atomic_load_explicit(&h->sum, memory_order_relaxed) * unit;
  if (labels[0]) {
    obs_printf(b, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, labels, sum, name, labels, (unsigned long long)count);
  } else {
    obs_printf(b, "%s_sum %.9g\n%s_count %llu\n", name, sum, name, (unsigned long long)count);
  }
}
