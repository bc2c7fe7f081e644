/* Our own TFLM kernels, registered in place of TFLM's for the ops where they pay.
 *
 * With SER_OWN_KERNELS (the CMSIS-NN build) these are the kernels in this folder; without it (the
 * reference-kernel build, the baseline of the speed-up figure) they are TFLM's own reference
 * kernels, so that build stays pure TFLM, as TFLM's headers do for their *_INT8 variants. */
#ifndef SER_KERNELS_H_
#define SER_KERNELS_H_

#include "tensorflow/lite/micro/kernels/add.h"
#include "tensorflow/lite/micro/kernels/conv.h"
#include "tensorflow/lite/micro/kernels/fully_connected.h"
#include "tensorflow/lite/micro/kernels/reduce.h"
#include "tensorflow/lite/micro/kernels/softmax.h"

namespace ser {

#if defined(SER_OWN_KERNELS)
/* int8 only, each in ser_<op>.cc; the header comment of each says what it falls back to. Never
 * inlined (the firmware is linked with LTO), so that the ELF's symbols show which of our kernels a
 * firmware registers; each runs once, at start-up. */
#define SER_REGISTRATION __attribute__((noinline)) TFLMRegistration
SER_REGISTRATION Register_ADD_INT8();
SER_REGISTRATION Register_CONV_2D_INT8();
SER_REGISTRATION Register_FULLY_CONNECTED_INT8();
SER_REGISTRATION Register_MEAN_INT8();
SER_REGISTRATION Register_SOFTMAX_INT8();
#else
inline TFLMRegistration Register_ADD_INT8() { return tflite::Register_ADD(); }
inline TFLMRegistration Register_CONV_2D_INT8() { return tflite::Register_CONV_2D(); }
inline TFLMRegistration Register_FULLY_CONNECTED_INT8() { return tflite::Register_FULLY_CONNECTED(); }
inline TFLMRegistration Register_MEAN_INT8() { return tflite::Register_MEAN(); }
inline TFLMRegistration Register_SOFTMAX_INT8() { return tflite::Register_SOFTMAX(); }
#endif

}  // namespace ser

#endif /* SER_KERNELS_H_ */
