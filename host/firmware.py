"""Build the firmware for a board and a model: emit the model, configure and build with CMake.

One build folder per board (``build/firmware/<board>``) and one generated folder per model
(``build/generated/<sha256[:12]>``): switching models recompiles only the model and the app, and
TFLM itself is compiled once per pin and CPU flags into ``build/tflm-cache``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from convert.emit import emit
from convert.tflite_file import sha256

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
BUILD = REPO / "build"


class FirmwareUnavailable(RuntimeError):
    """The firmware cannot be built here; the message says how to make it possible."""


def build_dir(board: str, cmsis_nn: bool = True) -> Path:
    return BUILD / "firmware" / (board if cmsis_nn else f"{board}-reference-kernels")


def elf_path(board: str, tflite: bytes, cmsis_nn: bool = True) -> Path:
    return build_dir(board, cmsis_nn) / f"ser-{board}-{sha256(tflite)[:12]}.elf"


def emit_if_changed(tflite: bytes, generated: Path) -> None:
    """Emit the model's C files, touching only those whose text changed: an updated emitter takes
    effect, and an unchanged model is not recompiled."""
    with tempfile.TemporaryDirectory() as tmp:
        emit(tflite, Path(tmp))
        generated.mkdir(parents=True, exist_ok=True)
        for new in Path(tmp).iterdir():
            old = generated / new.name
            if not old.exists() or old.read_bytes() != new.read_bytes():
                shutil.copyfile(new, old)


def build(board: str, tflite: bytes, deps_dir: str | None = None, quiet: bool = True, cmsis_nn: bool = True) -> Path:
    """The ELF for this board and model, building what is missing (``cmsis_nn=False``: TFLM's reference kernels)."""
    for tool in ("cmake", "arm-none-eabi-gcc"):
        if shutil.which(tool) is None:
            raise FirmwareUnavailable(f"{tool} not found: run scripts/bootstrap (installs the Arm toolchain and CMake)")
    deps_dir = deps_dir or os.environ.get("SER_DEPS_DIR")
    generated = BUILD / "generated" / sha256(tflite)[:12]
    emit_if_changed(tflite, generated)
    out_dir = build_dir(board, cmsis_nn)
    configure = [
        "cmake",
        "-S",
        str(FIRMWARE),
        "-B",
        str(out_dir),
        f"-DSER_BOARD={board}",
        f"-DSER_GENERATED_DIR={generated}",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DSER_CMSIS_NN={'ON' if cmsis_nn else 'OFF'}",
    ]
    if deps_dir:
        configure.append(f"-DSER_DEPS_DIR={deps_dir}")
    out = subprocess.DEVNULL if quiet else None
    for step in (configure, ["cmake", "--build", str(out_dir), "-j", str(os.cpu_count() or 2)]):
        result = subprocess.run(step, stdout=out, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            if not deps_dir and ("Fetching" in tail or "git" in tail.lower() or "FetchContent" in tail):
                raise FirmwareUnavailable(
                    "the firmware needs TensorFlow Lite Micro and CMSIS sources: no SER_DEPS_DIR is set and fetching "
                    "them from upstream failed (offline?). Set SER_DEPS_DIR to local copies (README: Third-party sources)."
                )
            raise FirmwareUnavailable(f"firmware build for {board} failed:\n{tail}")
    elf = elf_path(board, tflite, cmsis_nn)
    if not elf.exists():
        raise FirmwareUnavailable(f"build finished but {elf} is missing")
    return elf
