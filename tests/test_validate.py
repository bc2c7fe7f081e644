"""ser-validate end to end on models this project did not make (TFLM's own examples), and the raw tensor path
of the protocol (firmware/PROTOCOL.md 12) on the simulated board: real TFLM on the host, the real
cross-compiled firmware under QEMU, a real pseudo-terminal for the simulated board."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from host import validate
from host.board import BoardError, BoardLink
from host.protocol import (
    ErrorCode,
    Info,
    Invoke,
    Invoked,
    LayerData,
    LayerRead,
    TensorChunk,
    TensorData,
    TensorNext,
    TensorRead,
    TensorStart,
)
from host.sim_board import SimulatedBoard
from tests.boards_under_test import _firmware

DEPS = os.environ.get("SER_DEPS_DIR")
needs_tflm = pytest.mark.skipif(not DEPS, reason="TFLM's example models come with its sources: set SER_DEPS_DIR")
EXAMPLES = "tensorflow/lite/micro/examples"
HELLO = f"{EXAMPLES}/hello_world/models/hello_world_int8.tflite"
HELLO_FLOAT = f"{EXAMPLES}/hello_world/models/hello_world_float.tflite"
SPEECH = f"{EXAMPLES}/micro_speech/models/micro_speech_quantized.tflite"


def model(relative: str) -> Path:
    return Path(DEPS or "") / "tflite-micro" / relative


def _validate(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = validate.main([*argv, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def _report(out: Path) -> dict:
    return json.loads((out / validate.REPORT_JSON).read_text())


@needs_tflm
def test_hello_world_on_qemu_bit_exact(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "hello"
    code, stdout, err = _validate(capsys, str(model(HELLO)), "--board", "qemu", "--count", "16", "--out", str(out))
    assert code == 0, err
    report = _report(out)
    s = report["summary"]
    assert s["inputs"] == 16 and s["all_bit_exact"]
    (o,) = s["outputs"]
    assert (o["bit_exact"], o["max_lsb"], o["rmse"], o["cos"]) == (16, 0, 0.0, 1.0)
    assert s["cycles"]["min"] > 0 and "instructions" in report["board"]["cycle_counter"]
    assert report["firmware"]["board"] == "qemu-mps2-an386"
    assert "16/16" in (out / validate.REPORT_MD).read_text() and "16/16 bit-exact" in stdout
    assert len((out / validate.RESULTS).read_text().splitlines()) == 16
    layers = report["layers"]  # the last Invoke per layer: three dense layers of 1x16, 16x16, 16x1
    assert [ly["op"] for ly in layers] == ["FULLY_CONNECTED"] * 3 and [ly["macs"] for ly in layers] == [16, 256, 16]
    assert 0 < sum(ly["ticks"] for ly in layers) <= s["cycles"]["max"]


@needs_tflm
def test_micro_speech_on_qemu_bit_exact_with_labels_and_hash_refusal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (6, 1, 1960)).astype(np.int8)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("silence\nunknown\nyes\nno\n")
    np.savez(tmp_path / "speech.npz", input_0=x, labels=np.array([0, 1, 2, 3, 0, 1]))
    out = tmp_path / "speech"
    argv = [str(model(SPEECH)), "--board", "qemu", "--inputs", str(tmp_path / "speech.npz"), "--out", str(out)]
    code, _, err = _validate(capsys, *argv, "--labels", str(labels_file))
    assert code == 0, err
    s = _report(out)["summary"]
    assert s["inputs"] == 6 and s["all_bit_exact"] and s["outputs"][0]["bit_exact"] == 6
    assert s["accuracy"]["agreement"] == 1.0 and s["labels"] == ["silence", "unknown", "yes", "no"]
    assert s["cycles"]["median"] > 100_000  # 1960 inputs through two layers: far more than hello_world's

    # A board carrying another model (micro_speech's firmware, just built: no second build) is refused,
    # both hashes named.
    from host import qemu

    with qemu.running("qemu-mps2-an386", _firmware(model(SPEECH).read_bytes())) as emu:
        code, _, err = _validate(capsys, str(model(HELLO)), "--port", emu.url, "--out", str(tmp_path / "other"))
    assert code == 2 and "runs another model" in err and "board's model" in err and "Traceback" not in err


@needs_tflm
def test_sim_board_resumes_a_cut_off_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sim"
    argv = [str(model(SPEECH)), "--board", "sim", "--count", "6", "--seed", "5", "--out", str(out)]
    code, _, err = _validate(capsys, *argv)
    assert code == 0, err
    full = (out / validate.RESULTS).read_text().splitlines()
    assert len(full) == 6 and _report(out)["summary"]["all_bit_exact"]
    assert _report(out)["summary"]["outputs"][0]["litert_reference_agrees"] == "6/6"  # LiteRT's reference kernels too

    # Cut off after three inputs, the fourth line half written: the rerun keeps those three and runs the rest.
    (out / validate.RESULTS).write_text("\n".join(full[:3]) + "\n" + full[3][:40])
    code, _, err = _validate(capsys, *argv)
    assert code == 0, err
    lines = (out / validate.RESULTS).read_text().splitlines()
    assert lines[:3] == full[:3] and lines[3] == full[3][:40]  # kept as they were; the torn line is skipped
    assert sorted(validate.read_results(out / validate.RESULTS)) == list(range(6)) and len(lines) == 7
    assert _report(out)["summary"]["inputs"] == 6

    # Nothing left to run: no board is opened at all (this port does not exist), the report stays.
    before = (out / validate.REPORT_MD).read_text()
    code, _, err = _validate(capsys, str(model(SPEECH)), "--port", str(tmp_path / "no-such-port"), "--count", "6",
                             "--seed", "5", "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert (out / validate.REPORT_MD).read_text() == before

    # Other inputs in the same folder are refused, not mixed in.
    code, _, err = _validate(capsys, str(model(SPEECH)), "--board", "sim", "--seed", "6", "--out", str(out))
    assert code == 2 and "another inputs" in err


@needs_tflm
def test_bad_models_and_inputs_get_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    speech = model(SPEECH).read_bytes()
    (tmp_path / "text.tflite").write_text("not a model\n")
    (tmp_path / "cut.tflite").write_bytes(speech[:3000])
    np.save(tmp_path / "shape.npy", np.zeros((2, 1960), np.int8))
    np.save(tmp_path / "dtype.npy", np.zeros((2, 1, 1960), np.int16))
    np.savez(tmp_path / "names.npz", something=np.zeros((2, 1, 1960), np.int8), other=np.zeros(3))
    cases = [
        (str(tmp_path / "text.tflite"), [], "not a TFLite flatbuffer"),
        (str(tmp_path / "cut.tflite"), [], "corrupt TFLite flatbuffer"),
        (str(model(HELLO_FLOAT)), [], "a float model"),
        (str(tmp_path / "missing.tflite"), [], "no such file"),
        (str(model(SPEECH)), ["--inputs", str(tmp_path / "shape.npy")], "does not fit input 0"),
        (str(model(SPEECH)), ["--inputs", str(tmp_path / "dtype.npy")], "dtype int16 does not fit input 0"),
        (str(model(SPEECH)), ["--inputs", str(tmp_path / "names.npz")], "no array for input 0"),
        (str(model(SPEECH)), ["--inputs", str(tmp_path / "none.npy")], "no such file"),
    ]
    for path, extra, message in cases:
        code, _, err = _validate(capsys, path, "--board", "sim", "--out", str(tmp_path / "out"), *extra)
        assert code == 2 and message in err and "Traceback" not in err, (path, extra, err)
    assert "quantize it to full int8" in _validate(capsys, str(model(HELLO_FLOAT)), "--board", "sim")[2]

    # Float inputs are quantized with the input's scale and zero point, then run as int8.
    np.save(tmp_path / "float.npy", np.linspace(0, 6, 8, dtype=np.float32).reshape(8, 1, 1))
    out = tmp_path / "float"
    assert (
        _validate(capsys, str(model(HELLO)), "--board", "sim", "--inputs", str(tmp_path / "float.npy"), "--out", str(out))[0] == 0
    )
    assert _report(out)["summary"]["inputs"] == 8


class _OldBoard(SimulatedBoard):
    """A board whose firmware predates raw tensors: its INFO has no TENSOR_IO and it knows no such command."""

    def _info(self, cls: type[Info] = Info) -> Info:
        return dataclasses.replace(super()._info(cls), tensor_io=None)

    def _handle_frame(self, f) -> None:
        if f.type in (0x07, 0x08, 0x09, 0x0A):
            self._error(ErrorCode.UNKNOWN_TYPE, f.type, f.seq, "unknown message type")
            return
        super()._handle_frame(f)


@needs_tflm
def test_raw_tensor_rules_on_the_simulated_board(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tflite = model(SPEECH).read_bytes()
    x = np.arange(1960, dtype=np.int64).astype(np.int8).tobytes()
    with SimulatedBoard(tflite) as board, BoardLink(board.url, timeout=1.0, retries=1) as link:
        assert link.hello().tensor_io == (1, 1, 2039)
        with pytest.raises(BoardError, match="BAD_TENSOR"):
            link.request(TensorStart(1, 1, 1960), (TensorNext,))  # no input 1
        with pytest.raises(BoardError, match="BAD_TENSOR"):
            link.request(TensorStart(1, 0, 1959), (TensorNext,))  # not the tensor's size
        assert link.request(TensorStart(1, 0, 1960), (TensorNext,)) == TensorNext(1, 0, 0, 1960)
        with pytest.raises(BoardError, match="OUT_OF_ORDER"):
            link.request(TensorChunk(1, 0, 8, x[8:16]), (TensorNext,))  # not the offset asked for
        with pytest.raises(BoardError, match="OUT_OF_ORDER"):
            link.request(Invoke(1), (Invoked,))  # the input is not complete
        assert link.request(TensorChunk(1, 0, 0, x[:1000]), (TensorNext,)) == TensorNext(1, 0, 1000, 960)
        assert link.request(TensorChunk(1, 0, 1000, x[1000:]), (TensorNext,)) == TensorNext(1, 0, 1960, 0)
        with pytest.raises(BoardError, match="OUT_OF_ORDER"):
            link.request(TensorRead(1, 0, 0, 4), (Invoked,))  # no INVOKE yet
        done = link.request(Invoke(1), (Invoked,))
        assert done.output_bytes == (4,) and board.invocations == 1
        link._send(link.sequencer.retry())  # the same INVOKE again (a lost reply): answered, not run twice
        assert link._await_reply((Invoked,), 2.0, False)[0] == done and board.invocations == 1
        outputs, _ = link.run_tensors([x], 2)
        assert board.invocations == 2
        assert outputs == [link.request(TensorRead(2, 0, 0, 4), (TensorData,)).data]

    # A new host and a board that predates raw tensors: a clear error, no traceback.
    with _OldBoard(tflite) as old:
        code, _, err = _validate(capsys, str(model(SPEECH)), "--port", old.url, "--out", str(tmp_path / "old"))
    assert code == 2 and "predates raw tensor input" in err and "Traceback" not in err


# ---- per-layer capture (--layers, PROTOCOL.md 13) ----


def _per_layer(out: Path) -> dict:
    return _report(out)["summary"]["per_layer"]


@needs_tflm
def test_layers_of_micro_speech_on_qemu_are_all_bit_exact(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every operator's output read from a firmware that keeps every tensor, against host TFLM's."""
    out = tmp_path / "speech-layers"
    code, stdout, err = _validate(capsys, str(model(SPEECH)), "--board", "qemu", "--layers", "--count", "3", "--out", str(out))
    assert code == 0, err
    per_layer = _per_layer(out)
    rows = per_layer["layers"]
    assert [r["op"] for r in rows] == ["RESHAPE", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"]
    assert all(r["bit_exact"] == r["inputs"] == 3 and r["max_diff"] == 0 for r in rows)
    assert per_layer["first_differing"] is None
    assert rows[1]["shape"] == [1, 25, 20, 8] and rows[1]["ticks"] > 0 and rows[1]["macs"] == 25 * 20 * 8 * 10 * 8
    assert _report(out)["summary"]["outputs"][0]["bit_exact"] == 3
    assert "layers: 4/4 bit-exact" in stdout
    md = (out / validate.REPORT_MD).read_text()
    assert "Every layer bit-exact with host TFLM." in md and "| 1 | DEPTHWISE_CONV_2D |" in md
    assert (out / validate.LATENCY_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same folder without --layers is another validation: refused, not mixed.
    code, _, err = _validate(capsys, str(model(SPEECH)), "--board", "sim", "--count", "3", "--out", str(out))
    assert code == 2 and "with --layers" in err


@needs_tflm
def test_layers_name_the_first_layer_a_broken_kernel_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A firmware whose convolution truncates instead of rounding (SER_BREAK_ROUNDING), flashed on an emulated
    board and validated over its port: --layers names a convolution as the first differing layer, every layer
    before it bit-exact, and the run fails."""
    from host import qemu
    from host.firmware import BUILD, build
    from tests.test_kernels import conv_zoo

    tflite = conv_zoo()
    (tmp_path / "zoo.tflite").write_bytes(tflite)
    monkeypatch.setenv("SER_KERNEL_DEFINES", "SER_BREAK_ROUNDING")  # read when CMake configures this build folder
    elf = build("qemu-mps2-an386", tflite, DEPS, out_dir=BUILD / "firmware" / "qemu-mps2-an386-broken-rounding-layers",
                layers=True)  # fmt: skip
    monkeypatch.delenv("SER_KERNEL_DEFINES")
    out = tmp_path / "broken"
    with qemu.running("qemu-mps2-an386", elf) as emu:
        code, stdout, err = _validate(capsys, str(tmp_path / "zoo.tflite"), "--port", emu.url, "--layers", "--count", "2",
                                      "--out", str(out))  # fmt: skip
    assert code == 1, err
    per_layer = _per_layer(out)
    first = per_layer["first_differing"]
    assert first is not None and first["op"] == "CONV_2D"
    rows = per_layer["layers"]
    k = next(i for i, r in enumerate(rows) if r["op_index"] == first["op_index"])
    assert all(r["bit_exact"] == r["inputs"] for r in rows[:k]) and rows[k]["bit_exact"] < rows[k]["inputs"]
    assert rows[k]["max_diff"] >= 1
    assert f"first differing layer #{first['op_index']} CONV_2D" in stdout
    assert "**differs**" in (out / validate.REPORT_MD).read_text()


@needs_tflm
def test_layer_read_rules_on_the_simulated_board(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tflite = model(SPEECH).read_bytes()
    x = np.arange(1960, dtype=np.int64).astype(np.int8).tobytes()
    with SimulatedBoard(tflite, layers=True) as board, BoardLink(board.url, timeout=1.0, retries=1) as link:
        info = link.hello()
        assert info.layers == 10  # micro_speech's tensor table
        with pytest.raises(BoardError, match="OUT_OF_ORDER"):
            link.request(LayerRead(1, 4, 0, 100), (LayerData,))  # no INVOKE yet
        link.run_tensors([x], 1)
        with pytest.raises(BoardError, match="BAD_TENSOR"):
            link.request(LayerRead(1, 10, 0, 100), (LayerData,))  # past the tensor table
        with pytest.raises(BoardError, match="BAD_LENGTH"):
            link.request(LayerRead(1, 4, 1960, 100), (LayerData,))  # past the tensor's end
        assert link.request(LayerRead(1, 4, 0, 100), (LayerData,)).data == x[:100]  # the reshaped input
        assert link.read_layer(1, 4, 1960) == x

    # A board that does not keep every tensor: --layers is refused before any input runs, saying how to fix it.
    with SimulatedBoard(tflite) as plain:
        code, _, err = _validate(capsys, str(model(SPEECH)), "--port", plain.url, "--layers", "--out", str(tmp_path / "p"))
    assert code == 2 and "does not keep every tensor" in err and "ser-emit MODEL --layers" in err


# ---- models of every edge type, several inputs and outputs ----


@functools.cache
def edge_zoo(mode: str) -> bytes:
    """Two inputs (an image and a feature vector), two outputs (softmax scores, tanh values), through depthwise
    and plain convolution, max and average pooling, a mean and a concatenation. ``mode``: "float32" edges around
    int8 (QUANTIZE/DEQUANTIZE in the graph), "uint8" edges, or "16x8" (int16 activations and edges, int8
    weights; "16x8-per-channel": its FULLY_CONNECTED weights per channel, which CMSIS-NN refuses)."""
    import contextlib
    import io
    import tempfile

    import keras
    import tensorflow as tf

    from convert.interpreters import quiet_fds
    from convert.tflite_file import align

    keras.utils.set_random_seed(7)
    layers = keras.layers
    image, features = keras.Input((12, 12, 3), name="image"), keras.Input((8,), name="features")
    h = layers.DepthwiseConv2D(3, padding="same", activation="relu")(image)
    h = layers.Conv2D(8, 3, activation="relu")(h)
    h = layers.AveragePooling2D(2, padding="same")(layers.MaxPooling2D(2)(h))
    both = layers.Concatenate()([layers.GlobalAveragePooling2D()(h), layers.Dense(6, activation="relu")(features)])
    outputs = [layers.Dense(5, activation="softmax")(both), layers.Dense(3, activation="tanh")(both)]
    model = keras.Model([image, features], outputs)
    rng = np.random.default_rng(0)
    uniform = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)  # noqa: E731
    rep = [{"image": uniform(1, 12, 12, 3), "features": uniform(1, 8)} for _ in range(16)]
    with tempfile.TemporaryDirectory() as saved, contextlib.redirect_stdout(io.StringIO()):
        specs = [tf.TensorSpec((1, 12, 12, 3), tf.float32, name="image"), tf.TensorSpec((1, 8), tf.float32, name="features")]
        model.export(saved, format="tf_saved_model", input_signature=[specs], verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(rep)
        if mode.startswith("16x8"):
            converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int16
            converter._experimental_disable_per_channel_quantization_for_dense_layers = mode == "16x8"
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if mode == "uint8":
                converter.inference_input_type = converter.inference_output_type = tf.uint8
        with quiet_fds(replay_on_error=True):
            return align(converter.convert())


@needs_tflm
@pytest.mark.parametrize(("mode", "edge"), [("float32", "float32"), ("uint8", "uint8"), ("16x8", "int16")])
def test_two_inputs_two_outputs_of_each_edge_type_bit_exact_layer_by_layer(
    mode: str, edge: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from convert.tflite_file import graph_io, operator_names

    tflite = edge_zoo(mode)
    inputs, outputs = graph_io(tflite)
    assert [t.dtype for t in inputs + outputs] == [edge] * 4
    ops = operator_names(tflite)
    assert {"DEPTHWISE_CONV_2D", "CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "CONCATENATION"} <= set(ops)
    (tmp_path / "zoo.tflite").write_bytes(tflite)
    out = tmp_path / mode
    argv = [str(tmp_path / "zoo.tflite"), "--board", "qemu", "--layers", "--count", "3", "--out", str(out)]
    code, _, err = _validate(capsys, *argv)
    assert code == 0, err
    s = _report(out)["summary"]
    assert [(o["dtype"], o["bit_exact"]) for o in s["outputs"]] == [(edge, 3), (edge, 3)]
    rows = s["per_layer"]["layers"]
    assert [r["op"] for r in rows] == ops and all(r["bit_exact"] == 3 for r in rows)


def test_analyze_names_the_layers_cmsis_nn_refuses() -> None:
    """int16 FULLY_CONNECTED with per-channel weights: TFLM's reference kernel runs it, CMSIS-NN's does not."""
    from convert.analyze import analyze

    tflite = edge_zoo("16x8-per-channel")
    problems = analyze(tflite, "zoo", measure_arena=False).problems
    assert len(problems) == 3 and all("FULLY_CONNECTED" in p and "--kernels reference" in p for p in problems)
    assert analyze(tflite, "zoo", measure_arena=False, kernels="reference").problems == []


@needs_tflm
def test_a_stateful_model_of_257_outputs_runs_on_raw_tensors_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """TFLM's dtln noise suppression: an int8 LSTM keeping resource variables, 257 outputs (too many for a clip's
    RESULT, so the board takes raw tensors only), CMSIS-NN's LSTM with its larger arena."""
    from convert.emit import render
    from host import qemu
    from host.protocol import Start

    dtln = model(f"{EXAMPLES}/dtln/dtln_noise_suppression.tflite")
    config = render(dtln.read_bytes(), arena_measured=6752)["model_config.h"]
    assert "#define SER_CLIP_PATH 0" in config and "#define SER_RESOURCE_VARIABLES" in config
    with pytest.raises(ValueError, match="this one has none"):
        render(dtln.read_bytes(), arena_measured=6752, labels=[f"bin{i}" for i in range(257)])
    out = tmp_path / "dtln"
    code, _, err = _validate(capsys, str(dtln), "--board", "qemu", "--count", "2", "--out", str(out))
    assert code == 0, err
    (o,) = _report(out)["summary"]["outputs"]
    assert o["shape"] == [1, 1, 257] and o["bit_exact"] == 2
    # The model keeps state from one Invoke to the next (the same input thrice gives three outputs in TFLM); the
    # board resets it before every raw tensor request, as host TFLM's reference does before every run.
    from convert.interpreters import TflmRunner

    x = (np.arange(257) % 61 - 30).astype(np.int8).reshape(1, 1, 257)
    host = TflmRunner(dtln.read_bytes())
    expected = host.run([x])[0].tobytes()
    with qemu.running("qemu-mps2-an386", _firmware(dtln.read_bytes())) as emu, BoardLink(emu.url, retries=1) as link:
        info = link.hello()
        assert info.clip_samples == 0 and info.labels == () and info.output.dims == (1, 1, 257)
        with pytest.raises(BoardError, match="raw tensors only"):
            link.request(Start(1, 257), (TensorNext,))
        assert [link.run_tensors([x.tobytes()], req)[0][0] for req in (1, 2, 3)] == [expected] * 3


@needs_tflm
def test_svdf_keyword_model_int16_in_int32_out_with_a_crashing_second_opinion(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """TFLM's keyword_scrambled_8bit (SVDF, int16 input, int32 output, one op under several operator codes):
    bit-exact on the board. LiteRT's reference kernels crash on it, in their own process: the validation
    goes on and says so."""
    out = tmp_path / "kws"
    kws = model("tensorflow/lite/micro/models/keyword_scrambled_8bit.tflite")
    code, _, err = _validate(capsys, str(kws), "--board", "qemu", "--count", "3", "--out", str(out))
    assert code == 0, err
    s = _report(out)["summary"]
    assert [(o["dtype"], o["bit_exact"]) for o in s["outputs"]] == [("int32", 3)]
    assert "crashed" in s["litert_refused"] or "hung" in s["litert_refused"]  # a corrupted heap does either
    assert "no second opinion" in (out / validate.REPORT_MD).read_text()
