"""On-the-fly augmentation of training clips, applied before the shared front end.

Augmenting the int16 PCM (not the features) keeps training inputs on the exact path the board
takes; only SpecAugment masks act on the log-mel output.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from train.frontend import FrontEndConfig, fit_clip, mel_band_position, mel_centres_hz


@dataclass(frozen=True)
class AugmentConfig:
    gain_db: float = 3.0  # uniform in +-gain_db; small, so loudness (a real emotion cue) survives
    noise_snr_db: tuple[float, float] = (25.0, 50.0)
    noise_prob: float = 0.5
    freq_masks: int = 2
    freq_mask_width: int = 5
    time_masks: int = 2
    time_mask_width: int = 12
    # Speed perturbation (Ko et al. 2015): one factor drawn per clip and epoch; tempo and pitch change together.
    # (1.0,) is off and draws nothing, so the other augmentations stay bit for bit as without it.
    speeds: tuple[float, ...] = (1.0,)
    # Vocal tract length perturbation (Jaitly & Hinton 2013) of the log-mel: one warp factor per clip and epoch,
    # uniform in 1 +- vtlp; formants move, tempo does not. 0.0 is off and draws nothing.
    vtlp: float = 0.0


# Jaitly & Hinton's boundary for 16 kHz audio: frequencies up to it scale by the warp factor, the rest
# are stretched or squeezed linearly so that the top of the band stays where it is.
VTLP_BOUNDARY_HZ = 4800.0


def change_speed(pcm: np.ndarray, factor: float) -> np.ndarray:
    """Play ``pcm`` ``factor`` times faster (polyphase resampling, anti-aliased); int16 in and out."""
    ratio = Fraction(factor).limit_denominator(50)
    faster = resample_poly(pcm.astype(np.float32), ratio.denominator, ratio.numerator)
    return np.clip(np.round(faster), -32768, 32767).astype(np.int16)


def augment_pcm(pcm: np.ndarray, cfg: FrontEndConfig, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Speed, random crop or loop offset, gain and noise; returns the board-input samples (int16)."""
    if aug.speeds != (1.0,):
        factor = aug.speeds[int(rng.integers(0, len(aug.speeds)))]
        if factor != 1.0:
            pcm = change_speed(pcm, factor)
    n, length = len(pcm), cfg.clip_samples
    if n > length:
        board = fit_clip(pcm, cfg, start=int(rng.integers(0, n - length + 1)))
    else:
        board = fit_clip(np.roll(pcm, -int(rng.integers(0, n))) if cfg.pad == "loop" else pcm, cfg)
    x = board.astype(np.float32) * np.float32(10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20))
    if rng.random() < aug.noise_prob:
        power = float(np.mean(x**2)) + 1.0
        snr = rng.uniform(*aug.noise_snr_db)
        x = x + rng.standard_normal(len(x)).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (snr / 10)))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def vtlp_source(hz: np.ndarray, alpha: float, fmax: float) -> np.ndarray:
    """The frequency VTLP sends onto each frequency: the inverse of its warp, which takes ``f`` to
    ``alpha * f`` up to the boundary and then follows a line that keeps ``fmax`` in place."""
    bend = VTLP_BOUNDARY_HZ * min(alpha, 1.0) / alpha  # where the warp turns, on the source axis
    below = hz / alpha
    above = fmax - (fmax - hz) * (fmax - bend) / (fmax - alpha * bend)
    return np.where(hz <= alpha * bend, below, above)


def warp_log_mel(feat: np.ndarray, cfg: FrontEndConfig, alpha: float) -> np.ndarray:
    """The (mels, frames, 1) log-mel as a vocal tract ``1 / alpha`` times as long would say it.

    Band j takes the value the clip has at the frequency the warp sends to band j's centre,
    interpolated linearly between neighbouring bands (held at the ends).
    """
    source = vtlp_source(mel_centres_hz(cfg), alpha, cfg.fmax)
    pos = np.clip(mel_band_position(cfg, source), 0.0, cfg.n_mels - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cfg.n_mels - 1)
    w = (pos - lo).astype(feat.dtype)[:, None, None]
    return feat[lo] * (1 - w) + feat[hi] * w


def vtlp(feat: np.ndarray, cfg: FrontEndConfig, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """A random VTLP warp of an unstandardised log-mel (no draw when ``aug.vtlp`` is 0)."""
    if aug.vtlp == 0.0:
        return feat
    return warp_log_mel(feat, cfg, float(rng.uniform(1.0 - aug.vtlp, 1.0 + aug.vtlp)))


def spec_augment(feat: np.ndarray, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Frequency and time masks on a (mels, frames, 1) log-mel input, filled with 0 (the mean)."""
    out = feat.copy()
    mels, frames = out.shape[0], out.shape[1]
    for _ in range(aug.freq_masks):
        w = int(rng.integers(0, aug.freq_mask_width + 1))
        f0 = int(rng.integers(0, max(1, mels - w)))
        out[f0 : f0 + w] = 0.0
    for _ in range(aug.time_masks):
        w = int(rng.integers(0, aug.time_mask_width + 1))
        t0 = int(rng.integers(0, max(1, frames - w)))
        out[:, t0 : t0 + w] = 0.0
    return out
