"""Model sizes match the paper, and the default configurations fit the Cortex-M4 budget under real TFLM."""

from __future__ import annotations

import numpy as np
import pytest

from train.frontend import DEFAULT_LOGMEL, DEFAULT_WAVEFORM
from train.mcu_probe import ARENA_BUDGET, MACS_BUDGET, MODEL_BUDGET, probe
from train.models import BUILDERS, count_macs
from train.run import default_frontend

PAPER_PARAMS = {"audio_resnet": 130_000, "spectrogram_resnet": 390_000}
# Builtin ops TFLM runs in int8 with CMSIS-NN kernels (plus QUANTIZE/DEQUANTIZE at the edges).
CMSIS_NN_OPS = {
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "ADD",
    "MEAN",
    "AVERAGE_POOL_2D",
    "MAX_POOL_2D",
    "SOFTMAX",
    "RESHAPE",
    "QUANTIZE",
    "DEQUANTIZE",
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_count_matches_paper(name: str) -> None:
    model = BUILDERS[name](default_frontend(name).input_shape)
    assert abs(model.count_params() - PAPER_PARAMS[name]) <= 0.1 * PAPER_PARAMS[name]


@pytest.mark.parametrize("name", ["resnet18_1d", "resnet18_2d"])
def test_resnet18_baselines_have_about_11m_parameters(name: str) -> None:
    model = BUILDERS[name](default_frontend(name).input_shape)
    assert 10.5e6 <= model.count_params() <= 11.8e6


def test_mac_count_of_a_known_layer() -> None:
    import keras

    inputs = keras.Input((1, 100, 1))
    x = keras.layers.Conv2D(4, (1, 5), strides=(1, 2), padding="same")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    assert count_macs(keras.Model(inputs, outputs)) == 50 * 4 * 5 + 4 * 3


def _op_names(tflite: bytes) -> set[str]:
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return {names[max(code.builtinCode, code.deprecatedBuiltinCode)] for code in model.operatorCodes}


@pytest.mark.parametrize("name,cfg", [("audio_resnet", DEFAULT_WAVEFORM), ("spectrogram_resnet", DEFAULT_LOGMEL)])
def test_default_models_fit_the_mcu_budget(name: str, cfg) -> None:
    model = BUILDERS[name](cfg.input_shape)
    assert count_macs(model) <= MACS_BUDGET
    rng = np.random.default_rng(0)
    rep = [rng.standard_normal(cfg.input_shape).astype(np.float32) * 0.5 for _ in range(4)]
    from convert.interpreters import tflm_arena_bytes
    from convert.quantize import quantize_int8

    tflite = quantize_int8(model, rep)
    assert _op_names(tflite) <= CMSIS_NN_OPS
    assert len(tflite) <= MODEL_BUDGET
    arena = tflm_arena_bytes(tflite)
    assert 0 < arena <= ARENA_BUDGET
    assert probe(model, rep)["tflm_arena_bytes"] == arena  # the probe reports the same measurement
