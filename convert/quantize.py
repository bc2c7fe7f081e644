"""Full int8 post-training quantization of a trained run, calibrated on its training part only."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from convert.tflite_file import METADATA_NAME, sha256, with_metadata
from train.corpus import read_wav
from train.frontend import FrontEndConfig, clip_features
from train.labels import EMOTIONS
from train.splits import clips_with_role, load_manifest

MODEL_FILE = "model_int8.tflite"
CALIBRATION_CLIPS = 200


def quantize_int8(model: keras.Model, representative: Iterable[np.ndarray]) -> bytes:
    """int8 weights (per channel), activations, input and output; batch fixed at 1 for TFLM."""
    samples = [np.asarray(x, np.float32)[None] for x in representative]

    def dataset():
        for x in samples:
            yield [x]

    with tempfile.TemporaryDirectory() as saved, contextlib.redirect_stdout(io.StringIO()):
        spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32, name="input")
        model.export(saved, format="tf_saved_model", input_signature=[spec], verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return converter.convert()


def calibration_inputs(run: Path, root: Path, count: int = CALIBRATION_CLIPS, seed: int = 0) -> list[np.ndarray]:
    """Front-end outputs of up to ``count`` clips of the run's training part (never val or test)."""
    cfg = FrontEndConfig.load(run / "frontend.json")
    train = clips_with_role(load_manifest(run / "manifest.json"), "train")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(train), size=min(count, len(train)), replace=False))
    return [clip_features(read_wav(root / train[i]["path"]), cfg) for i in chosen]


def model_metadata(run: Path) -> dict:
    """What travels inside the .tflite: the front end, labels and where the model came from."""
    manifest = load_manifest(run / "manifest.json")
    return {
        "format": 1,
        "frontend": FrontEndConfig.load(run / "frontend.json").__dict__,
        "labels": list(EMOTIONS),
        "keras_model_sha256": sha256((run / "model.keras").read_bytes()),
        "split": manifest["split"],
        "test_fold": manifest["test_fold"],
    }


def convert_run(run: Path, root: Path, model: keras.Model | None = None) -> Path:
    """Write ``model_int8.tflite`` (with metadata ``ser_tinyml``, 16-byte aligned) beside the run."""
    model = model or keras.models.load_model(run / "model.keras")
    tflite = quantize_int8(model, calibration_inputs(run, root))
    out = run / MODEL_FILE
    out.write_bytes(with_metadata(tflite, model_metadata(run), METADATA_NAME))
    return out
