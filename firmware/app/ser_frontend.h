/* The speech-emotion front end in portable C: streaming int16 PCM in, the int8 model input out.
 *
 * The board and the host run this same file (the host through train/frontend_c.py), so both make
 * the same bits. The math is train/frontend.py's "exact math", in float32 basic operations only:
 *
 *   x[n] = pcm[n] / 32768
 *   waveform: y[n] = x[n] * waveform_gain, output index n
 *   log-mel:  frame t covers samples [t*hop, t*hop + n_fft); P[k] = |rfft(x_t * window)[k]|^2,
 *             M[m] = sum_i mel_weights[mel_offset[m] + i] * P[mel_start[m] + i], i < mel_count[m],
 *             S = (ser_logf(M[m] + log_offset) - mean) / std, output index m * num_frames + t
 *             (mean, std: the config's, or band m's of a speaker's statistics, see ser_fe_normalise)
 *   int8:     q = clamp(round_half_even(value / input_scale) + input_zero_point, -128, 127)
 *
 * No libm call is made (their results differ between glibc and newlib): the logarithm is
 * ser_logf below, and the FFT is a radix-4 real FFT driven by twiddle tables from the caller.
 * Build with -ffp-contract=off so no multiply-add is fused (the host build does the same), never
 * with -ffast-math, and run with the FPU's defaults (round to nearest, no flush-to-zero).
 *
 * Twiddle layout: for k = 0 .. n_fft/2 - 1,
 *   fft_cos[k] = (float)cos(2*pi*k / n_fft),  fft_sin[k] = (float)sin(2*pi*k / n_fft)
 * (the emitted g_fe_fft_cos / g_fe_fft_sin). The real FFT of n_fft samples is a complex FFT of
 * n_fft/2 points (even samples real, odd samples imaginary; its twiddles are the even entries,
 * those past the table as W^(j + n_fft/2) = -W^j) followed by the split step, which uses every
 * entry. The complex FFT is radix 4, with one radix-2 stage first when log2(n_fft/2) is odd; the
 * windowing writes the frame straight into bit-reversed order, so there is no permutation pass.
 *
 * Memory: no allocation. The state lives in the caller's ser_fe_state and a float workspace of
 * ser_fe_workspace_floats(cfg) = 2 n_fft + 1 values: the last n_fft samples (a ring) and the
 * n_fft/2-point complex FFT buffer plus one float, which the split step overwrites with the
 * n_fft/2 + 1 power bins (bin k at float 2k). The whole clip is never held.
 * Not reentrant per state; separate states may run concurrently.
 */
#ifndef SER_FRONTEND_H_
#define SER_FRONTEND_H_

#include <stddef.h>
#include <stdint.h>

#include "ser_speaker_norm.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SER_FE_NONE 0
#define SER_FE_WAVEFORM 1
#define SER_FE_LOGMEL 2

/* Return codes (0 is success). */
#define SER_FE_OK 0
#define SER_FE_ERR_ARG (-1)       /* a NULL pointer, or a state that was not initialised */
#define SER_FE_ERR_CONFIG (-2)    /* the configuration is inconsistent (ser_fe_init refuses it) */
#define SER_FE_ERR_WORKSPACE (-3) /* the workspace is smaller than ser_fe_workspace_floats() */
#define SER_FE_ERR_TOO_MANY (-4)  /* the push would exceed clip_samples; nothing was consumed or written */

typedef struct {
  int kind;              /* SER_FE_WAVEFORM or SER_FE_LOGMEL */
  uint32_t clip_samples; /* samples the board receives per clip */
  float waveform_gain;
  uint16_t n_fft, hop, n_mels, num_frames;
  float log_offset, mean, std;
  const float *window;            /* n_fft */
  const float *fft_cos, *fft_sin; /* n_fft/2 each, layout above */
  const uint16_t *mel_start, *mel_count, *mel_offset;
  const float *mel_weights; /* sparse Slaney bank: band m is mel_weights[mel_offset[m] .. + mel_count[m]) */
  float input_scale;        /* model input quantization */
  int32_t input_zero_point;
} ser_fe_config;

/* Opaque to callers: fill it with ser_fe_init. It points at the config, which must outlive it. */
typedef struct {
  const ser_fe_config *cfg;
  float *ring;  /* n_fft: sample j is at ring[j % n_fft] */
  float *fft;   /* n_fft + 1: n_fft/2 complex values, interleaved (re, im); then power bin k at fft[2k] */
  uint32_t received;
  uint32_t next_frame_end; /* absolute sample count that completes the next frame */
  uint32_t frame;          /* frames written so far */
  const float *band_mean, *band_std; /* per-band statistics (ser_fe_normalise), or NULL: cfg->mean, cfg->std */
  ser_sn_sums *collect;              /* where this clip's unstandardised values are summed, or NULL */
  uint32_t magic;                    /* set by ser_fe_init */
} ser_fe_state;

/* Floats of workspace the caller must provide for this config (0 for waveform). */
size_t ser_fe_workspace_floats(const ser_fe_config *cfg);

/* Checks the config and starts a new clip. Returns SER_FE_OK or a negative error. */
int ser_fe_init(ser_fe_state *st, const ser_fe_config *cfg, float *workspace, size_t workspace_floats);

/* Per-speaker normalisation (ser_speaker_norm.h), log-mel only, after ser_fe_init and before the first
   frame: standardise band m by band_mean[m] and band_std[m] (n_mels each, NULL: the config's mean and
   std) and sum the clip's unstandardised values into `collect` (cleared here; NULL: none). The arrays
   must outlive the clip. */
int ser_fe_normalise(ser_fe_state *st, const float *band_mean, const float *band_std, ser_sn_sums *collect);

/* Push n samples; writes finished values straight into the int8 model input tensor
   (num_frames * n_mels values for log-mel, clip_samples for waveform).
   Returns 0, or a negative error (more samples than clip_samples, bad state); on error nothing is written. */
int ser_fe_push(ser_fe_state *st, const int16_t *pcm, size_t n, int8_t *model_input);

/* 1 when clip_samples were pushed (every output value is then written), else 0. */
int ser_fe_done(const ser_fe_state *st);

/* Samples pushed since ser_fe_init. */
uint32_t ser_fe_received(const ser_fe_state *st);

/* Float (standardised) output variant for the host/training path: same math, writes float32 features. */
int ser_fe_push_float(ser_fe_state *st, const int16_t *pcm, size_t n, float *features);

/* Natural logarithm in float32 basic operations (same bits on every IEEE-754 target). */
float ser_logf(float x);

/* The model-input quantization above, for one value. */
int8_t ser_fe_quantize(float value, float input_scale, int32_t input_zero_point);

/* sizeof(ser_fe_state), for bindings that cannot see the struct (the host's ctypes). */
size_t ser_fe_state_size(void);

#ifdef __cplusplus
}
#endif

#endif /* SER_FRONTEND_H_ */
