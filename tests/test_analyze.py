"""ser-analyze on models this project did not make (TFLM's own examples) and on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert.analyze import analyze
from convert.tflite_file import ModelFileError, count_macs, layer_macs
from tests.boards_under_test import bare_model, small_model

DEPS = os.environ.get("SER_DEPS_DIR")
needs_tflm_models = pytest.mark.skipif(not DEPS, reason="TFLM's example models come with its sources: set SER_DEPS_DIR")


def tflm_model(relative: str) -> bytes:
    return (Path(DEPS or "") / "tflite-micro/tensorflow/lite/micro" / relative).read_bytes()


def _analyze_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convert.analyze", *args], capture_output=True, text=True)


def test_our_model_its_layers_macs_and_arena() -> None:
    a = analyze(small_model(), "small", "qemu-mps2-an386")
    assert a.ours and a.runnable, a.problems
    assert [ly.op for ly in a.layers][:2] == ["CONV_2D", "CONV_2D"]
    assert [ly.macs for ly in a.layers] == layer_macs(small_model())
    assert a.macs == count_macs(small_model()) > 0
    # Two 3x3 convolutions (1->8, 8->16 channels) with biases and a 16->6 dense layer, whose all-zero
    # bias (the model is never trained) the converter leaves out; MEAN's axes are no parameters.
    assert a.params == (9 * 8 + 8) + (9 * 8 * 16 + 16) + 16 * 6
    assert a.arena_bytes and a.arena_bytes % 16 == 0
    assert [b["memory"] for b in a.budget] == ["flash", "RAM"] and all(b["fits"] for b in a.budget)
    assert not analyze(bare_model()).ours


@needs_tflm_models
def test_person_detect_fits_the_nucleo_but_not_the_small_nrf() -> None:
    model = tflm_model("models/person_detect.tflite")
    a = analyze(model, "person_detect", "nucleo-f446re")
    assert a.runnable, a.problems
    assert {o["op"] for o in a.ops} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "SOFTMAX"}
    assert a.inputs[0]["shape"] == [1, 96, 96, 1] and a.inputs[0]["dtype"] == "int8"
    small = analyze(model, "person_detect", "nrf52832dk")
    assert not small.runnable
    assert any(p.startswith("RAM: needs") and "nrf52832dk has 64 KiB" in p for p in small.problems)


@needs_tflm_models
def test_svdf_is_registered_and_int16_and_int32_edges_are_taken() -> None:
    result = _analyze_cli(str(Path(DEPS or "") / "tflite-micro/tensorflow/lite/micro/models/keyword_scrambled_8bit.tflite"))
    assert result.returncode == 0, result.stdout
    assert "| SVDF | 3 |" in result.stdout and "no built-in kernel" not in result.stdout
    assert "1x96 int16" in result.stdout and "1x2 int32" in result.stdout


@needs_tflm_models
def test_a_float_model_is_called_float_with_how_to_quantize() -> None:
    a = analyze(tflm_model("examples/hello_world/models/hello_world_float.tflite"))
    assert any("a float model" in p and "TFLITE_BUILTINS_INT8" in p for p in a.problems)
    assert analyze(tflm_model("examples/hello_world/models/hello_world_int8.tflite")).runnable


def test_json_output_and_a_run_folder(tmp_path: Path) -> None:
    (tmp_path / "model_int8.tflite").write_bytes(small_model())
    result = _analyze_cli(str(tmp_path), "--json", "--board", "nucleo-f446re")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runnable"] and report["board"] == "nucleo-f446re" and report["macs"] == count_macs(small_model())
    assert "tensorflow" not in result.stderr.lower()


def test_bad_files_get_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "text.tflite").write_text("not a model")
    (tmp_path / "cut.tflite").write_bytes(small_model()[:2000])
    for name, expected in (("text.tflite", "not a TFLite flatbuffer"), ("cut.tflite", "corrupt TFLite flatbuffer")):
        result = _analyze_cli(str(tmp_path / name))
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    result = _analyze_cli(str(empty_run))
    assert result.returncode == 2 and "after ser-convert" in result.stderr
    with pytest.raises(ModelFileError):
        analyze(b"TFL3")


@needs_tflm_models
def test_a_model_whose_kernel_crashes_on_a_small_arena_is_still_measured() -> None:
    # TFLM's LSTM kernel dereferences a buffer it failed to allocate when the arena is too small: the
    # search runs in a child process, so the crash counts as "too small" instead of ending ser-analyze.
    a = analyze(tflm_model("examples/dtln/dtln_noise_suppression.tflite"), "dtln")
    assert a.runnable, a.problems
    assert 4096 < a.arena_bytes < 16384
    # MACs of an LSTM: its 4 input and 4 recurrent weight matrices, once per time step
    assert [ly.macs for ly in a.layers if ly.op == "UNIDIRECTIONAL_SEQUENCE_LSTM"] == [
        4 * 128 * 257 + 4 * 128 * 128,
        4 * 128 * 128 + 4 * 128 * 128,
    ]
