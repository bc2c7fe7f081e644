"""Launching the emulated board: distinct free ports, and a new try when another program takes one first."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from host import qemu

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed (scripts/bootstrap installs it)"
)


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = qemu.free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@needs_qemu
@pytest.mark.parametrize(
    ("board", "gdb_stub", "taken"),
    [
        ("qemu-mps2-an500", False, "uart"),
        ("qemu-mps2-an386", False, "ethernet"),
        ("qemu-mps2-an500", True, "gdb"),
    ],
)
def test_start_tries_again_when_a_port_is_taken_before_qemu_binds_it(
    tmp_path: Path, monkeypatch, board: str, gdb_stub: bool, taken: str
) -> None:
    # QEMU binds its sockets and waits for a UART client before it reads the kernel, so any file will do.
    elf = tmp_path / "unused.elf"
    elf.write_bytes(b"\0")
    real_free_ports = qemu.free_ports
    probes: list[list[int]] = []
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        busy = other_program.getsockname()[1]

        def first_probe_finds_a_taken_port(count: int) -> list[int]:
            ports = real_free_ports(count)
            if not probes:
                ports[["uart", "ethernet", "gdb"].index(taken)] = busy
            probes.append(ports)
            return ports

        monkeypatch.setattr(qemu, "free_ports", first_probe_finds_a_taken_port)
        emu = qemu.start(board, elf, gdb_stub=gdb_stub)
        try:
            assert len(probes) == 2 and busy not in (emu.port, emu.eth_port, emu.gdb_port)
            assert emu.port == probes[1][0]
            assert emu.process.poll() is None
        finally:
            emu.stop()


def test_a_qemu_that_never_listens_is_stopped_with_a_clear_error() -> None:
    # a process that prints nothing and never exits stands where QEMU hangs before binding
    sleeper = subprocess.Popen(["sleep", "60"], stderr=subprocess.PIPE)
    with pytest.raises(qemu.QemuError, match="did not open its UART socket within 1 s; it printed: nothing"):
        qemu.wait_until_listening(sleeper, timeout=1.0)
    assert sleeper.poll() is not None
