/* int8 convolution as im2col + a 2x2 register-blocked matrix multiply on the DSP extension.
 *
 * Two output pixels are processed together: their receptive fields are gathered ("im2col") into
 * a scratch buffer as int16 values with the input offset already added (padding becomes 0, which
 * is what TFLM's reference does by skipping it). Then, for two output channels at a time, four
 * dot products over K = k_h * k_w * in_c run with SMLAD, which multiplies and adds two int16
 * pairs in one instruction. Filter bytes are widened with SXTB16, which yields bytes 0 and 2 (or,
 * rotated by 8, bytes 1 and 3) of a word; the columns are stored in that same order, so no
 * reordering happens in the inner loop.
 *
 * Column pair layout (int16): for each full group g of 4 values, 8 entries
 *   [pixel0: x0 x2 x1 x3][pixel1: x0 x2 x1 x3]
 * then the K % 4 leftover values in natural order: [pixel0: up to 4][pixel1: up to 4].
 * When in_c is not a multiple of 4 (a first layer on 1-channel features), a pixel's receptive
 * field is first copied as bytes (K, after the pair buffer) so that it converts 4 values at a time.
 */
#include "ser_conv_s8.h"

#include <string.h>

#include "ser_requantize.h"

#if defined(__ARM_FEATURE_SIMD32) && __ARM_FEATURE_SIMD32
#include <arm_acle.h>
#define SER_SIMD 1
/* Rotate right by 8: brings bytes 1 and 3 where SXTB16 takes its two bytes from. */
static inline uint32_t ror8(uint32_t x) { return (x >> 8) | (x << 24); }
#else
#define SER_SIMD 0
#endif

static size_t pair_bytes(int k) { return (size_t)(k / 4 + 1) * 8 * sizeof(int16_t); }

size_t ser_conv_s8_scratch_bytes(const ser_conv_s8_params *p) {
  const int k = p->k_h * p->k_w * p->in_c;
  return pair_bytes(k) + (p->in_c % 4 != 0 ? (size_t)k : 0u);
}

/* Where natural index k of the receptive field lives in the pair buffer, for pixel `slot`. */
static inline int16_t *column_entry(int16_t *pair, int slot, int k_full, int k) {
  if (k >= k_full) return pair + 2 * k_full + 4 * slot + (k - k_full);
  static const uint8_t kOrder[4] = {0, 2, 1, 3}; /* SXTB16 order: bytes 0, 2, then 1, 3 */
  return pair + 2 * (k & ~3) + 4 * slot + kOrder[k & 3];
}

/* Stores n input values (plus offset) at natural indices k.. of pixel `slot`'s column. */
static void put_values(int16_t *pair, int slot, int k_full, int k, const int8_t *src, int n, int32_t offset) {
  for (; n > 0 && (k & 3) != 0; k++, src++, n--) *column_entry(pair, slot, k_full, k) = (int16_t)(*src + offset);
#if SER_SIMD
  const uint32_t offset2 = ((uint32_t)offset & 0xFFFFu) * 0x10001u;
  for (; n >= 4 && k + 4 <= k_full; k += 4, src += 4, n -= 4) {
    uint32_t word;
    memcpy(&word, src, 4); /* one unaligned LDR */
    const uint32_t even = __sadd16(__sxtb16(word), offset2);
    const uint32_t odd = __sadd16(__sxtb16(ror8(word)), offset2);
    uint32_t *dst = (uint32_t *)(void *)(pair + 2 * k + 4 * slot);
    dst[0] = even;
    dst[1] = odd;
  }
#endif
  for (; n > 0; k++, src++, n--) *column_entry(pair, slot, k_full, k) = (int16_t)(*src + offset);
}

/* Stores n zeros (padding) at natural indices k.. of pixel `slot`'s column. */
static void put_zeros(int16_t *pair, int slot, int k_full, int k, int n) {
  for (; n > 0; k++, n--) *column_entry(pair, slot, k_full, k) = 0;
}

/* Gathers output pixel (oy, ox)'s receptive field into `slot` of the pair buffer; in_c % 4 != 0
 * goes through `bytes` (padding there is the input zero point, which the offset turns into 0). */
static void gather(const ser_conv_s8_params *p, const int8_t *image, int oy, int ox, int16_t *pair, int slot,
                   int k_full, int8_t *bytes) {
  const int c = p->in_c;
  const int row = p->k_w * c;
  const int y0 = oy * p->stride_h - p->pad_h;
  const int x0 = ox * p->stride_w - p->pad_w;
  const int staged = c % 4 != 0;
  const int8_t zero_point = (int8_t)-p->input_offset;
  for (int ky = 0, k = 0; ky < p->k_h; ky++, k += row) {
    const int y = y0 + ky * p->dilation_h;
    const int row_inside = y >= 0 && y < p->in_h;
    const int8_t *line = image + (size_t)(row_inside ? y : 0) * p->in_w * c;
    if (row_inside && p->dilation_w == 1 && x0 >= 0 && x0 + p->k_w <= p->in_w) { /* one run */
      if (staged) {
        memcpy(bytes + k, line + (size_t)x0 * c, (size_t)row);
      } else {
        put_values(pair, slot, k_full, k, line + (size_t)x0 * c, row, p->input_offset);
      }
      continue;
    }
    for (int kx = 0; kx < p->k_w; kx++) {
      const int x = x0 + kx * p->dilation_w;
      const int inside = row_inside && x >= 0 && x < p->in_w;
      if (staged) {
        if (inside) {
          memcpy(bytes + k + kx * c, line + (size_t)x * c, (size_t)c);
        } else {
          memset(bytes + k + kx * c, zero_point, (size_t)c);
        }
      } else if (inside) {
        put_values(pair, slot, k_full, k + kx * c, line + (size_t)x * c, c, p->input_offset);
      } else {
        put_zeros(pair, slot, k_full, k + kx * c, c);
      }
    }
  }
  if (staged) put_values(pair, slot, k_full, 0, bytes, p->k_h * row, p->input_offset);
}

#if SER_SIMD
/* One group of 4 values: the filter words are widened with SXTB16 (bytes 0, 2 and, rotated, 1, 3)
 * and multiplied pairwise with both pixels' columns: 16 MACs in 18 instructions. Assembly because
 * GCC runs out of registers here and spills (14 are live: 4 sums, 3 pointers, 2 + 4 values). */
#define SER_DOT_GROUP                         \
  "ldrd   %[c0], %[c1], [%[col]], #8   \n\t" \
  "ldrd   %[c2], %[c3], [%[col]], #8   \n\t" \
  "ldr    %[t0], [%[w0]], #4           \n\t" \
  "sxtb16 %[t1], %[t0]                 \n\t" \
  "sxtb16 %[t0], %[t0], ror #8         \n\t" \
  "smlad  %[a00], %[t1], %[c0], %[a00] \n\t" \
  "smlad  %[a00], %[t0], %[c1], %[a00] \n\t" \
  "smlad  %[a01], %[t1], %[c2], %[a01] \n\t" \
  "smlad  %[a01], %[t0], %[c3], %[a01] \n\t" \
  "ldr    %[t0], [%[w1]], #4           \n\t" \
  "sxtb16 %[t1], %[t0]                 \n\t" \
  "sxtb16 %[t0], %[t0], ror #8         \n\t" \
  "smlad  %[a10], %[t1], %[c0], %[a10] \n\t" \
  "smlad  %[a10], %[t0], %[c1], %[a10] \n\t" \
  "smlad  %[a11], %[t1], %[c2], %[a11] \n\t" \
  "smlad  %[a11], %[t0], %[c3], %[a11] \n\t"
#define SER_DOT_OPERANDS                                                                         \
  : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [w0] "+r"(w0), [w1] "+r"(w1), \
    [col] "+r"(col), [n] "+r"(n), [t0] "=&r"(t0), [t1] "=&r"(t1), [c0] "=&r"(c0), [c1] "=&r"(c1),      \
    [c2] "=&r"(c2), [c3] "=&r"(c3)                                                                    \
  :                                                                                                   \
  : "cc", "memory"
#endif

/* The four dot products of filter rows w0, w1 with the pair's two columns, added to acc. */
static inline void dot_2x2(const int8_t *w0, const int8_t *w1, const int16_t *col, int k_full, int k,
                           int32_t acc[4]) {
  int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
#if SER_SIMD
  const int groups = k_full / 4;
  int n = groups / 2;
  uint32_t t0, t1, c0, c1, c2, c3;
  if (groups & 1) __asm__ volatile(SER_DOT_GROUP SER_DOT_OPERANDS);
  if (n > 0) {
    __asm__ volatile(
        "1:                 \n\t" SER_DOT_GROUP SER_DOT_GROUP
        "subs   %[n], %[n], #1 \n\t"
        "bne    1b          \n\t" SER_DOT_OPERANDS);
  }
#else
  for (int g = 0; g < k_full / 4; g++, w0 += 4, w1 += 4, col += 8) {
    static const uint8_t kOrder[4] = {0, 2, 1, 3};
    for (int j = 0; j < 4; j++) {
      a00 += w0[j] * col[kOrder[j]];
      a01 += w0[j] * col[4 + kOrder[j]];
      a10 += w1[j] * col[kOrder[j]];
      a11 += w1[j] * col[4 + kOrder[j]];
    }
  }
#endif
  for (int j = 0; j < k - k_full; j++) { /* the K % 4 leftovers, natural order */
    a00 += w0[j] * col[j];
    a01 += w0[j] * col[4 + j];
    a10 += w1[j] * col[j];
    a11 += w1[j] * col[4 + j];
  }
  acc[0] = a00;
  acc[1] = a01;
  acc[2] = a10;
  acc[3] = a11;
}

static inline int8_t clamp(int32_t v, int32_t lo, int32_t hi) { return (int8_t)(v < lo ? lo : (v > hi ? hi : v)); }

/* True if ser_requantize_right is exact for the whole layer: right shifts only, and no accumulator can
 * reach 2^30 (|filter| <= 128, |input + offset| <= 255, plus the bias). */
static int right_shifts_suffice(const ser_conv_s8_params *p, const int32_t *shift, const int32_t *bias) {
  int64_t bias_max = 0;
  for (int c = 0; c < p->out_c; c++) {
    if (shift[c] > -1) return 0;
    const int64_t b = bias ? (bias[c] < 0 ? -(int64_t)bias[c] : bias[c]) : 0;
    bias_max = b > bias_max ? b : bias_max;
  }
  return (int64_t)p->k_h * p->k_w * p->in_c * 128 * 255 + bias_max < (1LL << 30);
}

void ser_conv_s8(const ser_conv_s8_params *p, const int32_t *multiplier, const int32_t *shift, const int8_t *input,
                 const int8_t *filter, const int32_t *bias, int8_t *output, int16_t *scratch) {
  const int k = p->k_h * p->k_w * p->in_c;
  const int k_full = k & ~3;
  const int pixels = p->out_h * p->out_w;
  const int out_c = p->out_c;
  const int32_t offset = p->output_offset, lo = p->act_min, hi = p->act_max;
  const int fast = right_shifts_suffice(p, shift, bias);
  int8_t *bytes = (int8_t *)scratch + pair_bytes(k);
  for (int b = 0; b < p->batches; b++) {
    const int8_t *image = input + (size_t)b * p->in_h * p->in_w * p->in_c;
    int8_t *out = output + (size_t)b * pixels * out_c;
    for (int px = 0; px < pixels; px += 2) {
      /* An odd last pixel is gathered twice and its second copy's results are dropped. */
      const int has_second = px + 1 < pixels;
      const int px1 = has_second ? px + 1 : px;
      gather(p, image, px / p->out_w, px % p->out_w, scratch, 0, k_full, bytes);
      gather(p, image, px1 / p->out_w, px1 % p->out_w, scratch, 1, k_full, bytes);
      int8_t *out0 = out + (size_t)px * out_c;
      int8_t *out1 = has_second ? out0 + out_c : out0; /* the dropped copy rewrites pixel 0's value */
      for (int oc = 0; oc < out_c; oc += 2) {
        /* Likewise an odd last channel: its filter row is used twice, its value written twice. */
        const int oc1 = oc + 1 < out_c ? oc + 1 : oc;
        const int32_t b0 = bias ? bias[oc] : 0, b1 = bias ? bias[oc1] : 0;
        int32_t acc[4] = {b0, b0, b1, b1};
        dot_2x2(filter + (size_t)oc * k, filter + (size_t)oc1 * k, scratch, k_full, k, acc);
        if (fast) {
          const int32_t r0 = -shift[oc], r1 = -shift[oc1];
          const int32_t h0 = (int32_t)((1u << r0) >> 1), h1 = (int32_t)((1u << r1) >> 1);
          out1[oc1] = clamp(ser_requantize_right(acc[3], multiplier[oc1], r1, h1) + offset, lo, hi);
          out0[oc1] = clamp(ser_requantize_right(acc[2], multiplier[oc1], r1, h1) + offset, lo, hi);
          out1[oc] = clamp(ser_requantize_right(acc[1], multiplier[oc], r0, h0) + offset, lo, hi);
          out0[oc] = clamp(ser_requantize_right(acc[0], multiplier[oc], r0, h0) + offset, lo, hi);
        } else {
          out1[oc1] = clamp(ser_requantize(acc[3], multiplier[oc1], shift[oc1]) + offset, lo, hi);
          out0[oc1] = clamp(ser_requantize(acc[2], multiplier[oc1], shift[oc1]) + offset, lo, hi);
          out1[oc] = clamp(ser_requantize(acc[1], multiplier[oc], shift[oc]) + offset, lo, hi);
          out0[oc] = clamp(ser_requantize(acc[0], multiplier[oc], shift[oc]) + offset, lo, hi);
        }
      }
    }
  }
}
