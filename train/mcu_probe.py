"""Quick int8 conversion and TFLM arena measurement, to hold a model against the MCU budget.

The full conversion stage (``convert/``) does this properly with reports; this probe only answers
"how big is the int8 model and how much arena does TFLM need" right after training.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf

# Budget of the default configuration of each model on a Cortex-M4 with 128 KB of RAM.
ARENA_BUDGET = 96 * 1024
MODEL_BUDGET = 420 * 1024
MACS_BUDGET = 25_000_000


def quantize_int8(model: keras.Model, representative: Iterable[np.ndarray]) -> bytes:
    """Full-integer post-training quantization with int8 input and output."""
    samples = [np.asarray(x, np.float32)[None] for x in representative]

    def dataset():
        for x in samples:
            yield [x]

    with tempfile.TemporaryDirectory() as saved, contextlib.redirect_stdout(io.StringIO()):
        # A SavedModel with batch 1 gives the converter fixed shapes (TFLM wants no dynamic batch).
        spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32, name="input")
        model.export(saved, format="tf_saved_model", input_signature=[spec], verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return converter.convert()


def tflm_arena_bytes(tflite: bytes, upper: int = 8 * 1024 * 1024) -> int:
    """Smallest arena (to 16 bytes) with which TFLM's interpreter allocates and invokes the model."""
    from tflite_micro.python.tflite_micro import runtime

    def works(size: int) -> bool:
        try:
            with _quiet_fd():
                interp = runtime.Interpreter.from_bytes(tflite, arena_size=size)
                interp.invoke()
            return True
        except (RuntimeError, ValueError):
            return False

    if not works(upper):
        raise RuntimeError(f"TFLM cannot run this model even with a {upper // 1024} KB arena")
    lo, hi = 0, upper  # lo fails (or is 0), hi works
    while hi - lo > 16:
        mid = (lo + hi) // 2 // 16 * 16
        if works(mid):
            hi = mid
        else:
            lo = mid
    return hi


@contextlib.contextmanager
def _quiet_fd():
    """Silence TFLM's C++ logging (it writes to fd 1/2 directly) during probing."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def probe(model: keras.Model, representative: Iterable[np.ndarray]) -> dict:
    """Int8 model size and TFLM arena of a trained (or freshly built) model."""
    tflite = quantize_int8(model, representative)
    return {"int8_model_bytes": len(tflite), "tflm_arena_bytes": tflm_arena_bytes(tflite)}
