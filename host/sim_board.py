"""A simulated board: the serial protocol over a real pseudo-terminal, answered by host code.

For tests and tools that must run without TFLM sources (no firmware build, no QEMU). It mirrors
``firmware/app/ser_app.c`` rule for rule but shares the code that matters instead of copying it:
frames and messages come from ``host/protocol.py``, chunks are decoded by ``host/pcm_codec.py``,
the audio streams chunk by chunk through the board's own C front end (``train/frontend_c.py``)
into the int8 model input, and the model runs in TFLM's interpreter (``tflite-micro``), so its
RESULT is bit for bit the board's. What it cannot mirror it says in INFO: the cycle fields are
host nanoseconds, and PROFILE_DATA lists the layers in order with 0 ticks (the Python TFLM
runtime has no per-layer profiler).

    with SimulatedBoard(tflite) as board, BoardLink(board.url) as link: ...
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

from convert.emit import board_arena, board_labels, has_clip_path
from convert.interpreters import TflmRunner, quiet_fds, tflm_arena_bytes
from convert.ops import check_ops
from convert.tflite_file import TFLITE_TYPE_CODES, graph_io, model_frontend, model_head, operator_names, tensor_count
from convert.tflite_file import TensorSpec as ModelTensor
from host import pcm_codec
from host.protocol import (
    CHUNK_MAX_RAW_SAMPLES,
    LAYER_DATA_MAX_DATA,
    MAX_PAYLOAD,
    PROTO_VERSION,
    TENSOR_CHUNK_MAX_DATA,
    Boot,
    Chunk,
    Embed,
    EmbedState,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Info,
    Invoke,
    Invoked,
    LayerData,
    LayerRead,
    MsgType,
    Next,
    Norm,
    Parser,
    PayloadError,
    Profile,
    ProfileData,
    Reset,
    Result,
    Start,
    TensorChunk,
    TensorData,
    TensorNext,
    TensorRead,
    TensorSpec,
    TensorStart,
    encode_frame,
)
from host.reference import from_wire, to_wire
from train.embedding_c import EmbeddingStream
from train.embedding_c import EmbedState as EmbedSums
from train.frontend_c import KINDS, SPEAKER_NORM_MODES, NativeFrontEnd, SpeakerStream

INTER_BYTE_TIMEOUT = 0.2  # seconds, as ser_app.c
MAX_CHUNK_SAMPLES = CHUNK_MAX_RAW_SAMPLES  # as ser_app.c
CORE_CLOCK_HZ = 1_000_000_000  # the counter is host nanoseconds
CYCLE_COUNTER = "simulated board: host nanoseconds (perf_counter_ns) of the front end and of TFLM Invoke, not cycles"
# ser_port.h SER_RESET_* with ser_reset_reason_name's texts
RESET_POWER_ON, RESET_PIN, RESET_SOFTWARE = (1, "power-on"), (2, "reset pin"), (3, "software reset")


@dataclass
class _Clip:
    """The clip being received (ser_app.c ``clip``); the front end holds the model input, not the clip."""

    clip_id: int
    expected_offset: int
    frontend: NativeFrontEnd | None  # None: a model without front end, the samples are the input
    raw_input: np.ndarray | None
    fe_ns: int = 0


@dataclass
class _TensorRequest:
    """The raw tensor request being received (ser_app.c ``treq``)."""

    req_id: int
    index: int = 0
    expected_offset: int = 0
    active: bool = False
    invoked: bool = False
    filled: set[int] = field(default_factory=set)
    outputs: list[bytes] = field(default_factory=list)


@dataclass
class _Last:
    """The last command processed and the frame that answered it (ser_app.c ``last``)."""

    type: int
    seq: int
    clip_id: int
    offset: int
    reply: bytes = b""


class SimulatedBoard:
    """One board on a pty; ``url`` is the slave's path, for pyserial or BoardLink."""

    def __init__(self, tflite: bytes, board_name: str = "simulated", layers: bool = False) -> None:
        """``layers``: keep every tensor and answer LAYER_READ, as a ``ser-emit --layers`` firmware does."""
        check_ops(tflite)  # a model the firmware could not carry is refused here too
        self.tflite = bytes(tflite)
        self.board_name = board_name
        self.layers = layers
        self._n_tensors = tensor_count(tflite)
        self.edge_in, self.edge_out = graph_io(tflite)
        if not self.edge_in or not self.edge_out:
            raise ValueError(f"model has {len(self.edge_in)} inputs and {len(self.edge_out)} outputs: at least one of each")
        in_spec, out_spec = self.edge_in[0], self.edge_out[0]  # INFO's INPUT and OUTPUT, the clip path's tensors
        head = model_head(tflite)
        scores = head.classes if head is not None else None
        self.clip_path = has_clip_path(self.edge_in, self.edge_out, scores)  # as ser-emit decides it for the firmware
        self.frontend = model_frontend(tflite)
        if self.frontend is not None and tuple(in_spec.shape[1:]) != self.frontend.input_shape:
            raise ValueError(f"model input {in_spec.shape} does not match its front end's {self.frontend.input_shape}")
        self.in_spec, self.out_spec = in_spec, out_spec
        # per-speaker statistics (PROTOCOL.md 14), in the board's own C arithmetic; lost at every boot, as on the board
        self._norm = SpeakerStream(self.frontend) if self.frontend and self.frontend.speaker_norm != "off" else None
        # the classifier after a model that ends at its embedding (PROTOCOL.md 15), with the voice's embedding sums
        self._embed = EmbeddingStream(head) if head is not None and self.clip_path else None
        self.input_elements = int(np.prod(in_spec.shape))
        self.output_elements = int(np.prod(out_spec.shape))
        self.labels = tuple(board_labels(tflite, self.edge_in, self.edge_out, scores=scores))  # as ser-emit gives the firmware
        self.clip_samples = self.frontend.clip_samples if self.frontend else self.input_elements
        self.profile_tags = operator_names(tflite)
        self._inputs = [bytearray(t.nbytes) for t in self.edge_in]  # the raw path's input tensors
        self._treq = _TensorRequest(0)
        self.invocations = 0  # Invokes run since start(): a test can see that a retry was not run twice
        self._tflm: TflmRunner | None = None  # the model, for clips and raw tensors alike
        self._model_error = ""
        self._arena = (0, 0)
        self._master = self._slave = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one of: the serving thread handling bytes, or a pin reset
        # board state, set again by every boot
        self._parser = Parser()
        self._clip: _Clip | None = None
        self._last: _Last | None = None
        self._reason = RESET_POWER_ON
        self._boots = 0
        self._invoked = False
        self.url = ""

    # ---- life cycle ----

    def start(self) -> SimulatedBoard:
        """Load the model as the board's ser_model_init would, open the pty, send BOOT, serve."""
        try:
            measured = tflm_arena_bytes(self.tflite, preserve_all=self.layers)
            self._arena = (board_arena(self.tflite, measured), measured)
            with quiet_fds():
                self._tflm = TflmRunner(self.tflite, arena_size=self._arena[0], preserve_all=self.layers)
        except (RuntimeError, ValueError) as exc:  # the board boots anyway and answers MODEL_FAILED
            self._model_error = f"model does not load: {exc}"
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation: a UART
        os.set_blocking(self._master, False)
        self.url = os.ttyname(self._slave)
        self._stop.clear()
        with self._lock:
            self._boot(RESET_POWER_ON)
        self._thread = threading.Thread(target=self._serve, name=f"sim-board {self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def reset(self) -> None:
        """Press the reset pin: the clip and the remembered reply are lost, BOOT says "reset pin"."""
        with self._lock:
            self._boot(RESET_PIN)

    def __enter__(self) -> SimulatedBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the application loop (ser_app.c main) ----

    def _boot(self, reason: tuple[int, str]) -> None:
        self._parser = Parser()
        self._clip = None
        self._last = None
        self._treq = _TensorRequest(0)
        self._reason = reason
        self._boots += 1
        self._invoked = False  # PROFILE_DATA describes the last Invoke since boot
        if self._norm is not None:
            self._norm.total.clear()
        if self._embed is not None:
            self._embed.reset()
        self._send(MsgType.BOOT, 0, self._info(Boot).encode())

    def _serve(self) -> None:
        last_byte = time.monotonic()
        while not self._stop.is_set():
            readable, _, _ = select.select([self._master], [], [], 0.02)
            with self._lock:
                if readable:
                    try:
                        data = os.read(self._master, 4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return  # pty closed
                    last_byte = time.monotonic()
                    boots = self._boots
                    for event in self._parser.feed(data):
                        if self._boots != boots:
                            break  # the board restarted: bytes behind the RESET are gone with its UART buffer
                        self._on_event(event)
                elif self._parser.in_frame and time.monotonic() - last_byte > INTER_BYTE_TIMEOUT:
                    msg_type, seq = self._parser.partial_header
                    self._parser.reset()
                    self._error(ErrorCode.TRUNCATED, msg_type, seq, "frame incomplete at the inter-byte timeout")

    def _on_event(self, event) -> None:
        if isinstance(event, Frame):
            self._handle_frame(event)
        elif event.kind == ErrorCode.BAD_CRC:
            self._error(ErrorCode.BAD_CRC, event.type, event.seq, "CRC mismatch")
        else:
            self._error(ErrorCode.TOO_LONG, event.type, event.seq, "payload longer than 2048 bytes")

    def _handle_frame(self, f: Frame) -> None:
        handlers = {
            MsgType.HELLO: (Hello, lambda _: self._send(MsgType.INFO, f.seq, self._info().encode())),
            MsgType.START: (Start, lambda m: self._handle_start(f, m)),
            MsgType.CHUNK: (Chunk, lambda m: self._handle_chunk(f, m)),
            MsgType.PROFILE: (Profile, lambda _: self._handle_profile(f)),
            MsgType.RESET: (Reset, lambda _: self._boot(RESET_SOFTWARE)),
            MsgType.TENSOR_START: (TensorStart, lambda m: self._handle_tensor_start(f, m)),
            MsgType.TENSOR_CHUNK: (TensorChunk, lambda m: self._handle_tensor_chunk(f, m)),
            MsgType.INVOKE: (Invoke, lambda m: self._handle_invoke(f, m)),
            MsgType.TENSOR_READ: (TensorRead, lambda m: self._handle_tensor_read(f, m)),
            MsgType.LAYER_READ: (LayerRead, lambda m: self._handle_layer_read(f, m)),
            MsgType.NORM: (Norm, lambda m: self._handle_norm(f, m)),
            MsgType.EMBED: (Embed, lambda m: self._handle_embed(f, m)),
        }
        if f.type not in handlers:
            self._error(ErrorCode.UNKNOWN_TYPE, f.type, f.seq, "unknown message type")
            return
        cls, handle = handlers[f.type]
        try:
            message = cls.decode(f.payload)
        except PayloadError as exc:
            self._error(exc.code, f.type, f.seq, str(exc))
            return
        handle(message)

    # ---- commands ----

    def _is_retry(self, f: Frame, clip_id: int, offset: int) -> bool:
        last = self._last
        return last is not None and (last.type, last.seq, last.clip_id, last.offset) == (f.type, f.seq, clip_id, offset)

    def _handle_start(self, f: Frame, m: Start) -> None:
        if self._is_retry(f, m.clip_id, 0):
            self._write(self._last.reply)
            return
        if self._tflm is None:
            self._error(ErrorCode.MODEL_FAILED, f.type, f.seq, self._model_error)
            return
        if not self.clip_path:
            self._error(ErrorCode.BAD_CLIP, f.type, f.seq, "this model takes raw tensors only (PROTOCOL.md 12): use ser-validate")
            return
        if m.n_samples != self.clip_samples:
            self._error(ErrorCode.BAD_CLIP, f.type, f.seq, "clip must have exactly the front end's clip_samples (see INFO)")
            return
        fe = self.frontend
        self._treq = _TensorRequest(0)  # a clip writes the input: a raw tensor request ends here
        self._clip = _Clip(
            m.clip_id,
            0,
            NativeFrontEnd(fe, self.in_spec.scale, self.in_spec.zero_point) if fe else None,
            None if fe else np.zeros(self.input_elements, np.int8),
        )
        if self._norm is not None:  # the statistics of the clips before this one (the prior before any)
            self._clip.frontend.normalise((*self._norm.current(), self._norm.clip))
        self._last = _Last(f.type, f.seq, m.clip_id, 0)
        self._send_next(f)

    def _handle_chunk(self, f: Frame, m: Chunk) -> None:
        if self._is_retry(f, m.clip_id, m.offset):
            self._write(self._last.reply)
            return
        clip = self._clip
        if clip is None or m.clip_id != clip.clip_id or m.offset != clip.expected_offset:
            why = "chunk is not the one asked for by NEXT" if clip else "no clip started"
            self._error(ErrorCode.OUT_OF_ORDER, f.type, f.seq, why)
            return
        if m.n_samples > MAX_CHUNK_SAMPLES or m.n_samples > self.clip_samples - clip.expected_offset:
            self._error(ErrorCode.BAD_LENGTH, f.type, f.seq, "chunk longer than NEXT's max_samples")
            return
        try:
            pcm = pcm_codec.decode_chunk(m.encoding, m.data, m.n_samples)
        except ValueError:
            self._error(ErrorCode.BAD_ENCODING, f.type, f.seq, "PCM chunk does not decode")
            return
        start = time.perf_counter_ns()
        if clip.frontend is not None:
            try:
                clip.frontend.push(pcm)
            except ValueError:
                self._error(ErrorCode.OUT_OF_ORDER, f.type, f.seq, "front end refused the chunk")
                return
        else:
            clip.raw_input[m.offset : m.offset + m.n_samples] = np.clip(pcm, -128, 127)
        clip.fe_ns += time.perf_counter_ns() - start
        clip.expected_offset += m.n_samples
        self._last = _Last(f.type, f.seq, m.clip_id, m.offset)
        if clip.expected_offset == self.clip_samples:
            self._finish_clip(f, clip)
        else:
            self._send_next(f)

    def _finish_clip(self, f: Frame, clip: _Clip) -> None:
        self._clip = None
        if self._norm is not None:  # the whole clip is heard: it joins the voice's statistics
            self._norm.total.commit(self._norm.clip)
        model_input = clip.frontend.out if clip.frontend is not None else clip.raw_input
        start = time.perf_counter_ns()
        try:
            scores = self._tflm(model_input)
        except (RuntimeError, ValueError) as exc:
            self._error(ErrorCode.MODEL_FAILED, f.type, f.seq, f"Invoke failed: {exc}", remember=True)
            return
        best = int(np.argmax(scores))  # the first of equal largest scores, as the board
        if self._embed is not None:  # the classifier reads the embedding, which then joins the voice's sums
            scores = self._embed.run(scores)
            best = int(np.argmax(self._embed.logits))
        invoke_ns = time.perf_counter_ns() - start
        self.invocations += 1
        self._invoked = True
        result = Result(
            clip.clip_id,
            best,
            tuple(int(s) for s in scores),
            clip.fe_ns & 0xFFFFFFFF,
            invoke_ns & 0xFFFFFFFF,
        )
        self._send(MsgType.RESULT, f.seq, result.encode(), remember=True)

    def _send_next(self, f: Frame) -> None:
        clip = self._clip
        left = self.clip_samples - clip.expected_offset
        self._send(MsgType.NEXT, f.seq, Next(clip.clip_id, clip.expected_offset, min(left, MAX_CHUNK_SAMPLES)).encode(), True)

    # ---- raw tensors (PROTOCOL.md 12, ser_app.c handle_tensor_*) ----

    def _send_tensor_next(self, f: Frame, total: int) -> None:
        r = self._treq
        left = total - r.expected_offset
        reply = TensorNext(r.req_id, r.index, r.expected_offset, min(left, TENSOR_CHUNK_MAX_DATA))
        self._send(MsgType.TENSOR_NEXT, f.seq, reply.encode(), True)

    def _handle_tensor_start(self, f: Frame, m: TensorStart) -> None:
        if self._is_retry(f, m.req_id, 0):
            self._write(self._last.reply)
            return
        if self._tflm is None:
            self._error(ErrorCode.MODEL_FAILED, f.type, f.seq, self._model_error)
            return
        if m.index >= len(self.edge_in):
            self._error(ErrorCode.BAD_TENSOR, f.type, f.seq, "no input tensor of that index (see INFO TENSOR_IO)")
            return
        if m.n_bytes != len(self._inputs[m.index]):
            self._error(ErrorCode.BAD_TENSOR, f.type, f.seq, "n_bytes is not the input tensor's size (see INFO INPUT)")
            return
        self._clip = None
        filled = self._treq.filled if m.req_id == self._treq.req_id else set()
        filled.discard(m.index)
        self._treq = _TensorRequest(m.req_id, m.index, 0, True, False, filled)
        self._last = _Last(f.type, f.seq, m.req_id, 0)
        self._send_tensor_next(f, m.n_bytes)

    def _handle_tensor_chunk(self, f: Frame, m: TensorChunk) -> None:
        if self._is_retry(f, m.req_id, m.offset):
            self._write(self._last.reply)
            return
        r = self._treq
        if not r.active or (m.req_id, m.index, m.offset) != (r.req_id, r.index, r.expected_offset):
            why = "chunk is not the one TENSOR_NEXT asked for" if r.active else "no tensor started"
            self._error(ErrorCode.OUT_OF_ORDER, f.type, f.seq, why)
            return
        tensor = self._inputs[r.index]
        if len(m.data) > len(tensor) - r.expected_offset:
            self._error(ErrorCode.BAD_LENGTH, f.type, f.seq, "chunk longer than TENSOR_NEXT's max_bytes")
            return
        tensor[m.offset : m.offset + len(m.data)] = m.data
        r.expected_offset += len(m.data)
        if r.expected_offset == len(tensor):
            r.active = False
            r.filled.add(r.index)
        self._last = _Last(f.type, f.seq, m.req_id, m.offset)
        self._send_tensor_next(f, len(tensor))

    def _handle_invoke(self, f: Frame, m: Invoke) -> None:
        if self._is_retry(f, m.req_id, 0):
            self._write(self._last.reply)
            return
        if self._tflm is None:
            self._error(ErrorCode.MODEL_FAILED, f.type, f.seq, self._model_error)
            return
        r = self._treq
        if m.req_id != r.req_id or r.filled != set(range(len(self.edge_in))):
            self._error(ErrorCode.OUT_OF_ORDER, f.type, f.seq, "send every input tensor of this request before INVOKE")
            return
        self._last = _Last(f.type, f.seq, m.req_id, 0)
        start = time.perf_counter_ns()
        try:
            outputs = self._tflm.run([t.from_bytes(bytes(b)) for t, b in zip(self.edge_in, self._inputs, strict=True)])
        except (RuntimeError, ValueError) as exc:
            self._error(ErrorCode.MODEL_FAILED, f.type, f.seq, f"Invoke failed: {exc}", remember=True)
            return
        invoke_ns = time.perf_counter_ns() - start
        self.invocations += 1
        self._invoked = True
        r.invoked = True
        r.outputs = [spec.to_bytes(out) for spec, out in zip(self.edge_out, outputs, strict=True)]
        reply = Invoked(m.req_id, invoke_ns & 0xFFFFFFFF, tuple(len(b) for b in r.outputs))
        self._send(MsgType.INVOKED, f.seq, reply.encode(), remember=True)

    def _handle_tensor_read(self, f: Frame, m: TensorRead) -> None:
        r = self._treq
        if not r.invoked or m.req_id != r.req_id:
            self._error(ErrorCode.OUT_OF_ORDER, f.type, f.seq, "no INVOKE of this request to read from")
            return
        if m.index >= len(r.outputs):
            self._error(ErrorCode.BAD_TENSOR, f.type, f.seq, "no output tensor of that index (see INFO TENSOR_IO)")
            return
        data = r.outputs[m.index]
        if m.max_bytes == 0 or m.offset >= len(data):
            self._error(ErrorCode.BAD_LENGTH, f.type, f.seq, "TENSOR_READ asks for no byte of the tensor")
            return
        part = data[m.offset : m.offset + min(m.max_bytes, TENSOR_CHUNK_MAX_DATA)]
        self._send(MsgType.TENSOR_DATA, f.seq, TensorData(m.req_id, m.index, m.offset, part).encode())

    def _handle_layer_read(self, f: Frame, m: LayerRead) -> None:
        r = self._treq
        if not r.invoked or m.req_id != r.req_id:
            self._error(ErrorCode.OUT_OF_ORDER, f.type, f.seq, "no INVOKE of this request to read from")
            return
        if not self.layers or self._tflm is None:
            self._error(
                ErrorCode.BAD_TENSOR, f.type, f.seq, "this firmware does not keep every tensor: build it with ser-emit --layers"
            )
            return
        data = b""
        if m.tensor < self._n_tensors:
            values = self._tflm.tensor(m.tensor)
            data = values.astype(values.dtype.newbyteorder("<")).tobytes()  # as TFLM holds it
        if not data:
            self._error(ErrorCode.BAD_TENSOR, f.type, f.seq, "no tensor with data at that index (see INFO LAYERS)")
            return
        if m.max_bytes == 0 or m.offset >= len(data):
            self._error(ErrorCode.BAD_LENGTH, f.type, f.seq, "LAYER_READ asks for no byte of the tensor")
            return
        part = data[m.offset : m.offset + min(m.max_bytes, LAYER_DATA_MAX_DATA)]
        self._send(MsgType.LAYER_DATA, f.seq, LayerData(m.req_id, m.tensor, m.offset, part).encode())

    def _handle_norm(self, f: Frame, m: Norm) -> None:
        if self._norm is None:
            why = "this firmware has no speaker normalisation (INFO has no SPEAKER_NORM)"
            self._error(ErrorCode.BAD_NORM, f.type, f.seq, why)
            return
        total = self._norm.total
        if m.op == Norm.LOAD:  # refused as ser_app.c refuses it, with its words
            state = from_wire(m.state)
            if state.mode != total.mode or len(state.sum) != len(total.sum):
                why = "NORM load of another mode or bin count (see INFO SPEAKER_NORM)"
                self._error(ErrorCode.BAD_NORM, f.type, f.seq, why)
                return
            try:
                total.load(state)
            except ValueError:
                self._error(ErrorCode.BAD_NORM, f.type, f.seq, "NORM load of sums no voice can have")
                return
        if m.op != Norm.READ:
            self._clip = None  # RESET and LOAD end a clip in progress
        if m.op == Norm.RESET:
            total.clear()
        self._send(MsgType.NORM_STATE, f.seq, to_wire(total.state()).encode())

    def _handle_embed(self, f: Frame, m: Embed) -> None:
        if self._embed is None:
            why = "this firmware has no embedding statistics (INFO has no EMBEDDING_NORM)"
            self._error(ErrorCode.BAD_NORM, f.type, f.seq, why)
            return
        if m.op == Embed.LOAD:  # refused as ser_app.c refuses it, with its words
            if len(m.state.sum) != self._embed.head.dim:
                why = "EMBED load of another embedding size (see INFO EMBEDDING_NORM)"
                self._error(ErrorCode.BAD_NORM, f.type, f.seq, why)
                return
            try:
                self._embed.load(EmbedSums(m.state.clips, m.state.sum, m.state.squares))
            except ValueError:
                self._error(ErrorCode.BAD_NORM, f.type, f.seq, "EMBED load of sums no voice can have")
                return
        if m.op != Embed.READ:
            self._clip = None  # RESET and LOAD end a clip in progress
        if m.op == Embed.RESET:
            self._embed.reset()
        held = self._embed.state()
        self._send(MsgType.EMBED_STATE, f.seq, EmbedState(held.clips, held.sum, held.squares).encode())

    def _handle_profile(self, f: Frame) -> None:
        entries, size = [], 2
        for tag in self.profile_tags if self._invoked else ():
            size += 1 + len(tag.encode()) + 4
            if size > MAX_PAYLOAD:
                break  # the first entries that fit, as the board
            entries.append((tag, 0))
        self._send(MsgType.PROFILE_DATA, f.seq, ProfileData(tuple(entries)).encode())

    # ---- replies ----

    def _info(self, cls: type[Info] = Info) -> Info:
        fe = self.frontend
        version = metadata.version("tflite-micro")
        digest = hashlib.sha256(self.tflite).digest()
        return cls(
            proto_version=PROTO_VERSION,
            reset_code=self._reason[0],
            reset_text=self._reason[1],
            board=self.board_name,
            core_clock_hz=CORE_CLOCK_HZ,
            cycle_counter=CYCLE_COUNTER,
            model_sha256=digest,
            input=self._info_spec(self.in_spec),
            output=self._info_spec(self.out_spec),
            frontend_kind=KINDS[fe.kind] if fe else 0,
            clip_samples=self.clip_samples if self.clip_path else 0,
            sample_rate=fe.sample_rate if fe else 0,
            labels=self.labels,
            arena_size=self._arena[0],
            arena_used=self._arena[1],
            max_chunk_samples=MAX_CHUNK_SAMPLES,
            build_id=f"{self.board_name}-{digest.hex()[:12]} (host/sim_board.py, tflite-micro {version})",
            pcm_encodings=(1 << pcm_codec.RAW) | (1 << pcm_codec.RICE),
            tensor_io=(len(self.edge_in), len(self.edge_out), TENSOR_CHUNK_MAX_DATA) if self._tflm else (0, 0, 0),
            layers=self._n_tensors if self.layers and self._tflm else None,
            speaker_norm=(SPEAKER_NORM_MODES[fe.speaker_norm], len(fe.prior_mean)) if self._norm else None,
            embedding_norm=(e.dim, e.classes, e.prior_clips) if (e := self._embed and self._embed.head) else None,
        )

    @staticmethod
    def _info_spec(spec: ModelTensor) -> TensorSpec:
        return TensorSpec(TFLITE_TYPE_CODES.get(spec.dtype, 0), tuple(spec.shape), spec.scale, spec.zero_point)

    def _error(self, code: int, msg_type: int, seq: int, message: str, remember: bool = False) -> None:
        self._send(MsgType.ERROR, seq, Error(code, msg_type, seq, message).encode(), remember)

    def _send(self, msg_type: int, seq: int, payload: bytes, remember: bool = False) -> None:
        frame = encode_frame(msg_type, seq, payload)
        if remember:
            self._last.reply = frame
        self._write(frame)

    def _write(self, data: bytes) -> None:
        """Blocks while the pty is full, like a UART write (until stop)."""
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                view = view[os.write(self._master, view) :]
            except BlockingIOError:
                select.select([], [self._master], [], 0.05)
