"""Talk to a board over any pyserial URL: handshake, classify a clip, read the per-layer profile.

Every command is numbered; after a timeout or a garbled reply the very same frame is sent again
(the board answers a repeat from its stored reply, never acting twice). ``LinkStats`` counts what
went wrong on the way and ``diagnose`` names the likely cause from those counts; under errors the
chunks get shorter (``ChunkSize``), since a short frame gets through a noisy line. A BOOT frame from the
board means it reset: the current request fails with ``BoardReset`` so the caller can shake hands
again and retry the clip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import serial

from host import pcm_codec
from host.protocol import (
    CHUNK_MAX_DATA,
    Boot,
    Chunk,
    CommandSequencer,
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
    Message,
    Next,
    Norm,
    NormState,
    Parser,
    PayloadError,
    Profile,
    ProfileData,
    Result,
    RxPath,
    RxPathSet,
    Start,
    TensorChunk,
    TensorData,
    TensorNext,
    TensorRead,
    TensorStart,
    decode_message,
)
from host.uart_eth import UartEthPort

DEFAULT_BAUD = 921600
INTER_BYTE_TIMEOUT = 0.1  # seconds a board frame may pause mid-way: it is sent in one go, so a longer pause lost a byte
RETRYABLE = {ErrorCode.BAD_CRC, ErrorCode.TRUNCATED, ErrorCode.TOO_LONG, ErrorCode.BUSY}  # the board did not act
NOISY_ATTEMPTS = 60  # attempts at one command while the board answers, but damaged (the link is noisy, the board alive)
HELLO_NOISY_ATTEMPTS = 400  # INFO is ~370 bytes: at 1 % damaged bytes one in ~40 arrives whole
BACKOFF_FIRST, BACKOFF_MAX = 0.02, 1.0  # seconds before a resend after silence or BUSY, doubling each time
CHUNK_FLOOR = 64  # samples: smaller chunks spend more on framing than they save in resends
CLEAN_TO_GROW = 8  # exchanges right at the first attempt before the chunk size doubles again
# why an attempt got no reply: the board got our frame damaged, or is busy; its reply came damaged; garbage; nothing
_REFUSED, _BUSY, _DAMAGED, _GARBAGE, _SILENT = "refused", "busy", "damaged", "garbage", "silent"


class BoardError(RuntimeError):
    """The board refused a command or stopped answering; the message says which and why."""


class BoardReset(BoardError):
    """The board started again (it sent BOOT) while a request was in flight."""

    def __init__(self, boot: Boot) -> None:
        super().__init__(f"board reset ({boot.reset_text or 'reason unknown'})")
        self.boot = boot


@dataclass
class LinkStats:
    """What one board's link did, over all its connections: the evidence a diagnosis rests on."""

    frames_sent: int = 0  # retries included
    frames_received: int = 0  # with a valid CRC
    bytes_sent: int = 0
    bytes_received: int = 0
    retries: int = 0  # frames sent again
    crc_errors: int = 0  # board frames that arrived damaged: bad CRC, impossible length, or cut short
    resyncs: int = 0  # runs of garbage skipped while hunting for a frame start
    refusals: int = 0  # the board's BAD_CRC/TRUNCATED/TOO_LONG/BUSY: our frame arrived damaged, or too soon
    timeouts: int = 0  # waits in which nothing at all arrived
    foreign: int = 0  # valid frames that are no message of this protocol, or INFO of another version
    resets: int = 0  # BOOT while a command was in flight
    reopens: int = 0  # the port closed and opened again
    norm_loads: int = 0  # per-speaker statistics loaded into the board (first contact, after a reset or a failure)
    smallest_chunk: int = 0  # the lowest chunk size limit (samples) the host fell back to; 0: never reduced

    def since(self, before: LinkStats) -> LinkStats:
        """The counts added after ``before`` (a copy taken earlier): one command's or one clip's share."""
        counts = {f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self) if f.name != "smallest_chunk"}
        return LinkStats(**counts, smallest_chunk=self.smallest_chunk)


def diagnose(counts: LinkStats, first_contact: bool = False) -> str:
    """The likely cause of a failing link, from its counts; ``first_contact``: no valid frame ever came from this board."""
    damaged = counts.crc_errors + counts.refusals
    if counts.foreign:
        return "other firmware: valid frames, but not of this protocol version; flash this project's firmware"
    if first_contact and counts.bytes_received and not damaged:
        return "wrong baud rate: bytes arrive, but never a frame; set the board's baud rate (--baud)"
    if damaged or counts.resyncs:
        return (
            f"noisy or overrun link ({counts.crc_errors} damaged replies, {counts.refusals} commands the board got damaged, "
            f"{counts.resyncs} resyncs): try a lower baud rate, a better or shorter cable, shorter chunks"
        )
    if counts.timeouts and (counts.reopens or counts.resets) and counts.frames_received:
        return f"link cut or board reset ({counts.reopens} reopenings, {counts.resets} resets): the replies in flight were lost"
    if counts.timeouts or not counts.bytes_received:
        return "silent board (not powered, wrong port, not flashed): nothing at all arrived"
    return "clean link: no frame lost or damaged"


def link_summary(link: dict) -> str:
    """One line of a board's link counts (``link_report`` of host/session.py) and the likely cause of its errors."""
    return (
        f"{link['frames_sent']} frames sent, {link['crc_errors']} CRC/framing errors, {link['resyncs']} resyncs, "
        f"{link['refusals']} frames the board got damaged, {link['timeouts']} timeouts, {link['resets']} board resets, "
        f"{link['reopens']} reopenings, smallest chunk {link['smallest_chunk'] or 'never reduced'}; {link['diagnosis']}"
    )


@dataclass
class ChunkSize:
    """Samples the host puts in one CHUNK (NEXT may ask for fewer). Halved, down to CHUNK_FLOOR, when the board
    gets a chunk damaged twice running (once is bad luck; twice says the chunks are too long for this line),
    doubled after CLEAN_TO_GROW exchanges that went through at once. Damaged replies do not count: NEXT is
    18 bytes whatever the chunk's size."""

    limit: int = 0xFFFF  # no limit but the board's
    clean: int = 0
    strikes: int = 0

    def refused(self, sent: int, stats: LinkStats) -> bool:
        """The board got a chunk of ``sent`` samples damaged; True when the limit has fallen below ``sent``."""
        self.clean, self.strikes = 0, self.strikes + 1
        if self.strikes < 2:
            return False
        self.strikes = 0
        self.limit = max(CHUNK_FLOOR, min(self.limit, sent) // 2)
        stats.smallest_chunk = min(stats.smallest_chunk or self.limit, self.limit)
        return self.limit < sent

    def succeeded(self, first_attempt: bool) -> None:
        self.strikes = 0
        self.clean = self.clean + 1 if first_attempt else 0
        if self.clean >= CLEAN_TO_GROW and self.limit < 0xFFFF:
            self.limit, self.clean = min(0xFFFF, 2 * self.limit), 0


def backoff(quiet_attempts: int) -> float:
    """Seconds to wait before resending a command that met silence or BUSY ``quiet_attempts`` times running:
    a board that is busy or restarting gets time. Damaged bytes show the board keeping up, and noise does
    not wait, so those are resent at once."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (quiet_attempts - 1)) if quiet_attempts else 0.0


class BoardLink:
    def __init__(
        self, url: str, baud: int = DEFAULT_BAUD, timeout: float = 3.0, retries: int = 5, open_timeout: float = 15.0
    ) -> None:
        self.url, self.timeout, self.retries = url, timeout, retries
        self.port = open_port(url, baud, open_timeout)
        self.parser = Parser()
        self.sequencer = CommandSequencer()
        self.stats = LinkStats()
        self.chunk_size = ChunkSize()
        self.info: Info | None = None
        self.boots: list[Boot] = []
        self._pending: list = []  # parsed but not yet handled: a BOOT right behind a reply must not be lost

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> BoardLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- one request/reply exchange, with retries ----

    def request(
        self,
        msg,
        expect: tuple[type, ...],
        timeout: float | None = None,
        boot_ok: bool = False,
        noisy_attempts: int = NOISY_ATTEMPTS,
        on_failure: Callable[[bool], Message | None] | None = None,
    ):
        """Send ``msg`` and return the board's reply of a type in ``expect``.

        A failed attempt is sent again (same seq, after ``backoff``); the host gives up after ``retries`` + 1
        attempts if the line stays silent or carries only garbage, after ``noisy_attempts`` if the board
        answers, but damaged (then a give-up would throw away a working board).
        ``boot_ok``: a BOOT frame meanwhile is expected (a board just started), not a reset to report.
        ``on_failure(untouched)``, called when the board says our frame arrived damaged, may return a message to
        send instead, under a new seq; ``untouched``: the board refused every copy so far, so it has not acted.
        """
        before = replace(self.stats)
        frame = self.sequencer.command(msg)
        untouched, noisy, attempt, quiet = True, False, 0, 0
        while True:
            self._send(frame)
            reply, why = self._await_reply(expect, timeout or self.timeout, boot_ok)
            if reply is not None:
                self.chunk_size.succeeded(attempt == 0)
                return reply
            attempt += 1
            untouched = untouched and why in (_REFUSED, _BUSY)
            noisy = noisy or why in (_REFUSED, _BUSY, _DAMAGED)
            quiet = quiet + 1 if why in (_BUSY, _SILENT) else 0
            if attempt >= (noisy_attempts if noisy else self.retries + 1):
                break
            self.stats.retries += 1
            time.sleep(backoff(quiet))
            self.parser.reset()  # a reply garbled into a long bogus frame must not swallow the retry's reply
            instead = on_failure(untouched) if on_failure and why == _REFUSED else None
            if instead is None:
                frame = self.sequencer.retry()
            else:
                msg, frame, untouched = instead, self.sequencer.command(instead), True
        window = self.stats.since(before)
        raise BoardError(
            f"no valid answer to {type(msg).__name__} after {attempt} attempts on {self.url}: "
            f"likely {diagnose(window, first_contact=self.stats.frames_received == 0)}"
        )

    def _send(self, frame: bytes) -> None:
        self.port.write(frame)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)

    def _await_reply(self, expect: tuple[type, ...], timeout: float, boot_ok: bool):
        """The reply and None, or None and why there is none. A damaged frame, or a frame or garbage followed by
        INTER_BYTE_TIMEOUT of quiet, ends the attempt at once: the board has answered (badly), so it is not in
        the middle of our frame, and a resend now beats waiting out the timeout."""
        deadline = time.monotonic() + timeout
        last_byte = time.monotonic()
        resyncs, heard = self.stats.resyncs, False
        while True:
            while self._pending:
                item = self._pending.pop(0)
                if not isinstance(item, Frame):
                    self.stats.crc_errors += 1
                    return None, _DAMAGED  # a whole frame, damaged: the board has answered, badly
                self.stats.frames_received += 1
                try:
                    message = decode_message(item)
                except PayloadError:
                    self.stats.foreign += 1
                    continue
                if isinstance(message, Boot):
                    self.boots.append(message)
                    self.info = message
                    self._use_path(0)  # a board that restarts reads its UART
                    if boot_ok:
                        continue
                    self.stats.resets += 1
                    raise BoardReset(message)
                if isinstance(message, Error) and message.code in RETRYABLE:
                    self.stats.refusals += 1  # whatever its seq (damaged in our frame, perhaps): resend
                    if not self.sequencer.is_reply(item):
                        return None, _DAMAGED  # not known to be about this command
                    return None, _BUSY if message.code == ErrorCode.BUSY else _REFUSED
                if not self.sequencer.is_reply(item):
                    continue  # a late answer to an earlier attempt
                if isinstance(message, Error):
                    raise BoardError(f"board error {ErrorCode(message.code).name}: {message.message}")
                if isinstance(message, expect):
                    return message, None
            now = time.monotonic()
            quiet = now - last_byte > INTER_BYTE_TIMEOUT
            if quiet and self.parser.in_frame:
                self.parser.reset()  # the frame lost bytes on the way
                self.stats.crc_errors += 1
                return None, _DAMAGED
            if quiet and self.stats.resyncs > resyncs:
                return None, _GARBAGE
            if now > deadline:
                self.stats.timeouts += not heard
                return None, _SILENT
            data = self.port.read(max(1, self.port.in_waiting))
            if data:
                last_byte, heard = time.monotonic(), True
                self.stats.bytes_received += len(data)
                skipped = self.parser.resyncs
                self._pending += self.parser.feed(data)
                self.stats.resyncs += self.parser.resyncs - skipped

    # ---- commands ----

    def hello(self) -> Info:
        self.parser.reset()
        self._pending.clear()
        self.port.reset_input_buffer()
        self.info = self.request(Hello(), (Info,), boot_ok=True, noisy_attempts=HELLO_NOISY_ATTEMPTS)
        return self.info

    def use_fast_path(self) -> int:
        """Send over the board's second receive path when both the port and the board have one
        (PROTOCOL.md 8: the emulated board's Ethernet). Call after ``hello``; returns the path in use."""
        if not isinstance(self.port, UartEthPort) or self.info is None or (self.info.rx_paths or 1) < 2:
            return 0
        self._use_path(0)
        path = self.request(RxPath(1), (RxPathSet,)).path
        self._use_path(path)
        return path

    def _use_path(self, path: int) -> None:
        if isinstance(self.port, UartEthPort):
            self.port.use_path(path)

    def classify(self, pcm: np.ndarray, clip_id: int, compress: bool = True) -> Result:
        """Stream one clip (exactly the board's clip_samples int16 samples) and return its RESULT.

        The board pulls each chunk and takes any size up to NEXT's max_samples, so under errors the chunks
        shrink (``chunk_size``); a chunk the board refused unread is replaced at once by a shorter one.
        """
        pcm = np.asarray(pcm, dtype=np.int16)

        def make_chunk(offset: int, most: int) -> Chunk:
            part = pcm[offset : offset + most]
            if compress:
                n, encoding, data = pcm_codec.fit_chunk(part, len(part), CHUNK_MAX_DATA)
            else:
                n, encoding, data = len(part), pcm_codec.RAW, part.astype("<i2").tobytes()
            return Chunk(clip_id, offset, n, encoding, data)

        reply = self.request(Start(clip_id, len(pcm)), (Next,))
        while isinstance(reply, Next):
            if reply.clip_id != clip_id:
                raise BoardError(f"board asked for clip {reply.clip_id} while sending clip {clip_id}")
            chunk = make_chunk(reply.offset, min(reply.max_samples, self.chunk_size.limit))

            def shorter(untouched: bool) -> Chunk | None:
                nonlocal chunk
                if not self.chunk_size.refused(chunk.n_samples, self.stats) or not untouched:
                    return None  # the board may hold this chunk already: only the very same frame is safe
                chunk = make_chunk(chunk.offset, self.chunk_size.limit)
                return chunk

            last = chunk.offset + chunk.n_samples >= len(pcm)  # only the last chunk waits for the inference (PROTOCOL.md 4)
            reply = self.request(chunk, (Next, Result), timeout=self.timeout + 10 if last else None, on_failure=shorter)
        if reply.clip_id != clip_id:
            raise BoardError(f"result for clip {reply.clip_id} while waiting for clip {clip_id}")
        return reply

    def run_tensors(self, inputs: list[bytes], req_id: int, invoke_timeout: float = 30.0) -> tuple[list[bytes], int]:
        """Raw tensors (PROTOCOL.md 12): write every input tensor's bytes, INVOKE, read every output back.

        Returns the output tensors' bytes and the Invoke cycles. Needs a board whose INFO has TENSOR_IO."""
        tensor_io = self.info.tensor_io if self.info is not None else None
        if tensor_io is None:
            raise BoardError(
                f"{self.url}: the board's firmware predates raw tensor input (its INFO has no TENSOR_IO): "
                "rebuild and flash this project's firmware"
            )
        for index, data in enumerate(inputs):
            reply = self.request(TensorStart(req_id, index, len(data)), (TensorNext,))
            while reply.max_bytes:
                if (reply.req_id, reply.index) != (req_id, index):
                    raise BoardError(f"board asked for tensor {reply.req_id}/{reply.index} while sending {req_id}/{index}")
                part = data[reply.offset : reply.offset + min(reply.max_bytes, self.chunk_size.limit)]
                reply = self.request(TensorChunk(req_id, index, reply.offset, part), (TensorNext,))
        done = self.request(Invoke(req_id), (Invoked,), timeout=self.timeout + invoke_timeout)
        outputs = []
        for index, size in enumerate(done.output_bytes):
            data = bytearray()
            while len(data) < size:
                part = self.request(TensorRead(req_id, index, len(data), size - len(data)), (TensorData,))
                if (part.req_id, part.index, part.offset) != (req_id, index, len(data)):
                    raise BoardError(f"board sent tensor {part.req_id}/{part.index}@{part.offset} for {req_id}/{index}")
                data += part.data
            outputs.append(bytes(data))
        return outputs, done.invoke_cycles

    def read_layer(self, req_id: int, tensor: int, size: int) -> bytes:
        """Graph tensor ``tensor`` (its index in the model's tensor table, ``size`` bytes) after the INVOKE of
        ``req_id`` (PROTOCOL.md 13). Needs a board whose INFO has LAYERS (``ser-emit --layers`` firmware)."""
        if self.info is None or not self.info.layers:
            raise BoardError(
                f"{self.url}: the board's firmware does not keep every tensor (its INFO has no LAYERS): build and "
                "flash it with `ser-emit MODEL --layers`, or validate on --board qemu"
            )
        data = bytearray()
        while len(data) < size:
            part = self.request(LayerRead(req_id, tensor, len(data), size - len(data)), (LayerData,))
            if (part.req_id, part.tensor, part.offset) != (req_id, tensor, len(data)):
                raise BoardError(f"board sent tensor {part.req_id}/{part.tensor}@{part.offset} for {req_id}/{tensor}")
            data += part.data
        if len(data) != size:
            raise BoardError(f"board sent {len(data)} bytes of tensor {tensor}, the model says {size}")
        return bytes(data)

    def norm(self, op: int, state: NormState | None = None) -> NormState:
        """Read, reset or load (``state``) the board's per-speaker statistics (PROTOCOL.md 14): the state it holds
        afterwards. Needs a board whose INFO has SPEAKER_NORM (a model trained with ``--speaker-norm``)."""
        if self.info is None or self.info.speaker_norm is None:
            raise BoardError(
                f"{self.url}: the board's firmware has no per-speaker normalisation (its INFO has no SPEAKER_NORM): "
                "its model was trained without --speaker-norm"
            )
        return self.request(Norm(op, state), (NormState,))

    def embed(self, op: int, state: EmbedState | None = None) -> EmbedState:
        """Read, reset or load (``state``) the board's embedding statistics (PROTOCOL.md 15): the state it holds
        afterwards. Needs a board whose INFO has EMBEDDING_NORM (a run with ``embedding_norm.json``)."""
        if self.info is None or self.info.embedding_norm is None:
            raise BoardError(
                f"{self.url}: the board's firmware has no embedding statistics (its INFO has no EMBEDDING_NORM): "
                "its model was converted from a run without embedding_norm.json"
            )
        return self.request(Embed(op, state), (EmbedState,))

    def profile(self) -> ProfileData:
        return self.request(Profile(), (ProfileData,))


def open_port(url: str, baud: int = DEFAULT_BAUD, open_timeout: float = 15.0) -> serial.SerialBase | UartEthPort:
    """Open a pyserial URL (or the emulated board's ``uart+eth://``, host/uart_eth.py), waiting for a
    socket that is not listening yet (an emulator starting)."""
    if url.startswith("uart+eth://"):
        try:
            return UartEthPort(url, timeout=0.05, open_timeout=open_timeout)
        except serial.SerialException as exc:
            raise BoardError(f"cannot open {url}: {exc}") from None
    deadline = time.monotonic() + open_timeout
    while True:
        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=0.05, write_timeout=10, do_not_open=True)
            if "://" not in url:
                port.exclusive = True  # a port another program holds is refused, not shared
            port.open()
            return port
        except serial.SerialException as exc:
            if not url.startswith("socket://") or time.monotonic() > deadline:
                raise BoardError(f"cannot open {url}: {exc}") from None
            time.sleep(0.1)
