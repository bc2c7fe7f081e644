/* libFuzzer target for the serial protocol: the streaming parser, every payload decoder and the PCM
 * decoder, with sanitizers watching memory and a few round-trip oracles (abort() on a mismatch).
 *
 *   clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *         -I firmware/app firmware/fuzz/fuzz_parser.c firmware/app/ser_protocol.c \
 *         firmware/app/ser_pcm_codec.c -o fuzz_parser && ./fuzz_parser -max_total_time=60 corpus/
 *
 * Input: mode byte, then
 *   mode & 1 == 0: a byte stream for the parser (mode & 2: also reset the parser after every 0x00
 *                  byte, as an inter-byte timeout would); each frame found is decoded and re-parsed;
 *   mode & 3 == 1: type u8, payload (straight to the decoders: random bytes rarely pass the CRC);
 *   mode & 3 == 3: encoding u8, n_samples u16 LE, data (straight to ser_pcm_decode).
 * tests/test_protocol_fuzz.py builds and runs it with a seed corpus made from tests/golden_frames.json.
 */
#include <stdlib.h>
#include <string.h>

#include "ser_pcm_codec.h"
#include "ser_protocol.h"

#define MAX_ENTRIES (SER_MAX_PAYLOAD / 5)

static ser_parser g_parser, g_reparser;
static uint8_t g_out[SER_FRAME_MAX_SIZE];
static int16_t g_pcm[65535];
static ser_profile_entry g_entries[MAX_ENTRIES];
static ser_info g_info, g_info2;

static void check(int ok) {
  if (!ok) abort();
}

static int text_eq(ser_text a, ser_text b) { return a.len == b.len && (a.len == 0 || memcmp(a.s, b.s, a.len) == 0); }

static int spec_eq(const ser_tensor_spec *a, const ser_tensor_spec *b) {
  return a->dtype == b->dtype && memcmp(&a->scale, &b->scale, sizeof a->scale) == 0 && a->zero_point == b->zero_point &&
         a->n_dims == b->n_dims && memcmp(a->dims, b->dims, a->n_dims * sizeof a->dims[0]) == 0;
}

static int64_t g_sums[SER_NORM_MAX_BINS], g_squares[SER_NORM_MAX_BINS];
static int32_t g_embed_sums[SER_EMBED_MAX_DIM], g_embed_squares[SER_EMBED_MAX_DIM];

/* What INFO decoding kept must survive encode + decode. */
static void check_info_roundtrip(const ser_info *a) {
  size_t n = ser_info_encode(a, g_out, SER_MAX_PAYLOAD);
  check(n > 0 || a->present == 0);
  check(ser_info_decode(g_out, n, &g_info2) == SER_ERR_NONE);
  const ser_info *b = &g_info2;
  check(a->present == b->present && a->proto_version == b->proto_version && a->reset_code == b->reset_code);
  check(text_eq(a->reset_text, b->reset_text) && text_eq(a->board, b->board) && text_eq(a->cycle_counter, b->cycle_counter));
  check(a->core_clock_hz == b->core_clock_hz && memcmp(a->model_sha256, b->model_sha256, 32) == 0);
  check(spec_eq(&a->input, &b->input) && spec_eq(&a->output, &b->output));
  check(a->fe_kind == b->fe_kind && a->clip_samples == b->clip_samples && a->sample_rate == b->sample_rate);
  check(a->n_labels == b->n_labels);
  for (size_t i = 0; i < a->n_labels; i++) check(text_eq(a->labels[i], b->labels[i]));
  check(a->arena_size == b->arena_size && a->arena_used == b->arena_used && a->max_chunk_samples == b->max_chunk_samples);
  check(text_eq(a->build_id, b->build_id) && a->pcm_encodings == b->pcm_encodings);
  check(a->n_tensors == b->n_tensors && a->sn_mode == b->sn_mode && a->sn_bins == b->sn_bins);
}

static void check_profile_roundtrip(const uint8_t *p, size_t n, uint16_t count) {
  ser_profile_writer w;
  char name[256];
  check(ser_profile_begin(&w, g_out, SER_MAX_PAYLOAD));
  for (size_t i = 0; i < count; i++) {
    const ser_profile_entry *e = &g_entries[i];
    if (e->name.len && memchr(e->name.s, 0, e->name.len)) return; /* a NUL cuts a C-string name: no oracle */
    memcpy(name, e->name.s, e->name.len);
    name[e->name.len] = 0;
    check(ser_profile_add(&w, name, e->ticks));
  }
  check(w.len == n && memcmp(g_out, p, n) == 0);
}

/* Decode as `type`; whatever decodes must encode back to the same bytes. */
static void decode_payload(uint8_t type, const uint8_t *p, size_t n) {
  switch (type) {
    case SER_MSG_HELLO:
    case SER_MSG_PROFILE:
    case SER_MSG_RESET:
      check(ser_empty_decode(p, n) == (n ? SER_ERR_BAD_LENGTH : SER_ERR_NONE));
      break;
    case SER_MSG_START: {
      ser_start m;
      if (ser_start_decode(p, n, &m) == SER_ERR_NONE) check(ser_start_encode(&m, g_out, sizeof g_out) == n && !memcmp(g_out, p, n));
      break;
    }
    case SER_MSG_NEXT: {
      ser_next m;
      if (ser_next_decode(p, n, &m) == SER_ERR_NONE) check(ser_next_encode(&m, g_out, sizeof g_out) == n && !memcmp(g_out, p, n));
      break;
    }
    case SER_MSG_CHUNK: {
      ser_chunk m;
      if (ser_chunk_decode(p, n, &m) == SER_ERR_NONE) {
        check(ser_chunk_encode(&m, g_out, sizeof g_out) == n && !memcmp(g_out, p, n));
        int r = ser_pcm_decode(m.encoding, m.data, m.data_len, g_pcm, m.n_samples);
        check(r == SER_ERR_NONE || r == SER_ERR_BAD_ENCODING);
        if (m.encoding == SER_PCM_RAW) {
          check(r == SER_ERR_NONE);
          for (size_t i = 0; i < m.n_samples; i++) check((uint16_t)g_pcm[i] == (m.data[2 * i] | (m.data[2 * i + 1] << 8)));
        }
      }
      break;
    }
    case SER_MSG_RESULT: {
      ser_result m;
      if (ser_result_decode(p, n, &m) == SER_ERR_NONE) check(ser_result_encode(&m, g_out, sizeof g_out) == n && !memcmp(g_out, p, n));
      break;
    }
    case SER_MSG_ERROR: {
      ser_error m;
      if (ser_error_decode(p, n, &m) == SER_ERR_NONE) check(ser_error_encode(&m, g_out, sizeof g_out) == n && !memcmp(g_out, p, n));
      break;
    }
    case SER_MSG_PROFILE_DATA: {
      uint16_t count = 0;
      if (ser_profile_decode(p, n, g_entries, MAX_ENTRIES, &count) == SER_ERR_NONE) {
        check(count <= MAX_ENTRIES);
        check_profile_roundtrip(p, n, count);
      }
      break;
    }
    case SER_MSG_NORM:
    case SER_MSG_NORM_STATE: { /* the state's sums survive decode + encode byte for byte */
      ser_norm_state m;
      uint8_t op = SER_NORM_LOAD;
      int err = type == SER_MSG_NORM ? ser_norm_decode(p, n, &op, &m) : ser_norm_state_decode(p, n, &m);
      if (err != SER_ERR_NONE) break;
      for (uint16_t i = 0; i < m.n_bins; i++) {
        g_sums[i] = ser_norm_sum(&m, i);
        g_squares[i] = ser_norm_square(&m, i);
      }
      size_t out = type == SER_MSG_NORM ? ser_norm_encode(op, &m, g_sums, g_squares, g_out, sizeof g_out)
                                        : ser_norm_state_encode(&m, g_sums, g_squares, g_out, sizeof g_out);
      check(out == n && !memcmp(g_out, p, n));
      break;
    }
    case SER_MSG_EMBED:
    case SER_MSG_EMBED_STATE: { /* the same for the embedding statistics */
      ser_embed_state m;
      uint8_t op = SER_NORM_LOAD;
      int err = type == SER_MSG_EMBED ? ser_embed_decode(p, n, &op, &m) : ser_embed_state_decode(p, n, &m);
      if (err != SER_ERR_NONE) break;
      for (uint16_t i = 0; i < m.dim; i++) {
        g_embed_sums[i] = ser_embed_sum(&m, i);
        g_embed_squares[i] = ser_embed_square(&m, i);
      }
      size_t out = type == SER_MSG_EMBED ? ser_embed_encode(op, &m, g_embed_sums, g_embed_squares, g_out, sizeof g_out)
                                         : ser_embed_state_encode(&m, g_embed_sums, g_embed_squares, g_out, sizeof g_out);
      check(out == n && !memcmp(g_out, p, n));
      break;
    }
    case SER_MSG_BOOT:
    case SER_MSG_INFO:
      if (ser_info_decode(p, n, &g_info) == SER_ERR_NONE) check_info_roundtrip(&g_info);
      break;
    default:
      break;
  }
}

static void parse_stream(const uint8_t *data, size_t size, int reset_on_zero) {
  ser_parser_init(&g_parser);
  for (size_t i = 0; i < size; i++) {
    int r = ser_parser_feed(&g_parser, data[i]);
    check(r == SER_PARSE_NONE || r == SER_PARSE_FRAME || r == SER_PARSE_ERR_CRC || r == SER_PARSE_ERR_TOO_LONG);
    check(g_parser.frame.len <= SER_MAX_PAYLOAD && g_parser.pos <= SER_MAX_PAYLOAD);
    if (r == SER_PARSE_FRAME) {
      const ser_frame *f = &g_parser.frame;
      decode_payload(f->type, f->payload, f->len);
      /* The frame re-encodes to bytes that parse to the same frame, completing on the last byte. */
      size_t n = ser_frame_encode(f->type, f->seq, f->payload, f->len, g_out, sizeof g_out);
      check(n == (size_t)f->len + SER_FRAME_OVERHEAD);
      ser_parser_init(&g_reparser);
      for (size_t j = 0; j < n; j++) check(ser_parser_feed(&g_reparser, g_out[j]) == (j + 1 == n ? SER_PARSE_FRAME : SER_PARSE_NONE));
      check(g_reparser.frame.type == f->type && g_reparser.frame.seq == f->seq && g_reparser.frame.len == f->len);
      check(memcmp(g_reparser.frame.payload, f->payload, f->len) == 0);
    }
    if (reset_on_zero && data[i] == 0) ser_parser_reset(&g_parser);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t mode = data[0];
  data++;
  size--;
  if ((mode & 1) == 0) {
    parse_stream(data, size, mode & 2);
  } else if ((mode & 3) == 1) {
    if (size >= 1) decode_payload(data[0], data + 1, size - 1 > SER_MAX_PAYLOAD ? SER_MAX_PAYLOAD : size - 1);
  } else if (size >= 3) {
    size_t n = (size_t)data[1] | ((size_t)data[2] << 8);
    int r = ser_pcm_decode(data[0], data + 3, size - 3, g_pcm, n);
    check(r == SER_ERR_NONE || r == SER_ERR_BAD_LENGTH || r == SER_ERR_BAD_ENCODING);
  }
  return 0;
}
