"""Boards for the protocol tests: the simulated board always, the QEMU board when TFLM sources are given.

Shared by ``test_sim_board.py`` and ``test_fault_relay.py``: a small int8 model with a 1 s log-mel
front end (fast to convert, to run and to stream; its ops are the real models' ops), clips, and the
host's reference answer (the board's C front end compiled for the host, then TFLM's interpreter).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from convert.interpreters import TflmRunner
from convert.tflite_file import align, io_specs, read_metadata, with_metadata
from host import qemu
from host.sim_board import SimulatedBoard
from tests.conftest import synthetic_clip
from train.frontend import FrontEndConfig, features, fit_clip, model_input_int8
from train.labels import EMOTIONS

DEPS = os.environ.get("SER_DEPS_DIR")
QEMU_BOARD = "qemu-mps2-an386"
CFG = FrontEndConfig(kind="logmel", clip_samples=16000).with_standardisation(-9.0, 4.0)
KINDS = [
    "sim",
    pytest.param(
        "qemu",
        marks=pytest.mark.skipif(
            not DEPS,
            reason="TFLM sources not given: set SER_DEPS_DIR (README: Third-party sources) to run this on the QEMU board too",
        ),
    ),
]


def clips(n: int, first: int = 0) -> list[np.ndarray]:
    """Board clips (CFG.clip_samples int16 samples) of different emotions, lengths and loudness."""
    return [fit_clip(synthetic_clip(i % 6, i % 4, i, 0.6 + 0.35 * i), CFG) for i in range(first, first + n)]


def _quantized(classifier: bool) -> bytes:
    """Two convolutions and global average pooling (the embedding), then (``classifier``) Dense and softmax."""
    import keras

    from convert.quantize import quantize_int8

    keras.utils.set_random_seed(0)
    layers = keras.layers
    network = [
        keras.Input(CFG.input_shape),
        layers.Conv2D(8, 3, strides=2, activation="relu"),
        layers.Conv2D(16, 3, strides=2, activation="relu"),
        layers.GlobalAveragePooling2D(),
    ]
    model = keras.Sequential(network + ([layers.Dense(len(EMOTIONS)), layers.Softmax()] if classifier else []))
    return quantize_int8(model, [features(pcm, CFG) for pcm in clips(8, first=20)])


@functools.cache
def _bare_model() -> bytes:
    return _quantized(classifier=True)


def small_model() -> bytes:
    """The model carrying its front end and labels, as ser-convert writes it."""
    return with_metadata(_bare_model(), {"format": 1, "frontend": CFG.__dict__, "labels": list(EMOTIONS)})


def bare_model() -> bytes:
    """The same model without our metadata (a foreign model): the board takes its input as sent."""
    return align(_bare_model())


def reference(tflite: bytes, pcm: np.ndarray) -> list[int]:
    """The host's answer for one clip: int8 scores from TFLM fed the board's own front end output."""
    spec, _ = io_specs(tflite)
    if read_metadata(tflite) is None:
        return TflmRunner(tflite)(np.clip(pcm, -128, 127).astype(np.int8)).tolist()
    return TflmRunner(tflite)(model_input_int8(pcm, CFG, spec.scale, spec.zero_point)).tolist()


@contextlib.contextmanager
def running_board(kind: str, tflite: bytes) -> Iterator[SimulatedBoard | qemu.EmulatedBoard]:
    """A board serving ``tflite``; both kinds have ``url``."""
    if kind == "sim":
        with SimulatedBoard(tflite) as board:
            yield board
        return
    with qemu.running(QEMU_BOARD, _firmware(tflite)) as emu:
        yield emu


@functools.cache
def _firmware(tflite: bytes) -> Path:
    """The QEMU board's ELF for this model, built once per test session."""
    from host.firmware import build

    return build(QEMU_BOARD, tflite, DEPS)


@functools.cache
def norm_model(mode: str) -> bytes:
    """The same network behind a front end with per-speaker normalisation (``mode`` scalar or bins), its prior
    pooled from other clips, as ser-convert writes a ``--speaker-norm`` run's model."""
    from train.speaker_norm import pooled

    prior = pooled([features(pcm, CFG.raw) for pcm in clips(6, first=30)], mode)
    cfg = CFG.raw.with_speaker_norm(mode, prior.mean, prior.std)
    return with_metadata(_bare_model(), {"format": 1, "frontend": cfg.__dict__, "labels": list(EMOTIONS)})


@functools.cache
def embed_model(unit_length: bool = False) -> bytes:
    """The same network up to its pooled embedding (16 values), with a per-speaker classifier in its metadata,
    as ser-convert writes a model for a run with ``embedding_norm.json``: random weights, and a prior pooled from
    the int8 embeddings of other clips; ``unit_length``: the classifier reads the embedding scaled to length 1."""
    from train.embedding_norm import Head

    bare = _quantized(classifier=False)
    spec, _ = io_specs(bare)
    runner = TflmRunner(bare)
    prior = np.stack([runner(model_input_int8(pcm, CFG, spec.scale, spec.zero_point)) for pcm in clips(6, first=30)])
    rng = np.random.default_rng(0)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    head = Head(
        f32(rng.normal(0, 0.5, (len(EMOTIONS), 16))), f32(rng.normal(0, 0.2, len(EMOTIONS))),
        f32(prior.mean(0)), f32(np.maximum(prior.std(0), 0.5)), unit_length=unit_length,
    )  # fmt: skip
    meta = {"format": 1, "frontend": CFG.__dict__, "labels": list(EMOTIONS), "embedding_norm": head.to_json(compact=True)}
    return with_metadata(bare, meta)


class RawCommand:
    """A command frame of ``TYPE`` with any payload (a wrong op, a command to firmware that lacks it)."""

    def __init__(self, msg_type: int, payload: bytes) -> None:
        self.TYPE, self.payload = msg_type, payload

    def encode(self) -> bytes:
        return self.payload
