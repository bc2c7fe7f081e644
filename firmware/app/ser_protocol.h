/* Board <-> host serial protocol, version 1 (spec: firmware/PROTOCOL.md; Python twin: host/protocol.py).
 *
 * Frame: 0xA5 0x5A | type u8 | seq u8 | len u16 LE | payload[len] | crc16 LE, where the CRC is
 * CRC-16/CCITT-FALSE over type..payload. Every multi-byte field is little-endian.
 *
 * Portable C11, no allocation, no global state: the parser and every buffer belong to the caller.
 * Decoders never copy: the texts, scores and data they return point into the caller's payload,
 * which must outlive them. Decoders return 0 or the SER_ERR_* code the board sends back.
 */
#ifndef SER_PROTOCOL_H_
#define SER_PROTOCOL_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SER_PROTO_VERSION 1
#define SER_MAX_PAYLOAD 2048
#define SER_SYNC0 0xA5u
#define SER_SYNC1 0x5Au
#define SER_FRAME_HEADER_SIZE 6 /* sync pair, type, seq, len */
#define SER_FRAME_OVERHEAD 8    /* header + CRC */
#define SER_FRAME_MAX_SIZE (SER_MAX_PAYLOAD + SER_FRAME_OVERHEAD)

enum {
  SER_MSG_HELLO = 0x01,
  SER_MSG_START = 0x02,
  SER_MSG_CHUNK = 0x03,
  SER_MSG_PROFILE = 0x04,
  SER_MSG_RESET = 0x05,
  SER_MSG_RX_PATH = 0x06,
  SER_MSG_TENSOR_START = 0x07, /* raw tensors (section 12), sent only to a board whose INFO has TENSOR_IO */
  SER_MSG_TENSOR_CHUNK = 0x08,
  SER_MSG_INVOKE = 0x09,
  SER_MSG_TENSOR_READ = 0x0A,
  SER_MSG_LAYER_READ = 0x0B, /* every tensor of the graph (section 13), only to a board whose INFO has LAYERS */
  SER_MSG_NORM = 0x0C,       /* per-speaker statistics (section 14), only to a board whose INFO has SPEAKER_NORM */
  SER_MSG_EMBED = 0x0D,      /* per-speaker embedding statistics (section 15), only if INFO has EMBEDDING_NORM */
  SER_MSG_BOOT = 0x80,
  SER_MSG_INFO = 0x81,
  SER_MSG_NEXT = 0x82,
  SER_MSG_RESULT = 0x83,
  SER_MSG_PROFILE_DATA = 0x84,
  SER_MSG_RX_PATH_SET = 0x85,
  SER_MSG_TENSOR_NEXT = 0x86,
  SER_MSG_INVOKED = 0x87,
  SER_MSG_TENSOR_DATA = 0x88,
  SER_MSG_LAYER_DATA = 0x89,
  SER_MSG_NORM_STATE = 0x8A,
  SER_MSG_EMBED_STATE = 0x8B,
  SER_MSG_ERROR = 0xEE
};

enum { SER_PARSE_NONE = 0, SER_PARSE_FRAME = 1, SER_PARSE_ERR_CRC = -1, SER_PARSE_ERR_TOO_LONG = -2 };

/* ERROR codes (0 is "no error" for the decoders, never sent). */
enum {
  SER_ERR_NONE = 0,
  SER_ERR_BAD_CRC = 1,
  SER_ERR_TOO_LONG = 2,
  SER_ERR_UNKNOWN_TYPE = 3,
  SER_ERR_BAD_LENGTH = 4,
  SER_ERR_OUT_OF_ORDER = 5,
  SER_ERR_BAD_CLIP = 6,
  SER_ERR_MODEL_FAILED = 7,
  SER_ERR_BAD_ENCODING = 8,
  SER_ERR_TRUNCATED = 9,
  SER_ERR_BUSY = 10,
  SER_ERR_BAD_PATH = 11,
  SER_ERR_BAD_TENSOR = 12,
  SER_ERR_BAD_NORM = 13
};

/* PCM chunk encodings (CHUNK.encoding; bit n of INFO's PCM_ENCODINGS = encoding n supported). */
enum { SER_PCM_RAW = 0, SER_PCM_RICE = 1 };

/* ---- framing ---- */

typedef struct {
  uint8_t type, seq;
  uint16_t len;
  uint8_t payload[SER_MAX_PAYLOAD];
} ser_frame;

/* After SER_PARSE_FRAME, frame holds the frame until the next feed. After an error, frame.type and
 * frame.seq name the offending frame (as received) and frame.len is 0. */
typedef struct {
  uint8_t state;
  uint16_t pos;    /* payload bytes received */
  uint16_t crc;    /* running CRC over type..payload */
  uint16_t crc_rx; /* received CRC */
  ser_frame frame;
} ser_parser;

void ser_parser_init(ser_parser *p);
/* Drop a partial frame and hunt for the next sync pair (the application's inter-byte timeout). */
void ser_parser_reset(ser_parser *p);
/* Feed one received byte; returns SER_PARSE_*. */
int ser_parser_feed(ser_parser *p, uint8_t byte);
/* True once a sync pair has been seen and the frame is not complete yet: a timeout now is TRUNCATED. */
bool ser_parser_in_frame(const ser_parser *p);

/* Writes the whole frame to out; returns its size, or 0 if len > SER_MAX_PAYLOAD or it does not
 * fit in out_size. payload may already sit at out + SER_FRAME_HEADER_SIZE (no copy then). */
size_t ser_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t len, uint8_t *out, size_t out_size);
uint16_t ser_crc16(const uint8_t *data, size_t n);
uint16_t ser_crc16_update(uint16_t crc, uint8_t byte);

/* ---- message payloads ----
 * ser_X_encode writes the payload of message X to out and returns its size, 0 if it does not fit.
 * ser_X_decode checks the size exactly (SER_ERR_BAD_LENGTH otherwise) and fills *m.
 * HELLO, PROFILE and RESET have empty payloads: ser_empty_decode checks that. */

typedef struct {
  const char *s; /* not NUL-terminated when decoded */
  uint8_t len;
} ser_text;

/* A C string as a ser_text, cut at 255 bytes. */
ser_text ser_cstr(const char *s);

int ser_empty_decode(const uint8_t *payload, size_t len);

#define SER_START_SIZE 8
typedef struct {
  uint32_t clip_id, n_samples;
} ser_start;
size_t ser_start_encode(const ser_start *m, uint8_t *out, size_t cap);
int ser_start_decode(const uint8_t *payload, size_t len, ser_start *m);

#define SER_NEXT_SIZE 10
typedef struct {
  uint32_t clip_id, offset;
  uint16_t max_samples;
} ser_next;
size_t ser_next_encode(const ser_next *m, uint8_t *out, size_t cap);
int ser_next_decode(const uint8_t *payload, size_t len, ser_next *m);

/* RX_PATH (host -> board) and RX_PATH_SET (its reply): a receive path, u8 (section 8). */
#define SER_RX_PATH_SIZE 1
size_t ser_rx_path_encode(uint8_t path, uint8_t *out, size_t cap);
int ser_rx_path_decode(const uint8_t *payload, size_t len, uint8_t *path);

#define SER_CHUNK_HEADER_SIZE 11
#define SER_CHUNK_MAX_DATA (SER_MAX_PAYLOAD - SER_CHUNK_HEADER_SIZE)
#define SER_CHUNK_MAX_RAW_SAMPLES (SER_CHUNK_MAX_DATA / 2) /* 1018: a raw chunk never carries more */
typedef struct {
  uint32_t clip_id, offset;
  uint16_t n_samples;
  uint8_t encoding;
  const uint8_t *data;
  uint16_t data_len;
} ser_chunk;
/* Decode checks n_samples >= 1 and, for SER_PCM_RAW, data_len == 2 * n_samples; other encodings
 * are left to ser_pcm_decode (ser_pcm_codec.h). */
size_t ser_chunk_encode(const ser_chunk *m, uint8_t *out, size_t cap);
int ser_chunk_decode(const uint8_t *payload, size_t len, ser_chunk *m);

#define SER_RESULT_SIZE(n_scores) (14u + (size_t)(n_scores))
typedef struct {
  uint32_t clip_id;
  uint8_t class_index;
  uint8_t n_scores;
  const int8_t *scores;
  uint32_t frontend_cycles, invoke_cycles;
} ser_result;
size_t ser_result_encode(const ser_result *m, uint8_t *out, size_t cap);
int ser_result_decode(const uint8_t *payload, size_t len, ser_result *m);

#define SER_ERROR_HEADER_SIZE 3
typedef struct {
  uint8_t code, offending_type, offending_seq;
  const char *message; /* UTF-8, not NUL-terminated when decoded */
  uint16_t message_len;
} ser_error;
/* Encode cuts the message to what fits (at most SER_MAX_PAYLOAD - 3 bytes); 0 only if cap < 3. */
size_t ser_error_encode(const ser_error *m, uint8_t *out, size_t cap);
int ser_error_decode(const uint8_t *payload, size_t len, ser_error *m);

/* PROFILE_DATA: count u16, then count x (name_len u8, name, ticks u32). Built one entry at a time. */
typedef struct {
  uint8_t *out;
  size_t cap, len;
  uint16_t count;
} ser_profile_writer;
typedef struct {
  ser_text name;
  uint32_t ticks;
} ser_profile_entry;
/* false if cap < 2. */
bool ser_profile_begin(ser_profile_writer *w, uint8_t *out, size_t cap);
/* Appends one entry (name cut at 255 bytes); false, leaving the payload as it was, if it does not fit. */
bool ser_profile_add(ser_profile_writer *w, const char *name, uint32_t ticks);
/* Checks the whole payload, sets *count and fills the first min(count, max_entries) entries. */
int ser_profile_decode(const uint8_t *payload, size_t len, ser_profile_entry *entries, size_t max_entries, uint16_t *count);

/* ---- raw tensors (PROTOCOL.md section 12) ----
 * TENSOR_START(req, index, n_bytes) -> TENSOR_NEXT; TENSOR_CHUNK(req, index, offset, data) -> TENSOR_NEXT
 * (max_bytes 0 once the tensor is complete); INVOKE(req) -> INVOKED; TENSOR_READ(req, index, offset,
 * max_bytes) -> TENSOR_DATA. Tensor bytes are the tensor's data as TFLM holds it (little-endian). */
#define SER_TENSOR_START_SIZE 9
typedef struct {
  uint32_t req_id;
  uint8_t index;
  uint32_t n_bytes;
} ser_tensor_start;
size_t ser_tensor_start_encode(const ser_tensor_start *m, uint8_t *out, size_t cap);
int ser_tensor_start_decode(const uint8_t *payload, size_t len, ser_tensor_start *m);

#define SER_TENSOR_NEXT_SIZE 11
#define SER_TENSOR_READ_SIZE 11
typedef struct {
  uint32_t req_id;
  uint8_t index;
  uint32_t offset;
  uint16_t max_bytes;
} ser_tensor_next; /* TENSOR_NEXT and TENSOR_READ share this layout */
size_t ser_tensor_next_encode(const ser_tensor_next *m, uint8_t *out, size_t cap);
int ser_tensor_next_decode(const uint8_t *payload, size_t len, ser_tensor_next *m);

#define SER_TENSOR_CHUNK_HEADER_SIZE 9
#define SER_TENSOR_CHUNK_MAX_DATA (SER_MAX_PAYLOAD - SER_TENSOR_CHUNK_HEADER_SIZE)
typedef struct {
  uint32_t req_id;
  uint8_t index;
  uint32_t offset;
  const uint8_t *data;
  uint16_t data_len;
} ser_tensor_chunk; /* TENSOR_CHUNK and TENSOR_DATA share this layout; decode checks data_len >= 1 */
size_t ser_tensor_chunk_encode(const ser_tensor_chunk *m, uint8_t *out, size_t cap);
int ser_tensor_chunk_decode(const uint8_t *payload, size_t len, ser_tensor_chunk *m);

#define SER_INVOKE_SIZE 4
#define SER_INVOKED_SIZE(n_outputs) (9u + 4u * (size_t)(n_outputs))
#define SER_MAX_TENSORS 16
typedef struct {
  uint32_t req_id, invoke_cycles;
  uint8_t n_outputs;
  uint32_t output_bytes[SER_MAX_TENSORS];
} ser_invoked;
size_t ser_invoked_encode(const ser_invoked *m, uint8_t *out, size_t cap);
int ser_invoked_decode(const uint8_t *payload, size_t len, ser_invoked *m);

/* ---- every tensor of the graph (PROTOCOL.md section 13) ----
 * After INVOKED, LAYER_READ(req, tensor, offset, max_bytes) -> LAYER_DATA(req, tensor, offset, data):
 * any tensor of the graph by its index in the model's tensor table (a board that keeps them all). */
#define SER_LAYER_READ_SIZE 12
typedef struct {
  uint32_t req_id;
  uint16_t tensor;
  uint32_t offset;
  uint16_t max_bytes;
} ser_layer_read;
size_t ser_layer_read_encode(const ser_layer_read *m, uint8_t *out, size_t cap);
int ser_layer_read_decode(const uint8_t *payload, size_t len, ser_layer_read *m);

#define SER_LAYER_DATA_HEADER_SIZE 10
#define SER_LAYER_DATA_MAX_DATA (SER_MAX_PAYLOAD - SER_LAYER_DATA_HEADER_SIZE)
typedef struct {
  uint32_t req_id;
  uint16_t tensor;
  uint32_t offset;
  const uint8_t *data;
  uint16_t data_len;
} ser_layer_data; /* decode checks data_len >= 1 */
size_t ser_layer_data_encode(const ser_layer_data *m, uint8_t *out, size_t cap);
int ser_layer_data_decode(const uint8_t *payload, size_t len, ser_layer_data *m);

/* ---- per-speaker statistics (PROTOCOL.md section 14) ----
 * NORM(op) with op READ or RESET, or NORM(LOAD, state) -> NORM_STATE(state): the statistics' sums the
 * board holds afterwards. A state: mode u8, n_bins u16, clips u32, frames u32, then sum i64[n_bins]
 * and squares i64[n_bins] (little-endian), ser_speaker_norm.h's ser_sn_sums on the wire. */
#define SER_NORM_READ 0
#define SER_NORM_RESET 1
#define SER_NORM_LOAD 2
#define SER_NORM_STATE_HEADER_SIZE 11
#define SER_NORM_STATE_SIZE(n_bins) (SER_NORM_STATE_HEADER_SIZE + 16u * (n_bins))
#define SER_NORM_MAX_BINS 127 /* 1 + SER_NORM_STATE_SIZE(127) = 2044 bytes: a LOAD fits one frame */
typedef struct {
  uint8_t mode;
  uint16_t n_bins;
  uint32_t clips, frames;
  const uint8_t *sums; /* decode: 16 * n_bins bytes in the payload; read them with ser_norm_sum/ser_norm_square */
} ser_norm_state;
size_t ser_norm_state_encode(const ser_norm_state *m, const int64_t *sum, const int64_t *squares, uint8_t *out,
                             size_t cap);
int ser_norm_state_decode(const uint8_t *payload, size_t len, ser_norm_state *m);
int64_t ser_norm_sum(const ser_norm_state *m, uint16_t bin);
int64_t ser_norm_square(const ser_norm_state *m, uint16_t bin);
/* NORM: op u8, then for LOAD the state. SER_ERR_BAD_NORM for an unknown op, BAD_LENGTH for a wrong size. */
int ser_norm_decode(const uint8_t *payload, size_t len, uint8_t *op, ser_norm_state *state);
size_t ser_norm_encode(uint8_t op, const ser_norm_state *state, const int64_t *sum, const int64_t *squares, uint8_t *out,
                       size_t cap);

/* ---- per-speaker embedding statistics (PROTOCOL.md section 15) ----
 * EMBED(op) with op READ or RESET, or EMBED(LOAD, state) -> EMBED_STATE(state). A state: dim u16,
 * clips u32, then sum i32[dim] and squares i32[dim] (little-endian), ser_embedding_norm.h's
 * ser_en_sums on the wire. The ops are NORM's (SER_NORM_READ, _RESET, _LOAD). */
#define SER_EMBED_STATE_HEADER_SIZE 6
#define SER_EMBED_STATE_SIZE(dim) (SER_EMBED_STATE_HEADER_SIZE + 8u * (dim))
#define SER_EMBED_MAX_DIM 255 /* 1 + SER_EMBED_STATE_SIZE(255) = 2047 bytes: a LOAD fits one frame */
typedef struct {
  uint16_t dim;
  uint32_t clips;
  const uint8_t *sums; /* decode: 8 * dim bytes in the payload; read them with ser_embed_sum/ser_embed_square */
} ser_embed_state;
size_t ser_embed_state_encode(const ser_embed_state *m, const int32_t *sum, const int32_t *squares, uint8_t *out,
                              size_t cap);
int ser_embed_state_decode(const uint8_t *payload, size_t len, ser_embed_state *m);
int32_t ser_embed_sum(const ser_embed_state *m, uint16_t i);
int32_t ser_embed_square(const ser_embed_state *m, uint16_t i);
/* EMBED: op u8, then for LOAD the state. SER_ERR_BAD_NORM for an unknown op, BAD_LENGTH for a wrong size. */
int ser_embed_decode(const uint8_t *payload, size_t len, uint8_t *op, ser_embed_state *state);
size_t ser_embed_encode(uint8_t op, const ser_embed_state *state, const int32_t *sum, const int32_t *squares,
                        uint8_t *out, size_t cap);

/* ---- INFO / BOOT: a TLV list (tag u8, len u8, value[len]) ----
 * Decoders skip unknown tags. A known tag's value may grow at its end in later versions: decoders
 * read the fields they know and ignore the rest; a value shorter than its fields is BAD_LENGTH. */
enum {
  SER_TAG_PROTO_VERSION = 0x01,     /* u8 */
  SER_TAG_RESET_REASON = 0x02,      /* code u8 (ser_port.h SER_RESET_*, 0 unknown), text */
  SER_TAG_BOARD = 0x03,             /* text */
  SER_TAG_CORE_CLOCK = 0x04,        /* Hz u32 */
  SER_TAG_CYCLE_COUNTER = 0x05,     /* text: what the cycle fields count */
  SER_TAG_MODEL_SHA256 = 0x06,      /* 32 bytes */
  SER_TAG_INPUT = 0x07,             /* tensor spec, below */
  SER_TAG_OUTPUT = 0x08,            /* tensor spec */
  SER_TAG_FRONTEND = 0x09,          /* kind u8 (ser_frontend.h SER_FE_*), clip_samples u32, sample_rate u32 */
  SER_TAG_LABEL = 0x0A,             /* text; one tag per label, in output order */
  SER_TAG_ARENA = 0x0B,             /* size u32, used u32 */
  SER_TAG_MAX_CHUNK_SAMPLES = 0x0C, /* u16 */
  SER_TAG_BUILD_ID = 0x0D,          /* text */
  SER_TAG_PCM_ENCODINGS = 0x0E,     /* bitmask u8: bit n = encoding n */
  SER_TAG_RX_PATHS = 0x0F,          /* u8: ways in for the host's stream, path 0 the UART (section 8) */
  SER_TAG_TENSOR_IO = 0x10,         /* n_inputs u8, n_outputs u8, max_chunk_bytes u16: raw tensors (section 12) */
  SER_TAG_LAYERS = 0x11,            /* n_tensors u16: every tensor is kept and readable (section 13) */
  SER_TAG_SPEAKER_NORM = 0x12,      /* mode u8 (ser_speaker_norm.h SER_SN_*), n_bins u16 (section 14) */
  SER_TAG_EMBEDDING_NORM = 0x13     /* dim u16, classes u8, prior_clips u8 (section 15) */
};

/* ser_info.present: one bit per tag above (1 << tag); the LABEL bit stands for all n_labels labels. */
#define SER_INFO_HAS(tag) (1ul << (tag))
#define SER_INFO_ALL 0xFFFEul /* the tags of version 1's first table; the later ones are added on their own */

/* Tensor dtypes: TfLiteType codes. */
enum { SER_DTYPE_FLOAT32 = 1, SER_DTYPE_UINT8 = 3, SER_DTYPE_INT16 = 7, SER_DTYPE_INT8 = 9 };

#define SER_INFO_MAX_DIMS 6
#define SER_INFO_MAX_LABELS 32

/* Tensor spec value: dtype u8, scale f32, zero_point i32, n_dims u8, dims u32[n_dims]. */
typedef struct {
  uint8_t dtype;
  float scale;
  int32_t zero_point;
  uint8_t n_dims;
  uint32_t dims[SER_INFO_MAX_DIMS];
} ser_tensor_spec;

typedef struct {
  uint32_t present; /* SER_INFO_HAS(tag) bits: encode writes these tags, decode reports them */
  uint8_t proto_version;
  uint8_t reset_code;
  ser_text reset_text;
  ser_text board;
  uint32_t core_clock_hz;
  ser_text cycle_counter;
  uint8_t model_sha256[32];
  ser_tensor_spec input, output;
  uint8_t fe_kind;
  uint32_t clip_samples, sample_rate;
  uint8_t n_labels;
  ser_text labels[SER_INFO_MAX_LABELS];
  uint32_t arena_size, arena_used;
  uint16_t max_chunk_samples;
  ser_text build_id;
  uint8_t pcm_encodings;
  uint8_t rx_paths;
  uint8_t n_inputs, n_outputs; /* TENSOR_IO */
  uint16_t max_tensor_chunk;
  uint16_t n_tensors; /* LAYERS */
  uint8_t sn_mode;    /* SPEAKER_NORM */
  uint16_t sn_bins;
  uint16_t en_dim; /* EMBEDDING_NORM */
  uint8_t en_classes, en_prior_clips;
} ser_info;

size_t ser_info_encode(const ser_info *info, uint8_t *out, size_t cap);
/* BAD_LENGTH for a TLV running past the payload, a short known value, more than
 * SER_INFO_MAX_LABELS labels or SER_INFO_MAX_DIMS dims (limits of this decoder, not of the protocol). */
int ser_info_decode(const uint8_t *payload, size_t len, ser_info *info);
/* Appends one TLV at out[len]; returns the new length, 0 if it does not fit in cap. */
size_t ser_tlv_append(uint8_t *out, size_t cap, size_t len, uint8_t tag, const void *value, uint8_t value_len);

#ifdef __cplusplus
}
#endif

#endif /* SER_PROTOCOL_H_ */
