/* The portable application: serial protocol in, front end and model, results out.
 *
 * Flow per clip (firmware/PROTOCOL.md): START -> NEXT, then CHUNK -> NEXT ... CHUNK -> RESULT. The
 * board pulls each chunk when it is ready, streams it through the front end straight into the
 * model's input tensor (no clip is ever buffered) and runs the model after the last sample.
 * Raw tensors (section 12 of PROTOCOL.md) take another way to the same interpreter: TENSOR_START/
 * TENSOR_CHUNK copy the host's bytes straight into an input tensor, INVOKE runs the model, TENSOR_READ
 * reads the output tensors back. The clip path does not pass through any of it.
 * A command repeated with the same sequence number (the host retrying after a lost reply) gets the
 * stored reply again and is not processed twice. Everything is static; nothing is allocated.
 *
 * RAM: replies are encoded straight into the transmit frame, the decoded PCM of a chunk shares that
 * buffer (it is consumed before the reply is built), and only the short replies a retry may need
 * are kept.
 */
#include <stdbool.h>
#include <string.h>

#include "model_config.h"
#include "model_data.h"
#include "ser_embedding_norm.h"
#include "ser_frontend.h"
#include "ser_model.h"
#include "ser_pcm_codec.h"
#include "ser_port.h"
#include "ser_protocol.h"
#include "ser_speaker_norm.h"

#define MAX_CHUNK_SAMPLES SER_CHUNK_MAX_RAW_SAMPLES
#define INTER_BYTE_TIMEOUT_MS 200u

#if defined(SER_FE_KIND_LOGMEL)
#define FE_KIND SER_FE_LOGMEL
#define FE_WORKSPACE_FLOATS SER_FE_WORKSPACE_FLOATS
#define CLIP_SAMPLES SER_FE_CLIP_SAMPLES
#elif defined(SER_FE_KIND_WAVEFORM)
#define FE_KIND SER_FE_WAVEFORM
#define FE_WORKSPACE_FLOATS 1 /* the waveform path needs none (SER_FE_WORKSPACE_FLOATS is 0) */
#define CLIP_SAMPLES SER_FE_CLIP_SAMPLES
#else /* a model without our front end: the host sends the int8 input values as samples */
#define FE_KIND SER_FE_NONE
#define FE_WORKSPACE_FLOATS 1
#define CLIP_SAMPLES SER_INPUT_ELEMENTS
#endif

#if SER_NUM_LABELS > 0
static const char *const kLabels[SER_NUM_LABELS] = SER_LABELS;
#endif
static const int32_t kInputShape[SER_INPUT_DIMS] = SER_INPUT_SHAPE;
static const int32_t kOutputShape[SER_OUTPUT_DIMS] = SER_OUTPUT_SHAPE;

#if FE_KIND != SER_FE_NONE
static const ser_fe_config kFrontEnd = {
    .kind = FE_KIND,
    .clip_samples = SER_FE_CLIP_SAMPLES,
#if FE_KIND == SER_FE_WAVEFORM
    .waveform_gain = SER_FE_WAVEFORM_GAIN,
#else
    .n_fft = SER_FE_N_FFT,
    .hop = SER_FE_HOP,
    .n_mels = SER_FE_N_MELS,
    .num_frames = SER_FE_NUM_FRAMES,
    .log_offset = SER_FE_LOG_OFFSET,
    .mean = SER_FE_MEAN,
    .std = SER_FE_STD,
    .window = g_fe_window,
    .fft_cos = g_fe_fft_cos,
    .fft_sin = g_fe_fft_sin,
    .mel_start = g_fe_mel_start,
    .mel_count = g_fe_mel_count,
    .mel_offset = g_fe_mel_offset,
    .mel_weights = g_fe_mel_weights,
#endif
    .input_scale = SER_INPUT_SCALE,
    .input_zero_point = SER_INPUT_ZERO_POINT,
};
static float fe_workspace[FE_WORKSPACE_FLOATS];
static ser_fe_state fe_state;
#endif

/* Per-speaker normalisation (ser_speaker_norm.h, PROTOCOL.md 14): the sums of the clips heard since
   start-up or the last NORM, this clip's sums (committed when its last sample is in) and the
   statistics the clip is standardised with (computed at START). */
#if defined(SER_SPEAKER_NORM) && SER_SPEAKER_NORM != SER_SN_OFF && FE_KIND == SER_FE_LOGMEL
#define SPEAKER_NORM 1
_Static_assert(SER_SN_N_BINS <= SER_NORM_MAX_BINS, "NORM_STATE carries at most SER_NORM_MAX_BINS bins");
static int64_t sn_total_sum[SER_SN_N_BINS], sn_total_squares[SER_SN_N_BINS];
static int64_t sn_clip_sum[SER_SN_N_BINS], sn_clip_squares[SER_SN_N_BINS];
static ser_sn_sums sn_total, sn_clip;
static float sn_mean[SER_FE_N_MELS], sn_std[SER_FE_N_MELS];
#else
#define SPEAKER_NORM 0
#endif

/* Per-speaker embedding statistics (ser_embedding_norm.h, PROTOCOL.md 15): the model ends at its pooled
   embedding; the sums of the embeddings of the clips heard since start-up or the last EMBED, and the
   classifier that reads the embedding standardised by their statistics. */
#if defined(SER_EMBEDDING_NORM) && SER_EMBEDDING_NORM && SER_CLIP_PATH
#define EMBEDDING_NORM 1
_Static_assert(SER_EN_DIM == SER_OUTPUT_ELEMENTS && SER_EN_DIM <= SER_EMBED_MAX_DIM, "the classifier reads the output");
_Static_assert(SER_RESULT_SCORES == SER_EN_CLASSES && SER_EN_CLASSES <= SER_EN_MAX_CLASSES, "RESULT carries the classes");
static const ser_en_head kHead = {SER_EN_DIM, SER_EN_CLASSES, SER_EN_PRIOR_CLIPS, SER_EN_UNIT_LENGTH,
                                  g_en_weights, g_en_bias, g_en_prior_mean, g_en_prior_std};
static int32_t en_sum[SER_EN_DIM], en_squares[SER_EN_DIM];
static ser_en_sums en_total;
static float en_mean[SER_EN_DIM], en_std[SER_EN_DIM], en_logits[SER_EN_CLASSES];
static int8_t en_scores[SER_EN_CLASSES];
#else
#define EMBEDDING_NORM 0
#endif

static ser_parser parser;
/* The frame being sent; a reply's payload is encoded in place (ser_frame_encode then copies
 * nothing). A CHUNK's decoded samples live here too: they are consumed before the reply is built. */
static union {
  uint8_t frame[SER_FRAME_MAX_SIZE];
  int16_t pcm[MAX_CHUNK_SAMPLES];
} tx;
static uint8_t *const payload = tx.frame + SER_FRAME_HEADER_SIZE;
static int16_t *const pcm = tx.pcm;
static bool model_ok;

/* Replies that a retry gets again (NEXT, RESULT, MODEL_FAILED) are short: an error message is cut
 * to fit (PROTOCOL.md allows it). */
#define KEPT_PAYLOAD_MAX 120u
_Static_assert(SER_NEXT_SIZE <= KEPT_PAYLOAD_MAX, "NEXT must fit the kept reply");
#if SER_CLIP_PATH
_Static_assert(SER_RESULT_SIZE(SER_RESULT_SCORES) <= KEPT_PAYLOAD_MAX, "RESULT must fit the kept reply");
#endif
_Static_assert(SER_NUM_LABELS <= SER_INFO_MAX_LABELS, "INFO carries at most SER_INFO_MAX_LABELS labels");
_Static_assert(SER_INPUT_DIMS <= SER_INFO_MAX_DIMS && SER_OUTPUT_DIMS <= SER_INFO_MAX_DIMS, "INFO's tensor specs");

/* The clip being received. */
static struct {
  bool active;
  uint32_t clip_id, expected_offset, fe_cycles;
} clip;

/* The raw tensor request being received (section 12): which input is being written, which are complete. */
static struct {
  bool active, invoked;
  uint8_t index;
  uint32_t req_id, expected_offset, filled; /* filled: bit i = input i complete in this request */
} treq;

/* The last command processed and the reply it got, for retries. */
static struct {
  bool valid;
  uint8_t type, seq;
  uint32_t clip_id, offset;
  size_t reply_len;
  uint8_t reply[KEPT_PAYLOAD_MAX + SER_FRAME_OVERHEAD];
} last;

/* Sends the payload encoded at `payload`; remember: keep the frame for a retry. */
static void send_frame(uint8_t type, uint8_t seq, size_t len, bool remember) {
  size_t n = ser_frame_encode(type, seq, payload, (uint16_t)len, tx.frame, sizeof(tx.frame));
  ser_port_uart_write(tx.frame, n);
  if (remember) {
    if (n <= sizeof(last.reply)) { /* always, by the asserts and the error cap above */
      memcpy(last.reply, tx.frame, n);
      last.reply_len = n;
    } else {
      last.valid = false; /* never replay a stale reply */
    }
  }
}

/* remember: the error answers a command already marked as processed, so a retry must get it again. */
static void send_error_reply(uint8_t code, uint8_t type, uint8_t seq, const char *message, bool remember) {
  ser_error e = {code, type, seq, message, (uint16_t)strlen(message)};
  send_frame(SER_MSG_ERROR, seq, ser_error_encode(&e, payload, remember ? KEPT_PAYLOAD_MAX : SER_MAX_PAYLOAD), remember);
}

static void send_error(uint8_t code, uint8_t type, uint8_t seq, const char *message) {
  send_error_reply(code, type, seq, message, false);
}

static void remember_command(const ser_frame *f, uint32_t clip_id, uint32_t offset) {
  last.valid = true;
  last.type = f->type;
  last.seq = f->seq;
  last.clip_id = clip_id;
  last.offset = offset;
}

static bool is_retry(const ser_frame *f, uint32_t clip_id, uint32_t offset) {
  return last.valid && last.type == f->type && last.seq == f->seq && last.clip_id == clip_id && last.offset == offset;
}

static uint8_t hex_nibble(char c) { return (uint8_t)(c <= '9' ? c - '0' : c - 'a' + 10); }

static size_t info_payload(uint8_t *out, size_t cap) {
  ser_info info; /* on the stack: needed only while HELLO/BOOT is answered (the stack is sized for it) */
  memset(&info, 0, sizeof(info));
  info.present = SER_INFO_ALL;
  info.proto_version = SER_PROTO_VERSION;
  info.reset_code = ser_port_reset_reason();
  info.reset_text = ser_cstr(ser_port_reset_reason_text());
  info.board = ser_cstr(ser_port_board_name());
  info.core_clock_hz = ser_port_core_clock_hz();
  info.cycle_counter = ser_cstr(ser_port_counter_kind());
  for (int i = 0; i < 32; i++) {
    info.model_sha256[i] = (uint8_t)(hex_nibble(g_model_sha256[2 * i]) << 4 | hex_nibble(g_model_sha256[2 * i + 1]));
  }
  info.input.dtype = SER_INPUT_TFLITE_TYPE;
  info.input.scale = SER_INPUT_SCALE;
  info.input.zero_point = SER_INPUT_ZERO_POINT;
  info.input.n_dims = SER_INPUT_DIMS;
  for (int i = 0; i < SER_INPUT_DIMS; i++) info.input.dims[i] = (uint32_t)kInputShape[i];
  info.output.dtype = SER_OUTPUT_TFLITE_TYPE;
  info.output.scale = SER_OUTPUT_SCALE;
  info.output.zero_point = SER_OUTPUT_ZERO_POINT;
  info.output.n_dims = SER_OUTPUT_DIMS;
  for (int i = 0; i < SER_OUTPUT_DIMS; i++) info.output.dims[i] = (uint32_t)kOutputShape[i];
  info.fe_kind = FE_KIND;
  info.clip_samples = SER_CLIP_PATH ? CLIP_SAMPLES : 0; /* 0: raw tensors only */
#if FE_KIND != SER_FE_NONE
  info.sample_rate = SER_FE_SAMPLE_RATE;
#endif
  info.n_labels = SER_NUM_LABELS;
#if SER_NUM_LABELS > 0
  for (int i = 0; i < SER_NUM_LABELS; i++) info.labels[i] = ser_cstr(kLabels[i]);
#endif
  info.arena_size = (uint32_t)ser_model_arena_size();
  info.arena_used = (uint32_t)ser_model_arena_used();
  info.max_chunk_samples = MAX_CHUNK_SAMPLES;
  info.build_id = ser_cstr(SER_BUILD_ID);
  info.pcm_encodings = SER_PCM_ENCODINGS_SUPPORTED;
  info.rx_paths = (uint8_t)ser_port_rx_paths();
  info.present |= SER_INFO_HAS(SER_TAG_TENSOR_IO);
  info.n_inputs = model_ok ? ser_model_inputs() : 0;
  info.n_outputs = model_ok ? ser_model_outputs() : 0;
  info.max_tensor_chunk = SER_TENSOR_CHUNK_MAX_DATA;
  info.n_tensors = model_ok ? ser_model_graph_tensors() : 0;
  if (info.n_tensors) info.present |= SER_INFO_HAS(SER_TAG_LAYERS);
#if SPEAKER_NORM
  info.present |= SER_INFO_HAS(SER_TAG_SPEAKER_NORM);
  info.sn_mode = SER_SPEAKER_NORM;
  info.sn_bins = SER_SN_N_BINS;
#endif
#if EMBEDDING_NORM
  info.present |= SER_INFO_HAS(SER_TAG_EMBEDDING_NORM);
  info.en_dim = SER_EN_DIM;
  info.en_classes = SER_EN_CLASSES;
  info.en_prior_clips = SER_EN_PRIOR_CLIPS;
#endif
  return ser_info_encode(&info, out, cap);
}

static void send_next(const ser_frame *f) {
  uint32_t left = CLIP_SAMPLES - clip.expected_offset;
  ser_next next = {clip.clip_id, clip.expected_offset, (uint16_t)(left < MAX_CHUNK_SAMPLES ? left : MAX_CHUNK_SAMPLES)};
  send_frame(SER_MSG_NEXT, f->seq, ser_next_encode(&next, payload, SER_MAX_PAYLOAD), true);
}

static void handle_start(const ser_frame *f) {
  ser_start m;
  int err = ser_start_decode(f->payload, f->len, &m);
  if (err) {
    send_error((uint8_t)err, f->type, f->seq, "START payload must be 8 bytes");
    return;
  }
  if (is_retry(f, m.clip_id, 0)) {
    ser_port_uart_write(last.reply, last.reply_len);
    return;
  }
  if (!model_ok) {
    send_error(SER_ERR_MODEL_FAILED, f->type, f->seq, ser_model_error());
    return;
  }
  if (!SER_CLIP_PATH) {
    send_error(SER_ERR_BAD_CLIP, f->type, f->seq, "this model takes raw tensors only (PROTOCOL.md 12): use ser-validate");
    return;
  }
  if (m.n_samples != CLIP_SAMPLES) {
    send_error(SER_ERR_BAD_CLIP, f->type, f->seq, "clip must have exactly the front end's clip_samples (see INFO)");
    return;
  }
#if FE_KIND != SER_FE_NONE
  if (ser_fe_init(&fe_state, &kFrontEnd, fe_workspace, FE_WORKSPACE_FLOATS) != SER_FE_OK) {
    send_error(SER_ERR_MODEL_FAILED, f->type, f->seq, "front-end tables in model_config.h are inconsistent");
    return;
  }
#endif
#if SPEAKER_NORM /* this clip gets the statistics of the clips before it (the prior before any) */
  if (ser_sn_stats(&sn_total, g_sn_prior_mean, g_sn_prior_std, sn_mean, sn_std) != SER_SN_OK ||
      ser_fe_normalise(&fe_state, sn_mean, sn_std, &sn_clip) != SER_FE_OK) {
    send_error(SER_ERR_MODEL_FAILED, f->type, f->seq, "speaker statistics or their prior are unusable");
    return;
  }
#endif
  treq.active = treq.invoked = false; /* a clip writes the input: a raw tensor request ends here */
  treq.filled = 0;
  clip.active = true;
  clip.clip_id = m.clip_id;
  clip.expected_offset = 0;
  clip.fe_cycles = 0;
  remember_command(f, m.clip_id, 0);
  send_next(f);
}

static void finish_clip(const ser_frame *f) {
  uint32_t invoke_cycles = 0;
  clip.active = false;
#if SPEAKER_NORM /* the whole clip is heard: its audio joins the voice's statistics (frozen once full) */
  (void)ser_sn_commit(&sn_total, &sn_clip);
#endif
  if (ser_model_invoke(&invoke_cycles) != 0) {
    send_error_reply(SER_ERR_MODEL_FAILED, f->type, f->seq, ser_model_error(), true);
    return;
  }
#if EMBEDDING_NORM /* the classifier on the embedding standardised by the voice's earlier clips; then it joins them */
  const uint32_t head_start = ser_port_cycles();
  const int8_t *embedding = ser_model_output();
  int best = SER_EN_ERR_ARG;
  if (ser_en_stats(&en_total, &kHead, en_mean, en_std) == SER_EN_OK) {
    best = ser_en_classify(&kHead, en_mean, en_std, embedding, en_logits, en_scores);
  }
  if (best < 0) {
    send_error_reply(SER_ERR_MODEL_FAILED, f->type, f->seq, "embedding classifier in model_config.h is unusable", true);
    return;
  }
  (void)ser_en_add(&en_total, embedding); /* frozen once full */
  invoke_cycles += ser_port_cycles() - head_start; /* the classifier counts with Invoke */
  ser_result r = {clip.clip_id, (uint8_t)best, SER_EN_CLASSES, en_scores, clip.fe_cycles, invoke_cycles};
  send_frame(SER_MSG_RESULT, f->seq, ser_result_encode(&r, payload, SER_MAX_PAYLOAD), true);
#elif SER_CLIP_PATH
  const int8_t *scores = ser_model_output();
  uint8_t best = 0;
  for (uint8_t i = 1; i < SER_OUTPUT_ELEMENTS; i++) {
    if (scores[i] > scores[best]) best = i;
  }
  ser_result r = {clip.clip_id, best, SER_OUTPUT_ELEMENTS, scores, clip.fe_cycles, invoke_cycles};
  send_frame(SER_MSG_RESULT, f->seq, ser_result_encode(&r, payload, SER_MAX_PAYLOAD), true);
#else /* never reached: START refuses clips for such a model */
  send_error_reply(SER_ERR_BAD_CLIP, f->type, f->seq, "this model takes raw tensors only", true);
#endif
}

static void handle_chunk(const ser_frame *f) {
  ser_chunk m;
  int err = ser_chunk_decode(f->payload, f->len, &m);
  if (err) {
    send_error((uint8_t)err, f->type, f->seq, "malformed CHUNK");
    return;
  }
  if (is_retry(f, m.clip_id, m.offset)) {
    ser_port_uart_write(last.reply, last.reply_len);
    return;
  }
  if (!clip.active || m.clip_id != clip.clip_id || m.offset != clip.expected_offset) {
    send_error(SER_ERR_OUT_OF_ORDER, f->type, f->seq, clip.active ? "chunk is not the one asked for by NEXT" : "no clip started");
    return;
  }
  if (m.n_samples > MAX_CHUNK_SAMPLES || m.n_samples > CLIP_SAMPLES - clip.expected_offset) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "chunk longer than NEXT's max_samples");
    return;
  }
  err = ser_pcm_decode(m.encoding, m.data, m.data_len, pcm, m.n_samples);
  if (err) {
    send_error((uint8_t)err, f->type, f->seq, "PCM chunk does not decode");
    return;
  }
  uint32_t start = ser_port_cycles();
#if FE_KIND != SER_FE_NONE
  if (ser_fe_push(&fe_state, pcm, m.n_samples, ser_model_input()) != SER_FE_OK) {
    send_error(SER_ERR_OUT_OF_ORDER, f->type, f->seq, "front end refused the chunk");
    return;
  }
#else
  int8_t *input = ser_model_input() + clip.expected_offset;
  for (uint16_t i = 0; i < m.n_samples; i++) input[i] = (int8_t)(pcm[i] < -128 ? -128 : pcm[i] > 127 ? 127 : pcm[i]);
#endif
  clip.fe_cycles += ser_port_cycles() - start;
  clip.expected_offset += m.n_samples;
  remember_command(f, m.clip_id, m.offset);
  if (clip.expected_offset == CLIP_SAMPLES) {
    finish_clip(f);
  } else {
    send_next(f);
  }
}

/* ---- raw tensors ---- */

static void send_tensor_next(const ser_frame *f, uint32_t total) {
  uint32_t left = total - treq.expected_offset;
  ser_tensor_next m = {treq.req_id, treq.index, treq.expected_offset,
                       (uint16_t)(left < SER_TENSOR_CHUNK_MAX_DATA ? left : SER_TENSOR_CHUNK_MAX_DATA)};
  send_frame(SER_MSG_TENSOR_NEXT, f->seq, ser_tensor_next_encode(&m, payload, SER_MAX_PAYLOAD), true);
}

static void handle_tensor_start(const ser_frame *f) {
  ser_tensor_start m;
  if (ser_tensor_start_decode(f->payload, f->len, &m)) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "TENSOR_START payload must be 9 bytes");
    return;
  }
  if (is_retry(f, m.req_id, 0)) {
    ser_port_uart_write(last.reply, last.reply_len);
    return;
  }
  if (!model_ok) {
    send_error(SER_ERR_MODEL_FAILED, f->type, f->seq, ser_model_error());
    return;
  }
  size_t bytes = 0;
  if (ser_model_input_tensor(m.index, &bytes) == NULL) {
    send_error(SER_ERR_BAD_TENSOR, f->type, f->seq, "no input tensor of that index (see INFO TENSOR_IO)");
    return;
  }
  if (m.n_bytes != bytes || bytes == 0) {
    send_error(SER_ERR_BAD_TENSOR, f->type, f->seq, "n_bytes is not the input tensor's size (see INFO INPUT)");
    return;
  }
  clip.active = false; /* the tensor overwrites what a clip streamed in */
  if (m.req_id != treq.req_id) treq.filled = 0;
  treq.filled &= ~(1ul << m.index);
  treq.active = true;
  treq.invoked = false;
  treq.req_id = m.req_id;
  treq.index = m.index;
  treq.expected_offset = 0;
  remember_command(f, m.req_id, 0);
  send_tensor_next(f, (uint32_t)bytes);
}

static void handle_tensor_chunk(const ser_frame *f) {
  ser_tensor_chunk m;
  if (ser_tensor_chunk_decode(f->payload, f->len, &m)) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "TENSOR_CHUNK carries no data");
    return;
  }
  if (is_retry(f, m.req_id, m.offset)) {
    ser_port_uart_write(last.reply, last.reply_len);
    return;
  }
  size_t bytes = 0;
  uint8_t *data = treq.active ? ser_model_input_tensor(treq.index, &bytes) : NULL;
  if (data == NULL || m.req_id != treq.req_id || m.index != treq.index || m.offset != treq.expected_offset) {
    send_error(SER_ERR_OUT_OF_ORDER, f->type, f->seq, treq.active ? "chunk is not the one TENSOR_NEXT asked for" : "no tensor started");
    return;
  }
  if (m.data_len > bytes - treq.expected_offset) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "chunk longer than TENSOR_NEXT's max_bytes");
    return;
  }
  memcpy(data + treq.expected_offset, m.data, m.data_len);
  treq.expected_offset += m.data_len;
  if (treq.expected_offset == bytes) {
    treq.active = false;
    treq.filled |= 1ul << treq.index;
  }
  remember_command(f, m.req_id, m.offset);
  send_tensor_next(f, (uint32_t)bytes);
}

static void handle_invoke(const ser_frame *f) {
  if (f->len != SER_INVOKE_SIZE) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "INVOKE payload must be 4 bytes");
    return;
  }
  uint32_t req_id = (uint32_t)f->payload[0] | (uint32_t)f->payload[1] << 8 | (uint32_t)f->payload[2] << 16 |
                    (uint32_t)f->payload[3] << 24;
  if (is_retry(f, req_id, 0)) {
    ser_port_uart_write(last.reply, last.reply_len);
    return;
  }
  if (!model_ok) {
    send_error(SER_ERR_MODEL_FAILED, f->type, f->seq, ser_model_error());
    return;
  }
  uint8_t n_in = ser_model_inputs(), n_out = ser_model_outputs();
  uint32_t all = n_in >= 32 ? 0xFFFFFFFFu : (1ul << n_in) - 1u;
  if (req_id != treq.req_id || treq.filled != all) {
    send_error(SER_ERR_OUT_OF_ORDER, f->type, f->seq, "send every input tensor of this request before INVOKE");
    return;
  }
  if (n_out > SER_MAX_TENSORS) {
    send_error(SER_ERR_BAD_TENSOR, f->type, f->seq, "more outputs than INVOKED can describe");
    return;
  }
  remember_command(f, req_id, 0);
  ser_invoked r = {req_id, 0, n_out, {0}};
  /* Every raw tensor request starts from the model's initial state, as host TFLM's reset() before each run. */
  if (ser_model_reset() != 0 || ser_model_invoke(&r.invoke_cycles) != 0) {
    send_error_reply(SER_ERR_MODEL_FAILED, f->type, f->seq, ser_model_error(), true);
    return;
  }
  for (uint8_t i = 0; i < n_out; i++) {
    size_t bytes = 0;
    ser_model_output_tensor(i, &bytes);
    r.output_bytes[i] = (uint32_t)bytes;
  }
  treq.invoked = true;
  send_frame(SER_MSG_INVOKED, f->seq, ser_invoked_encode(&r, payload, SER_MAX_PAYLOAD), true);
}

static void handle_tensor_read(const ser_frame *f) {
  ser_tensor_next m;
  if (ser_tensor_next_decode(f->payload, f->len, &m)) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "TENSOR_READ payload must be 11 bytes");
    return;
  }
  if (!treq.invoked || m.req_id != treq.req_id) {
    send_error(SER_ERR_OUT_OF_ORDER, f->type, f->seq, "no INVOKE of this request to read from");
    return;
  }
  size_t bytes = 0;
  const uint8_t *data = ser_model_output_tensor(m.index, &bytes);
  if (data == NULL) {
    send_error(SER_ERR_BAD_TENSOR, f->type, f->seq, "no output tensor of that index (see INFO TENSOR_IO)");
    return;
  }
  if (m.max_bytes == 0 || m.offset >= bytes) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "TENSOR_READ asks for no byte of the tensor");
    return;
  }
  size_t n = bytes - m.offset;
  if (n > m.max_bytes) n = m.max_bytes;
  if (n > SER_TENSOR_CHUNK_MAX_DATA) n = SER_TENSOR_CHUNK_MAX_DATA;
  ser_tensor_chunk r = {m.req_id, m.index, m.offset, data + m.offset, (uint16_t)n};
  send_frame(SER_MSG_TENSOR_DATA, f->seq, ser_tensor_chunk_encode(&r, payload, SER_MAX_PAYLOAD), false);
}

/* Any tensor of the graph after INVOKE (section 13): a layer's output, for the host to compare. */
static void handle_layer_read(const ser_frame *f) {
  ser_layer_read m;
  if (ser_layer_read_decode(f->payload, f->len, &m)) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "LAYER_READ payload must be 12 bytes");
    return;
  }
  if (!treq.invoked || m.req_id != treq.req_id) {
    send_error(SER_ERR_OUT_OF_ORDER, f->type, f->seq, "no INVOKE of this request to read from");
    return;
  }
  if (ser_model_graph_tensors() == 0) {
    send_error(SER_ERR_BAD_TENSOR, f->type, f->seq, "this firmware does not keep every tensor: build it with ser-emit --layers");
    return;
  }
  size_t bytes = 0;
  const uint8_t *data = ser_model_graph_tensor(m.tensor, &bytes);
  if (data == NULL || bytes == 0) {
    send_error(SER_ERR_BAD_TENSOR, f->type, f->seq, "no tensor with data at that index (see INFO LAYERS)");
    return;
  }
  if (m.max_bytes == 0 || m.offset >= bytes) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "LAYER_READ asks for no byte of the tensor");
    return;
  }
  size_t n = bytes - m.offset;
  if (n > m.max_bytes) n = m.max_bytes;
  if (n > SER_LAYER_DATA_MAX_DATA) n = SER_LAYER_DATA_MAX_DATA;
  ser_layer_data r = {m.req_id, m.tensor, m.offset, data + m.offset, (uint16_t)n};
  send_frame(SER_MSG_LAYER_DATA, f->seq, ser_layer_data_encode(&r, payload, SER_MAX_PAYLOAD), false);
}

/* NORM (section 14): read, reset or load the voice's statistics; the reply is the state held afterwards.
   RESET and LOAD end a clip in progress (its audio would otherwise join the new statistics). */
static void handle_norm(const ser_frame *f) {
  uint8_t op;
  ser_norm_state m;
  int err = ser_norm_decode(f->payload, f->len, &op, &m);
  if (err) {
    send_error((uint8_t)err, f->type, f->seq, err == SER_ERR_BAD_NORM ? "NORM op is 0 read, 1 reset or 2 load" : "NORM payload size");
    return;
  }
#if SPEAKER_NORM
  if (op == SER_NORM_LOAD) {
    if (m.mode != sn_total.mode || m.n_bins != sn_total.n_bins) {
      send_error(SER_ERR_BAD_NORM, f->type, f->seq, "NORM load of another mode or bin count (see INFO SPEAKER_NORM)");
      return;
    }
    /* Checked in the clip's sums (a LOAD ends any clip; START clears them), then taken over. */
    clip.active = false;
    sn_clip.clips = m.clips;
    sn_clip.frames = m.frames;
    for (uint16_t i = 0; i < m.n_bins; i++) {
      sn_clip_sum[i] = ser_norm_sum(&m, i);
      sn_clip_squares[i] = ser_norm_square(&m, i);
    }
    if (!ser_sn_plausible(&sn_clip)) {
      ser_sn_clear(&sn_clip);
      send_error(SER_ERR_BAD_NORM, f->type, f->seq, "NORM load of sums no voice can have");
      return;
    }
    memcpy(sn_total_sum, sn_clip_sum, sizeof sn_total_sum);
    memcpy(sn_total_squares, sn_clip_squares, sizeof sn_total_squares);
    sn_total.clips = m.clips;
    sn_total.frames = m.frames;
    ser_sn_clear(&sn_clip);
  } else if (op == SER_NORM_RESET) {
    ser_sn_clear(&sn_total);
    clip.active = false;
  }
  ser_norm_state r = {sn_total.mode, sn_total.n_bins, sn_total.clips, sn_total.frames, NULL};
  send_frame(SER_MSG_NORM_STATE, f->seq, ser_norm_state_encode(&r, sn_total.sum, sn_total.squares, payload, SER_MAX_PAYLOAD),
             false);
#else
  (void)op;
  send_error(SER_ERR_BAD_NORM, f->type, f->seq, "this firmware has no speaker normalisation (INFO has no SPEAKER_NORM)");
#endif
}

/* EMBED (section 15): read, reset or load the voice's embedding statistics; the reply is the state held
   afterwards. RESET and LOAD end a clip in progress (its embedding would otherwise join the new statistics). */
static void handle_embed(const ser_frame *f) {
  uint8_t op;
  ser_embed_state m;
  int err = ser_embed_decode(f->payload, f->len, &op, &m);
  if (err) {
    send_error((uint8_t)err, f->type, f->seq, err == SER_ERR_BAD_NORM ? "EMBED op is 0 read, 1 reset or 2 load" : "EMBED payload size");
    return;
  }
#if EMBEDDING_NORM
  if (op == SER_NORM_LOAD) {
    if (m.dim != SER_EN_DIM) {
      send_error(SER_ERR_BAD_NORM, f->type, f->seq, "EMBED load of another embedding size (see INFO EMBEDDING_NORM)");
      return;
    }
    /* Checked in a scratch state first (the sums stay as they are if it is refused). */
    static int32_t load_sum[SER_EN_DIM], load_squares[SER_EN_DIM];
    ser_en_sums loaded = {SER_EN_DIM, m.clips, load_sum, load_squares};
    for (uint16_t i = 0; i < SER_EN_DIM; i++) {
      load_sum[i] = ser_embed_sum(&m, i);
      load_squares[i] = ser_embed_square(&m, i);
    }
    if (!ser_en_plausible(&loaded)) {
      send_error(SER_ERR_BAD_NORM, f->type, f->seq, "EMBED load of sums no voice can have");
      return;
    }
    clip.active = false;
    memcpy(en_sum, load_sum, sizeof en_sum);
    memcpy(en_squares, load_squares, sizeof en_squares);
    en_total.clips = m.clips;
  } else if (op == SER_NORM_RESET) {
    ser_en_clear(&en_total);
    clip.active = false;
  }
  ser_embed_state r = {en_total.dim, en_total.clips, NULL};
  send_frame(SER_MSG_EMBED_STATE, f->seq, ser_embed_state_encode(&r, en_total.sum, en_total.squares, payload, SER_MAX_PAYLOAD),
             false);
#else
  (void)op;
  send_error(SER_ERR_BAD_NORM, f->type, f->seq, "this firmware has no embedding statistics (INFO has no EMBEDDING_NORM)");
#endif
}

static void handle_profile(const ser_frame *f) {
  const ser_profile_event *events;
  size_t n = ser_model_profile(&events);
  ser_profile_writer w;
  ser_profile_begin(&w, payload, SER_MAX_PAYLOAD);
  for (size_t i = 0; i < n; i++) {
    if (!ser_profile_add(&w, events[i].tag ? events[i].tag : "?", events[i].ticks)) break;
  }
  send_frame(SER_MSG_PROFILE_DATA, f->seq, w.len, false);
}

/* RX_PATH: from the next frame on, the host's stream arrives on that receive path (PROTOCOL.md 8). */
static void handle_rx_path(const ser_frame *f) {
  uint8_t path;
  if (ser_rx_path_decode(f->payload, f->len, &path) != SER_ERR_NONE) {
    send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "RX_PATH is 1 byte");
  } else if (ser_port_set_rx_path(path) != 0) {
    send_error(SER_ERR_BAD_PATH, f->type, f->seq, "no such receive path on this board (see INFO RX_PATHS)");
  } else {
    send_frame(SER_MSG_RX_PATH_SET, f->seq, ser_rx_path_encode(path, payload, SER_MAX_PAYLOAD), false);
  }
}

static void handle_frame(const ser_frame *f) {
  bool empty_ok = ser_empty_decode(f->payload, f->len) == 0;
  switch (f->type) {
    case SER_MSG_HELLO:
      if (empty_ok) {
        send_frame(SER_MSG_INFO, f->seq, info_payload(payload, SER_MAX_PAYLOAD), false);
        return;
      }
      break;
    case SER_MSG_START:
      handle_start(f);
      return;
    case SER_MSG_CHUNK:
      handle_chunk(f);
      return;
    case SER_MSG_PROFILE:
      if (empty_ok) {
        handle_profile(f);
        return;
      }
      break;
    case SER_MSG_RESET:
      if (empty_ok) ser_port_reset();
      break;
    case SER_MSG_RX_PATH:
      handle_rx_path(f);
      return;
    case SER_MSG_TENSOR_START:
      handle_tensor_start(f);
      return;
    case SER_MSG_TENSOR_CHUNK:
      handle_tensor_chunk(f);
      return;
    case SER_MSG_INVOKE:
      handle_invoke(f);
      return;
    case SER_MSG_TENSOR_READ:
      handle_tensor_read(f);
      return;
    case SER_MSG_LAYER_READ:
      handle_layer_read(f);
      return;
    case SER_MSG_NORM:
      handle_norm(f);
      return;
    case SER_MSG_EMBED:
      handle_embed(f);
      return;
    default:
      send_error(SER_ERR_UNKNOWN_TYPE, f->type, f->seq, "unknown message type");
      return;
  }
  send_error(SER_ERR_BAD_LENGTH, f->type, f->seq, "this message has an empty payload");
}

int main(void) {
  ser_port_init();
  ser_parser_init(&parser);
  model_ok = ser_model_init() == 0;
#if SPEAKER_NORM
  if (ser_sn_init(&sn_total, SER_SPEAKER_NORM, SER_FE_N_MELS, sn_total_sum, sn_total_squares) != SER_SN_OK ||
      ser_sn_init(&sn_clip, SER_SPEAKER_NORM, SER_FE_N_MELS, sn_clip_sum, sn_clip_squares) != SER_SN_OK) {
    model_ok = false; /* emission refuses such a model: this is a hand-edited model_config.h */
  }
#endif
#if EMBEDDING_NORM
  if (ser_en_init(&en_total, SER_EN_DIM, en_sum, en_squares) != SER_EN_OK) model_ok = false;
#endif
  send_frame(SER_MSG_BOOT, 0, info_payload(payload, SER_MAX_PAYLOAD), false);
  ser_port_led(model_ok);

  uint32_t last_byte_ms = ser_port_millis();
  for (;;) {
    uint8_t byte;
    if (!ser_port_uart_read(&byte)) {
      if (ser_parser_in_frame(&parser) && ser_port_millis() - last_byte_ms > INTER_BYTE_TIMEOUT_MS) {
        uint8_t type = parser.frame.type, seq = parser.frame.seq;
        ser_parser_reset(&parser);
        send_error(SER_ERR_TRUNCATED, type, seq, "frame incomplete at the inter-byte timeout");
      } else {
        ser_port_idle();
      }
      continue;
    }
    last_byte_ms = ser_port_millis();
    int status = ser_parser_feed(&parser, byte);
    if (status == SER_PARSE_FRAME) {
      handle_frame(&parser.frame);
    } else if (status == SER_PARSE_ERR_CRC) {
      send_error(SER_ERR_BAD_CRC, parser.frame.type, parser.frame.seq, "CRC mismatch");
    } else if (status == SER_PARSE_ERR_TOO_LONG) {
      send_error(SER_ERR_TOO_LONG, parser.frame.type, parser.frame.seq, "payload longer than 2048 bytes");
    }
  }
}
