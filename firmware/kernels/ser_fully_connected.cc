/* int8 FULLY_CONNECTED: a plain loop (the classifier heads are ~1 k MACs). It replaces CMSIS-NN's,
 * whose several matrix-vector routines cost ~10 KB of flash for nothing here. TFLM's
 * CalculateOpDataFullyConnected computes the multipliers; the arithmetic matches TFLM's
 * reference FullyConnected / FullyConnectedPerChannel. */
#include "ser_kernels.h"
#include "ser_requantize.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/micro/kernels/fully_connected.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"

namespace ser {
namespace {

void *Init(TfLiteContext *context, const char *, size_t) {
  return context->AllocatePersistentBuffer(context, sizeof(tflite::OpDataFullyConnected));
}

TfLiteStatus Prepare(TfLiteContext *context, TfLiteNode *node) {
  auto *data = static_cast<tflite::OpDataFullyConnected *>(node->user_data);
  const auto *params = static_cast<const TfLiteFullyConnectedParams *>(node->builtin_data);
  tflite::MicroContext *micro_context = tflite::GetMicroContext(context);
  TfLiteTensor *input = micro_context->AllocateTempInputTensor(node, tflite::kFullyConnectedInputTensor);
  TfLiteTensor *filter = micro_context->AllocateTempInputTensor(node, tflite::kFullyConnectedWeightsTensor);
  TfLiteTensor *bias = micro_context->AllocateTempInputTensor(node, tflite::kFullyConnectedBiasTensor);
  TfLiteTensor *output = micro_context->AllocateTempOutputTensor(node, tflite::kFullyConnectedOutputTensor);
  TF_LITE_ENSURE(context, input != nullptr && filter != nullptr && output != nullptr);
  TF_LITE_ENSURE_MSG(context,
                     input->type == kTfLiteInt8 && filter->type == kTfLiteInt8 && output->type == kTfLiteInt8,
                     "ser FULLY_CONNECTED: int8 input, filter and output only");
  TF_LITE_ENSURE_OK(context, tflite::CalculateOpDataFullyConnected(context, params->activation, input->type, input,
                                                                   filter, bias, output, data));
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(filter);
  if (bias != nullptr) micro_context->DeallocateTempTfLiteTensor(bias);
  micro_context->DeallocateTempTfLiteTensor(output);
  return kTfLiteOk;
}

TfLiteStatus Eval(TfLiteContext *context, TfLiteNode *node) {
  const auto &data = *static_cast<const tflite::OpDataFullyConnected *>(node->user_data);
  const TfLiteEvalTensor *input = tflite::micro::GetEvalInput(context, node, tflite::kFullyConnectedInputTensor);
  const TfLiteEvalTensor *filter = tflite::micro::GetEvalInput(context, node, tflite::kFullyConnectedWeightsTensor);
  const TfLiteEvalTensor *bias =
      node->inputs->size == 3 ? tflite::micro::GetEvalInput(context, node, tflite::kFullyConnectedBiasTensor)
                              : nullptr;
  TfLiteEvalTensor *output = tflite::micro::GetEvalOutput(context, node, tflite::kFullyConnectedOutputTensor);
  const tflite::RuntimeShape filter_shape = tflite::micro::GetTensorShape(filter);
  const tflite::RuntimeShape output_shape = tflite::micro::GetTensorShape(output);
  const int depth = filter_shape.Dims(filter_shape.DimensionsCount() - 1);
  const int units = output_shape.Dims(output_shape.DimensionsCount() - 1);
  const int batches = output_shape.FlatSize() / units;
  const int8_t *x = tflite::micro::GetTensorData<int8_t>(input);
  const int8_t *w = tflite::micro::GetTensorData<int8_t>(filter);
  const int32_t *b = tflite::micro::GetOptionalTensorData<int32_t>(bias);
  int8_t *y = tflite::micro::GetTensorData<int8_t>(output);
  const int32_t input_offset = -data.input_zero_point, filter_offset = -data.filter_zero_point;
  for (int n = 0; n < batches; n++, x += depth) {
    for (int u = 0; u < units; u++) {
      const int8_t *row = w + u * depth;
      int32_t acc = b ? b[u] : 0;
      for (int i = 0; i < depth; i++) acc += (row[i] + filter_offset) * (x[i] + input_offset);
      const int32_t multiplier = data.is_per_channel ? data.per_channel_output_multiplier[u] : data.output_multiplier;
      const int32_t shift = data.is_per_channel ? data.per_channel_output_shift[u] : data.output_shift;
      int32_t v = ser_requantize(acc, multiplier, shift) + data.output_zero_point;
      v = v < data.output_activation_min ? data.output_activation_min : v;
      v = v > data.output_activation_max ? data.output_activation_max : v;
      *y++ = static_cast<int8_t>(v);
    }
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_FULLY_CONNECTED_INT8() { return tflite::micro::RegisterOp(Init, Prepare, Eval); }

}  // namespace ser
