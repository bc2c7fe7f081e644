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
    n_fft: int = 512
    hop: int = 320
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float = 8000.0
    window: Literal["hann_periodic"] = "hann_periodic"
    log_offset: float = 1e-6
    mean: float = 0.0
    std: float = 1.0

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


DEFAULT_WAVEFORM = FrontEndConfig(kind="waveform", clip_samples=2 * SAMPLE_RATE, waveform_gain=4.0)
DEFAULT_LOGMEL = FrontEndConfig(kind="logmel")


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


def mel_filterbank(cfg: FrontEndConfig) -> np.ndarray:
    """Slaney mel filter bank (n_mels, n_fft/2+1), float32 (the table the board gets)."""
    import librosa

    fb = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, htk=False, norm="slaney"
    )
    return fb.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _tables(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Window and filter bank, built once per geometry (librosa is slow to build them)."""
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


def features(board_pcm: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Model input (float32, ``cfg.input_shape``) from the ``clip_samples`` samples the board receives."""
    if len(board_pcm) != cfg.clip_samples:
        raise ValueError(f"front end takes exactly {cfg.clip_samples} samples, got {len(board_pcm)} (use fit_clip)")
    x = np.asarray(board_pcm, np.float32) / np.float32(PCM_FULL_SCALE)
    if cfg.kind == "waveform":
        return (x * np.float32(cfg.waveform_gain)).reshape(cfg.input_shape)
    s = (log_mel_frames(x, cfg) - np.float32(cfg.mean)) / np.float32(cfg.std)
    return s.T.reshape(cfg.input_shape).astype(np.float32)


def clip_log_mel(pcm: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Unstandardised ln-mel (frames, n_mels) of a clip as stored on disk (for the standardisation constants)."""
    return log_mel_frames(fit_clip(pcm, cfg).astype(np.float32) / np.float32(PCM_FULL_SCALE), cfg)


def clip_features(pcm: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Model input for a whole clip as stored on disk (crop/pad, then the front end)."""
    return features(fit_clip(pcm, cfg), cfg)


class StreamingFrontEnd:
    """The same front end fed chunk by chunk, holding only one FFT frame of audio.

    This is the structure the board uses: PCM arrives in chunks over the serial line, each
    completed frame becomes one model-input column, and no whole clip is ever buffered.
    """

    def __init__(self, cfg: FrontEndConfig) -> None:
        self.cfg = cfg
        self.out = np.zeros(cfg.input_shape, np.float32)
        self._ring = np.zeros(cfg.n_fft, np.float32)
        self._filled = 0  # samples in the ring (logmel)
        self._received = 0
        self._frame = 0

    def push(self, chunk: np.ndarray) -> None:
        cfg = self.cfg
        x = np.asarray(chunk, np.float32) / np.float32(PCM_FULL_SCALE)
        if self._received + len(x) > cfg.clip_samples:
            raise ValueError(f"more than {cfg.clip_samples} samples pushed")
        if cfg.kind == "waveform":
            self.out[0, self._received : self._received + len(x), 0] = x * np.float32(cfg.waveform_gain)
            self._received += len(x)
            return
        pos = 0
        while pos < len(x):
            take = min(cfg.n_fft - self._filled, len(x) - pos)
            self._ring[self._filled : self._filled + take] = x[pos : pos + take]
            self._filled += take
            self._received += take
            pos += take
            if self._filled == cfg.n_fft:
                column = log_mel_frames(self._ring, cfg)[0]
                self.out[:, self._frame, 0] = (column - np.float32(cfg.mean)) / np.float32(cfg.std)
                self._frame += 1
                keep = cfg.n_fft - cfg.hop
                self._ring[:keep] = self._ring[cfg.hop :]
                self._filled = keep

    def result(self) -> np.ndarray:
        if self._received != self.cfg.clip_samples:
            raise ValueError(f"clip incomplete: {self._received} of {self.cfg.clip_samples} samples")
        return self.out
