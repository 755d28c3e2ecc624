/*
 * test_api_compat_json.c — the compat routes' body parser (src/api/compat_json.c): JSON-number
 * amounts taken exactly from their text (the whole point of using yajl there), what is
 * refused, member rules (flat objects, duplicates, limits, nesting), ids and 12-digit account
 * numbers. Vectors are fixed; docs/compat.md states the rules they check.
 */
#include <string.h>

#include "api/compat.h"
#include "check.h"

static compat_body_t body;

static bool parse(const char *json) {
  api_error_t e;
  return compat_body_parse(json, strlen(json), &body, &e);
}

/* amount text in {"amount": TEXT} -> 1 (digits, scale, sign as given) or 0 (refused). */
static int amount(const char *text, int64_t *digits, uint8_t *scale, bool *neg) {
  char json[128];
  snprintf(json, sizeof json, "{\"amount\":%s}", text);
  api_error_t e;
  compat_amount_t a;
  if (!parse(json) || !compat_get_amount(&body, "amount", true, &a, &e)) return 0;
  *digits = a.digits;
  *scale = a.scale;
  *neg = a.negative;
  return 1;
}

static void test_exact_amounts(void) {
  static const struct {
    const char *text;
    int64_t digits;
    uint8_t scale;
    bool neg;
  } ok[] = {
      {"100.50", 1005, 1, false}, /* trailing zero dropped: exactly 100.5 */
      {"0.1", 1, 1, false},
      {"0.2", 2, 1, false},
      {"1000", 1000, 0, false},
      {"1.000", 1, 0, false},
      {"-2", 2, 0, true},
      {"100000000000000.01", 10000000000000001, 2, false}, /* a double would round this */
      {"0.000000000000000001", 1, 18, false},
      {"92233720368547758.07", INT64_MAX, 2, false},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    int64_t d = 0;
    uint8_t s = 0;
    bool n = false;
    CHECK_EQ(amount(ok[i].text, &d, &s, &n), 1);
    CHECK_EQ(d, ok[i].digits);
    CHECK_EQ(s, ok[i].scale);
    CHECK_EQ(n, ok[i].neg);
  }
  static const char *const refused[] = {
      "1e2", "1E2", "1e-2", "-1e2", "0", "0.00", "-0", "+1", "01", ".5", "1.", "NaN", "Infinity",
      "92233720368547758.08", "99999999999999999999", "0.0000000000000000001", "\"100\"", "null",
      "true", "[1]", "{\"a\":1}", "- 1",
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    int64_t d;
    uint8_t s;
    bool n;
    if (amount(refused[i], &d, &s, &n) != 0) fprintf(stderr, "accepted: %s\n", refused[i]);
    CHECK_EQ(amount(refused[i], &d, &s, &n), 0);
  }
  /* The engine, not the parser, knows the currency: 100.001 parses (scale 3) and USD's
   * exponent 2 refuses it there (money_to_minor), never rounded. */
  int64_t d, minor = 0;
  uint8_t s;
  bool n;
  CHECK_EQ(amount("100.001", &d, &s, &n), 1);
  CHECK(money_to_minor(d, s, 2, &minor) != 0);
  CHECK_EQ(amount("100.500", &d, &s, &n), 1);
  CHECK_EQ(money_to_minor(d, s, 2, &minor), 0);
  CHECK_EQ(minor, 10050);
  /* a negative amount where only positive ones are allowed */
  api_error_t e;
  compat_amount_t a;
  CHECK(parse("{\"amount\":-5}"));
  CHECK(!compat_get_amount(&body, "amount", false, &a, &e));
  CHECK_EQ(e.status, 400);
  CHECK_STR(e.code, "invalid_amount");
}

static void test_bodies(void) {
  CHECK(parse("{}"));
  CHECK(parse(" {\"a\":1, \"b\":\"x\", \"c\":{\"d\":[1,{\"e\":null}]}} \n"));
  CHECK_EQ(body.count, 3);
  CHECK_EQ(compat_body_get(&body, "c")->type, COMPAT_JSON_NESTED);
  CHECK(compat_body_get(&body, "d") == NULL); /* nested members are not kept */
  static const char *const bad[] = {
      "", "[]", "\"x\"", "1", "null", "{", "{\"a\":1}{}", "{\"a\":1} x", "{\"a\":1,\"a\":2}",
      "{\"\":1}", "{\"a\":\"x\\u0000y\"}", "{a:1}", "{\"a\":1,}", "{\"a\":'x'}", "/*c*/{}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (parse(bad[i])) fprintf(stderr, "accepted: %s\n", bad[i]);
    CHECK(!parse(bad[i]));
  }
  char deep[64] = "{\"a\":";
  for (int i = 0; i < 20; i++) strcat(deep, "[");
  CHECK(!parse(deep)); /* deeper than COMPAT_DEPTH_MAX (and unfinished) */
  char many[1024] = "{";
  for (unsigned i = 0; i <= COMPAT_FIELDS_MAX; i++)
    snprintf(many + strlen(many), sizeof many - strlen(many), "%s\"k%u\":%u", i ? "," : "", i, i);
  strcat(many, "}");
  CHECK(!parse(many)); /* COMPAT_FIELDS_MAX + 1 members */
  char big[COMPAT_VALUE_BYTES_MAX + 32];
  memset(big, 'x', sizeof big);
  memcpy(big, "{\"s\":\"", 6);
  memcpy(big + sizeof big - 3, "\"}", 3);
  CHECK(parse(big)); /* an overlong value is noted, and refused only when read */
  const char *s;
  api_error_t e;
  CHECK(!compat_get_string(&body, "s", 0, COMPAT_VALUE_BYTES_MAX, &s, &e));
  api_error_t e2;
  CHECK(!compat_body_parse("{}", COMPAT_BODY_BYTES_MAX + 1u, &body, &e2));
  CHECK_EQ(e2.status, 413);
}

static void test_ids_and_account_numbers(void) {
  api_error_t e;
  uint64_t id;
  CHECK(parse("{\"from\":11,\"to\":9007199254740991,\"x\":1.0,\"y\":\"11\",\"z\":0,\"w\":9007199254740992}"));
  CHECK(compat_get_id(&body, "from", &id, &e) && id == 11);
  CHECK(compat_get_id(&body, "to", &id, &e) && id == 9007199254740991ull);
  CHECK(!compat_get_id(&body, "x", &id, &e));
  CHECK(!compat_get_id(&body, "y", &id, &e));
  CHECK(!compat_get_id(&body, "z", &id, &e));
  CHECK(!compat_get_id(&body, "w", &id, &e));
  CHECK(!compat_get_id(&body, "missing", &id, &e));
  CHECK(parse("{\"a\":\"000000000011\",\"b\":11,\"c\":\"00000000011\",\"d\":\"000000000000\",\"e\":\"00000000001a\"}"));
  CHECK(compat_get_account_number(&body, "a", &id, &e) && id == 11);
  CHECK(!compat_get_account_number(&body, "b", &id, &e));
  CHECK(!compat_get_account_number(&body, "c", &id, &e));
  CHECK(!compat_get_account_number(&body, "d", &id, &e));
  CHECK(!compat_get_account_number(&body, "e", &id, &e));
  char num[COMPAT_ACCOUNT_NUMBER_DIGITS + 1];
  compat_account_number(11, num);
  CHECK_STR(num, "000000000011");
  compat_account_number(999999999999ull, num);
  CHECK_STR(num, "999999999999");
}

int main(void) {
  test_exact_amounts();
  test_bodies();
  test_ids_and_account_numbers();
  return check_report("test_api_compat_json");
}
