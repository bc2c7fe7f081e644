"""The one front end: librosa agreement, streaming equals whole clip, crop/pad rules."""

from __future__ import annotations

from dataclasses import replace

import librosa
import numpy as np
import pytest

from tests.conftest import synthetic_clip
from train.frontend import (
    DEFAULT_LOGMEL,
    DEFAULT_WAVEFORM,
    FrontEndConfig,
    StreamingFrontEnd,
    clip_features,
    features,
    fit_clip,
    mel_filterbank,
)


@pytest.mark.parametrize(
    ("n_fft", "n_mels", "fmin", "fmax"), [(1024, 64, 20.0, 8000.0), (512, 40, 0.0, 7600.0), (2048, 128, 300.0, 4000.0)]
)
def test_mel_filter_bank_is_librosas_bit_for_bit(n_fft: int, n_mels: int, fmin: float, fmax: float) -> None:
    """The board's table, computed without importing librosa, is librosa's Slaney bank to the last bit."""
    cfg = replace(DEFAULT_LOGMEL, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    ours = mel_filterbank(cfg)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert ours.tobytes() == ref.astype(np.float32).tobytes()


def test_log_mel_matches_librosa() -> None:
    cfg = DEFAULT_LOGMEL
    pcm = fit_clip(synthetic_clip(2, 1, 0, 2.2), cfg)
    ours = features(pcm, cfg)[:, :, 0]
    x = pcm.astype(np.float64) / 32768
    ref_mel = librosa.feature.melspectrogram(
        y=x,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop,
        win_length=cfg.n_fft,
        window="hann",
        center=False,
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=False,
        norm="slaney",
    )
    ref = np.log(ref_mel + cfg.log_offset)
    assert ours.shape == ref.shape == (cfg.n_mels, cfg.num_frames)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_standardisation_is_applied() -> None:
    base = DEFAULT_LOGMEL
    pcm = fit_clip(synthetic_clip(0, 0, 0, 1.0), base)
    std = base.with_standardisation(-5.0, 2.5)
    np.testing.assert_allclose(features(pcm, std), (features(pcm, base) + 5.0) / 2.5, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [DEFAULT_LOGMEL.with_standardisation(-4.0, 3.0), DEFAULT_WAVEFORM], ids=["logmel", "waveform"])
@pytest.mark.parametrize("chunk", [1, 77, 256, 4096])
def test_streaming_equals_whole_clip(cfg: FrontEndConfig, chunk: int) -> None:
    pcm = fit_clip(synthetic_clip(4, 2, 1, 3.5), cfg)
    stream = StreamingFrontEnd(cfg)
    if chunk == 1 and cfg.kind == "logmel":
        pcm_iter = [pcm[i : i + 1] for i in range(0, 4000)] + [pcm[4000:]]  # sample-wise start, then the rest
    else:
        pcm_iter = [pcm[i : i + chunk] for i in range(0, len(pcm), chunk)]
    for part in pcm_iter:
        stream.push(part)
    np.testing.assert_allclose(stream.result(), features(pcm, cfg), rtol=1e-5, atol=1e-5)


def test_streaming_refuses_incomplete_and_overfull_clips() -> None:
    cfg = DEFAULT_WAVEFORM
    stream = StreamingFrontEnd(cfg)
    stream.push(np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="incomplete"):
        stream.result()
    with pytest.raises(ValueError, match="more than"):
        stream.push(np.zeros(cfg.clip_samples, np.int16))


def test_fit_clip_crops_centre_and_loops_or_zero_pads() -> None:
    cfg = replace(DEFAULT_WAVEFORM, clip_samples=10)
    long = np.arange(16, dtype=np.int16)
    np.testing.assert_array_equal(fit_clip(long, cfg), np.arange(3, 13))
    np.testing.assert_array_equal(fit_clip(long, cfg, start=100), np.arange(6, 16))
    short = np.array([1, 2, 3], np.int16)
    np.testing.assert_array_equal(fit_clip(short, cfg), [1, 2, 3, 1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(fit_clip(short, replace(cfg, pad="zero")), [1, 2, 3, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="exactly 10 samples"):
        features(short, cfg)


def test_waveform_input_is_scaled_pcm() -> None:
    cfg = DEFAULT_WAVEFORM
    pcm = synthetic_clip(1, 1, 1, 1.0)
    x = clip_features(pcm, cfg)
    assert x.shape == cfg.input_shape
    np.testing.assert_allclose(x[0, : len(pcm), 0], pcm.astype(np.float32) / 32768 * cfg.waveform_gain)


def test_config_round_trips_through_json(tmp_path) -> None:
    cfg = DEFAULT_LOGMEL.with_standardisation(-3.25, 2.5)
    cfg.save(tmp_path / "frontend.json")
    assert FrontEndConfig.load(tmp_path / "frontend.json") == cfg
