"""One board behind one port, kept usable through resets, cut links and garbled bytes.

``BoardLink`` retries a single frame; a session retries a whole clip: after a reset (the board said
BOOT) it shakes hands again, after a cut or silent link it reopens the port, and after a bounded
number of attempts it reports the clip as failed, never as a prediction. The handshake refuses a
board that runs another model than the run's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TypeVar

import numpy as np
import serial

from convert.tflite_file import sha256
from host.board import DEFAULT_BAUD, BoardError, BoardLink, BoardReset, ChunkSize, LinkStats, diagnose
from host.protocol import PROTO_VERSION, CommandSequencer, Embed, EmbedState, Info, Norm, NormState, Result

State = TypeVar("State", NormState, EmbedState)


class FatalBoardError(BoardError):
    """Retrying cannot help (another model, another protocol, a port that does not exist)."""


class ModelMismatch(FatalBoardError):
    pass


class ClipFailed(BoardError):
    """Every attempt at one clip failed; ``errors`` says what happened at each, ``cause`` what the link's counts
    over the clip point to."""

    def __init__(self, errors: list[str], cause: str) -> None:
        super().__init__(f"{len(errors)} attempts failed (likely {cause}): " + "; ".join(errors))
        self.errors, self.cause = errors, cause


@dataclass
class ClipOutcome:
    result: Result
    attempts: int
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0


def check_info(info: Info, tflite: bytes, url: str) -> None:
    """Refuse a board that speaks another protocol or carries another model (both hashes shown)."""
    if info.proto_version != PROTO_VERSION:
        raise FatalBoardError(
            f"{url}: other firmware: the board speaks protocol version {info.proto_version}, this host speaks {PROTO_VERSION}"
        )
    want = sha256(tflite)
    have = info.model_sha256.hex() if info.model_sha256 else "(none reported)"
    if have != want:
        raise ModelMismatch(
            f"{url}: the board ({info.board}) runs another model.\n  board's model: {have}\n  run's model:   {want}\n"
            "Flash the firmware built for this run's model_int8.tflite (README: Flashing a board), or pass the run "
            "whose model the board carries."
        )


class BoardSession:
    def __init__(
        self,
        url: str,
        tflite: bytes,
        baud: int = DEFAULT_BAUD,
        attempts: int = 4,
        timeout: float = 3.0,
        fast_path: bool = True,
    ) -> None:
        self.url, self.tflite, self.baud, self.attempts, self.timeout = url, tflite, baud, attempts, timeout
        self.fast_path = fast_path  # use a second receive path where the board and port have one
        self.link: BoardLink | None = None
        self.info: Info | None = None
        self.rx_path = 0  # where the board reads what we send: 0 its UART, 1 Ethernet (host/uart_eth.py)
        self._clip_ids = iter(range(random.randrange(1, 2**31), 2**32))  # fresh ids: never a stale replay
        # kept across reconnects: no seq of an old link is reused, the counts and the chunk size are the board's
        self._sequencer = CommandSequencer()
        self.stats = LinkStats()
        self.chunk_size = ChunkSize()
        self.norm_unsure = True  # whether the board's per-speaker statistics may differ from what the host expects

    @property
    def resets(self) -> int:
        return self.stats.resets

    @property
    def reconnects(self) -> int:
        return self.stats.reopens

    @property
    def retries(self) -> int:
        return self.stats.retries

    @property
    def bytes_sent(self) -> int:
        return self.stats.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.stats.bytes_received

    def diagnosis(self) -> str:
        """The likely cause of whatever went wrong on this board's link so far (or that nothing did)."""
        return diagnose(self.stats, first_contact=self.stats.frames_received == 0)

    def link_report(self) -> dict:
        """The link's counts and their diagnosis, for the evaluation report."""
        return asdict(self.stats) | {"diagnosis": self.diagnosis()}

    def connect(self) -> Info:
        """Open the port and shake hands. At the start, a port that will not open or a board that does not
        answer is fatal: the message says what to check."""
        try:
            return self._connect()
        except FatalBoardError:
            raise
        except (BoardError, serial.SerialException, OSError) as exc:
            self.close()
            raise FatalBoardError(_port_advice(self.url, str(exc))) from None

    def _connect(self) -> Info:
        if self.link is None:
            self.link = BoardLink(self.url, self.baud, timeout=self.timeout)
            self.link.sequencer, self.link.stats, self.link.chunk_size = self._sequencer, self.stats, self.chunk_size
        self.info = self.link.hello()
        check_info(self.info, self.tflite, self.url)
        self.rx_path = self.link.use_fast_path() if self.fast_path else 0
        return self.info

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def classify(self, pcm: np.ndarray, norm: NormState | None = None, embed: EmbedState | None = None) -> ClipOutcome:
        """The board's RESULT for one clip, after at most ``attempts`` tries; ``ClipFailed`` otherwise.

        ``norm`` and ``embed``: the per-speaker statistics the board must hold before this clip
        (PROTOCOL.md 14 and 15). The board keeps them up to date by itself, clip after clip; they are
        loaded only when they may not be right: first contact, a board that reset, a failed attempt (the
        board may have heard the clip).
        """
        errors: list[str] = []
        start = time.monotonic()
        before = replace(self.stats)
        for attempt in range(1, self.attempts + 1):
            try:
                if self.link is None:
                    self.stats.reopens += 1
                    self._connect()
                if (norm is not None or embed is not None) and self.norm_unsure:
                    self._load_statistics(norm, embed)
                result = self.link.classify(pcm, next(self._clip_ids))
                window = self.stats.since(before)
                return ClipOutcome(result, attempt, errors, time.monotonic() - start, window.bytes_sent, window.bytes_received)
            except BoardReset as exc:
                errors.append(str(exc))
                self.norm_unsure = True
                self._rehandshake(errors)
            except FatalBoardError:
                raise
            except (BoardError, serial.SerialException, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                self.norm_unsure = True
                self.close()  # reopen on the next attempt: a cut link or a wedged port starts clean
        raise ClipFailed(errors, diagnose(self.stats.since(before), first_contact=self.stats.frames_received == 0))

    def _load_statistics(self, norm: NormState | None, embed: EmbedState | None) -> None:
        if norm is not None:
            held = self.link.norm(Norm.LOAD, norm)
            if held != norm:
                raise BoardError(
                    f"the board holds other speaker statistics than it was sent ({held.clips} clips, {held.frames} frames)"
                )
        if embed is not None:
            held_embed = self.link.embed(Embed.LOAD, embed)
            if held_embed != embed:
                raise BoardError(f"the board holds other embedding statistics than it was sent ({held_embed.clips} clips)")
        self.stats.norm_loads += 1
        self.norm_unsure = False

    def read_norm(self) -> NormState:
        """The per-speaker statistics the board holds now (to check them against the host's), with the clip's retries."""
        return self._read(lambda link: link.norm(Norm.READ))

    def read_embed(self) -> EmbedState:
        """The embedding statistics the board holds now, with the clip's retries."""
        return self._read(lambda link: link.embed(Embed.READ))

    def _read(self, read: Callable[[BoardLink], State]) -> State:
        errors: list[str] = []
        for _ in range(self.attempts):
            try:
                if self.link is None:
                    self.stats.reopens += 1
                    self._connect()
                return read(self.link)
            except BoardReset as exc:
                errors.append(str(exc))
                self.norm_unsure = True
                self._rehandshake(errors)
            except FatalBoardError:
                raise
            except (BoardError, serial.SerialException, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                self.close()
        raise ClipFailed(errors, diagnose(self.stats, first_contact=self.stats.frames_received == 0))

    def _rehandshake(self, errors: list[str]) -> None:
        try:
            self._connect()
        except FatalBoardError:
            raise
        except (BoardError, serial.SerialException, OSError) as exc:
            errors.append(f"handshake after reset: {exc}")
            self.close()


def _port_advice(url: str, message: str) -> str:
    """Say what is wrong with a port that will not open, and what to do."""
    low = message.lower()
    if "busy" in low or "resource temporarily unavailable" in low or "errno 16" in low:
        return f"{message}\nThe port is in use by another program (a serial monitor, another evaluation?): close it and retry."
    if "no such file" in low or "errno 2" in low or "could not open port" in low or "filenotfounderror" in low:
        from serial.tools import list_ports

        ports = ", ".join(p.device for p in list_ports.comports()) or "none found"
        return f"{message}\nNo such port. Serial ports on this machine: {ports}. Is the board plugged in?"
    if "connection refused" in low:
        return f"{message}\nNothing listens there: is the emulator or the board's bridge running?"
    return message
