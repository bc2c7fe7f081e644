"""Quick int8 conversion and TFLM arena measurement, to hold a model against the MCU budget.

Uses the conversion stage's own quantizer and arena measurement, so the figures right after
training are the ones conversion will report.
"""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np

from convert.interpreters import tflm_arena_bytes
from convert.quantize import quantize_int8

# Budget of the default configuration of each model on a Cortex-M4 with 128 KB of RAM.
ARENA_BUDGET = 96 * 1024
MODEL_BUDGET = 420 * 1024
MACS_BUDGET = 25_000_000


def probe(model: keras.Model, representative: Iterable[np.ndarray]) -> dict:
    """Int8 model size and TFLM arena of a trained (or freshly built) model."""
    tflite = quantize_int8(model, representative)
    return {"int8_model_bytes": len(tflite), "tflm_arena_bytes": tflm_arena_bytes(tflite)}
