"""Start a firmware ELF on an emulated board (QEMU) with its UART on a local TCP socket.

QEMU listens on 127.0.0.1:<port> and waits for the client; the board's BOOT frame is the first
thing it sends. ``-icount shift=0`` makes time instruction-derived, so the board's cycle counts
are deterministic emulator instruction counts (not silicon cycles). A board whose port also reads
the host's stream from its Ethernet controller gets a second socket for it (QEMU ``-nic socket``)
and a ``uart+eth://`` URL (host/uart_eth.py). The UART socket is ``nodelay``: QEMU writes a reply
byte by byte, and with Nagle's algorithm each small reply waited for the host's delayed ACK
(about 40 ms per CHUNK).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# machine and the -serial arguments that come before the board's protocol UART
MACHINES = {
    "qemu-mps2-an386": ("mps2-an386", []),
    "qemu-mps2-an500": ("mps2-an500", []),
    "qemu-netduinoplus2": ("netduinoplus2", ["-serial", "null"]),
}
# boards whose port reads the Ethernet controller as receive path 1 (board.cmake SER_RX_PATHS)
ETHERNET_PATH = {"qemu-mps2-an386"}


class QemuError(RuntimeError):
    """QEMU is missing, or the emulated board did not come up."""


START_ATTEMPTS = 5
LISTEN_TIMEOUT = 30.0  # seconds for QEMU to bind its sockets; a loaded CI machine is slow
# what QEMU prints once its -serial socket listens and waits for a client
WAITING_FOR_CLIENT = b"QEMU waiting for connection on"


def free_ports(count: int) -> list[int]:
    """``count`` distinct local TCP ports that are free now (all probed at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in probes:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in probes]


@dataclass
class EmulatedBoard:
    board: str
    elf: Path
    port: int  # the protocol UART
    process: subprocess.Popen
    eth_port: int | None = None  # the Ethernet controller's socket, where the port reads it
    gdb_port: int | None = None  # QEMU's GDB stub, when asked for

    @property
    def url(self) -> str:
        """A pyserial URL for the board's UART, or ``uart+eth://`` (host/uart_eth.py) with its Ethernet."""
        if self.eth_port:
            return f"uart+eth://127.0.0.1:{self.port},{self.eth_port}"
        return f"socket://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(board: str, elf: Path, gdb_stub: bool = False) -> EmulatedBoard:
    """Launch QEMU; the client connects to ``url`` (retrying until QEMU listens).

    A free port can be taken by another program between the probe and QEMU's bind; QEMU then
    exits with "Address already in use", and the launch is tried again on new ports.
    """
    if board not in MACHINES:
        raise QemuError(f"{board} is not an emulated board; emulated boards: {', '.join(MACHINES)}")
    if shutil.which("qemu-system-arm") is None:
        raise QemuError("qemu-system-arm not found: install qemu-system-arm (scripts/bootstrap does)")
    if not Path(elf).exists():
        raise QemuError(f"{elf} not found: build the firmware first (cmake --build --preset {board})")
    machine, before = MACHINES[board]
    for _ in range(START_ATTEMPTS):
        ports = free_ports(3)
        port = ports[0]
        eth_port = ports[1] if board in ETHERNET_PATH else None
        gdb_port = ports[2] if gdb_stub else None
        # The GDB stub is a -chardev so that QEMU binds it before the UART, like the Ethernet socket:
        # every bind has succeeded once QEMU says it waits for the UART client.
        gdb_chardev = f"socket,id=gdb,host=127.0.0.1,port={gdb_port},server=on,wait=off"
        gdb = ["-chardev", gdb_chardev, "-gdb", "chardev:gdb"] if gdb_port else []
        cmd = [
            "qemu-system-arm",
            "-M",
            machine,
            "-nographic",
            "-monitor",
            "none",
            "-icount",
            "shift=0",
            *gdb,
            *before,
            "-serial",
            f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on",
            *(["-nic", f"socket,listen=127.0.0.1:{eth_port}"] if eth_port else []),
            "-kernel",
            str(elf),
        ]
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        error = wait_until_listening(process)
        if error is None:
            # QEMU runs the guest only once a client connects, so the client sees the BOOT frame.
            return EmulatedBoard(board, Path(elf), port, process, eth_port, gdb_port)
        if "Address already in use" not in error:
            raise QemuError(f"QEMU exited at start: {error}")
    raise QemuError(f"QEMU found no free local TCP port in {START_ATTEMPTS} attempts: {error}")


def wait_until_listening(process: subprocess.Popen, timeout: float = LISTEN_TIMEOUT) -> str | None:
    """None once QEMU says it waits for the UART client; what QEMU printed if it exited instead.

    Reading QEMU's own message, not sleeping a fixed time, is what tells a bind that failed
    from a QEMU that is merely slow to start on a loaded machine.
    """
    printed = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([process.stderr], [], [], left)[0]:
            break
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:  # QEMU closed stderr: it exited
            process.wait()
            return printed.decode(errors="replace").strip() or f"exit code {process.returncode}"
        printed += chunk
        if WAITING_FOR_CLIENT in printed:
            return None
    process.kill()
    process.wait()
    raise QemuError(
        f"QEMU did not open its UART socket within {timeout:.0f} s; it printed: "
        f"{printed.decode(errors='replace').strip() or 'nothing'}"
    )


@contextlib.contextmanager
def running(board: str, elf: Path, gdb_stub: bool = False) -> Iterator[EmulatedBoard]:
    """An emulated board for the duration of a with-block; stopped on exit, error or Ctrl-C."""
    emu = start(board, elf, gdb_stub)
    try:
        yield emu
    finally:
        emu.stop()
