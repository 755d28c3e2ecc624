/*
 * base_uuid.c — transfer ids as UUIDv7 carrying the transfer number (see base.h).
 */
#include <string.h>

#include "base/base.h"

#define UUID_TRANSFER_NO_MAX ((1ull << 62) - 1)

ledger_uuid_t uuid_from_transfer(int64_t created_ms, uint64_t transfer_no) {
  LEDGER_ASSERT(created_ms >= 0 && created_ms < (1ll << 48));
  LEDGER_ASSERT(transfer_no <= UUID_TRANSFER_NO_MAX);
  ledger_uuid_t u;
  uint64_t ms = (uint64_t)created_ms;
  for (int i = 0; i < 6; i++) u.bytes[i] = (uint8_t)(ms >> (40 - 8 * i));
  u.bytes[6] = 0x70; /* version 7, rand_a high bits zero */
  u.bytes[7] = 0x00;
  uint64_t low = (2ull << 62) | transfer_no; /* variant 10 */
  for (int i = 0; i < 8; i++) u.bytes[8 + i] = (uint8_t)(low >> (56 - 8 * i));
  return u;
}

bool uuid_to_transfer(const ledger_uuid_t *id, int64_t *created_ms_out, uint64_t *transfer_no_out) {
  if (id->bytes[6] != 0x70 || id->bytes[7] != 0) return false;
  uint64_t ms = 0, low = 0;
  for (int i = 0; i < 6; i++) ms = (ms << 8) | id->bytes[i];
  for (int i = 0; i < 8; i++) low = (low << 8) | id->bytes[8 + i];
  if ((low >> 62) != 2) return false;
  *created_ms_out = (int64_t)ms;
  *transfer_no_out = low & UUID_TRANSFER_NO_MAX;
  return true;
}

void uuid_format(const ledger_uuid_t *id, char *buf) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) buf[o++] = '-';
    buf[o++] = hex[id->bytes[i] >> 4];
    buf[o++] = hex[id->bytes[i] & 15];
  }
  buf[o] = '\0';
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int uuid_parse(const char *text, size_t len, ledger_uuid_t *out) {
  if (len != 36) return LEDGER_EINVAL;
  size_t b = 0;
  for (size_t i = 0; i < 36;) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return LEDGER_EINVAL;
      i++;
      continue;
    }
    int hi = hexval(text[i]), lo = hexval(text[i + 1]);
    if (hi < 0 || lo < 0) return LEDGER_EINVAL;
    out->bytes[b++] = (uint8_t)(hi << 4 | lo);
    i += 2;
  }
  return LEDGER_OK;
}
