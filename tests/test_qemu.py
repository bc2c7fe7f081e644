"""Launching the emulated board: distinct free ports, and a new try when another program takes one first."""

from __future__ import annotations

import shutil
import socket
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
def test_start_tries_again_when_a_port_is_taken_before_qemu_binds_it(tmp_path: Path, monkeypatch) -> None:
    # QEMU binds the UART socket and waits for a client before it reads the kernel, so any file will do.
    elf = tmp_path / "unused.elf"
    elf.write_bytes(b"\0")
    real_free_ports = qemu.free_ports
    probes: list[list[int]] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]

        def first_probe_finds_a_taken_port(count: int) -> list[int]:
            probes.append(real_free_ports(count) if probes else [busy] * count)
            return probes[-1]

        monkeypatch.setattr(qemu, "free_ports", first_probe_finds_a_taken_port)
        emu = qemu.start("qemu-mps2-an500", elf)
        try:
            assert len(probes) == 2 and emu.port == probes[1][0] != busy
            assert emu.process.poll() is None
        finally:
            emu.stop()
