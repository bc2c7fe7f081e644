/* The int8 model under TensorFlow Lite Micro: one interpreter, a static arena, a per-layer profiler. */
#ifndef SER_MODEL_H_
#define SER_MODEL_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const char *tag;
  uint32_t ticks;
} ser_profile_event;

/* Builds the interpreter and allocates tensors; 0 on success. The message explains a failure. */
int ser_model_init(void);
const char *ser_model_error(void);
int8_t *ser_model_input(void);
const int8_t *ser_model_output(void);
size_t ser_model_arena_size(void);
size_t ser_model_arena_used(void);
/* The model's input/output tensors for raw tensor I/O (PROTOCOL.md section 12): counts, and the data
 * and size in bytes of tensor `index` (NULL for an index out of range). */
uint8_t ser_model_inputs(void);
uint8_t ser_model_outputs(void);
uint8_t *ser_model_input_tensor(uint8_t index, size_t *bytes);
const uint8_t *ser_model_output_tensor(uint8_t index, size_t *bytes);
/* Every tensor of the graph after Invoke (PROTOCOL.md section 13), in a build that keeps them all
 * (SER_PRESERVE_TENSORS): their count (0 in other builds), and tensor `index` of the model's tensor
 * table with its size in bytes (NULL for an index out of range or a tensor without data). */
uint16_t ser_model_graph_tensors(void);
const uint8_t *ser_model_graph_tensor(uint16_t index, size_t *bytes);
/* The model's state as after start-up: variable tensors and resource variables zeroed (a stateful model,
 * e.g. an LSTM or SVDF, carries them from one Invoke to the next). 0 on success. */
int ser_model_reset(void);
/* Runs the model; fills *ticks with the counter difference around Invoke. 0 on success. */
int ser_model_invoke(uint32_t *ticks);
/* Per-layer ticks of the last Invoke. */
size_t ser_model_profile(const ser_profile_event **events);

#ifdef __cplusplus
}
#endif

#endif /* SER_MODEL_H_ */
