"""``ser-doctor`` (and ``ser-main --check``): every prerequisite of the main job, checked before any work.

Training and conversion take minutes; a missing cross-compiler or TFLM source found only at the
firmware build wastes them. Each check says what is there, or what is missing and the command
that fixes it. Nothing here builds, trains or downloads anything.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PINS_FILE = REPO / "firmware" / "cmake" / "third_party.cmake"
BOOTSTRAP = "bash scripts/bootstrap"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or what is missing and how to fix it

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'MISSING'}  {self.name}: {self.detail}"


def pins() -> list[tuple[str, str, str]]:
    """(folder, upstream URL, commit) of every pinned firmware dependency, read from the CMake file that pins them."""
    return re.findall(r'"([\w.-]+)\|([^|"]+)\|([0-9a-f]{40})"', PINS_FILE.read_text())


def _tool(name: str, command: str, what: str, fix: str) -> Check:
    path = shutil.which(command)
    if path is None:
        return Check(name, False, f"{command} not found ({what}): {fix}")
    version = subprocess.run([command, "--version"], capture_output=True, text=True).stdout.splitlines()
    return Check(name, True, version[0].strip() if version else path)


def check_sources(deps_dir: str | None) -> Check:
    """TFLM, CMSIS and the rest: a complete local copy (SER_DEPS_DIR), else upstream must be reachable."""
    name = "TFLM/CMSIS sources"
    folders = [folder for folder, _, _ in pins()]
    if deps_dir:
        root = Path(deps_dir).expanduser()
        if not root.is_dir():
            return Check(name, False, f"SER_DEPS_DIR={deps_dir} is not a folder: point it at a copy of the pinned sources")
        missing = [f for f in folders if not (root / f).is_dir() or not any((root / f).iterdir())]
        if missing:
            return Check(
                name,
                False,
                f"SER_DEPS_DIR={deps_dir} lacks {', '.join(missing)}: each pinned source must be unpacked there "
                f"(the pins are in firmware/cmake/third_party.cmake)",
            )
        return Check(name, True, f"{len(folders)} pinned sources in {root}")
    _, url, commit = next(p for p in pins() if p[0] == "tflite-micro")
    probe = ["git", "ls-remote", "--exit-code", url, "HEAD"]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        reached = subprocess.run(probe, capture_output=True, timeout=20, env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        reached = False
    if reached:
        return Check(name, True, f"not local; the firmware build fetches them from upstream (tflite-micro at {commit[:12]})")
    return Check(
        name,
        False,
        "no local copy (SER_DEPS_DIR is unset) and upstream is out of reach: set SER_DEPS_DIR to a folder holding "
        f"{', '.join(folders)} at the commits pinned in firmware/cmake/third_party.cmake (README: Third-party sources)",
    )


def check_corpus(data: str | None) -> Check:
    from train.corpus import CorpusError, discover, resolve_root

    try:
        root = resolve_root(data)
        clips = discover(root)
    except CorpusError as exc:
        return Check("CASIA corpus", False, str(exc))
    return Check("CASIA corpus", True, f"{len(clips)} clips in {root}")


def run_checks(data: str | None, deps_dir: str | None, port: str | None = None) -> list[Check]:
    """Every prerequisite of ``ser-main`` with these arguments: a flashed board on ``port`` needs no firmware build
    and no emulator, only the host's front end and the corpus."""
    checks = [_tool("C compiler (host)", os.environ.get("CC", "gcc"), "builds the front end for the host", BOOTSTRAP)]
    if port is None:
        checks += [
            _tool("Arm cross-compiler", "arm-none-eabi-gcc", "builds the firmware", BOOTSTRAP),
            _tool("CMake", "cmake", "configures the firmware", BOOTSTRAP),
            _tool("QEMU", "qemu-system-arm", "the emulated board", BOOTSTRAP),
            check_sources(deps_dir or os.environ.get("SER_DEPS_DIR")),
        ]
    checks.append(check_corpus(data))
    return checks


def report(checks: list[Check]) -> str:
    missing = sum(not c.ok for c in checks)
    verdict = "all prerequisites found" if not missing else f"{missing} prerequisite(s) missing"
    return "\n".join([*(c.line() for c in checks), verdict])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ser-doctor",
        description="Check every prerequisite of the main job (toolchain, QEMU, TFLM/CMSIS sources, corpus) and say "
        "how to fix what is missing. Exit status 0 when all are found, 1 otherwise.",
    )
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--deps-dir", help="local TFLM/CMSIS sources; default $SER_DEPS_DIR")
    p.add_argument("--port", help="a flashed board's serial port: QEMU is then not needed")
    args = p.parse_args(argv)
    checks = run_checks(args.data, args.deps_dir, args.port)
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
