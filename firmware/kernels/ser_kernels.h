/* Our own TFLM kernels, registered in place of TFLM's for the ops where they pay.
 *
 * With SER_OWN_KERNELS (the CMSIS-NN build) these are the kernels in this folder; without it (the
 * reference-kernel build, the baseline of the speed-up figure) they are TFLM's own reference
 * kernels, so that build stays pure TFLM, as TFLM's headers do for their *_INT8 variants. */
#ifndef SER_KERNELS_H_
#define SER_KERNELS_H_

#include "tensorflow/lite/micro/kernels/conv.h"
#include "tensorflow/lite/micro/kernels/reduce.h"

namespace ser {

#if defined(SER_OWN_KERNELS)
/* int8 CONV_2D (ser_conv.cc); grouped convolutions run TFLM's reference code. */
TFLMRegistration Register_CONV_2D_INT8();
/* MEAN over height and width of int8 NHWC (ser_mean.cc); other reductions run TFLM's. */
TFLMRegistration Register_MEAN_INT8();
#else
inline TFLMRegistration Register_CONV_2D_INT8() { return tflite::Register_CONV_2D(); }
inline TFLMRegistration Register_MEAN_INT8() { return tflite::Register_MEAN(); }
#endif

}  // namespace ser

#endif /* SER_KERNELS_H_ */
