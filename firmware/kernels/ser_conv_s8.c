/* int8 convolution as im2col + a 1x4 register-blocked matrix multiply on the DSP extension.
 *
 * Four output pixels are processed together: their receptive fields are gathered ("im2col") into
 * a scratch buffer as int16 values with the input offset already added (padding becomes 0, which
 * is what TFLM's reference does by skipping it). Then, for one output channel at a time, four dot
 * products over K = k_h * k_w * in_c run with SMLAD, which multiplies and adds two int16 pairs in
 * one instruction. Filter bytes are widened with SXTB16, which yields bytes 0 and 2 (or, rotated by
 * 8, bytes 1 and 3) of a word; the columns are stored in that same order, so no reordering happens
 * in the inner loop. One widened filter word serves four pixels (two channels x two pixels would
 * need more registers than there are).
 *
 * Column layout (int16): for each group g of 4 values, 16 entries
 *   [pixel0: x0 x2 x1 x3][pixel1: ...][pixel2: ...][pixel3: ...]
 * and when K % 4 != 0 the last group is zero-padded (the padding is zeroed once per call). When
 * in_c is not a multiple of 4 (a first layer on 1-channel features), a pixel's receptive field is
 * first copied as bytes (K, after the column buffer) so that it converts 4 values at a time.
 *
 * One input channel with K <= 10 (a 3x3 first layer on 1-channel features) has a path of its own
 * (conv_c1 below): the filters, widened once per call, and the per-channel constants go into
 * scratch as one record per output channel; per output pixel, its K values (5 int16 pairs) stay in
 * registers while a loop over the channels loads each record with two LDMs and runs 5 SMLADs and
 * the requantization and SSAT: 15 instructions per output. It takes layers whose activation range
 * is the whole of int8 (no activation, or ReLU with the output zero point at -128, as the
 * converter makes it); others go the general way.
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

/* Pixels computed together: each filter word, once widened, feeds this many columns. */
#define SER_PIXELS 4

/* Groups of 4 K values, the last one zero-padded when K % 4 != 0; each holds 4 values per pixel. */
static size_t pair_bytes(int k) { return (size_t)((k + 3) / 4) * 4 * SER_PIXELS * sizeof(int16_t); }

/* The 1-channel path: K <= 2 * SER_C1_PAIRS values per pixel, one record per output channel of
 * {2 bias, 5 pairs of 2 filter values, multiplier, rounding constant, right shift}. */
#define SER_C1_PAIRS 5
#define SER_C1_RECORD (1 + SER_C1_PAIRS + 3)

static int c1_shape(const ser_conv_s8_params *p) { return p->in_c == 1 && p->k_h * p->k_w <= 2 * SER_C1_PAIRS; }

size_t ser_conv_s8_scratch_bytes(const ser_conv_s8_params *p) {
  const int k = p->k_h * p->k_w * p->in_c;
  const size_t general = pair_bytes(k) + (p->in_c % 4 != 0 ? (size_t)k : 0u);
  const size_t c1 = c1_shape(p) ? (size_t)p->out_c * SER_C1_RECORD * sizeof(int32_t) : 0u;
  return general > c1 ? general : c1;
}

/* Where natural index k of the receptive field lives in the column buffer, for pixel `slot`. */
static inline int16_t *column_entry(int16_t *pair, int slot, int k) {
  static const uint8_t kOrder[4] = {0, 2, 1, 3}; /* SXTB16 order: bytes 0, 2, then 1, 3 */
  return pair + SER_PIXELS * (k & ~3) + 4 * slot + kOrder[k & 3];
}

/* Stores n input values (plus offset) at natural indices k.. of pixel `slot`'s column. */
static void put_values(int16_t *pair, int slot, int k, const int8_t *src, int n, int32_t offset) {
  for (; n > 0 && (k & 3) != 0; k++, src++, n--) *column_entry(pair, slot, k) = (int16_t)(*src + offset);
#if SER_SIMD
  const uint32_t offset2 = ((uint32_t)offset & 0xFFFFu) * 0x10001u;
  for (; n >= 4; k += 4, src += 4, n -= 4) {
    uint32_t word;
    memcpy(&word, src, 4); /* one unaligned LDR */
    const uint32_t even = __sadd16(__sxtb16(word), offset2);
    const uint32_t odd = __sadd16(__sxtb16(ror8(word)), offset2);
    uint32_t *dst = (uint32_t *)(void *)(pair + SER_PIXELS * k + 4 * slot);
    dst[0] = even;
    dst[1] = odd;
  }
#endif
  for (; n > 0; k++, src++, n--) *column_entry(pair, slot, k) = (int16_t)(*src + offset);
}

/* Stores n zeros (padding) at natural indices k.. of pixel `slot`'s column. */
static void put_zeros(int16_t *pair, int slot, int k, int n) {
  for (; n > 0; k++, n--) *column_entry(pair, slot, k) = 0;
}

/* Gathers output pixel (oy, ox)'s receptive field into `slot` of the pair buffer; in_c % 4 != 0
 * goes through `bytes` (padding there is the input zero point, which the offset turns into 0). */
static void gather(const ser_conv_s8_params *p, const int8_t *image, int oy, int ox, int16_t *pair, int slot,
                   int8_t *bytes) {
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
        put_values(pair, slot, k, line + (size_t)x0 * c, row, p->input_offset);
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
        put_values(pair, slot, k + kx * c, line + (size_t)x * c, c, p->input_offset);
      } else {
        put_zeros(pair, slot, k + kx * c, c);
      }
    }
  }
  if (staged) put_values(pair, slot, 0, bytes, p->k_h * row, p->input_offset);
}

#if SER_SIMD
/* One group of 4 values for one filter row and four pixels: the filter word (t0) is widened with
 * SXTB16 (bytes 0, 2 and, rotated, 1, 3) and meets each pixel's two column words, loaded 8 at a time
 * with LDM: 16 MACs in 13 instructions. Assembly because the LDM needs fixed registers (r8-r11). */
#define SER_GROUP_BODY                       \
  "sxtb16 %[t1], %[t0]                 \n\t" \
  "sxtb16 %[t0], %[t0], ror #8         \n\t" \
  "ldmia  %[col]!, {r8, r9, r10, r11}  \n\t" \
  "smlad  %[a0], %[t1], r8, %[a0]      \n\t" \
  "smlad  %[a0], %[t0], r9, %[a0]      \n\t" \
  "smlad  %[a1], %[t1], r10, %[a1]     \n\t" \
  "smlad  %[a1], %[t0], r11, %[a1]     \n\t" \
  "ldmia  %[col]!, {r8, r9, r10, r11}  \n\t" \
  "smlad  %[a2], %[t1], r8, %[a2]      \n\t" \
  "smlad  %[a2], %[t0], r9, %[a2]      \n\t" \
  "smlad  %[a3], %[t1], r10, %[a3]     \n\t" \
  "smlad  %[a3], %[t0], r11, %[a3]     \n\t"
#define SER_GROUP "ldr    %[t0], [%[w]], #4            \n\t" SER_GROUP_BODY
#define SER_DOT_OPERANDS                                                                                  \
  : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [w] "+r"(w), [col] "+r"(col), [n] "+r"(n), \
    [t0] "+r"(t0), [t1] "=&r"(t1)                                                                         \
  :                                                                                                        \
  : "r8", "r9", "r10", "r11", "cc", "memory"
#endif

/* The dot products of filter row w (k values) with the four pixels' columns, added to acc. */
static inline void dot_1x4(const int8_t *w, const int16_t *col, int k, int32_t acc[SER_PIXELS]) {
  int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  const int groups = k / 4, rest = k % 4;
#if SER_SIMD
  uint32_t t0 = 0, t1;
  int n = groups % 4;
  for (; n > 0; n--) __asm__ volatile(SER_GROUP SER_DOT_OPERANDS);
  n = groups / 4;
  if (n > 0) {
    __asm__ volatile(
        "1:                 \n\t" SER_GROUP SER_GROUP SER_GROUP SER_GROUP
        "subs   %[n], %[n], #1 \n\t"
        "bne    1b          \n\t" SER_DOT_OPERANDS);
  }
  if (rest) {
    /* The last, partial group: the filter bytes past the row are taken as 0 (their columns are 0
     * too, but reading them could leave the filter's end). */
    t0 = (uint8_t)w[0];
    if (rest > 1) t0 |= (uint32_t)(uint8_t)w[1] << 8;
    if (rest > 2) t0 |= (uint32_t)(uint8_t)w[2] << 16;
    __asm__ volatile(SER_GROUP_BODY SER_DOT_OPERANDS);
  }
#else
  static const uint8_t kOrder[4] = {0, 2, 1, 3};
  for (int g = 0; g < groups + (rest != 0); g++, w += 4, col += 4 * SER_PIXELS) {
    for (int j = 0; j < (g < groups ? 4 : rest); j++) {
      a0 += w[j] * col[kOrder[j]];
      a1 += w[j] * col[4 + kOrder[j]];
      a2 += w[j] * col[8 + kOrder[j]];
      a3 += w[j] * col[12 + kOrder[j]];
    }
  }
#endif
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
}

static inline int8_t clamp(int32_t v, int32_t lo, int32_t hi) { return (int8_t)(v < lo ? lo : (v > hi ? hi : v)); }

/* The rounding constant of a right shift by r. SER_BREAK_ROUNDING drops it (truncation instead of
 * rounding), only so that tests/test_kernels.py can show that it notices. */
#ifdef SER_BREAK_ROUNDING
#define SER_HALF(r) 0
#else
#define SER_HALF(r) ((int32_t)((1u << (r)) >> 1))
#endif

/* The largest right shift for which ser_conv_s8's folded output offset cannot overflow. */
#define SER_FOLD_SHIFT_MAX 22

/* True if the fast requantization is exact for the whole layer: right shifts of at most
 * SER_FOLD_SHIFT_MAX only, and no accumulator can reach 2^30 (|filter| <= 128, |input + offset|
 * <= 255, plus the bias). */
static int right_shifts_suffice(const ser_conv_s8_params *p, const int32_t *shift, const int32_t *bias) {
  int64_t bias_max = 0;
  for (int c = 0; c < p->out_c; c++) {
    if (shift[c] > -1 || shift[c] < -SER_FOLD_SHIFT_MAX) return 0;
    const int64_t b = bias ? (bias[c] < 0 ? -(int64_t)bias[c] : bias[c]) : 0;
    bias_max = b > bias_max ? b : bias_max;
  }
  return (int64_t)p->k_h * p->k_w * p->in_c * 128 * 255 + bias_max < (1LL << 30);
}

static inline uint32_t pack16(int32_t lo16, int32_t hi16) {
  return (uint32_t)(uint16_t)lo16 | (uint32_t)(uint16_t)hi16 << 16;
}

/* The 1-channel path's records (see SER_C1_RECORD), filter values and bias doubled so that the
 * sums come out doubled, as SMMULR wants them (|acc| < 2^30: right_shifts_suffice). */
static void c1_records(const ser_conv_s8_params *p, const int32_t *multiplier, const int32_t *shift,
                       const int8_t *filter, const int32_t *bias, int32_t *rec) {
  const int k = p->k_h * p->k_w;
  for (int oc = 0; oc < p->out_c; oc++, filter += k) {
    int32_t w[2 * SER_C1_PAIRS] = {0};
    for (int i = 0; i < k; i++) w[i] = 2 * filter[i];
    const int32_t r = -shift[oc];
    *rec++ = 2 * (bias ? bias[oc] : 0);
    for (int j = 0; j < SER_C1_PAIRS; j++) *rec++ = (int32_t)pack16(w[2 * j], w[2 * j + 1]);
    *rec++ = multiplier[oc];
    *rec++ = SER_HALF(r) + (int32_t)((uint32_t)p->output_offset << r);
    *rec++ = r;
  }
}

/* Output pixel (oy, ox)'s K values plus the input offset (padding: 0) as 5 int16 pairs. */
static void c1_gather(const ser_conv_s8_params *p, const int8_t *image, int oy, int ox, uint32_t px[SER_C1_PAIRS]) {
  const int32_t off = p->input_offset;
  const int y0 = oy * p->stride_h - p->pad_h, x0 = ox * p->stride_w - p->pad_w;
  const int w = p->in_w;
  if (p->k_h == 3 && p->k_w == 3 && p->dilation_h == 1 && p->dilation_w == 1 && y0 >= 0 && y0 + 3 <= p->in_h &&
      x0 >= 0 && x0 + 3 <= w) { /* the common case, inside the image */
    const int8_t *r0 = image + (size_t)y0 * w + x0, *r1 = r0 + w, *r2 = r1 + w;
    px[0] = pack16(r0[0] + off, r0[1] + off);
    px[1] = pack16(r0[2] + off, r1[0] + off);
    px[2] = pack16(r1[1] + off, r1[2] + off);
    px[3] = pack16(r2[0] + off, r2[1] + off);
    px[4] = pack16(r2[2] + off, 0);
    return;
  }
  int32_t v[2 * SER_C1_PAIRS] = {0};
  for (int ky = 0, i = 0; ky < p->k_h; ky++) {
    const int y = y0 + ky * p->dilation_h;
    for (int kx = 0; kx < p->k_w; kx++, i++) {
      const int x = x0 + kx * p->dilation_w;
      if (y >= 0 && y < p->in_h && x >= 0 && x < w) v[i] = image[(size_t)y * w + x] + off;
    }
  }
  for (int j = 0; j < SER_C1_PAIRS; j++) px[j] = pack16(v[2 * j], v[2 * j + 1]);
}

#if SER_SIMD
/* One pixel, all channels: out[0 .. out_end - out) from the records, the pixel's pairs in r4-r8.
 * Per channel: LDM of bias and filter, 5 SMLAD, LDM of the constants, SMMULR, the rounding
 * (fold, then the sign), the shift, SSAT to int8, store: 15 instructions. */
__attribute__((naked, noinline)) static void c1_pixel(const int32_t *rec, const uint32_t *px, int8_t *out,
                                                      int8_t *out_end) {
  (void)rec, (void)px, (void)out, (void)out_end;
  __asm__ volatile(
      "push   {r4-r11, lr}                     \n\t"
      "ldm    r1, {r4, r5, r6, r7, r8}         \n\t" /* the pixel's 5 pairs */
      "1:                                      \n\t"
      "ldmia  r0!, {r1, r9, r10, r11, r12, lr} \n\t" /* 2 bias, 5 filter pairs */
      "smlad  r1, r4, r9, r1                   \n\t"
      "smlad  r1, r5, r10, r1                  \n\t"
      "smlad  r1, r6, r11, r1                  \n\t"
      "smlad  r1, r7, r12, r1                  \n\t"
      "smlad  r1, r8, lr, r1                   \n\t"
      "ldmia  r0!, {r9, r10, r11}              \n\t" /* multiplier, rounding constant, shift */
      "smmulr r1, r1, r9                       \n\t"
      "add    r10, r10, r1                     \n\t"
      "add    r1, r10, r1, asr #31             \n\t"
      "asr    r1, r1, r11                      \n\t"
      "ssat   r1, #8, r1                       \n\t"
      "strb   r1, [r2], #1                     \n\t"
      "cmp    r2, r3                           \n\t"
      "bne    1b                               \n\t"
      "pop    {r4-r11, pc}                     \n\t");
}
#else
/* The same arithmetic in C (hosts without the DSP extension). */
static void c1_pixel(const int32_t *rec, const uint32_t *px, int8_t *out, int8_t *out_end) {
  for (; out != out_end; out++) {
    int32_t acc = *rec++;
    for (int j = 0; j < SER_C1_PAIRS; j++, rec++) {
      const uint32_t w = (uint32_t)*rec;
      acc += (int16_t)(px[j] & 0xFFFFu) * (int16_t)(w & 0xFFFFu) + (int16_t)(px[j] >> 16) * (int16_t)(w >> 16);
    }
    const int32_t high = (int32_t)(((int64_t)acc * rec[0] + (1LL << 31)) >> 32); /* SMMULR */
    const int32_t v = (high + rec[1] + (high >> 31)) >> rec[2];
    rec += 3;
    *out = (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
  }
}
#endif

/* Two int16 lanes: lo16 at the bottom, hi16 at the top. */
static inline uint32_t lanes(int32_t lo16, int32_t hi16) { return ((uint32_t)lo16 & 0xFFFFu) | (uint32_t)hi16 << 16; }

static void conv_c1(const ser_conv_s8_params *p, const int32_t *multiplier, const int32_t *shift, const int8_t *input,
                    const int8_t *filter, const int32_t *bias, int8_t *output, int32_t *rec) {
  c1_records(p, multiplier, shift, filter, bias, rec);
  /* The shape in locals: the assembly call would otherwise have them reloaded on every pixel. */
  const int out_c = p->out_c, out_h = p->out_h, out_w = p->out_w, in_h = p->in_h, in_w = p->in_w;
  const int stride_h = p->stride_h, stride_w = p->stride_w, pad_h = p->pad_h, pad_w = p->pad_w;
  const int window3 = p->k_h == 3 && p->k_w == 3 && p->dilation_h == 1 && p->dilation_w == 1;
#if SER_SIMD
  const uint32_t off2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x10001u;
#endif
  for (int b = 0; b < p->batches; b++) {
    const int8_t *image = input + (size_t)b * in_h * in_w;
    int8_t *out = output + (size_t)b * out_h * out_w * out_c;
    for (int oy = 0; oy < out_h; oy++) {
      const int y0 = oy * stride_h - pad_h;
      const int rows_inside = window3 && y0 >= 0 && y0 + 3 <= in_h;
      const int8_t *rows = image + (size_t)(rows_inside ? y0 : 0) * in_w;
      for (int ox = 0; ox < out_w; ox++, out += out_c) {
        uint32_t px[SER_C1_PAIRS];
        const int x0 = ox * stride_w - pad_w;
#if SER_SIMD
        if (rows_inside && x0 >= 0 && x0 + 3 <= in_w) { /* the common case: 9 loads, 5 SADD16 */
          const int8_t *r0 = rows + x0, *r1 = r0 + in_w, *r2 = r1 + in_w;
          px[0] = __sadd16(lanes(r0[0], r0[1]), off2);
          px[1] = __sadd16(lanes(r0[2], r1[0]), off2);
          px[2] = __sadd16(lanes(r1[1], r1[2]), off2);
          px[3] = __sadd16(lanes(r2[0], r2[1]), off2);
          px[4] = __sadd16(lanes(r2[2], 0), off2 & 0xFFFFu);
        } else {
          c1_gather(p, image, oy, ox, px);
        }
#else
        (void)x0, (void)rows;
        c1_gather(p, image, oy, ox, px);
#endif
        c1_pixel(rec, px, out, out + out_c);
      }
    }
  }
}

void ser_conv_s8(const ser_conv_s8_params *p, const int32_t *multiplier, const int32_t *shift, const int8_t *input,
                 const int8_t *filter, const int32_t *bias, int8_t *output, int16_t *scratch) {
  const int k = p->k_h * p->k_w * p->in_c;
  const int pixels = p->out_h * p->out_w;
  const int out_c = p->out_c;
  const int32_t offset = p->output_offset, lo = p->act_min, hi = p->act_max;
  const int fast = right_shifts_suffice(p, shift, bias);
  if (fast && c1_shape(p) && lo == -128 && hi == 127 && out_c > 0) {
    conv_c1(p, multiplier, shift, input, filter, bias, output, (int32_t *)(void *)scratch);
    return;
  }
  int8_t *bytes = (int8_t *)scratch + pair_bytes(k);
  /* The padded tail of a partial last group is never gathered: zero it once. */
  if (k % 4 != 0) memset(scratch + SER_PIXELS * (k & ~3), 0, 4 * SER_PIXELS * sizeof(int16_t));
  for (int b = 0; b < p->batches; b++) {
    const int8_t *image = input + (size_t)b * p->in_h * p->in_w * p->in_c;
    int8_t *out = output + (size_t)b * pixels * out_c;
    for (int px = 0; px < pixels; px += SER_PIXELS) {
      /* Past the last pixel, slots repeat it: same columns, so the same values written again. */
      int8_t *o[SER_PIXELS];
      for (int s = 0; s < SER_PIXELS; s++) {
        const int q = px + s < pixels ? px + s : pixels - 1;
        gather(p, image, q / p->out_w, q % p->out_w, scratch, s, bytes);
        o[s] = out + (size_t)q * out_c;
      }
      int8_t *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
      const int8_t *w = filter;
      for (int oc = 0; oc < out_c; oc++, w += k) {
        const int32_t b0 = bias ? bias[oc] : 0;
        int32_t acc[SER_PIXELS] = {b0, b0, b0, b0};
        dot_1x4(w, scratch, k, acc);
        if (fast) {
          /* (high + half + sign) >> r, plus the output offset folded in as offset << r; written
           * out per pixel so that the sums stay in registers. */
          const int32_t m = multiplier[oc], r = -shift[oc];
          const int32_t fold = SER_HALF(r) + (int32_t)((uint32_t)offset << r);
          o3[oc] = clamp(ser_requantize_fast(acc[3], m, r, fold), lo, hi);
          o2[oc] = clamp(ser_requantize_fast(acc[2], m, r, fold), lo, hi);
          o1[oc] = clamp(ser_requantize_fast(acc[1], m, r, fold), lo, hi);
          o0[oc] = clamp(ser_requantize_fast(acc[0], m, r, fold), lo, hi);
        } else {
          for (int s = SER_PIXELS - 1; s >= 0; s--) {
            o[s][oc] = clamp(ser_requantize(acc[s], multiplier[oc], shift[oc]) + offset, lo, hi);
          }
        }
      }
    }
  }
}
