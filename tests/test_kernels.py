"""Our own firmware kernels (firmware/kernels/) on the emulated Cortex-M4, bit for bit against TFLM.

Small int8 models without a front end (the board takes their int8 input as sent), each ending
in 90 values so that a wrong value anywhere upstream shows:
- a chain of convolutions taking every path of ser_conv_s8.c: one input channel with K % 4 != 0,
  rows that are not whole groups of 4, 'same' and 'valid' padding, strides that differ per axis,
  dilation, 1xN and 1x1 kernels, odd channel and pixel counts, fused ReLU and ReLU6;
- a second chain for the rest of ser_conv_s8.c's blocking (one filter row x four pixels) and
  requantization: K % 4 of 2 and 3 (the zero-padded last group), 1, 2 and 3 pixels past a whole
  block, odd input channel counts, and a layer whose tiny channel (a right shift past 22) takes the
  exact, slow requantization beside layers on the fast one (with and without ReLU);
- a chain whose every layer takes the channel loop written in assembly (K whole groups of 4, a
  bias, the whole int8 range; six pixels a block): 7, 27, 9, 5 and 30 groups, so the 8-deep
  unrolled loop is entered at five of its eight points (the real models of tests/test_firmware.py
  enter at 0, 2, 4 and 6), with and without ReLU, odd channel counts, padding, and pixel counts 1,
  3 and 4 past a whole 6-pixel block;
- 1-channel convolutions beside each other (the 1-channel path of ser_conv_s8.c, K <= 10): dilation
  with 'same' padding and no activation, K = 4 with ReLU, a 3x3 'same' layer whose rows are runs of
  inside windows between padded edges, odd channel counts, added together;
- the other kernels' less common cases: MEAN over height and width kept as dims and MEAN over
  channels (the reference walk), ADD broadcasting a vector and a single channel.
The real models (tests/test_firmware.py) cover FULLY_CONNECTED, SOFTMAX and same-shape ADD.

Two more checks: the kernel's C code (its portable paths) on the host under AddressSanitizer against
a direct convolution on random shapes (tests/conv_check.c), and a firmware whose kernel drops one
rounding step (SER_BREAK_ROUNDING) must fail the bit-exact comparison, so the comparison can fail.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from convert.interpreters import TflmRunner
from convert.quantize import quantize_int8
from convert.tflite_file import align, io_specs, op_versions
from host import qemu
from host.board import BoardLink

DEPS = os.environ.get("SER_DEPS_DIR")
REPO = Path(__file__).resolve().parents[1]
needs_deps = pytest.mark.skipif(
    not DEPS,
    reason="TFLM sources not given: set SER_DEPS_DIR to local copies of tflite-micro, flatbuffers, gemmlowp, ruy, "
    "CMSIS_6, CMSIS-NN, Cortex_DFP and kissfft (README: Third-party sources) to build and run the firmware",
)
BOARD = "qemu-mps2-an386"


@functools.cache
def conv_zoo() -> bytes:
    import keras

    keras.utils.set_random_seed(3)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((13, 21, 1)),
            layers.Conv2D(6, 3, strides=2, activation="relu"),  # 1 channel, K = 9, valid -> 6x10
            layers.Conv2D(9, (2, 3), padding="same", activation="relu6"),  # rows of 18: not whole groups
            layers.Conv2D(12, 3, dilation_rate=2, padding="same"),  # dilation, K = 81, padding all round
            layers.Conv2D(8, (1, 5), strides=(2, 2), padding="same"),  # 1xN, 3x5 = 15 pixels (odd)
            layers.Conv2D(6, 1, use_bias=False),  # 1x1, no bias
            layers.Reshape((15, 6)),
        ]
    )
    rng = np.random.default_rng(0)
    rep = [rng.uniform(-1, 1, (13, 21, 1)).astype(np.float32) for _ in range(16)]
    return align(quantize_int8(model, rep))


@functools.cache
def conv_zoo_blocks() -> bytes:
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    tiny = layers.Conv2D(7, (1, 2))  # 7 channels in and out: K = 14, 3x5 = 15 pixels
    model = keras.Sequential(
        [
            keras.Input((7, 13, 1)),
            layers.Conv2D(5, (2, 5), strides=(1, 2), padding="same", activation="relu"),  # K = 10: 7x7 = 49 pixels
            layers.Conv2D(7, (3, 2), strides=(2, 1)),  # 5 channels, K = 30 (K % 4 = 2): 3x6 = 18 pixels
            tiny,
            layers.Conv2D(6, 1, activation="relu"),  # K = 7 (K % 4 = 3)
            layers.Reshape((15, 6)),
        ]
    )
    kernel, bias = tiny.get_weights()
    kernel[..., 0] *= 1e-7  # channel 0's scale: a requantization shift far past 22
    tiny.set_weights([kernel, bias])
    rng = np.random.default_rng(0)
    rep = [rng.uniform(-1, 1, (7, 13, 1)).astype(np.float32) for _ in range(16)]
    return align(quantize_int8(model, rep))


@functools.cache
def conv_zoo_whole_groups() -> bytes:
    import keras

    keras.utils.set_random_seed(7)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            # K = 28: 7 groups; 8x8 = 64 pixels (64 % 6 = 4)
            layers.Conv2D(12, (1, 7), padding="same", activation="relu"),
            layers.Conv2D(9, 3, padding="same"),  # K = 108: 27 groups (27 % 8 = 3), 9 channels
            layers.Conv2D(20, 2, activation="relu"),  # K = 36: 9 groups (% 8 = 1); 7x7 = 49 pixels (% 6 = 1)
            layers.Conv2D(8, 1),  # K = 20: 5 groups
            layers.Conv2D(6, (3, 5)),  # K = 120: 30 groups (% 8 = 6); 5x3 = 15 pixels (% 6 = 3)
            layers.Reshape((15, 6)),
        ]
    )
    rng = np.random.default_rng(2)
    for layer in model.layers[:-1]:  # biases that are not zero, so adding them shows
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape).astype(np.float32)])
    rep = [rng.uniform(-1, 1, (8, 8, 4)).astype(np.float32) for _ in range(16)]
    return align(quantize_int8(model, rep))


@functools.cache
def conv_zoo_one_channel() -> bytes:
    import keras

    keras.utils.set_random_seed(6)
    layers = keras.layers
    x = keras.Input((9, 14, 1))
    a = layers.Conv2D(5, 3, dilation_rate=2, padding="same")(x)  # 1 channel, K = 9, dilation, padding all round
    b = layers.Conv2D(5, 2, padding="same", activation="relu")(x)  # 1 channel, K = 4, ReLU
    c = layers.Conv2D(5, 3, padding="same")(x)  # 3x3 windows: runs of inside pixels between padded edges
    y = layers.Conv2D(6, (3, 2), strides=3)(layers.Add()([layers.Add()([a, b]), c]))  # 3x5 pixels
    model = keras.Model(x, layers.Reshape((15, 6))(y))
    rng = np.random.default_rng(0)
    rep = [rng.uniform(-0.5, 1.5, (9, 14, 1)).astype(np.float32) for _ in range(16)]  # input zero point far from 0
    return align(quantize_int8(model, rep))


@functools.cache
def broadcast_zoo() -> bytes:
    import keras

    keras.utils.set_random_seed(4)
    layers = keras.layers
    x = keras.Input((3, 5, 4))
    h = layers.Conv2D(6, 3, padding="same")(x)
    over_hw = layers.Lambda(lambda t: keras.ops.mean(t, axis=(1, 2), keepdims=True))(h)
    over_c = layers.Lambda(lambda t: keras.ops.mean(t, axis=-1, keepdims=True))(h)
    y = layers.Add()([layers.Add()([h, over_hw]), over_c])
    model = keras.Model(x, layers.Reshape((15, 6))(y))
    rng = np.random.default_rng(0)
    rep = [rng.uniform(-1, 1, (3, 5, 4)).astype(np.float32) for _ in range(16)]
    return align(quantize_int8(model, rep))


def _board_matches_tflm(elf: Path, tflite: bytes) -> list[bool]:
    """Per clip (4 random int8 inputs): whether the board's 90 outputs equal the host TFLM's."""
    spec, _ = io_specs(tflite)
    elements = int(np.prod(spec.shape))
    rng = np.random.default_rng(1)
    reference = TflmRunner(tflite)
    matches = []
    with qemu.running(BOARD, elf) as emu, BoardLink(emu.url) as link:
        assert link.hello().clip_samples == elements
        for clip_id in range(4):
            x = rng.integers(-128, 128, elements).astype(np.int16)
            expected = reference(x.astype(np.int8)).tolist()
            assert len(expected) == 90
            matches.append(list(link.classify(x, clip_id).scores) == expected)
    return matches


def _runs_bit_exact(tflite: bytes, own_symbols: list[str]) -> None:
    from elftools.elf.elffile import ELFFile

    from host.firmware import build

    elf = build(BOARD, tflite, DEPS)
    with open(elf, "rb") as f:
        symbols = ELFFile(f).get_section_by_name(".symtab")
        for name in own_symbols:
            assert symbols.get_symbol_by_name(name), f"the firmware does not link our {name}"
    assert _board_matches_tflm(elf, tflite) == [True] * 4


@needs_deps
def test_convolutions_run_our_kernel_bit_exact() -> None:
    tflite = conv_zoo()
    assert [name for name, _ in op_versions(tflite)] == ["CONV_2D", "RESHAPE"]
    _runs_bit_exact(tflite, ["ser_conv_s8"])


@needs_deps
def test_convolution_blocks_and_requantization_paths_bit_exact() -> None:
    tflite = conv_zoo_blocks()
    assert [name for name, _ in op_versions(tflite)] == ["CONV_2D", "RESHAPE"]
    _runs_bit_exact(tflite, ["ser_conv_s8"])


@needs_deps
def test_whole_group_channel_loop_bit_exact() -> None:
    tflite = conv_zoo_whole_groups()
    assert [name for name, _ in op_versions(tflite)] == ["CONV_2D", "RESHAPE"]
    _runs_bit_exact(tflite, ["ser_conv_s8"])


@needs_deps
def test_one_channel_convolutions_bit_exact() -> None:
    tflite = conv_zoo_one_channel()
    assert sorted(name for name, _ in op_versions(tflite)) == ["ADD", "CONV_2D", "RESHAPE"]
    _runs_bit_exact(tflite, ["ser_conv_s8"])


@needs_deps
def test_broadcast_add_and_means_run_our_kernels_bit_exact() -> None:
    tflite = broadcast_zoo()
    assert sorted(name for name, _ in op_versions(tflite)) == ["ADD", "CONV_2D", "MEAN", "RESHAPE"]
    _runs_bit_exact(tflite, ["_ZN3ser17Register_ADD_INT8Ev", "_ZN3ser18Register_MEAN_INT8Ev"])  # ser::Register_*


@needs_deps
@pytest.mark.parametrize("zoo", [conv_zoo, conv_zoo_whole_groups], ids=["first-chain", "assembly-channel-loop"])
def test_a_broken_rounding_step_is_caught(monkeypatch: pytest.MonkeyPatch, zoo: Callable[[], bytes]) -> None:
    """A convolution chain on a firmware whose kernels truncate instead of rounding (in a build
    folder of its own): the comparison with TFLM must fail. The first chain starts on the 1-channel
    path; the whole-group chain runs only the assembly channel loop."""
    from host.firmware import BUILD, build

    monkeypatch.setenv("SER_KERNEL_DEFINES", "SER_BREAK_ROUNDING")
    tflite = zoo()
    elf = build(BOARD, tflite, DEPS, out_dir=BUILD / "firmware" / f"{BOARD}-broken-rounding")
    assert not any(_board_matches_tflm(elf, tflite))


def _host_check(tmp_path: Path, *defines: str) -> subprocess.CompletedProcess:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no host C compiler")
    kernels = REPO / "firmware" / "kernels"
    exe = tmp_path / "conv_check"
    flags = ["-O1", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined"]
    flags += ["-fno-sanitize-recover=all", "-fno-omit-frame-pointer", *(f"-D{d}" for d in defines)]
    subprocess.run(
        [cc, *flags, "-I", str(kernels), str(REPO / "tests" / "conv_check.c"), str(kernels / "ser_conv_s8.c"), "-o", str(exe)],
        check=True,
    )
    # a mismatch returns early, its buffers not freed: no leak report then
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"} if defines else None
    return subprocess.run([str(exe), "2000", "7"], capture_output=True, text=True, timeout=300, env=env)


def test_convolution_c_code_on_the_host_under_asan(tmp_path: Path) -> None:
    """ser_conv_s8.c's portable paths (the same blocking, gather and requantization as on the board,
    without the DSP instructions) on 2,000 random shapes: 1-9 channels, strides, dilation, padding,
    every requantization path, the 1-channel path; no access past any buffer or the scratch."""
    run = _host_check(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok 2000 shapes")
    broken = _host_check(tmp_path, "SER_BREAK_ROUNDING")
    assert broken.returncode == 2 and "mismatch" in broken.stdout, broken.stdout + broken.stderr
