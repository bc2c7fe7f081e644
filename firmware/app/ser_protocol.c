/* Board <-> host serial protocol, version 1: framing, CRC, streaming parser and message payloads.
 * The spec is firmware/PROTOCOL.md; host/protocol.py implements the same bytes in Python. */
#include "ser_protocol.h"

#include <string.h>

enum { ST_SYNC0, ST_SYNC1, ST_TYPE, ST_SEQ, ST_LEN0, ST_LEN1, ST_PAYLOAD, ST_CRC0, ST_CRC1 };

/* ---- little-endian helpers (byte by byte: alignment- and endian-independent) ---- */

static void put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void put_f32(uint8_t *p, float f) {
  uint32_t v;
  memcpy(&v, &f, sizeof v);
  put_u32(p, v);
}

static float get_f32(const uint8_t *p) {
  uint32_t v = get_u32(p);
  float f;
  memcpy(&f, &v, sizeof f);
  return f;
}

/* ---- CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, MSB first, no xorout; check "123456789" = 0x29B1 ---- */

uint16_t ser_crc16_update(uint16_t crc, uint8_t byte) {
  /* Table-free byte step of the MSB-first 0x1021 CRC (shifts only; no 512-byte table in flash). */
  uint16_t x = (uint16_t)(((crc >> 8) ^ byte) & 0xFFu);
  x ^= (uint16_t)(x >> 4);
  return (uint16_t)((crc << 8) ^ (x << 12) ^ (x << 5) ^ x);
}

uint16_t ser_crc16(const uint8_t *data, size_t n) {
  uint16_t crc = 0xFFFFu;
  for (size_t i = 0; i < n; i++) crc = ser_crc16_update(crc, data[i]);
  return crc;
}

/* ---- parser ---- */

void ser_parser_init(ser_parser *p) {
  memset(p, 0, sizeof *p);
  p->state = ST_SYNC0;
}

void ser_parser_reset(ser_parser *p) {
  p->state = ST_SYNC0;
  p->pos = 0;
}

bool ser_parser_in_frame(const ser_parser *p) { return p->state >= ST_TYPE; }

int ser_parser_feed(ser_parser *p, uint8_t byte) {
  switch (p->state) {
    case ST_SYNC0:
      if (byte == SER_SYNC0) p->state = ST_SYNC1;
      return SER_PARSE_NONE;
    case ST_SYNC1:
      if (byte == SER_SYNC1) {
        p->state = ST_TYPE;
        p->crc = 0xFFFFu;
        p->frame.type = 0;
        p->frame.seq = 0;
        p->frame.len = 0;
      } else if (byte != SER_SYNC0) { /* 0xA5 0xA5 0x5A still syncs */
        p->state = ST_SYNC0;
      }
      return SER_PARSE_NONE;
    case ST_TYPE:
      p->frame.type = byte;
      p->crc = ser_crc16_update(p->crc, byte);
      p->state = ST_SEQ;
      return SER_PARSE_NONE;
    case ST_SEQ:
      p->frame.seq = byte;
      p->crc = ser_crc16_update(p->crc, byte);
      p->state = ST_LEN0;
      return SER_PARSE_NONE;
    case ST_LEN0:
      p->frame.len = byte;
      p->crc = ser_crc16_update(p->crc, byte);
      p->state = ST_LEN1;
      return SER_PARSE_NONE;
    case ST_LEN1:
      p->frame.len = (uint16_t)(p->frame.len | (byte << 8));
      p->crc = ser_crc16_update(p->crc, byte);
      p->pos = 0;
      if (p->frame.len > SER_MAX_PAYLOAD) {
        p->frame.len = 0;
        p->state = ST_SYNC0;
        return SER_PARSE_ERR_TOO_LONG;
      }
      p->state = p->frame.len ? ST_PAYLOAD : ST_CRC0;
      return SER_PARSE_NONE;
    case ST_PAYLOAD:
      if (p->pos >= p->frame.len || p->pos >= SER_MAX_PAYLOAD) { /* unreachable: len was checked */
        ser_parser_reset(p);
        return SER_PARSE_NONE;
      }
      p->frame.payload[p->pos++] = byte;
      p->crc = ser_crc16_update(p->crc, byte);
      if (p->pos == p->frame.len) p->state = ST_CRC0;
      return SER_PARSE_NONE;
    case ST_CRC0:
      p->crc_rx = byte;
      p->state = ST_CRC1;
      return SER_PARSE_NONE;
    case ST_CRC1:
      p->crc_rx = (uint16_t)(p->crc_rx | (byte << 8));
      p->state = ST_SYNC0;
      if (p->crc_rx != p->crc) {
        p->frame.len = 0;
        return SER_PARSE_ERR_CRC;
      }
      return SER_PARSE_FRAME;
    default:
      ser_parser_reset(p);
      return SER_PARSE_NONE;
  }
}

size_t ser_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t len, uint8_t *out, size_t out_size) {
  if (len > SER_MAX_PAYLOAD || out_size < (size_t)len + SER_FRAME_OVERHEAD) return 0;
  if (len && payload != out + SER_FRAME_HEADER_SIZE) memmove(out + SER_FRAME_HEADER_SIZE, payload, len);
  out[0] = SER_SYNC0;
  out[1] = SER_SYNC1;
  out[2] = type;
  out[3] = seq;
  put_u16(out + 4, len);
  uint16_t crc = ser_crc16(out + 2, (size_t)len + 4);
  put_u16(out + SER_FRAME_HEADER_SIZE + len, crc);
  return (size_t)len + SER_FRAME_OVERHEAD;
}

/* ---- payloads ---- */

ser_text ser_cstr(const char *s) {
  ser_text t = {s, 0};
  if (s) {
    size_t n = strlen(s);
    t.len = (uint8_t)(n > 255 ? 255 : n);
  }
  return t;
}

int ser_empty_decode(const uint8_t *payload, size_t len) {
  (void)payload;
  return len == 0 ? SER_ERR_NONE : SER_ERR_BAD_LENGTH;
}

size_t ser_start_encode(const ser_start *m, uint8_t *out, size_t cap) {
  if (cap < SER_START_SIZE) return 0;
  put_u32(out, m->clip_id);
  put_u32(out + 4, m->n_samples);
  return SER_START_SIZE;
}

int ser_start_decode(const uint8_t *payload, size_t len, ser_start *m) {
  if (len != SER_START_SIZE) return SER_ERR_BAD_LENGTH;
  m->clip_id = get_u32(payload);
  m->n_samples = get_u32(payload + 4);
  return SER_ERR_NONE;
}

size_t ser_next_encode(const ser_next *m, uint8_t *out, size_t cap) {
  if (cap < SER_NEXT_SIZE) return 0;
  put_u32(out, m->clip_id);
  put_u32(out + 4, m->offset);
  put_u16(out + 8, m->max_samples);
  return SER_NEXT_SIZE;
}

int ser_next_decode(const uint8_t *payload, size_t len, ser_next *m) {
  if (len != SER_NEXT_SIZE) return SER_ERR_BAD_LENGTH;
  m->clip_id = get_u32(payload);
  m->offset = get_u32(payload + 4);
  m->max_samples = get_u16(payload + 8);
  return SER_ERR_NONE;
}

size_t ser_rx_path_encode(uint8_t path, uint8_t *out, size_t cap) {
  if (cap < SER_RX_PATH_SIZE) return 0;
  out[0] = path;
  return SER_RX_PATH_SIZE;
}

int ser_rx_path_decode(const uint8_t *payload, size_t len, uint8_t *path) {
  if (len != SER_RX_PATH_SIZE) return SER_ERR_BAD_LENGTH;
  *path = payload[0];
  return SER_ERR_NONE;
}

size_t ser_chunk_encode(const ser_chunk *m, uint8_t *out, size_t cap) {
  size_t n = SER_CHUNK_HEADER_SIZE + (size_t)m->data_len;
  if (n > SER_MAX_PAYLOAD || n > cap) return 0;
  if (m->data_len) memmove(out + SER_CHUNK_HEADER_SIZE, m->data, m->data_len);
  put_u32(out, m->clip_id);
  put_u32(out + 4, m->offset);
  put_u16(out + 8, m->n_samples);
  out[10] = m->encoding;
  return n;
}

int ser_chunk_decode(const uint8_t *payload, size_t len, ser_chunk *m) {
  if (len < SER_CHUNK_HEADER_SIZE || len > SER_MAX_PAYLOAD) return SER_ERR_BAD_LENGTH;
  m->clip_id = get_u32(payload);
  m->offset = get_u32(payload + 4);
  m->n_samples = get_u16(payload + 8);
  m->encoding = payload[10];
  m->data = payload + SER_CHUNK_HEADER_SIZE;
  m->data_len = (uint16_t)(len - SER_CHUNK_HEADER_SIZE);
  if (m->n_samples == 0) return SER_ERR_BAD_LENGTH;
  if (m->encoding == SER_PCM_RAW && (size_t)m->data_len != 2u * m->n_samples) return SER_ERR_BAD_LENGTH;
  return SER_ERR_NONE;
}

size_t ser_result_encode(const ser_result *m, uint8_t *out, size_t cap) {
  size_t n = SER_RESULT_SIZE(m->n_scores);
  if (n > cap) return 0;
  put_u32(out, m->clip_id);
  out[4] = m->class_index;
  out[5] = m->n_scores;
  for (size_t i = 0; i < m->n_scores; i++) out[6 + i] = (uint8_t)m->scores[i];
  put_u32(out + 6 + m->n_scores, m->frontend_cycles);
  put_u32(out + 10 + m->n_scores, m->invoke_cycles);
  return n;
}

int ser_result_decode(const uint8_t *payload, size_t len, ser_result *m) {
  if (len < SER_RESULT_SIZE(0) || len != SER_RESULT_SIZE(payload[5])) return SER_ERR_BAD_LENGTH;
  m->clip_id = get_u32(payload);
  m->class_index = payload[4];
  m->n_scores = payload[5];
  m->scores = (const int8_t *)(const void *)(payload + 6);
  m->frontend_cycles = get_u32(payload + 6 + m->n_scores);
  m->invoke_cycles = get_u32(payload + 10 + m->n_scores);
  return SER_ERR_NONE;
}

size_t ser_error_encode(const ser_error *m, uint8_t *out, size_t cap) {
  if (cap < SER_ERROR_HEADER_SIZE) return 0;
  size_t room = (cap < SER_MAX_PAYLOAD ? cap : SER_MAX_PAYLOAD) - SER_ERROR_HEADER_SIZE;
  size_t n = m->message ? m->message_len : 0;
  if (n > room) n = room;
  if (n) memmove(out + SER_ERROR_HEADER_SIZE, m->message, n);
  out[0] = m->code;
  out[1] = m->offending_type;
  out[2] = m->offending_seq;
  return SER_ERROR_HEADER_SIZE + n;
}

int ser_error_decode(const uint8_t *payload, size_t len, ser_error *m) {
  if (len < SER_ERROR_HEADER_SIZE || len > SER_MAX_PAYLOAD) return SER_ERR_BAD_LENGTH;
  m->code = payload[0];
  m->offending_type = payload[1];
  m->offending_seq = payload[2];
  m->message = (const char *)(payload + SER_ERROR_HEADER_SIZE);
  m->message_len = (uint16_t)(len - SER_ERROR_HEADER_SIZE);
  return SER_ERR_NONE;
}

bool ser_profile_begin(ser_profile_writer *w, uint8_t *out, size_t cap) {
  w->out = out;
  w->cap = cap < SER_MAX_PAYLOAD ? cap : SER_MAX_PAYLOAD;
  w->len = 0;
  w->count = 0;
  if (w->cap < 2) return false;
  put_u16(out, 0);
  w->len = 2;
  return true;
}

bool ser_profile_add(ser_profile_writer *w, const char *name, uint32_t ticks) {
  ser_text t = ser_cstr(name);
  size_t need = 1u + t.len + 4u;
  if (w->len < 2 || w->count == 0xFFFFu || w->cap - w->len < need) return false;
  uint8_t *p = w->out + w->len;
  p[0] = t.len;
  if (t.len) memcpy(p + 1, t.s, t.len);
  put_u32(p + 1 + t.len, ticks);
  w->len += need;
  w->count++;
  put_u16(w->out, w->count);
  return true;
}

int ser_profile_decode(const uint8_t *payload, size_t len, ser_profile_entry *entries, size_t max_entries, uint16_t *count) {
  if (len < 2 || len > SER_MAX_PAYLOAD) return SER_ERR_BAD_LENGTH;
  uint16_t n = get_u16(payload);
  size_t pos = 2;
  for (uint16_t i = 0; i < n; i++) {
    if (len - pos < 1) return SER_ERR_BAD_LENGTH;
    uint8_t name_len = payload[pos];
    if (len - pos < 1u + name_len + 4u) return SER_ERR_BAD_LENGTH;
    if (i < max_entries) {
      entries[i].name.s = (const char *)(payload + pos + 1);
      entries[i].name.len = name_len;
      entries[i].ticks = get_u32(payload + pos + 1 + name_len);
    }
    pos += 1u + name_len + 4u;
  }
  if (pos != len) return SER_ERR_BAD_LENGTH;
  *count = n;
  return SER_ERR_NONE;
}

/* ---- INFO / BOOT ---- */

size_t ser_tlv_append(uint8_t *out, size_t cap, size_t len, uint8_t tag, const void *value, uint8_t value_len) {
  if (len > cap || cap - len < 2u + value_len) return 0;
  out[len] = tag;
  out[len + 1] = value_len;
  if (value_len) memmove(out + len + 2, value, value_len);
  return len + 2u + value_len;
}

/* Tensor spec value; returns its size (at most 10 + 4 * SER_INFO_MAX_DIMS bytes). */
/* ---- raw tensors ---- */

size_t ser_tensor_start_encode(const ser_tensor_start *m, uint8_t *out, size_t cap) {
  if (cap < SER_TENSOR_START_SIZE) return 0;
  put_u32(out, m->req_id);
  out[4] = m->index;
  put_u32(out + 5, m->n_bytes);
  return SER_TENSOR_START_SIZE;
}

int ser_tensor_start_decode(const uint8_t *payload, size_t len, ser_tensor_start *m) {
  if (len != SER_TENSOR_START_SIZE) return SER_ERR_BAD_LENGTH;
  m->req_id = get_u32(payload);
  m->index = payload[4];
  m->n_bytes = get_u32(payload + 5);
  return SER_ERR_NONE;
}

size_t ser_tensor_next_encode(const ser_tensor_next *m, uint8_t *out, size_t cap) {
  if (cap < SER_TENSOR_NEXT_SIZE) return 0;
  put_u32(out, m->req_id);
  out[4] = m->index;
  put_u32(out + 5, m->offset);
  put_u16(out + 9, m->max_bytes);
  return SER_TENSOR_NEXT_SIZE;
}

int ser_tensor_next_decode(const uint8_t *payload, size_t len, ser_tensor_next *m) {
  if (len != SER_TENSOR_NEXT_SIZE) return SER_ERR_BAD_LENGTH;
  m->req_id = get_u32(payload);
  m->index = payload[4];
  m->offset = get_u32(payload + 5);
  m->max_bytes = get_u16(payload + 9);
  return SER_ERR_NONE;
}

size_t ser_tensor_chunk_encode(const ser_tensor_chunk *m, uint8_t *out, size_t cap) {
  size_t n = SER_TENSOR_CHUNK_HEADER_SIZE + (size_t)m->data_len;
  if (m->data_len > SER_TENSOR_CHUNK_MAX_DATA || cap < n) return 0;
  if (m->data_len) memmove(out + SER_TENSOR_CHUNK_HEADER_SIZE, m->data, m->data_len);
  put_u32(out, m->req_id);
  out[4] = m->index;
  put_u32(out + 5, m->offset);
  return n;
}

int ser_tensor_chunk_decode(const uint8_t *payload, size_t len, ser_tensor_chunk *m) {
  if (len <= SER_TENSOR_CHUNK_HEADER_SIZE || len > SER_MAX_PAYLOAD) return SER_ERR_BAD_LENGTH;
  m->req_id = get_u32(payload);
  m->index = payload[4];
  m->offset = get_u32(payload + 5);
  m->data = payload + SER_TENSOR_CHUNK_HEADER_SIZE;
  m->data_len = (uint16_t)(len - SER_TENSOR_CHUNK_HEADER_SIZE);
  return SER_ERR_NONE;
}

size_t ser_invoked_encode(const ser_invoked *m, uint8_t *out, size_t cap) {
  if (m->n_outputs > SER_MAX_TENSORS || cap < SER_INVOKED_SIZE(m->n_outputs)) return 0;
  put_u32(out, m->req_id);
  put_u32(out + 4, m->invoke_cycles);
  out[8] = m->n_outputs;
  for (size_t i = 0; i < m->n_outputs; i++) put_u32(out + 9 + 4 * i, m->output_bytes[i]);
  return SER_INVOKED_SIZE(m->n_outputs);
}

int ser_invoked_decode(const uint8_t *payload, size_t len, ser_invoked *m) {
  if (len < SER_INVOKED_SIZE(0) || len != SER_INVOKED_SIZE(payload[8]) || payload[8] > SER_MAX_TENSORS) {
    return SER_ERR_BAD_LENGTH;
  }
  m->req_id = get_u32(payload);
  m->invoke_cycles = get_u32(payload + 4);
  m->n_outputs = payload[8];
  for (size_t i = 0; i < m->n_outputs; i++) m->output_bytes[i] = get_u32(payload + 9 + 4 * i);
  return SER_ERR_NONE;
}

size_t ser_layer_read_encode(const ser_layer_read *m, uint8_t *out, size_t cap) {
  if (cap < SER_LAYER_READ_SIZE) return 0;
  put_u32(out, m->req_id);
  put_u16(out + 4, m->tensor);
  put_u32(out + 6, m->offset);
  put_u16(out + 10, m->max_bytes);
  return SER_LAYER_READ_SIZE;
}

int ser_layer_read_decode(const uint8_t *payload, size_t len, ser_layer_read *m) {
  if (len != SER_LAYER_READ_SIZE) return SER_ERR_BAD_LENGTH;
  m->req_id = get_u32(payload);
  m->tensor = get_u16(payload + 4);
  m->offset = get_u32(payload + 6);
  m->max_bytes = get_u16(payload + 10);
  return SER_ERR_NONE;
}

size_t ser_layer_data_encode(const ser_layer_data *m, uint8_t *out, size_t cap) {
  size_t n = SER_LAYER_DATA_HEADER_SIZE + (size_t)m->data_len;
  if (m->data_len > SER_LAYER_DATA_MAX_DATA || cap < n) return 0;
  if (m->data_len) memmove(out + SER_LAYER_DATA_HEADER_SIZE, m->data, m->data_len);
  put_u32(out, m->req_id);
  put_u16(out + 4, m->tensor);
  put_u32(out + 6, m->offset);
  return n;
}

int ser_layer_data_decode(const uint8_t *payload, size_t len, ser_layer_data *m) {
  if (len <= SER_LAYER_DATA_HEADER_SIZE || len > SER_MAX_PAYLOAD) return SER_ERR_BAD_LENGTH;
  m->req_id = get_u32(payload);
  m->tensor = get_u16(payload + 4);
  m->offset = get_u32(payload + 6);
  m->data = payload + SER_LAYER_DATA_HEADER_SIZE;
  m->data_len = (uint16_t)(len - SER_LAYER_DATA_HEADER_SIZE);
  return SER_ERR_NONE;
}

static void put_u64(uint8_t *p, uint64_t v) {
  put_u32(p, (uint32_t)v);
  put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get_u64(const uint8_t *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

size_t ser_norm_state_encode(const ser_norm_state *m, const int64_t *sum, const int64_t *squares, uint8_t *out,
                             size_t cap) {
  const size_t n = SER_NORM_STATE_SIZE((size_t)m->n_bins);
  if (m->n_bins > SER_NORM_MAX_BINS || cap < n) return 0;
  out[0] = m->mode;
  put_u16(out + 1, m->n_bins);
  put_u32(out + 3, m->clips);
  put_u32(out + 7, m->frames);
  uint8_t *p = out + SER_NORM_STATE_HEADER_SIZE;
  for (uint16_t i = 0; i < m->n_bins; i++) put_u64(p + 8u * i, (uint64_t)sum[i]);
  p += 8u * m->n_bins;
  for (uint16_t i = 0; i < m->n_bins; i++) put_u64(p + 8u * i, (uint64_t)squares[i]);
  return n;
}

int ser_norm_state_decode(const uint8_t *payload, size_t len, ser_norm_state *m) {
  if (len < SER_NORM_STATE_HEADER_SIZE) return SER_ERR_BAD_LENGTH;
  m->mode = payload[0];
  m->n_bins = get_u16(payload + 1);
  m->clips = get_u32(payload + 3);
  m->frames = get_u32(payload + 7);
  m->sums = payload + SER_NORM_STATE_HEADER_SIZE;
  if (m->n_bins > SER_NORM_MAX_BINS || len != SER_NORM_STATE_SIZE((size_t)m->n_bins)) return SER_ERR_BAD_LENGTH;
  return SER_ERR_NONE;
}

int64_t ser_norm_sum(const ser_norm_state *m, uint16_t bin) { return (int64_t)get_u64(m->sums + 8u * bin); }

int64_t ser_norm_square(const ser_norm_state *m, uint16_t bin) {
  return (int64_t)get_u64(m->sums + 8u * ((size_t)m->n_bins + bin));
}

int ser_norm_decode(const uint8_t *payload, size_t len, uint8_t *op, ser_norm_state *state) {
  if (len < 1) return SER_ERR_BAD_LENGTH;
  *op = payload[0];
  memset(state, 0, sizeof *state);
  if (*op == SER_NORM_READ || *op == SER_NORM_RESET) return len == 1 ? SER_ERR_NONE : SER_ERR_BAD_LENGTH;
  if (*op != SER_NORM_LOAD) return SER_ERR_BAD_NORM;
  return ser_norm_state_decode(payload + 1, len - 1, state);
}

size_t ser_norm_encode(uint8_t op, const ser_norm_state *state, const int64_t *sum, const int64_t *squares, uint8_t *out,
                       size_t cap) {
  if (cap < 1) return 0;
  out[0] = op;
  if (op != SER_NORM_LOAD) return 1;
  size_t n = ser_norm_state_encode(state, sum, squares, out + 1, cap - 1);
  return n ? n + 1 : 0;
}

size_t ser_embed_state_encode(const ser_embed_state *m, const int32_t *sum, const int32_t *squares, uint8_t *out,
                              size_t cap) {
  const size_t n = SER_EMBED_STATE_SIZE((size_t)m->dim);
  if (m->dim == 0 || m->dim > SER_EMBED_MAX_DIM || cap < n) return 0;
  put_u16(out, m->dim);
  put_u32(out + 2, m->clips);
  uint8_t *p = out + SER_EMBED_STATE_HEADER_SIZE;
  for (uint16_t i = 0; i < m->dim; i++) put_u32(p + 4u * i, (uint32_t)sum[i]);
  p += 4u * m->dim;
  for (uint16_t i = 0; i < m->dim; i++) put_u32(p + 4u * i, (uint32_t)squares[i]);
  return n;
}

int ser_embed_state_decode(const uint8_t *payload, size_t len, ser_embed_state *m) {
  if (len < SER_EMBED_STATE_HEADER_SIZE) return SER_ERR_BAD_LENGTH;
  m->dim = get_u16(payload);
  m->clips = get_u32(payload + 2);
  m->sums = payload + SER_EMBED_STATE_HEADER_SIZE;
  if (m->dim == 0 || m->dim > SER_EMBED_MAX_DIM || len != SER_EMBED_STATE_SIZE((size_t)m->dim)) return SER_ERR_BAD_LENGTH;
  return SER_ERR_NONE;
}

int32_t ser_embed_sum(const ser_embed_state *m, uint16_t i) { return (int32_t)get_u32(m->sums + 4u * i); }

int32_t ser_embed_square(const ser_embed_state *m, uint16_t i) {
  return (int32_t)get_u32(m->sums + 4u * ((size_t)m->dim + i));
}

int ser_embed_decode(const uint8_t *payload, size_t len, uint8_t *op, ser_embed_state *state) {
  if (len < 1) return SER_ERR_BAD_LENGTH;
  *op = payload[0];
  memset(state, 0, sizeof *state);
  if (*op == SER_NORM_READ || *op == SER_NORM_RESET) return len == 1 ? SER_ERR_NONE : SER_ERR_BAD_LENGTH;
  if (*op != SER_NORM_LOAD) return SER_ERR_BAD_NORM;
  return ser_embed_state_decode(payload + 1, len - 1, state);
}

size_t ser_embed_encode(uint8_t op, const ser_embed_state *state, const int32_t *sum, const int32_t *squares,
                        uint8_t *out, size_t cap) {
  if (cap < 1) return 0;
  out[0] = op;
  if (op != SER_NORM_LOAD) return 1;
  size_t n = ser_embed_state_encode(state, sum, squares, out + 1, cap - 1);
  return n ? n + 1 : 0;
}

static size_t put_tensor_spec(uint8_t *v, const ser_tensor_spec *t) {
  uint8_t n = t->n_dims > SER_INFO_MAX_DIMS ? SER_INFO_MAX_DIMS : t->n_dims;
  v[0] = t->dtype;
  put_f32(v + 1, t->scale);
  put_u32(v + 5, (uint32_t)t->zero_point);
  v[9] = n;
  for (size_t i = 0; i < n; i++) put_u32(v + 10 + 4 * i, t->dims[i]);
  return 10u + 4u * n;
}

static int get_tensor_spec(const uint8_t *v, size_t n, ser_tensor_spec *t) {
  if (n < 10) return SER_ERR_BAD_LENGTH;
  t->dtype = v[0];
  t->scale = get_f32(v + 1);
  t->zero_point = (int32_t)get_u32(v + 5);
  t->n_dims = v[9];
  if (t->n_dims > SER_INFO_MAX_DIMS || n < 10u + 4u * t->n_dims) return SER_ERR_BAD_LENGTH;
  for (size_t i = 0; i < t->n_dims; i++) t->dims[i] = get_u32(v + 10 + 4 * i);
  return SER_ERR_NONE;
}

size_t ser_info_encode(const ser_info *info, uint8_t *out, size_t cap) {
  uint8_t v[256];
  size_t len = 0;
  uint32_t has = info->present;
  if (cap > SER_MAX_PAYLOAD) cap = SER_MAX_PAYLOAD;
/* Each step appends one TLV or gives up: 0 means the list does not fit. */
#define SER_APPEND(tag, value, n)                                                  \
  do {                                                                             \
    len = ser_tlv_append(out, cap, len, (uint8_t)(tag), (value), (uint8_t)(n)); \
    if (len == 0) return 0;                                                        \
  } while (0)
  if (has & SER_INFO_HAS(SER_TAG_PROTO_VERSION)) SER_APPEND(SER_TAG_PROTO_VERSION, &info->proto_version, 1);
  if (has & SER_INFO_HAS(SER_TAG_RESET_REASON)) {
    size_t n = info->reset_text.len > 254 ? 254 : info->reset_text.len;
    v[0] = info->reset_code;
    if (n) memcpy(v + 1, info->reset_text.s, n);
    SER_APPEND(SER_TAG_RESET_REASON, v, 1 + n);
  }
  if (has & SER_INFO_HAS(SER_TAG_BOARD)) SER_APPEND(SER_TAG_BOARD, info->board.s, info->board.len);
  if (has & SER_INFO_HAS(SER_TAG_CORE_CLOCK)) {
    put_u32(v, info->core_clock_hz);
    SER_APPEND(SER_TAG_CORE_CLOCK, v, 4);
  }
  if (has & SER_INFO_HAS(SER_TAG_CYCLE_COUNTER)) SER_APPEND(SER_TAG_CYCLE_COUNTER, info->cycle_counter.s, info->cycle_counter.len);
  if (has & SER_INFO_HAS(SER_TAG_MODEL_SHA256)) SER_APPEND(SER_TAG_MODEL_SHA256, info->model_sha256, 32);
  if (has & SER_INFO_HAS(SER_TAG_INPUT)) SER_APPEND(SER_TAG_INPUT, v, put_tensor_spec(v, &info->input));
  if (has & SER_INFO_HAS(SER_TAG_OUTPUT)) SER_APPEND(SER_TAG_OUTPUT, v, put_tensor_spec(v, &info->output));
  if (has & SER_INFO_HAS(SER_TAG_FRONTEND)) {
    v[0] = info->fe_kind;
    put_u32(v + 1, info->clip_samples);
    put_u32(v + 5, info->sample_rate);
    SER_APPEND(SER_TAG_FRONTEND, v, 9);
  }
  if (has & SER_INFO_HAS(SER_TAG_LABEL)) {
    uint8_t n = info->n_labels > SER_INFO_MAX_LABELS ? SER_INFO_MAX_LABELS : info->n_labels;
    for (size_t i = 0; i < n; i++) SER_APPEND(SER_TAG_LABEL, info->labels[i].s, info->labels[i].len);
  }
  if (has & SER_INFO_HAS(SER_TAG_ARENA)) {
    put_u32(v, info->arena_size);
    put_u32(v + 4, info->arena_used);
    SER_APPEND(SER_TAG_ARENA, v, 8);
  }
  if (has & SER_INFO_HAS(SER_TAG_MAX_CHUNK_SAMPLES)) {
    put_u16(v, info->max_chunk_samples);
    SER_APPEND(SER_TAG_MAX_CHUNK_SAMPLES, v, 2);
  }
  if (has & SER_INFO_HAS(SER_TAG_BUILD_ID)) SER_APPEND(SER_TAG_BUILD_ID, info->build_id.s, info->build_id.len);
  if (has & SER_INFO_HAS(SER_TAG_PCM_ENCODINGS)) SER_APPEND(SER_TAG_PCM_ENCODINGS, &info->pcm_encodings, 1);
  if (has & SER_INFO_HAS(SER_TAG_RX_PATHS)) SER_APPEND(SER_TAG_RX_PATHS, &info->rx_paths, 1);
  if (has & SER_INFO_HAS(SER_TAG_TENSOR_IO)) {
    v[0] = info->n_inputs;
    v[1] = info->n_outputs;
    put_u16(v + 2, info->max_tensor_chunk);
    SER_APPEND(SER_TAG_TENSOR_IO, v, 4);
  }
  if (has & SER_INFO_HAS(SER_TAG_LAYERS)) {
    put_u16(v, info->n_tensors);
    SER_APPEND(SER_TAG_LAYERS, v, 2);
  }
  if (has & SER_INFO_HAS(SER_TAG_SPEAKER_NORM)) {
    v[0] = info->sn_mode;
    put_u16(v + 1, info->sn_bins);
    SER_APPEND(SER_TAG_SPEAKER_NORM, v, 3);
  }
  if (has & SER_INFO_HAS(SER_TAG_EMBEDDING_NORM)) {
    put_u16(v, info->en_dim);
    v[2] = info->en_classes;
    v[3] = info->en_prior_clips;
    SER_APPEND(SER_TAG_EMBEDDING_NORM, v, 4);
  }
#undef SER_APPEND
  return len;
}

static ser_text text_of(const uint8_t *v, uint8_t n) {
  ser_text t = {(const char *)v, n};
  return t;
}

int ser_info_decode(const uint8_t *payload, size_t len, ser_info *info) {
  memset(info, 0, sizeof *info);
  if (len > SER_MAX_PAYLOAD) return SER_ERR_BAD_LENGTH;
  size_t pos = 0;
  while (pos < len) {
    if (len - pos < 2) return SER_ERR_BAD_LENGTH;
    uint8_t tag = payload[pos];
    uint8_t n = payload[pos + 1];
    const uint8_t *v = payload + pos + 2;
    if (len - pos - 2 < n) return SER_ERR_BAD_LENGTH;
    pos += 2u + n;
    size_t need = 0; /* smallest value a known tag accepts */
    switch (tag) {
      case SER_TAG_PROTO_VERSION: need = 1; break;
      case SER_TAG_RESET_REASON: need = 1; break;
      case SER_TAG_CORE_CLOCK: need = 4; break;
      case SER_TAG_MODEL_SHA256: need = 32; break;
      case SER_TAG_FRONTEND: need = 9; break;
      case SER_TAG_ARENA: need = 8; break;
      case SER_TAG_MAX_CHUNK_SAMPLES: need = 2; break;
      case SER_TAG_PCM_ENCODINGS: need = 1; break;
      case SER_TAG_RX_PATHS: need = 1; break;
      case SER_TAG_TENSOR_IO: need = 4; break;
      case SER_TAG_LAYERS: need = 2; break;
      case SER_TAG_SPEAKER_NORM: need = 3; break;
      case SER_TAG_EMBEDDING_NORM: need = 4; break;
      default: break;
    }
    if (n < need) return SER_ERR_BAD_LENGTH;
    switch (tag) {
      case SER_TAG_PROTO_VERSION: info->proto_version = v[0]; break;
      case SER_TAG_RESET_REASON:
        info->reset_code = v[0];
        info->reset_text = text_of(v + 1, (uint8_t)(n - 1));
        break;
      case SER_TAG_BOARD: info->board = text_of(v, n); break;
      case SER_TAG_CORE_CLOCK: info->core_clock_hz = get_u32(v); break;
      case SER_TAG_CYCLE_COUNTER: info->cycle_counter = text_of(v, n); break;
      case SER_TAG_MODEL_SHA256: memcpy(info->model_sha256, v, 32); break;
      case SER_TAG_INPUT:
        if (get_tensor_spec(v, n, &info->input)) return SER_ERR_BAD_LENGTH;
        break;
      case SER_TAG_OUTPUT:
        if (get_tensor_spec(v, n, &info->output)) return SER_ERR_BAD_LENGTH;
        break;
      case SER_TAG_FRONTEND:
        info->fe_kind = v[0];
        info->clip_samples = get_u32(v + 1);
        info->sample_rate = get_u32(v + 5);
        break;
      case SER_TAG_LABEL:
        if (info->n_labels >= SER_INFO_MAX_LABELS) return SER_ERR_BAD_LENGTH;
        info->labels[info->n_labels++] = text_of(v, n);
        break;
      case SER_TAG_ARENA:
        info->arena_size = get_u32(v);
        info->arena_used = get_u32(v + 4);
        break;
      case SER_TAG_MAX_CHUNK_SAMPLES: info->max_chunk_samples = get_u16(v); break;
      case SER_TAG_BUILD_ID: info->build_id = text_of(v, n); break;
      case SER_TAG_PCM_ENCODINGS: info->pcm_encodings = v[0]; break;
      case SER_TAG_RX_PATHS: info->rx_paths = v[0]; break;
      case SER_TAG_TENSOR_IO:
        info->n_inputs = v[0];
        info->n_outputs = v[1];
        info->max_tensor_chunk = get_u16(v + 2);
        break;
      case SER_TAG_LAYERS: info->n_tensors = get_u16(v); break;
      case SER_TAG_SPEAKER_NORM:
        info->sn_mode = v[0];
        info->sn_bins = get_u16(v + 1);
        break;
      case SER_TAG_EMBEDDING_NORM:
        info->en_dim = get_u16(v);
        info->en_classes = v[2];
        info->en_prior_clips = v[3];
        break;
      default: continue; /* unknown tag: skipped */
    }
    info->present |= (uint32_t)SER_INFO_HAS(tag);
  }
  return SER_ERR_NONE;
}
