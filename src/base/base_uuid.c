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

/* Two hex digits per byte from one table (a batch answer prints 8,190 ids). */
static const char hex_pairs[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

void uuid_format(const ledger_uuid_t *id, char *buf) {
  /* Where each byte's two digits go: 8-4-4-4-12. */
  static const unsigned char at[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
  for (int i = 0; i < 16; i++) memcpy(buf + at[i], hex_pairs + 2 * id->bytes[i], 2);
  buf[8] = buf[13] = buf[18] = buf[23] = '-';
  buf[36] = '\0';
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
