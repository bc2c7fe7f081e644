/* Host check of firmware/kernels/ser_conv_s8.c (its portable C paths, no DSP extension): random
 * shapes against a direct convolution with TFLM's requantization written out as gemmlowp does it,
 * every output compared. Built and run by tests/test_kernels.py under AddressSanitizer, with the
 * scratch allocated at exactly ser_conv_s8_scratch_bytes(), so a write past it is caught.
 *
 *   cc -fsanitize=address,undefined -I firmware/kernels tests/conv_check.c firmware/kernels/ser_conv_s8.c
 *   ./a.out SHAPES SEED    (prints "ok N" or the first mismatch, exit code 2; 0 only if all match)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_conv_s8.h"

static uint64_t rng_state;
static uint32_t next(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}
static int uniform(int lo, int hi) { return lo + (int)(next() % (uint32_t)(hi - lo + 1)); } /* [lo, hi] */

/* gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT, as TFLM uses them. */
static int32_t srdhm(int32_t a, int32_t b) {
  if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
  const int64_t ab = (int64_t)a * b;
  const int64_t nudge = ab >= 0 ? (1ll << 30) : (1 - (1ll << 30));
  return (int32_t)((ab + nudge) / (1ll << 31));
}
static int32_t rdbpot(int32_t x, int e) {
  const int32_t mask = (int32_t)((1ll << e) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (remainder > threshold ? 1 : 0);
}
static int32_t requantize(int32_t acc, int32_t m, int32_t shift) {
  const int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  return rdbpot(srdhm(acc * (1 << left), m), right);
}

static void direct(const ser_conv_s8_params *p, const int32_t *m, const int32_t *s, const int8_t *in, const int8_t *w,
                   const int32_t *bias, int8_t *out) {
  for (int b = 0; b < p->batches; b++)
    for (int oy = 0; oy < p->out_h; oy++)
      for (int ox = 0; ox < p->out_w; ox++)
        for (int oc = 0; oc < p->out_c; oc++) {
          int32_t acc = 0;
          for (int ky = 0; ky < p->k_h; ky++)
            for (int kx = 0; kx < p->k_w; kx++) {
              const int y = oy * p->stride_h - p->pad_h + ky * p->dilation_h;
              const int x = ox * p->stride_w - p->pad_w + kx * p->dilation_w;
              if (y < 0 || y >= p->in_h || x < 0 || x >= p->in_w) continue;
              for (int c = 0; c < p->in_c; c++) {
                acc += w[((oc * p->k_h + ky) * p->k_w + kx) * p->in_c + c] *
                       (in[((b * p->in_h + y) * p->in_w + x) * p->in_c + c] + p->input_offset);
              }
            }
          if (bias) acc += bias[oc];
          int32_t v = requantize(acc, m[oc], s[oc]) + p->output_offset;
          v = v < p->act_min ? p->act_min : (v > p->act_max ? p->act_max : v);
          out[((b * p->out_h + oy) * p->out_w + ox) * p->out_c + oc] = (int8_t)v;
        }
}

int main(int argc, char **argv) {
  const int shapes = argc > 1 ? atoi(argv[1]) : 1000;
  rng_state = 0x9E3779B97F4A7C15ull ^ (uint64_t)(argc > 2 ? atoll(argv[2]) : 1);
  int c1 = 0;
  for (int t = 0; t < shapes; t++) {
    ser_conv_s8_params p;
    memset(&p, 0, sizeof p);
    const int one_channel = next() % 3 == 0; /* the 1-channel path (K <= 10) and its neighbours */
    p.batches = uniform(1, 2);
    p.in_c = one_channel ? 1 : uniform(1, 9);
    p.k_h = uniform(1, one_channel ? 4 : 5);
    p.k_w = uniform(1, one_channel ? 4 : 5);
    p.stride_h = uniform(1, 3);
    p.stride_w = uniform(1, 3);
    p.dilation_h = next() % 4 == 0 ? 2 : 1;
    p.dilation_w = next() % 4 == 0 ? 2 : 1;
    p.pad_h = uniform(0, p.k_h - 1);
    p.pad_w = uniform(0, p.k_w - 1);
    p.in_h = uniform(1, 12) + p.dilation_h * (p.k_h - 1);
    p.in_w = uniform(1, 12) + p.dilation_w * (p.k_w - 1);
    p.out_h = (p.in_h + 2 * p.pad_h - p.dilation_h * (p.k_h - 1) - 1) / p.stride_h + 1;
    p.out_w = (p.in_w + 2 * p.pad_w - p.dilation_w * (p.k_w - 1) - 1) / p.stride_w + 1;
    p.out_c = uniform(1, 30);
    p.input_offset = -uniform(-128, 127);
    p.output_offset = uniform(-128, 127);
    switch (next() % 3) {
      case 0: p.act_min = -128, p.act_max = 127; break;
      case 1: p.act_min = p.output_offset, p.act_max = 127; break; /* ReLU */
      default: p.act_min = uniform(-128, 0), p.act_max = uniform(1, 127); break;
    }
    const int k = p.k_h * p.k_w * p.in_c;
    if (p.in_c == 1 && p.k_h * p.k_w <= 10) c1++;
    const size_t n_in = (size_t)p.batches * p.in_h * p.in_w * p.in_c;
    const size_t n_out = (size_t)p.batches * p.out_h * p.out_w * p.out_c;
    int8_t *in = malloc(n_in), *w = malloc((size_t)p.out_c * k), *got = malloc(n_out), *want = malloc(n_out);
    int32_t *m = malloc(sizeof(int32_t) * p.out_c), *s = malloc(sizeof(int32_t) * p.out_c);
    int32_t *bias = next() % 5 == 0 ? NULL : malloc(sizeof(int32_t) * p.out_c);
    for (size_t i = 0; i < n_in; i++) in[i] = (int8_t)uniform(-128, 127);
    for (int i = 0; i < p.out_c * k; i++) w[i] = (int8_t)uniform(-128, 127);
    const int slow = next() % 6 == 0; /* shifts past 22 or to the left: the exact, general requantization */
    for (int c = 0; c < p.out_c; c++) {
      m[c] = (int32_t)((1u << 30) + (next() >> 2));
      s[c] = slow ? uniform(-31, 1) : uniform(-22, -1);
      if (bias) bias[c] = uniform(-50000, 50000);
    }
    const size_t scratch_bytes = ser_conv_s8_scratch_bytes(&p);
    int16_t *scratch = malloc(scratch_bytes); /* exactly what the kernel asks for */
    memset(got, 0x5A, n_out);
    ser_conv_s8(&p, m, s, in, w, bias, got, scratch);
    direct(&p, m, s, in, w, bias, want);
    for (size_t i = 0; i < n_out; i++) {
      if (got[i] != want[i]) {
        printf("mismatch in shape %d at output %zu: %d, expected %d (in %dx%dx%d, filter %dx%d, stride %d,%d, "
               "dilation %d,%d, pad %d,%d, out %dx%dx%d)\n",
               t, i, got[i], want[i], p.in_h, p.in_w, p.in_c, p.k_h, p.k_w, p.stride_h, p.stride_w, p.dilation_h,
               p.dilation_w, p.pad_h, p.pad_w, p.out_h, p.out_w, p.out_c);
        fflush(stdout);
        return 2;
      }
    }
    free(in), free(w), free(got), free(want), free(m), free(s), free(bias), free(scratch);
  }
  printf("ok %d shapes (%d on the 1-channel path's shape)\n", shapes, c1);
  return 0;
}
