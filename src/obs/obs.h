/*
 * obs.h — Prometheus text exposition: a bounded text buffer and the writers for counters,
 * gauges and the power-of-two histograms of base.h. Any thread; a buffer belongs to its caller.
 */
#ifndef LEDGER_OBS_H
#define LEDGER_OBS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

typedef struct obs_buf {
  char *data;
  size_t len;
  size_t cap;
  bool overflow; /* something did not fit: the text was cut at a line boundary */
} obs_buf_t;

void obs_printf(obs_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "# HELP" and "# TYPE" lines. */
void obs_header(obs_buf_t *b, const char *name, const char *type, const char *help);
/* name{labels} value — labels may be "" (then no braces). */
void obs_value(obs_buf_t *b, const char *name, const char *labels, uint64_t value);
/* An unlabelled counter or gauge: its HELP/TYPE lines and its value. */
void obs_single(obs_buf_t *b, const char *name, const char *type, const char *help, uint64_t value);
/* A histogram whose values are in `unit` (e.g. 1e-9 to show ns as seconds). */
void obs_hist(obs_buf_t *b, const char *name, const char *labels, const ledger_hist_t *h, double unit);

#endif
