"""The emulated board's link: its UART plus its Ethernet controller as a second receive path.

QEMU's UART model moves one byte per main-loop round, about 20 KiB/s; its Ethernet model moves a
whole packet per round. So the emulated board (firmware/boards/qemu-mps2-an386) also reads the
host's byte stream from Ethernet packets once the host has sent RX_PATH 1 (firmware/PROTOCOL.md
section 8); its replies always come back on the UART. The protocol is unchanged: the same frames,
CRCs and retries, only carried differently from host to board.

``uart+eth://HOST:UART_PORT,ETH_PORT`` opens QEMU's UART socket and its ``-nic socket`` (each
packet: 4-byte big-endian length, then the Ethernet frame). The object offers the part of
pyserial's interface that ``BoardLink`` and the fault relay use; ``use_path(1)`` sends over
Ethernet from the next write on.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import termios
import time

import serial

ETHERTYPE = 0x88B5  # IEEE local experimental
PACKET_BYTES = 1400  # stream bytes per packet: under the 1500-byte Ethernet payload
_HEADER = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack(">H", ETHERTYPE)


def parse_url(url: str) -> tuple[str, int, int]:
    """``uart+eth://127.0.0.1:4000,4001`` -> ("127.0.0.1", 4000, 4001)."""
    try:
        host, ports = url.removeprefix("uart+eth://").rsplit(":", 1)
        uart, eth = (int(p) for p in ports.split(","))
        return host, uart, eth
    except ValueError:
        raise serial.SerialException(f"{url}: expected uart+eth://HOST:UART_PORT,ETH_PORT") from None


def packets(data: bytes) -> bytes:
    """The socket-netdev bytes that carry ``data`` to the board, in packets of at most PACKET_BYTES."""
    out = bytearray()
    for i in range(0, len(data), PACKET_BYTES):
        piece = data[i : i + PACKET_BYTES]
        frame = _HEADER + struct.pack("<H", len(piece)) + piece
        out += struct.pack(">I", len(frame)) + frame
    return bytes(out)


class UartEthPort:
    """A pyserial-like port: reads from the UART, writes to the UART or (path 1) to Ethernet."""

    def __init__(self, url: str, timeout: float = 0.05, open_timeout: float = 15.0) -> None:
        self.url, self.timeout = url, timeout
        host, uart, eth = parse_url(url)
        deadline = time.monotonic() + open_timeout
        self.uart = self.eth = None
        try:
            self.uart = _connect(host, uart, deadline)
            self.eth = _connect(host, eth, deadline)
        except OSError as exc:
            self.close()
            raise serial.SerialException(f"could not open {url}: {exc}") from None
        self.path = 0
        self.is_open = True

    def use_path(self, path: int) -> None:
        """Send on ``path`` from the next write on (after the board's RX_PATH_SET, or 0 after a BOOT)."""
        if path not in (0, 1):
            raise ValueError(f"{self.url} has paths 0 (UART) and 1 (Ethernet), not {path}")
        self.path = path

    def write(self, data: bytes) -> int:
        try:
            if self.path == 1:
                self.eth.sendall(packets(bytes(data)))
            else:
                self.uart.sendall(data)
        except OSError as exc:
            raise serial.SerialException(f"{self.url}: {exc}") from None
        return len(data)

    @property
    def in_waiting(self) -> int:
        raw = fcntl.ioctl(self.uart.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", raw)[0]

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes from the UART, waiting at most ``timeout`` for the first."""
        ready, _, _ = select.select([self.uart], [], [], self.timeout)
        if not ready:
            return b""
        try:
            data = self.uart.recv(size)
        except OSError as exc:
            raise serial.SerialException(f"{self.url}: {exc}") from None
        if not data:
            raise serial.SerialException(f"{self.url}: the board closed the link")
        return data

    def reset_input_buffer(self) -> None:
        while self.in_waiting:
            self.uart.recv(4096)

    def close(self) -> None:
        for s in (self.uart, self.eth):
            if s is not None:
                s.close()
        self.is_open = False


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    """Connect, retrying while the emulator has not started listening yet."""
    while True:
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
