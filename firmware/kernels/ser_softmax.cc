/* int8 -> int8 SOFTMAX with TFLM's reference arithmetic (reference_ops::Softmax, gemmlowp fixed
 * point), prepared as TFLM's CalculateSoftmaxParams prepares it for int8. Registered instead of
 * CMSIS-NN's, whose code and int16 look-up-table set-up cost ~5 KB of flash for six values. */
#include "ser_kernels.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/kernels/internal/quantization_util.h"
#include "tensorflow/lite/kernels/internal/reference/softmax.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"

namespace ser {
namespace {

constexpr int kScaledDiffIntegerBits = 5;  // as TFLM: the input differences in Q5.26

void *Init(TfLiteContext *context, const char *, size_t) {
  return context->AllocatePersistentBuffer(context, sizeof(tflite::SoftmaxParams));
}

TfLiteStatus Prepare(TfLiteContext *context, TfLiteNode *node) {
  auto *data = static_cast<tflite::SoftmaxParams *>(node->user_data);
  const auto *params = static_cast<const TfLiteSoftmaxParams *>(node->builtin_data);
  tflite::MicroContext *micro_context = tflite::GetMicroContext(context);
  TfLiteTensor *input = micro_context->AllocateTempInputTensor(node, 0);
  TfLiteTensor *output = micro_context->AllocateTempOutputTensor(node, 0);
  TF_LITE_ENSURE(context, input != nullptr && output != nullptr);
  TF_LITE_ENSURE_MSG(context, input->type == kTfLiteInt8 && output->type == kTfLiteInt8,
                     "ser SOFTMAX: int8 input and output only");
  TF_LITE_ENSURE_EQ(context, output->params.zero_point, -128);
  TF_LITE_ENSURE(context, output->params.scale == 1.f / 256);
  int left_shift;
  tflite::PreprocessSoftmaxScaling(static_cast<double>(params->beta), static_cast<double>(input->params.scale),
                                   kScaledDiffIntegerBits, &data->input_multiplier, &left_shift);
  data->input_left_shift = left_shift;
  data->diff_min = -tflite::CalculateInputRadius(kScaledDiffIntegerBits, left_shift);
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(output);
  return kTfLiteOk;
}

TfLiteStatus Eval(TfLiteContext *context, TfLiteNode *node) {
  const auto &data = *static_cast<const tflite::SoftmaxParams *>(node->user_data);
  const TfLiteEvalTensor *input = tflite::micro::GetEvalInput(context, node, 0);
  TfLiteEvalTensor *output = tflite::micro::GetEvalOutput(context, node, 0);
  tflite::reference_ops::Softmax(data, tflite::micro::GetTensorShape(input), tflite::micro::GetTensorData<int8_t>(input),
                                 tflite::micro::GetTensorShape(output), tflite::micro::GetTensorData<int8_t>(output));
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_SOFTMAX_INT8() { return tflite::micro::RegisterOp(Init, Prepare, Eval); }

}  // namespace ser
