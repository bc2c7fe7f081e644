"""Shared fixtures: a small synthetic corpus in the CASIA layout, written as real WAV files."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

from train.corpus import SPEAKERS
from train.labels import EMOTIONS
from train.tf_env import quiet_tensorflow

quiet_tensorflow()  # what the command lines set, before any test imports TensorFlow


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples).tobytes())


def synthetic_clip(emotion_index: int, speaker_index: int, sentence: int, seconds: float) -> np.ndarray:
    """A voiced-like tone whose pitch and loudness depend on the emotion, plus noise."""
    rng = np.random.default_rng(1000 * emotion_index + 100 * speaker_index + sentence)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 110 + 40 * emotion_index + 10 * speaker_index
    tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    amp = 2000 + 1500 * emotion_index
    x = amp * tone * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 200 * rng.standard_normal(len(t))
    return np.clip(x, -32768, 32767).astype(np.int16)


def make_corpus(root: Path, sentences: int = 3) -> Path:
    for s_i, speaker in enumerate(SPEAKERS):
        for e_i, emotion in enumerate(EMOTIONS):
            for n in range(sentences):
                seconds = 0.9 + 0.7 * ((n + s_i + e_i) % 4)  # 0.9 .. 3.0 s: both padding and cropping
                write_wav(root / speaker / emotion / f"{201 + n}.wav", synthetic_clip(e_i, s_i, n, seconds))
    return root


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("casia_synthetic"))


@pytest.fixture(scope="session")
def casia_root() -> Path:
    """The real corpus, when CASIA_ROOT points at it."""
    value = os.environ.get("CASIA_ROOT")
    if not value or not Path(value).is_dir():
        pytest.skip("real CASIA corpus not available: set CASIA_ROOT to the corpus folder to run this test")
    return Path(value)
