/* int8 ADD of two same-shaped tensors (the residual connections), bit-exact with TFLM's reference.
 *
 * The reference rescales each input (offset, << 20, a rounding multiply), adds, and rescales the
 * sum: three requantizations a value. The first two depend on one int8 each, so they are tabulated
 * at Prepare (2 x 256 int32 in the arena), leaving one requantization a value. TFLM's
 * CalculateOpDataAdd computes the multipliers. Broadcasting (up to 4-D) walks the output with
 * stride 0 along an input's size-1 dimensions. */
#include "ser_kernels.h"
#include "ser_requantize.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/micro/kernels/add.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"

namespace ser {
namespace {

struct AddData {
  tflite::OpDataAdd add;
  int32_t *scaled1, *scaled2;  // 256 entries each, indexed by the int8 input + 128
};

void *Init(TfLiteContext *context, const char *, size_t) {
  return context->AllocatePersistentBuffer(context, sizeof(AddData));
}

TfLiteStatus Prepare(TfLiteContext *context, TfLiteNode *node) {
  auto *data = static_cast<AddData *>(node->user_data);
  auto *params = static_cast<TfLiteAddParams *>(node->builtin_data);
  tflite::MicroContext *micro_context = tflite::GetMicroContext(context);
  TfLiteTensor *input1 = micro_context->AllocateTempInputTensor(node, tflite::kAddInputTensor1);
  TfLiteTensor *input2 = micro_context->AllocateTempInputTensor(node, tflite::kAddInputTensor2);
  TfLiteTensor *output = micro_context->AllocateTempOutputTensor(node, tflite::kAddOutputTensor);
  TF_LITE_ENSURE(context, input1 != nullptr && input2 != nullptr && output != nullptr);
  TF_LITE_ENSURE_MSG(context,
                     input1->type == kTfLiteInt8 && input2->type == kTfLiteInt8 && output->type == kTfLiteInt8,
                     "ser ADD: int8 inputs and output only");
  tflite::OpDataAdd &a = data->add;
  TF_LITE_ENSURE_OK(context, tflite::CalculateOpDataAdd(context, params, input1, input2, output, &a));
  TF_LITE_ENSURE(context, output->dims->size <= 4);
  data->scaled1 = static_cast<int32_t *>(context->AllocatePersistentBuffer(context, 2 * 256 * sizeof(int32_t)));
  TF_LITE_ENSURE(context, data->scaled1 != nullptr);
  data->scaled2 = data->scaled1 + 256;
  for (int v = -128; v < 128; v++) {
    data->scaled1[v + 128] = ser_requantize((v + a.input1_offset) * (1 << a.left_shift), a.input1_multiplier, a.input1_shift);
    data->scaled2[v + 128] = ser_requantize((v + a.input2_offset) * (1 << a.left_shift), a.input2_multiplier, a.input2_shift);
  }
  micro_context->DeallocateTempTfLiteTensor(input1);
  micro_context->DeallocateTempTfLiteTensor(input2);
  micro_context->DeallocateTempTfLiteTensor(output);
  return kTfLiteOk;
}

inline int8_t Sum(const tflite::OpDataAdd &a, int32_t scaled1, int32_t scaled2) {
  int32_t v = ser_requantize(scaled1 + scaled2, a.output_multiplier, a.output_shift) + a.output_offset;
  v = v < a.output_activation_min ? a.output_activation_min : v;
  v = v > a.output_activation_max ? a.output_activation_max : v;
  return static_cast<int8_t>(v);
}

/* Strides of a tensor's elements along the output's 4 dimensions (0 where it is broadcast). */
void BroadcastStrides(const TfLiteIntArray *dims, const TfLiteIntArray *out, int strides[4]) {
  int stride = 1;
  for (int d = 3; d >= 0; d--) {
    const int i = d - (4 - dims->size), o = d - (4 - out->size);
    const int n = i >= 0 ? dims->data[i] : 1;
    strides[d] = (n == 1 && (o >= 0 ? out->data[o] : 1) != 1) ? 0 : stride;
    stride *= n;
  }
}

TfLiteStatus Eval(TfLiteContext *context, TfLiteNode *node) {
  const auto &data = *static_cast<const AddData *>(node->user_data);
  const tflite::OpDataAdd &a = data.add;
  const TfLiteEvalTensor *input1 = tflite::micro::GetEvalInput(context, node, tflite::kAddInputTensor1);
  const TfLiteEvalTensor *input2 = tflite::micro::GetEvalInput(context, node, tflite::kAddInputTensor2);
  TfLiteEvalTensor *output = tflite::micro::GetEvalOutput(context, node, tflite::kAddOutputTensor);
  const int8_t *x1 = tflite::micro::GetTensorData<int8_t>(input1);
  const int8_t *x2 = tflite::micro::GetTensorData<int8_t>(input2);
  int8_t *y = tflite::micro::GetTensorData<int8_t>(output);
  const int32_t *t1 = data.scaled1 + 128, *t2 = data.scaled2 + 128;
  if (!a.requires_broadcast && a.output_shift <= -1) {
    /* The common case, with the parameters in registers (an int8 store may alias the struct) and
     * the short requantization: the rescaled sums stay below 2^29 (255 * 2^20 times a multiplier
     * below 1, twice). */
    const int32_t multiplier = a.output_multiplier, right = -a.output_shift, half = (int32_t)((1u << right) >> 1);
    const int32_t offset = a.output_offset, lo = a.output_activation_min, hi = a.output_activation_max;
    const int count = tflite::micro::GetTensorShape(output).FlatSize();
    for (int i = 0; i < count; i++) {
      int32_t v = ser_requantize_right(t1[x1[i]] + t2[x2[i]], multiplier, right, half) + offset;
      v = v < lo ? lo : v;
      y[i] = static_cast<int8_t>(v > hi ? hi : v);
    }
    return kTfLiteOk;
  }
  if (!a.requires_broadcast) {
    const int count = tflite::micro::GetTensorShape(output).FlatSize();
    for (int i = 0; i < count; i++) y[i] = Sum(a, t1[x1[i]], t2[x2[i]]);
    return kTfLiteOk;
  }
  int s1[4], s2[4], n[4];
  BroadcastStrides(input1->dims, output->dims, s1);
  BroadcastStrides(input2->dims, output->dims, s2);
  for (int d = 0; d < 4; d++) n[d] = d - (4 - output->dims->size) >= 0 ? output->dims->data[d - (4 - output->dims->size)] : 1;
  for (int i0 = 0; i0 < n[0]; i0++)
    for (int i1 = 0; i1 < n[1]; i1++)
      for (int i2 = 0; i2 < n[2]; i2++)
        for (int i3 = 0; i3 < n[3]; i3++) {
          *y++ = Sum(a, t1[x1[i0 * s1[0] + i1 * s1[1] + i2 * s1[2] + i3 * s1[3]]],
                     t2[x2[i0 * s2[0] + i1 * s2[1] + i2 * s2[2] + i3 * s2[3]]]);
        }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_ADD_INT8() { return tflite::micro::RegisterOp(Init, Prepare, Eval); }

}  // namespace ser
