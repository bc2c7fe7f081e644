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


class _Sums(ctypes.Structure):
    """Mirror of ``ser_sn_sums``."""

    _fields_ = [
        ("mode", ctypes.c_uint8),
        ("n_bins", ctypes.c_uint16),
        ("n_mels", ctypes.c_uint16),
        ("clips", ctypes.c_uint32),
        ("frames", ctypes.c_uint32),
        ("sum", ctypes.c_void_p),
        ("squares", ctypes.c_void_p),
    ]


SPEAKER_NORM_MODES = {"scalar": 1, "bins": 2}  # SER_SN_SCALAR, SER_SN_BINS
_lock = threading.Lock()


@functools.cache
def _build() -> ctypes.CDLL:
    # -O3 only vectorizes the element-wise loops (same IEEE results); without -ffast-math nothing is reassociated.
    sources = [FIRMWARE_APP / "ser_frontend.c", FIRMWARE_APP / "ser_speaker_norm.c", FIRMWARE_APP / "ser_embedding_norm.c"]
    lib = load("ser_frontend", sources, [FIRMWARE_APP], ["-O3"])
    vp, size, u16, u32, i32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int
    signatures = {
        "ser_fe_normalise": (i32, [vp, vp, vp, vp]),
        "ser_sn_init": (i32, [vp, ctypes.c_uint8, u16, vp, vp]),
        "ser_sn_clear": (None, [vp]),
        "ser_sn_add_clip": (None, [vp, vp, u32]),
        "ser_sn_commit": (i32, [vp, vp]),
        "ser_sn_plausible": (i32, [vp]),
        "ser_sn_stats": (i32, [vp, vp, vp, vp, vp]),
        "ser_sn_sqrtf": (ctypes.c_float, [ctypes.c_float]),
        "ser_sn_sums_size": (size, []),
        "ser_en_init": (i32, [vp, u16, vp, vp]),
        "ser_en_clear": (None, [vp]),
        "ser_en_add": (i32, [vp, vp]),
        "ser_en_plausible": (i32, [vp]),
        "ser_en_stats": (i32, [vp, vp, vp, vp]),
        "ser_en_classify": (i32, [vp, vp, vp, vp, vp, vp]),
        "ser_en_sums_size": (size, []),
        "ser_en_head_size": (size, []),
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
    return 2 * cfg.n_fft + 1 if cfg.kind == "logmel" else 0


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


@dataclass(frozen=True)
class SumsState:
    """What a board's speaker statistics hold (PROTOCOL.md 14): clips and frames heard, the int64 sums."""

    mode: str
    clips: int
    frames: int
    sum: tuple[int, ...]
    squares: tuple[int, ...]


class SpeakerSums:
    """``ser_sn_sums`` on the host: one voice's running sums of its unstandardised log-mel, in the board's arithmetic.

    Values are rounded to multiples of 2^-12 and summed as int64 by the C code itself, so these sums,
    and the statistics that follow from them, are the board's bit for bit.
    """

    def __init__(self, mode: str, n_mels: int) -> None:
        if mode not in SPEAKER_NORM_MODES:
            raise ValueError(f"speaker normalisation is one of {', '.join(SPEAKER_NORM_MODES)}, not {mode!r}")
        self._lib = library()
        self.mode, self.n_mels = mode, n_mels
        bins = n_mels if mode == "bins" else 1
        self.sum, self.squares = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
        self._struct = _Sums()
        rc = self._lib.ser_sn_init(self.address, SPEAKER_NORM_MODES[mode], n_mels, self.sum.ctypes.data, self.squares.ctypes.data)
        if rc != 0:
            raise ValueError(f"speaker statistics of {mode!r} over {n_mels} mel bands: not supported (at most 127 bins)")

    @property
    def address(self) -> int:
        return ctypes.addressof(self._struct)

    @property
    def clips(self) -> int:
        return int(self._struct.clips)

    @property
    def frames(self) -> int:
        return int(self._struct.frames)

    def clear(self) -> None:
        self._lib.ser_sn_clear(self.address)

    def add_clip(self, raw: np.ndarray) -> None:
        """One clip's unstandardised log-mel, (n_mels, frames) or (n_mels, frames, 1); counts its frames, not a clip."""
        x = np.ascontiguousarray(np.asarray(raw, np.float32).reshape(self.n_mels, -1))
        self._lib.ser_sn_add_clip(self.address, x.ctypes.data, x.shape[1])

    def commit(self, clip: SpeakerSums) -> bool:
        """Add ``clip``'s sums as one more clip; False (nothing added) once the sums are full, as on the board."""
        return self._lib.ser_sn_commit(self.address, clip.address) == 0

    def stats(self, prior: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean and std (n_mels float32 each); ``prior`` (1 or n_mels values each) before any frame."""
        mean, std = np.zeros(self.n_mels, np.float32), np.zeros(self.n_mels, np.float32)
        pm, ps = (np.ascontiguousarray(p, np.float32) for p in prior) if prior else (None, None)
        rc = self._lib.ser_sn_stats(
            self.address,
            None if pm is None else pm.ctypes.data,
            None if ps is None else ps.ctypes.data,
            mean.ctypes.data,
            std.ctypes.data,
        )
        if rc != 0:
            raise ValueError("no audio summed yet and no prior given: statistics need at least one clip")
        return mean, std

    def state(self) -> SumsState:
        return SumsState(self.mode, self.clips, self.frames, tuple(map(int, self.sum)), tuple(map(int, self.squares)))

    def load(self, state: SumsState) -> None:
        """Take over a state (a board's, or a saved one); refused if it cannot be sums of real values."""
        if state.mode != self.mode or len(state.sum) != len(self.sum) or len(state.squares) != len(self.squares):
            raise ValueError(f"a {state.mode} state of {len(state.sum)} bins does not fit {self.mode} over {len(self.sum)}")
        kept = self.state()
        self.sum[:], self.squares[:] = state.sum, state.squares
        self._struct.clips, self._struct.frames = state.clips, state.frames
        if not self._lib.ser_sn_plausible(self.address):
            self.sum[:], self.squares[:] = kept.sum, kept.squares  # refused: the sums stay as they were
            self._struct.clips, self._struct.frames = kept.clips, kept.frames
            raise ValueError("these sums cannot come from real audio (negative squares, or more frames than the limit)")


class SpeakerStream:
    """The board's per-speaker normalisation: each clip standardised by the statistics of the clips before it.

    ``run`` does what the board does for one clip: statistics from the sums (the prior before any
    clip), the front end with them, then the clip's sums committed. ``reset`` and ``load`` are the
    NORM command's (PROTOCOL.md 14).
    """

    def __init__(self, cfg: FrontEndConfig) -> None:
        if cfg.speaker_norm == "off":
            raise ValueError("this front end has no per-speaker normalisation")
        self.cfg = cfg
        self.total = SpeakerSums(cfg.speaker_norm, cfg.n_mels)
        self.clip = SpeakerSums(cfg.speaker_norm, cfg.n_mels)  # the clip being heard
        self.prior = (np.array(cfg.prior_mean, np.float32), np.array(cfg.prior_std, np.float32))

    def current(self) -> tuple[np.ndarray, np.ndarray]:
        """The statistics the next clip gets."""
        return self.total.stats(self.prior)

    def run(self, board_pcm: np.ndarray, input_scale: float | None = None, input_zero_point: int = 0) -> np.ndarray:
        out = run(board_pcm, self.cfg, input_scale, input_zero_point, norm=(*self.current(), self.clip))
        self.total.commit(self.clip)
        return out

    def reset(self) -> None:
        self.total.clear()

    def state(self) -> SumsState:
        return self.total.state()

    def load(self, state: SumsState) -> None:
        self.total.load(state)


Norm = tuple[np.ndarray, np.ndarray, "SpeakerSums | None"]  # band means, band stds, where the clip's sums go


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

    def normalise(self, norm: Norm) -> None:
        """Standardise this clip by a speaker's statistics and sum its values (``ser_fe_normalise``); before any push."""
        self._norm = _norm_arrays(norm)  # kept alive while the C state points into them
        self._check(self._lib.ser_fe_normalise(self._state.ctypes.data, *self._norm[:3]))

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


def _norm_arrays(norm: Norm) -> tuple[int, int, int | None, np.ndarray, np.ndarray]:
    mean, std = (np.ascontiguousarray(v, np.float32) for v in norm[:2])
    return mean.ctypes.data, std.ctypes.data, None if norm[2] is None else norm[2].address, mean, std


def run(
    board_pcm: np.ndarray,
    cfg: FrontEndConfig,
    input_scale: float | None = None,
    input_zero_point: int = 0,
    norm: Norm | None = None,
) -> np.ndarray:
    """A whole clip in one push: float features, or the int8 model input when ``input_scale`` is given.
    ``norm``: a speaker's statistics for this clip and where its sums go (``SpeakerStream`` does both).

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
    if rc == 0 and norm is not None:
        arrays = _norm_arrays(norm)
        rc = lib.ser_fe_normalise(state, *arrays[:3])
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
