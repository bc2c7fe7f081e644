"""The board's C front end (firmware/app/ser_frontend.c): agreement with the NumPy reference, streaming
bit-exactness, int8 output, refusals, Cortex-M4 compilation, and the emitted tables driving it."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from host.native import FIRMWARE_APP
from tests.conftest import synthetic_clip
from train import frontend_c
from train.corpus import discover, read_wav
from train.frontend import (
    DEFAULT_LOGMEL,
    DEFAULT_WAVEFORM,
    FrontEndConfig,
    StreamingFrontEnd,
    clip_log_mel,
    features,
    fft_twiddles,
    fit_clip,
    model_input_int8,
    quantize_input,
    reference_features,
)

# C against NumPy (pocketfft, BLAS, libm log), in standardised units: float32 rounding differences only.
TOLERANCE = 1e-4
ARM_CC = ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
C_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off"]
STRICT = ["-Wpedantic", "-Wdouble-promotion", "-Wconversion", "-Wshadow"]
SOURCE = FIRMWARE_APP / "ser_frontend.c"
SPEAKER_NORM = FIRMWARE_APP / "ser_speaker_norm.c"  # the front end sums a speaker's values with it
SPEAKER_NORM_CALLS = {"ser_sn_add_value", "ser_sn_end_frame", "ser_sn_clear"}

LOGMEL = DEFAULT_LOGMEL.with_standardisation(-6.0, 3.5)
CONFIGS = {
    "default": LOGMEL,
    "small": replace(
        DEFAULT_LOGMEL, clip_samples=16000, n_fft=256, hop=100, n_mels=32, fmax=7600.0, pad="zero"
    ).with_standardisation(-5.0, 2.0),
    "gapped": replace(DEFAULT_LOGMEL, clip_samples=20000, n_fft=1024, hop=1100, n_mels=64).with_standardisation(-7.0, 4.0),
    # n_fft/2 = 2^8 and 2^4 complex points: radix-4 stages only, no radix-2 stage first
    "even_stages": replace(DEFAULT_LOGMEL, clip_samples=16000, n_fft=512, hop=160, n_mels=40).with_standardisation(-6.0, 3.0),
    "tiny_fft": replace(
        DEFAULT_LOGMEL, clip_samples=4000, n_fft=32, hop=16, n_mels=4, fmax=8000.0, pad="zero"
    ).with_standardisation(-6.0, 3.0),
}


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed: run scripts/bootstrap (installs gcc-arm-none-eabi and gcc)")


def clips(cfg: FrontEndConfig) -> dict[str, np.ndarray]:
    """Board inputs with loud, ordinary, barely audible and silent content."""
    loud = np.clip(synthetic_clip(5, 3, 2, 3.0).astype(np.int32) * 3, -32768, 32767).astype(np.int16)
    quiet = (synthetic_clip(1, 0, 0, 3.0) // 2000).astype(np.int16)  # a few LSB
    out = {"loud": loud, "quiet": quiet, "silence": np.zeros(cfg.clip_samples, np.int16)}
    out |= {f"emotion{e}": synthetic_clip(e, e % 4, e, 2.5) for e in (0, 2, 4)}
    return {name: fit_clip(pcm, cfg) for name, pcm in out.items()}


def scale_of(cfg: FrontEndConfig) -> tuple[float, int]:
    """A realistic int8 input quantization: the synthetic clips' feature range over 256 steps."""
    values = np.concatenate([features(pcm, cfg).ravel() for pcm in clips(cfg).values()])
    scale = float(np.float32((values.max() - values.min()) / 255))
    return scale, int(np.clip(round(-128 - values.min() / scale), -128, 127))


# ---- 1. agreement with the NumPy reference ----


@pytest.mark.parametrize("name", CONFIGS)
def test_c_matches_numpy_reference(name: str) -> None:
    cfg = CONFIGS[name]
    for clip, pcm in clips(cfg).items():
        ours, ref = features(pcm, cfg), reference_features(pcm, cfg)
        assert ours.dtype == np.float32 and ours.shape == ref.shape == cfg.input_shape
        assert np.abs(ours - ref).max() <= TOLERANCE, clip


def test_unstandardised_c_output_is_log_mel_frames() -> None:
    cfg = DEFAULT_LOGMEL
    pcm = fit_clip(synthetic_clip(3, 1, 1, 3.0), cfg)
    ref = clip_log_mel(pcm, cfg).T
    np.testing.assert_allclose(features(pcm, cfg)[:, :, 0], ref, rtol=0, atol=TOLERANCE)


def test_c_matches_numpy_reference_on_real_clips(casia_root: Path) -> None:
    chosen = discover(casia_root)[::200][:6]
    pcms = [read_wav(casia_root / c.path) for c in chosen]
    values = np.concatenate([clip_log_mel(p, LOGMEL).ravel() for p in pcms])
    cfg = DEFAULT_LOGMEL.with_standardisation(float(values.mean()), float(values.std()))
    for clip, pcm in zip(chosen, pcms, strict=True):
        board = fit_clip(pcm, cfg)
        assert np.abs(features(board, cfg) - reference_features(board, cfg)).max() <= TOLERANCE, clip.path


def test_waveform_is_bit_identical_to_numpy() -> None:
    cfg = DEFAULT_WAVEFORM
    for pcm in clips(cfg).values():
        assert features(pcm, cfg).tobytes() == reference_features(pcm, cfg).tobytes()


def test_ser_logf_is_within_one_ulp() -> None:
    lib = frontend_c.library()
    rng = np.random.default_rng(0)
    xs = np.concatenate(
        [
            np.exp(rng.uniform(-103.0, 88.0, 20000)).astype(np.float32),  # subnormals to near FLT_MAX
            np.float32(2.0) ** np.arange(-149, 128, dtype=np.float32),
            np.nextafter(np.float32(1), np.float32([0, 2])),
            np.float32([1e-6, 0.5, np.sqrt(2), np.float32(np.sqrt(2)) * np.float32(1.0000001)]),
        ]
    )
    xs = xs[(xs > 0) & np.isfinite(xs)]
    ours = np.array([lib.ser_logf(float(x)) for x in xs], np.float32)
    exact = np.log(xs.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert (np.abs(ours - exact) / ulp).max() <= 1.0
    assert lib.ser_logf(1.0) == 0.0
    assert lib.ser_logf(0.0) == -np.inf and lib.ser_logf(np.inf) == np.inf and np.isnan(lib.ser_logf(-1.0))


@pytest.mark.parametrize("n_fft", [512, 1024])
def test_twiddle_tables_are_cos_and_sin_of_the_fft_angles(n_fft: int) -> None:
    cos, sin = fft_twiddles(replace(DEFAULT_LOGMEL, n_fft=n_fft))
    k = np.arange(n_fft // 2)
    assert cos.dtype == sin.dtype == np.float32 and len(cos) == len(sin) == n_fft // 2
    assert cos.tobytes() == np.cos(2 * np.pi * k / n_fft).astype(np.float32).tobytes()
    assert sin.tobytes() == np.sin(2 * np.pi * k / n_fft).astype(np.float32).tobytes()


# ---- 2. streaming equals one push, bit for bit ----


@pytest.mark.parametrize("cfg", [LOGMEL, CONFIGS["gapped"], DEFAULT_WAVEFORM], ids=["logmel", "gapped", "waveform"])
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_streaming_chunks_equal_one_push(cfg: FrontEndConfig, int8: bool) -> None:
    pcm = fit_clip(synthetic_clip(4, 2, 1, 3.5), cfg)
    scale, zero_point = scale_of(cfg) if int8 else (None, 0)
    whole = model_input_int8(pcm, cfg, scale, zero_point) if int8 else features(pcm, cfg)
    for chunk in (1, 77, 320, 4096):
        stream = StreamingFrontEnd(cfg, scale, zero_point)
        for i in range(0, len(pcm), chunk):
            stream.push(pcm[i : i + chunk])
        assert stream.result().tobytes() == whole.tobytes(), chunk


# ---- 3. int8 from C is the quantization of C's float output ----


@pytest.mark.parametrize("cfg", [LOGMEL, CONFIGS["small"], DEFAULT_WAVEFORM], ids=["logmel", "small", "waveform"])
def test_int8_is_quantized_float_output(cfg: FrontEndConfig) -> None:
    scale, zero_point = scale_of(cfg)
    for s, zp in ((scale, zero_point), (scale / 8, 0), (scale * 3, -128), (np.float32(0.25), 127)):
        for pcm in clips(cfg).values():
            q = model_input_int8(pcm, cfg, float(s), zp)
            assert q.dtype == np.int8 and q.shape == cfg.input_shape
            assert q.tobytes() == quantize_input(features(pcm, cfg), float(s), zp).tobytes()


def test_int8_rounds_ties_to_even_like_numpy() -> None:
    cfg = replace(DEFAULT_WAVEFORM, waveform_gain=1.0)
    pcm = fit_clip(np.arange(-300, 300, dtype=np.int16), cfg)
    scale = 2.0 / 32768  # value / scale = pcm / 2: every odd sample is a tie
    q = model_input_int8(pcm, cfg, scale, 3)
    assert q.tobytes() == quantize_input(features(pcm, cfg), scale, 3).tobytes()
    assert q[0, :6, 0].tolist() == [-128, -128, -128, -128, -128, -128]
    half = {-3: -2 + 3, -1: 0 + 3, 1: 0 + 3, 3: 2 + 3, 5: 2 + 3}  # round(pcm / 2): -1.5->-2, -0.5->0, 0.5->0, 1.5->2, 2.5->2
    lib = frontend_c.library()
    for sample, expected in half.items():
        assert lib.ser_fe_quantize(sample / 32768, scale, 3) == expected


# ---- 5. refusals ----


class Raw:
    """Direct calls into the C API with guard bytes around the output (catches any write out of bounds)."""

    GUARD = 64

    def __init__(self, cfg: FrontEndConfig, int8: bool, struct: frontend_c._Config | None = None) -> None:
        self.lib = frontend_c.library()
        self.native = frontend_c.native_config(cfg, 0.05, -3)
        self.struct = struct or self.native.struct
        self.cfg, self.int8 = cfg, int8
        n = int(np.prod(cfg.input_shape))
        self.buf = np.full(n + 2 * self.GUARD, 0x55, np.int8) if int8 else np.full(n + 2 * self.GUARD, 7.5, np.float32)
        self.state = np.zeros(self.lib.ser_fe_state_size(), np.uint8)
        self.workspace = np.zeros(self.native.workspace + 1, np.float32)

    def init(self, workspace: int | None = None) -> int:
        floats = self.native.workspace if workspace is None else workspace
        return self.lib.ser_fe_init(self.state.ctypes.data, ctypes.addressof(self.struct), self.workspace.ctypes.data, floats)

    def push(self, pcm: np.ndarray) -> int:
        fn = self.lib.ser_fe_push if self.int8 else self.lib.ser_fe_push_float
        out = self.buf.ctypes.data + self.GUARD * self.buf.itemsize
        return fn(self.state.ctypes.data, pcm.ctypes.data, len(pcm), out)

    @property
    def received(self) -> int:
        return self.lib.ser_fe_received(self.state.ctypes.data)

    def guards_intact(self) -> bool:
        fill = self.buf[0]
        return bool((self.buf[: self.GUARD] == fill).all() and (self.buf[-self.GUARD :] == fill).all())


@pytest.mark.parametrize("cfg", [CONFIGS["small"], replace(DEFAULT_WAVEFORM, clip_samples=5000)], ids=["logmel", "waveform"])
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_overfull_push_is_refused_and_writes_nothing(cfg: FrontEndConfig, int8: bool) -> None:
    raw = Raw(cfg, int8)
    pcm = fit_clip(synthetic_clip(2, 0, 0, 2.0), cfg)
    assert raw.init() == 0
    assert raw.push(pcm[:-5]) == 0 and raw.received == cfg.clip_samples - 5
    before = raw.buf.copy()
    assert raw.push(pcm[-5:].repeat(2)) == frontend_c.ERR_TOO_MANY
    assert raw.buf.tobytes() == before.tobytes() and raw.received == cfg.clip_samples - 5
    assert not raw.lib.ser_fe_done(raw.state.ctypes.data)
    assert raw.push(pcm[-5:]) == 0 and raw.lib.ser_fe_done(raw.state.ctypes.data)
    assert raw.push(pcm[:1]) == frontend_c.ERR_TOO_MANY
    assert raw.guards_intact()
    out = raw.buf[Raw.GUARD : -Raw.GUARD].reshape(cfg.input_shape)
    expected = model_input_int8(pcm, cfg, 0.05, -3) if int8 else features(pcm, cfg)
    assert out.tobytes() == expected.tobytes()


def test_python_wrappers_refuse_overfull_and_incomplete_clips() -> None:
    cfg = CONFIGS["small"]
    stream = StreamingFrontEnd(cfg, 0.1, 0)
    stream.push(np.zeros(cfg.clip_samples - 1, np.int16))
    with pytest.raises(ValueError, match="incomplete"):
        stream.result()
    with pytest.raises(ValueError, match="more than"):
        stream.push(np.zeros(2, np.int16))
    with pytest.raises(ValueError, match="exactly"):
        features(np.zeros(cfg.clip_samples + 1, np.int16), cfg)
    with pytest.raises(ValueError, match="int16"):
        features(np.full(cfg.clip_samples, 0.5), cfg)


def _broken(**changes: object) -> frontend_c._Config:
    struct = frontend_c._Config.from_buffer_copy(frontend_c.native_config(CONFIGS["small"], 0.05, -3).struct)
    for name, value in changes.items():
        setattr(struct, name, value)
    return struct


@pytest.mark.parametrize(
    "changes",
    [
        {"n_fft": 250, "num_frames": 1 + (16000 - 250) // 100},  # not a power of two
        {"n_fft": 2, "num_frames": 1 + (16000 - 2) // 100},
        {"hop": 0},
        {"num_frames": 150},  # inconsistent with clip_samples, n_fft, hop
        {"clip_samples": 100, "num_frames": 1},  # shorter than one frame
        {"std": 0.0},
        {"input_scale": 0.0},
        {"input_scale": float("nan")},
        {"window": None},
        {"kind": 0},
    ],
    ids=lambda c: ",".join(c),
)
def test_bad_config_is_refused(changes: dict) -> None:
    raw = Raw(CONFIGS["small"], True, _broken(**changes))
    assert raw.init() == -2


def test_non_power_of_two_fft_is_refused_from_python() -> None:
    cfg = replace(CONFIGS["small"], n_fft=500)
    with pytest.raises(ValueError, match="bad configuration"):
        features(fit_clip(synthetic_clip(0, 0, 0, 1.0), cfg), cfg)


def test_mel_range_beyond_the_spectrum_is_refused() -> None:
    native = frontend_c.native_config(CONFIGS["small"], 0.05, -3)
    starts = native.arrays[3].copy()
    starts[-1] = 200  # 200 + count > 129 bins
    raw = Raw(CONFIGS["small"], True, _broken(mel_start=starts.ctypes.data))
    assert raw.init() == -2


def test_small_workspace_and_bad_state_are_refused() -> None:
    cfg = CONFIGS["small"]
    raw = Raw(cfg, True)
    need_floats = raw.lib.ser_fe_workspace_floats(ctypes.addressof(raw.struct))
    assert need_floats == frontend_c.workspace_floats(cfg) == 2 * 256 + 1
    assert raw.init(need_floats - 1) == -3
    pcm = np.zeros(10, np.int16)
    assert raw.push(pcm) == -1  # the failed init left no usable state
    assert raw.lib.ser_fe_init(None, ctypes.addressof(raw.struct), raw.workspace.ctypes.data, need_floats) == -1
    assert raw.init() == 0 and raw.push(pcm) == 0


def test_threads_share_nothing() -> None:
    cfg = LOGMEL
    pcms = [fit_clip(synthetic_clip(e, s, 0, 3.0), cfg) for e in range(6) for s in range(2)]
    serial = [features(p, cfg).tobytes() for p in pcms]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda p: features(p, cfg).tobytes(), pcms * 3))
    assert parallel == serial * 3


# ---- 4. the C files compile warning-free for the board ----


@pytest.mark.parametrize("opt", ["-O0", "-O2", "-Os"])
def test_compiles_warning_free_for_cortex_m4_without_libm(opt: str, tmp_path: Path) -> None:
    need("arm-none-eabi-gcc")
    nm = shutil.which("arm-none-eabi-nm")
    for source in (SOURCE, SPEAKER_NORM):
        obj = tmp_path / f"{source.stem}.o"
        result = subprocess.run(
            [*ARM_CC, *C_FLAGS, *STRICT, opt, "-c", str(source), "-o", str(obj)], capture_output=True, text=True
        )
        assert result.returncode == 0 and not result.stderr, result.stderr
        if not nm:
            continue
        undefined = set(subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()[1::2])
        if source == SOURCE:  # no libm, no soft-float double helpers on the per-frame path
            assert undefined <= {"memset", "memcpy"} | SPEAKER_NORM_CALLS, undefined
        else:  # the statistics, once per clip, may use the soft double helpers, never libm
            assert {u for u in undefined if not u.startswith("__aeabi_")} <= {"memset", "memcpy"}, undefined


def test_compiles_warning_free_on_the_host_in_c_and_cxx(tmp_path: Path) -> None:
    need("gcc")
    result = subprocess.run(
        ["gcc", *C_FLAGS, *STRICT, "-O2", "-c", str(SOURCE), str(SPEAKER_NORM)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    if shutil.which("g++"):
        (tmp_path / "use.cc").write_text('#include "ser_frontend.h"\nint ser_size() { return (int)ser_fe_state_size(); }\n')
        cmd = [
            "g++",
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{FIRMWARE_APP}",
            "-c",
            str(tmp_path / "use.cc"),
            "-o",
            str(tmp_path / "use.o"),
        ]
        subprocess.run(cmd, check=True)


# ---- the emitted tables and SER_FE_CONFIG_INIT drive the C code to the host's bits ----

MAIN_C = """#include <stdio.h>
#include "model_config.h"
#include "ser_frontend.h"

static const ser_fe_config cfg = SER_FE_CONFIG_INIT;
static float workspace[SER_FE_WORKSPACE_FLOATS + 1];
static int16_t pcm[SER_FE_CLIP_SAMPLES];
static int8_t input[SER_INPUT_ELEMENTS];

int main(void) {
  ser_fe_state st;
  if (fread(pcm, sizeof pcm[0], SER_FE_CLIP_SAMPLES, stdin) != SER_FE_CLIP_SAMPLES) return 2;
  if (ser_fe_workspace_floats(&cfg) != SER_FE_WORKSPACE_FLOATS) return 3;
  if (ser_fe_init(&st, &cfg, workspace, SER_FE_WORKSPACE_FLOATS) != SER_FE_OK) return 4;
  for (size_t at = 0; at < SER_FE_CLIP_SAMPLES; at += 333) {
    size_t n = SER_FE_CLIP_SAMPLES - at < 333 ? SER_FE_CLIP_SAMPLES - at : 333;
    if (ser_fe_push(&st, pcm + at, n, input) != SER_FE_OK) return 5;
  }
  if (!ser_fe_done(&st)) return 6;
  fwrite(input, 1, sizeof input, stdout);
  return 0;
}
"""


def _tiny_model_tflite(cfg: FrontEndConfig) -> bytes:
    """A small int8 model carrying ``cfg`` in its metadata, as ``ser-convert`` writes them."""
    import keras

    from convert.quantize import quantize_int8
    from convert.tflite_file import METADATA_NAME, with_metadata
    from train.labels import EMOTIONS

    inputs = keras.Input(cfg.input_shape)
    kernel, strides = ((1, 9), (1, 8)) if cfg.kind == "waveform" else ((3, 3), (2, 2))
    x = keras.layers.Conv2D(4, kernel, strides=strides, activation="relu")(inputs)
    outputs = keras.layers.Dense(6, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    rep = [features(fit_clip(synthetic_clip(e, 0, 0, 1.5), cfg), cfg) for e in range(6)]
    tflite = quantize_int8(keras.Model(inputs, outputs), rep)
    return with_metadata(tflite, {"format": 1, "frontend": cfg.__dict__, "labels": list(EMOTIONS)}, METADATA_NAME)


@pytest.mark.parametrize(
    "cfg",
    [replace(CONFIGS["small"], clip_samples=8000).with_standardisation(-5.5, 2.5), replace(DEFAULT_WAVEFORM, clip_samples=8000)],
    ids=["logmel", "waveform"],
)
def test_emitted_tables_run_the_c_front_end_to_the_hosts_bits(cfg: FrontEndConfig, tmp_path: Path) -> None:
    need("gcc")
    from convert.emit import render
    from convert.tflite_file import io_specs

    tflite = _tiny_model_tflite(cfg)
    gen = tmp_path / "gen"
    gen.mkdir()
    for name, text in render(tflite, arena_measured=4096).items():
        (gen / name).write_text(text)
    (gen / "main.c").write_text(MAIN_C)
    config = (gen / "model_config.h").read_text()
    assert f"#define SER_FE_WORKSPACE_FLOATS {frontend_c.workspace_floats(cfg)}" in config
    if cfg.kind == "logmel":
        tables = (gen / "frontend_tables.c").read_text()
        for name, values in zip(("g_fe_fft_cos", "g_fe_fft_sin"), fft_twiddles(cfg), strict=True):
            body = tables[tables.index(name) : tables.index("};", tables.index(name))].split("=", 1)[1]
            parsed = np.array([float(v) for v in re.findall(r"[-+0-9.e]+(?=f)", body)], np.float32)
            assert parsed.tobytes() == values.tobytes(), name
    exe = tmp_path / "fe"
    sources = [str(gen / "main.c"), str(gen / "frontend_tables.c"), str(SOURCE), str(SPEAKER_NORM)]
    subprocess.run(["gcc", *C_FLAGS, "-O2", f"-I{gen}", f"-I{FIRMWARE_APP}", *sources, "-o", str(exe)], check=True)
    if shutil.which("arm-none-eabi-gcc"):
        arm_obj = tmp_path / "main_arm.o"
        subprocess.run(
            [*ARM_CC, *C_FLAGS, f"-I{gen}", f"-I{FIRMWARE_APP}", "-c", str(gen / "main.c"), "-o", str(arm_obj)], check=True
        )
    in_spec = io_specs(tflite)[0]
    for e in range(3):
        pcm = fit_clip(synthetic_clip(e, 1, 2, 0.7 + 0.4 * e), cfg)
        board = subprocess.run([str(exe)], input=pcm.astype("<i2").tobytes(), capture_output=True, check=True).stdout
        assert board == model_input_int8(pcm, cfg, in_spec.scale, in_spec.zero_point).tobytes()
