/* TFLM glue of our int8 CONV_2D: TFLM's ConvPrepare computes the per-channel multipliers and
 * padding, ser_conv_s8.c does the arithmetic. */
#include "ser_conv_s8.h"
#include "ser_kernels.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/conv.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_log.h"

namespace ser {
namespace {

struct ConvData {
  tflite::OpDataConv conv;  // first: TFLM's ConvPrepare fills it through node->user_data
  ser_conv_s8_params params;
  int scratch_index;  // -1: a grouped convolution, left to TFLM's reference code
};

void *Init(TfLiteContext *context, const char *, size_t) {
  return context->AllocatePersistentBuffer(context, sizeof(ConvData));
}

TfLiteStatus Prepare(TfLiteContext *context, TfLiteNode *node) {
  TF_LITE_ENSURE_OK(context, tflite::ConvPrepare(context, node));
  auto *data = static_cast<ConvData *>(node->user_data);
  const auto &conv_params = *static_cast<const TfLiteConvParams *>(node->builtin_data);
  tflite::MicroContext *micro_context = tflite::GetMicroContext(context);
  TfLiteTensor *input = micro_context->AllocateTempInputTensor(node, tflite::kConvInputTensor);
  TfLiteTensor *filter = micro_context->AllocateTempInputTensor(node, tflite::kConvWeightsTensor);
  TfLiteTensor *output = micro_context->AllocateTempOutputTensor(node, tflite::kConvOutputTensor);
  TF_LITE_ENSURE_MSG(context, input->type == kTfLiteInt8 && filter->type == kTfLiteInt8,
                     "ser CONV_2D: int8 input and filter only");
  ser_conv_s8_params &p = data->params;
  p.batches = input->dims->data[0];
  p.in_h = input->dims->data[1];
  p.in_w = input->dims->data[2];
  p.in_c = input->dims->data[3];
  p.out_h = output->dims->data[1];
  p.out_w = output->dims->data[2];
  p.out_c = output->dims->data[3];
  p.k_h = filter->dims->data[1];
  p.k_w = filter->dims->data[2];
  p.stride_h = conv_params.stride_height;
  p.stride_w = conv_params.stride_width;
  p.dilation_h = conv_params.dilation_height_factor;
  p.dilation_w = conv_params.dilation_width_factor;
  p.pad_h = data->conv.padding.height;
  p.pad_w = data->conv.padding.width;
  p.input_offset = -data->conv.input_zero_point;
  p.output_offset = data->conv.output_zero_point;
  p.act_min = data->conv.output_activation_min;
  p.act_max = data->conv.output_activation_max;
  data->scratch_index = -1;
  if (filter->dims->data[3] == p.in_c) {
    TF_LITE_ENSURE_OK(context, context->RequestScratchBufferInArena(context, ser_conv_s8_scratch_bytes(&p),
                                                                    &data->scratch_index));
  }
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(filter);
  micro_context->DeallocateTempTfLiteTensor(output);
  return kTfLiteOk;
}

TfLiteStatus Eval(TfLiteContext *context, TfLiteNode *node) {
  const auto &data = *static_cast<const ConvData *>(node->user_data);
  const TfLiteEvalTensor *input = tflite::micro::GetEvalInput(context, node, tflite::kConvInputTensor);
  const TfLiteEvalTensor *filter = tflite::micro::GetEvalInput(context, node, tflite::kConvWeightsTensor);
  const TfLiteEvalTensor *bias =
      node->inputs->size == 3 ? tflite::micro::GetEvalInput(context, node, tflite::kConvBiasTensor) : nullptr;
  TfLiteEvalTensor *output = tflite::micro::GetEvalOutput(context, node, tflite::kConvOutputTensor);
  if (data.scratch_index < 0) {
    const auto &conv_params = *static_cast<const TfLiteConvParams *>(node->builtin_data);
    tflite::reference_integer_ops::ConvPerChannel(
        tflite::ConvParamsQuantized(conv_params, data.conv), data.conv.per_channel_output_multiplier,
        data.conv.per_channel_output_shift, tflite::micro::GetTensorShape(input),
        tflite::micro::GetTensorData<int8_t>(input), tflite::micro::GetTensorShape(filter),
        tflite::micro::GetTensorData<int8_t>(filter), tflite::micro::GetTensorShape(bias),
        tflite::micro::GetOptionalTensorData<int32_t>(bias), tflite::micro::GetTensorShape(output),
        tflite::micro::GetTensorData<int8_t>(output));
    return kTfLiteOk;
  }
  auto *scratch = static_cast<int16_t *>(context->GetScratchBuffer(context, data.scratch_index));
  ser_conv_s8(&data.params, data.conv.per_channel_output_multiplier, data.conv.per_channel_output_shift,
              tflite::micro::GetTensorData<int8_t>(input), tflite::micro::GetTensorData<int8_t>(filter),
              tflite::micro::GetOptionalTensorData<int32_t>(bias), tflite::micro::GetTensorData<int8_t>(output),
              scratch);
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_CONV_2D_INT8() { return tflite::micro::RegisterOp(Init, Prepare, Eval); }

}  // namespace ser
