"""The board's protocol code under libFuzzer with AddressSanitizer and UndefinedBehaviorSanitizer.

firmware/fuzz/fuzz_parser.c drives the streaming parser, every payload decoder and the PCM decoder
and aborts when a round-trip oracle fails; any crash or sanitizer report fails this test. The seed
corpus is made from tests/golden_frames.json. SER_FUZZ_SECONDS sets the run time (default 20).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "firmware" / "app"
TARGET = REPO / "firmware" / "fuzz" / "fuzz_parser.c"
GOLDEN = json.loads(Path(__file__).with_name("golden_frames.json").read_text())
FUZZ_SECONDS = int(os.environ.get("SER_FUZZ_SECONDS", "20"))
FLAGS = [
    "-std=c11",
    "-g",
    "-O1",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fsanitize=fuzzer,address,undefined",
    "-fno-sanitize-recover=all",
]


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang not installed: run scripts/bootstrap (installs clang and libclang-rt-14-dev)")
    out = tmp_path_factory.mktemp("fuzz") / "fuzz_parser"
    sources = [TARGET, APP / "ser_protocol.c", APP / "ser_pcm_codec.c"]
    result = subprocess.run([clang, *FLAGS, f"-I{APP}", *map(str, sources), "-o", str(out)], capture_output=True, text=True)
    if result.returncode != 0 and re.search(r"libclang_rt\.|cannot find .*(fuzzer|asan|ubsan)", result.stderr):
        pytest.skip("libFuzzer or sanitizer runtime missing: run scripts/bootstrap (installs libclang-rt-14-dev)")
    assert result.returncode == 0, result.stderr
    return out


def write_seeds(corpus: Path) -> int:
    """Seeds in every input mode of the target (see its header): streams, bare payloads, PCM chunks."""
    corpus.mkdir(parents=True, exist_ok=True)
    seeds: list[bytes] = []
    frames = [bytes.fromhex(f["hex"]) for f in GOLDEN["frames"]]
    for raw in frames:
        seeds.append(b"\x00" + raw)
        seeds.append(b"\x01" + raw[2:3] + raw[6:-2])
    seeds.append(b"\x00" + b"\x13\xa5".join(frames))
    seeds.append(b"\x02" + b"\xa5\x5a\x03\x01\x00" + b"\x00" + frames[0] + frames[1][:9] + b"\x00" + frames[2])
    for f in GOLDEN["frames"]:
        if f["message"] == "CHUNK":
            c = f["fields"]
            seeds.append(b"\x03" + struct.pack("<BH", c["encoding"], c["n_samples"]) + bytes.fromhex(c["data"]))
    for p in GOLDEN["pcm_rice"]:
        seeds.append(b"\x03" + struct.pack("<BH", 1, len(p["samples"])) + bytes.fromhex(p["hex"]))
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    return len(seeds)


def write_dict(path: Path) -> Path:
    words = [b"\xa5\x5a", *(bytes([t]) for t in (1, 2, 3, 4, 5, 0x80, 0x81, 0x82, 0x83, 0x84, 0xEE)), b"\x00\x08", b"\xff\x07"]
    path.write_text("".join('"' + "".join(f"\\x{b:02x}" for b in w) + '"\n' for w in words))
    return path


def _run(fuzzer: Path, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASAN_OPTIONS": "abort_on_error=0:detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"}
    return subprocess.run([str(fuzzer), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def _clean(result: subprocess.CompletedProcess) -> None:
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "Sanitizer" not in log and "runtime error" not in log and "deadly signal" not in log, log[-4000:]


def test_golden_seeds_pass_the_oracles(fuzzer: Path, tmp_path: Path) -> None:
    n = write_seeds(tmp_path / "corpus")
    result = _run(fuzzer, ["-runs=0", str(tmp_path / "corpus")], tmp_path, 120)
    _clean(result)
    assert "INITED" in result.stderr and n > 30


def test_fuzz_parser_runs_clean(fuzzer: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_seeds(tmp_path / "corpus")
    args = [
        f"-max_total_time={FUZZ_SECONDS}",
        "-print_final_stats=1",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-max_len=4200",
        f"-dict={write_dict(tmp_path / 'protocol.dict')}",
        f"-artifact_prefix={tmp_path}/",
        str(tmp_path / "corpus"),
    ]
    result = _run(fuzzer, args, tmp_path, FUZZ_SECONDS + 120)
    _clean(result)
    runs = int(re.search(r"stat::number_of_executed_units:\s*(\d+)", result.stderr).group(1))
    with capsys.disabled():
        print(f"\nlibFuzzer: {runs} executions in {FUZZ_SECONDS} s, no crash, no sanitizer report")
    assert runs > 1000
