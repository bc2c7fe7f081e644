"""Build the firmware for a board and a model: emit the model, configure and build with CMake.

One build folder per board (``build/firmware/<board>``) and one generated folder per model
(``build/generated/<sha256[:12]>``): switching models recompiles only the model and the app, and
TFLM itself is compiled once per pin and CPU flags into ``build/tflm-cache``. The whole output of
the last build is kept in ``build.log`` in the board's build folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm

from convert.emit import emit
from convert.tflite_file import sha256

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; builds into one folder must not overlap
    fcntl = None

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
BUILD = REPO / "build"
LOG = "build.log"

# The build tool's progress lines: Makefiles print "[ 42%] Building ...", Ninja "[123/456] Building ...".
_PERCENT = re.compile(r"^(?:\x1b\[[\d;]*m)*\[\s*(\d{1,3})%\]")
_COUNT = re.compile(r"^(?:\x1b\[[\d;]*m)*\[(\d+)/(\d+)\]")
# TFLM is an ExternalProject: its own build's progress lines (0-100 % again, and once more in its
# install step) come between these two.
TFLM_BUILD_STEP = "Performing build step for 'tflm'"
TFLM_DONE = "Completed 'tflm'"

Progress = Callable[[str, int], None]
"""Told the stage ("TFLM library" or "firmware") and how far it is (0-100) whenever either moves."""


class FirmwareUnavailable(RuntimeError):
    """The firmware cannot be built here; the message says how to make it possible."""


def build_dir(board: str, cmsis_nn: bool = True, own_kernels: bool = True, layers: bool = False) -> Path:
    """The board's build folder: our kernels (the default), TFLM's CMSIS-NN kernels alone
    (``own_kernels=False``) or TFLM's reference kernels (``cmsis_nn=False``); ``layers``: the
    firmware that keeps every tensor (``ser-emit --layers``), in a folder of its own."""
    if not cmsis_nn:
        name = f"{board}-reference-kernels"
    else:
        name = board if own_kernels else f"{board}-cmsis-nn-kernels"
    return BUILD / "firmware" / (f"{name}-layers" if layers else name)


def elf_path(board: str, tflite: bytes, cmsis_nn: bool = True, own_kernels: bool = True, layers: bool = False) -> Path:
    return build_dir(board, cmsis_nn, own_kernels, layers) / f"ser-{board}-{sha256(tflite)[:12]}.elf"


def emit_if_changed(tflite: bytes, generated: Path, layers: bool = False) -> None:
    """Emit the model's C files, touching only those whose text changed: an updated emitter takes
    effect, and an unchanged model is not recompiled."""
    with tempfile.TemporaryDirectory() as tmp:
        emit(tflite, Path(tmp), layers=layers)
        generated.mkdir(parents=True, exist_ok=True)
        for new in Path(tmp).iterdir():
            old = generated / new.name
            if not old.exists() or old.read_bytes() != new.read_bytes():
                shutil.copyfile(new, old)


class BuildTracker:
    """Reads the build's output line by line and tells its listeners the stage and percentage.

    The outer build's percentages stop while TFLM's own build runs, so that build is a stage of its
    own; the percentage never goes back within a stage (parallel jobs print out of order)."""

    def __init__(self, listeners: list[Progress]) -> None:
        self.listeners = listeners
        self.stage, self.percent = "firmware", -1

    def feed(self, line: str) -> None:
        if TFLM_BUILD_STEP in line:
            self.stage, self.percent = "TFLM library", -1
            return
        if TFLM_DONE in line:
            self.stage, self.percent = "firmware", -1
        if m := _PERCENT.match(line):
            percent = int(m.group(1))
        elif m := _COUNT.match(line):
            percent = 100 * int(m.group(1)) // max(1, int(m.group(2)))
        else:
            return
        if percent > self.percent:
            self.percent = percent
            for listener in self.listeners:
                listener(self.stage, percent)


class BuildDisplay:
    """Shows a build's progress: a bar per stage on a terminal, otherwise a line per stage and per
    tenth (a log shows the build is alive). Says why TFLM's first build takes minutes."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bar: tqdm | None = None
        self.stage, self.percent = "", 0

    def __call__(self, stage: str, percent: int) -> None:
        if stage != self.stage:
            self.close()
            if stage == "TFLM library" and percent < 100:
                print(
                    "compiling TensorFlow Lite Micro and CMSIS-NN for this CPU: the first build takes several "
                    "minutes; later builds reuse it from build/tflm-cache",
                    flush=True,
                )
            if self.tty:
                self.bar = tqdm(total=100, desc=stage, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        if self.bar is not None:
            self.bar.update(percent - self.bar.n)
        elif stage != self.stage or percent // 10 > self.percent // 10:
            print(f"  {stage}: {percent}%", flush=True)
        self.stage, self.percent = stage, percent

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def _one_build_at_a_time(out_dir: Path, quiet: bool) -> Iterator[None]:
    """Hold the build folder: two processes building different models there would reconfigure it under
    each other (objects of one model linked into the other, or a link that finds them gone)."""
    with (out_dir / ".build-lock").open("w") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not quiet:
                    print(f"waiting for another build in {out_dir} to finish", flush=True)
                fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(step: list[str], log: TextIO, tracker: BuildTracker) -> tuple[int, list[str]]:
    """Run one build step, its output (stderr too) into ``log`` and ``tracker``: its exit code and lines."""
    log.write(f"$ {shlex.join(step)}\n")
    lines: list[str] = []
    with subprocess.Popen(step, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            lines.append(line.rstrip("\n"))
            tracker.feed(line)
    return proc.returncode, lines


def build(
    board: str,
    tflite: bytes,
    deps_dir: str | None = None,
    quiet: bool = True,
    cmsis_nn: bool = True,
    progress: Progress | None = None,
    out_dir: Path | None = None,
    own_kernels: bool = True,
    layers: bool = False,
) -> Path:
    """The ELF for this board and model, building what is missing (``cmsis_nn=False``: TFLM's reference kernels;
    ``own_kernels=False``: TFLM's CMSIS-NN kernels without ours; ``layers``: every tensor kept, ser-validate --layers).

    ``quiet=False`` shows how far the build is; ``progress`` is told so in any case. ``out_dir``: another
    build folder than the board's own (TFLM still comes from the cache)."""
    for tool in ("cmake", "arm-none-eabi-gcc"):
        if shutil.which(tool) is None:
            raise FirmwareUnavailable(f"{tool} not found: run scripts/bootstrap (installs the Arm toolchain and CMake)")
    deps_dir = deps_dir or os.environ.get("SER_DEPS_DIR")
    generated = BUILD / "generated" / (sha256(tflite)[:12] + ("-layers" if layers else ""))
    emit_if_changed(tflite, generated, layers)
    out_dir = out_dir or build_dir(board, cmsis_nn, own_kernels, layers)
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
        f"-DSER_OWN_KERNELS={'ON' if own_kernels else 'OFF'}",
    ]
    if deps_dir:  # absolute: a path relative to where the user stands means nothing to CMake's build folder
        configure.append(f"-DSER_DEPS_DIR={Path(deps_dir).expanduser().resolve()}")
    log_path = out_dir / LOG
    out_dir.mkdir(parents=True, exist_ok=True)
    display = None if quiet else BuildDisplay()
    tracker = BuildTracker([f for f in (display, progress) if f is not None])
    if display:
        print(f"building the firmware for {board} (log: {log_path})", flush=True)
    try:
        with _one_build_at_a_time(out_dir, quiet), log_path.open("w", buffering=1) as log:  # line-buffered: followable
            for step in (configure, ["cmake", "--build", str(out_dir), "-j", str(os.cpu_count() or 2)]):
                code, lines = _run(step, log, tracker)
                if code != 0:
                    break
    finally:
        if display:
            display.close()
    if code != 0:
        # what went wrong, without CMake's status lines and the build tool's progress lines around it
        tail = "\n".join([x for x in lines if not x.startswith("-- ") and not _PERCENT.match(x) and not _COUNT.match(x)][-20:])
        fetching = step is configure and ("Fetching" in tail or "git" in tail.lower() or "FetchContent" in tail)
        if fetching and not deps_dir:
            raise FirmwareUnavailable(
                "the firmware needs TensorFlow Lite Micro and CMSIS sources: no SER_DEPS_DIR is set and fetching "
                "them from upstream failed (offline?). Set SER_DEPS_DIR to local copies (README: Third-party sources). "
                f"Build log: {log_path}"
            )
        raise FirmwareUnavailable(f"firmware build for {board} failed (full log: {log_path}); its last lines:\n{tail}")
    elf = out_dir / elf_path(board, tflite, cmsis_nn, own_kernels, layers).name
    if not elf.exists():
        raise FirmwareUnavailable(f"build finished but {elf} is missing (build log: {log_path})")
    return elf
