/* Per-speaker standardisation of the embedding: see ser_embedding_norm.h for the arithmetic. */
#include "ser_embedding_norm.h"

#include <string.h>

#include "ser_speaker_norm.h" /* ser_sn_sqrtf: the same square root everywhere */

#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: (v + m) - m rounds |v| <= 2^22 half to even */

size_t ser_en_sums_size(void) { return sizeof(ser_en_sums); }
size_t ser_en_head_size(void) { return sizeof(ser_en_head); }

int ser_en_init(ser_en_sums *s, uint16_t dim, int32_t *sum, int32_t *squares) {
  if (s == NULL || sum == NULL || squares == NULL || dim == 0 || dim > SER_EN_MAX_DIM) return SER_EN_ERR_ARG;
  s->dim = dim;
  s->sum = sum;
  s->squares = squares;
  ser_en_clear(s);
  return SER_EN_OK;
}

void ser_en_clear(ser_en_sums *s) {
  s->clips = 0;
  memset(s->sum, 0, s->dim * sizeof *s->sum);
  memset(s->squares, 0, s->dim * sizeof *s->squares);
}

int ser_en_add(ser_en_sums *s, const int8_t *embedding) {
  if (s == NULL || embedding == NULL) return SER_EN_ERR_ARG;
  if (s->clips >= SER_EN_MAX_CLIPS) return SER_EN_ERR_FULL;
  for (uint16_t i = 0; i < s->dim; ++i) {
    const int32_t v = embedding[i];
    s->sum[i] += v;
    s->squares[i] += v * v;
  }
  s->clips += 1u;
  return SER_EN_OK;
}

int ser_en_plausible(const ser_en_sums *s) {
  if (s->clips > SER_EN_MAX_CLIPS) return 0;
  const int64_t n = s->clips;
  for (uint16_t i = 0; i < s->dim; ++i) {
    const int64_t sum = s->sum[i], squares = s->squares[i];
    if (sum > 128 * n || sum < -128 * n || squares < 0 || squares > 16384 * n) return 0;
    if (squares * n < sum * sum) return 0; /* Cauchy-Schwarz: no set of values has a negative variance */
  }
  return 1;
}

int ser_en_stats(const ser_en_sums *s, const ser_en_head *head, float *mean, float *std) {
  if (s == NULL || head == NULL || mean == NULL || std == NULL || s->dim != head->dim) return SER_EN_ERR_ARG;
  if (s->clips == 0 || s->clips < head->prior_clips) {
    if (head->prior_mean == NULL || head->prior_std == NULL) return SER_EN_ERR_ARG;
    memcpy(mean, head->prior_mean, s->dim * sizeof *mean);
    memcpy(std, head->prior_std, s->dim * sizeof *std);
    return SER_EN_OK;
  }
  const double n = (double)s->clips;
  for (uint16_t i = 0; i < s->dim; ++i) {
    const double mu = (double)s->sum[i] / n;
    double var = (double)s->squares[i] / n - mu * mu;
    if (!(var > 0.0)) var = 0.0;
    float sd = ser_sn_sqrtf((float)var);
    if (!(sd > SER_EN_MIN_STD)) sd = SER_EN_MIN_STD;
    mean[i] = (float)mu;
    std[i] = sd;
  }
  return SER_EN_OK;
}

static int8_t to_score(float logit) {
  float q = logit * SER_EN_SCORE_SCALE; /* exact: a power of two */
  if (!(q > -128.0f)) return -128;      /* NaN too */
  if (q > 127.0f) return 127;
  q = (q + ROUND_MAGIC) - ROUND_MAGIC;
  return (int8_t)q;
}

int ser_en_classify(const ser_en_head *head, const float *mean, const float *std, const int8_t *embedding, float *logits,
                    int8_t *scores) {
  if (head == NULL || mean == NULL || std == NULL || embedding == NULL || logits == NULL || scores == NULL ||
      head->classes == 0 || head->classes > SER_EN_MAX_CLASSES) {
    return SER_EN_ERR_ARG;
  }
  float length = 0.0f; /* with unit_length, the standardised embedding's length; 0 leaves it as it is */
  if (head->unit_length) {
    float squares = 0.0f;
    for (uint16_t i = 0; i < head->dim; ++i) {
      const float z = ((float)embedding[i] - mean[i]) / std[i];
      squares = squares + z * z;
    }
    length = ser_sn_sqrtf(squares);
  }
  int best = 0;
  for (uint16_t k = 0; k < head->classes; ++k) {
    const float *w = head->weights + (size_t)k * head->dim;
    float acc = head->bias[k];
    for (uint16_t i = 0; i < head->dim; ++i) {
      float z = ((float)embedding[i] - mean[i]) / std[i];
      if (length > 0.0f) z = z / length;
      acc = acc + w[i] * z;
    }
    logits[k] = acc;
    scores[k] = to_score(acc);
    if (acc > logits[best]) best = k;
  }
  return best;
}
