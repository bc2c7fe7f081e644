/* TFLM wrapper. Everything is statically allocated; nothing is allocated after start-up. */
#include "ser_model.h"

#include <new>

#include "model_config.h"
#include "model_data.h"
#include "op_resolver.h"
#include "ser_port.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/memory_helpers.h"
#include "tensorflow/lite/micro/micro_allocator.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_resource_variable.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#include "tensorflow/lite/schema/schema_generated.h"

/* Nothing is ever deleted (no heap), but virtual destructors still name operator delete; these
 * keep libstdc++'s, and with it newlib's malloc/free, out of the image. */
void operator delete(void *) noexcept {}
void operator delete(void *, size_t) noexcept {}

/* SER_PRESERVE_TENSORS (model_config.h, `ser-emit --layers`): TFLM keeps every tensor of the graph
 * after Invoke, in an arena measured for that, so the host can read each layer's output
 * (PROTOCOL.md section 13). Otherwise tensors share memory and only the outputs survive Invoke. */
#ifdef SER_PRESERVE_TENSORS
constexpr bool kPreserveTensors = true;
#else
constexpr bool kPreserveTensors = false;
#endif

/* TFLM's tick source is the board's counter (micro_time.cc is not linked). */
namespace tflite {
uint32_t ticks_per_second() { return ser_port_core_clock_hz(); }
uint32_t GetCurrentTimeTicks() { return ser_port_cycles(); }
}  // namespace tflite

namespace {

/* Records each operator's ticks during Invoke (TFLM calls BeginEvent/EndEvent around every op);
 * one entry per operator of the model (model_config.h). */
constexpr uint32_t kMaxEvents = SER_MODEL_OPERATORS;

class LayerProfiler : public tflite::MicroProfilerInterface {
 public:
  uint32_t BeginEvent(const char *tag) override {
    if (count_ >= kMaxEvents) return kMaxEvents;
    events_[count_] = {tag, ser_port_cycles()};
    return count_++;
  }
  void EndEvent(uint32_t handle) override {
    if (handle < kMaxEvents) events_[handle].ticks = ser_port_cycles() - events_[handle].ticks;
  }
  void Clear() { count_ = 0; }
  size_t Events(const ser_profile_event **events) const {
    *events = events_;
    return count_;
  }

 private:
  ser_profile_event events_[kMaxEvents] = {};
  uint32_t count_ = 0;
};

alignas(16) uint8_t g_arena[SER_ARENA_BYTES];
alignas(tflite::MicroInterpreter) uint8_t g_interpreter_storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter *g_interpreter = nullptr;
ModelOpResolver g_resolver;
LayerProfiler g_profiler;
char g_error[96] = "";

void SetError(const char *message) {
  size_t i = 0;
  for (; message[i] != '\0' && i + 1 < sizeof(g_error); i++) g_error[i] = message[i];
  g_error[i] = '\0';
}

/* TFLM's log lines are kept (the last one that says something) for the error frame; the UART carries
 * only frames. (TF_LITE_STRIP_ERROR_STRINGS would save flash but also compiles out the per-layer profiler.) */
void KeepLog(const char *line) {
  for (const char *c = line; *c != '\0'; c++) {
    if (*c != '\n' && *c != '\r' && *c != ' ') {
      SetError(line);
      return;
    }
  }
}

}  // namespace

extern "C" int ser_model_init(void) {
  RegisterDebugLogCallback(KeepLog);
  const tflite::Model *model = tflite::GetModel(g_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    SetError("model schema version differs from TFLM's");
    return -1;
  }
  if (RegisterModelOps(g_resolver) != kTfLiteOk) {
    SetError("op registration failed");
    return -1;
  }
  /* The allocator, and the resource variables of a stateful model, live at the arena's tail. */
  tflite::MicroAllocator *allocator = tflite::MicroAllocator::Create(
      g_arena, sizeof(g_arena), kPreserveTensors ? tflite::MemoryPlannerType::kLinear : tflite::MemoryPlannerType::kGreedy);
  if (allocator == nullptr) {
    SetError("arena too small for TFLM's allocator");
    return -1;
  }
  tflite::MicroResourceVariables *variables = nullptr;
  if (SER_RESOURCE_VARIABLES > 0) {
    variables = tflite::MicroResourceVariables::Create(allocator, SER_RESOURCE_VARIABLES);
    if (variables == nullptr) {
      SetError("arena too small for the model's resource variables");
      return -1;
    }
  }
  g_interpreter = new (g_interpreter_storage) tflite::MicroInterpreter(model, g_resolver, allocator, variables, &g_profiler);
  if (g_interpreter->AllocateTensors() != kTfLiteOk) {
    if (g_error[0] == '\0') SetError("AllocateTensors failed: arena too small, or an op/type TFLM refuses");
    return -1;
  }
  TfLiteTensor *input = g_interpreter->input(0);
  TfLiteTensor *output = g_interpreter->output(0);
  if (g_interpreter->inputs_size() != SER_MODEL_INPUTS || g_interpreter->outputs_size() != SER_MODEL_OUTPUTS ||
      input->type != SER_INPUT_TFLITE_TYPE || input->bytes != SER_INPUT_BYTES || output->type != SER_OUTPUT_TFLITE_TYPE ||
      output->bytes != SER_OUTPUT_BYTES) {
    SetError("model tensors differ from model_config.h");
    return -1;
  }
  return 0;
}

extern "C" const char *ser_model_error(void) { return g_error; }
extern "C" int8_t *ser_model_input(void) { return g_interpreter->input(0)->data.int8; }
extern "C" const int8_t *ser_model_output(void) { return g_interpreter->output(0)->data.int8; }
extern "C" size_t ser_model_arena_size(void) { return sizeof(g_arena); }
extern "C" size_t ser_model_arena_used(void) { return g_interpreter ? g_interpreter->arena_used_bytes() : 0; }

extern "C" uint8_t ser_model_inputs(void) { return g_interpreter ? (uint8_t)g_interpreter->inputs_size() : 0; }
extern "C" uint8_t ser_model_outputs(void) { return g_interpreter ? (uint8_t)g_interpreter->outputs_size() : 0; }

extern "C" uint8_t *ser_model_input_tensor(uint8_t index, size_t *bytes) {
  if (index >= ser_model_inputs()) return nullptr;
  TfLiteTensor *t = g_interpreter->input(index);
  *bytes = t->bytes;
  return reinterpret_cast<uint8_t *>(t->data.raw);
}

extern "C" const uint8_t *ser_model_output_tensor(uint8_t index, size_t *bytes) {
  if (index >= ser_model_outputs()) return nullptr;
  TfLiteTensor *t = g_interpreter->output(index);
  *bytes = t->bytes;
  return reinterpret_cast<const uint8_t *>(t->data.raw);
}

extern "C" uint16_t ser_model_graph_tensors(void) {
  if (!kPreserveTensors || g_interpreter == nullptr) return 0;
  return (uint16_t)tflite::GetModel(g_model_data)->subgraphs()->Get(0)->tensors()->size();
}

extern "C" const uint8_t *ser_model_graph_tensor(uint16_t index, size_t *bytes) {
  if (index >= ser_model_graph_tensors()) return nullptr;
  TfLiteEvalTensor *t = g_interpreter->GetTensor(index);
  if (t == nullptr || t->data.raw == nullptr || tflite::TfLiteEvalTensorByteLength(t, bytes) != kTfLiteOk) {
    *bytes = 0;  /* an optional tensor left out, or a type without a byte length */
  }
  return t != nullptr && t->data.raw != nullptr ? reinterpret_cast<const uint8_t *>(t->data.raw) : nullptr;
}

extern "C" int ser_model_reset(void) { return g_interpreter->Reset() == kTfLiteOk ? 0 : -1; }

extern "C" int ser_model_invoke(uint32_t *ticks) {
  g_profiler.Clear();
  uint32_t start = ser_port_cycles();
  TfLiteStatus status = g_interpreter->Invoke();
  *ticks = ser_port_cycles() - start;
  return status == kTfLiteOk ? 0 : -1;
}

extern "C" size_t ser_model_profile(const ser_profile_event **events) { return g_profiler.Events(events); }
