"""Firmware: every board's code cross-compiles warning-free; with TFLM sources, the emulated boards
boot in QEMU and classify clips bit for bit like the host's TFLM reference."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from convert.budget import board as board_spec
from convert.budget import elf_usage
from convert.emit import emit
from convert.interpreters import TflmRunner
from convert.quantize import quantize_int8
from convert.tflite_file import io_specs, sha256, with_metadata
from host import qemu
from host.board import BoardError, BoardLink, BoardReset
from host.firmware import FIRMWARE, LOG, FirmwareUnavailable, build, build_dir
from host.protocol import Chunk, ErrorCode, Hello, Parser, Reset, RxPath, RxPathSet, Start, decode_message, encode_message
from tests.conftest import synthetic_clip
from train.frontend import DEFAULT_LOGMEL, DEFAULT_WAVEFORM, FrontEndConfig, fit_clip, model_input_int8
from train.labels import EMOTIONS
from train.models import BUILDERS

DEPS = os.environ.get("SER_DEPS_DIR")
needs_tflm = pytest.mark.skipif(
    not DEPS,
    reason="TFLM sources not given: set SER_DEPS_DIR to local copies of tflite-micro, flatbuffers, gemmlowp, ruy, "
    "CMSIS_6, CMSIS-NN, Cortex_DFP and kissfft (README: Third-party sources) to build and run the firmware",
)
BOARDS = sorted(p.parent.name for p in (FIRMWARE / "boards").glob("*/board.cmake"))


def _model(name: str, cfg: FrontEndConfig) -> bytes:
    """An int8 model of the real architecture (untrained weights) carrying its front end."""
    keras.utils.set_random_seed(0)
    model = BUILDERS[name](cfg.input_shape)
    rng = np.random.default_rng(0)
    rep = [rng.standard_normal(cfg.input_shape).astype(np.float32) for _ in range(8)]
    meta = {"format": 1, "frontend": cfg.__dict__, "labels": list(EMOTIONS)}
    return with_metadata(quantize_int8(model, rep), meta)


@pytest.fixture(scope="module")
def logmel_model() -> bytes:
    return _model("spectrogram_resnet", DEFAULT_LOGMEL.with_standardisation(-9.0, 4.0))


def _cmake_list(board_cmake: str, name: str) -> list[str]:
    match = re.search(rf"set\({name} (.*?)\)\n", board_cmake, re.S)
    assert match, f"{name} missing"
    return match.group(1).split()


@pytest.mark.parametrize("board", BOARDS)
def test_board_code_cross_compiles_warning_free(board: str, logmel_model: bytes, tmp_path: Path) -> None:
    """The portable app and the board's port build with -Wall -Wextra -Werror (no TFLM needed)."""
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed: run scripts/bootstrap")
    gen = tmp_path / "gen"
    emit(logmel_model, gen, arena_measured=60000)
    board_dir = FIRMWARE / "boards" / board
    text = (board_dir / "board.cmake").read_text()
    flags = _cmake_list(text, "SER_CPU_FLAGS")
    ports = [s.replace("${CMAKE_CURRENT_LIST_DIR}", str(board_dir)) for s in _cmake_list(text, "SER_PORT_SOURCES")]
    defines = [f"-D{d}" for d in _cmake_list(text, "SER_BOARD_DEFINES")] if "SER_BOARD_DEFINES" in text else []
    app = FIRMWARE / "app"
    sources = [
        app / "ser_app.c",
        app / "ser_protocol.c",
        app / "ser_pcm_codec.c",
        app / "ser_frontend.c",
        app / "ser_speaker_norm.c",
        app / "ser_debug_log.c",
        FIRMWARE / "boards" / "common" / "startup_cortexm.c",
        *map(Path, ports),
    ]
    for src in sources:
        subprocess.run(
            [
                "arm-none-eabi-gcc",
                *flags,
                "-std=c11",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-ffp-contract=off",
                f"-I{app}",
                f"-I{FIRMWARE / 'boards' / 'common'}",
                f"-I{gen}",
                f'-DSER_BOARD_NAME="{board}"',
                '-DSER_BUILD_ID="test"',
                *defines,
                "-c",
                str(src),
                "-o",
                str(tmp_path / (src.stem + ".o")),
            ],
            check=True,
        )


def test_failed_build_names_its_log(logmel_model: bytes) -> None:
    """A build that fails says where its whole output is, and shows the last lines of it."""
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("cmake") is None:
        pytest.skip("the Arm toolchain or CMake is not installed: run scripts/bootstrap")
    log = build_dir("no-such-board") / LOG
    try:
        with pytest.raises(FirmwareUnavailable) as failure:
            build("no-such-board", logmel_model, DEPS)
        assert str(log) in str(failure.value) and "unknown SER_BOARD 'no-such-board'" in str(failure.value)
        assert "unknown SER_BOARD 'no-such-board'" in log.read_text()
    finally:
        shutil.rmtree(build_dir("no-such-board"), ignore_errors=True)


# ---- with TFLM sources: real builds, real emulator ----


@needs_tflm
def test_build_shows_how_far_it_is(logmel_model: bytes, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The build tool's progress lines drive the progress shown (plain lines off a terminal) and the
    callback; the log keeps the build's whole output. A new build folder runs TFLM's steps again (the
    library itself comes from the cache), so the build goes through all its stages."""
    seen: list[tuple[str, int]] = []
    out = tmp_path / "fw"
    elf = build("qemu-mps2-an386", logmel_model, DEPS, quiet=False, progress=lambda *p: seen.append(p), out_dir=out)
    assert elf.parent == out and elf.exists()
    runs = [(stage, [pct for _, pct in group]) for stage, group in itertools.groupby(seen, key=lambda p: p[0])]
    assert [stage for stage, _ in runs] == ["firmware", "TFLM library", "firmware"]
    for _, steps in runs:
        assert steps == sorted(steps) and all(0 <= pct <= 100 for pct in steps)
    assert runs[1][1][-1] == 100
    app = runs[2][1]  # the app and the model after TFLM: compiled step by step up to 100 %
    assert app[0] < 100 and len(app) > 2 and app[-1] == 100
    log = (out / LOG).read_text()
    assert re.search(r"^\[100%\] Built target ser_fw$", log, re.M) and "Performing build step for 'tflm'" in log
    printed = capsys.readouterr().out
    assert f"log: {out / LOG}" in printed and "  TFLM library: 100%" in printed and "  firmware: 100%" in printed


@pytest.fixture(scope="module")
def an386_elf(logmel_model: bytes) -> Path:
    return build("qemu-mps2-an386", logmel_model, DEPS)


def _clips(cfg: FrontEndConfig, n: int) -> list[np.ndarray]:
    clips = [fit_clip(synthetic_clip(i % 6, i % 4, i, 1.0 + 0.6 * i), cfg) for i in range(n)]
    root = os.environ.get("CASIA_ROOT")
    if root and Path(root).is_dir():
        from train.corpus import discover, read_wav

        real = discover(Path(root))[::397][:n]
        clips += [fit_clip(read_wav(Path(root) / c.path), cfg) for c in real]
    return clips


def _reference(tflite: bytes, cfg: FrontEndConfig, pcm: np.ndarray) -> np.ndarray:
    """The host's answer: the same C front end compiled for the host, then TFLM's interpreter."""
    spec, _ = io_specs(tflite)
    return TflmRunner(tflite)(model_input_int8(pcm, cfg, spec.scale, spec.zero_point))


@needs_tflm
def test_emulated_board_matches_host_tflm_bit_for_bit(an386_elf: Path, logmel_model: bytes) -> None:
    cfg = DEFAULT_LOGMEL.with_standardisation(-9.0, 4.0)
    with qemu.running("qemu-mps2-an386", an386_elf) as emu, BoardLink(emu.url) as link:
        info = link.hello()
        assert info.board == "qemu-mps2-an386" and info.labels == tuple(EMOTIONS)
        assert info.model_sha256.hex() == sha256(logmel_model)
        assert 0 < info.arena_used <= info.arena_size
        assert "emulator" in info.cycle_counter
        for clip_id, pcm in enumerate(_clips(cfg, 3)):
            result = link.classify(pcm, clip_id)
            expected = _reference(logmel_model, cfg, pcm)
            assert list(result.scores) == expected.tolist()
            assert result.class_index == int(np.argmax(expected))
            assert result.invoke_cycles > 0 and result.frontend_cycles > 0
        profile = link.profile()
        assert [tag for tag, _ in profile.entries][:1] == ["CONV_2D"] and all(t > 0 for _, t in profile.entries)


@needs_tflm
def test_emulated_board_takes_clips_over_ethernet_and_falls_back_to_its_uart(an386_elf: Path, logmel_model: bytes) -> None:
    """PROTOCOL.md section 8: after RX_PATH 1 the host's frames travel as Ethernet packets and the
    answers stay bit-exact; a tool that only speaks UART is still served by a board left on path 1;
    after a reset the board reads its UART again and the host can ask for path 1 anew."""
    cfg = DEFAULT_LOGMEL.with_standardisation(-9.0, 4.0)
    pcm = _clips(cfg, 1)[0]
    expected = _reference(logmel_model, cfg, pcm).tolist()
    with qemu.running("qemu-mps2-an386", an386_elf) as emu:
        assert emu.url.startswith("uart+eth://")
        with BoardLink(emu.url) as link:
            assert link.hello().rx_paths == 2
            with pytest.raises(BoardError, match="BAD_PATH"):
                link.request(RxPath(2), (RxPathSet,))
            assert link.use_fast_path() == 1
            assert link.port.path == 1  # the clip goes over Ethernet: the board answers only if it reads there
            assert list(link.classify(pcm, 1).scores) == expected
            link.port.write(encode_message(Reset(), 99))  # no reply: the board restarts
            with pytest.raises(BoardReset):
                link.request(Hello(), (Hello,), timeout=5)
            assert link.port.path == 0  # a board that restarted reads its UART
            link.hello()
            assert link.use_fast_path() == 1
            assert list(link.classify(pcm, 2).scores) == expected
        with BoardLink(f"socket://127.0.0.1:{emu.port}") as uart_only:  # the board is still on path 1
            assert uart_only.hello().board == "qemu-mps2-an386"
            assert list(uart_only.classify(pcm, 3).scores) == expected


@needs_tflm
def test_emulated_board_survives_garbage_truncation_and_bad_frames(an386_elf: Path, logmel_model: bytes) -> None:
    cfg = DEFAULT_LOGMEL.with_standardisation(-9.0, 4.0)
    with qemu.running("qemu-mps2-an386", an386_elf) as emu:
        sock = _connect(emu.port)
        parser = Parser()

        def exchange(data: bytes, wait: float = 1.5) -> list:
            sock.sendall(data)
            deadline, frames = time.monotonic() + wait, []
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                frames += [decode_message(f) for f in parser.feed(chunk) if not hasattr(f, "kind")]
            return frames

        exchange(b"", wait=1.0)  # BOOT
        bad_crc = bytearray(encode_message(Hello(), 7))
        bad_crc[-1] ^= 0xFF
        oversize = b"\xa5\x5a\x01\x08\xff\xff"
        out_of_order = encode_message(Chunk(clip_id=3, offset=0, n_samples=1, encoding=0, data=b"\x00\x00"), 9)
        replies = exchange(b"garbage\x00\xa5" + bytes(bad_crc) + oversize + out_of_order)
        codes = [r.code for r in replies if type(r).__name__ == "Error"]
        assert ErrorCode.BAD_CRC in codes and ErrorCode.TOO_LONG in codes and ErrorCode.OUT_OF_ORDER in codes
        replies = exchange(encode_message(Start(1, cfg.clip_samples), 10)[:7], wait=1.5)  # cut mid-frame
        assert any(type(r).__name__ == "Error" and r.code == ErrorCode.TRUNCATED for r in replies)
        sock.close()
        with BoardLink(emu.url) as link:  # and it still classifies correctly afterwards
            link.hello()
            pcm = _clips(cfg, 1)[0]
            assert list(link.classify(pcm, 5).scores) == _reference(logmel_model, cfg, pcm).tolist()
            with pytest.raises(BoardError, match="BAD_CLIP"):
                link.classify(pcm[:1000], 6)


@needs_tflm
def test_emulated_board_replays_kept_replies_to_retries(an386_elf: Path, logmel_model: bytes) -> None:
    """A command resent with the same seq gets the very same reply and is not processed twice
    (PROTOCOL.md section 4): START and CHUNK get their NEXT again, the last CHUNK its RESULT,
    which still matches the host's TFLM (the board keeps only these short replies)."""
    cfg = DEFAULT_LOGMEL.with_standardisation(-9.0, 4.0)
    pcm = _clips(cfg, 1)[0]
    with qemu.running("qemu-mps2-an386", an386_elf) as emu:
        sock = _connect(emu.port)
        parser = Parser()

        def ask(message: object, seq: int) -> object:
            sock.sendall(encode_message(message, seq))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                replies = [decode_message(f) for f in parser.feed(chunk) if not hasattr(f, "kind")]
                replies = [r for r in replies if type(r).__name__ != "Boot"]
                if replies:
                    assert len(replies) == 1
                    return replies[0]
            raise AssertionError("no reply")

        seq = 1
        start = Start(9, cfg.clip_samples)
        nxt = ask(start, seq)
        assert ask(start, seq) == nxt and nxt.offset == 0
        offset = 0
        while offset < cfg.clip_samples:
            n = min(nxt.max_samples, cfg.clip_samples - offset)
            seq = (seq + 1) % 256
            chunk = Chunk(
                clip_id=9, offset=offset, n_samples=n, encoding=0, data=pcm[offset : offset + n].astype("<i2").tobytes()
            )
            reply = ask(chunk, seq)
            assert ask(chunk, seq) == reply  # the retry: same reply, offset not advanced twice
            offset += n
            nxt = reply
        assert type(reply).__name__ == "Result" and reply.clip_id == 9
        assert list(reply.scores) == _reference(logmel_model, cfg, pcm).tolist()
        sock.close()


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 15
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=0.2)
            sock.settimeout(0.2)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@needs_tflm
def test_waveform_model_on_emulated_board() -> None:
    tflite = _model("audio_resnet", DEFAULT_WAVEFORM)
    elf = build("qemu-mps2-an386", tflite, DEPS)
    with qemu.running("qemu-mps2-an386", elf) as emu, BoardLink(emu.url) as link:
        assert link.hello().clip_samples == DEFAULT_WAVEFORM.clip_samples
        pcm = _clips(DEFAULT_WAVEFORM, 1)[0]
        assert list(link.classify(pcm, 1).scores) == _reference(tflite, DEFAULT_WAVEFORM, pcm).tolist()


@needs_tflm
def test_stm32f4_code_runs_on_netduinoplus2(logmel_model: bytes) -> None:
    elf = build("qemu-netduinoplus2", logmel_model, DEPS)
    cfg = DEFAULT_LOGMEL.with_standardisation(-9.0, 4.0)
    with qemu.running("qemu-netduinoplus2", elf) as emu, BoardLink(emu.url) as link:
        info = link.hello()
        assert info.board == "qemu-netduinoplus2" and info.core_clock_hz == 168_000_000
        pcm = _clips(cfg, 1)[0]
        assert list(link.classify(pcm, 1).scores) == _reference(logmel_model, cfg, pcm).tolist()


@needs_tflm
@pytest.mark.parametrize("board", ["nucleo-f446re", "nrf52840dk"])
def test_real_board_builds_fit_their_budget(board: str, logmel_model: bytes) -> None:
    elf = build(board, logmel_model, DEPS)
    for suffix in (".bin", ".hex", ".map"):
        assert elf.with_suffix(suffix).stat().st_size > 0
    flash, ram = elf_usage(elf, board_spec(board))
    assert flash.fits and ram.fits
    assert flash.used > len(logmel_model)
