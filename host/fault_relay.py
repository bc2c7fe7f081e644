"""A fault-injecting relay between the host tool and a board, to prove the tool recovers from a bad link.

The relay listens on 127.0.0.1 (``url`` is a pyserial ``socket://`` URL for the tool) and forwards
bytes both ways to the board's own pyserial URL (the simulated board's pty, QEMU's socket, a real
port). On the way it breaks the link as a ``FaultPlan`` says, reproducibly for a seed: it drops,
flips a bit of, or duplicates single bytes in either direction; it cuts the tool's connection
(the tool must connect again; the board stays up, and what it says meanwhile is lost); and it
resets the board by sending it a well-formed RESET frame, whose BOOT answer reaches the tool like
any other byte. ``counts`` says what was injected, so a test can show that faults really happened.

Byte faults draw one random number per byte from a generator per direction, so the same bytes
get the same faults whatever the read sizes. Cuts and resets count the tool's whole frames (as
sent, before any fault) and act right after forwarding the n-th, 2n-th, ... frame: the board has
the command, the tool waits for its answer.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

import serial

from host.board import open_port
from host.protocol import Frame, MsgType, Parser, Reset, encode_message

TO_BOARD, TO_TOOL = "to_board", "to_tool"


@dataclass(frozen=True)
class ByteFaults:
    """Per-byte probabilities in one direction; a byte gets at most one fault."""

    drop: float = 0.0
    flip: float = 0.0  # one random bit of the byte inverted
    duplicate: float = 0.0

    @property
    def any(self) -> bool:
        return self.drop > 0 or self.flip > 0 or self.duplicate > 0


@dataclass(frozen=True)
class FaultPlan:
    """What the relay breaks; the default breaks nothing (a transparent relay)."""

    seed: int = 0
    to_board: ByteFaults = field(default_factory=ByteFaults)
    to_tool: ByteFaults = field(default_factory=ByteFaults)
    cut_every: int = 0  # close the tool's connection after every n-th frame from the tool (0: never)
    reset_every: int = 0  # send the board RESET after every n-th frame from the tool (0: never)


class FaultRelay:
    """``counts`` keys: (fault, direction) for byte faults, "cut", "reset", "tool_frames",
    "board_boots" (BOOT frames the board sent), "connections" and "unheard_bytes" (board bytes
    sent while no tool was connected)."""

    def __init__(self, upstream_url: str, plan: FaultPlan | None = None, baud: int = 921600) -> None:
        self.upstream_url, self.plan, self.baud = upstream_url, plan or FaultPlan(), baud
        self.counts: Counter = Counter()
        self._rng = {d: random.Random(f"{self.plan.seed}:{d}") for d in (TO_BOARD, TO_TOOL)}
        self._lock = threading.Lock()  # counts, the tool connection, writes to the board
        self._stop = threading.Event()
        self._tool: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.url = ""

    # ---- life cycle ----

    def start(self) -> FaultRelay:
        self._board = open_port(self.upstream_url, self.baud)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        for target in (self._accept_tools, self._board_to_tool):
            self._spawn(target)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._listener.close()
        with self._lock:
            if self._tool is not None:
                self._tool.close()
        self._board.close()

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _count(self, key, n: int = 1) -> int:
        with self._lock:
            self.counts[key] += n
            return self.counts[key]

    # ---- the two directions ----

    def _accept_tools(self) -> None:
        """One tool at a time, like a serial port; a new connection replaces the old one."""
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(0.1)
            with self._lock:
                old, self._tool = self._tool, conn
            if old is not None:
                old.close()
            self._count("connections")
            self._spawn(self._tool_to_board, conn)

    def _tool_to_board(self, conn: socket.socket) -> None:
        parser = Parser()  # counts the tool's frames as sent, before faults
        plan = self.plan
        while not self._stop.is_set():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return  # the tool closed its end
            frames = sum(isinstance(e, Frame) for e in parser.feed(data))
            with self._lock:
                self._board.write(self._garble(data, TO_BOARD))
            for _ in range(frames):
                n = self._count("tool_frames")
                if plan.reset_every and n % plan.reset_every == 0:
                    self._count("reset")
                    with self._lock:
                        self._board.write(encode_message(Reset(), 0))
                if plan.cut_every and n % plan.cut_every == 0:
                    self._count("cut")
                    self._cut(conn)
                    return

    def _cut(self, conn: socket.socket) -> None:
        with self._lock:
            if self._tool is conn:
                self._tool = None
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()

    def _board_to_tool(self) -> None:
        parser = Parser()  # sees the board's BOOT frames, before faults
        while not self._stop.is_set():
            try:
                data = self._board.read(max(1, self._board.in_waiting))
            except (serial.SerialException, OSError):
                return  # the board went away (stop, or the emulator exited)
            if not data:
                continue
            boots = sum(isinstance(e, Frame) and e.type == MsgType.BOOT for e in parser.feed(data))
            if boots:
                self._count("board_boots", boots)
            with self._lock:
                tool = self._tool
                out = self._garble(data, TO_TOOL)
            if tool is None:
                self._count("unheard_bytes", len(data))
                continue
            try:
                tool.sendall(out)
            except OSError:
                self._count("unheard_bytes", len(data))

    def _garble(self, data: bytes, direction: str) -> bytes:
        """The bytes with this direction's faults; called with the lock held."""
        faults: ByteFaults = getattr(self.plan, direction)
        if not faults.any:
            return data
        rng, out = self._rng[direction], bytearray()
        for b in data:
            r = rng.random()
            if r < faults.drop:
                self.counts["drop", direction] += 1
                continue
            r -= faults.drop
            if r < faults.flip:
                b ^= 1 << rng.randrange(8)
                self.counts["flip", direction] += 1
            elif r - faults.flip < faults.duplicate:
                out.append(b)
                self.counts["duplicate", direction] += 1
            out.append(b)
        return bytes(out)
