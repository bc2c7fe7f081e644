/* Per-speaker standardisation of the pooled embedding, and the classifier that reads it.
 *
 * Per-speaker normalisation of the log-mel (ser_speaker_norm.h) removes a voice's constant spectral
 * offset, but the voice is still in the network's deeper features. A model trained with
 * `ser-train --embedding-norm` (train/embedding_norm.py says why) ends at its pooled embedding (the
 * int8 output of global average pooling); this stage standardises that embedding by the statistics
 * of the embeddings of the voice's earlier clips and applies a linear classifier fitted on
 * standardised embeddings. Before SER_EN_HEAD.prior_clips clips of a voice have been heard (one clip
 * has no spread), it uses the prior: the training part's pooled statistics, emitted with the model.
 *
 * Exact and portable: the sums are of the int8 values themselves (int32 sum and sum of squares per
 * value; SER_EN_MAX_CLIPS keeps them from overflowing), so they do not depend on any order. The
 * statistics follow as in ser_speaker_norm.h, in units of the embedding's int8 steps:
 *
 *   mean = (double)sum / clips,  var = (double)squares / clips - mean^2
 *   std = max(ser_sn_sqrtf((float)max(var, 0)), SER_EN_MIN_STD), mean as float
 *
 * and the classifier, in float basic operations in a fixed order (no fused multiply-add):
 *
 *   z[i] = ((float)e[i] - mean[i]) / std[i]
 *   with unit_length: n = ser_sn_sqrtf(z[0] z[0] + z[1] z[1] + ...) (left to right), and every
 *   z[i] read below is z[i] / n (unless n is 0: a clip equal to the voice's mean stays zeros)
 *   logit[k] = bias[k] + w[k][0] z[0] + w[k][1] z[1] + ... (left to right)
 *   score[k] = clamp(round_half_even(logit[k] * SER_EN_SCORE_SCALE), -128, 127); the class is the
 *   first largest logit
 *
 * so the host (train/embedding_c.py runs this file) and every IEEE-754 target compute the same bits.
 *
 * Memory: the caller owns the sums (dim int32 twice); the head's arrays are constants; nothing is
 * allocated.
 */
#ifndef SER_EMBEDDING_NORM_H_
#define SER_EMBEDDING_NORM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SER_EN_MAX_DIM 255u       /* an EMBED_STATE frame carries 8 bytes per value (PROTOCOL.md 15) */
#define SER_EN_MAX_CLIPS 100000u  /* clips a state may hold: 128^2 * 100000 < 2^31, so no int32 sum overflows */
#define SER_EN_MAX_CLASSES 32u
#define SER_EN_MIN_STD 0.5f       /* in int8 steps: a value (nearly) constant for a voice is not blown up */
#define SER_EN_SCORE_SCALE 16.0f  /* RESULT's int8 scores are the logits in steps of 1/16 */

/* Return codes (0 is success). */
#define SER_EN_OK 0
#define SER_EN_ERR_ARG (-1)  /* NULL pointers, a size out of range */
#define SER_EN_ERR_FULL (-2) /* the sums already hold SER_EN_MAX_CLIPS clips: nothing was added */

typedef struct {
  uint16_t dim;     /* values per embedding */
  uint32_t clips;   /* embeddings summed */
  int32_t *sum;     /* dim: sums of the int8 values */
  int32_t *squares; /* dim: sums of their squares */
} ser_en_sums;

typedef struct {
  uint16_t dim, classes;
  uint16_t prior_clips;     /* a voice with fewer clips than this is standardised by the prior */
  uint16_t unit_length;     /* 1: the classifier reads the standardised embedding scaled to length 1 */
  const float *weights;     /* classes x dim, row by row */
  const float *bias;        /* classes */
  const float *prior_mean;  /* dim: the training part's pooled statistics, in int8 steps */
  const float *prior_std;   /* dim */
} ser_en_head;

/* Points the sums at the caller's arrays and clears them. */
int ser_en_init(ser_en_sums *s, uint16_t dim, int32_t *sum, int32_t *squares);

/* Back to no clip heard. */
void ser_en_clear(ser_en_sums *s);

/* One more clip's embedding. SER_EN_ERR_FULL (sums unchanged) past SER_EN_MAX_CLIPS. */
int ser_en_add(ser_en_sums *s, const int8_t *embedding);

/* 1 if a state received from outside (EMBED load) can be sums of real embeddings: clips within the
   limit, every sum within +-128 clips, squares within [0, 16384 clips] and at least sum^2 / clips. */
int ser_en_plausible(const ser_en_sums *s);

/* Mean and std of each value (dim floats each): from the sums, or the head's prior when fewer than
   prior_clips clips have been summed. */
int ser_en_stats(const ser_en_sums *s, const ser_en_head *head, float *mean, float *std);

/* The classifier on one embedding standardised by (mean, std): logits (classes floats) and int8
   scores; returns the class (>= 0), or SER_EN_ERR_ARG. */
int ser_en_classify(const ser_en_head *head, const float *mean, const float *std, const int8_t *embedding, float *logits,
                    int8_t *scores);

/* sizeof(ser_en_sums) and sizeof(ser_en_head), for the host's ctypes mirrors. */
size_t ser_en_sums_size(void);
size_t ser_en_head_size(void);

#ifdef __cplusplus
}
#endif

#endif /* SER_EMBEDDING_NORM_H_ */
