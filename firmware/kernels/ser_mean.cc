/* MEAN over height and width of an int8 NHWC tensor (global average pooling), bit-exact with
 * TFLM's reference: the same sums, the same multiplier adjustment for the element count and the
 * same requantization, without the reference's generic index walk (~130 instructions a value).
 * Other int8 reductions run that reference walk; other types are refused at Prepare. */
#include <algorithm>

#include "ser_kernels.h"
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/kernels/internal/common.h"
#include "tensorflow/lite/kernels/internal/reference/reduce.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"

namespace ser {
namespace {

void *Init(TfLiteContext *context, const char *, size_t) {
  return context->AllocatePersistentBuffer(context, sizeof(tflite::OpDataReduce));
}

TfLiteStatus Prepare(TfLiteContext *context, TfLiteNode *node) {
  const TfLiteTensor *input = tflite::GetMicroContext(context)->AllocateTempInputTensor(node, 0);
  TF_LITE_ENSURE(context, input != nullptr);
  const bool int8 = input->type == kTfLiteInt8;
  tflite::GetMicroContext(context)->DeallocateTempTfLiteTensor(const_cast<TfLiteTensor *>(input));
  TF_LITE_ENSURE_MSG(context, int8, "ser MEAN: int8 only");
  return tflite::PrepareMeanOrSumHelper(context, node, static_cast<tflite::OpDataReduce *>(node->user_data));
}

/* Any other int8 mean: TFLM's reference walk, as its EvalMeanHelper runs it. */
TfLiteStatus ReferenceMean(TfLiteContext *context, TfLiteNode *node, const tflite::OpDataReduce &op_data) {
  const TfLiteEvalTensor *input = tflite::micro::GetEvalInput(context, node, 0);
  const TfLiteEvalTensor *axis = tflite::micro::GetEvalInput(context, node, 1);
  TfLiteEvalTensor *output = tflite::micro::GetEvalOutput(context, node, 0);
  const auto *params = static_cast<const TfLiteReducerParams *>(node->builtin_data);
  const bool ok = tflite::reference_ops::QuantizedMeanOrSumExtraArgs<int8_t, int32_t>(
      tflite::micro::GetTensorData<int8_t>(input), op_data.input_zp, op_data.input_scale, input->dims->data,
      input->dims->size, tflite::micro::GetTensorData<int8_t>(output), op_data.output_scale, op_data.multiplier,
      op_data.shift, op_data.output_zp, output->dims->data, output->dims->size,
      tflite::micro::GetTensorData<int>(axis), op_data.num_axis, params->keep_dims,
      static_cast<int *>(context->GetScratchBuffer(context, op_data.scratch_input_iter_idx)),
      static_cast<int *>(context->GetScratchBuffer(context, op_data.scratch_resolved_axis_idx)),
      static_cast<int32_t *>(context->GetScratchBuffer(context, op_data.scratch_accumulator_idx)), false);
  TF_LITE_ENSURE(context, ok);
  return kTfLiteOk;
}

/* True if the axes are exactly height and width of a 4-D tensor, in any order or sign. */
bool OverHeightAndWidth(const TfLiteEvalTensor *axis) {
  if (tflite::micro::GetTensorShape(axis).FlatSize() != 2) return false;
  const int32_t *a = tflite::micro::GetTensorData<int32_t>(axis);
  const int a0 = a[0] < 0 ? a[0] + 4 : a[0], a1 = a[1] < 0 ? a[1] + 4 : a[1];
  return (a0 == 1 && a1 == 2) || (a0 == 2 && a1 == 1);
}

TfLiteStatus Eval(TfLiteContext *context, TfLiteNode *node) {
  auto *op_data = static_cast<tflite::OpDataReduce *>(node->user_data);
  const TfLiteEvalTensor *input = tflite::micro::GetEvalInput(context, node, 0);
  const TfLiteEvalTensor *axis = tflite::micro::GetEvalInput(context, node, 1);
  TfLiteEvalTensor *output = tflite::micro::GetEvalOutput(context, node, 0);
  if (input->dims->size != 4 || !OverHeightAndWidth(axis) || input->dims->data[1] * input->dims->data[2] == 0) {
    return ReferenceMean(context, node, *op_data);
  }
  const int batches = input->dims->data[0];
  const int count = input->dims->data[1] * input->dims->data[2];
  const int channels = input->dims->data[3];
  // As TFLM's QuantizedMeanOrSum: fold 1/count into the multiplier, at most 32 bits more precision.
  int shift = 63 - tflite::CountLeadingZeros(static_cast<uint64_t>(count));
  shift = std::min(shift, 32);
  shift = std::min(shift, 31 + op_data->shift);
  const int32_t multiplier = static_cast<int32_t>((static_cast<int64_t>(op_data->multiplier) << shift) / count);
  const int output_shift = op_data->shift - shift;
  int32_t *sums = static_cast<int32_t *>(context->GetScratchBuffer(context, op_data->scratch_accumulator_idx));
  const int8_t *in = tflite::micro::GetTensorData<int8_t>(input);
  int8_t *out = tflite::micro::GetTensorData<int8_t>(output);
  for (int b = 0; b < batches; b++) {
    for (int c = 0; c < channels; c++) sums[c] = 0;
    for (int i = 0; i < count; i++, in += channels) {
      for (int c = 0; c < channels; c++) sums[c] += in[c];
    }
    for (int c = 0; c < channels; c++) {
      const int32_t centred = sums[c] - op_data->input_zp * count;
      const int32_t v = tflite::MultiplyByQuantizedMultiplier(centred, multiplier, output_shift) + op_data->output_zp;
      out[c] = static_cast<int8_t>(std::min(std::max(v, int32_t{-128}), int32_t{127}));
    }
    out += channels;
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_MEAN_INT8() { return tflite::micro::RegisterOp(Init, Prepare, Eval); }

}  // namespace ser
