"""The emulated board's two-socket link (host/uart_eth.py) against real local sockets standing where
QEMU's UART chardev and ``-nic socket`` listen: what goes where, and how packets are framed."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
import serial

from host.board import BoardError, open_port
from host.protocol import Hello, Parser, encode_message
from host.uart_eth import ETHERTYPE, PACKET_BYTES, UartEthPort, parse_url


class FakeEmulator:
    """Two listening sockets; records what arrives on each."""

    def __init__(self) -> None:
        self.listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
        self.ports = [s.getsockname()[1] for s in self.listeners]
        self.conns: list[socket.socket | None] = [None, None]  # UART, Ethernet
        self.connected = [threading.Event(), threading.Event()]
        self.received = [bytearray(), bytearray()]
        self._threads = [threading.Thread(target=self._serve, args=(i,), daemon=True) for i in range(2)]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        return f"uart+eth://127.0.0.1:{self.ports[0]},{self.ports[1]}"

    def _serve(self, i: int) -> None:
        try:
            conn, _ = self.listeners[i].accept()
            self.conns[i] = conn
            self.connected[i].set()
            while data := conn.recv(65536):
                self.received[i] += data
        except OSError:
            return  # close() shut the socket (a test that never connects, or one that is over)

    def wait_for(self, i: int, n: int) -> bytes:
        for _ in range(200):
            if len(self.received[i]) >= n:
                break
            threading.Event().wait(0.01)
        return bytes(self.received[i])

    def uart(self) -> socket.socket:
        assert self.connected[0].wait(5)
        return self.conns[0]

    def close(self) -> None:
        for s in self.conns + self.listeners:
            if s is not None:
                s.close()


@pytest.fixture
def emulator():
    emu = FakeEmulator()
    yield emu
    emu.close()


def _packets(raw: bytes) -> list[bytes]:
    """Split socket-netdev bytes into Ethernet frames (4-byte big-endian length prefix)."""
    frames, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from(">I", raw, pos)
        frames.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert pos == len(raw)
    return frames


def test_writes_go_to_the_uart_until_path_1_then_as_packets(emulator: FakeEmulator) -> None:
    port = open_port(emulator.url)
    assert isinstance(port, UartEthPort)
    hello = encode_message(Hello(), 1)
    port.write(hello)
    assert emulator.wait_for(0, len(hello)) == hello
    stream = bytes(range(256)) * 13  # 3328 bytes: three packets
    port.use_path(1)
    port.write(stream)
    raw = emulator.wait_for(1, len(stream) + 3 * 20)
    frames = _packets(raw)
    assert len(frames) == 3
    payload = b""
    for frame in frames:
        assert struct.unpack_from(">H", frame, 12)[0] == ETHERTYPE
        (count,) = struct.unpack_from("<H", frame, 14)
        assert count == len(frame) - 16 <= PACKET_BYTES and len(frame) <= 1514
        payload += frame[16:]
    assert payload == stream
    assert bytes(emulator.received[0]) == hello  # nothing more on the UART
    port.close()


def test_reads_come_from_the_uart_and_a_closed_link_says_so(emulator: FakeEmulator) -> None:
    port = UartEthPort(emulator.url, timeout=0.5)
    reply = encode_message(Hello(), 3)
    emulator.uart().sendall(reply)
    got = b""
    while len(got) < len(reply):
        got += port.read(64)
    assert Parser().feed(got)[0].seq == 3
    assert port.read(1) == b""  # nothing waiting: returns after the timeout
    emulator.uart().shutdown(socket.SHUT_RDWR)  # the emulator went away
    with pytest.raises(serial.SerialException, match="closed"):
        port.read(1)
    port.close()


def test_bad_urls_and_paths_are_refused() -> None:
    with pytest.raises(serial.SerialException, match="uart\\+eth://HOST:UART_PORT,ETH_PORT"):
        parse_url("uart+eth://127.0.0.1:4000")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(BoardError, match="cannot open"):
        open_port(f"uart+eth://127.0.0.1:{free},{free}", open_timeout=0.3)


def test_only_paths_0_and_1_exist(emulator: FakeEmulator) -> None:
    port = UartEthPort(emulator.url)
    with pytest.raises(ValueError, match="paths 0"):
        port.use_path(2)
    port.close()
