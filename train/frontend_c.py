"""ctypes binding of the board's front end (``firmware/app/ser_frontend.c``), so the host makes the same bits.

The C file is compiled for the host by ``host.native`` (cached, rebuilt when it changes) with the
board's float rules (no fused multiply-adds). Each thread (and each ``NativeFrontEnd``) has its own
state and workspace, so the training loader's worker threads may call it at once; ctypes releases
the GIL during the C call, so they also run in parallel.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass

import numpy as np

from host.native import FIRMWARE_APP, load
from train.frontend import FrontEndConfig, _tables, fft_twiddles, sparse_mel

KINDS = {"waveform": 1, "logmel": 2}  # SER_FE_WAVEFORM, SER_FE_LOGMEL
ERRORS = {-1: "bad argument or uninitialised state", -2: "bad configuration", -3: "workspace too small", -4: "too many samples"}
ERR_TOO_MANY = -4


class _Config(ctypes.Structure):
    """Mirror of ``ser_fe_config`` (same field order and types)."""

    _fields_ = [
        ("kind", ctypes.c_int),
        ("clip_samples", ctypes.c_uint32),
        ("waveform_gain", ctypes.c_float),
        ("n_fft", ctypes.c_uint16),
        ("hop", ctypes.c_uint16),
        ("n_mels", ctypes.c_uint16),
        ("num_frames", ctypes.c_uint16),
        ("log_offset", ctypes.c_float),
        ("mean", ctypes.c_float),
        ("std", ctypes.c_float),
        ("window", ctypes.c_void_p),
        ("fft_cos", ctypes.c_void_p),
        ("fft_sin", ctypes.c_void_p),
        ("mel_start", ctypes.c_void_p),
        ("mel_count", ctypes.c_void_p),
        ("mel_offset", ctypes.c_void_p),
        ("mel_weights", ctypes.c_void_p),
        ("input_scale", ctypes.c_float),
        ("input_zero_point", ctypes.c_int32),
    ]


_lock = threading.Lock()


@functools.cache
def _build() -> ctypes.CDLL:
    # -O3 only vectorizes the element-wise loops (same IEEE results); without -ffast-math nothing is reassociated.
    lib = load("ser_frontend", [FIRMWARE_APP / "ser_frontend.c"], [FIRMWARE_APP], ["-O3"])
    vp, size = ctypes.c_void_p, ctypes.c_size_t
    signatures = {
        "ser_fe_workspace_floats": (size, [vp]),
        "ser_fe_init": (ctypes.c_int, [vp, vp, vp, size]),
        "ser_fe_push": (ctypes.c_int, [vp, vp, size, vp]),
        "ser_fe_push_float": (ctypes.c_int, [vp, vp, size, vp]),
        "ser_fe_done": (ctypes.c_int, [vp]),
        "ser_fe_received": (ctypes.c_uint32, [vp]),
        "ser_logf": (ctypes.c_float, [ctypes.c_float]),
        "ser_fe_quantize": (ctypes.c_int8, [ctypes.c_float, ctypes.c_float, ctypes.c_int32]),
        "ser_fe_state_size": (size, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def library() -> ctypes.CDLL:
    """The compiled front end (built on first use; one build even if threads race here)."""
    with _lock:
        return _build()


def workspace_floats(cfg: FrontEndConfig) -> int:
    """Floats of workspace the C front end needs (``ser_fe_workspace_floats``; emitted for the firmware)."""
    return 2 * cfg.n_fft + cfg.n_fft // 2 + 1 if cfg.kind == "logmel" else 0


@dataclass(frozen=True, eq=False)
class NativeConfig:
    """A filled ``ser_fe_config`` and the arrays its pointers point into (kept alive with it)."""

    struct: _Config
    arrays: tuple[np.ndarray, ...]
    workspace: int

    @property
    def address(self) -> int:
        return ctypes.addressof(self.struct)


@functools.lru_cache(maxsize=8)
def _logmel_tables(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> tuple[np.ndarray, ...]:
    """Window, twiddles and sparse mel bank, exactly the tables ``ser-emit`` writes for the board."""
    window, fb = _tables(sample_rate, n_fft, n_mels, fmin, fmax)  # the NumPy reference's own tables
    cos, sin = fft_twiddles(FrontEndConfig(kind="logmel", n_fft=n_fft))
    starts, counts, offsets, weights = sparse_mel(fb)
    u16 = [np.ascontiguousarray(v, np.uint16) for v in (starts, counts, offsets)]
    return (np.ascontiguousarray(window), cos, sin, *u16, np.ascontiguousarray(weights, np.float32))


@functools.lru_cache(maxsize=32)
def native_config(cfg: FrontEndConfig, input_scale: float = 1.0, input_zero_point: int = 0) -> NativeConfig:
    """The C configuration of ``cfg`` (the int8 scale/zero point only matter for int8 output)."""
    if cfg.kind not in KINDS:
        raise ValueError(f"no C front end for kind {cfg.kind!r}")
    struct = _Config(
        kind=KINDS[cfg.kind],
        clip_samples=cfg.clip_samples,
        waveform_gain=cfg.waveform_gain,
        input_scale=input_scale,
        input_zero_point=input_zero_point,
    )
    arrays: tuple[np.ndarray, ...] = ()
    if cfg.kind == "logmel":
        for name in ("n_fft", "hop", "n_mels", "num_frames"):
            if not 0 < getattr(cfg, name) <= 0xFFFF:
                raise ValueError(f"{name}={getattr(cfg, name)} does not fit the C front end's uint16")
            setattr(struct, name, getattr(cfg, name))
        struct.log_offset, struct.mean, struct.std = cfg.log_offset, cfg.mean, cfg.std
        arrays = _logmel_tables(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
        fields = ("window", "fft_cos", "fft_sin", "mel_start", "mel_count", "mel_offset", "mel_weights")
        for field, array in zip(fields, arrays, strict=True):
            setattr(struct, field, array.ctypes.data)
    return NativeConfig(struct, arrays, workspace_floats(cfg))


class NativeFrontEnd:
    """One clip through the C front end, pushed in chunks; float features or the int8 model input.

    ``input_scale=None`` gives float32 features (``ser_fe_push_float``); otherwise the int8 tensor
    (``ser_fe_push``) with that scale and zero point. ``out`` has ``cfg.input_shape``.
    """

    def __init__(self, cfg: FrontEndConfig, input_scale: float | None = None, input_zero_point: int = 0) -> None:
        self._lib = library()
        self.cfg = cfg
        self._int8 = input_scale is not None
        self._native = native_config(cfg, float(input_scale) if self._int8 else 1.0, int(input_zero_point))
        self.out = np.zeros(cfg.input_shape, np.int8 if self._int8 else np.float32)
        self._state = np.zeros(_state_size(), np.uint8)
        self._workspace = np.zeros(max(1, self._native.workspace), np.float32)
        self._push = self._lib.ser_fe_push if self._int8 else self._lib.ser_fe_push_float
        workspace = self._workspace.ctypes.data
        self._check(self._lib.ser_fe_init(self._state.ctypes.data, self._native.address, workspace, self._native.workspace))

    def _check(self, rc: int) -> None:
        if rc == ERR_TOO_MANY:
            raise ValueError(f"more than {self.cfg.clip_samples} samples pushed")
        if rc != 0:
            raise ValueError(f"C front end: {ERRORS.get(rc, rc)}")

    def push(self, chunk: np.ndarray) -> None:
        pcm = np.ascontiguousarray(chunk, np.int16)
        self._check(self._push(self._state.ctypes.data, pcm.ctypes.data, len(pcm), self.out.ctypes.data))

    @property
    def received(self) -> int:
        return int(self._lib.ser_fe_received(self._state.ctypes.data))

    @property
    def done(self) -> bool:
        return bool(self._lib.ser_fe_done(self._state.ctypes.data))


_scratch = threading.local()
_BYTE = ctypes.c_char * 1


def _address(array: np.ndarray) -> int:
    """Data address of a contiguous array (``from_buffer`` is about twice as fast as ``.ctypes.data``)."""
    return ctypes.addressof(_BYTE.from_buffer(array)) if array.flags.writeable and array.nbytes else array.ctypes.data


def _thread_scratch(workspace: int) -> tuple[int, int]:
    """This thread's state and workspace addresses for one-shot runs (reused: ``ser_fe_init`` resets them)."""
    held = getattr(_scratch, "held", None)
    if held is None or held[0].size < workspace:
        arrays = (np.zeros(max(1, workspace), np.float32), np.zeros(_state_size(), np.uint8))
        held = _scratch.held = (*arrays, arrays[0].ctypes.data, arrays[1].ctypes.data)
    return held[3], held[2]


def run(board_pcm: np.ndarray, cfg: FrontEndConfig, input_scale: float | None = None, input_zero_point: int = 0) -> np.ndarray:
    """A whole clip in one push: float features, or the int8 model input when ``input_scale`` is given.

    The lean form of ``NativeFrontEnd`` (per-thread scratch, no zeroing): it runs for every clip of
    every training epoch, and must not cost more than the NumPy reference.
    """
    lib = library()
    int8 = input_scale is not None
    native = native_config(cfg, float(input_scale) if int8 else 1.0, int(input_zero_point))
    pcm = np.ascontiguousarray(board_pcm, np.int16)
    out = np.empty(cfg.input_shape, np.int8 if int8 else np.float32)
    state, workspace = _thread_scratch(native.workspace)
    rc = lib.ser_fe_init(state, native.address, workspace, native.workspace)
    if rc == 0:
        push = lib.ser_fe_push if int8 else lib.ser_fe_push_float
        rc = push(state, _address(pcm), len(pcm), _address(out))
    if rc != 0:
        raise ValueError(f"C front end: {ERRORS.get(rc, rc)}")
    if not lib.ser_fe_done(state):
        raise ValueError(f"front end takes exactly {cfg.clip_samples} samples, got {len(pcm)}")
    return out


@functools.cache
def _state_size() -> int:
    return int(library().ser_fe_state_size())
