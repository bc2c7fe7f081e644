"""Build the firmware's portable C sources for the host, so Python runs the very code the board runs.

The shared library is cached under ``build/native/`` keyed by a hash of the sources and flags, so
it is rebuilt only when the C code changes. Floating point is compiled as on the board: IEEE
float32 with no contraction into fused multiply-adds (``-ffp-contract=off``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE_APP = REPO / "firmware" / "app"
CACHE = Path(os.environ.get("SER_NATIVE_CACHE", REPO / "build" / "native"))
HOST_FLAGS = ["-std=c11", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off", "-fno-fast-math"]


class NativeBuildError(RuntimeError):
    """The host compiler is missing or the C sources do not compile."""


def build_shared(name: str, sources: list[Path], include_dirs: list[Path] = (), extra_flags: list[str] = ()) -> Path:
    """Compile ``sources`` into ``lib<name>-<hash>.so`` (cached) and return its path."""
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise NativeBuildError(f"C compiler {cc!r} not found: install gcc (scripts/bootstrap does)")
    flags = [*HOST_FLAGS, *extra_flags, *(f"-I{d}" for d in include_dirs)]
    digest = hashlib.sha256(" ".join([cc, *flags]).encode())
    for src in sorted(sources):
        digest.update(src.read_bytes())
    for inc in include_dirs:
        for header in sorted(Path(inc).glob("*.h")):
            digest.update(header.read_bytes())
    out = CACHE / f"lib{name}-{digest.hexdigest()[:16]}.so"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run([cc, *flags, *map(str, sources), "-o", str(tmp), "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            raise NativeBuildError(f"building {name} for the host failed:\n{result.stderr}")
        tmp.replace(out)
    return out


def load(name: str, sources: list[Path], include_dirs: list[Path] = (), extra_flags: list[str] = ()) -> ctypes.CDLL:
    return ctypes.CDLL(str(build_shared(name, sources, include_dirs, extra_flags)))
