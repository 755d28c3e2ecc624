/*
 * check.h — the unit tests' assertion macros. A failed check prints file:line and the values
 * and counts a failure; the test goes on (so one run shows every failure) and main returns
 * check_report() — non-zero if anything failed. Include from exactly one .c per executable.
 */
#ifndef LEDGER_TEST_CHECK_H
#define LEDGER_TEST_CHECK_H

#include <stdio.h>

static int check_failures;

#define CHECK(cond)                                                                          \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      check_failures++;                                                                      \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);              \
    }                                                                                        \
  } while (0)

/* Integers of any width: compared and printed as long long (uint64 above INT64_MAX prints
 * negative, which is still unambiguous for a failure message). */
#define CHECK_EQ(a, b)                                                                       \
  do {                                                                                       \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b);                         \
    if (check_a_ != check_b_) {                                                              \
      check_failures++;                                                                      \
      fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s) failed: %lld != %lld\n", __FILE__, __LINE__, \
              #a, #b, check_a_, check_b_);                                                   \
    }                                                                                        \
  } while (0)

#define CHECK_STR(a, b)                                                                      \
  do {                                                                                       \
    const char *check_a_ = (a), *check_b_ = (b);                                             \
    if (strcmp(check_a_, check_b_) != 0) {                                                   \
      check_failures++;                                                                      \
      fprintf(stderr, "%s:%d: CHECK_STR(%s, %s) failed: \"%s\" != \"%s\"\n", __FILE__,      \
              __LINE__, #a, #b, check_a_, check_b_);                                         \
    }                                                                                        \
  } while (0)

static inline int check_report(const char *name) {
  if (check_failures) fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
  else fprintf(stderr, "%s: all checks passed\n", name);
  return check_failures ? 1 : 0;
}

#endif
