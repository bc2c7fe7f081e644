"""The board<->host serial protocol, version 1, in Python: frames, a streaming parser, message payloads.

Byte for byte the twin of ``firmware/app/ser_protocol.c``; the spec both follow is
``firmware/PROTOCOL.md`` and ``tests/golden_frames.json`` holds frames both must agree on.
Frame: ``A5 5A | type u8 | seq u8 | len u16 LE | payload | crc16 LE`` with CRC-16/CCITT-FALSE
over type..payload.
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass, field
from typing import ClassVar

PROTO_VERSION = 1
MAX_PAYLOAD = 2048
SYNC = b"\xa5\x5a"
HEADER_SIZE = 6
OVERHEAD = 8
CHUNK_HEADER_SIZE = 11
CHUNK_MAX_DATA = MAX_PAYLOAD - CHUNK_HEADER_SIZE
CHUNK_MAX_RAW_SAMPLES = CHUNK_MAX_DATA // 2
TENSOR_CHUNK_HEADER_SIZE = 9
TENSOR_CHUNK_MAX_DATA = MAX_PAYLOAD - TENSOR_CHUNK_HEADER_SIZE
LAYER_DATA_HEADER_SIZE = 10
LAYER_DATA_MAX_DATA = MAX_PAYLOAD - LAYER_DATA_HEADER_SIZE
MAX_TENSORS = 16  # outputs an INVOKED reply describes at most (ser_protocol.h SER_MAX_TENSORS)
NORM_MAX_BINS = 127  # bins a NORM_STATE carries at most (ser_protocol.h SER_NORM_MAX_BINS)
NORM_MODES = {1: "scalar", 2: "bins"}  # ser_speaker_norm.h SER_SN_SCALAR, SER_SN_BINS
EMBED_MAX_DIM = 255  # values an EMBED_STATE carries at most (ser_protocol.h SER_EMBED_MAX_DIM)


class MsgType(enum.IntEnum):
    HELLO = 0x01
    START = 0x02
    CHUNK = 0x03
    PROFILE = 0x04
    RESET = 0x05
    RX_PATH = 0x06
    TENSOR_START = 0x07  # raw tensors (PROTOCOL.md 12): only to a board whose INFO has TENSOR_IO
    TENSOR_CHUNK = 0x08
    INVOKE = 0x09
    TENSOR_READ = 0x0A
    LAYER_READ = 0x0B  # every tensor of the graph (PROTOCOL.md 13): only to a board whose INFO has LAYERS
    NORM = 0x0C  # per-speaker statistics (PROTOCOL.md 14): only to a board whose INFO has SPEAKER_NORM
    EMBED = 0x0D  # per-speaker embedding statistics (PROTOCOL.md 15): only to a board whose INFO has EMBEDDING_NORM
    BOOT = 0x80
    INFO = 0x81
    NEXT = 0x82
    RESULT = 0x83
    PROFILE_DATA = 0x84
    RX_PATH_SET = 0x85
    TENSOR_NEXT = 0x86
    INVOKED = 0x87
    TENSOR_DATA = 0x88
    LAYER_DATA = 0x89
    NORM_STATE = 0x8A
    EMBED_STATE = 0x8B
    ERROR = 0xEE


class ErrorCode(enum.IntEnum):
    BAD_CRC = 1
    TOO_LONG = 2
    UNKNOWN_TYPE = 3
    BAD_LENGTH = 4
    OUT_OF_ORDER = 5
    BAD_CLIP = 6
    MODEL_FAILED = 7
    BAD_ENCODING = 8
    TRUNCATED = 9
    BUSY = 10
    BAD_PATH = 11
    BAD_TENSOR = 12
    BAD_NORM = 13


class Tag(enum.IntEnum):
    """INFO/BOOT TLV tags."""

    PROTO_VERSION = 0x01
    RESET_REASON = 0x02
    BOARD = 0x03
    CORE_CLOCK = 0x04
    CYCLE_COUNTER = 0x05
    MODEL_SHA256 = 0x06
    INPUT = 0x07
    OUTPUT = 0x08
    FRONTEND = 0x09
    LABEL = 0x0A
    ARENA = 0x0B
    MAX_CHUNK_SAMPLES = 0x0C
    BUILD_ID = 0x0D
    PCM_ENCODINGS = 0x0E
    RX_PATHS = 0x0F
    TENSOR_IO = 0x10
    LAYERS = 0x11
    SPEAKER_NORM = 0x12
    EMBEDDING_NORM = 0x13


class PayloadError(ValueError):
    """A payload that does not decode as its type; ``code`` is the ErrorCode the board would send."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (binascii's CRC-CCITT started at 0xFFFF)."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode_frame(msg_type: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = struct.pack("<BBH", msg_type, seq & 0xFF, len(payload)) + bytes(payload)
    return SYNC + body + struct.pack("<H", crc16(body))


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes

    def encode(self) -> bytes:
        return encode_frame(self.type, self.seq, self.payload)


@dataclass(frozen=True)
class ParseError:
    """A bad frame the parser dropped: ``kind`` is BAD_CRC or TOO_LONG; type/seq as received."""

    kind: ErrorCode
    type: int
    seq: int


_SYNC0, _SYNC1, _TYPE, _SEQ, _LEN0, _LEN1, _PAYLOAD, _CRC0, _CRC1 = range(9)


class Parser:
    """Streaming frame parser with the C parser's exact behaviour (state for state).

    ``resyncs`` counts the runs of garbage it skipped while hunting for a sync pair (a link-health figure).
    """

    def __init__(self) -> None:
        self.resyncs = 0
        self._skipping = False
        self.reset()

    def _skip(self) -> None:
        if not self._skipping:
            self.resyncs += 1
            self._skipping = True

    def reset(self) -> None:
        """Drop a partial frame (the inter-byte timeout) and hunt for the next sync pair."""
        self._state = _SYNC0
        self._type = self._seq = self._len = 0
        self._payload = bytearray()
        self._crc_rx = 0

    @property
    def in_frame(self) -> bool:
        return self._state >= _TYPE

    @property
    def partial_header(self) -> tuple[int, int]:
        """type and seq of the frame being received (0 where not yet received): what TRUNCATED reports."""
        return (self._type if self._state > _TYPE else 0, self._seq if self._state > _SEQ else 0)

    def feed(self, data: bytes) -> list[Frame | ParseError]:
        """Feed received bytes; returns the frames and errors they complete, in order."""
        events: list[Frame | ParseError] = []
        data = bytes(data)
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            i += 1
            st = self._state
            if st == _SYNC0:
                j = data.find(SYNC[:1], i - 1)  # skip garbage fast
                if j != i - 1:
                    self._skip()
                if j < 0:
                    break
                i = j + 1
                self._state = _SYNC1
            elif st == _SYNC1:
                if b == SYNC[1]:
                    self._state = _TYPE
                    self._type = self._seq = self._len = 0
                    self._skipping = False
                else:
                    self._skip()  # the 0xA5 before (and b, unless it is one too) was garbage
                    if b != SYNC[0]:
                        self._state = _SYNC0
            elif st == _TYPE:
                self._type, self._state = b, _SEQ
            elif st == _SEQ:
                self._seq, self._state = b, _LEN0
            elif st == _LEN0:
                self._len, self._state = b, _LEN1
            elif st == _LEN1:
                self._len |= b << 8
                self._payload = bytearray()
                if self._len > MAX_PAYLOAD:
                    self._state = _SYNC0
                    events.append(ParseError(ErrorCode.TOO_LONG, self._type, self._seq))
                else:
                    self._state = _PAYLOAD if self._len else _CRC0
            elif st == _PAYLOAD:
                take = data[i - 1 : i - 1 + self._len - len(self._payload)]
                self._payload += take
                i += len(take) - 1
                if len(self._payload) == self._len:
                    self._state = _CRC0
            elif st == _CRC0:
                self._crc_rx, self._state = b, _CRC1
            else:  # _CRC1
                self._state = _SYNC0
                crc_rx = self._crc_rx | (b << 8)
                body = struct.pack("<BBH", self._type, self._seq, self._len) + self._payload
                if crc16(body) == crc_rx:
                    events.append(Frame(self._type, self._seq, bytes(self._payload)))
                else:
                    events.append(ParseError(ErrorCode.BAD_CRC, self._type, self._seq))
        return events


# ---- message payloads ----


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise PayloadError(ErrorCode.BAD_LENGTH, what)


@dataclass(frozen=True)
class _Empty:
    TYPE: ClassVar[MsgType]

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, payload: bytes):
        _need(len(payload) == 0, f"{cls.TYPE.name} has an empty payload, got {len(payload)} bytes")
        return cls()


@dataclass(frozen=True)
class Hello(_Empty):
    TYPE: ClassVar[MsgType] = MsgType.HELLO


@dataclass(frozen=True)
class Profile(_Empty):
    TYPE: ClassVar[MsgType] = MsgType.PROFILE


@dataclass(frozen=True)
class Reset(_Empty):
    TYPE: ClassVar[MsgType] = MsgType.RESET


@dataclass(frozen=True)
class Start:
    TYPE: ClassVar[MsgType] = MsgType.START
    clip_id: int
    n_samples: int

    def encode(self) -> bytes:
        return struct.pack("<II", self.clip_id, self.n_samples)

    @classmethod
    def decode(cls, payload: bytes) -> Start:
        _need(len(payload) == 8, f"START is 8 bytes, got {len(payload)}")
        return cls(*struct.unpack("<II", payload))


@dataclass(frozen=True)
class Next:
    TYPE: ClassVar[MsgType] = MsgType.NEXT
    clip_id: int
    offset: int
    max_samples: int

    def encode(self) -> bytes:
        return struct.pack("<IIH", self.clip_id, self.offset, self.max_samples)

    @classmethod
    def decode(cls, payload: bytes) -> Next:
        _need(len(payload) == 10, f"NEXT is 10 bytes, got {len(payload)}")
        return cls(*struct.unpack("<IIH", payload))


@dataclass(frozen=True)
class RxPath:
    """From the next frame on, the host sends on receive path ``path`` (PROTOCOL.md 8; 0 is the UART)."""

    TYPE: ClassVar[MsgType] = MsgType.RX_PATH
    path: int

    def encode(self) -> bytes:
        return bytes([self.path])

    @classmethod
    def decode(cls, payload: bytes):
        _need(len(payload) == 1, f"{cls.TYPE.name} is 1 byte, got {len(payload)}")
        return cls(payload[0])


@dataclass(frozen=True)
class RxPathSet(RxPath):
    """The board's answer to RX_PATH: it now reads the host's stream from ``path``."""

    TYPE: ClassVar[MsgType] = MsgType.RX_PATH_SET


@dataclass(frozen=True)
class Chunk:
    TYPE: ClassVar[MsgType] = MsgType.CHUNK
    clip_id: int
    offset: int
    n_samples: int
    encoding: int
    data: bytes

    def encode(self) -> bytes:
        out = struct.pack("<IIHB", self.clip_id, self.offset, self.n_samples, self.encoding) + self.data
        if len(out) > MAX_PAYLOAD:
            raise ValueError(f"CHUNK data of {len(self.data)} bytes exceeds {CHUNK_MAX_DATA}")
        return out

    @classmethod
    def decode(cls, payload: bytes) -> Chunk:
        _need(len(payload) >= CHUNK_HEADER_SIZE, f"CHUNK needs {CHUNK_HEADER_SIZE} header bytes, got {len(payload)}")
        clip_id, offset, n, encoding = struct.unpack_from("<IIHB", payload)
        data = bytes(payload[CHUNK_HEADER_SIZE:])
        _need(n >= 1, "CHUNK carries no samples")
        _need(encoding != 0 or len(data) == 2 * n, f"raw CHUNK of {n} samples needs {2 * n} data bytes, got {len(data)}")
        return cls(clip_id, offset, n, encoding, data)


@dataclass(frozen=True)
class Result:
    TYPE: ClassVar[MsgType] = MsgType.RESULT
    clip_id: int
    class_index: int
    scores: tuple[int, ...]
    frontend_cycles: int
    invoke_cycles: int

    def encode(self) -> bytes:
        n = len(self.scores)
        return struct.pack(
            f"<IBB{n}bII", self.clip_id, self.class_index, n, *self.scores, self.frontend_cycles, self.invoke_cycles
        )

    @classmethod
    def decode(cls, payload: bytes) -> Result:
        _need(len(payload) >= 14 and len(payload) == 14 + payload[5], f"RESULT size {len(payload)} does not match its n_scores")
        n = payload[5]
        clip_id, class_index, _, *rest = struct.unpack(f"<IBB{n}bII", payload)
        return cls(clip_id, class_index, tuple(rest[:n]), rest[n], rest[n + 1])


@dataclass(frozen=True)
class Error:
    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: int
    offending_type: int
    offending_seq: int
    message: str = ""

    def encode(self) -> bytes:
        text = self.message.encode()[: MAX_PAYLOAD - 3]
        return bytes([self.code, self.offending_type, self.offending_seq]) + text

    @classmethod
    def decode(cls, payload: bytes) -> Error:
        _need(len(payload) >= 3, f"ERROR needs 3 header bytes, got {len(payload)}")
        return cls(payload[0], payload[1], payload[2], bytes(payload[3:]).decode("utf-8", errors="replace"))


@dataclass(frozen=True)
class ProfileData:
    TYPE: ClassVar[MsgType] = MsgType.PROFILE_DATA
    entries: tuple[tuple[str, int], ...]  # (layer tag, ticks) of the last Invoke, in order

    def encode(self) -> bytes:
        out = bytearray(struct.pack("<H", len(self.entries)))
        for name, ticks in self.entries:
            raw = name.encode()
            if len(raw) > 255:
                raise ValueError(f"profile tag {name!r} is longer than 255 bytes")
            out += bytes([len(raw)]) + raw + struct.pack("<I", ticks)
        if len(out) > MAX_PAYLOAD:
            raise ValueError(f"PROFILE_DATA of {len(out)} bytes exceeds {MAX_PAYLOAD}")
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> ProfileData:
        _need(len(payload) >= 2, "PROFILE_DATA needs its count")
        (count,) = struct.unpack_from("<H", payload)
        pos, entries = 2, []
        for _ in range(count):
            _need(pos < len(payload) and pos + 1 + payload[pos] + 4 <= len(payload), "PROFILE_DATA entry runs past the payload")
            n = payload[pos]
            name = bytes(payload[pos + 1 : pos + 1 + n]).decode("utf-8", errors="replace")
            (ticks,) = struct.unpack_from("<I", payload, pos + 1 + n)
            entries.append((name, ticks))
            pos += 1 + n + 4
        _need(pos == len(payload), f"PROFILE_DATA has {len(payload) - pos} bytes after its {count} entries")
        return cls(tuple(entries))


# ---- INFO / BOOT ----


@dataclass(frozen=True)
class TensorStart:
    """Raw tensors (PROTOCOL.md 12): input ``index`` of request ``req_id`` follows, ``n_bytes`` long."""

    TYPE: ClassVar[MsgType] = MsgType.TENSOR_START
    req_id: int
    index: int
    n_bytes: int

    def encode(self) -> bytes:
        return struct.pack("<IBI", self.req_id, self.index, self.n_bytes)

    @classmethod
    def decode(cls, payload: bytes) -> TensorStart:
        _need(len(payload) == 9, f"TENSOR_START is 9 bytes, got {len(payload)}")
        return cls(*struct.unpack("<IBI", payload))


@dataclass(frozen=True)
class TensorNext:
    """The board asks for the bytes of input ``index`` from ``offset``, at most ``max_bytes`` (0: complete)."""

    TYPE: ClassVar[MsgType] = MsgType.TENSOR_NEXT
    req_id: int
    index: int
    offset: int
    max_bytes: int

    def encode(self) -> bytes:
        return struct.pack("<IBIH", self.req_id, self.index, self.offset, self.max_bytes)

    @classmethod
    def decode(cls, payload: bytes):
        _need(len(payload) == 11, f"{cls.TYPE.name} is 11 bytes, got {len(payload)}")
        return cls(*struct.unpack("<IBIH", payload))


@dataclass(frozen=True)
class TensorRead(TensorNext):
    """The host asks for at most ``max_bytes`` of output ``index`` from ``offset`` (after INVOKED)."""

    TYPE: ClassVar[MsgType] = MsgType.TENSOR_READ


@dataclass(frozen=True)
class TensorChunk:
    """Bytes of input ``index`` at ``offset`` (host -> board)."""

    TYPE: ClassVar[MsgType] = MsgType.TENSOR_CHUNK
    req_id: int
    index: int
    offset: int
    data: bytes

    def encode(self) -> bytes:
        if not 1 <= len(self.data) <= TENSOR_CHUNK_MAX_DATA:
            raise ValueError(f"{self.TYPE.name} carries 1 .. {TENSOR_CHUNK_MAX_DATA} bytes, not {len(self.data)}")
        return struct.pack("<IBI", self.req_id, self.index, self.offset) + self.data

    @classmethod
    def decode(cls, payload: bytes):
        _need(len(payload) > TENSOR_CHUNK_HEADER_SIZE, f"{cls.TYPE.name} carries no data")
        return cls(*struct.unpack_from("<IBI", payload), bytes(payload[TENSOR_CHUNK_HEADER_SIZE:]))


@dataclass(frozen=True)
class TensorData(TensorChunk):
    """Bytes of output ``index`` at ``offset`` (board -> host, answering TENSOR_READ)."""

    TYPE: ClassVar[MsgType] = MsgType.TENSOR_DATA


@dataclass(frozen=True)
class Invoke:
    """Run the model on the input tensors of request ``req_id``."""

    TYPE: ClassVar[MsgType] = MsgType.INVOKE
    req_id: int

    def encode(self) -> bytes:
        return struct.pack("<I", self.req_id)

    @classmethod
    def decode(cls, payload: bytes) -> Invoke:
        _need(len(payload) == 4, f"INVOKE is 4 bytes, got {len(payload)}")
        return cls(*struct.unpack("<I", payload))


@dataclass(frozen=True)
class Invoked:
    """The model ran: its Invoke cycles and the size in bytes of every output tensor."""

    TYPE: ClassVar[MsgType] = MsgType.INVOKED
    req_id: int
    invoke_cycles: int
    output_bytes: tuple[int, ...]

    def encode(self) -> bytes:
        if len(self.output_bytes) > MAX_TENSORS:
            raise ValueError(f"INVOKED describes at most {MAX_TENSORS} outputs")
        n = len(self.output_bytes)
        return struct.pack(f"<IIB{n}I", self.req_id, self.invoke_cycles, n, *self.output_bytes)

    @classmethod
    def decode(cls, payload: bytes) -> Invoked:
        _need(len(payload) >= 9 and len(payload) == 9 + 4 * payload[8], f"INVOKED of {len(payload)} bytes")
        _need(payload[8] <= MAX_TENSORS, f"INVOKED describes at most {MAX_TENSORS} outputs")
        req_id, cycles, n = struct.unpack_from("<IIB", payload)
        return cls(req_id, cycles, struct.unpack_from(f"<{n}I", payload, 9))


@dataclass(frozen=True)
class LayerRead:
    """The host asks for at most ``max_bytes`` of graph tensor ``tensor`` from ``offset`` (after INVOKED)."""

    TYPE: ClassVar[MsgType] = MsgType.LAYER_READ
    req_id: int
    tensor: int  # index in the model's tensor table
    offset: int
    max_bytes: int

    def encode(self) -> bytes:
        return struct.pack("<IHIH", self.req_id, self.tensor, self.offset, self.max_bytes)

    @classmethod
    def decode(cls, payload: bytes) -> LayerRead:
        _need(len(payload) == 12, f"LAYER_READ is 12 bytes, got {len(payload)}")
        return cls(*struct.unpack("<IHIH", payload))


@dataclass(frozen=True)
class LayerData:
    """Bytes of graph tensor ``tensor`` at ``offset`` (board -> host, answering LAYER_READ)."""

    TYPE: ClassVar[MsgType] = MsgType.LAYER_DATA
    req_id: int
    tensor: int
    offset: int
    data: bytes

    def encode(self) -> bytes:
        if not 1 <= len(self.data) <= LAYER_DATA_MAX_DATA:
            raise ValueError(f"LAYER_DATA carries 1 .. {LAYER_DATA_MAX_DATA} bytes, not {len(self.data)}")
        return struct.pack("<IHI", self.req_id, self.tensor, self.offset) + self.data

    @classmethod
    def decode(cls, payload: bytes) -> LayerData:
        _need(len(payload) > LAYER_DATA_HEADER_SIZE, "LAYER_DATA carries no data")
        return cls(*struct.unpack_from("<IHI", payload), bytes(payload[LAYER_DATA_HEADER_SIZE:]))


@dataclass(frozen=True)
class NormState:
    """A board's per-speaker statistics (PROTOCOL.md 14): ``mode`` 1 scalar or 2 bins, clips and frames heard,
    the int64 sums of the values (2^-12 units) and of their squares, one per bin (board -> host)."""

    TYPE: ClassVar[MsgType] = MsgType.NORM_STATE
    mode: int
    clips: int
    frames: int
    sum: tuple[int, ...]
    squares: tuple[int, ...]

    def encode(self) -> bytes:
        n = len(self.sum)
        if len(self.squares) != n or not 1 <= n <= NORM_MAX_BINS:
            raise ValueError(f"a state has 1 .. {NORM_MAX_BINS} bins and as many squares as sums, not {n}/{len(self.squares)}")
        return struct.pack(f"<BHII{2 * n}q", self.mode, n, self.clips, self.frames, *self.sum, *self.squares)

    @classmethod
    def decode(cls, payload: bytes) -> NormState:
        _need(len(payload) >= 11, "NORM_STATE is at least 11 bytes")
        mode, n, clips, frames = struct.unpack_from("<BHII", payload)
        _need(n <= NORM_MAX_BINS and len(payload) == 11 + 16 * n, f"NORM_STATE of {n} bins is {11 + 16 * n} bytes")
        values = struct.unpack_from(f"<{2 * n}q", payload, 11)
        return cls(mode, clips, frames, values[:n], values[n:])


class _StateCommand:
    """Read (op 0), reset (1) or load (2, with ``state``) one of the board's per-speaker states (NORM, EMBED)."""

    READ: ClassVar[int] = 0
    RESET: ClassVar[int] = 1
    LOAD: ClassVar[int] = 2
    STATE: ClassVar[type]
    op: int
    state: object | None

    def encode(self) -> bytes:
        name = self.TYPE.name
        if (self.op == self.LOAD) != (self.state is not None):
            raise ValueError(f"{name} load carries a state, read and reset none")
        return bytes([self.op]) + (self.state.encode() if self.state is not None else b"")

    @classmethod
    def decode(cls, payload: bytes) -> _StateCommand:
        name = cls.TYPE.name
        _need(len(payload) >= 1, f"{name} carries an op")
        op = payload[0]
        if op not in (cls.READ, cls.RESET, cls.LOAD):
            raise PayloadError(ErrorCode.BAD_NORM, f"{name} op is 0 read, 1 reset or 2 load, not {op}")
        if op != cls.LOAD:
            _need(len(payload) == 1, f"{name} read and reset are 1 byte")
            return cls(op)
        return cls(op, cls.STATE.decode(payload[1:]))


@dataclass(frozen=True)
class Norm(_StateCommand):
    """The board's per-speaker log-mel statistics (PROTOCOL.md 14); answered by NORM_STATE."""

    TYPE: ClassVar[MsgType] = MsgType.NORM
    STATE: ClassVar[type] = NormState
    op: int
    state: NormState | None = None


@dataclass(frozen=True)
class EmbedState:
    """A board's per-speaker embedding statistics (PROTOCOL.md 15): clips heard, the int32 sums of the int8
    embedding values and of their squares, one per value (board -> host)."""

    TYPE: ClassVar[MsgType] = MsgType.EMBED_STATE
    clips: int
    sum: tuple[int, ...]
    squares: tuple[int, ...]

    def encode(self) -> bytes:
        n = len(self.sum)
        if len(self.squares) != n or not 1 <= n <= EMBED_MAX_DIM:
            raise ValueError(f"a state has 1 .. {EMBED_MAX_DIM} values and as many squares as sums, not {n}/{len(self.squares)}")
        return struct.pack(f"<HI{2 * n}i", n, self.clips, *self.sum, *self.squares)

    @classmethod
    def decode(cls, payload: bytes) -> EmbedState:
        _need(len(payload) >= 6, "EMBED_STATE is at least 6 bytes")
        n, clips = struct.unpack_from("<HI", payload)
        _need(1 <= n <= EMBED_MAX_DIM and len(payload) == 6 + 8 * n, f"EMBED_STATE of {n} values is {6 + 8 * n} bytes")
        values = struct.unpack_from(f"<{2 * n}i", payload, 6)
        return cls(clips, values[:n], values[n:])


@dataclass(frozen=True)
class Embed(_StateCommand):
    """The board's per-speaker embedding statistics (PROTOCOL.md 15); answered by EMBED_STATE."""

    TYPE: ClassVar[MsgType] = MsgType.EMBED
    STATE: ClassVar[type] = EmbedState
    op: int
    state: EmbedState | None = None


@dataclass(frozen=True)
class TensorSpec:
    """dtype is a TfLiteType code (9 int8, 1 float32, 7 int16, 3 uint8)."""

    dtype: int
    dims: tuple[int, ...]
    scale: float
    zero_point: int

    def encode(self) -> bytes:
        return struct.pack(f"<BfiB{len(self.dims)}I", self.dtype, self.scale, self.zero_point, len(self.dims), *self.dims)

    @classmethod
    def decode(cls, value: bytes) -> TensorSpec:
        _need(len(value) >= 10 and len(value) >= 10 + 4 * value[9], "tensor spec shorter than its dims")
        dtype, scale, zero_point, n = struct.unpack_from("<BfiB", value)
        return cls(dtype, struct.unpack_from(f"<{n}I", value, 10), scale, zero_point)


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _tlv(tag: int, value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"TLV 0x{tag:02x} value of {len(value)} bytes exceeds 255")
    return bytes([tag, len(value)]) + value


@dataclass(frozen=True)
class Info:
    """INFO (and BOOT) payload. None: the tag is absent. ``extra`` keeps tags this version does not know."""

    TYPE: ClassVar[MsgType] = MsgType.INFO
    proto_version: int | None = None
    reset_code: int | None = None  # ser_port.h SER_RESET_*: 1 power-on, 2 pin, 3 software, 4 watchdog, 5 other
    reset_text: str | None = None
    board: str | None = None
    core_clock_hz: int | None = None
    cycle_counter: str | None = None
    model_sha256: bytes | None = None
    input: TensorSpec | None = None
    output: TensorSpec | None = None
    frontend_kind: int | None = None  # 0 none, 1 waveform, 2 log-mel
    clip_samples: int | None = None
    sample_rate: int | None = None
    labels: tuple[str, ...] = ()
    arena_size: int | None = None
    arena_used: int | None = None
    max_chunk_samples: int | None = None
    build_id: str | None = None
    pcm_encodings: int | None = None  # bit n: encoding n decodes on the board
    rx_paths: int | None = None  # ways in for the host's stream, path 0 the UART (PROTOCOL.md 8)
    tensor_io: tuple[int, int, int] | None = None  # n_inputs, n_outputs, max_chunk_bytes: raw tensors (PROTOCOL.md 12)
    layers: int | None = None  # n_tensors: every tensor of the graph is kept and readable (PROTOCOL.md 13)
    speaker_norm: tuple[int, int] | None = None  # mode (1 scalar, 2 bins), n_bins: per-speaker statistics (PROTOCOL.md 14)
    embedding_norm: tuple[int, int, int] | None = None  # dim, classes, prior_clips: embedding statistics (PROTOCOL.md 15)
    extra: tuple[tuple[int, bytes], ...] = field(default=())

    def encode(self) -> bytes:
        """Known tags in tag order (labels in their order), then ``extra``; pairs default a missing half to 0."""
        out = bytearray()
        if self.proto_version is not None:
            out += _tlv(Tag.PROTO_VERSION, bytes([self.proto_version]))
        if self.reset_code is not None or self.reset_text is not None:
            out += _tlv(Tag.RESET_REASON, bytes([self.reset_code or 0]) + (self.reset_text or "").encode())
        if self.board is not None:
            out += _tlv(Tag.BOARD, self.board.encode())
        if self.core_clock_hz is not None:
            out += _tlv(Tag.CORE_CLOCK, struct.pack("<I", self.core_clock_hz))
        if self.cycle_counter is not None:
            out += _tlv(Tag.CYCLE_COUNTER, self.cycle_counter.encode())
        if self.model_sha256 is not None:
            if len(self.model_sha256) != 32:
                raise ValueError("model_sha256 must be 32 bytes")
            out += _tlv(Tag.MODEL_SHA256, self.model_sha256)
        if self.input is not None:
            out += _tlv(Tag.INPUT, self.input.encode())
        if self.output is not None:
            out += _tlv(Tag.OUTPUT, self.output.encode())
        if self.frontend_kind is not None or self.clip_samples is not None or self.sample_rate is not None:
            fe = struct.pack("<BII", self.frontend_kind or 0, self.clip_samples or 0, self.sample_rate or 0)
            out += _tlv(Tag.FRONTEND, fe)
        for label in self.labels:
            out += _tlv(Tag.LABEL, label.encode())
        if self.arena_size is not None or self.arena_used is not None:
            out += _tlv(Tag.ARENA, struct.pack("<II", self.arena_size or 0, self.arena_used or 0))
        if self.max_chunk_samples is not None:
            out += _tlv(Tag.MAX_CHUNK_SAMPLES, struct.pack("<H", self.max_chunk_samples))
        if self.build_id is not None:
            out += _tlv(Tag.BUILD_ID, self.build_id.encode())
        if self.pcm_encodings is not None:
            out += _tlv(Tag.PCM_ENCODINGS, bytes([self.pcm_encodings]))
        if self.rx_paths is not None:
            out += _tlv(Tag.RX_PATHS, bytes([self.rx_paths]))
        if self.tensor_io is not None:
            out += _tlv(Tag.TENSOR_IO, struct.pack("<BBH", *self.tensor_io))
        if self.layers is not None:
            out += _tlv(Tag.LAYERS, struct.pack("<H", self.layers))
        if self.speaker_norm is not None:
            out += _tlv(Tag.SPEAKER_NORM, struct.pack("<BH", *self.speaker_norm))
        if self.embedding_norm is not None:
            out += _tlv(Tag.EMBEDDING_NORM, struct.pack("<HBB", *self.embedding_norm))
        for tag, value in self.extra:
            out += _tlv(tag, value)
        if len(out) > MAX_PAYLOAD:
            raise ValueError(f"INFO of {len(out)} bytes exceeds {MAX_PAYLOAD}")
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes):
        """Unknown tags go to ``extra``; a known value may be longer than v1's fields (the rest is ignored)."""
        minimum = {
            Tag.PROTO_VERSION: 1,
            Tag.RESET_REASON: 1,
            Tag.CORE_CLOCK: 4,
            Tag.MODEL_SHA256: 32,
            Tag.FRONTEND: 9,
            Tag.ARENA: 8,
            Tag.MAX_CHUNK_SAMPLES: 2,
            Tag.PCM_ENCODINGS: 1,
            Tag.RX_PATHS: 1,
            Tag.TENSOR_IO: 4,
            Tag.LAYERS: 2,
            Tag.SPEAKER_NORM: 3,
            Tag.EMBEDDING_NORM: 4,
        }
        f: dict = {}
        labels: list[str] = []
        extra: list[tuple[int, bytes]] = []
        pos = 0
        while pos < len(payload):
            _need(
                pos + 2 <= len(payload) and pos + 2 + payload[pos + 1] <= len(payload), f"TLV at byte {pos} runs past the payload"
            )
            tag, n = payload[pos], payload[pos + 1]
            v = bytes(payload[pos + 2 : pos + 2 + n])
            pos += 2 + n
            _need(n >= minimum.get(tag, 0), f"TLV 0x{tag:02x} value of {n} bytes is too short")
            if tag == Tag.PROTO_VERSION:
                f["proto_version"] = v[0]
            elif tag == Tag.RESET_REASON:
                f["reset_code"], f["reset_text"] = v[0], _text(v[1:])
            elif tag == Tag.BOARD:
                f["board"] = _text(v)
            elif tag == Tag.CORE_CLOCK:
                (f["core_clock_hz"],) = struct.unpack_from("<I", v)
            elif tag == Tag.CYCLE_COUNTER:
                f["cycle_counter"] = _text(v)
            elif tag == Tag.MODEL_SHA256:
                f["model_sha256"] = v[:32]
            elif tag == Tag.INPUT:
                f["input"] = TensorSpec.decode(v)
            elif tag == Tag.OUTPUT:
                f["output"] = TensorSpec.decode(v)
            elif tag == Tag.FRONTEND:
                f["frontend_kind"], f["clip_samples"], f["sample_rate"] = struct.unpack_from("<BII", v)
            elif tag == Tag.LABEL:
                labels.append(_text(v))
            elif tag == Tag.ARENA:
                f["arena_size"], f["arena_used"] = struct.unpack_from("<II", v)
            elif tag == Tag.MAX_CHUNK_SAMPLES:
                (f["max_chunk_samples"],) = struct.unpack_from("<H", v)
            elif tag == Tag.BUILD_ID:
                f["build_id"] = _text(v)
            elif tag == Tag.PCM_ENCODINGS:
                f["pcm_encodings"] = v[0]
            elif tag == Tag.RX_PATHS:
                f["rx_paths"] = v[0]
            elif tag == Tag.TENSOR_IO:
                f["tensor_io"] = struct.unpack_from("<BBH", v)
            elif tag == Tag.LAYERS:
                (f["layers"],) = struct.unpack_from("<H", v)
            elif tag == Tag.SPEAKER_NORM:
                f["speaker_norm"] = struct.unpack_from("<BH", v)
            elif tag == Tag.EMBEDDING_NORM:
                f["embedding_norm"] = struct.unpack_from("<HBB", v)
            else:
                extra.append((tag, v))
        return cls(**f, labels=tuple(labels), extra=tuple(extra))


@dataclass(frozen=True)
class Boot(Info):
    """Sent unsolicited at start-up with INFO's payload: the host learns the board has reset."""

    TYPE: ClassVar[MsgType] = MsgType.BOOT


Message = (
    Hello
    | Start
    | Chunk
    | Profile
    | Reset
    | RxPath
    | Boot
    | Info
    | Next
    | Result
    | ProfileData
    | RxPathSet
    | Error
    | TensorStart
    | TensorChunk
    | Invoke
    | TensorRead
    | TensorNext
    | Invoked
    | TensorData
    | LayerRead
    | LayerData
    | Norm
    | NormState
    | Embed
    | EmbedState
)
_ALL = (Hello, Start, Chunk, Profile, Reset, RxPath, Boot, Info, Next, Result, ProfileData, RxPathSet, Error)
_TENSOR_MESSAGES = (TensorStart, TensorChunk, Invoke, TensorRead, TensorNext, Invoked, TensorData, LayerRead, LayerData)
MESSAGES: dict[int, type] = {cls.TYPE: cls for cls in (*_ALL, *_TENSOR_MESSAGES, Norm, NormState, Embed, EmbedState)}


def decode_message(frame: Frame) -> Message:
    """The message a frame carries; PayloadError (UNKNOWN_TYPE or BAD_LENGTH) when it carries none."""
    cls = MESSAGES.get(frame.type)
    if cls is None:
        raise PayloadError(ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{frame.type:02x}")
    return cls.decode(frame.payload)


def encode_message(msg: Message, seq: int) -> bytes:
    return encode_frame(msg.TYPE, seq, msg.encode())


class CommandSequencer:
    """Numbers host commands, one seq each, so that a retry can resend the very same frame.

    The board answers a repeated (type, seq, clip_id, offset) by re-sending its last reply without
    acting twice, so after a timeout the host sends ``retry()``, never a new ``command()``.
    """

    def __init__(self, first_seq: int = 1) -> None:
        self._next = first_seq & 0xFF
        self.last_seq: int | None = None
        self._last_frame: bytes | None = None

    def command(self, msg: Message) -> bytes:
        seq = self._next
        self._next = (seq + 1) & 0xFF
        self.last_seq, self._last_frame = seq, encode_message(msg, seq)
        return self._last_frame

    def retry(self) -> bytes:
        if self._last_frame is None:
            raise RuntimeError("no command to retry")
        return self._last_frame

    def is_reply(self, frame: Frame) -> bool:
        """A board frame answering the outstanding command (BOOT, seq 0, never is)."""
        return frame.type != MsgType.BOOT and frame.seq == self.last_seq
