"""The serial protocol v1 in both languages: the board's C (built for the host, driven through ctypes)
and host/protocol.py + host/pcm_codec.py agree byte for byte, on golden frames and on random ones."""

from __future__ import annotations

import ctypes
import json
import random
import shutil
import struct
import subprocess
import time
import wave
from ctypes import POINTER, Structure, c_bool, c_char_p, c_float, c_int, c_int16, c_int32, c_size_t, c_uint8, c_uint16, c_uint32
from ctypes import c_void_p as c_ptr
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_clip

from host import native
from host import pcm_codec as pc
from host import protocol as P

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "firmware" / "app"
SOURCES = [APP / "ser_protocol.c", APP / "ser_pcm_codec.c"]
GOLDEN = json.loads((Path(__file__).with_name("golden_frames.json")).read_text())
FRAMES = GOLDEN["frames"]

MAX_DIMS, MAX_LABELS = 6, 32
PARSE_NONE, PARSE_FRAME, PARSE_ERR_CRC, PARSE_ERR_TOO_LONG = 0, 1, -1, -2


# ---- ctypes mirrors of ser_protocol.h ----


class SerFrame(Structure):
    _fields_ = [("type", c_uint8), ("seq", c_uint8), ("len", c_uint16), ("payload", c_uint8 * P.MAX_PAYLOAD)]


class SerParser(Structure):
    _fields_ = [("state", c_uint8), ("pos", c_uint16), ("crc", c_uint16), ("crc_rx", c_uint16), ("frame", SerFrame)]


class SerText(Structure):
    _fields_ = [("s", c_ptr), ("len", c_uint8)]

    def text(self) -> str:
        return ctypes.string_at(self.s, self.len).decode() if self.len else ""


class SerStart(Structure):
    _fields_ = [("clip_id", c_uint32), ("n_samples", c_uint32)]


class SerNext(Structure):
    _fields_ = [("clip_id", c_uint32), ("offset", c_uint32), ("max_samples", c_uint16)]


class SerChunk(Structure):
    _fields_ = [
        ("clip_id", c_uint32),
        ("offset", c_uint32),
        ("n_samples", c_uint16),
        ("encoding", c_uint8),
        ("data", c_ptr),
        ("data_len", c_uint16),
    ]


class SerResult(Structure):
    _fields_ = [
        ("clip_id", c_uint32),
        ("class_index", c_uint8),
        ("n_scores", c_uint8),
        ("scores", c_ptr),
        ("frontend_cycles", c_uint32),
        ("invoke_cycles", c_uint32),
    ]


class SerError(Structure):
    _fields_ = [
        ("code", c_uint8),
        ("offending_type", c_uint8),
        ("offending_seq", c_uint8),
        ("message", c_ptr),
        ("message_len", c_uint16),
    ]


class SerProfileWriter(Structure):
    _fields_ = [("out", c_ptr), ("cap", c_size_t), ("len", c_size_t), ("count", c_uint16)]


class SerProfileEntry(Structure):
    _fields_ = [("name", SerText), ("ticks", c_uint32)]


class SerTensorSpec(Structure):
    _fields_ = [
        ("dtype", c_uint8),
        ("scale", c_float),
        ("zero_point", c_int32),
        ("n_dims", c_uint8),
        ("dims", c_uint32 * MAX_DIMS),
    ]


class SerInfo(Structure):
    _fields_ = [
        ("present", c_uint32),
        ("proto_version", c_uint8),
        ("reset_code", c_uint8),
        ("reset_text", SerText),
        ("board", SerText),
        ("core_clock_hz", c_uint32),
        ("cycle_counter", SerText),
        ("model_sha256", c_uint8 * 32),
        ("input", SerTensorSpec),
        ("output", SerTensorSpec),
        ("fe_kind", c_uint8),
        ("clip_samples", c_uint32),
        ("sample_rate", c_uint32),
        ("n_labels", c_uint8),
        ("labels", SerText * MAX_LABELS),
        ("arena_size", c_uint32),
        ("arena_used", c_uint32),
        ("max_chunk_samples", c_uint16),
        ("build_id", SerText),
        ("pcm_encodings", c_uint8),
        ("rx_paths", c_uint8),
        ("n_inputs", c_uint8),
        ("n_outputs", c_uint8),
        ("max_tensor_chunk", c_uint16),
        ("n_tensors", c_uint16),
        ("sn_mode", c_uint8),
        ("sn_bins", c_uint16),
        ("en_dim", c_uint16),
        ("en_classes", c_uint8),
        ("en_prior_clips", c_uint8),
    ]


class SerNormState(Structure):
    _fields_ = [("mode", c_uint8), ("n_bins", c_uint16), ("clips", c_uint32), ("frames", c_uint32), ("sums", c_ptr)]


class SerEmbedState(Structure):
    _fields_ = [("dim", c_uint16), ("clips", c_uint32), ("sums", c_ptr)]


class SerTensorStart(Structure):
    _fields_ = [("req_id", c_uint32), ("index", c_uint8), ("n_bytes", c_uint32)]


class SerTensorNext(Structure):
    _fields_ = [("req_id", c_uint32), ("index", c_uint8), ("offset", c_uint32), ("max_bytes", c_uint16)]


class SerTensorChunk(Structure):
    _fields_ = [("req_id", c_uint32), ("index", c_uint8), ("offset", c_uint32), ("data", c_ptr), ("data_len", c_uint16)]


class SerLayerRead(Structure):
    _fields_ = [("req_id", c_uint32), ("tensor", c_uint16), ("offset", c_uint32), ("max_bytes", c_uint16)]


class SerLayerData(Structure):
    _fields_ = [("req_id", c_uint32), ("tensor", c_uint16), ("offset", c_uint32), ("data", c_ptr), ("data_len", c_uint16)]


class SerInvoked(Structure):
    _fields_ = [("req_id", c_uint32), ("invoke_cycles", c_uint32), ("n_outputs", c_uint8), ("output_bytes", c_uint32 * 16)]


def _sig(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    try:
        lib = native.load("ser_protocol", SOURCES, [APP])
    except native.NativeBuildError as exc:
        pytest.fail(str(exc))
    _sig(lib, "ser_crc16", c_uint16, c_char_p, c_size_t)
    _sig(lib, "ser_parser_init", None, POINTER(SerParser))
    _sig(lib, "ser_parser_reset", None, POINTER(SerParser))
    _sig(lib, "ser_parser_feed", c_int, POINTER(SerParser), c_uint8)
    _sig(lib, "ser_parser_in_frame", c_bool, POINTER(SerParser))
    _sig(lib, "ser_frame_encode", c_size_t, c_uint8, c_uint8, c_ptr, c_uint16, c_ptr, c_size_t)
    _sig(lib, "ser_empty_decode", c_int, c_ptr, c_size_t)
    for name, cls in (
        ("start", SerStart),
        ("next", SerNext),
        ("chunk", SerChunk),
        ("result", SerResult),
        ("error", SerError),
        ("tensor_start", SerTensorStart),
        ("tensor_next", SerTensorNext),
        ("tensor_chunk", SerTensorChunk),
        ("invoked", SerInvoked),
        ("layer_read", SerLayerRead),
        ("layer_data", SerLayerData),
    ):
        _sig(lib, f"ser_{name}_encode", c_size_t, POINTER(cls), c_ptr, c_size_t)
        _sig(lib, f"ser_{name}_decode", c_int, c_ptr, c_size_t, POINTER(cls))
    _sig(lib, "ser_profile_begin", c_bool, POINTER(SerProfileWriter), c_ptr, c_size_t)
    i64s = POINTER(ctypes.c_int64)
    _sig(lib, "ser_norm_state_encode", c_size_t, POINTER(SerNormState), i64s, i64s, c_ptr, c_size_t)
    _sig(lib, "ser_norm_state_decode", c_int, c_ptr, c_size_t, POINTER(SerNormState))
    _sig(lib, "ser_norm_encode", c_size_t, c_uint8, POINTER(SerNormState), i64s, i64s, c_ptr, c_size_t)
    _sig(lib, "ser_norm_decode", c_int, c_ptr, c_size_t, POINTER(c_uint8), POINTER(SerNormState))
    _sig(lib, "ser_norm_sum", ctypes.c_int64, POINTER(SerNormState), c_uint16)
    _sig(lib, "ser_norm_square", ctypes.c_int64, POINTER(SerNormState), c_uint16)
    i32s = POINTER(ctypes.c_int32)
    _sig(lib, "ser_embed_state_encode", c_size_t, POINTER(SerEmbedState), i32s, i32s, c_ptr, c_size_t)
    _sig(lib, "ser_embed_state_decode", c_int, c_ptr, c_size_t, POINTER(SerEmbedState))
    _sig(lib, "ser_embed_encode", c_size_t, c_uint8, POINTER(SerEmbedState), i32s, i32s, c_ptr, c_size_t)
    _sig(lib, "ser_embed_decode", c_int, c_ptr, c_size_t, POINTER(c_uint8), POINTER(SerEmbedState))
    _sig(lib, "ser_embed_sum", ctypes.c_int32, POINTER(SerEmbedState), c_uint16)
    _sig(lib, "ser_embed_square", ctypes.c_int32, POINTER(SerEmbedState), c_uint16)
    _sig(lib, "ser_profile_add", c_bool, POINTER(SerProfileWriter), c_char_p, c_uint32)
    _sig(lib, "ser_profile_decode", c_int, c_ptr, c_size_t, POINTER(SerProfileEntry), c_size_t, POINTER(c_uint16))
    _sig(lib, "ser_info_encode", c_size_t, POINTER(SerInfo), c_ptr, c_size_t)
    _sig(lib, "ser_info_decode", c_int, c_ptr, c_size_t, POINTER(SerInfo))
    _sig(lib, "ser_tlv_append", c_size_t, c_ptr, c_size_t, c_size_t, c_uint8, c_ptr, c_uint8)
    _sig(lib, "ser_pcm_decode", c_int, c_uint8, c_ptr, c_size_t, POINTER(c_int16), c_size_t)
    _sig(lib, "ser_rx_path_encode", c_size_t, c_uint8, c_ptr, c_size_t)
    _sig(lib, "ser_rx_path_decode", c_int, c_ptr, c_size_t, POINTER(c_uint8))
    return lib


# ---- the C side as Python functions ----


def _buf(data: bytes) -> ctypes.Array:
    return (c_uint8 * max(1, len(data))).from_buffer_copy(data or b"\0")


class CParser:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib, self.p = lib, SerParser()
        lib.ser_parser_init(ctypes.byref(self.p))

    def reset(self) -> None:
        self.lib.ser_parser_reset(ctypes.byref(self.p))

    @property
    def in_frame(self) -> bool:
        return self.lib.ser_parser_in_frame(ctypes.byref(self.p))

    def feed(self, data: bytes) -> list[P.Frame | P.ParseError]:
        events: list[P.Frame | P.ParseError] = []
        for b in data:
            r = self.lib.ser_parser_feed(ctypes.byref(self.p), b)
            f = self.p.frame
            assert f.len <= P.MAX_PAYLOAD
            if r == PARSE_FRAME:
                events.append(P.Frame(f.type, f.seq, bytes(f.payload[: f.len])))
            elif r in (PARSE_ERR_CRC, PARSE_ERR_TOO_LONG):
                kind = P.ErrorCode.BAD_CRC if r == PARSE_ERR_CRC else P.ErrorCode.TOO_LONG
                events.append(P.ParseError(kind, f.type, f.seq))
            else:
                assert r == PARSE_NONE
        return events


def c_frame(lib: ctypes.CDLL, msg_type: int, seq: int, payload: bytes, out_size: int = P.MAX_PAYLOAD + 8) -> bytes:
    out = (c_uint8 * out_size)()
    n = lib.ser_frame_encode(msg_type, seq, _buf(payload), len(payload), out, out_size)
    return bytes(out[:n])


def _text_struct(s: str, keep: list) -> SerText:
    raw = s.encode()
    b = ctypes.create_string_buffer(raw)
    keep.append(b)
    return SerText(ctypes.cast(b, c_ptr), len(raw))


def _spec_struct(t: P.TensorSpec) -> SerTensorSpec:
    return SerTensorSpec(t.dtype, t.scale, t.zero_point, len(t.dims), (c_uint32 * MAX_DIMS)(*t.dims))


def _spec_of(s: SerTensorSpec) -> P.TensorSpec:
    return P.TensorSpec(s.dtype, tuple(s.dims[: s.n_dims]), s.scale, s.zero_point)


INFO_TEXT_TAGS = {"board": P.Tag.BOARD, "cycle_counter": P.Tag.CYCLE_COUNTER, "build_id": P.Tag.BUILD_ID}


def c_encode(lib: ctypes.CDLL, msg: P.Message) -> bytes:
    """Payload of msg as the board's C encoders write it."""
    out = (c_uint8 * P.MAX_PAYLOAD)()
    cap = P.MAX_PAYLOAD
    keep: list = []
    if isinstance(msg, (P.Hello, P.Profile, P.Reset)):
        return b""
    if isinstance(msg, P.Start):
        n = lib.ser_start_encode(SerStart(msg.clip_id, msg.n_samples), out, cap)
    elif isinstance(msg, P.TensorStart):
        n = lib.ser_tensor_start_encode(SerTensorStart(msg.req_id, msg.index, msg.n_bytes), out, cap)
    elif isinstance(msg, P.TensorNext):  # and TensorRead
        n = lib.ser_tensor_next_encode(SerTensorNext(msg.req_id, msg.index, msg.offset, msg.max_bytes), out, cap)
    elif isinstance(msg, P.TensorChunk):  # and TensorData
        data = _buf(msg.data)
        n = lib.ser_tensor_chunk_encode(
            SerTensorChunk(msg.req_id, msg.index, msg.offset, ctypes.cast(data, c_ptr), len(msg.data)), out, cap
        )
    elif isinstance(msg, P.LayerRead):
        n = lib.ser_layer_read_encode(SerLayerRead(msg.req_id, msg.tensor, msg.offset, msg.max_bytes), out, cap)
    elif isinstance(msg, P.LayerData):
        data = _buf(msg.data)
        n = lib.ser_layer_data_encode(
            SerLayerData(msg.req_id, msg.tensor, msg.offset, ctypes.cast(data, c_ptr), len(msg.data)), out, cap
        )
    elif isinstance(msg, (P.Norm, P.NormState)):
        state = msg if isinstance(msg, P.NormState) else msg.state
        bins = len(state.sum) if state else 0
        sums, squares = (
            (ctypes.c_int64 * max(1, bins))(*(state.sum if state else ())),
            (ctypes.c_int64 * max(1, bins))(*(state.squares if state else ())),
        )
        m = SerNormState(state.mode, bins, state.clips, state.frames, None) if state else SerNormState()
        if isinstance(msg, P.NormState):
            n = lib.ser_norm_state_encode(m, sums, squares, out, cap)
        else:
            n = lib.ser_norm_encode(msg.op, m, sums, squares, out, cap)
    elif isinstance(msg, (P.Embed, P.EmbedState)):
        state = msg if isinstance(msg, P.EmbedState) else msg.state
        dim = len(state.sum) if state else 0
        sums, squares = (
            (ctypes.c_int32 * max(1, dim))(*(state.sum if state else ())),
            (ctypes.c_int32 * max(1, dim))(*(state.squares if state else ())),
        )
        m = SerEmbedState(dim, state.clips, None) if state else SerEmbedState()
        if isinstance(msg, P.EmbedState):
            n = lib.ser_embed_state_encode(m, sums, squares, out, cap)
        else:
            n = lib.ser_embed_encode(msg.op, m, sums, squares, out, cap)
    elif isinstance(msg, P.Invoke):
        n = 4
        out[:4] = list(struct.pack("<I", msg.req_id))  # no C encoder: the board only receives INVOKE
    elif isinstance(msg, P.Invoked):
        m = SerInvoked(msg.req_id, msg.invoke_cycles, len(msg.output_bytes))
        m.output_bytes[: len(msg.output_bytes)] = list(msg.output_bytes)
        n = lib.ser_invoked_encode(m, out, cap)
    elif isinstance(msg, P.RxPath):  # and RxPathSet
        n = lib.ser_rx_path_encode(msg.path, out, cap)
    elif isinstance(msg, P.Next):
        n = lib.ser_next_encode(SerNext(msg.clip_id, msg.offset, msg.max_samples), out, cap)
    elif isinstance(msg, P.Chunk):
        data = _buf(msg.data)
        n = lib.ser_chunk_encode(
            SerChunk(msg.clip_id, msg.offset, msg.n_samples, msg.encoding, ctypes.cast(data, c_ptr), len(msg.data)), out, cap
        )
    elif isinstance(msg, P.Result):
        scores = (ctypes.c_int8 * max(1, len(msg.scores)))(*msg.scores)
        m = SerResult(
            msg.clip_id, msg.class_index, len(msg.scores), ctypes.cast(scores, c_ptr), msg.frontend_cycles, msg.invoke_cycles
        )
        n = lib.ser_result_encode(m, out, cap)
    elif isinstance(msg, P.Error):
        text = msg.message.encode()
        text_buf = _buf(text)
        n = lib.ser_error_encode(
            SerError(msg.code, msg.offending_type, msg.offending_seq, ctypes.cast(text_buf, c_ptr), len(text)), out, cap
        )
    elif isinstance(msg, P.ProfileData):
        w = SerProfileWriter()
        assert lib.ser_profile_begin(ctypes.byref(w), out, cap)
        for name, ticks in msg.entries:
            assert lib.ser_profile_add(ctypes.byref(w), name.encode(), ticks)
        n = w.len
    elif isinstance(msg, P.Info):
        info = SerInfo()
        has = 0
        if msg.proto_version is not None:
            info.proto_version, has = msg.proto_version, has | 1 << P.Tag.PROTO_VERSION
        if msg.reset_code is not None:
            info.reset_code, info.reset_text = msg.reset_code, _text_struct(msg.reset_text or "", keep)
            has |= 1 << P.Tag.RESET_REASON
        for name, tag in INFO_TEXT_TAGS.items():
            if getattr(msg, name) is not None:
                setattr(info, name, _text_struct(getattr(msg, name), keep))
                has |= 1 << tag
        if msg.core_clock_hz is not None:
            info.core_clock_hz, has = msg.core_clock_hz, has | 1 << P.Tag.CORE_CLOCK
        if msg.model_sha256 is not None:
            info.model_sha256[:] = list(msg.model_sha256)
            has |= 1 << P.Tag.MODEL_SHA256
        if msg.input is not None:
            info.input, has = _spec_struct(msg.input), has | 1 << P.Tag.INPUT
        if msg.output is not None:
            info.output, has = _spec_struct(msg.output), has | 1 << P.Tag.OUTPUT
        if msg.frontend_kind is not None:
            info.fe_kind, info.clip_samples, info.sample_rate = msg.frontend_kind, msg.clip_samples, msg.sample_rate
            has |= 1 << P.Tag.FRONTEND
        if msg.labels:
            info.n_labels = len(msg.labels)
            for i, label in enumerate(msg.labels):
                info.labels[i] = _text_struct(label, keep)
            has |= 1 << P.Tag.LABEL
        if msg.arena_size is not None:
            info.arena_size, info.arena_used, has = msg.arena_size, msg.arena_used, has | 1 << P.Tag.ARENA
        if msg.max_chunk_samples is not None:
            info.max_chunk_samples, has = msg.max_chunk_samples, has | 1 << P.Tag.MAX_CHUNK_SAMPLES
        if msg.pcm_encodings is not None:
            info.pcm_encodings, has = msg.pcm_encodings, has | 1 << P.Tag.PCM_ENCODINGS
        if msg.rx_paths is not None:
            info.rx_paths, has = msg.rx_paths, has | 1 << P.Tag.RX_PATHS
        if msg.tensor_io is not None:
            info.n_inputs, info.n_outputs, info.max_tensor_chunk = msg.tensor_io
            has |= 1 << P.Tag.TENSOR_IO
        if msg.layers is not None:
            info.n_tensors, has = msg.layers, has | 1 << P.Tag.LAYERS
        if msg.speaker_norm is not None:
            (info.sn_mode, info.sn_bins), has = msg.speaker_norm, has | 1 << P.Tag.SPEAKER_NORM
        if msg.embedding_norm is not None:
            (info.en_dim, info.en_classes, info.en_prior_clips) = msg.embedding_norm
            has |= 1 << P.Tag.EMBEDDING_NORM
        info.present = has
        n = lib.ser_info_encode(ctypes.byref(info), out, cap)
        for tag, value in msg.extra:  # tags this decoder does not know, appended as a newer board would
            n = lib.ser_tlv_append(out, cap, n, tag, _buf(value), len(value))
    else:
        raise TypeError(msg)
    assert n > 0 or isinstance(msg, P.Info)
    return bytes(out[:n])


def c_decode(lib: ctypes.CDLL, msg_type: int, payload: bytes) -> P.Message | int:
    """The message the board's C decoders read from payload, or their SER_ERR_* code."""
    buf, n = _buf(payload), len(payload)
    cls = P.MESSAGES[msg_type]
    if cls in (P.Hello, P.Profile, P.Reset):
        return lib.ser_empty_decode(buf, n) or cls()
    if cls in (P.RxPath, P.RxPathSet):
        path = c_uint8()
        return lib.ser_rx_path_decode(buf, n, ctypes.byref(path)) or cls(path.value)
    if cls is P.TensorStart:
        m = SerTensorStart()
        return lib.ser_tensor_start_decode(buf, n, m) or cls(m.req_id, m.index, m.n_bytes)
    if cls in (P.TensorNext, P.TensorRead):
        m = SerTensorNext()
        return lib.ser_tensor_next_decode(buf, n, m) or cls(m.req_id, m.index, m.offset, m.max_bytes)
    if cls in (P.TensorChunk, P.TensorData):
        m = SerTensorChunk()
        err = lib.ser_tensor_chunk_decode(buf, n, m)
        return err or cls(m.req_id, m.index, m.offset, ctypes.string_at(m.data, m.data_len))
    if cls is P.LayerRead:
        m = SerLayerRead()
        return lib.ser_layer_read_decode(buf, n, m) or cls(m.req_id, m.tensor, m.offset, m.max_bytes)
    if cls is P.LayerData:
        m = SerLayerData()
        err = lib.ser_layer_data_decode(buf, n, m)
        return err or cls(m.req_id, m.tensor, m.offset, ctypes.string_at(m.data, m.data_len))
    if cls in (P.Norm, P.NormState):
        m, op = SerNormState(), c_uint8()
        err = lib.ser_norm_state_decode(buf, n, m) if cls is P.NormState else lib.ser_norm_decode(buf, n, ctypes.byref(op), m)
        if err:
            return err
        state = P.NormState(
            m.mode,
            m.clips,
            m.frames,
            tuple(lib.ser_norm_sum(m, i) for i in range(m.n_bins)),
            tuple(lib.ser_norm_square(m, i) for i in range(m.n_bins)),
        )
        return state if cls is P.NormState else P.Norm(op.value, state if op.value == P.Norm.LOAD else None)
    if cls in (P.Embed, P.EmbedState):
        m, op = SerEmbedState(), c_uint8()
        err = lib.ser_embed_state_decode(buf, n, m) if cls is P.EmbedState else lib.ser_embed_decode(buf, n, ctypes.byref(op), m)
        if err:
            return err
        state = P.EmbedState(
            m.clips, tuple(lib.ser_embed_sum(m, i) for i in range(m.dim)), tuple(lib.ser_embed_square(m, i) for i in range(m.dim))
        )
        return state if cls is P.EmbedState else P.Embed(op.value, state if op.value == P.Embed.LOAD else None)
    if cls is P.Invoke:  # the board decodes INVOKE inline (ser_app.c handle_invoke): 4 bytes
        return cls(struct.unpack("<I", payload)[0]) if n == 4 else P.ErrorCode.BAD_LENGTH
    if cls is P.Invoked:
        m = SerInvoked()
        err = lib.ser_invoked_decode(buf, n, m)
        return err or cls(m.req_id, m.invoke_cycles, tuple(m.output_bytes[: m.n_outputs]))
    if cls is P.Start:
        m = SerStart()
        return lib.ser_start_decode(buf, n, m) or P.Start(m.clip_id, m.n_samples)
    if cls is P.Next:
        m = SerNext()
        return lib.ser_next_decode(buf, n, m) or P.Next(m.clip_id, m.offset, m.max_samples)
    if cls is P.Chunk:
        m = SerChunk()
        return lib.ser_chunk_decode(buf, n, m) or P.Chunk(
            m.clip_id, m.offset, m.n_samples, m.encoding, ctypes.string_at(m.data, m.data_len)
        )
    if cls is P.Result:
        m = SerResult()
        err = lib.ser_result_decode(buf, n, m)
        scores = tuple(ctypes.cast(m.scores, POINTER(ctypes.c_int8))[: m.n_scores]) if not err else ()
        return err or P.Result(m.clip_id, m.class_index, scores, m.frontend_cycles, m.invoke_cycles)
    if cls is P.Error:
        m = SerError()
        err = lib.ser_error_decode(buf, n, m)
        return err or P.Error(m.code, m.offending_type, m.offending_seq, ctypes.string_at(m.message, m.message_len).decode())
    if cls is P.ProfileData:
        entries, count = (SerProfileEntry * 512)(), c_uint16()
        err = lib.ser_profile_decode(buf, n, entries, 512, ctypes.byref(count))
        return err or P.ProfileData(tuple((e.name.text(), e.ticks) for e in entries[: count.value]))
    info = SerInfo()
    err = lib.ser_info_decode(buf, n, ctypes.byref(info))
    if err:
        return err
    has = info.present

    def opt(tag: int, value):
        return value if has & (1 << tag) else None

    return cls(
        proto_version=opt(P.Tag.PROTO_VERSION, info.proto_version),
        reset_code=opt(P.Tag.RESET_REASON, info.reset_code),
        reset_text=opt(P.Tag.RESET_REASON, info.reset_text.text()),
        board=opt(P.Tag.BOARD, info.board.text()),
        core_clock_hz=opt(P.Tag.CORE_CLOCK, info.core_clock_hz),
        cycle_counter=opt(P.Tag.CYCLE_COUNTER, info.cycle_counter.text()),
        model_sha256=opt(P.Tag.MODEL_SHA256, bytes(info.model_sha256)),
        input=opt(P.Tag.INPUT, _spec_of(info.input)),
        output=opt(P.Tag.OUTPUT, _spec_of(info.output)),
        frontend_kind=opt(P.Tag.FRONTEND, info.fe_kind),
        clip_samples=opt(P.Tag.FRONTEND, info.clip_samples),
        sample_rate=opt(P.Tag.FRONTEND, info.sample_rate),
        labels=tuple(info.labels[i].text() for i in range(info.n_labels)),
        arena_size=opt(P.Tag.ARENA, info.arena_size),
        arena_used=opt(P.Tag.ARENA, info.arena_used),
        max_chunk_samples=opt(P.Tag.MAX_CHUNK_SAMPLES, info.max_chunk_samples),
        build_id=opt(P.Tag.BUILD_ID, info.build_id.text()),
        pcm_encodings=opt(P.Tag.PCM_ENCODINGS, info.pcm_encodings),
        rx_paths=opt(P.Tag.RX_PATHS, info.rx_paths),
        tensor_io=opt(P.Tag.TENSOR_IO, (info.n_inputs, info.n_outputs, info.max_tensor_chunk)),
        layers=opt(P.Tag.LAYERS, info.n_tensors),
        speaker_norm=opt(P.Tag.SPEAKER_NORM, (info.sn_mode, info.sn_bins)),
        embedding_norm=opt(P.Tag.EMBEDDING_NORM, (info.en_dim, info.en_classes, info.en_prior_clips)),
    )


def c_pcm_decode(lib: ctypes.CDLL, encoding: int, data: bytes, n_samples: int) -> np.ndarray | int:
    out = np.zeros(max(1, n_samples), np.int16)
    err = lib.ser_pcm_decode(encoding, _buf(data), len(data), out.ctypes.data_as(POINTER(c_int16)), n_samples)
    return err or out[:n_samples]


# ---- golden frames: the JSON meaning <-> messages ----


def message_of(kind: str, fields: dict) -> P.Message:
    f = dict(fields)
    if kind in ("INFO", "BOOT"):
        for key in ("input", "output"):
            if key in f:
                t = f[key]
                f[key] = P.TensorSpec(t["dtype"], tuple(t["dims"]), t["scale"], t["zero_point"])
        if "model_sha256" in f:
            f["model_sha256"] = bytes.fromhex(f["model_sha256"])
        f["labels"] = tuple(f.get("labels", ()))
        f["extra"] = tuple((tag, bytes.fromhex(v)) for tag, v in f.get("extra", ()))
        if "tensor_io" in f:
            f["tensor_io"] = tuple(f["tensor_io"])
        if "speaker_norm" in f:
            f["speaker_norm"] = tuple(f["speaker_norm"])
        if "embedding_norm" in f:
            f["embedding_norm"] = tuple(f["embedding_norm"])
        return (P.Boot if kind == "BOOT" else P.Info)(**f)
    if kind == "NORM_STATE":
        return P.NormState(f["mode"], f["clips"], f["frames"], tuple(f["sum"]), tuple(f["squares"]))
    if kind == "NORM":
        return P.Norm(f["op"], message_of("NORM_STATE", f["state"]) if "state" in f else None)
    if kind == "EMBED_STATE":
        return P.EmbedState(f["clips"], tuple(f["sum"]), tuple(f["squares"]))
    if kind == "EMBED":
        return P.Embed(f["op"], message_of("EMBED_STATE", f["state"]) if "state" in f else None)
    if kind == "CHUNK":
        f["data"] = bytes.fromhex(f["data"])
        f.pop("samples")
    if kind in ("TENSOR_CHUNK", "TENSOR_DATA", "LAYER_DATA"):
        f["data"] = bytes.fromhex(f["data"])
    if kind == "INVOKED":
        f["output_bytes"] = tuple(f["output_bytes"])
    if kind == "RESULT":
        f["scores"] = tuple(f["scores"])
    if kind == "PROFILE_DATA":
        f["entries"] = tuple((name, ticks) for name, ticks in f["entries"])
    return P.MESSAGES[P.MsgType[kind]](**f)


def without_extra(msg: P.Message) -> P.Message:
    """What a v1 decoder that drops unknown tags (the C one) keeps."""
    return replace(msg, extra=()) if isinstance(msg, P.Info) else msg


def _golden_id(frame: dict) -> str:
    return frame["name"]


def test_crc16_check_value_and_agreement(lib: ctypes.CDLL) -> None:
    check = GOLDEN["crc16_check"]
    assert P.crc16(check["ascii"].encode()) == check["crc"] == 0x29B1
    assert lib.ser_crc16(check["ascii"].encode(), 9) == 0x29B1
    rng = random.Random(1)
    for n in (0, 1, 2, 7, 100, 2052):
        data = rng.randbytes(n)
        assert lib.ser_crc16(data, n) == P.crc16(data)


def test_hello_frame_by_hand() -> None:
    # A5 5A | type 01 | seq 01 | len 0000 | CRC-16/CCITT-FALSE of 01 01 00 00 = 0xC544, sent LE.
    assert P.encode_message(P.Hello(), 1) == bytes.fromhex("a55a 0101 0000 44c5")


@pytest.mark.parametrize("golden", FRAMES, ids=_golden_id)
def test_golden_frame_python(golden: dict) -> None:
    raw = bytes.fromhex(golden["hex"])
    events = P.Parser().feed(raw)
    assert events == [P.Frame(golden["type"], golden["seq"], raw[6:-2])]
    msg = P.decode_message(events[0])
    assert msg == message_of(golden["message"], golden["fields"])
    assert P.encode_message(msg, golden["seq"]) == raw


@pytest.mark.parametrize("golden", FRAMES, ids=_golden_id)
def test_golden_frame_c(lib: ctypes.CDLL, golden: dict) -> None:
    raw = bytes.fromhex(golden["hex"])
    parser = CParser(lib)
    for i, b in enumerate(raw):  # the frame completes on its last byte, not before
        assert parser.feed(bytes([b])) == ([] if i < len(raw) - 1 else [P.Frame(golden["type"], golden["seq"], raw[6:-2])])
    expected = message_of(golden["message"], golden["fields"])
    assert c_decode(lib, golden["type"], raw[6:-2]) == without_extra(expected)
    assert c_frame(lib, golden["type"], golden["seq"], c_encode(lib, expected)) == raw


@pytest.mark.parametrize("golden", [f for f in FRAMES if f["message"] == "CHUNK"], ids=_golden_id)
def test_golden_chunk_samples(lib: ctypes.CDLL, golden: dict) -> None:
    f = golden["fields"]
    data = bytes.fromhex(f["data"])
    assert c_pcm_decode(lib, f["encoding"], data, f["n_samples"]).tolist() == f["samples"]
    assert pc.decode_chunk(f["encoding"], data, f["n_samples"]).tolist() == f["samples"]
    if f["encoding"] == pc.RICE:
        assert pc.encode_rice(np.array(f["samples"], np.int16)) == data


@pytest.mark.parametrize("golden", GOLDEN["pcm_rice"], ids=_golden_id)
def test_golden_pcm(lib: ctypes.CDLL, golden: dict) -> None:
    samples = np.array(golden["samples"], np.int16)
    data = bytes.fromhex(golden["hex"])
    assert pc.encode_rice(samples) == data
    assert c_pcm_decode(lib, pc.RICE, data, len(samples)).tolist() == golden["samples"]


def test_golden_info_has_every_tag() -> None:
    boot = message_of("BOOT", next(f for f in FRAMES if f["name"] == "boot")["fields"])
    raw = boot.encode()
    tags, pos = set(), 0
    while pos < len(raw):
        tags.add(raw[pos])
        pos += 2 + raw[pos + 1]
    assert tags == set(P.Tag)


# ---- parser behaviour, C and Python side by side ----

GOOD = [bytes.fromhex(f["hex"]) for f in FRAMES]


def _parsers(lib: ctypes.CDLL) -> list:
    return [P.Parser(), CParser(lib)]


def _frame_of(raw: bytes) -> P.Frame:
    return P.Frame(raw[2], raw[3], raw[6:-2])


def _garbage(rng: random.Random, n: int) -> bytes:
    """Random bytes without a sync pair, ending in 0xA5 half the time (a frame's own sync still wins)."""
    g = bytearray(rng.randbytes(n))
    for i in range(1, len(g)):
        if g[i - 1] == 0xA5 and g[i] == 0x5A:
            g[i] = 0x00
    if g and rng.random() < 0.5:
        g[-1] = 0xA5
    return bytes(g)


def test_garbage_before_and_between_frames_is_skipped(lib: ctypes.CDLL) -> None:
    rng = random.Random(2)
    stream = b"".join(_garbage(rng, rng.randrange(0, 40)) + raw for raw in GOOD) + _garbage(rng, 10)
    stream = b"\xa5\xa5\xa5" + stream
    for parser in _parsers(lib):
        assert parser.feed(stream) == [_frame_of(raw) for raw in GOOD]


@pytest.mark.parametrize("name", ["start", "chunk_raw", "boot"])
def test_truncated_frame_loses_only_itself(lib: ctypes.CDLL, name: str) -> None:
    raw = next(bytes.fromhex(f["hex"]) for f in FRAMES if f["name"] == name)
    nxt = GOOD[0]
    for cut in range(1, len(raw)):
        for parser in _parsers(lib):
            assert parser.feed(raw[:cut]) == []
            assert parser.in_frame == (cut >= 2)  # a TRUNCATED report is due only after the sync pair
            parser.reset()  # the application's inter-byte timeout
            assert not parser.in_frame
            assert parser.feed(nxt) == [_frame_of(nxt)]


def test_crc_error_is_reported_and_next_frame_parses(lib: ctypes.CDLL) -> None:
    raw, nxt = GOOD[3], GOOD[1]
    for pos in [2, 3, *range(6, len(raw))]:  # type, seq, payload, CRC (a corrupt length is the next test)
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        for parser in _parsers(lib):
            assert parser.feed(bytes(bad) + nxt) == [P.ParseError(P.ErrorCode.BAD_CRC, bad[2], bad[3]), _frame_of(nxt)]


@pytest.mark.parametrize("length", [P.MAX_PAYLOAD + 1, 0x1000, 0xFFFF])
def test_oversize_length_is_refused_at_once(lib: ctypes.CDLL, length: int) -> None:
    header = P.SYNC + struct.pack("<BBH", P.MsgType.CHUNK, 9, length)
    nxt = GOOD[0]
    for parser in _parsers(lib):
        assert parser.feed(header[:-1]) == []
        assert parser.feed(header[-1:]) == [P.ParseError(P.ErrorCode.TOO_LONG, P.MsgType.CHUNK, 9)]
        assert not parser.in_frame
        assert parser.feed(b"\x00" * 30 + nxt) == [_frame_of(nxt)]


def test_max_payload_frame_parses(lib: ctypes.CDLL) -> None:
    raw = P.encode_frame(P.MsgType.CHUNK, 1, bytes(range(256)) * 8)
    assert len(raw) == P.MAX_PAYLOAD + 8
    for parser in _parsers(lib):
        assert parser.feed(raw) == [_frame_of(raw)]
    with pytest.raises(ValueError):
        P.encode_frame(P.MsgType.CHUNK, 1, bytes(P.MAX_PAYLOAD + 1))


def test_parsers_agree_on_random_damaged_streams(lib: ctypes.CDLL) -> None:
    """Frames, corrupt frames, garbage and bogus headers in random order: both parsers report the same."""
    rng = random.Random(3)
    for _ in range(40):
        parts = []
        for _ in range(rng.randrange(1, 12)):
            raw = bytearray(rng.choice(GOOD))
            r = rng.random()
            if r < 0.2:
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            elif r < 0.3:
                raw = raw[: rng.randrange(len(raw))]
            elif r < 0.4:
                raw = bytearray(rng.randbytes(rng.randrange(50)))
            parts.append(bytes(raw))
        stream = b"".join(parts)
        py, c = P.Parser(), CParser(lib)
        cuts = sorted(rng.sample(range(len(stream) + 1), min(3, len(stream) + 1)))
        py_events = [e for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) for e in py.feed(stream[a:b])]
        assert py_events == c.feed(stream)


def test_frame_encode_limits(lib: ctypes.CDLL) -> None:
    out = (c_uint8 * (P.MAX_PAYLOAD + 16))()
    assert lib.ser_frame_encode(1, 0, None, 0, out, 8) == 8
    assert lib.ser_frame_encode(1, 0, None, 0, out, 7) == 0
    assert lib.ser_frame_encode(3, 0, _buf(bytes(10)), 10, out, 17) == 0
    assert lib.ser_frame_encode(3, 0, _buf(bytes(P.MAX_PAYLOAD + 1)), P.MAX_PAYLOAD + 1, out, len(out)) == 0
    # The payload may already sit where the frame puts it (the board encodes in place, no copy).
    payload = bytes(range(20))
    out[6:26] = list(payload)
    n = lib.ser_frame_encode(3, 4, ctypes.byref(out, 6), 20, out, len(out))
    assert bytes(out[:n]) == P.encode_frame(3, 4, payload)


# ---- every message both ways ----


def _random_info(rng: random.Random, cls: type = P.Info) -> P.Info:
    def text(n: int) -> str:
        return "".join(rng.choice("abcXYZ019 -_é") for _ in range(rng.randrange(n)))

    def spec() -> P.TensorSpec:
        dims = tuple(rng.randrange(1, 70000) for _ in range(rng.randrange(0, MAX_DIMS + 1)))
        return P.TensorSpec(rng.choice([1, 3, 7, 9]), dims, float(np.float32(rng.uniform(-1, 1))), rng.randrange(-(2**31), 2**31))

    def maybe(value):
        return value if rng.random() < 0.8 else None

    has_fe, has_arena, has_reset = rng.random() < 0.8, rng.random() < 0.8, rng.random() < 0.8
    return cls(
        proto_version=maybe(rng.randrange(256)),
        reset_code=rng.randrange(256) if has_reset else None,
        reset_text=text(40) if has_reset else None,
        board=maybe(text(30)),
        core_clock_hz=maybe(rng.randrange(2**32)),
        cycle_counter=maybe(text(30)),
        model_sha256=maybe(rng.randbytes(32)),
        input=maybe(spec()),
        output=maybe(spec()),
        frontend_kind=rng.randrange(3) if has_fe else None,
        clip_samples=rng.randrange(2**32) if has_fe else None,
        sample_rate=rng.randrange(2**32) if has_fe else None,
        labels=tuple(text(12) for _ in range(rng.randrange(0, 10))),
        arena_size=rng.randrange(2**32) if has_arena else None,
        arena_used=rng.randrange(2**32) if has_arena else None,
        max_chunk_samples=maybe(rng.randrange(2**16)),
        build_id=maybe(text(60)),
        pcm_encodings=maybe(rng.randrange(256)),
        rx_paths=maybe(rng.randrange(256)),
        tensor_io=maybe((rng.randrange(256), rng.randrange(256), rng.randrange(2**16))),
        layers=maybe(rng.randrange(2**16)),
        speaker_norm=maybe((rng.randrange(256), rng.randrange(2**16))),
        embedding_norm=maybe((rng.randrange(2**16), rng.randrange(256), rng.randrange(256))),
        extra=tuple((rng.randrange(0x14, 256), rng.randbytes(rng.randrange(20))) for _ in range(rng.randrange(4))),
    )


def _random_messages(rng: random.Random) -> list[P.Message]:
    u32, u16 = (lambda: rng.randrange(2**32)), (lambda: rng.randrange(2**16))
    n = rng.randrange(1, 1019)
    data = np.array([rng.randrange(-32768, 32768) for _ in range(n)], "<i2").tobytes()
    return [
        P.Hello(),
        P.Profile(),
        P.Reset(),
        P.RxPath(rng.randrange(256)),
        P.RxPathSet(rng.randrange(256)),
        P.Start(u32(), u32()),
        P.Next(u32(), u32(), u16()),
        P.Chunk(u32(), u32(), n, pc.RAW, data),
        P.Chunk(u32(), u32(), u16() or 1, pc.RICE, rng.randbytes(rng.randrange(3, P.CHUNK_MAX_DATA + 1))),
        P.Result(u32(), rng.randrange(256), tuple(rng.randrange(-128, 128) for _ in range(rng.randrange(256))), u32(), u32()),
        P.Error(
            rng.randrange(1, 12),
            rng.randrange(256),
            rng.randrange(256),
            "".join(rng.choice("ab é✓") for _ in range(rng.randrange(80))),
        ),
        P.ProfileData(
            tuple(("".join(rng.choice("CONV_2DMAX") for _ in range(rng.randrange(20))), u32()) for _ in range(rng.randrange(60)))
        ),
        _random_info(rng),
        _random_info(rng, P.Boot),
        P.TensorStart(u32(), rng.randrange(256), u32()),
        P.TensorNext(u32(), rng.randrange(256), u32(), u16()),
        P.TensorRead(u32(), rng.randrange(256), u32(), u16()),
        P.TensorChunk(u32(), rng.randrange(256), u32(), rng.randbytes(rng.randrange(1, P.TENSOR_CHUNK_MAX_DATA + 1))),
        P.TensorData(u32(), rng.randrange(256), u32(), rng.randbytes(rng.randrange(1, P.TENSOR_CHUNK_MAX_DATA + 1))),
        P.Invoke(u32()),
        P.Invoked(u32(), u32(), tuple(u32() for _ in range(rng.randrange(P.MAX_TENSORS + 1)))),
        P.LayerRead(u32(), u16(), u32(), u16()),
        P.LayerData(u32(), u16(), u32(), rng.randbytes(rng.randrange(1, P.LAYER_DATA_MAX_DATA + 1))),
        norm_state := _random_norm_state(rng),
        P.Norm(P.Norm.LOAD, norm_state),
        P.Norm(rng.choice([P.Norm.READ, P.Norm.RESET])),
        embed_state := _random_embed_state(rng),
        P.Embed(P.Embed.LOAD, embed_state),
        P.Embed(rng.choice([P.Embed.READ, P.Embed.RESET])),
    ]


def _random_embed_state(rng: random.Random) -> P.EmbedState:
    dim = rng.choice([1, 96, 168, P.EMBED_MAX_DIM, rng.randrange(1, P.EMBED_MAX_DIM + 1)])
    i32 = lambda: rng.randrange(-(2**31), 2**31)  # noqa: E731
    return P.EmbedState(rng.randrange(2**32), tuple(i32() for _ in range(dim)), tuple(i32() for _ in range(dim)))


def _random_norm_state(rng: random.Random) -> P.NormState:
    bins = rng.choice([1, 64, rng.randrange(1, P.NORM_MAX_BINS + 1)])
    i64 = lambda: rng.randrange(-(2**63), 2**63)  # noqa: E731
    return P.NormState(
        rng.randrange(256),
        rng.randrange(2**32),
        rng.randrange(2**32),
        tuple(i64() for _ in range(bins)),
        tuple(i64() for _ in range(bins)),
    )


def test_every_message_round_trips_between_c_and_python(lib: ctypes.CDLL) -> None:
    rng = random.Random(4)
    seen = set()
    for _ in range(30):
        for msg in _random_messages(rng):
            seen.add(msg.TYPE)
            payload = msg.encode()
            # Python encodes, C decodes (C drops the INFO tags it does not know) ...
            assert c_decode(lib, msg.TYPE, payload) == without_extra(msg)
            # ... and C encodes (INFO's unknown tags via ser_tlv_append), Python decodes: the same bytes.
            c_payload = c_encode(lib, msg)
            assert c_payload == payload
            seq = rng.randrange(256)
            raw = c_frame(lib, msg.TYPE, seq, c_payload)
            assert raw == P.encode_message(msg, seq)
            (frame,) = P.Parser().feed(raw)
            assert P.decode_message(frame) == msg
    assert seen == set(P.MsgType)


def test_info_skips_unknown_tags_and_reads_grown_values(lib: ctypes.CDLL) -> None:
    base = P.Info(proto_version=1, board="b", core_clock_hz=5, labels=("x", "y"), arena_size=7, arena_used=3)
    payload = bytearray(P._tlv(0x99, b"\x01\x02") + base.encode() + P._tlv(0x00, b"") + P._tlv(0xFF, bytes(255)))
    # A later version appends a field to a known value: v1 decoders read theirs and ignore the rest.
    payload += P._tlv(P.Tag.MAX_CHUNK_SAMPLES, struct.pack("<HI", 512, 0xDEAD))
    expected = replace(base, max_chunk_samples=512)
    assert c_decode(lib, P.MsgType.INFO, bytes(payload)) == expected
    assert P.Info.decode(bytes(payload)) == replace(expected, extra=((0x99, b"\x01\x02"), (0x00, b""), (0xFF, bytes(255))))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x01",  # tag without length
        b"\x03\x05abc",  # value runs past the payload
        b"\x04\x03\x00\x00\x00",  # core clock shorter than u32
        b"\x06\x1f" + bytes(31),  # sha256 of 31 bytes
        b"\x07\x0e\x09\x00\x00\x00\x00\x00\x00\x00\x00\x02\x01\x00\x00\x00",  # 2 dims announced, 1 present
        b"\x09\x05\x01\x80\xbb\x00\x00",  # front end without sample rate
    ],
)
def test_bad_info_is_refused_by_both(lib: ctypes.CDLL, payload: bytes) -> None:
    assert c_decode(lib, P.MsgType.INFO, payload) == P.ErrorCode.BAD_LENGTH
    with pytest.raises(P.PayloadError) as err:
        P.Info.decode(payload)
    assert err.value.code == P.ErrorCode.BAD_LENGTH


def test_c_info_decoder_limits(lib: ctypes.CDLL) -> None:
    labels = P.Info(labels=tuple(f"l{i}" for i in range(MAX_LABELS))).encode()
    assert c_decode(lib, P.MsgType.INFO, labels) == P.Info(labels=tuple(f"l{i}" for i in range(MAX_LABELS)))
    assert c_decode(lib, P.MsgType.INFO, labels + P._tlv(P.Tag.LABEL, b"one too many")) == P.ErrorCode.BAD_LENGTH
    dims = P.Info(input=P.TensorSpec(9, (1,) * (MAX_DIMS + 1), 1.0, 0)).encode()
    assert c_decode(lib, P.MsgType.INFO, dims) == P.ErrorCode.BAD_LENGTH


@pytest.mark.parametrize(
    ("msg_type", "payload"),
    [
        (P.MsgType.HELLO, b"\x00"),
        (P.MsgType.RESET, b"xyz"),
        (P.MsgType.START, bytes(7)),
        (P.MsgType.START, bytes(9)),
        (P.MsgType.NEXT, bytes(9)),
        (P.MsgType.CHUNK, bytes(10)),
        (P.MsgType.CHUNK, struct.pack("<IIHB", 1, 0, 0, 0)),  # no samples
        (P.MsgType.CHUNK, struct.pack("<IIHB", 1, 0, 3, 0) + bytes(5)),  # raw: 2 * 3 bytes needed
        (P.MsgType.RESULT, bytes(13)),
        (P.MsgType.RESULT, struct.pack("<IBB", 1, 0, 3) + bytes(10)),  # n_scores 3 but no room for them
        (P.MsgType.ERROR, b"\x01\x02"),
        (P.MsgType.PROFILE_DATA, b"\x01"),
        (P.MsgType.PROFILE_DATA, b"\x01\x00\x03ab\x00\x00\x00\x00"),  # name runs into ticks
        (P.MsgType.PROFILE_DATA, b"\x00\x00\x00"),  # bytes after the entries
        (P.MsgType.TENSOR_START, bytes(8)),
        (P.MsgType.TENSOR_NEXT, bytes(12)),
        (P.MsgType.TENSOR_READ, bytes(10)),
        (P.MsgType.TENSOR_CHUNK, bytes(9)),  # no data
        (P.MsgType.TENSOR_DATA, bytes(5)),
        (P.MsgType.INVOKE, bytes(5)),
        (P.MsgType.LAYER_READ, bytes(11)),
        (P.MsgType.LAYER_READ, bytes(13)),
        (P.MsgType.LAYER_DATA, bytes(10)),  # no data
        (P.MsgType.INVOKED, struct.pack("<IIB", 1, 2, 2) + bytes(4)),  # 2 outputs announced, 1 present
        (P.MsgType.INVOKED, struct.pack("<IIB", 1, 2, 17) + bytes(68)),  # more outputs than INVOKED describes
        (P.MsgType.EMBED, b""),
        (P.MsgType.EMBED, b"\x01\x00"),  # reset carries nothing
        (P.MsgType.EMBED, b"\x02" + struct.pack("<HI", 2, 1) + bytes(15)),  # 2 values need 16 bytes of sums
        (P.MsgType.EMBED_STATE, struct.pack("<HI", 0, 0)),  # no value
        (P.MsgType.EMBED_STATE, struct.pack("<HI", 256, 0) + bytes(2048)),  # more values than a frame carries
    ],
)
def test_wrong_payload_sizes_are_bad_length_in_both(lib: ctypes.CDLL, msg_type: int, payload: bytes) -> None:
    assert c_decode(lib, msg_type, payload) == P.ErrorCode.BAD_LENGTH
    with pytest.raises(P.PayloadError) as err:
        P.decode_message(P.Frame(msg_type, 0, payload))
    assert err.value.code == P.ErrorCode.BAD_LENGTH


def test_unknown_type_is_reported() -> None:
    with pytest.raises(P.PayloadError) as err:
        P.decode_message(P.Frame(0x42, 0, b""))
    assert err.value.code == P.ErrorCode.UNKNOWN_TYPE


def test_error_and_profile_encoders_respect_their_buffer(lib: ctypes.CDLL) -> None:
    out = (c_uint8 * P.MAX_PAYLOAD)()
    text = b"x" * 100
    m = SerError(5, 3, 9, ctypes.cast(_buf(text), c_ptr), len(text))
    assert lib.ser_error_encode(m, out, 2) == 0
    n = lib.ser_error_encode(m, out, 20)
    assert P.Error.decode(bytes(out[:n])) == P.Error(5, 3, 9, "x" * 17)

    w = SerProfileWriter()
    assert not lib.ser_profile_begin(ctypes.byref(w), out, 1)
    assert lib.ser_profile_begin(ctypes.byref(w), out, 30)
    assert lib.ser_profile_add(ctypes.byref(w), b"CONV_2D", 10)  # 2 + 12 bytes
    assert lib.ser_profile_add(ctypes.byref(w), b"ADD", 20)  # + 8
    assert not lib.ser_profile_add(ctypes.byref(w), b"SOFTMAX", 30)  # 12 more do not fit in 30
    assert P.ProfileData.decode(bytes(out[: w.len])) == P.ProfileData((("CONV_2D", 10), ("ADD", 20)))
    assert lib.ser_profile_add(ctypes.byref(w), b"", 30)  # 5 more do


def test_sequencer_numbers_commands_and_retries_with_the_same_seq() -> None:
    seq = P.CommandSequencer(first_seq=254)
    a = seq.command(P.Hello())
    assert seq.retry() == a and seq.last_seq == 254
    b = seq.command(P.Start(1, 48000))
    c = seq.command(P.Profile())
    assert (b[3], c[3], seq.last_seq) == (255, 0, 0)
    assert seq.is_reply(P.Frame(P.MsgType.PROFILE_DATA, 0, b"\x00\x00"))
    assert not seq.is_reply(P.Frame(P.MsgType.BOOT, 0, b""))
    assert not seq.is_reply(P.Frame(P.MsgType.NEXT, 255, bytes(10)))


# ---- PCM: Python encodes, C decodes ----


def _check_pcm(lib: ctypes.CDLL, x: np.ndarray) -> tuple[int, bytes]:
    rice = pc.encode_rice(x)
    assert np.array_equal(c_pcm_decode(lib, pc.RICE, rice, len(x)), x)
    encoding, data = pc.encode_chunk(x)
    assert np.array_equal(c_pcm_decode(lib, encoding, data, len(x)), x)
    assert len(data) <= 2 * len(x) and (encoding == pc.RICE) == (len(rice) < 2 * len(x))
    return encoding, data


def _wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)


def _speech_like(n: int, seed: int) -> np.ndarray:
    return synthetic_clip(seed % 6, seed % 4, seed, n / 16000 + 0.001)[:n]


@pytest.mark.parametrize(
    "kind",
    ["silence", "full_scale_noise", "alternating_extremes", "alternating_min", "max_steps", "synthetic_speech", "tiny_noise"],
)
def test_pcm_round_trips_through_c(lib: ctypes.CDLL, kind: str) -> None:
    rng = np.random.default_rng(5)
    n = 2048
    x = {
        "silence": np.zeros(n, np.int16),
        "full_scale_noise": rng.integers(-32768, 32768, n).astype(np.int16),
        "alternating_extremes": np.where(np.arange(n) % 2, -32768, 32767).astype(np.int16),
        "alternating_min": np.where(np.arange(n) % 2, -32768, 0).astype(np.int16),
        "max_steps": np.repeat(np.array([32767, -32768], np.int16), [n // 3, n - n // 3]),
        "synthetic_speech": _speech_like(n, 1),
        "tiny_noise": rng.integers(-2, 3, n).astype(np.int16),
    }[kind]
    encoding, _ = _check_pcm(lib, x)
    if kind in ("silence", "synthetic_speech", "tiny_noise"):
        assert encoding == pc.RICE
    if kind in ("full_scale_noise", "alternating_extremes"):
        assert encoding == pc.RAW  # the host falls back when encoding 1 is not smaller


def test_pcm_every_chunk_length_1_to_2048(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(6)
    speech = _speech_like(2048, 2)
    for n in range(1, 2049):
        x = speech[:n] if n % 3 else rng.integers(-32768, 32768, n).astype(np.int16)
        _check_pcm(lib, x)


def test_pcm_clip_encoder_matches_chunk_encoder(lib: ctypes.CDLL) -> None:
    """The whole-clip encoder gives each chunk the bytes the one-chunk encoder gives it, short tails included."""
    rng = np.random.default_rng(7)
    long = np.concatenate([_speech_like(30000, 3), np.zeros(5000, np.int16), rng.integers(-32768, 32768, 3001).astype(np.int16)])
    cases = [(long, 1018), (long, 2048), (long[:2037], 1018), (long[:2038], 1018)]
    cases += [(long[:n], chunk) for chunk in (1, 2, 3, 7) for n in (1, 2, 3 * chunk + 1, 3 * chunk + 2, 100)]
    for x, chunk in cases:
        chunks = pc.encode_chunks(x, chunk)
        assert chunks == [pc.encode_chunk(x[i : i + chunk]) for i in range(0, len(x), chunk)], (len(x), chunk)
        decoded = [c_pcm_decode(lib, e, d, len(x[i * chunk : (i + 1) * chunk])) for i, (e, d) in enumerate(chunks)]
        assert np.array_equal(np.concatenate(decoded), x)


def test_fit_chunk_fills_a_frame(lib: ctypes.CDLL) -> None:
    speech, noise = _speech_like(4096, 4), np.random.default_rng(8).integers(-32768, 32768, 4096).astype(np.int16)
    n, encoding, data = pc.fit_chunk(speech, 4096, P.CHUNK_MAX_DATA)
    assert encoding == pc.RICE and n > P.CHUNK_MAX_RAW_SAMPLES and len(data) <= P.CHUNK_MAX_DATA
    n, encoding, data = pc.fit_chunk(noise, 4096, P.CHUNK_MAX_DATA)
    assert (n, encoding) == (P.CHUNK_MAX_RAW_SAMPLES, pc.RAW)
    assert np.array_equal(c_pcm_decode(lib, encoding, data, n), noise[:n])


def _corruptions(data: bytes, rng: random.Random) -> list[bytes]:
    out = [data[:-1], data + b"\x00", data + b"\x80", bytes([16]) + data[1:], bytes([255]) + data[1:]]
    if len(data) > 3:
        last = bytearray(data)
        last[-1] |= 1  # a set padding bit, or a changed code
        out.append(bytes(last))
    for _ in range(30):
        d = bytearray(data)
        d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        out.append(bytes(d))
    return out


def test_pcm_decoders_agree_on_damaged_streams(lib: ctypes.CDLL) -> None:
    """C and Python decoders accept and refuse the same streams, and decode accepted ones alike."""
    rng = random.Random(9)
    refused = 0
    for n in (1, 2, 3, 17, 300):
        for x in (
            _speech_like(n, n),
            np.zeros(n, np.int16),
            np.random.default_rng(n).integers(-32768, 32768, n).astype(np.int16),
        ):
            for bad in _corruptions(pc.encode_rice(x), rng):
                c = c_pcm_decode(lib, pc.RICE, bad, n)
                try:
                    py = pc.decode_chunk(pc.RICE, bad, n)
                except ValueError:
                    assert c == P.ErrorCode.BAD_ENCODING
                    refused += 1
                else:
                    assert isinstance(c, np.ndarray) and np.array_equal(c, py)
    assert refused > 100


def test_pcm_decoder_refusals(lib: ctypes.CDLL) -> None:
    assert c_pcm_decode(lib, pc.RAW, bytes(4), 0) == P.ErrorCode.BAD_LENGTH
    assert c_pcm_decode(lib, pc.RAW, bytes(5), 2) == P.ErrorCode.BAD_LENGTH
    assert c_pcm_decode(lib, 2, bytes(10), 5) == P.ErrorCode.BAD_ENCODING
    assert c_pcm_decode(lib, pc.RICE, b"\x00\x00", 1) == P.ErrorCode.BAD_ENCODING
    assert c_pcm_decode(lib, pc.RICE, b"\x00\x00\x00", 2) == P.ErrorCode.BAD_ENCODING  # ran out of bits
    assert c_pcm_decode(lib, pc.RICE, b"\x00\x00\x00\x80", 2).tolist() == [0, 0]
    # x[0] = 32767, then k = 15, q = 0, u = 32766: e = +16383 would leave the int16 range.
    assert c_pcm_decode(lib, pc.RICE, b"\x0f\xff\x7f\xff\xfe", 2) == P.ErrorCode.BAD_ENCODING
    assert c_pcm_decode(lib, pc.RICE, b"\x0f\xff\x7f\xff\xfd", 2).tolist() == [32767, 32767 - 16383]


@pytest.mark.parametrize("seconds", [0.5, 3.0])
def test_pcm_synthetic_clips(lib: ctypes.CDLL, seconds: float) -> None:
    x = synthetic_clip(2, 1, 0, seconds)
    chunks = pc.encode_chunks(x, P.CHUNK_MAX_RAW_SAMPLES)
    decoded = [c_pcm_decode(lib, e, d, len(x[i * 1018 : (i + 1) * 1018])) for i, (e, d) in enumerate(chunks)]
    assert np.array_equal(np.concatenate(decoded), x)
    assert 2 * len(x) / sum(len(d) for _, d in chunks) > 1.3  # its white noise (std 200) caps the ratio near 1.4


def test_pcm_casia_speech_ratio(lib: ctypes.CDLL, casia_root: Path) -> None:
    """Lossless on real speech, with the ratio it buys (two sentences per speaker and emotion)."""
    files = sorted(casia_root.glob("*/*/20[16].wav"))
    assert len(files) == 48
    raw = coded = 0
    for path in files:
        x = _wav(path)
        chunks = pc.encode_chunks(x, P.CHUNK_MAX_RAW_SAMPLES)
        decoded = [c_pcm_decode(lib, e, d, len(x[i * 1018 : (i + 1) * 1018])) for i, (e, d) in enumerate(chunks)]
        assert np.array_equal(np.concatenate(decoded), x), path
        raw += 2 * len(x)
        coded += sum(len(d) for _, d in chunks)
    ratio = raw / coded
    print(f"\nCASIA speech, {len(files)} clips, 1018-sample chunks: {raw} -> {coded} bytes, ratio {ratio:.3f}")
    assert ratio > 1.3


def test_pcm_speed(lib: ctypes.CDLL, capsys: pytest.CaptureFixture) -> None:
    """Python encodes a 3 s clip well inside the ~0.6 s the line needs to send it; C decode cost per sample."""
    x = _speech_like(48000, 5)
    whole = min(_timed(lambda: pc.encode_chunks(x, P.CHUNK_MAX_RAW_SAMPLES)) for _ in range(5))

    def per_next() -> None:  # how a host answers NEXT after NEXT
        offset = 0
        while offset < len(x):
            offset += pc.fit_chunk(x[offset:], P.CHUNK_MAX_RAW_SAMPLES, P.CHUNK_MAX_DATA)[0]

    chunked = min(_timed(per_next) for _ in range(5))
    chunks = pc.encode_chunks(x, 2048)
    bufs = [(e, _buf(d), len(d), len(x[i * 2048 : (i + 1) * 2048])) for i, (e, d) in enumerate(chunks)]
    out = (c_int16 * 2048)()

    def decode_all() -> None:
        for e, b, size, n in bufs:
            assert lib.ser_pcm_decode(e, b, size, out, n) == 0

    ns = min(_timed(decode_all) for _ in range(20)) / 48000 * 1e9
    with capsys.disabled():
        print(
            f"\nPython encode of 48000 samples: {whole * 1e3:.1f} ms in one pass, {chunked * 1e3:.1f} ms chunk by chunk; "
            f"C decode (with ctypes calls): {ns:.1f} ns/sample"
        )
    assert whole < 0.05
    assert chunked < 0.1  # per-call overhead; loose, shared CI machines are slow
    assert ns < 1000


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- the C sources build warning-free for the board and for both host compilers ----

WARN = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-Wshadow", "-Wconversion"]
M4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]


@pytest.mark.parametrize(("cc", "flags"), [("arm-none-eabi-gcc", [*M4, "-Os"]), ("gcc", ["-O2"]), ("clang", ["-O2"])])
def test_c_sources_compile_warning_free(tmp_path: Path, cc: str, flags: list[str]) -> None:
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed: run scripts/bootstrap")
    for src in SOURCES:
        obj = tmp_path / (src.stem + ".o")
        result = subprocess.run([cc, *WARN, *flags, f"-I{APP}", "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert result.returncode == 0 and not result.stderr, result.stderr
        if cc.startswith("arm-none-eabi"):  # no allocation, no stdio: only these come from the C library
            nm = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()
            assert set(nm) - {"U"} <= {"memcpy", "memmove", "memset", "strlen"}, nm
