/* int8 convolution as im2col + a register-blocked matrix multiply on the DSP extension.
 *
 * A block of output pixels is processed together: their receptive fields are gathered ("im2col")
 * into a scratch buffer as int16 values with the input offset already added (padding becomes 0,
 * which is what TFLM's reference does by skipping it). Then, for one output channel at a time, a
 * dot product over K = k_h * k_w * in_c per pixel runs with SMLAD, which multiplies and adds two
 * int16 pairs in one instruction. Filter bytes are widened with SXTB16, which yields bytes 0 and 2
 * (or, rotated by 8, bytes 1 and 3) of a word; the columns are stored in that same order, so no
 * reordering happens in the inner loop. One widened filter word serves every pixel of the block
 * (two channels x two pixels would need more registers than there are).
 *
 * Column layout (int16), for a block of P pixels: for each group g of 4 values, 4 x P entries
 *   [pixel0: x0 x2 x1 x3][pixel1: ...] ... [pixel P-1: ...]
 * and when K % 4 != 0 the last group is zero-padded (the padding is zeroed once per call). When
 * in_c is not a multiple of 4 (a first layer on 1-channel features), a pixel's receptive field is
 * first copied as bytes (K, after the column buffer) so that it converts 4 values at a time.
 *
 * Where K is whole groups of 4, every channel has a bias, the fast requantization is exact and the
 * activation range is the whole of int8, the loop over output channels of a 6-pixel block is one
 * assembly function (conv_block): the unrolled group loop entered Duff-style, the requantization
 * and the stores, with nothing spilled around it. Other layers take 4-pixel blocks in C (dot_1x4).
 *
 * One input channel with K <= 10 (a 3x3 first layer on 1-channel features) has a path of its own
 * (conv_c1 below): the filters, widened once per call, and the per-channel constants go into
 * scratch as one record per output channel; per output pixel, its K values (5 int16 pairs) stay in
 * registers while a loop over the channels loads each record with two LDMs and runs 5 SMLADs and
 * the requantization and SSAT: 15 instructions per output. A run of 3x3 windows inside the image
 * is gathered in the same assembly function (c1_row), pixel after pixel. It takes layers whose
 * activation range is the whole of int8 (no activation, or ReLU with the output zero point at
 * -128, as the converter makes it); others go the general way.
 */
#include "ser_conv_s8.h"

#include <string.h>

#include "ser_requantize.h"

#if defined(__ARM_FEATURE_SIMD32) && __ARM_FEATURE_SIMD32
#include <arm_acle.h>
#define SER_SIMD 1
/* SXTB16 of x rotated right by 8 (bytes 1 and 3), one instruction: GCC does not fuse the rotation. */
static inline uint32_t sxtb16_ror8(uint32_t x) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}
#else
#define SER_SIMD 0
#endif

/* Pixels computed together: each filter word, once widened, feeds this many columns. The C path
 * (dot_1x4) takes 4; the assembly channel loop (conv_block) takes 6, which fills every register. */
#define SER_PIXELS 4
#define SER_WIDE 6

/* Groups of 4 K values, the last one zero-padded when K % 4 != 0; each holds 4 values per pixel. */
static size_t pair_bytes(int k, int pixels) { return (size_t)((k + 3) / 4) * 4 * (size_t)pixels * sizeof(int16_t); }

/* True if conv_block may take the layer (it needs the bias and the fast requantization too):
 * whole groups of 4 and the whole int8 range. */
static int wide_shape(const ser_conv_s8_params *p, int k) {
  return SER_SIMD && k >= 4 && k % 4 == 0 && p->act_min == -128 && p->act_max == 127;
}

/* The 1-channel path: K <= 2 * SER_C1_PAIRS values per pixel, one record per output channel of
 * {2 bias, 5 pairs of 2 filter values, multiplier, rounding constant, right shift}. */
#define SER_C1_PAIRS 5
#define SER_C1_RECORD (1 + SER_C1_PAIRS + 3)

static int c1_shape(const ser_conv_s8_params *p) { return p->in_c == 1 && p->k_h * p->k_w <= 2 * SER_C1_PAIRS; }

size_t ser_conv_s8_scratch_bytes(const ser_conv_s8_params *p) {
  const int k = p->k_h * p->k_w * p->in_c;
  const size_t general = pair_bytes(k, wide_shape(p, k) ? SER_WIDE : SER_PIXELS) + (p->in_c % 4 != 0 ? (size_t)k : 0u);
  const size_t c1 = c1_shape(p) ? (size_t)p->out_c * SER_C1_RECORD * sizeof(int32_t) : 0u;
  return general > c1 ? general : c1;
}

/* Where natural index k of the receptive field lives in a column buffer of `pixels` pixels, for
 * pixel `slot`. */
static inline int16_t *column_entry(int16_t *pair, int pixels, int slot, int k) {
  static const uint8_t kOrder[4] = {0, 2, 1, 3}; /* SXTB16 order: bytes 0, 2, then 1, 3 */
  return pair + pixels * (k & ~3) + 4 * slot + kOrder[k & 3];
}

/* Stores n input values (plus offset) at natural indices k.. of pixel `slot`'s column. */
static void put_values(int16_t *pair, int pixels, int slot, int k, const int8_t *src, int n, int32_t offset) {
  for (; n > 0 && (k & 3) != 0; k++, src++, n--) *column_entry(pair, pixels, slot, k) = (int16_t)(*src + offset);
#if SER_SIMD
  const uint32_t offset2 = ((uint32_t)offset & 0xFFFFu) * 0x10001u;
  uint32_t *dst = (uint32_t *)(void *)(pair + pixels * k + 4 * slot);
  const int step = 2 * pixels; /* words from a group's two words to the next group's */
#pragma GCC unroll 2
  for (; n >= 4; k += 4, src += 4, n -= 4, dst += step) {
    uint32_t word;
    memcpy(&word, src, 4); /* one unaligned LDR */
    dst[0] = __sadd16(__sxtb16(word), offset2);
    dst[1] = __sadd16(sxtb16_ror8(word), offset2);
  }
#endif
  for (; n > 0; k++, src++, n--) *column_entry(pair, pixels, slot, k) = (int16_t)(*src + offset);
}

/* Stores n zeros (padding) at natural indices k.. of pixel `slot`'s column. */
static void put_zeros(int16_t *pair, int pixels, int slot, int k, int n) {
  for (; n > 0; k++, n--) *column_entry(pair, pixels, slot, k) = 0;
}

/* Gathers output pixel (oy, ox)'s receptive field into `slot` of a pair buffer of `pixels` pixels;
 * in_c % 4 != 0 goes through `bytes` (padding there is the input zero point, which the offset
 * turns into 0). */
static void gather(const ser_conv_s8_params *p, const int8_t *image, int oy, int ox, int16_t *pair, int pixels,
                   int slot, int8_t *bytes) {
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
        put_values(pair, pixels, slot, k, line + (size_t)x0 * c, row, p->input_offset);
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
        put_values(pair, pixels, slot, k + kx * c, line + (size_t)x * c, c, p->input_offset);
      } else {
        put_zeros(pair, pixels, slot, k + kx * c, c);
      }
    }
  }
  if (staged) put_values(pair, pixels, slot, 0, bytes, p->k_h * row, p->input_offset);
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

#if SER_SIMD
/* The general path's channel loop in one assembly function, for layers where K is whole groups of
 * 4, every channel has a bias, the fast requantization is exact and the activation range is the
 * whole of int8 (SSAT is the clamp). It computes SER_WIDE = 6 pixels at once: the six sums, the
 * widened filter word and one LDM's four column words take every register but sp and pc, so one
 * filter word feeds 24 MACs for 3 instructions (LDR, two SXTB16) and three LDMs: 24 MACs in 18
 * instructions, against 16 in 13 with four pixels, and the work per channel outside the groups
 * (bias, requantization, stores, about 70 instructions) is shared by six pixels instead of four.
 * The group loop is unrolled SER_UNROLL deep and entered Duff-style, groups % SER_UNROLL groups
 * before its end, through an address computed once per call (each group is 18 32-bit
 * instructions, 72 bytes); no register is left for a counter, so a pass ends by comparing the
 * column pointer with the columns' end. Per channel and block: the bias into the six sums, the
 * groups, then the requantization as ser_requantize_fast (SMMULR of 2 x sum, the fold, the sign,
 * the shift) with fold = (2 x offset + 1) << (r - 1), which is half + offset << r, and SSAT and
 * six byte stores. The state lives in a frame on the stack, laid out as struct block_ctx. */
#define SER_UNROLL 8
#define SER_GROUP_BYTES 72

typedef struct {
  const int32_t *multiplier;   /* sp + 0: advancing, one per channel */
  const int32_t *shift;        /* sp + 4 */
  int32_t fold_base;           /* sp + 8: 2 x output offset + 1 (without the 1: SER_BREAK_ROUNDING) */
  const int32_t *bias;         /* sp + 12: advancing */
  int8_t *out;                 /* sp + 16: pixel 0's output, at the current channel */
  int32_t d[SER_WIDE - 1];     /* sp + 20..36: pixels 1-5's outputs less pixel 0's */
  int8_t *out_end;             /* sp + 40: pixel 0's output past the last channel */
  const int16_t *columns;      /* sp + 44 */
  const int16_t *columns_end;  /* sp + 48 */
  int32_t skip;                /* sp + 52: bytes of the unrolled loop to skip on entry; then the entry */
} block_ctx;

#define SER_STR_(x) #x
#define SER_STR(x) SER_STR_(x)
/* w in r0, columns in r1, the filter word t0/t1 in r2/r3, the six sums in r4-r7, r12 and lr,
 * columns loaded into r8-r11. The .w forms keep every instruction 32 bits wide, so that a group is
 * SER_GROUP_BYTES long. */
#define SER_BLOCK_GROUP                  \
  "ldr.w   r2, [r0], #4            \n\t" \
  "sxtb16  r3, r2                  \n\t" \
  "sxtb16  r2, r2, ror #8          \n\t" \
  "ldmia.w r1!, {r8, r9, r10, r11} \n\t" \
  "smlad   r4, r3, r8, r4          \n\t" \
  "smlad   r4, r2, r9, r4          \n\t" \
  "smlad   r5, r3, r10, r5         \n\t" \
  "smlad   r5, r2, r11, r5         \n\t" \
  "ldmia.w r1!, {r8, r9, r10, r11} \n\t" \
  "smlad   r6, r3, r8, r6          \n\t" \
  "smlad   r6, r2, r9, r6          \n\t" \
  "smlad   r7, r3, r10, r7         \n\t" \
  "smlad   r7, r2, r11, r7         \n\t" \
  "ldmia.w r1!, {r8, r9, r10, r11} \n\t" \
  "smlad   r12, r3, r8, r12        \n\t" \
  "smlad   r12, r2, r9, r12        \n\t" \
  "smlad   lr, r3, r10, lr         \n\t" \
  "smlad   lr, r2, r11, lr         \n\t"
/* One output: sum in `a`, multiplier in r8, fold in r3, shift in r9, r1 a temporary. */
#define SER_BLOCK_REQUANTIZE(a)                  \
  "add     " a ", " a ", " a "             \n\t" \
  "smmulr  " a ", " a ", r8                \n\t" \
  "add     r1, " a ", r3                   \n\t" \
  "add     " a ", r1, " a ", asr #31       \n\t" \
  "asr     " a ", " a ", r9                \n\t" \
  "ssat    " a ", #8, " a "                \n\t"

__attribute__((naked, noinline)) static void conv_block(const block_ctx *ctx, const int8_t *w) {
  (void)ctx, (void)w;
  __asm__ volatile(
      "push    {r4-r11, lr}                 \n\t"
      "sub     sp, sp, #56                  \n\t"
      "ldm     r0!, {r2-r12, lr}            \n\t" /* the context onto the stack: 12 words, */
      "stm     sp, {r2-r12, lr}             \n\t"
      "ldm     r0, {r2, r3}                 \n\t" /* then columns_end and skip */
      "adr     r12, 3f                      \n\t" /* the entry: past `skip` bytes, Thumb bit set */
      "add     r3, r12, r3                  \n\t"
      "orr     r3, r3, #1                   \n\t"
      "strd    r2, r3, [sp, #48]            \n\t"
      "mov     r0, r1                       \n\t" /* w: rows follow each other, K bytes apart */
      "b       4f                           \n\t"
      ".p2align 2                           \n\t"
      "3:                                   \n\t"
      ".rept " SER_STR(SER_UNROLL) "        \n\t" SER_BLOCK_GROUP ".endr \n\t"
      "ldr     r2, [sp, #48]                \n\t" /* columns_end */
      "cmp     r1, r2                       \n\t"
      "bne     3b                           \n\t"
      /* The channel's constants: multiplier, shift (-r), fold. */
      "ldm     sp, {r1, r2, r3}             \n\t"
      "ldr     r8, [r1], #4                 \n\t"
      "ldr     r9, [r2], #4                 \n\t"
      "stm     sp, {r1, r2}                 \n\t"
      "mvn     r1, r9                       \n\t" /* r - 1 */
      "lsl     r3, r3, r1                   \n\t"
      "rsb     r9, r9, #0                   \n\t" SER_BLOCK_REQUANTIZE("r4") SER_BLOCK_REQUANTIZE("r5")
          SER_BLOCK_REQUANTIZE("r6") SER_BLOCK_REQUANTIZE("r7") SER_BLOCK_REQUANTIZE("r12") SER_BLOCK_REQUANTIZE("lr")
      "add     r11, sp, #16                 \n\t"
      "ldm     r11, {r1, r2, r3, r8, r9, r10} \n\t" /* out, d1-d5 */
      "strb    r5, [r1, r2]                 \n\t"
      "strb    r6, [r1, r3]                 \n\t"
      "strb    r7, [r1, r8]                 \n\t"
      "strb    r12, [r1, r9]                \n\t"
      "strb    lr, [r1, r10]                \n\t"
      "strb    r4, [r1], #1                 \n\t"
      "ldr     r11, [sp, #40]               \n\t"
      "str     r1, [sp, #16]                \n\t"
      "cmp     r1, r11                      \n\t"
      "beq     5f                           \n\t"
      "4:                                   \n\t" /* the next channel: bias into the sums */
      "ldr     r12, [sp, #12]               \n\t"
      "ldr     r4, [r12], #4                \n\t"
      "str     r12, [sp, #12]               \n\t"
      "mov     r5, r4                       \n\t"
      "mov     r6, r4                       \n\t"
      "mov     r7, r4                       \n\t"
      "mov     r12, r4                      \n\t"
      "mov     lr, r4                       \n\t"
      "ldr     r1, [sp, #44]                \n\t" /* columns */
      "ldr     pc, [sp, #52]                \n\t"
      "5:                                   \n\t"
      "add     sp, sp, #56                  \n\t"
      "pop     {r4-r11, pc}                 \n\t");
}
#endif

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
/* The channel loop over the records for one pixel whose pairs are in r4-r8: out[r2 .. r3) from the
 * records at r0. Per channel: LDM of bias and filter, 5 SMLAD, LDM of the constants, SMMULR, the
 * rounding (fold, then the sign), the shift, SSAT to int8, store: 15 instructions. */
#define SER_C1_CHANNELS                            \
  "1:                                      \n\t" \
  "ldmia  r0!, {r1, r9, r10, r11, r12, lr} \n\t" \
  "smlad  r1, r4, r9, r1                   \n\t" \
  "smlad  r1, r5, r10, r1                  \n\t" \
  "smlad  r1, r6, r11, r1                  \n\t" \
  "smlad  r1, r7, r12, r1                  \n\t" \
  "smlad  r1, r8, lr, r1                   \n\t" \
  "ldmia  r0!, {r9, r10, r11}              \n\t" \
  "smmulr r1, r1, r9                       \n\t" \
  "add    r10, r10, r1                     \n\t" \
  "add    r1, r10, r1, asr #31             \n\t" \
  "asr    r1, r1, r11                      \n\t" \
  "ssat   r1, #8, r1                       \n\t" \
  "strb   r1, [r2], #1                     \n\t" \
  "cmp    r2, r3                           \n\t" \
  "bne    1b                               \n\t"

/* One pixel, all channels: out[0 .. out_end - out) from the records, the pixel's pairs in r4-r8. */
__attribute__((naked, noinline)) static void c1_pixel(const int32_t *rec, const uint32_t *px, int8_t *out,
                                                      int8_t *out_end) {
  (void)rec, (void)px, (void)out, (void)out_end;
  __asm__ volatile(
      "push   {r4-r11, lr}                     \n\t"
      "ldm    r1, {r4, r5, r6, r7, r8}         \n\t" /* the pixel's 5 pairs */
      SER_C1_CHANNELS
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

/* A run of output pixels whose 3x3 windows lie inside the image (no dilation), for c1_row: `src` is
 * the first window's top-left input byte, the windows `stride` bytes apart, `in_w` bytes a row. */
typedef struct {
  const int8_t *src;  /* sp + 0: advancing by stride per pixel */
  int32_t in_w;       /* sp + 4 */
  int32_t stride;     /* sp + 8 */
  int32_t pixels;     /* sp + 12: counting down */
  uint32_t off2;      /* sp + 16: the input offset in both int16 lanes */
  const int32_t *rec; /* sp + 20: the records (c1_records) */
  int8_t *out;        /* sp + 24: the first pixel's outputs; a pixel's out_c outputs follow the last's */
  int32_t out_c;      /* sp + 28 */
} c1_run;

#if SER_SIMD
/* c1_run's pixels, all channels: per pixel, its 9 values are loaded (LDRSB), paired (PKHBT) and
 * offset (SADD16) into r4-r8, then c1_pixel's channel loop runs; about 30 instructions a pixel
 * besides the channel loop, with no call and no spills per pixel (docs/kernels.md: measured). */
__attribute__((naked, noinline)) static void c1_row(const c1_run *run) {
  (void)run;
  __asm__ volatile(
      "push   {r4-r11, lr}                     \n\t"
      "sub    sp, sp, #32                      \n\t"
      "ldm    r0, {r1-r8}                      \n\t" /* the run onto the stack */
      "stm    sp, {r1-r8}                      \n\t"
      "mov    r2, r7                           \n\t" /* out: each pixel's outputs follow the last's */
      "2:                                      \n\t"
      "ldrd   r0, r1, [sp]                     \n\t" /* src, in_w */
      "ldrsb  r4, [r0]                         \n\t"
      "ldrsb  r9, [r0, #1]                     \n\t"
      "ldrsb  r5, [r0, #2]                     \n\t"
      "add    r3, r0, r1                       \n\t"
      "ldrsb  r10, [r3]                        \n\t"
      "ldrsb  r6, [r3, #1]                     \n\t"
      "ldrsb  r11, [r3, #2]                    \n\t"
      "add    r3, r3, r1                       \n\t"
      "ldrsb  r7, [r3]                         \n\t"
      "ldrsb  r12, [r3, #1]                    \n\t"
      "ldrsb  r8, [r3, #2]                     \n\t"
      "pkhbt  r4, r4, r9, lsl #16              \n\t" /* (x0, x1) */
      "pkhbt  r5, r5, r10, lsl #16             \n\t" /* (x2, x3) */
      "pkhbt  r6, r6, r11, lsl #16             \n\t" /* (x4, x5) */
      "pkhbt  r7, r7, r12, lsl #16             \n\t" /* (x6, x7) */
      "ldr    r9, [sp, #16]                    \n\t" /* off2 */
      "sadd16 r4, r4, r9                       \n\t"
      "sadd16 r5, r5, r9                       \n\t"
      "sadd16 r6, r6, r9                       \n\t"
      "sadd16 r7, r7, r9                       \n\t"
      "sadd16 r8, r8, r9                       \n\t"
      "uxth   r8, r8                           \n\t" /* (x8, 0) */
      "ldr    r1, [sp, #8]                     \n\t" /* the next window */
      "add    r0, r0, r1                       \n\t"
      "str    r0, [sp]                         \n\t"
      "ldr    r0, [sp, #20]                    \n\t" /* rec */
      "ldr    r3, [sp, #28]                    \n\t"
      "add    r3, r2, r3                       \n\t" /* out_end */
      SER_C1_CHANNELS
      "ldr    r1, [sp, #12]                    \n\t"
      "subs   r1, r1, #1                       \n\t"
      "str    r1, [sp, #12]                    \n\t"
      "bne    2b                               \n\t"
      "add    sp, sp, #32                      \n\t"
      "pop    {r4-r11, pc}                     \n\t");
}
#else
/* The same in C (hosts without the DSP extension). */
static void c1_row(const c1_run *run) {
  const int8_t *src = run->src;
  int8_t *out = run->out;
  const int32_t off = (int16_t)(run->off2 & 0xFFFFu), w = run->in_w;
  for (int i = 0; i < run->pixels; i++, src += run->stride, out += run->out_c) {
    const int8_t *r0 = src, *r1 = r0 + w, *r2 = r1 + w;
    const uint32_t px[SER_C1_PAIRS] = {pack16(r0[0] + off, r0[1] + off), pack16(r0[2] + off, r1[0] + off),
                                       pack16(r1[1] + off, r1[2] + off), pack16(r2[0] + off, r2[1] + off),
                                       pack16(r2[2] + off, 0)};
    c1_pixel(run->rec, px, out, out + run->out_c);
  }
}
#endif

/* The output columns [*lo, *hi) whose windows of k_w columns, dilation 1, lie inside the image. */
static void inside_columns(const ser_conv_s8_params *p, int k_w, int *lo, int *hi) {
  const int first = (p->pad_w + p->stride_w - 1) / p->stride_w;
  const int room = p->in_w - k_w + p->pad_w; /* x0 = ox * stride - pad <= in_w - k_w */
  const int last = room >= 0 ? room / p->stride_w + 1 : 0;
  *lo = first < p->out_w ? first : p->out_w;
  *hi = last < p->out_w ? last : p->out_w;
  if (*hi < *lo) *hi = *lo;
}

/* Output pixels [from, to) of row oy one by one through the C gather: the windows that reach the
 * padding, and every window of a layer c1_row does not take. */
static void c1_pixels(const ser_conv_s8_params *p, const int8_t *image, int oy, int from, int to, const int32_t *rec,
                      int8_t *out) {
  for (int ox = from; ox < to; ox++) {
    uint32_t px[SER_C1_PAIRS];
    c1_gather(p, image, oy, ox, px);
    c1_pixel(rec, px, out + (size_t)ox * p->out_c, out + (size_t)(ox + 1) * p->out_c);
  }
}

static void conv_c1(const ser_conv_s8_params *p, const int32_t *multiplier, const int32_t *shift, const int8_t *input,
                    const int8_t *filter, const int32_t *bias, int8_t *output, int32_t *rec) {
  c1_records(p, multiplier, shift, filter, bias, rec);
  const int out_c = p->out_c, out_h = p->out_h, out_w = p->out_w, in_h = p->in_h, in_w = p->in_w;
  const int window3 = p->k_h == 3 && p->k_w == 3 && p->dilation_h == 1 && p->dilation_w == 1;
  int lo = 0, hi = 0; /* the columns c1_row takes, in rows whose windows are inside too */
  if (window3) inside_columns(p, 3, &lo, &hi);
  c1_run run = {.in_w = in_w, .stride = p->stride_w, .off2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x10001u,
                .rec = rec, .out_c = out_c};
  for (int b = 0; b < p->batches; b++) {
    const int8_t *image = input + (size_t)b * in_h * in_w;
    int8_t *out = output + (size_t)b * out_h * out_w * out_c;
    for (int oy = 0; oy < out_h; oy++, out += (size_t)out_w * out_c) {
      const int y0 = oy * p->stride_h - p->pad_h;
      const int rows_inside = window3 && y0 >= 0 && y0 + 3 <= in_h;
      const int run_lo = rows_inside ? lo : out_w, run_hi = rows_inside ? hi : out_w;
      c1_pixels(p, image, oy, 0, run_lo, rec, out);
      if (run_hi > run_lo) {
        run.src = image + (size_t)y0 * in_w + (run_lo * p->stride_w - p->pad_w);
        run.pixels = run_hi - run_lo;
        run.out = out + (size_t)run_lo * out_c;
        c1_row(&run);
      }
      c1_pixels(p, image, oy, run_hi, out_w, rec, out);
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
#if SER_SIMD
  /* conv_block's conditions (see there). */
  const int whole = fast && wide_shape(p, k) && bias != NULL && out_c > 0;
  block_ctx ctx;
  if (whole) {
    const int groups = k / 4;
#ifdef SER_BREAK_ROUNDING
    ctx.fold_base = (int32_t)(2u * (uint32_t)offset);
#else
    ctx.fold_base = (int32_t)(2u * (uint32_t)offset + 1u);
#endif
    ctx.columns = scratch;
    ctx.columns_end = scratch + (size_t)groups * 4 * SER_WIDE;
    ctx.skip = (SER_UNROLL - groups % SER_UNROLL) % SER_UNROLL * SER_GROUP_BYTES;
  }
#else
  const int whole = 0;
#endif
  const int block = whole ? SER_WIDE : SER_PIXELS;
  int8_t *bytes = (int8_t *)scratch + pair_bytes(k, block);
  /* The padded tail of a partial last group is never gathered: zero it once. */
  if (k % 4 != 0) memset(scratch + SER_PIXELS * (k & ~3), 0, 4 * SER_PIXELS * sizeof(int16_t));
  for (int b = 0; b < p->batches; b++) {
    const int8_t *image = input + (size_t)b * p->in_h * p->in_w * p->in_c;
    int8_t *out = output + (size_t)b * pixels * out_c;
    for (int px = 0; px < pixels; px += block) {
      /* Past the last pixel, slots repeat it: same columns, so the same values written again. */
      int8_t *o[SER_WIDE];
      for (int s = 0; s < block; s++) {
        const int q = px + s < pixels ? px + s : pixels - 1;
        gather(p, image, q / p->out_w, q % p->out_w, scratch, block, s, bytes);
        o[s] = out + (size_t)q * out_c;
      }
#if SER_SIMD
      if (whole) {
        ctx.multiplier = multiplier;
        ctx.shift = shift;
        ctx.bias = bias;
        ctx.out = o[0];
        ctx.out_end = o[0] + out_c;
        for (int s = 1; s < SER_WIDE; s++) ctx.d[s - 1] = (int32_t)(o[s] - o[0]);
        conv_block(&ctx, filter);
        continue;
      }
#endif
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
