/*
 * replay_main.c — runs a libFuzzer target without libFuzzer, so every fuzz corpus replays in
 * `make test` under ASan+UBSan (SQLite habit). Linked with one fuzz_*.c into <name>_replay.
 *
 * Usage: <name>_replay DIR|FILE...
 * Each regular file (directories: their regular files, sorted by name, not recursive) is
 * fed to LLVMFuzzerTestOneInput once as is. Then, so that a small corpus still exercises the
 * parser, FUZZ_REPLAY_MUTATIONS (default 20000) inputs are derived from the corpus files by
 * deterministic mutations (fixed seed, FUZZ_REPLAY_SEED to change it): bit flips, byte sets,
 * inserts, deletes, interesting integers, chunk copies, splices and truncations. Every input
 * is handed over in a buffer of exactly its size, so an overread is an ASan error.
 *
 * A target reports a bug by crashing (abort, sanitizer); this driver exits 0 when all inputs
 * ran. The input being run is not printed (it would be noise); to reproduce a crash from a
 * mutation, rerun with FUZZ_REPLAY_SAVE=path and the last input is written there first.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_BYTES_MAX (1u << 20) /* larger corpus files are cut: the targets bound input */
#define FILES_MAX 4096u
#define PATH_BYTES_MAX 4096u

typedef struct input {
  uint8_t *data;
  size_t size;
} input_t;

static input_t inputs[FILES_MAX];
static size_t input_count;

static uint64_t rng_state;
static uint64_t rng(void) {
  uint64_t x = rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_state = x;
  return x * 0x2545F4914F6CDD1Dull;
}
static size_t rng_below(size_t n) { return n ? (size_t)(rng() % n) : 0; }

static int load_file(const char *path) {
  if (input_count >= FILES_MAX) return 0;
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "replay: cannot open %s\n", path);
    return -1;
  }
  uint8_t *buf = malloc(INPUT_BYTES_MAX);
  if (!buf) {
    fclose(f);
    return -1;
  }
  size_t n = fread(buf, 1, INPUT_BYTES_MAX, f);
  fclose(f);
  inputs[input_count].data = buf;
  inputs[input_count].size = n;
  input_count++;
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "replay: no such file or directory: %s\n", path);
    return -1;
  }
  if (S_ISREG(st.st_mode)) return load_file(path);
  if (!S_ISDIR(st.st_mode)) return 0;
  DIR *d = opendir(path);
  if (!d) return -1;
  char **names = calloc(FILES_MAX, sizeof *names);
  size_t n = 0;
  struct dirent *e;
  while (names && (e = readdir(d)) != NULL && n < FILES_MAX) {
    if (e->d_name[0] == '.') continue;
    names[n] = malloc(strlen(e->d_name) + 1);
    if (!names[n]) break;
    strcpy(names[n++], e->d_name);
  }
  closedir(d);
  if (!names) return -1;
  qsort(names, n, sizeof *names, cmp_names);
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    char p[PATH_BYTES_MAX];
    snprintf(p, sizeof p, "%s/%s", path, names[i]);
    if (stat(p, &st) == 0 && S_ISREG(st.st_mode) && load_file(p) != 0) rc = -1;
    free(names[i]);
  }
  free(names);
  return rc;
}

static const char *save_path;

/* Runs one input from an exactly sized heap copy. */
static void run_one(const uint8_t *data, size_t size) {
  uint8_t *copy = malloc(size ? size : 1);
  if (!copy) abort();
  if (size) memcpy(copy, data, size);
  if (save_path) {
    FILE *f = fopen(save_path, "wb");
    if (f) {
      fwrite(copy, 1, size, f);
      fclose(f);
    }
  }
  LLVMFuzzerTestOneInput(copy, size);
  free(copy);
}

static void put_le(uint8_t *p, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* One mutation of buf[0..*size) in place (cap bytes available). */
static void mutate(uint8_t *buf, size_t *size, size_t cap) {
  static const uint64_t interesting[] = {0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff,
                                         0x7fffffff, 0x80000000u, 0xffffffffu, 0x7fffffffffffffffull,
                                         0x8000000000000000ull, 0xffffffffffffffffull, 10, 100, 1000};
  static const char tokens[] = "0123456789.-+eE:TZ ";
  size_t n = *size;
  switch (rng_below(10)) {
    case 0: /* flip a bit */
      if (n) buf[rng_below(n)] ^= (uint8_t)(1u << rng_below(8));
      break;
    case 1: /* set a random byte */
      if (n) buf[rng_below(n)] = (uint8_t)rng();
      break;
    case 2: /* set a token byte (text grammars) */
      if (n) buf[rng_below(n)] = (uint8_t)tokens[rng_below(sizeof tokens - 1)];
      break;
    case 3: /* insert a byte */
      if (n < cap) {
        size_t at = rng_below(n + 1);
        memmove(buf + at + 1, buf + at, n - at);
        buf[at] = rng_below(2) ? (uint8_t)rng() : (uint8_t)tokens[rng_below(sizeof tokens - 1)];
        *size = n + 1;
      }
      break;
    case 4: /* delete a run */
      if (n) {
        size_t at = rng_below(n), len = 1 + rng_below(n - at < 8 ? n - at : 8);
        memmove(buf + at, buf + at + len, n - at - len);
        *size = n - len;
      }
      break;
    case 5: /* an interesting integer, 1/2/4/8 bytes little-endian */
    {
      size_t w = (size_t)1 << rng_below(4);
      if (n >= w) {
        uint64_t v = interesting[rng_below(sizeof interesting / sizeof interesting[0])];
        if (rng_below(4) == 0) v += (uint64_t)rng_below(3) - 1;
        put_le(buf + rng_below(n - w + 1), v, w);
      }
      break;
    }
    case 6: /* copy a chunk over another place */
      if (n > 1) {
        size_t len = 1 + rng_below(n / 2);
        size_t from = rng_below(n - len + 1), to = rng_below(n - len + 1);
        memmove(buf + to, buf + from, len);
      }
      break;
    case 7: /* truncate */
      if (n) *size = rng_below(n);
      break;
    case 8: /* splice: the tail of another corpus input */
      if (input_count) {
        const input_t *o = &inputs[rng_below(input_count)];
        size_t at = rng_below(n + 1), from = rng_below(o->size + 1);
        size_t len = o->size - from;
        if (at + len > cap) len = cap - at;
        memcpy(buf + at, o->data + from, len);
        *size = at + len;
      }
      break;
    default: /* add or subtract a small number from a byte */
      if (n) buf[rng_below(n)] += (uint8_t)(rng_below(35) - 17);
      break;
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; i++)
    if (load_path(argv[i]) != 0) return 2;
  const char *env = getenv("FUZZ_REPLAY_MUTATIONS");
  unsigned long mutations = env ? strtoul(env, NULL, 10) : 20000ul;
  env = getenv("FUZZ_REPLAY_SEED");
  rng_state = env ? strtoull(env, NULL, 0) : 0x5eed1ed9e7ull;
  if (rng_state == 0) rng_state = 1;
  save_path = getenv("FUZZ_REPLAY_SAVE");

  for (size_t i = 0; i < input_count; i++) run_one(inputs[i].data, inputs[i].size);

  const size_t cap = 64u * 1024u;
  uint8_t *buf = malloc(cap);
  if (!buf) return 2;
  for (unsigned long m = 0; m < mutations; m++) {
    size_t size = 0;
    if (input_count) {
      const input_t *src = &inputs[rng_below(input_count)];
      size = src->size < cap ? src->size : cap;
      memcpy(buf, src->data, size);
    }
    size_t k = 1 + rng_below(4);
    for (size_t j = 0; j < k; j++) mutate(buf, &size, cap);
    run_one(buf, size);
  }
  free(buf);
  for (size_t i = 0; i < input_count; i++) free(inputs[i].data);
  fprintf(stderr, "replay: %zu corpus inputs and %lu mutations ran\n", input_count, mutations);
  return 0;
}
