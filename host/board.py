"""Talk to a board over any pyserial URL: handshake, classify a clip, read the per-layer profile.

Every command is numbered; after a timeout or a garbled reply the very same frame is sent again
(the board answers a repeat from its stored reply, never acting twice). A BOOT frame from the
board means it reset: the current request fails with ``BoardReset`` so the caller can shake hands
again and retry the clip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import serial

from host import pcm_codec
from host.protocol import (
    CHUNK_MAX_DATA,
    Boot,
    Chunk,
    CommandSequencer,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Info,
    Next,
    Parser,
    PayloadError,
    Profile,
    ProfileData,
    Result,
    RxPath,
    RxPathSet,
    Start,
    decode_message,
)
from host.uart_eth import UartEthPort

DEFAULT_BAUD = 921600
INTER_BYTE_TIMEOUT = 0.5  # seconds; the board's own is 0.2 s (firmware/PROTOCOL.md)
RETRYABLE = {ErrorCode.BAD_CRC, ErrorCode.TRUNCATED, ErrorCode.TOO_LONG}


class BoardError(RuntimeError):
    """The board refused a command or stopped answering; the message says which and why."""


class BoardReset(BoardError):
    """The board started again (it sent BOOT) while a request was in flight."""

    def __init__(self, boot: Boot) -> None:
        super().__init__(f"board reset ({boot.reset_text or 'reason unknown'})")
        self.boot = boot


@dataclass
class LinkStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    retries: int = 0
    garbled: int = 0


class BoardLink:
    def __init__(
        self, url: str, baud: int = DEFAULT_BAUD, timeout: float = 3.0, retries: int = 5, open_timeout: float = 15.0
    ) -> None:
        self.url, self.timeout, self.retries = url, timeout, retries
        self.port = open_port(url, baud, open_timeout)
        self.parser = Parser()
        self.sequencer = CommandSequencer()
        self.stats = LinkStats()
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

    def _frames(self, deadline: float):
        """Frames and parse errors until ``deadline``; a frame stalled for INTER_BYTE_TIMEOUT is dropped."""
        last_byte = time.monotonic()
        while True:
            while self._pending:
                yield self._pending.pop(0)
            now = time.monotonic()
            if now > deadline:
                return
            data = self.port.read(max(1, self.port.in_waiting))
            if data:
                last_byte = now
                self.stats.bytes_received += len(data)
                self._pending += self.parser.feed(data)
            elif self.parser.in_frame and now - last_byte > INTER_BYTE_TIMEOUT:
                self.parser.reset()

    def request(self, msg, expect: tuple[type, ...], timeout: float | None = None, boot_ok: bool = False):
        """Send ``msg`` and return the board's reply of a type in ``expect``.

        ``boot_ok``: a BOOT frame meanwhile is expected (a board just started), not a reset to report.
        """
        frame = self.sequencer.command(msg)
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                frame = self.sequencer.retry()
                self.parser.reset()  # a reply garbled into a long bogus frame must not swallow the retry's reply
            self.port.write(frame)
            self.stats.bytes_sent += len(frame)
            reply = self._await_reply(expect, timeout or self.timeout, boot_ok)
            if reply is not None:
                return reply
        raise BoardError(
            f"no valid answer to {type(msg).__name__} after {self.retries + 1} attempts "
            f"on {self.url}: is the board running this firmware, at this baud rate?"
        )

    def _await_reply(self, expect: tuple[type, ...], timeout: float, boot_ok: bool):
        for item in self._frames(time.monotonic() + timeout):
            if not isinstance(item, Frame):
                self.stats.garbled += 1
                continue
            try:
                message = decode_message(item)
            except PayloadError:
                self.stats.garbled += 1
                continue
            if isinstance(message, Boot):
                self.boots.append(message)
                self.info = message
                self._use_path(0)  # a board that restarts reads its UART
                if boot_ok:
                    continue
                raise BoardReset(message)
            if not self.sequencer.is_reply(item):
                continue  # a late answer to an earlier attempt
            if isinstance(message, Error):
                if message.code in RETRYABLE:
                    return None  # our frame arrived damaged: send it again
                raise BoardError(f"board error {ErrorCode(message.code).name}: {message.message}")
            if isinstance(message, expect):
                return message
        return None

    # ---- commands ----

    def hello(self) -> Info:
        self.parser.reset()
        self._pending.clear()
        self.port.reset_input_buffer()
        self.info = self.request(Hello(), (Info,), boot_ok=True)
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
        """Stream one clip (exactly the board's clip_samples int16 samples) and return its RESULT."""
        pcm = np.asarray(pcm, dtype=np.int16)
        reply = self.request(Start(clip_id, len(pcm)), (Next,))
        while isinstance(reply, Next):
            if reply.clip_id != clip_id:
                raise BoardError(f"board asked for clip {reply.clip_id} while sending clip {clip_id}")
            part = pcm[reply.offset : reply.offset + reply.max_samples]
            if compress:
                n, encoding, data = pcm_codec.fit_chunk(part, reply.max_samples, CHUNK_MAX_DATA)
            else:
                n, encoding, data = len(part), pcm_codec.RAW, part.astype("<i2").tobytes()
            last = reply.offset + n >= len(pcm)  # only the last chunk waits for the inference (PROTOCOL.md 4)
            chunk = Chunk(clip_id, reply.offset, n, encoding, data)
            reply = self.request(chunk, (Next, Result), timeout=self.timeout + 10 if last else None)
        if reply.clip_id != clip_id:
            raise BoardError(f"result for clip {reply.clip_id} while waiting for clip {clip_id}")
        return reply

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
