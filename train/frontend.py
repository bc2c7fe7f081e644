"""The one feature front end of both models: its parameters, its exact math, and a streaming form.

Every later stage (conversion, C emission, firmware, host evaluation) reads ``FrontEndConfig``
from the run folder; nothing else defines sample rate, clip length or spectrogram constants.

Exact math (float32 throughout, what the Cortex-M4F reproduces from the emitted tables):

1. Clip to board input (host side, ``fit_clip``): the board receives exactly ``clip_samples``
   int16 samples. A longer clip is cropped to its centre, ``start = (n - L) // 2``; a shorter
   clip is looped (``pad="loop"``: the clip repeated from its start until L samples) or
   zero-padded at its end (``pad="zero"``). The host sends only these L samples.
2. ``x[n] = pcm[n] / 32768``.
3. ``kind == "waveform"``: the model input is ``y[n] = x[n] * waveform_gain`` (shape ``(1, L, 1)``);
   one multiply per sample, so it streams trivially.
4. ``kind == "logmel"``: frame t covers samples ``[t*hop, t*hop + n_fft)`` (no centring, no
   padding, so frames can be made as samples arrive), ``T = 1 + (L - n_fft) // hop``.
   ``X_t = rfft(x_t * w)`` with ``w`` the periodic Hann window of length n_fft,
   ``P_t[k] = re^2 + im^2`` (k = 0..n_fft/2), ``M_t[m] = sum_k F[m, k] P_t[k]`` with ``F`` the
   Slaney mel filter bank (librosa ``filters.mel(htk=False, norm="slaney")``),
   ``S_t[m] = (ln(M_t[m] + log_offset) - mean) / std``. Model input shape ``(n_mels, T, 1)``
   (mel on the height axis, time on the width axis).
5. int8 model input (board): ``q = clamp(round_half_even(v / input_scale) + zero_point, -128, 127)``
   in float32 (``quantize_input``).

Who computes it: ``features``, ``model_input_int8`` and ``StreamingFrontEnd`` run the board's own C
code (``firmware/app/ser_frontend.c`` through ``train/frontend_c.py``), so host and board make the
same bits. That code fixes what the formulas leave open: float32 basic operations in a fixed order
without fused multiply-adds; rfft as an n_fft/2-point radix-4 complex FFT plus the split step, with
the twiddles of ``fft_twiddles``; mel sums over the sparse bank (``sparse_mel``) bin by bin from the
band's first bin; ``ln`` as ``ser_logf`` (FreeBSD's logf polynomial, under 1 ulp); ``(v - mean) / std``
as a subtraction then a division. ``log_mel_frames`` is the readable NumPy form of the same math
(pocketfft, BLAS sums, libm log): it agrees with the C code within 1e-4 in standardised units (tested;
about 1e-5 on CASIA), not bit for bit.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

SAMPLE_RATE = 16000
PCM_FULL_SCALE = 32768.0


@dataclass(frozen=True)
class FrontEndConfig:
    """All front-end constants. Stored as ``frontend.json`` in every run and emitted to C."""

    kind: Literal["waveform", "logmel"]
    sample_rate: int = SAMPLE_RATE
    clip_samples: int = 3 * SAMPLE_RATE
    pad: Literal["loop", "zero"] = "loop"
    crop: Literal["center"] = "center"
    # waveform
    waveform_gain: float = 1.0
    # log-mel
    # a 64 ms window resolves the harmonics of low voices (F0 100-150 Hz) that 32 ms smears;
    # chosen on 10-fold validation (README: Results)
    n_fft: int = 1024
    hop: int = 512
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float = 8000.0
    window: Literal["hann_periodic"] = "hann_periodic"
    log_offset: float = 1e-6
    mean: float = 0.0
    std: float = 1.0
    # Per-speaker normalisation (train/speaker_norm.py, firmware/app/ser_speaker_norm.h): "scalar" or
    # "bins" standardises each clip by its speaker's statistics instead of mean/std (then 0 and 1);
    # prior_mean/prior_std (1 or n_mels values) serve until the board has heard a clip of the voice.
    speaker_norm: Literal["off", "scalar", "bins"] = "off"
    prior_mean: tuple[float, ...] = ()
    prior_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prior_mean", tuple(float(v) for v in self.prior_mean))  # JSON gives lists
        object.__setattr__(self, "prior_std", tuple(float(v) for v in self.prior_std))
        if self.speaker_norm == "off":
            if self.prior_mean or self.prior_std:
                raise ValueError("prior statistics are for speaker_norm 'scalar' or 'bins'")
            return
        if self.speaker_norm not in ("scalar", "bins") or self.kind != "logmel":
            raise ValueError(f"speaker_norm is 'off', 'scalar' or 'bins' (log-mel only), not {self.speaker_norm!r}")
        bins = self.n_mels if self.speaker_norm == "bins" else 1
        if len(self.prior_mean) != bins or len(self.prior_std) != bins or min(self.prior_std) <= 0:
            raise ValueError(f"speaker_norm {self.speaker_norm!r} needs {bins} prior means and positive stds")
        if (self.mean, self.std) != (0.0, 1.0):
            raise ValueError("with speaker_norm the global mean/std are 0 and 1: the speaker's statistics replace them")

    @property
    def num_frames(self) -> int:
        return 1 + (self.clip_samples - self.n_fft) // self.hop

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Model input shape without the batch axis."""
        if self.kind == "waveform":
            return (1, self.clip_samples, 1)
        return (self.n_mels, self.num_frames, 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> FrontEndConfig:
        return cls(**json.loads(Path(path).read_text()))

    def with_standardisation(self, mean: float, std: float) -> FrontEndConfig:
        return replace(self, mean=float(np.float32(mean)), std=float(np.float32(std)))

    def with_speaker_norm(self, mode: str, prior_mean: np.ndarray, prior_std: np.ndarray) -> FrontEndConfig:
        """Per-speaker normalisation with this prior (float32 values, 1 or n_mels of each)."""
        return replace(
            self, mean=0.0, std=1.0, speaker_norm=mode, prior_mean=_float32s(prior_mean), prior_std=_float32s(prior_std)
        )

    @property
    def raw(self) -> FrontEndConfig:
        """The same front end without any standardisation: the unstandardised log-mel (speaker statistics' input)."""
        return replace(self, mean=0.0, std=1.0, speaker_norm="off", prior_mean=(), prior_std=())


def _float32s(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.atleast_1d(np.asarray(values, np.float32)))


DEFAULT_WAVEFORM = FrontEndConfig(kind="waveform", clip_samples=2 * SAMPLE_RATE, waveform_gain=4.0)
DEFAULT_LOGMEL = FrontEndConfig(kind="logmel")
# Which front end each architecture of train.models reads (here, so that the command lines know the
# architectures without importing Keras).
FRONT_END_KIND = {
    "audio_resnet": "waveform",
    "resnet18_1d": "waveform",
    "spectrogram_resnet": "logmel",
    "resnet18_2d": "logmel",
}


def default_frontend(model: str) -> FrontEndConfig:
    return DEFAULT_WAVEFORM if FRONT_END_KIND[model] == "waveform" else DEFAULT_LOGMEL


def fit_clip(pcm: np.ndarray, cfg: FrontEndConfig, start: int | None = None) -> np.ndarray:
    """The exact ``clip_samples`` int16 samples the board receives for a clip.

    ``start`` overrides the centre crop (used by random-crop augmentation in training).
    """
    pcm = np.asarray(pcm, dtype=np.int16)
    n, length = len(pcm), cfg.clip_samples
    if n == 0:
        raise ValueError("empty clip")
    if n >= length:
        s = (n - length) // 2 if start is None else int(np.clip(start, 0, n - length))
        return pcm[s : s + length].copy()
    if cfg.pad == "zero":
        return np.concatenate([pcm, np.zeros(length - n, np.int16)])
    return np.resize(pcm, length)  # np.resize repeats the clip from its start


def hann_window(cfg: FrontEndConfig) -> np.ndarray:
    """Periodic Hann window of length n_fft, float32 (the table the board gets)."""
    n = np.arange(cfg.n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.n_fft)).astype(np.float32)


# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_MEL_HZ_PER_MEL = 200.0 / 3
_MEL_LOG_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    logs = _MEL_LOG_HZ / _MEL_HZ_PER_MEL + np.log(np.maximum(hz, _MEL_LOG_HZ) / _MEL_LOG_HZ) / _MEL_LOG_STEP
    return np.where(hz < _MEL_LOG_HZ, hz / _MEL_HZ_PER_MEL, logs)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _MEL_HZ_PER_MEL * mels
    log = mels >= _MEL_LOG_HZ / _MEL_HZ_PER_MEL
    hz[log] = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mels[log] - _MEL_LOG_HZ / _MEL_HZ_PER_MEL))
    return hz


def mel_centres_hz(cfg: FrontEndConfig) -> np.ndarray:
    """Each mel band's centre frequency (Hz): the filter bank's triangle peaks, evenly spaced in mel."""
    return _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))[1:-1]


def mel_band_position(cfg: FrontEndConfig, hz: np.ndarray) -> np.ndarray:
    """Fractional band index of each frequency: 0 at the first band's centre, 1 at the second's, ..."""
    lo, hi = _hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax)
    return (_hz_to_mel(hz) - lo) / ((hi - lo) / (cfg.n_mels + 1)) - 1.0


def mel_filterbank(cfg: FrontEndConfig) -> np.ndarray:
    """Slaney mel filter bank (n_mels, n_fft/2+1), float32 (the table the board gets).

    librosa's ``filters.mel(htk=False, norm="slaney")`` operation for operation, so the same bits
    (tested against librosa), without importing librosa: its SciPy and Numba imports take seconds.
    """
    bins = np.fft.rfftfreq(n=cfg.n_fft, d=1.0 / cfg.sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)
    fb = np.zeros((cfg.n_mels, len(bins)), dtype=np.float32)
    for m in range(cfg.n_mels):
        fb[m] = np.maximum(0, np.minimum(-ramps[m] / widths[m], ramps[m + 2] / widths[m + 1]))
    fb *= (2.0 / (edges[2:] - edges[: cfg.n_mels]))[:, np.newaxis]  # constant energy per band
    return fb


def fft_twiddles(cfg: FrontEndConfig) -> tuple[np.ndarray, np.ndarray]:
    """The board FFT's twiddles: ``cos(2 pi k / n_fft)`` and ``sin(2 pi k / n_fft)``, k < n_fft/2, float32.

    Computed in float64 and rounded once, so every build of the tables has the same bits.
    """
    k = np.arange(cfg.n_fft // 2, dtype=np.float64)
    angle = 2.0 * np.pi * k / cfg.n_fft
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def sparse_mel(fb: np.ndarray) -> tuple[list[int], list[int], list[int], np.ndarray]:
    """Each band's contiguous non-zero bin range, and the concatenated weights (the board's mel tables)."""
    starts, counts, offsets, weights = [], [], [], []
    for row in fb:
        nz = np.flatnonzero(row)
        start, stop = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        starts.append(start)
        counts.append(stop - start)
        offsets.append(sum(len(w) for w in weights))
        weights.append(row[start:stop])
    return starts, counts, offsets, np.concatenate(weights).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _tables(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Window and filter bank, built once per geometry."""
    cfg = FrontEndConfig(kind="logmel", sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return hann_window(cfg), mel_filterbank(cfg)


def log_mel_frames(x: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Unstandardised ln-mel of float32 samples, shape (frames, n_mels)."""
    window, fb = _tables(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    count = 1 + (len(x) - cfg.n_fft) // cfg.hop
    idx = np.arange(cfg.n_fft)[None, :] + cfg.hop * np.arange(count)[:, None]
    spec = np.fft.rfft(x[idx] * window, n=cfg.n_fft, axis=1)
    power = (spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2).astype(np.float32)
    mel = power @ fb.T
    return np.log(mel + np.float32(cfg.log_offset)).astype(np.float32)


def board_samples(board_pcm: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """The int16 samples the board would receive; refuses a wrong length or non-integer samples."""
    if len(board_pcm) != cfg.clip_samples:
        raise ValueError(f"front end takes exactly {cfg.clip_samples} samples, got {len(board_pcm)} (use fit_clip)")
    pcm = np.asarray(board_pcm)
    if pcm.dtype != np.int16:
        cast = pcm.astype(np.int16)
        if not np.array_equal(cast, pcm):
            raise ValueError("board PCM must be int16 sample values")
        pcm = cast
    return pcm


def features(board_pcm: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Model input (float32, ``cfg.input_shape``) from the ``clip_samples`` samples the board receives.

    Computed by the board's C front end, so training sees exactly the values the board makes.
    """
    from train import frontend_c  # imported here: frontend_c builds its tables from this module

    _no_speaker_norm(cfg)
    return frontend_c.run(board_samples(board_pcm, cfg), cfg)


def _no_speaker_norm(cfg: FrontEndConfig) -> None:
    if cfg.speaker_norm != "off":
        raise ValueError(
            f"this front end standardises by a speaker's statistics ({cfg.speaker_norm}): a clip alone has no input; "
            "use train.speaker_norm.speaker_features (cfg.raw for the unstandardised values) or frontend_c.SpeakerStream"
        )


def model_input_int8(board_pcm: np.ndarray, cfg: FrontEndConfig, input_scale: float, input_zero_point: int) -> np.ndarray:
    """The int8 model input tensor (``cfg.input_shape``) exactly as the board writes it: the host's reference."""
    from train import frontend_c

    _no_speaker_norm(cfg)
    return frontend_c.run(board_samples(board_pcm, cfg), cfg, input_scale, input_zero_point)


def reference_features(board_pcm: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """``features`` in NumPy (``log_mel_frames``): the readable reference the C code is tested against."""
    x = board_samples(board_pcm, cfg).astype(np.float32) / np.float32(PCM_FULL_SCALE)
    if cfg.kind == "waveform":
        return (x * np.float32(cfg.waveform_gain)).reshape(cfg.input_shape)
    s = (log_mel_frames(x, cfg) - np.float32(cfg.mean)) / np.float32(cfg.std)
    return s.T.reshape(cfg.input_shape).astype(np.float32)


def quantize_input(x: np.ndarray, input_scale: float, input_zero_point: int) -> np.ndarray:
    """int8 quantization of float model input as the board does it (float32 divide, round half to even)."""
    q = np.round(np.asarray(x, np.float32) / np.float32(input_scale)) + np.float32(input_zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def clip_log_mel(pcm: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Unstandardised ln-mel (frames, n_mels) of a clip as stored on disk (for the standardisation constants)."""
    return log_mel_frames(fit_clip(pcm, cfg).astype(np.float32) / np.float32(PCM_FULL_SCALE), cfg)


def clip_features(pcm: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Model input for a whole clip as stored on disk (crop/pad, then the front end)."""
    return features(fit_clip(pcm, cfg), cfg)


class StreamingFrontEnd:
    """The same front end fed chunk by chunk, holding only one FFT frame of audio.

    This is the structure the board uses (it is the board's C code): PCM arrives in chunks over the
    serial line, each completed frame becomes one model-input column, and no whole clip is ever
    buffered. ``input_scale`` given: the int8 model input instead of float features.
    """

    def __init__(self, cfg: FrontEndConfig, input_scale: float | None = None, input_zero_point: int = 0) -> None:
        from train import frontend_c

        self.cfg = cfg
        self._native = frontend_c.NativeFrontEnd(cfg, input_scale, input_zero_point)

    @property
    def out(self) -> np.ndarray:
        return self._native.out

    def push(self, chunk: np.ndarray) -> None:
        self._native.push(np.asarray(chunk, np.int16))

    def result(self) -> np.ndarray:
        if not self._native.done:
            raise ValueError(f"clip incomplete: {self._native.received} of {self.cfg.clip_samples} samples")
        return self._native.out
