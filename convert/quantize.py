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

from convert.interpreters import quiet_fds
from convert.tflite_file import METADATA_NAME, MODEL_FILE, io_specs, sha256, with_metadata
from train.corpus import read_wav
from train.embedding_norm import (
    EMBEDDING_NORM_FILE,
    Head,
    embedding_model,
    fit_head,
    load_head,
    run_classifier,
    training_part,
)
from train.frontend import FrontEndConfig
from train.labels import EMOTIONS
from train.speaker_norm import run_model_inputs
from train.splits import clips_with_role, load_manifest

PTQ_MODEL_FILE = "model_int8_ptq.tflite"  # with ser-convert --qat: the post-training-quantized model, kept for comparison
KERAS_FILE = "model.keras"
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
        with quiet_fds(replay_on_error=True):  # the MLIR quantizer prints a line per conversion, whatever the log level
            return converter.convert()


def calibration_inputs(run: Path, root: Path, count: int = CALIBRATION_CLIPS, seed: int = 0) -> list[np.ndarray]:
    """Model inputs of up to ``count`` clips of the run's training part (never val or test), normalised
    by their speakers' statistics in a speaker-normalised run."""
    cfg = FrontEndConfig.load(run / "frontend.json")
    train = clips_with_role(load_manifest(run / "manifest.json"), "train")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(train), size=min(count, len(train)), replace=False))
    clips = [train[i] for i in chosen]
    return run_model_inputs(run, cfg, [read_wav(root / c["path"]) for c in clips], [c["speaker"] for c in clips])


def model_metadata(run: Path, keras_file: str = KERAS_FILE, quantization: str = "ptq") -> dict:
    """What travels inside the .tflite: the front end, labels and where the model came from.

    ``keras_file`` is the float model that was quantized (``model_qat.keras`` after QAT).
    """
    manifest = load_manifest(run / "manifest.json")
    return {
        "format": 1,
        "frontend": FrontEndConfig.load(run / "frontend.json").__dict__,
        "labels": list(EMOTIONS),
        "keras_model_sha256": sha256((run / keras_file).read_bytes()),
        "quantization": quantization,
        "split": manifest["split"],
        "test_fold": manifest["test_fold"],
    }


def int8_head(run: Path, root: Path, tflite: bytes, show_progress: bool = False) -> Head:
    """The run's embedding classifier fitted anew on the int8 model's own embeddings of its training clips.

    Why: the board's stage reads the int8 embedding, quantization error included, and a classifier
    fitted on the float network's embedding does not know that error. The embeddings come from host
    TFLM (the board's reference), dequantized; the classifier kind is the run's (``run_classifier``)."""
    from tqdm import tqdm

    from convert.interpreters import TflmRunner, dequantize, quantize_input

    pcms, speakers, labels = training_part(run, root)
    inputs = run_model_inputs(run, FrontEndConfig.load(run / "frontend.json"), pcms, speakers)
    in_spec, out_spec = io_specs(tflite)
    runner = TflmRunner(tflite)
    bar = tqdm(inputs, desc="int8 embeddings of the training clips", unit="clip", disable=not show_progress)
    emb = np.stack([dequantize(runner(quantize_input(x, in_spec)), out_spec) for x in bar])
    return fit_head(emb, labels, speakers, run_classifier(run))


def convert_run(
    run: Path,
    root: Path,
    model: keras.Model | None = None,
    keras_file: str = KERAS_FILE,
    quantization: str = "ptq",
    classifier_on_int8: bool = False,
    show_progress: bool = False,
) -> Path:
    """Write ``model_int8.tflite`` (with metadata ``ser_tinyml``, 16-byte aligned) beside the run.

    ``model`` defaults to the run's ``keras_file``; ``quantization`` ("ptq" or "qat") is recorded in the metadata.
    A run with ``embedding_norm.json`` gives a model that ends at its pooled embedding and carries the
    classifier in its metadata, the prior in the int8 output's steps (``train.embedding_norm``); with
    ``classifier_on_int8`` that classifier is fitted on the int8 model's embeddings (``int8_head``).
    """
    model = model or keras.models.load_model(run / keras_file)
    head = load_head(run / EMBEDDING_NORM_FILE) if (run / EMBEDDING_NORM_FILE).exists() else None
    if classifier_on_int8 and head is None:
        raise ValueError(f"{run} has no {EMBEDDING_NORM_FILE}: only an --embedding-norm run has a classifier to fit on int8")
    tflite = quantize_int8(embedding_model(model) if head else model, calibration_inputs(run, root))
    meta = model_metadata(run, keras_file, quantization)
    if head is not None:
        out_spec = io_specs(tflite)[1]
        head = int8_head(run, root, tflite, show_progress) if classifier_on_int8 else head
        meta["embedding_norm"] = head.in_int8_steps(out_spec.scale, out_spec.zero_point).to_json(compact=True)
        meta["embedding_classifier_fitted_on"] = "int8" if classifier_on_int8 else "float"
    out = run / MODEL_FILE
    out.write_bytes(with_metadata(tflite, meta, METADATA_NAME))
    return out
