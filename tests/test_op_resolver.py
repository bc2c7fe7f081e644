"""The emitted op resolver: every TFLM built-in op, int8-only kernels only where every tensor is int8.

- the op table is the pinned TFLM's (its MicroMutableOpResolver, read from the sources);
- an int8 model's ops get the int8-only registrations (our kernels), a 16x8 model's the general ones;
- an int8 model made of ops outside our own kernels (LEAKY_RELU, TANH, STRIDED_SLICE, SUB), and
  TFLM's own int8 LSTM example (UNIDIRECTIONAL_SEQUENCE_LSTM, int16 cell state), build and run on
  the emulated board bit for bit with the host's TFLM.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from convert.ops import INT8_REGISTRATIONS, TFLM_OPS, registrations
from convert.tflite_file import align, io_specs, op_versions

DEPS = os.environ.get("SER_DEPS_DIR")
needs_deps = pytest.mark.skipif(not DEPS, reason="TFLM sources not given: set SER_DEPS_DIR (README: Third-party sources)")
BOARD = "qemu-mps2-an386"


def _tflm(relative: str) -> Path:
    return Path(DEPS or "") / "tflite-micro/tensorflow/lite/micro" / relative


@needs_deps
def test_op_table_is_the_pinned_tflm_resolver() -> None:
    header = _tflm("micro_mutable_op_resolver.h").read_text()
    methods = re.split(r"\n\s*TfLiteStatus (Add[A-Za-z0-9]*)\(", header)
    builtins = {}
    for method, body in zip(methods[1::2], methods[2::2], strict=True):
        found = re.search(r"AddBuiltin\(\s*BuiltinOperator_([A-Z0-9_]+)", body[: body.find("\n  }")])
        if found:
            builtins[found.group(1)] = method
    assert TFLM_OPS == builtins
    assert set(INT8_REGISTRATIONS) <= set(TFLM_OPS)


def _model_outside_our_kernels() -> bytes:
    import keras

    from convert.quantize import quantize_int8

    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 7, 3))
    x = keras.layers.Conv2D(5, 3, padding="same")(inputs)
    x = keras.layers.LeakyReLU(negative_slope=0.2)(x)
    y = keras.layers.Lambda(lambda t: keras.ops.tanh(t))(x)
    x = keras.layers.Subtract()([x, y])
    x = keras.layers.Lambda(lambda t: t[:, 1:5, ::2, :])(x)  # STRIDED_SLICE
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(24)(x))
    rng = np.random.default_rng(0)
    return align(quantize_int8(model, [rng.uniform(-1, 1, (6, 7, 3)).astype(np.float32) for _ in range(16)]))


def test_int8_ops_get_int8_kernels_and_16x8_ops_the_general_ones() -> None:
    ops = {op["name"]: op for op in registrations(_model_outside_our_kernels())}
    assert ops["CONV_2D"]["registration"] == "ser::Register_CONV_2D_INT8()"
    # its Dense layer carries a quarter of the MACs: CMSIS-NN's FULLY_CONNECTED, not our plain loop
    assert ops["FULLY_CONNECTED"]["registration"] == "tflite::Register_FULLY_CONNECTED_INT8()"
    assert {ops[name]["method"] for name in ("LEAKY_RELU", "TANH", "STRIDED_SLICE", "SUB")} == {
        "AddLeakyRelu",
        "AddTanh",
        "AddStridedSlice",
        "AddSub",
    }
    assert all(ops[name]["registration"] == "" for name in ("LEAKY_RELU", "TANH", "STRIDED_SLICE", "SUB"))


def test_our_fully_connected_only_for_a_classifier_head_after_our_convolutions() -> None:
    import keras

    from convert.quantize import quantize_int8

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(x))
    rng = np.random.default_rng(0)
    tflite = quantize_int8(model, [rng.uniform(-1, 1, (32, 32, 1)).astype(np.float32) for _ in range(4)])
    ops = {op["name"]: op for op in registrations(tflite)}
    assert ops["FULLY_CONNECTED"]["registration"] == "ser::Register_FULLY_CONNECTED_INT8()"
    assert ops["CONV_2D"]["registration"] == "ser::Register_CONV_2D_INT8()"


@needs_deps
def test_a_16x8_convolution_gets_tflm_general_kernel() -> None:
    tflite = _tflm("integration_tests/seanet/conv/conv0.tflite").read_bytes()
    assert io_specs(tflite)[0].dtype == "int16"
    (conv,) = [op for op in registrations(tflite) if op["name"] == "CONV_2D"]
    assert conv["method"] == "AddConv2D" and conv["registration"] == ""


def _runs_bit_exact_on_the_board(tflite: bytes, inputs: int = 3) -> None:
    """Build the firmware for ``tflite`` and compare the board's outputs with the host's TFLM, input by input."""
    from convert.interpreters import TflmRunner
    from host import qemu
    from host.board import BoardLink
    from host.firmware import build

    elf = build(BOARD, tflite, DEPS)
    in_spec, out_spec = io_specs(tflite)
    elements = int(np.prod(in_spec.shape))
    reference = TflmRunner(tflite)
    rng = np.random.default_rng(2)
    with qemu.running(BOARD, elf) as emu, BoardLink(emu.url) as link:
        assert link.hello().clip_samples == elements
        for clip_id in range(inputs):
            x = rng.integers(-128, 128, elements).astype(np.int16)  # the board takes int8 values as samples
            expected = reference(x.astype(np.int8).reshape(in_spec.shape)).ravel().tolist()
            assert len(expected) == int(np.prod(out_spec.shape))
            assert list(link.classify(x, clip_id).scores) == expected, f"input {clip_id}"


@needs_deps
def test_ops_outside_our_kernels_run_bit_exact_on_the_board() -> None:
    tflite = _model_outside_our_kernels()
    assert {"LEAKY_RELU", "TANH", "SUB", "STRIDED_SLICE"} <= {name for name, _ in op_versions(tflite)}
    _runs_bit_exact_on_the_board(tflite)


@needs_deps
def test_tflm_mnist_lstm_runs_bit_exact_on_the_board() -> None:
    tflite = _tflm("examples/mnist_lstm/trained_lstm_int8.tflite").read_bytes()
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in {name for name, _ in op_versions(tflite)}
    _runs_bit_exact_on_the_board(tflite)
