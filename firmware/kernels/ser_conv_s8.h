/* Our int8 2-D convolution (NHWC input and output, OHWI filter, per-channel requantization),
 * bit-exact with TFLM's reference ConvPerChannel. Free of TFLM: the glue is ser_conv.cc. */
#ifndef SER_CONV_S8_H_
#define SER_CONV_S8_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int batches;
  int in_h, in_w, in_c;
  int out_h, out_w, out_c;
  int k_h, k_w;
  int stride_h, stride_w;
  int dilation_h, dilation_w;
  int pad_h, pad_w;          /* top and left padding */
  int32_t input_offset;      /* -input zero point */
  int32_t output_offset;     /* output zero point */
  int32_t act_min, act_max;  /* fused activation range */
} ser_conv_s8_params;

/* Bytes of scratch ser_conv_s8 needs: a block's (four or six pixels') offset-corrected int16
 * columns of the receptive field, or for one input channel and K <= 10, one record of widened
 * filter and constants per output channel. */
size_t ser_conv_s8_scratch_bytes(const ser_conv_s8_params *p);

/* multiplier/shift: per output channel, as TFLM's OpDataConv holds them. bias may be NULL. */
void ser_conv_s8(const ser_conv_s8_params *p, const int32_t *multiplier, const int32_t *shift, const int8_t *input,
                 const int8_t *filter, const int32_t *bias, int8_t *output, int16_t *scratch);

#ifdef __cplusplus
}
#endif

#endif /* SER_CONV_S8_H_ */
