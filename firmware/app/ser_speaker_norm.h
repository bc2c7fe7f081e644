/* Per-speaker normalisation of the log-mel: the statistics of the voice the board hears.
 *
 * A model trained with per-speaker normalisation (train/speaker_norm.py says why) standardises
 * each clip by the statistics of its speaker's unlabelled audio instead of one global mean and std.
 * On the board that speaker is whoever talks to it: it keeps running sums of the unstandardised
 * log-mel values of the clips it has heard and standardises each new clip with the statistics of
 * the clips before it (causal). With no clip heard yet (at start-up, after a reset of the
 * statistics) it uses the prior: the training part's pooled statistics, emitted with the model.
 *
 *   mode SER_SN_SCALAR: one mean and std over every mel band (n_bins 1);
 *   mode SER_SN_BINS:   one mean and std per mel band (n_bins = n_mels).
 *
 * Exact and portable: every value v is rounded to q = round_half_even(v * 2^12) (|v| clamped to 64)
 * and summed as int64 (sum of q, sum of q^2), so the sums are exact and do not depend on the order
 * of the values; the statistics follow from the sums in double basic operations and a float square
 * root of basic operations (no libm), so every IEEE-754 target computes the same bits. The host runs
 * this file through train/frontend_c.py, for training as well as for its reference of the board.
 *
 *   n = frames (bins) or frames * n_mels (scalar)
 *   mean = (double)sum / n / 2^12,  var = (double)squares / n / 2^24 - mean^2
 *   std = max(sqrt_f32((float)max(var, 0)), SER_SN_MIN_STD), mean as float
 *
 * Memory: the caller owns the arrays (n_bins int64 twice per ser_sn_sums); nothing is allocated.
 */
#ifndef SER_SPEAKER_NORM_H_
#define SER_SPEAKER_NORM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SER_SN_OFF 0
#define SER_SN_SCALAR 1
#define SER_SN_BINS 2

#define SER_SN_FRAC_BITS 12
#define SER_SN_VALUE_LIMIT 64.0f   /* |v| is clamped here before rounding: q^2 < 2^37 */
#define SER_SN_MAX_FRAMES 1000000u /* frames a state may hold: the int64 sums cannot overflow below it */
#define SER_SN_MAX_BINS 127u       /* a NORM_STATE frame carries 16 bytes per bin (PROTOCOL.md 14) */
#define SER_SN_MIN_STD 1e-3f       /* a silent voice must not blow the inputs up */

/* Return codes (0 is success). */
#define SER_SN_OK 0
#define SER_SN_ERR_ARG (-1)  /* NULL pointers, an unknown mode, a bin count that does not fit the mode */
#define SER_SN_ERR_FULL (-2) /* the sums already hold SER_SN_MAX_FRAMES frames: nothing was added */

typedef struct {
  uint8_t mode;     /* SER_SN_SCALAR or SER_SN_BINS */
  uint16_t n_bins;  /* 1 (scalar) or n_mels (bins) */
  uint16_t n_mels;  /* values per frame */
  uint32_t clips;   /* clips summed */
  uint32_t frames;  /* frames summed */
  int64_t *sum;     /* n_bins: sums of q */
  int64_t *squares; /* n_bins: sums of q^2 */
} ser_sn_sums;

/* Points the sums at the caller's arrays and clears them. */
int ser_sn_init(ser_sn_sums *s, uint8_t mode, uint16_t n_mels, int64_t *sum, int64_t *squares);

/* Back to no audio heard. */
void ser_sn_clear(ser_sn_sums *s);

/* One frame's n_mels unstandardised log-mel values. */
void ser_sn_add_frame(ser_sn_sums *s, const float *values);

/* Value m of the current frame (the front end adds them one by one), then ser_sn_end_frame. */
void ser_sn_add_value(ser_sn_sums *s, uint16_t m, float value);
void ser_sn_end_frame(ser_sn_sums *s);

/* A whole clip's values in the model's layout (value of band m, frame t at m * frames + t). */
void ser_sn_add_clip(ser_sn_sums *s, const float *values, uint32_t frames);

/* total += clip, one more clip. SER_SN_ERR_FULL (total unchanged) past SER_SN_MAX_FRAMES. */
int ser_sn_commit(ser_sn_sums *total, const ser_sn_sums *clip);

/* 1 if a state received from outside (NORM load) can be sums of real values: frames within the
   limit, squares non-negative and consistent with the sums' size, clips 0 exactly when frames is 0. */
int ser_sn_plausible(const ser_sn_sums *s);

/* Mean and std for each of the n_mels bands (the scalar mode repeats its one pair): from the sums,
   or the prior (n_bins values each) when no frame has been summed. */
int ser_sn_stats(const ser_sn_sums *s, const float *prior_mean, const float *prior_std, float *mean, float *std);

/* Square root in float basic operations (Newton from a bit-level first guess): the same bits everywhere. */
float ser_sn_sqrtf(float x);

/* sizeof(ser_sn_sums), for the host's ctypes mirror of the struct. */
size_t ser_sn_sums_size(void);

#ifdef __cplusplus
}
#endif

#endif /* SER_SPEAKER_NORM_H_ */
