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
  return 2u * (size_t)cfg->n_fft + (size_t)cfg->n_fft / 2u + 1u;
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
    st->power = workspace + 2u * cfg->n_fft;
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

/* a, b <- a + b w, a - b w with w = c - i s (one radix-2 butterfly). All four values are loaded
   before any store, so the compiler need not reload them after the stores. */
static inline void butterfly(float *a, float *b, float c, float s) {
  const float ar = a[0], ai = a[1], br = b[0], bi = b[1];
  const float tr = br * c + bi * s;
  const float ti = bi * c - br * s;
  b[0] = ar - tr;
  b[1] = ai - ti;
  a[0] = ar + tr;
  a[1] = ai + ti;
}

/* The same for w = 1 (k = 0: cos_t[0] = 1, sin_t[0] = 0): b * 1 + b * 0 equals b up to the sign of
   a zero result, and no later sum, product or square tells a zero's sign apart from non-zero
   values, so the features keep every bit. */
static inline void butterfly_w1(float *a, float *b) {
  const float ar = a[0], ai = a[1], br = b[0], bi = b[1];
  b[0] = ar - br;
  b[1] = ai - bi;
  a[0] = ar + br;
  a[1] = ai + bi;
}

/* In-place complex FFT of n points (interleaved re, im), radix 2, decimation in time.
   The twiddle e^(-2 pi i j / len) is cos/sin table entry j * (n_fft / len). */
static void complex_fft(float *z, uint32_t n, const float *cos_t, const float *sin_t) {
#if SER_HAVE_RBIT
  uint32_t bits = 0;
  while ((1u << bits) < n) bits++;
#endif
  for (uint32_t i = 0, j = 0; i < n; ++i) { /* bit-reversal permutation */
#if SER_HAVE_RBIT
    j = bits ? reverse_bits(i) >> (32u - bits) : 0u; /* one instruction where the core has it */
#endif
    if (i < j) {
      const float re = z[2 * i], im = z[2 * i + 1];
      z[2 * i] = z[2 * j];
      z[2 * i + 1] = z[2 * j + 1];
      z[2 * j] = re;
      z[2 * j + 1] = im;
    }
#if !SER_HAVE_RBIT
    uint32_t bit = n >> 1;
    while (bit != 0u && (j & bit) != 0u) {
      j ^= bit;
      bit >>= 1;
    }
    j |= bit;
#endif
  }
  /* Butterflies of one stage touch disjoint pairs, so their order does not change the result:
     twiddle-outer while a twiddle serves several blocks, block-outer once blocks are few. */
  for (uint32_t len = 2; len <= n; len <<= 1) {
    const uint32_t half = len >> 1, stride = 2u * n / len;
    if (half <= n / len) {
      for (uint32_t i = 0; i < n; i += len) butterfly_w1(z + 2 * i, z + 2 * (i + half));
      for (uint32_t k = 1; k < half; ++k) {
        const float c = cos_t[k * stride], s = sin_t[k * stride];
        for (uint32_t i = k; i < n; i += len) butterfly(z + 2 * i, z + 2 * (i + half), c, s);
      }
    } else {
      for (uint32_t i0 = 0; i0 < n; i0 += len) {
        butterfly_w1(z + 2 * i0, z + 2 * (i0 + half));
        for (uint32_t k = 1; k < half; ++k) {
          butterfly(z + 2 * (i0 + k), z + 2 * (i0 + k + half), cos_t[k * stride], sin_t[k * stride]);
        }
      }
    }
  }
}

/* Power spectrum of the frame ending at st->next_frame_end: window, n_fft/2-point complex FFT, split. */
static void frame_power(ser_fe_state *st) {
  const ser_fe_config *cfg = st->cfg;
  const uint32_t n_fft = cfg->n_fft, half = n_fft / 2u, mask = n_fft - 1u;
  const uint32_t start = st->next_frame_end - n_fft;
  float *z = st->fft;
  /* The frame is the ring from `start` on, wrapping once: two runs, no index masking. */
  const uint32_t first = n_fft - (start & mask);
  for (uint32_t i = 0; i < first; ++i) z[i] = st->ring[(start & mask) + i] * cfg->window[i];
  for (uint32_t i = first; i < n_fft; ++i) z[i] = st->ring[i - first] * cfg->window[i];
  complex_fft(z, half, cfg->fft_cos, cfg->fft_sin);
  /* X[k] = E[k] + e^(-2 pi i k / n_fft) O[k], with E, O the DFTs of the even and odd samples:
     E[k] = (Z[k] + conj Z[half-k]) / 2, O[k] = (Z[k] - conj Z[half-k]) / 2i. */
  float *p = st->power;
  const float dc = z[0] + z[1], nyquist = z[0] - z[1];
  p[0] = dc * dc;
  p[half] = nyquist * nyquist;
  for (uint32_t k = 1; k < half; ++k) {
    const float ar = z[2 * k], ai = z[2 * k + 1], br = z[2 * (half - k)], bi = z[2 * (half - k) + 1];
    const float er = 0.5f * (ar + br), ei = 0.5f * (ai - bi);
    const float orr = 0.5f * (ai + bi), oi = 0.5f * (br - ar);
    const float c = cfg->fft_cos[k], s = cfg->fft_sin[k];
    const float xr = er + (orr * c + oi * s);
    const float xi = ei + (oi * c - orr * s);
    p[k] = xr * xr + xi * xi;
  }
}

/* Standardised log-mel of mel band m from the current power spectrum. */
static float band_value(const ser_fe_config *cfg, const float *power, uint32_t m) {
  const float *w = cfg->mel_weights + cfg->mel_offset[m];
  const float *p = power + cfg->mel_start[m];
  float sum = 0.0f;
  for (uint32_t i = 0; i < cfg->mel_count[m]; ++i) sum += w[i] * p[i];
  return (log_f32(sum + cfg->log_offset) - cfg->mean) / cfg->std;
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
        const float v = band_value(cfg, st->power, m);
        if (f != NULL) {
          f[m * frames + t] = v;
        } else {
          q[m * frames + t] = quantize(v, cfg->input_scale, cfg->input_zero_point);
        }
      }
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
