/* Board side of the PCM chunk encodings: raw int16 and the lossless order-2 Rice code. */
#include "ser_pcm_codec.h"

/* MSB-first bit reader: acc holds nbits bits, left-aligned. Past the end it reads zero bits (never
 * memory) and keeps counting them, so the caller can tell a stream that ran out. */
typedef struct {
  const uint8_t *data;
  size_t size, next;
  uint32_t acc;
  unsigned nbits;
} bit_reader;

static void refill(bit_reader *br) {
  while (br->nbits <= 24) {
    uint32_t b = br->next < br->size ? br->data[br->next] : 0u;
    br->next++;
    br->acc |= b << (24 - br->nbits);
    br->nbits += 8;
  }
}

static void skip(bit_reader *br, unsigned n) {
  br->acc <<= n; /* n <= 16 */
  br->nbits -= n;
}

static unsigned leading_zeros(uint32_t x) {
  if (x == 0) return 32;
#if defined(__GNUC__) || defined(__clang__)
  return (unsigned)__builtin_clz(x); /* one CLZ instruction on Cortex-M4 */
#else
  unsigned n = 0;
  while (!(x & 0x80000000u)) {
    x <<= 1;
    n++;
  }
  return n;
#endif
}

static int decode_rice(const uint8_t *data, size_t size, int16_t *out, size_t n_samples) {
  if (size < SER_PCM_RICE_HEADER_SIZE) return SER_ERR_BAD_ENCODING;
  unsigned k = data[0];
  if (k > SER_PCM_RICE_MAX_K) return SER_ERR_BAD_ENCODING;
  int32_t x0 = (int32_t)((uint32_t)data[1] | ((uint32_t)data[2] << 8));
  if (x0 >= 32768) x0 -= 65536;
  out[0] = (int16_t)x0;
  bit_reader br = {data + SER_PCM_RICE_HEADER_SIZE, size - SER_PCM_RICE_HEADER_SIZE, 0, 0, 0};
  /* With x[-1] = x[0], the order-2 prediction of x[1] is x[0]: the order-1 rule for n = 1. */
  int32_t prev1 = x0, prev2 = x0;
  for (size_t i = 1; i < n_samples; i++) {
    refill(&br);
    unsigned zeros = leading_zeros(br.acc);
    int32_t x;
    if (zeros >= SER_PCM_RICE_ESCAPE) {
      skip(&br, SER_PCM_RICE_ESCAPE);
      refill(&br);
      x = (int32_t)(br.acc >> 16);
      if (x >= 32768) x -= 65536;
      skip(&br, 16);
    } else {
      skip(&br, zeros + 1);
      uint32_t u = (uint32_t)zeros << k;
      if (k) {
        refill(&br);
        u |= br.acc >> (32 - k);
        skip(&br, k);
      }
      int32_t e = (int32_t)(u >> 1) ^ -(int32_t)(u & 1u); /* |e| < 2^18: no overflow below */
      x = 2 * prev1 - prev2 + e;
      if (x < -32768 || x > 32767) return SER_ERR_BAD_ENCODING;
    }
    out[i] = (int16_t)x;
    prev2 = prev1;
    prev1 = x;
  }
  /* The stream must end in its last byte, padded with fewer than 8 zero bits. */
  size_t total = 8 * br.size, used = 8 * br.next - br.nbits;
  if (used > total || total - used >= 8) return SER_ERR_BAD_ENCODING;
  unsigned pad = (unsigned)(total - used);
  if (pad && (br.acc >> (32 - pad)) != 0) return SER_ERR_BAD_ENCODING;
  return SER_ERR_NONE;
}

int ser_pcm_decode(uint8_t encoding, const uint8_t *data, size_t size, int16_t *out, size_t n_samples) {
  if (n_samples == 0) return SER_ERR_BAD_LENGTH;
  if (encoding == SER_PCM_RAW) {
    if (size != 2 * n_samples) return SER_ERR_BAD_LENGTH;
    for (size_t i = 0; i < n_samples; i++) {
      int32_t x = (int32_t)((uint32_t)data[2 * i] | ((uint32_t)data[2 * i + 1] << 8));
      out[i] = (int16_t)(x >= 32768 ? x - 65536 : x);
    }
    return SER_ERR_NONE;
  }
  if (encoding == SER_PCM_RICE) return decode_rice(data, size, out, n_samples);
  return SER_ERR_BAD_ENCODING;
}
