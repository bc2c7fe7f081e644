/* Per-speaker normalisation: see ser_speaker_norm.h for the arithmetic and why it is exact. */
#include "ser_speaker_norm.h"

#include <string.h>

#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: (v + m) - m rounds |v| <= 2^22 half to even */
#define Q_ONE 4096.0f           /* 2^SER_SN_FRAC_BITS */

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

size_t ser_sn_sums_size(void) { return sizeof(ser_sn_sums); }

int ser_sn_init(ser_sn_sums *s, uint8_t mode, uint16_t n_mels, int64_t *sum, int64_t *squares) {
  if (s == NULL || sum == NULL || squares == NULL || n_mels == 0) return SER_SN_ERR_ARG;
  if (mode != SER_SN_SCALAR && mode != SER_SN_BINS) return SER_SN_ERR_ARG;
  if (mode == SER_SN_BINS && n_mels > SER_SN_MAX_BINS) return SER_SN_ERR_ARG;
  s->mode = mode;
  s->n_mels = n_mels;
  s->n_bins = mode == SER_SN_BINS ? n_mels : 1u;
  s->sum = sum;
  s->squares = squares;
  ser_sn_clear(s);
  return SER_SN_OK;
}

void ser_sn_clear(ser_sn_sums *s) {
  s->clips = 0;
  s->frames = 0;
  memset(s->sum, 0, s->n_bins * sizeof *s->sum);
  memset(s->squares, 0, s->n_bins * sizeof *s->squares);
}

/* round_half_even(v * 2^12) with |v| clamped to the limit (NaN counts as -limit). */
static int32_t to_fixed(float v) {
  if (!(v > -SER_SN_VALUE_LIMIT)) v = -SER_SN_VALUE_LIMIT;
  if (v > SER_SN_VALUE_LIMIT) v = SER_SN_VALUE_LIMIT;
  float scaled = v * Q_ONE; /* exact: a power of two */
  scaled = (scaled + ROUND_MAGIC) - ROUND_MAGIC;
  return (int32_t)scaled;
}

void ser_sn_add_value(ser_sn_sums *s, uint16_t m, float value) {
  const int32_t q = to_fixed(value);
  const uint16_t bin = s->mode == SER_SN_BINS ? m : 0u;
  s->sum[bin] += q;
  s->squares[bin] += (int64_t)q * q;
}

void ser_sn_end_frame(ser_sn_sums *s) { s->frames += 1u; }

void ser_sn_add_frame(ser_sn_sums *s, const float *values) {
  for (uint16_t m = 0; m < s->n_mels; ++m) ser_sn_add_value(s, m, values[m]);
  ser_sn_end_frame(s);
}

void ser_sn_add_clip(ser_sn_sums *s, const float *values, uint32_t frames) {
  for (uint32_t t = 0; t < frames; ++t) {
    for (uint16_t m = 0; m < s->n_mels; ++m) ser_sn_add_value(s, m, values[(uint32_t)m * frames + t]);
    ser_sn_end_frame(s);
  }
}

int ser_sn_commit(ser_sn_sums *total, const ser_sn_sums *clip) {
  if (total == NULL || clip == NULL || total->mode != clip->mode || total->n_bins != clip->n_bins) return SER_SN_ERR_ARG;
  if (clip->frames > SER_SN_MAX_FRAMES - total->frames) return SER_SN_ERR_FULL;
  for (uint16_t b = 0; b < total->n_bins; ++b) {
    total->sum[b] += clip->sum[b];
    total->squares[b] += clip->squares[b];
  }
  total->frames += clip->frames;
  total->clips += 1u;
  return SER_SN_OK;
}

int ser_sn_plausible(const ser_sn_sums *s) {
  if (s->frames > SER_SN_MAX_FRAMES || (s->clips == 0) != (s->frames == 0)) return 0;
  const int64_t values = (int64_t)s->frames * (s->mode == SER_SN_BINS ? 1 : s->n_mels);
  const int64_t most = values * (int64_t)(SER_SN_VALUE_LIMIT * Q_ONE);
  for (uint16_t b = 0; b < s->n_bins; ++b) {
    if (s->squares[b] < 0 || s->sum[b] > most || s->sum[b] < -most) return 0;
    if (s->squares[b] > most * (int64_t)(SER_SN_VALUE_LIMIT * Q_ONE)) return 0;
  }
  return 1;
}

float ser_sn_sqrtf(float x) {
  if (!(x > 0.0f)) return 0.0f;        /* 0, negative, NaN */
  if (float_bits(x) >= 0x7f800000u) return x; /* +inf */
  float y = bits_float((float_bits(x) >> 1) + 0x1fc00000u); /* halves the exponent: within 6 % */
  for (int i = 0; i < 5; ++i) y = 0.5f * (y + x / y);      /* Newton: 6 % -> 2e-3 -> 2e-6 -> exact */
  return y;
}

int ser_sn_stats(const ser_sn_sums *s, const float *prior_mean, const float *prior_std, float *mean, float *std) {
  if (s == NULL || mean == NULL || std == NULL) return SER_SN_ERR_ARG;
  const uint16_t n_mels = s->n_mels;
  if (s->frames == 0) {
    if (prior_mean == NULL || prior_std == NULL) return SER_SN_ERR_ARG;
    for (uint16_t m = 0; m < n_mels; ++m) {
      const uint16_t bin = s->mode == SER_SN_BINS ? m : 0u;
      mean[m] = prior_mean[bin];
      std[m] = prior_std[bin];
    }
    return SER_SN_OK;
  }
  const double n = (double)s->frames * (s->mode == SER_SN_BINS ? 1.0 : (double)n_mels);
  for (uint16_t b = 0; b < s->n_bins; ++b) {
    const double mu = (double)s->sum[b] / n / (double)Q_ONE;
    double var = (double)s->squares[b] / n / ((double)Q_ONE * (double)Q_ONE) - mu * mu;
    if (!(var > 0.0)) var = 0.0;
    float sd = ser_sn_sqrtf((float)var);
    if (!(sd > SER_SN_MIN_STD)) sd = SER_SN_MIN_STD;
    mean[b] = (float)mu;
    std[b] = sd;
  }
  if (s->mode == SER_SN_SCALAR) {
    for (uint16_t m = 1; m < n_mels; ++m) {
      mean[m] = mean[0];
      std[m] = std[0];
    }
  }
  return SER_SN_OK;
}
