/* The speech-emotion front end: see ser_frontend.h for the math, the twiddle layout and memory. */
#include "ser_frontend.h"

#include <string.h>

/* Cores with Thumb-2 (Cortex-M3 and up) reverse bits in one instruction (the FFT's permutation). */
#if defined(__ARM_ARCH_ISA_THUMB) && __ARM_ARCH_ISA_THUMB >= 2
#define SER_HAVE_RBIT 1
static inline uint32_t reverse_bits(uint32_t x) {
  uint32_t r;
  __asm__("rbit %0, %1" : "=r"(r) : "r"(x));
  return r;
}
#else
#define SER_HAVE_RBIT 0
#endif

#define SER_FE_MAGIC 0x53464531u /* "SFE1": the state was initialised */
#define PCM_FULL_SCALE 32768.0f
#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: (v + m) - m rounds |v| <= 2^22 half to even */
#define ROUND_LIMIT 4194304.0f  /* 2^22 */

static uint32_t float_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

static float bits_float(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* ln(x) as in FreeBSD's msun e_logf.c (error below 1 ulp): x = 2^k * m with m in [sqrt(2)/2, sqrt(2)),
   f = m - 1, s = f / (2 + f), ln(m) = f - f^2/2 + s * (f^2/2 + R(s^2)) with a degree-4 polynomial R.
   Method and coefficients from that file, whose notice reads: "Copyright (C) 1993 by Sun Microsystems,
   Inc. All rights reserved. Developed at SunPro, a Sun Microsystems, Inc. business. Permission to use,
   copy, modify, and distribute this software is freely granted, provided that this notice is preserved." */
static float log_f32(float x) {
  static const float ln2_hi = 6.9313812256e-01f; /* 0x3f317180: k * ln2_hi is exact */
  static const float ln2_lo = 9.0580006145e-06f; /* 0x3717f7d1 */
  static const float lg1 = 0xaaaaaa.0p-24f, lg2 = 0xccce13.0p-25f, lg3 = 0x91e9ee.0p-25f, lg4 = 0xf89e26.0p-26f;
  uint32_t ix = float_bits(x);
  int32_t k = 0;
  if (x != x) return x; /* NaN */
  if (x <= 0.0f) return bits_float(x == 0.0f ? 0xff800000u : 0x7fc00000u); /* ln(0) = -inf, ln(<0) = NaN */
  if (ix >= 0x7f800000u) return x;                                          /* +inf */
  if (ix < 0x00800000u) {                                                   /* subnormal: scale into range */
    x *= 0x1p25f;
    ix = float_bits(x);
    k = -25;
  }
  k += (int32_t)(ix >> 23) - 127;
  ix &= 0x007fffffu;
  float m;
  if (ix > 0x003504f3u) { /* mantissa above sqrt(2): halve it */
    m = bits_float(ix | 0x3f000000u);
    k += 1;
  } else {
    m = bits_float(ix | 0x3f800000u);
  }
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float w = z * z;
  const float r = z * (lg1 + w * lg3) + w * (lg2 + w * lg4);
  const float hfsq = 0.5f * f * f;
  const float dk = (float)k;
  return dk * ln2_hi - ((hfsq - (s * (hfsq + r) + dk * ln2_lo)) - f);
}

float ser_logf(float x) { return log_f32(x); }

static int8_t quantize(float value, float input_scale, int32_t input_zero_point) {
  float v = value / input_scale;
  if (!(v > -ROUND_LIMIT)) v = -ROUND_LIMIT; /* also NaN */
  if (v > ROUND_LIMIT) v = ROUND_LIMIT;
  v = (v + ROUND_MAGIC) - ROUND_MAGIC; /* round half to even (default rounding mode) */
  int64_t q = (int64_t)(int32_t)v + (int64_t)input_zero_point;
  if (q < -128) q = -128;
  if (q > 127) q = 127;
  return (int8_t)q;
}

int8_t ser_fe_quantize(float value, float input_scale, int32_t input_zero_point) {
  return quantize(value, input_scale, input_zero_point);
}

size_t ser_fe_state_size(void) { return sizeof(ser_fe_state); }

size_t ser_fe_workspace_floats(const ser_fe_config *cfg) {
  if (cfg == NULL || cfg->kind != SER_FE_LOGMEL) return 0;
  return 2u * (size_t)cfg->n_fft + 1u;
}

static int is_finite(float x) { return x == x && x - x == 0.0f; }

static int config_ok(const ser_fe_config *cfg) {
  if (!is_finite(cfg->input_scale) || !(cfg->input_scale > 0.0f)) return 0;
  if (cfg->clip_samples == 0 || cfg->clip_samples > 0x7fffffffu) return 0;
  if (cfg->kind == SER_FE_WAVEFORM) return is_finite(cfg->waveform_gain);
  if (cfg->kind != SER_FE_LOGMEL) return 0;
  const uint32_t n_fft = cfg->n_fft;
  if (n_fft < 4u || (n_fft & (n_fft - 1u)) != 0u) return 0; /* radix 2, at least 2 complex points */
  if (cfg->hop == 0 || cfg->n_mels == 0 || cfg->clip_samples < n_fft) return 0;
  if (cfg->num_frames != 1u + (cfg->clip_samples - n_fft) / cfg->hop) return 0;
  if (!is_finite(cfg->log_offset) || cfg->log_offset < 0.0f) return 0;
  if (!is_finite(cfg->mean) || !is_finite(cfg->std) || cfg->std == 0.0f) return 0;
  if (!cfg->window || !cfg->fft_cos || !cfg->fft_sin || !cfg->mel_weights) return 0;
  if (!cfg->mel_start || !cfg->mel_count || !cfg->mel_offset) return 0;
  for (uint32_t m = 0; m < cfg->n_mels; ++m) {
    if ((uint32_t)cfg->mel_start[m] + cfg->mel_count[m] > n_fft / 2u + 1u) return 0;
  }
  return 1;
}

int ser_fe_init(ser_fe_state *st, const ser_fe_config *cfg, float *workspace, size_t workspace_floats) {
  if (st == NULL || cfg == NULL) return SER_FE_ERR_ARG;
  memset(st, 0, sizeof *st);
  if (!config_ok(cfg)) return SER_FE_ERR_CONFIG;
  const size_t need = ser_fe_workspace_floats(cfg);
  if (need > 0 && (workspace == NULL || workspace_floats < need)) return SER_FE_ERR_WORKSPACE;
  st->cfg = cfg;
  if (cfg->kind == SER_FE_LOGMEL) {
    st->ring = workspace;
    st->fft = workspace + cfg->n_fft;
    memset(st->ring, 0, cfg->n_fft * sizeof *st->ring);
    st->next_frame_end = cfg->n_fft;
  }
  st->magic = SER_FE_MAGIC;
  return SER_FE_OK;
}

int ser_fe_done(const ser_fe_state *st) {
  return st != NULL && st->magic == SER_FE_MAGIC && st->received == st->cfg->clip_samples;
}

uint32_t ser_fe_received(const ser_fe_state *st) { return st != NULL && st->magic == SER_FE_MAGIC ? st->received : 0u; }

/* W^j = e^(-2 pi i j / n_fft) as (c, s) with W^j = c - i s, for 0 <= j < n_fft: the tables hold
   j < n_fft/2, and W^(j + n_fft/2) = -W^j (an exact negation). */
static inline void twiddle(const float *cos_t, const float *sin_t, uint32_t j, uint32_t half_table, float *c,
                           float *s) {
  if (j < half_table) {
    *c = cos_t[j];
    *s = sin_t[j];
  } else {
    *c = -cos_t[j - half_table];
    *s = -sin_t[j - half_table];
  }
}

/* The radix-4 combination of four twiddled points, stored to a, b, c, d:
   X0 = (t0 + t2) + (t1 + t3), X2 = (t0 + t2) - (t1 + t3), X1 = (t0 - t2) - i (t1 - t3),
   X3 = (t0 - t2) + i (t1 - t3). */
static inline void combine4(float *a, float *b, float *c, float *d, float t0r, float t0i, float t1r, float t1i,
                            float t2r, float t2i, float t3r, float t3i) {
  const float s02r = t0r + t2r, s02i = t0i + t2i, d02r = t0r - t2r, d02i = t0i - t2i;
  const float s13r = t1r + t3r, s13i = t1i + t3i, d13r = t1r - t3r, d13i = t1i - t3i;
  a[0] = s02r + s13r;
  a[1] = s02i + s13i;
  c[0] = s02r - s13r;
  c[1] = s02i - s13i;
  b[0] = d02r + d13i;
  b[1] = d02i - d13r;
  d[0] = d02r - d13i;
  d[1] = d02i + d13r;
}

/* One radix-4 decimation-in-time butterfly over four length-h sub-DFTs in bit-reversed order:
   P0 at z[0], P2 at z[h], P1 at z[2h], P3 at z[3h] (complex offsets), twiddles W^k, W^2k, W^3k
   given as (c, s) pairs: X[k + q h] = sum_r W^(rk) (-i)^(rq) P_r[k]. */
static inline void butterfly4(float *z, uint32_t h, float c1, float s1, float c2, float s2, float c3, float s3) {
  float *a = z, *b = z + 2 * h, *c = z + 4 * h, *d = z + 6 * h;
  const float p0r = a[0], p0i = a[1], p2r = b[0], p2i = b[1], p1r = c[0], p1i = c[1], p3r = d[0], p3i = d[1];
  combine4(a, b, c, d, p0r, p0i, p1r * c1 + p1i * s1, p1i * c1 - p1r * s1, p2r * c2 + p2i * s2, p2i * c2 - p2r * s2,
           p3r * c3 + p3i * s3, p3i * c3 - p3r * s3);
}

/* The same for k = 0 (every twiddle 1): no multiplications. */
static inline void butterfly4_w1(float *z, uint32_t h) {
  float *a = z, *b = z + 2 * h, *c = z + 4 * h, *d = z + 6 * h;
  combine4(a, b, c, d, a[0], a[1], c[0], c[1], b[0], b[1], d[0], d[1]);
}

/* In-place complex FFT of n points (interleaved re, im) whose input is already in bit-reversed order
   and has had its first h_done levels combined (1: none; 2: the radix-2 stage of len 2 when log2(n)
   is odd, see window_frame), decimation in time with radix-4 stages. The twiddle e^(-2 pi i j / len)
   is table entry j * (n_fft / len), with n_fft = 2n. */
static void complex_fft_reversed(float *z, uint32_t n, uint32_t h_done, const float *cos_t, const float *sin_t) {
  uint32_t h = h_done; /* length of the sub-DFTs the next stage combines */
  /* Butterflies of one stage touch disjoint quadruples, so their order does not change the result:
     twiddle-outer, so each twiddle triple is looked up once per stage and stays in registers. */
  for (; 4u * h <= n; h <<= 2) {
    const uint32_t len = 4u * h, stride = 2u * n / len;
    for (uint32_t i = 0; i < n; i += len) butterfly4_w1(z + 2 * i, h);
    for (uint32_t k = 1; k < h; ++k) {
      float c1, s1, c2, s2, c3, s3;
      twiddle(cos_t, sin_t, k * stride, n, &c1, &s1);
      twiddle(cos_t, sin_t, 2u * k * stride, n, &c2, &s2);
      twiddle(cos_t, sin_t, 3u * k * stride, n, &c3, &s3);
      for (uint32_t i = k; i < n; i += len) butterfly4(z + 2 * i, h, c1, s1, c2, s2, c3, s3);
    }
  }
}

static inline uint32_t log2_u32(uint32_t n) {
  uint32_t bits = 0;
  while ((1u << bits) < n) bits++;
  return bits;
}

#if !SER_HAVE_RBIT
/* j -> the bit reversal of (its own reversal + 1), over log2(n) bits: steps through reversed order. */
static inline uint32_t next_reversed(uint32_t j, uint32_t n) {
  uint32_t bit = n >> 1;
  while (bit != 0u && (j & bit) != 0u) {
    j ^= bit;
    bit >>= 1;
  }
  return j | bit;
}
#endif

/* Frame sample s and s + 1 (s even), windowed, as one complex point. The frame starts at ring
   index `at`; when `at` is even the pair never straddles the ring's end, so one index serves both. */
static inline void load_point(const float *ring, const float *w, uint32_t at, uint32_t s, uint32_t mask, int at_even,
                              float *re, float *im) {
  const uint32_t r0 = (at + s) & mask;
  const uint32_t r1 = at_even ? r0 + 1u : (at + s + 1u) & mask;
  *re = ring[r0] * w[s];
  *im = ring[r1] * w[s + 1u];
}

/* window_frame's loop, inlined twice so that `at_even` is a constant in each copy. */
static inline void window_pass(const float *ring, const float *w, uint32_t at, uint32_t n, uint32_t bits,
                               uint32_t mask, int at_even, int fuse, float *z) {
#if !SER_HAVE_RBIT
  uint32_t j = 0;
  (void)bits;
#endif
  for (uint32_t m = 0; m < n / 2u; ++m) {
#if SER_HAVE_RBIT
    const uint32_t i0 = reverse_bits(2u * m) >> (32u - bits);
#else
    const uint32_t i0 = j;
    j = next_reversed(next_reversed(j, n), n);
#endif
    float ar, ai, br, bi;
    load_point(ring, w, at, 2u * i0, mask, at_even, &ar, &ai);
    load_point(ring, w, at, 2u * (i0 + n / 2u), mask, at_even, &br, &bi);
    float *out = z + 4u * m;
    if (fuse) {
      out[0] = ar + br;
      out[1] = ai + bi;
      out[2] = ar - br;
      out[3] = ai - bi;
    } else {
      out[0] = ar;
      out[1] = ai;
      out[2] = br;
      out[3] = bi;
    }
  }
}

/* The windowed frame as n = n_fft/2 complex points (even samples real, odd imaginary), written
   straight into bit-reversed order, so the FFT needs no permutation pass. Positions 2m and 2m + 1
   hold the points rev(2m) and rev(2m) + n/2; when log2(n) is odd the FFT's first radix-2 stage
   (a + b, a - b) is done here too. Returns the sub-DFT length the FFT starts from. */
static uint32_t window_frame(const ser_fe_state *st, float *z) {
  const ser_fe_config *cfg = st->cfg;
  const uint32_t n = cfg->n_fft / 2u, mask = cfg->n_fft - 1u, bits = log2_u32(n);
  const uint32_t at = (st->next_frame_end - cfg->n_fft) & mask;
  const int fuse = (int)(bits & 1u);
  if ((at & 1u) == 0u) {
    window_pass(st->ring, cfg->window, at, n, bits, mask, 1, fuse, z);
  } else {
    window_pass(st->ring, cfg->window, at, n, bits, mask, 0, fuse, z);
  }
  return fuse ? 2u : 1u;
}

/* 4 |X[k]|^2 of bin k from Z[k] = (ar, ai) and Z[half-k] = (br, bi) and bin k's twiddle (c, s).
 * X[k] = E[k] + e^(-2 pi i k / n_fft) O[k], with E, O the DFTs of the even and odd samples:
 * E[k] = (Z[k] + conj Z[half-k]) / 2, O[k] = (Z[k] - conj Z[half-k]) / 2i. The halvings are left
 * out and the power is scaled by 1/4 instead: scaling by a power of two is exact, so every bit is
 * the same (barring values below 2^-126, which the log offset hides). */
static inline float split_power(float ar, float ai, float br, float bi, float c, float s) {
  const float er = ar + br, ei = ai - bi;  /* 2 E[k] */
  const float orr = ai + bi, oi = br - ar; /* 2 O[k] */
  const float xr = er + (orr * c + oi * s);
  const float xi = ei + (oi * c - orr * s);
  return 0.25f * (xr * xr + xi * xi);
}

/* Power spectrum of the frame ending at st->next_frame_end: window, n_fft/2-point complex FFT, split.
 * Bins k and half - k come from the same two points, so both are computed together and written
 * over those points' real parts: bin k ends at fft[2k] (bin half at fft[n_fft]), and the power
 * bins need no buffer of their own. */
static void frame_power(ser_fe_state *st) {
  const ser_fe_config *cfg = st->cfg;
  const uint32_t n_fft = cfg->n_fft, half = n_fft / 2u;
  float *z = st->fft;
  const uint32_t h_done = window_frame(st, z);
  complex_fft_reversed(z, half, h_done, cfg->fft_cos, cfg->fft_sin);
  const float dc = z[0] + z[1], nyquist = z[0] - z[1];
  for (uint32_t k = 1, j = half - 1u; k <= j; ++k, --j) {
    const float ar = z[2 * k], ai = z[2 * k + 1], br = z[2 * j], bi = z[2 * j + 1];
    z[2 * k] = split_power(ar, ai, br, bi, cfg->fft_cos[k], cfg->fft_sin[k]);
    z[2 * j] = split_power(br, bi, ar, ai, cfg->fft_cos[j], cfg->fft_sin[j]);
  }
  z[0] = dc * dc;
  z[n_fft] = nyquist * nyquist;
}

/* Unstandardised log-mel of mel band m from the current power spectrum (bin k at power[2k]). */
static float band_log(const ser_fe_config *cfg, const float *power, uint32_t m) {
  const float *w = cfg->mel_weights + cfg->mel_offset[m];
  const float *p = power + 2u * cfg->mel_start[m];
  float sum = 0.0f;
  for (uint32_t i = 0; i < cfg->mel_count[m]; ++i) sum += w[i] * p[2u * i];
  return log_f32(sum + cfg->log_offset);
}

int ser_fe_normalise(ser_fe_state *st, const float *band_mean, const float *band_std, ser_sn_sums *collect) {
  if (st == NULL || st->magic != SER_FE_MAGIC || st->cfg->kind != SER_FE_LOGMEL) return SER_FE_ERR_ARG;
  if ((band_mean == NULL) != (band_std == NULL) || st->frame != 0u) return SER_FE_ERR_ARG;
  if (collect != NULL && collect->n_mels != st->cfg->n_mels) return SER_FE_ERR_ARG;
  for (uint32_t m = 0; band_std != NULL && m < st->cfg->n_mels; ++m) {
    if (!is_finite(band_mean[m]) || !is_finite(band_std[m]) || band_std[m] == 0.0f) return SER_FE_ERR_CONFIG;
  }
  st->band_mean = band_mean;
  st->band_std = band_std;
  st->collect = collect;
  if (collect != NULL) ser_sn_clear(collect);
  return SER_FE_OK;
}

/* One push, to the int8 tensor (q) or to float features (f): exactly one of them is non-NULL. */
static int push(ser_fe_state *st, const int16_t *pcm, size_t n, int8_t *q, float *f) {
  if (st == NULL || st->magic != SER_FE_MAGIC || (q == NULL && f == NULL) || (pcm == NULL && n > 0)) {
    return SER_FE_ERR_ARG;
  }
  const ser_fe_config *cfg = st->cfg;
  if (n > (size_t)(cfg->clip_samples - st->received)) return SER_FE_ERR_TOO_MANY;
  if (cfg->kind == SER_FE_WAVEFORM) {
    const float gain = cfg->waveform_gain;
    const uint32_t at = st->received;
    if (f != NULL) {
      for (size_t i = 0; i < n; ++i) f[at + i] = ((float)pcm[i] / PCM_FULL_SCALE) * gain;
    } else {
      for (size_t i = 0; i < n; ++i) {
        q[at + i] = quantize(((float)pcm[i] / PCM_FULL_SCALE) * gain, cfg->input_scale, cfg->input_zero_point);
      }
    }
    st->received += (uint32_t)n;
    return SER_FE_OK;
  }
  const uint32_t mask = cfg->n_fft - 1u;
  while (n > 0) {
    if (st->frame >= cfg->num_frames) { /* trailing samples after the last frame: counted only */
      st->received += (uint32_t)n;
      break;
    }
    const uint32_t need = st->next_frame_end - st->received;
    const uint32_t take = n < need ? (uint32_t)n : need;
    for (uint32_t i = 0; i < take;) { /* contiguous runs of the ring, no index masking */
      const uint32_t at = (st->received + i) & mask;
      const uint32_t end = take - i < cfg->n_fft - at ? take - i : cfg->n_fft - at;
      float *dst = st->ring + at;
      for (uint32_t j = 0; j < end; ++j) dst[j] = (float)pcm[i + j] / PCM_FULL_SCALE;
      i += end;
    }
    st->received += take;
    pcm += take;
    n -= take;
    if (st->received == st->next_frame_end) {
      frame_power(st);
      const uint32_t frames = cfg->num_frames, t = st->frame;
      for (uint32_t m = 0; m < cfg->n_mels; ++m) {
        const float raw = band_log(cfg, st->fft, m);
        if (st->collect != NULL) ser_sn_add_value(st->collect, (uint16_t)m, raw);
        const float v = st->band_std != NULL ? (raw - st->band_mean[m]) / st->band_std[m] : (raw - cfg->mean) / cfg->std;
        if (f != NULL) {
          f[m * frames + t] = v;
        } else {
          q[m * frames + t] = quantize(v, cfg->input_scale, cfg->input_zero_point);
        }
      }
      if (st->collect != NULL) ser_sn_end_frame(st->collect);
      st->frame += 1u;
      st->next_frame_end += cfg->hop;
    }
  }
  return SER_FE_OK;
}

int ser_fe_push(ser_fe_state *st, const int16_t *pcm, size_t n, int8_t *model_input) {
  return push(st, pcm, n, model_input, NULL);
}

int ser_fe_push_float(ser_fe_state *st, const int16_t *pcm, size_t n, float *features) {
  return push(st, pcm, n, NULL, features);
}
