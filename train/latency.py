"""Host inference time of a float model, batch 1: what the paper's speed ratios compare."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf


def host_latency_ms(model: keras.Model, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one batch-1 forward pass in a compiled tf.function."""
    x = tf.constant(np.random.default_rng(0).standard_normal((1, *model.input_shape[1:])).astype(np.float32))
    forward = tf.function(lambda v: model(v, training=False))
    for _ in range(warmup):
        forward(x).numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward(x).numpy()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)
